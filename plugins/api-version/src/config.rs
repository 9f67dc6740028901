//! The plugin's configuration and its validation.

use std::collections::HashMap;

use portcullis_plugin_kit::http::is_token_byte;
use serde::{Deserialize, Deserializer};

use crate::{ApiVersion, Handling, Source, Version, date};

/// The configuration of one route's `api_version` plugin.
///
/// ```toml
/// [routes.plugins.config]
/// source = "path"
/// path_segment = 0
/// versions = [
///     { version = "v1", deprecated = 2025-01-01, sunset = 2025-12-31, successor = "https://api.example.com/v2" },
///     { version = "v2" },
/// ]
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Where the version comes from: `path`, `header` or `media_type`.
    source: SourceKind,
    /// With `source = "path"`: the index of the path segment holding the
    /// version, 0 being the first (`/v1/...`). Default 0.
    #[serde(default)]
    path_segment: Option<usize>,
    /// With `source = "header"`: the header holding the version. Default
    /// `api-version`.
    #[serde(default)]
    header: Option<String>,
    /// With `source = "media_type"`: only `Accept` media ranges of this
    /// type are read. Default: any type.
    #[serde(default)]
    media_type: Option<String>,
    /// With `source = "media_type"`: the media type parameter holding the
    /// version. Default `version`.
    #[serde(default)]
    media_type_param: Option<String>,
    /// The version of requests that name none.
    #[serde(default)]
    default_version: Option<String>,
    /// What to do with requests that name no version (without
    /// `default_version`): `pass` (the default) or `reject` (400).
    #[serde(default)]
    missing: Handling,
    /// What to do with versions not in `versions`: `pass` (the default) or
    /// `reject` (400).
    #[serde(default)]
    unknown: Handling,
    /// Whether a version whose `sunset` has passed is retired (410) without
    /// waiting for `retired = true`.
    #[serde(default)]
    enforce_sunset: bool,
    /// The versions with a policy; at least one.
    #[serde(default)]
    versions: Vec<VersionConfig>,
}

/// Where the version comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SourceKind {
    /// A path segment.
    Path,
    /// A header.
    Header,
    /// A parameter of a media type in `Accept`.
    MediaType,
}

/// One version's policy.
///
/// ```toml
/// { version = "v1", deprecated = 2025-01-01, sunset = 2025-12-31,
///   successor = "https://api.example.com/v2", deprecation_link = "https://docs.example.com/v1" }
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionConfig {
    /// The version as requests name it (`v1`, `2`, `2024-01-01`).
    version: String,
    /// When it is or will be deprecated: the `Deprecation` header.
    #[serde(default, deserialize_with = "date_text")]
    deprecated: Option<String>,
    /// When it stops working: the `Sunset` header.
    #[serde(default, deserialize_with = "date_text")]
    sunset: Option<String>,
    /// The version that replaces it: a `successor-version` link.
    #[serde(default)]
    successor: Option<String>,
    /// Documentation of the deprecation: a `deprecation` link.
    #[serde(default)]
    deprecation_link: Option<String>,
    /// Documentation of the sunset: a `sunset` link.
    #[serde(default)]
    sunset_link: Option<String>,
    /// Whether it is retired: requests get `410 Gone`.
    #[serde(default)]
    retired: bool,
}

/// A date as text: a TOML string, or a TOML date, which reaches the
/// plugin as `{"$__toml_private_datetime": "2025-06-30"}`.
fn date_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum DateText {
        Text(String),
        Toml {
            #[serde(rename = "$__toml_private_datetime")]
            datetime: String,
        },
    }
    let date = Option::<DateText>::deserialize(deserializer).map_err(|_| {
        serde::de::Error::custom(
            "expected a date: `YYYY-MM-DD` or an RFC 3339 date-time, as a string or a TOML date",
        )
    })?;
    Ok(date.map(|date| match date {
        DateText::Text(text) | DateText::Toml { datetime: text } => text,
    }))
}

impl Config {
    /// Validates the configuration and builds the version table. Reports
    /// every problem at once, each naming its key, separated by `; `.
    pub(crate) fn build(self) -> Result<ApiVersion, String> {
        let mut problems = Vec::new();
        let source = self.source(&mut problems);

        if self.versions.is_empty() {
            problems.push("versions: at least one version is required".to_owned());
        }
        let mut order = Vec::with_capacity(self.versions.len());
        let mut versions = HashMap::with_capacity(self.versions.len());
        let mut first_seen: HashMap<String, usize> = HashMap::new();
        for (i, entry) in self.versions.into_iter().enumerate() {
            let name = entry.version.clone();
            let Some(version) = entry.build(&format!("versions[{i}]"), &mut problems) else {
                continue;
            };
            if let Some(first) = first_seen.get(&name) {
                problems.push(format!(
                    "versions[{i}].version: `{name}` is already versions[{first}]"
                ));
                continue;
            }
            first_seen.insert(name.clone(), i);
            order.push(name.clone());
            versions.insert(name, version);
        }

        match &self.default_version {
            Some(default) if default.trim().is_empty() || default.trim() != default => {
                problems.push(
                    "default_version: must not be empty or start or end with whitespace".to_owned(),
                );
            }
            Some(default)
                if self.unknown == Handling::Reject && !versions.contains_key(default) =>
            {
                problems.push(format!(
                    "default_version: `{default}` is not in `versions`, and `unknown = \"reject\"` would refuse it"
                ));
            }
            Some(_) if self.missing == Handling::Reject => {
                problems.push(
                    "missing: `reject` never applies with a `default_version`; remove one of them"
                        .to_owned(),
                );
            }
            _ => {}
        }

        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(ApiVersion {
            source,
            default_version: self.default_version,
            missing: self.missing,
            unknown: self.unknown,
            enforce_sunset: self.enforce_sunset,
            order,
            versions,
        })
    }

    /// The version source, checking that only its keys are set.
    fn source(&self, problems: &mut Vec<String>) -> Source {
        let source_name = match self.source {
            SourceKind::Path => "path",
            SourceKind::Header => "header",
            SourceKind::MediaType => "media_type",
        };
        let stray = [
            (
                "path_segment",
                self.path_segment.is_some(),
                SourceKind::Path,
            ),
            ("header", self.header.is_some(), SourceKind::Header),
            (
                "media_type",
                self.media_type.is_some(),
                SourceKind::MediaType,
            ),
            (
                "media_type_param",
                self.media_type_param.is_some(),
                SourceKind::MediaType,
            ),
        ];
        for (key, set, applies_to) in stray {
            if set && applies_to != self.source {
                problems.push(format!("{key}: not used with `source = \"{source_name}\"`"));
            }
        }
        match self.source {
            SourceKind::Path => Source::Path(self.path_segment.unwrap_or(0)),
            SourceKind::Header => {
                let header = self
                    .header
                    .as_deref()
                    .unwrap_or("api-version")
                    .to_ascii_lowercase();
                if header.is_empty() || !header.bytes().all(is_token_byte) {
                    problems.push(format!("header: `{header}` is not a valid header name"));
                }
                Source::Header(header)
            }
            SourceKind::MediaType => {
                let media_type = self.media_type.clone();
                if let Some(kind) = &media_type {
                    let valid = kind.split_once('/').is_some_and(|(t, s)| {
                        !t.is_empty()
                            && !s.is_empty()
                            && t.bytes().all(is_token_byte)
                            && s.bytes().all(is_token_byte)
                    });
                    if !valid {
                        problems.push(format!(
                            "media_type: `{kind}` is not a media type such as `application/vnd.acme+json`"
                        ));
                    }
                }
                let param = self
                    .media_type_param
                    .clone()
                    .unwrap_or_else(|| "version".to_owned());
                if param.is_empty() || !param.bytes().all(is_token_byte) {
                    problems.push(format!(
                        "media_type_param: `{param}` is not a valid parameter name"
                    ));
                }
                Source::MediaType { media_type, param }
            }
        }
    }
}

impl VersionConfig {
    /// Builds one version whose key is `key` (`versions[1]`), adding what
    /// is wrong with it to `problems`.
    fn build(self, key: &str, problems: &mut Vec<String>) -> Option<Version> {
        let before = problems.len();
        if self.version.is_empty() || self.version.trim() != self.version {
            problems.push(format!(
                "{key}.version: must not be empty or start or end with whitespace"
            ));
        }
        let mut date = |field: &str, text: Option<&str>| {
            text.and_then(|text| match date::parse(text) {
                Ok(seconds) => Some(seconds),
                Err(e) => {
                    problems.push(format!("{key}.{field}: {e}"));
                    None
                }
            })
        };
        let deprecated = date("deprecated", self.deprecated.as_deref());
        let sunset = date("sunset", self.sunset.as_deref());
        if let (Some(deprecated), Some(sunset)) = (deprecated, sunset)
            && sunset < deprecated
        {
            problems.push(format!(
                "{key}.sunset: must not be before `deprecated` (RFC 9745)"
            ));
        }
        for (field, link) in [
            ("successor", &self.successor),
            ("deprecation_link", &self.deprecation_link),
            ("sunset_link", &self.sunset_link),
        ] {
            if let Some(link) = link
                && !is_link_target(link)
            {
                problems.push(format!(
                    "{key}.{field}: `{link}` is not a URL (an `https://...` URL or a path starting with `/`, without spaces, quotes or `<>`)"
                ));
            }
        }
        (problems.len() == before).then_some(Version {
            name: self.version,
            deprecated,
            sunset,
            successor: self.successor,
            deprecation_link: self.deprecation_link,
            sunset_link: self.sunset_link,
            retired: self.retired,
        })
    }
}

/// Whether `link` can go between the `<>` of a `Link` header: an absolute
/// `http(s)` URL or an absolute path, of visible ASCII without `<>"` and
/// backslashes.
fn is_link_target(link: &str) -> bool {
    let lower = link.to_ascii_lowercase();
    let shaped = (lower.starts_with("https://") && lower.len() > 8)
        || (lower.starts_with("http://") && lower.len() > 7)
        || (link.starts_with('/') && !link.starts_with("//"));
    shaped
        && link
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"<>\"\\".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    portcullis_plugin_kit::config_test_helpers!(Config => ApiVersion);

    #[test]
    fn defaults_apply() {
        let plugin = build(r#"{"source":"path","versions":[{"version":"v1"}]}"#).expect("valid");
        assert_eq!(plugin.source, Source::Path(0));
        assert_eq!(plugin.missing, Handling::Pass);
        assert_eq!(plugin.unknown, Handling::Pass);
        assert!(!plugin.enforce_sunset);
        assert_eq!(plugin.default_version, None);
        let v1 = &plugin.versions["v1"];
        assert_eq!((v1.deprecated, v1.sunset, v1.retired), (None, None, false));

        let header = build(r#"{"source":"header","versions":[{"version":"1"}]}"#).expect("valid");
        assert_eq!(header.source, Source::Header("api-version".into()));
        let media =
            build(r#"{"source":"media_type","versions":[{"version":"1"}]}"#).expect("valid");
        assert_eq!(
            media.source,
            Source::MediaType {
                media_type: None,
                param: "version".into()
            }
        );
    }

    #[test]
    fn every_field_is_read() {
        let plugin = build(
            r#"{"source":"media_type","media_type":"application/vnd.acme+json","media_type_param":"v",
                "default_version":"2","unknown":"reject","enforce_sunset":true,
                "versions":[
                  {"version":"1","deprecated":"2023-06-30T23:59:59Z","sunset":"2024-01-01",
                   "successor":"https://api.example.com/v2","deprecation_link":"https://docs.example.com/v1",
                   "sunset_link":"/docs/sunset","retired":true},
                  {"version":"2"}
                ]}"#,
        )
        .expect("valid");
        assert_eq!(
            plugin.source,
            Source::MediaType {
                media_type: Some("application/vnd.acme+json".into()),
                param: "v".into()
            }
        );
        assert_eq!(plugin.default_version.as_deref(), Some("2"));
        assert_eq!(plugin.unknown, Handling::Reject);
        assert!(plugin.enforce_sunset);
        assert_eq!(plugin.order, ["1", "2"]);
        let v1 = &plugin.versions["1"];
        assert_eq!(v1.deprecated, Some(1_688_169_599));
        assert_eq!(v1.sunset, Some(1_704_067_200));
        assert_eq!(v1.successor.as_deref(), Some("https://api.example.com/v2"));
        assert_eq!(
            v1.deprecation_link.as_deref(),
            Some("https://docs.example.com/v1")
        );
        assert_eq!(v1.sunset_link.as_deref(), Some("/docs/sunset"));
        assert!(v1.retired);
        let header =
            build(r#"{"source":"header","header":"X-API-Version","versions":[{"version":"1"}]}"#)
                .expect("valid");
        assert_eq!(header.source, Source::Header("x-api-version".into()));
        let path = build(r#"{"source":"path","path_segment":2,"versions":[{"version":"v1"}]}"#)
            .expect("valid");
        assert_eq!(path.source, Source::Path(2));
    }

    #[test]
    fn toml_dates_are_accepted() {
        let plugin = build(
            r#"{"source":"path","versions":[{"version":"v1",
                "deprecated":{"$__toml_private_datetime":"2023-06-30T23:59:59Z"},
                "sunset":{"$__toml_private_datetime":"2024-01-01"}}]}"#,
        )
        .expect("valid");
        assert_eq!(plugin.versions["v1"].deprecated, Some(1_688_169_599));
        assert_eq!(plugin.versions["v1"].sunset, Some(1_704_067_200));
        let message = problems(
            r#"{"source":"path","versions":[{"version":"v1","sunset":{"$__toml_private_datetime":"2024-01-01T00:00:00"}}]}"#,
        );
        assert!(
            message.starts_with("versions[0].sunset: `2024-01-01T00:00:00`: a date-time needs `Z`"),
            "{message}"
        );
    }

    #[test]
    fn bad_versions_are_reported_with_their_key_path() {
        let cases = [
            (
                r#"{"version":""}"#,
                "versions[0].version: must not be empty",
            ),
            (
                r#"{"version":" v1"}"#,
                "versions[0].version: must not be empty",
            ),
            (
                r#"{"version":"v1","deprecated":"soon"}"#,
                "versions[0].deprecated: `soon`: expected `YYYY-MM-DD`",
            ),
            (
                r#"{"version":"v1","sunset":"2025-02-30"}"#,
                "versions[0].sunset: `2025-02-30`: no such day",
            ),
            (
                r#"{"version":"v1","deprecated":"2025-06-01","sunset":"2025-01-01"}"#,
                "versions[0].sunset: must not be before `deprecated`",
            ),
            (
                r#"{"version":"v1","successor":"v2"}"#,
                "versions[0].successor: `v2` is not a URL",
            ),
            (
                r#"{"version":"v1","successor":"https://x/a b"}"#,
                "versions[0].successor: `https://x/a b` is not a URL",
            ),
            (
                r#"{"version":"v1","deprecation_link":"https://x/>; rel=x"}"#,
                "versions[0].deprecation_link:",
            ),
            (
                r#"{"version":"v1","sunset_link":"//evil.example"}"#,
                "versions[0].sunset_link:",
            ),
            (
                r#"{"version":"v1","sunset_link":"https://"}"#,
                "versions[0].sunset_link:",
            ),
        ];
        for (entry, expected) in cases {
            let message = problems(&format!(r#"{{"source":"path","versions":[{entry}]}}"#));
            assert!(message.starts_with(expected), "{entry}: {message}");
        }
        let message = problems(
            r#"{"source":"path","versions":[{"version":"v1"},{"version":"v2"},{"version":"v1"}]}"#,
        );
        assert_eq!(message, "versions[2].version: `v1` is already versions[0]");
    }

    #[test]
    fn source_keys_must_fit_the_source() {
        let message = problems(
            r#"{"source":"path","header":"x","media_type":"a/b","versions":[{"version":"v1"}]}"#,
        );
        assert_eq!(
            message,
            "header: not used with `source = \"path\"`; media_type: not used with `source = \"path\"`"
        );
        let message = problems(
            r#"{"source":"header","path_segment":1,"header":"a b","versions":[{"version":"1"}]}"#,
        );
        assert_eq!(
            message,
            "path_segment: not used with `source = \"header\"`; header: `a b` is not a valid header name"
        );
        let message = problems(
            r#"{"source":"media_type","media_type":"json","media_type_param":"","versions":[{"version":"1"}]}"#,
        );
        assert!(
            message.starts_with("media_type: `json` is not a media type"),
            "{message}"
        );
        assert!(
            message.contains("media_type_param: `` is not a valid parameter name"),
            "{message}"
        );
    }

    #[test]
    fn default_version_must_make_sense() {
        let message = problems(
            r#"{"source":"path","default_version":"v3","unknown":"reject","versions":[{"version":"v1"}]}"#,
        );
        assert!(
            message.starts_with("default_version: `v3` is not in `versions`"),
            "{message}"
        );
        let message = problems(
            r#"{"source":"path","default_version":"v1","missing":"reject","versions":[{"version":"v1"}]}"#,
        );
        assert!(
            message.starts_with("missing: `reject` never applies"),
            "{message}"
        );
        let message =
            problems(r#"{"source":"path","default_version":"","versions":[{"version":"v1"}]}"#);
        assert!(
            message.starts_with("default_version: must not be empty"),
            "{message}"
        );
        build(r#"{"source":"path","default_version":"v3","versions":[{"version":"v1"}]}"#)
            .expect("an unlisted default passes when unknown versions pass");
    }

    #[test]
    fn missing_and_unknown_keys_are_rejected() {
        let message = problems(r#"{"source":"path"}"#);
        assert_eq!(message, "versions: at least one version is required");
        for (json, expected) in [
            (r#"{"versions":[]}"#, "missing field `source`"),
            (
                r#"{"source":"query","versions":[]}"#,
                "unknown variant `query`",
            ),
            (
                r#"{"source":"path","versions":[],"unknow":"pass"}"#,
                "unknown field `unknow`",
            ),
            (
                r#"{"source":"path","unknown":"fail","versions":[]}"#,
                "unknown variant `fail`",
            ),
            (
                r#"{"source":"path","versions":[{"version":"v1","retire":true}]}"#,
                "unknown field `retire`",
            ),
            (
                r#"{"source":"path","versions":[{"version":"v1","sunset":20250101}]}"#,
                "expected a date: `YYYY-MM-DD`",
            ),
        ] {
            let err = problems(json);
            assert!(err.contains(expected), "{json}: {err}");
        }
    }
}
