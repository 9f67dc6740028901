//! `mask`: a Portcullis policy plugin that redacts sensitive data in
//! request and response bodies and headers before they leave the gateway:
//! payment card numbers (Luhn-checked, last four digits kept), e-mail
//! addresses, values at configured JSON paths, and configured regexes.
//! See the README for the configuration.
//!
//! Bodies are handled by media type: JSON is masked value by value and
//! stays valid (and byte for byte the same where nothing is masked),
//! `text/*` is masked as text, anything else passes untouched. The hooks
//! read the headers and body and hand them to plain functions (modules
//! `detect` and `json`, and [`Mask::mask_body`]), which the unit tests call
//! on the host.

use portcullis_sdk::{
    Action, Body, Needs, Policy, Reply, Request, RequestChanges, Response, ResponseChanges, policy,
};

mod config;
mod detect;
mod json;

use config::{Config, OnProblem};
use detect::Detectors;
use json::JsonRules;
use portcullis_plugin_kit::path::JsonPath;

/// One route's `mask`, built from a validated [`Config`].
#[derive(Debug)]
pub(crate) struct Mask {
    /// Whether request bodies are masked.
    request_body: bool,
    /// Whether response bodies are masked.
    response_body: bool,
    /// Request headers whose values are replaced (lowercase).
    request_headers: Vec<String>,
    /// Response headers whose values are replaced (lowercase).
    response_headers: Vec<String>,
    /// Card, e-mail and pattern detectors.
    detectors: Detectors,
    /// JSON paths whose values are replaced whole.
    paths: Vec<JsonPath>,
    /// What replaces path values and header values.
    replacement: String,
    /// The plugin's own body cap, if any.
    max_body_bytes: Option<usize>,
    /// What to do with a body too large to mask.
    on_too_large: OnProblem,
    /// What to do with a body that cannot be read.
    on_unreadable: OnProblem,
    /// Whether `accept-encoding` is removed from requests.
    strip_accept_encoding: bool,
}

#[policy]
impl Policy for Mask {
    type Config = Config;

    // Buffered only in the directions the config masks (see `needs`).
    const REQUEST_BODY: bool = true;
    const RESPONSE_BODY: bool = true;

    fn new(config: Config) -> Result<Self, String> {
        config.build()
    }

    fn needs(&self) -> Needs {
        Needs {
            request_body: self.request_body,
            response_body: self.response_body,
            on_response: self.response_body || !self.response_headers.is_empty(),
            ..Needs::ALL
        }
    }

    fn on_request(&self, req: &Request) -> Action {
        let mut changes = RequestChanges::new();
        for name in &self.request_headers {
            if req.header(name).is_some() {
                changes = changes.set_header(name.as_str(), self.replacement.as_str());
            }
        }
        if self.strip_accept_encoding && req.header("accept-encoding").is_some() {
            changes = changes.remove_header("accept-encoding");
        }
        if self.request_body {
            let content_type = req.header("content-type");
            let encoding = req.header("content-encoding");
            match self.mask_body(content_type.as_deref(), encoding.as_deref(), req.body()) {
                Verdict::Unchanged => {}
                Verdict::Replace(body) => changes = changes.body(body),
                Verdict::Passed(problem) => {
                    portcullis_sdk::warn!("request body not masked: {}", problem.describe());
                }
                Verdict::Refused(problem) => {
                    portcullis_sdk::warn!("request refused: {}", problem.describe());
                    let status = match problem {
                        Problem::TooLarge => 413,
                        Problem::Encoded | Problem::NotUtf8 => 415,
                    };
                    return Reply::message(status, problem.describe()).into();
                }
            }
        }
        changes.into()
    }

    fn on_response(&self, _req: &Request, resp: &Response) -> ResponseChanges {
        let mut changes = ResponseChanges::none();
        for name in &self.response_headers {
            if resp.header(name).is_some() {
                changes = changes.set_header(name.as_str(), self.replacement.as_str());
            }
        }
        if !self.response_body {
            return changes;
        }
        let content_type = resp.header("content-type");
        let encoding = resp.header("content-encoding");
        match self.mask_body(content_type.as_deref(), encoding.as_deref(), resp.body()) {
            Verdict::Unchanged => changes,
            Verdict::Replace(body) => changes.body(body),
            Verdict::Passed(problem) => {
                portcullis_sdk::warn!("response body not masked: {}", problem.describe());
                changes
            }
            Verdict::Refused(problem) => {
                portcullis_sdk::warn!("response replaced by a 502: {}", problem.describe());
                changes
                    .status(502)
                    .remove_header("content-encoding")
                    .set_header("content-type", "application/json")
                    .body(&br#"{"message":"the response could not be masked"}"#[..])
            }
        }
    }
}

/// Why a body was not masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    /// Over the gateway's cap or the plugin's `max_body_bytes`.
    TooLarge,
    /// Compressed (a `content-encoding` other than `identity`).
    Encoded,
    /// Text or JSON that is not UTF-8.
    NotUtf8,
}

impl Problem {
    fn describe(self) -> &'static str {
        match self {
            Problem::TooLarge => "the body is too large to be masked",
            Problem::Encoded => "the body is compressed and cannot be masked",
            Problem::NotUtf8 => "the body is not UTF-8 text and cannot be masked",
        }
    }
}

/// What happens to a body.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing to mask, or a media type that is not masked.
    Unchanged,
    /// The masked body.
    Replace(Vec<u8>),
    /// Not masked, passed on untouched (`pass`).
    Passed(Problem),
    /// Not masked, refused (`refuse`).
    Refused(Problem),
}

/// How a body is read, from its media type.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// `application/json` or `application/*+json`.
    Json,
    /// `text/*`.
    Text,
    /// Anything else, or no `content-type`.
    Other,
}

fn kind(content_type: Option<&str>) -> Kind {
    let media = content_type
        .and_then(|ct| ct.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if media == "application/json"
        || (media.starts_with("application/") && media.ends_with("+json"))
    {
        Kind::Json
    } else if media.starts_with("text/") {
        Kind::Text
    } else {
        Kind::Other
    }
}

impl Mask {
    /// Masks a body with this `content-type` and `content-encoding`.
    ///
    /// JSON that does not parse is masked as text (with the detectors; the
    /// paths need JSON), so that a broken document does not leak what it
    /// holds.
    fn mask_body(&self, content_type: Option<&str>, encoding: Option<&str>, body: Body) -> Verdict {
        let kind = kind(content_type);
        if kind == Kind::Other {
            return Verdict::Unchanged;
        }
        let bytes = match body {
            Body::NotRequested => return Verdict::Unchanged,
            Body::TooLarge => return self.problem(Problem::TooLarge),
            Body::Complete(bytes) => bytes,
        };
        if bytes.is_empty() {
            return Verdict::Unchanged;
        }
        if self.max_body_bytes.is_some_and(|max| bytes.len() > max) {
            return self.problem(Problem::TooLarge);
        }
        if encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity")) {
            return self.problem(Problem::Encoded);
        }
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return self.problem(Problem::NotUtf8);
        };
        let masked = match kind {
            Kind::Json => {
                let rules = JsonRules {
                    paths: &self.paths,
                    replacement: &self.replacement,
                    detectors: &self.detectors,
                };
                json::mask_json(text, &rules).unwrap_or_else(|_| self.detectors.mask_text(text))
            }
            Kind::Text | Kind::Other => self.detectors.mask_text(text),
        };
        match masked {
            Some(masked) => Verdict::Replace(masked.into_bytes()),
            None => Verdict::Unchanged,
        }
    }

    fn problem(&self, problem: Problem) -> Verdict {
        let policy = match problem {
            Problem::TooLarge => self.on_too_large,
            Problem::Encoded | Problem::NotUtf8 => self.on_unreadable,
        };
        match policy {
            OnProblem::Pass => Verdict::Passed(problem),
            OnProblem::Refuse => Verdict::Refused(problem),
        }
    }
}

#[cfg(test)]
mod tests {
    use portcullis_plugin_kit::testing;

    use super::*;

    fn plugin(json: &str) -> Mask {
        testing::valid(json, Config::build)
    }

    fn complete(text: &str) -> Body {
        Body::Complete(text.as_bytes().to_vec())
    }

    fn replaced(verdict: Verdict) -> String {
        match verdict {
            Verdict::Replace(bytes) => String::from_utf8(bytes).expect("UTF-8"),
            other => panic!("expected a masked body, got {other:?}"),
        }
    }

    #[test]
    fn media_types() {
        assert_eq!(kind(Some("application/json; charset=utf-8")), Kind::Json);
        assert_eq!(kind(Some("Application/Problem+JSON")), Kind::Json);
        assert_eq!(kind(Some("text/plain")), Kind::Text);
        assert_eq!(kind(Some("text/csv;header=present")), Kind::Text);
        assert_eq!(kind(Some("application/octet-stream")), Kind::Other);
        assert_eq!(kind(Some("image/png")), Kind::Other);
        assert_eq!(kind(None), Kind::Other);
    }

    #[test]
    fn json_and_text_are_masked_other_types_are_not() {
        let m = plugin(r#"{"paths":["user.ssn"]}"#);
        let json = r#"{"user":{"ssn":"123-45-6789","card":"4111111111111111"}}"#;
        assert_eq!(
            replaced(m.mask_body(Some("application/json"), None, complete(json))),
            r#"{"user":{"ssn":"[REDACTED]","card":"************1111"}}"#
        );
        assert_eq!(
            replaced(m.mask_body(Some("text/plain"), None, complete("pay 4111111111111111"))),
            "pay ************1111"
        );
        assert_eq!(
            m.mask_body(
                Some("application/octet-stream"),
                None,
                complete("4111111111111111")
            ),
            Verdict::Unchanged
        );
        assert_eq!(
            m.mask_body(None, None, complete("4111111111111111")),
            Verdict::Unchanged
        );
        assert_eq!(
            m.mask_body(Some("application/json"), None, complete(r#"{"ok":true}"#)),
            Verdict::Unchanged
        );
        assert_eq!(
            m.mask_body(Some("application/json"), None, complete("")),
            Verdict::Unchanged
        );
    }

    #[test]
    fn broken_json_is_masked_as_text() {
        let m = plugin("{}");
        assert_eq!(
            replaced(m.mask_body(
                Some("application/json"),
                None,
                complete(r#"{"card":"4111111111111111""#)
            )),
            r#"{"card":"************1111""#
        );
    }

    #[test]
    fn problems_pass_by_default() {
        let m = plugin(r#"{"max_body_bytes":16}"#);
        let json = Some("application/json");
        assert_eq!(
            m.mask_body(json, None, Body::TooLarge),
            Verdict::Passed(Problem::TooLarge)
        );
        assert_eq!(
            m.mask_body(json, None, complete(r#"{"card":"4111111111111111"}"#)),
            Verdict::Passed(Problem::TooLarge),
            "over max_body_bytes"
        );
        assert_eq!(
            m.mask_body(json, Some("gzip"), complete("{}")),
            Verdict::Passed(Problem::Encoded)
        );
        assert_eq!(
            m.mask_body(Some("text/plain"), None, Body::Complete(vec![0xff, 0xfe])),
            Verdict::Passed(Problem::NotUtf8)
        );
        assert_eq!(
            m.mask_body(Some("text/plain"), Some("identity"), complete("a@b.io")),
            Verdict::Replace(b"a***@b.io".to_vec())
        );
        assert_eq!(
            m.mask_body(Some("image/png"), Some("gzip"), Body::TooLarge),
            Verdict::Unchanged,
            "types that are not masked are never a problem"
        );
    }

    #[test]
    fn problems_can_be_refused() {
        let m = plugin(r#"{"on_too_large":"refuse","on_unreadable":"refuse"}"#);
        let json = Some("application/json");
        assert_eq!(
            m.mask_body(json, None, Body::TooLarge),
            Verdict::Refused(Problem::TooLarge)
        );
        assert_eq!(
            m.mask_body(json, Some("br"), complete("{}")),
            Verdict::Refused(Problem::Encoded)
        );
        let only_large = plugin(r#"{"on_too_large":"refuse"}"#);
        assert_eq!(
            only_large.mask_body(json, Some("br"), complete("{}")),
            Verdict::Passed(Problem::Encoded)
        );
    }
}
