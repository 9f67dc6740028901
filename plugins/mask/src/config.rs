//! The plugin's configuration and its validation.

use portcullis_plugin_kit::http::is_token_byte;
use portcullis_plugin_kit::path::JsonPath;
use portcullis_plugin_kit::template;
use serde::Deserialize;

use crate::Mask;
use crate::detect::{Detectors, EmailMode};

/// What to do with a body that cannot be masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OnProblem {
    /// Let it through untouched, with a warning in the log.
    #[default]
    Pass,
    /// Answer with an error instead (413 or 415 for a request, 502 for a
    /// response).
    Refuse,
}

/// The configuration of one route's `mask` plugin.
///
/// ```toml
/// [routes.plugins.config]
/// response_body = true
/// request_body = true
/// emails = "partial"
/// paths = ["$.user.ssn", "items[*].card"]
/// patterns = [{ regex = '\b(\d{3})-(\d{2})-(\d{4})\b', replace = "***-**-$3" }]
/// request_headers = ["x-card-number"]
/// response_headers = ["x-debug-token"]
/// on_too_large = "refuse"
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Mask the request body before it goes upstream.
    #[serde(default)]
    request_body: bool,
    /// Mask the response body before it goes to the client.
    #[serde(default = "yes")]
    response_body: bool,
    /// Request headers whose value is replaced.
    #[serde(default)]
    request_headers: Vec<String>,
    /// Response headers whose value is replaced.
    #[serde(default)]
    response_headers: Vec<String>,
    /// Whether card numbers are masked.
    #[serde(default = "yes")]
    cards: bool,
    /// Trailing digits of a card number left visible.
    #[serde(default = "four")]
    card_keep_last: usize,
    /// How e-mail addresses are masked.
    #[serde(default)]
    emails: EmailMode,
    /// The character that replaces masked characters.
    #[serde(default = "star")]
    mask_char: String,
    /// What replaces values at `paths`, header values, and pattern matches
    /// without their own `replace`.
    #[serde(default = "redacted")]
    replacement: String,
    /// JSON paths whose values are replaced whole.
    #[serde(default)]
    paths: Vec<String>,
    /// Extra patterns.
    #[serde(default)]
    patterns: Vec<PatternConfig>,
    /// Bodies larger than this are not masked (the gateway's own cap,
    /// `limits.max_body_bytes`, applies first).
    #[serde(default)]
    max_body_bytes: Option<usize>,
    /// What to do with a body too large to mask.
    #[serde(default)]
    on_too_large: OnProblem,
    /// What to do with a body that cannot be read: compressed, or text or
    /// JSON that is not UTF-8.
    #[serde(default)]
    on_unreadable: OnProblem,
    /// Remove `accept-encoding` from requests, so that the upstream answers
    /// uncompressed and the response body can be masked.
    #[serde(default = "yes")]
    strip_accept_encoding: bool,
}

/// `{ regex = '...', replace = "..." }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatternConfig {
    regex: String,
    #[serde(default)]
    replace: Option<String>,
}

fn yes() -> bool {
    true
}

fn four() -> usize {
    4
}

fn star() -> String {
    "*".to_owned()
}

fn redacted() -> String {
    "[REDACTED]".to_owned()
}

impl Config {
    /// Validates the configuration and builds the plugin. Reports every
    /// problem at once, each naming its key, separated by `; `.
    pub(crate) fn build(self) -> Result<Mask, String> {
        let mut problems = Vec::new();

        let mut chars = self.mask_char.chars();
        let mask_char = match (chars.next(), chars.next()) {
            (Some(c), None) if !c.is_control() && !c.is_ascii_digit() => c,
            _ => {
                problems.push(format!(
                    "mask_char: `{}` must be exactly one character, not a digit or a control character",
                    self.mask_char
                ));
                '*'
            }
        };
        if self.replacement.chars().any(char::is_control) {
            problems.push("replacement: must not contain control characters".to_owned());
        }
        if self.card_keep_last > 4 {
            problems.push(format!(
                "card_keep_last: {} is more than 4 (PCI DSS allows at most the last four digits)",
                self.card_keep_last
            ));
        }
        let headers = |key: &str, names: Vec<String>, problems: &mut Vec<String>| {
            names
                .into_iter()
                .enumerate()
                .map(|(i, name)| {
                    let lower = name.to_ascii_lowercase();
                    if lower.is_empty() || !lower.bytes().all(is_token_byte) {
                        problems.push(format!("{key}[{i}]: `{name}` is not a valid header name"));
                    } else if matches!(lower.as_str(), "content-length" | "transfer-encoding") {
                        problems.push(format!(
                            "{key}[{i}]: `{name}` frames the body and cannot be masked"
                        ));
                    }
                    lower
                })
                .collect::<Vec<_>>()
        };
        let request_headers = headers("request_headers", self.request_headers, &mut problems);
        let response_headers = headers("response_headers", self.response_headers, &mut problems);

        let paths = self
            .paths
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                JsonPath::parse(p)
                    .map_err(|e| problems.push(format!("paths[{i}]: {e}")))
                    .ok()
            })
            .collect::<Vec<_>>();
        let mut patterns = Vec::new();
        for (i, pattern) in self.patterns.into_iter().enumerate() {
            let regex = match template::compile_regex(&pattern.regex) {
                Ok(regex) => regex,
                Err(e) => {
                    problems.push(format!("patterns[{i}].regex: {e}"));
                    continue;
                }
            };
            if regex.is_match("") {
                problems.push(format!("patterns[{i}].regex: matches the empty string"));
                continue;
            }
            let replace = match pattern.replace {
                Some(replace) => {
                    if let Err(e) = template::check(&regex, &replace) {
                        problems.push(format!("patterns[{i}].replace: {e}"));
                    }
                    replace
                }
                // The default replacement is literal text, not a template.
                None => self.replacement.replace('$', "$$"),
            };
            patterns.push((regex, replace));
        }

        let detectors = Detectors::new(
            self.cards,
            self.card_keep_last,
            self.emails,
            patterns,
            mask_char,
        )?;
        let bodies = self.request_body || self.response_body;
        if bodies && !detectors.any() && paths.is_empty() {
            problems.push(
                "cards, emails, paths, patterns: bodies are to be masked but every detector is off and no path or pattern is set"
                    .to_owned(),
            );
        }
        if !bodies && request_headers.is_empty() && response_headers.is_empty() {
            problems.push(
                "request_body, response_body, request_headers, response_headers: nothing to mask"
                    .to_owned(),
            );
        }
        if self.max_body_bytes == Some(0) {
            problems.push("max_body_bytes: must be more than 0".to_owned());
        }

        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Mask {
            request_body: self.request_body,
            response_body: self.response_body,
            request_headers,
            response_headers,
            detectors,
            paths,
            replacement: self.replacement,
            max_body_bytes: self.max_body_bytes,
            on_too_large: self.on_too_large,
            on_unreadable: self.on_unreadable,
            strip_accept_encoding: self.strip_accept_encoding && self.response_body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    portcullis_plugin_kit::config_test_helpers!(Config => Mask);

    #[test]
    fn defaults_mask_response_bodies() {
        let mask = build("{}").expect("valid");
        assert!(mask.response_body && !mask.request_body);
        assert!(mask.detectors.cards);
        assert_eq!(mask.detectors.card_keep_last, 4);
        assert_eq!(mask.detectors.emails, EmailMode::Partial);
        assert_eq!(mask.detectors.mask_char, '*');
        assert_eq!(mask.replacement, "[REDACTED]");
        assert_eq!(mask.on_too_large, OnProblem::Pass);
        assert_eq!(mask.on_unreadable, OnProblem::Pass);
        assert!(mask.strip_accept_encoding);
        assert_eq!(mask.max_body_bytes, None);
    }

    #[test]
    fn every_field_is_read() {
        let mask = build(
            r##"{"request_body":true,"response_body":false,"request_headers":["X-Card"],
                "response_headers":["x-token"],"cards":false,"card_keep_last":2,"emails":"full",
                "mask_char":"#","replacement":"<gone $1>","paths":["$.user.ssn"],
                "patterns":[{"regex":"a(b)","replace":"$1"},{"regex":"zz"}],
                "max_body_bytes":1024,"on_too_large":"refuse","on_unreadable":"refuse",
                "strip_accept_encoding":true}"##,
        )
        .expect("valid");
        assert!(mask.request_body && !mask.response_body);
        assert_eq!(mask.request_headers, ["x-card"]);
        assert_eq!(mask.response_headers, ["x-token"]);
        assert!(!mask.detectors.cards);
        assert_eq!(mask.detectors.card_keep_last, 2);
        assert_eq!(mask.detectors.emails, EmailMode::Full);
        assert_eq!(mask.detectors.mask_char, '#');
        assert_eq!(mask.paths.len(), 1);
        assert_eq!(mask.detectors.patterns.len(), 2);
        assert_eq!(
            mask.detectors.mask_text("zz").as_deref(),
            Some("<gone $1>"),
            "the default replacement is literal"
        );
        assert_eq!(mask.max_body_bytes, Some(1024));
        assert_eq!(mask.on_too_large, OnProblem::Refuse);
        assert_eq!(mask.on_unreadable, OnProblem::Refuse);
        assert!(!mask.strip_accept_encoding, "only with response bodies");
    }

    #[test]
    fn bad_values_are_reported_together() {
        let message = problems(
            r#"{"mask_char":"**","card_keep_last":6,"replacement":"a\nb",
                "request_headers":["bad name","content-length"],"paths":["a..b"],
                "patterns":[{"regex":"("},{"regex":"x*"},{"regex":"(a)","replace":"$2"}],
                "max_body_bytes":0}"#,
        );
        for expected in [
            "mask_char: `**` must be exactly one character",
            "card_keep_last: 6 is more than 4",
            "replacement: must not contain control characters",
            "request_headers[0]: `bad name` is not a valid header name",
            "request_headers[1]: `content-length` frames the body",
            "paths[0]: `a..b`: empty key",
            "patterns[0].regex: invalid regex: ",
            "patterns[1].regex: matches the empty string",
            "patterns[2].replace: `$2` refers to no capture group",
            "max_body_bytes: must be more than 0",
        ] {
            assert!(
                message.contains(expected),
                "missing `{expected}` in: {message}"
            );
        }
        assert!(problems(r#"{"mask_char":"7"}"#).starts_with("mask_char: "));
        assert!(problems(r#"{"mask_char":""}"#).starts_with("mask_char: "));
    }

    #[test]
    fn a_config_that_masks_nothing_is_refused() {
        assert_eq!(
            problems(r#"{"response_body":false}"#),
            "request_body, response_body, request_headers, response_headers: nothing to mask"
        );
        assert!(
            problems(r#"{"cards":false,"emails":"off"}"#)
                .starts_with("cards, emails, paths, patterns: bodies are to be masked")
        );
        build(r#"{"cards":false,"emails":"off","paths":["a"]}"#).expect("a path is enough");
        build(r#"{"response_body":false,"response_headers":["x"]}"#).expect("headers only");
    }

    #[test]
    fn unknown_fields_and_bad_choices_are_rejected() {
        for (json, expected) in [
            (r#"{"email":"full"}"#, "unknown field `email`"),
            (r#"{"emails":"some"}"#, "unknown variant `some`"),
            (r#"{"on_too_large":"drop"}"#, "unknown variant `drop`"),
            (
                r#"{"patterns":[{"regex":"a","with":"b"}]}"#,
                "unknown field `with`",
            ),
        ] {
            let err = problems(json);
            assert!(err.contains(expected), "{json}: {err}");
        }
    }
}
