//! `api_version`: a Portcullis policy plugin that applies a version policy
//! to an API: it finds the version a request asks for (in the path, a
//! header, or a media type parameter of `Accept`), tells clients of
//! deprecated versions so in every response, and answers requests to
//! retired versions itself. See the README for the configuration.
//!
//! - A deprecated version goes on to the upstream; its responses get a
//!   `Deprecation` header (RFC 9745, `@<unix-seconds>`), a `Sunset` header
//!   (RFC 8594, an HTTP-date) and `Link`s to the successor version and the
//!   documentation, as configured.
//! - A retired version (`retired = true`, or with `enforce_sunset` once its
//!   sunset has passed on the gateway's clock) is answered with `410 Gone`,
//!   the same headers, and a JSON body naming the successor.
//! - A request naming no version, or one not configured, goes on or gets a
//!   `400`, as configured.
//!
//! The version found is passed to later plugins as the attribute
//! `api_version`, which is also how `on_response` knows which headers to
//! add.

use std::collections::HashMap;

use portcullis_sdk::{
    Action, Policy, Reply, Request, RequestChanges, Response, ResponseChanges, policy,
};
use serde::{Deserialize, Serialize};

mod config;
mod date;
mod source;

use config::Config;

/// The attribute carrying a known version from `on_request` to
/// `on_response` (and to later plugins).
const ATTRIBUTE: &str = "api_version";

/// Where the version comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// The path segment at this index (0: the first).
    Path(usize),
    /// This header (lowercase).
    Header(String),
    /// A parameter of a media range in `Accept`.
    MediaType {
        /// Only ranges of this type, if set.
        media_type: Option<String>,
        /// The parameter name.
        param: String,
    },
}

/// What to do with a request whose version is missing or unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Handling {
    /// Let it through without version headers.
    #[default]
    Pass,
    /// Answer `400`.
    Reject,
}

/// One version's policy, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    /// The version as requests name it.
    name: String,
    /// When it was or will be deprecated, in seconds since the epoch.
    deprecated: Option<i64>,
    /// When it stops working, in seconds since the epoch.
    sunset: Option<i64>,
    /// The successor's URL.
    successor: Option<String>,
    /// The deprecation documentation's URL.
    deprecation_link: Option<String>,
    /// The sunset documentation's URL.
    sunset_link: Option<String>,
    /// Whether it is retired outright.
    retired: bool,
}

impl Version {
    /// Whether requests to it get `410` at `now_ms`.
    fn is_retired(&self, enforce_sunset: bool, now_ms: u64) -> bool {
        self.retired
            || (enforce_sunset
                && self.sunset.is_some_and(|sunset| {
                    i64::try_from(now_ms / 1000).unwrap_or(i64::MAX) >= sunset
                }))
    }

    /// The headers that announce its deprecation and sunset: the ones to
    /// set (`Deprecation`, `Sunset`) and the `Link` values to add.
    fn notices(&self) -> (Vec<(&'static str, String)>, Vec<String>) {
        let mut set = Vec::new();
        if let Some(deprecated) = self.deprecated {
            set.push(("deprecation", format!("@{deprecated}")));
        }
        if let Some(sunset) = self.sunset {
            set.push(("sunset", date::http_date(sunset)));
        }
        let links = [
            (&self.successor, "successor-version"),
            (&self.deprecation_link, "deprecation"),
            (&self.sunset_link, "sunset"),
        ]
        .into_iter()
        .filter_map(|(url, rel)| url.as_ref().map(|url| format!("<{url}>; rel=\"{rel}\"")))
        .collect();
        (set, links)
    }
}

/// One route's `api_version`, built from a validated [`Config`].
#[derive(Debug)]
struct ApiVersion {
    /// Where the version comes from.
    source: Source,
    /// The version of requests that name none.
    default_version: Option<String>,
    /// What to do without a version.
    missing: Handling,
    /// What to do with an unknown version.
    unknown: Handling,
    /// Whether a passed sunset retires a version.
    enforce_sunset: bool,
    /// The configured version names, in configuration order.
    order: Vec<String>,
    /// The configured versions by name.
    versions: HashMap<String, Version>,
}

/// The JSON body of a `400`.
#[derive(Serialize)]
struct BadVersion<'a> {
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    supported: Option<Vec<&'a str>>,
}

/// The JSON body of a `410`.
#[derive(Serialize)]
struct Gone<'a> {
    message: String,
    version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    successor: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deprecation_link: Option<&'a str>,
}

#[policy]
impl Policy for ApiVersion {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        config.build()
    }

    fn on_request(&self, req: &Request) -> Action {
        let version = match &self.source {
            Source::Path(index) => source::path_segment(&req.path(), *index).map(str::to_owned),
            Source::Header(name) => req
                .header(name)
                .as_deref()
                .and_then(source::header_value)
                .map(str::to_owned),
            Source::MediaType { media_type, param } => {
                source::media_type_param(&req.header_values("accept"), media_type.as_deref(), param)
            }
        };
        let now_ms = if self.enforce_sunset {
            portcullis_sdk::time::now_ms()
        } else {
            0
        };
        self.decide(version.as_deref(), now_ms)
    }

    fn on_response(&self, req: &Request, _resp: &Response) -> ResponseChanges {
        self.response_changes(req.attribute(ATTRIBUTE).as_deref())
    }
}

impl ApiVersion {
    /// The decision for a request naming `version` (if it names one) at
    /// `now_ms` on the gateway's clock (read only with `enforce_sunset`).
    fn decide(&self, version: Option<&str>, now_ms: u64) -> Action {
        let Some(name) = version.or(self.default_version.as_deref()) else {
            return match self.missing {
                Handling::Pass => Action::next(),
                Handling::Reject => self.bad_request("an API version is required", None, now_ms),
            };
        };
        match self.versions.get(name) {
            None => match self.unknown {
                Handling::Pass => Action::next(),
                Handling::Reject => self.bad_request("unsupported API version", Some(name), now_ms),
            },
            Some(version) if version.is_retired(self.enforce_sunset, now_ms) => gone(version),
            Some(version) => RequestChanges::new()
                .attribute(ATTRIBUTE, version.name.as_str())
                .into(),
        }
    }

    /// A `400`; it lists the supported versions when the configuration
    /// lists every version (`unknown = "reject"`).
    fn bad_request(&self, message: &str, version: Option<&str>, now_ms: u64) -> Action {
        let supported = (self.unknown == Handling::Reject).then(|| {
            self.order
                .iter()
                .filter(|name| {
                    self.versions
                        .get(name.as_str())
                        .is_some_and(|v| !v.is_retired(self.enforce_sunset, now_ms))
                })
                .map(String::as_str)
                .collect()
        });
        Reply::json(
            400,
            &BadVersion {
                message,
                version,
                supported,
            },
        )
        .into()
    }

    /// The changes to a response to a request of the version `attribute`
    /// (the `api_version` attribute set by `on_request`).
    fn response_changes(&self, attribute: Option<&str>) -> ResponseChanges {
        let Some(version) = attribute.and_then(|name| self.versions.get(name)) else {
            return ResponseChanges::none();
        };
        let (set, links) = version.notices();
        let mut changes = ResponseChanges::none();
        for (name, value) in set {
            changes = changes.set_header(name, value);
        }
        for link in links {
            changes = changes.add_header("link", link);
        }
        changes
    }
}

/// The `410` of a retired version, with its notices.
fn gone(version: &Version) -> Action {
    let mut reply = Reply::json(
        410,
        &Gone {
            message: format!("API version `{}` has been retired", version.name),
            version: &version.name,
            successor: version.successor.as_deref(),
            deprecation_link: version.deprecation_link.as_deref(),
        },
    );
    let (set, links) = version.notices();
    for (name, value) in set {
        reply = reply.header(name, value);
    }
    for link in links {
        reply = reply.header("link", link);
    }
    reply.into()
}

#[cfg(test)]
mod tests {
    use portcullis_plugin_kit::testing::{self, continued};

    use super::*;

    /// 2025-01-01T00:00:00Z.
    const JAN_2025: u64 = 1_735_689_600_000;
    /// 2026-01-01T00:00:00Z, v1's sunset.
    const JAN_2026: u64 = 1_767_225_600_000;

    fn plugin(extra: &str) -> ApiVersion {
        let json = format!(
            r#"{{"source":"path",{extra}"versions":[
                {{"version":"v0","retired":true,"successor":"https://api.example.com/v2"}},
                {{"version":"v1","deprecated":"2024-07-01","sunset":"2026-01-01",
                  "successor":"https://api.example.com/v2","deprecation_link":"https://docs.example.com/v1"}},
                {{"version":"v2"}}
            ]}}"#
        );
        testing::valid(&json, Config::build)
    }

    /// The reply of `action` and its JSON body.
    fn replied(action: Action) -> (Reply, serde_json::Value) {
        let reply = testing::replied(action);
        let body = testing::json_body(&reply);
        (reply, body)
    }

    fn attribute(name: &str) -> Vec<(String, String)> {
        vec![(ATTRIBUTE.to_owned(), name.to_owned())]
    }

    #[test]
    fn known_versions_go_on_with_the_attribute() {
        let p = plugin("");
        assert_eq!(
            continued(p.decide(Some("v1"), JAN_2025)).attributes,
            attribute("v1")
        );
        assert_eq!(
            continued(p.decide(Some("v2"), JAN_2025)).attributes,
            attribute("v2")
        );
        let later = continued(p.decide(Some("v1"), JAN_2026 + 1));
        assert_eq!(
            later.attributes,
            attribute("v1"),
            "a passed sunset alone retires nothing"
        );
    }

    #[test]
    fn deprecated_versions_get_the_rfc_headers() {
        let changes = plugin("").response_changes(Some("v1"));
        assert_eq!(
            changes.set_headers,
            [
                ("deprecation".to_owned(), "@1719792000".to_owned()),
                (
                    "sunset".to_owned(),
                    "Thu, 01 Jan 2026 00:00:00 GMT".to_owned()
                ),
            ]
        );
        assert_eq!(
            changes.add_headers,
            [
                (
                    "link".to_owned(),
                    r#"<https://api.example.com/v2>; rel="successor-version""#.to_owned()
                ),
                (
                    "link".to_owned(),
                    r#"<https://docs.example.com/v1>; rel="deprecation""#.to_owned()
                ),
            ]
        );
        assert_eq!(changes.status, None);
        assert_eq!(changes.body, None);
    }

    #[test]
    fn other_responses_are_left_alone() {
        let p = plugin("");
        assert_eq!(p.response_changes(Some("v2")), ResponseChanges::none());
        assert_eq!(p.response_changes(Some("v9")), ResponseChanges::none());
        assert_eq!(p.response_changes(None), ResponseChanges::none());
    }

    #[test]
    fn a_sunset_link_is_a_sunset_relation() {
        let p = testing::valid(
            r#"{"source":"header","versions":[{"version":"1","sunset":"2030-01-01","sunset_link":"/docs/sunset"}]}"#,
            Config::build,
        );
        let changes = p.response_changes(Some("1"));
        assert_eq!(
            changes.set_headers,
            [(
                "sunset".to_owned(),
                "Tue, 01 Jan 2030 00:00:00 GMT".to_owned()
            )]
        );
        assert_eq!(
            changes.add_headers,
            [(
                "link".to_owned(),
                r#"</docs/sunset>; rel="sunset""#.to_owned()
            )]
        );
    }

    #[test]
    fn retired_versions_are_gone() {
        let (reply, body) = replied(plugin("").decide(Some("v0"), JAN_2025));
        assert_eq!(reply.status, 410);
        assert_eq!(
            body,
            serde_json::json!({
                "message": "API version `v0` has been retired",
                "version": "v0",
                "successor": "https://api.example.com/v2",
            })
        );
        assert_eq!(
            reply.headers,
            [
                ("content-type".to_owned(), "application/json".to_owned()),
                (
                    "link".to_owned(),
                    r#"<https://api.example.com/v2>; rel="successor-version""#.to_owned()
                ),
            ]
        );
    }

    #[test]
    fn with_enforce_sunset_a_passed_sunset_retires_the_version() {
        let p = plugin(r#""enforce_sunset":true,"#);
        assert_eq!(
            continued(p.decide(Some("v1"), JAN_2026 - 1)).attributes,
            attribute("v1")
        );
        for now in [JAN_2026, JAN_2026 + 86_400_000] {
            let (reply, body) = replied(p.decide(Some("v1"), now));
            assert_eq!(reply.status, 410);
            assert_eq!(body["successor"], "https://api.example.com/v2");
            assert_eq!(body["deprecation_link"], "https://docs.example.com/v1");
            assert!(
                reply
                    .headers
                    .contains(&("deprecation".to_owned(), "@1719792000".to_owned()))
            );
            assert!(reply.headers.contains(&(
                "sunset".to_owned(),
                "Thu, 01 Jan 2026 00:00:00 GMT".to_owned()
            )));
        }
        assert_eq!(
            continued(p.decide(Some("v2"), u64::MAX)).attributes,
            attribute("v2")
        );
    }

    #[test]
    fn missing_versions_pass_by_default_or_are_refused() {
        let p = plugin("");
        assert_eq!(p.decide(None, JAN_2025), Action::next());
        let (reply, body) = replied(plugin(r#""missing":"reject","#).decide(None, JAN_2025));
        assert_eq!(reply.status, 400);
        assert_eq!(
            body,
            serde_json::json!({ "message": "an API version is required" })
        );
        let defaulted = plugin(r#""default_version":"v1","#);
        assert_eq!(
            continued(defaulted.decide(None, JAN_2025)).attributes,
            attribute("v1")
        );
        assert_eq!(
            continued(defaulted.decide(Some("v2"), JAN_2025)).attributes,
            attribute("v2")
        );
    }

    #[test]
    fn unknown_versions_pass_by_default_or_are_refused_with_the_supported_list() {
        assert_eq!(plugin("").decide(Some("v9"), JAN_2025), Action::next());
        let strict = plugin(r#""unknown":"reject","enforce_sunset":true,"#);
        let (reply, body) = replied(strict.decide(Some("v9"), JAN_2025));
        assert_eq!(reply.status, 400);
        assert_eq!(
            body,
            serde_json::json!({
                "message": "unsupported API version",
                "version": "v9",
                "supported": ["v1", "v2"],
            })
        );
        let (_, body) = replied(strict.decide(Some("V1"), JAN_2026));
        assert_eq!(
            body["supported"],
            serde_json::json!(["v2"]),
            "v1 is past its sunset"
        );
        let (_, body) =
            replied(plugin(r#""unknown":"reject","missing":"reject","#).decide(None, JAN_2025));
        assert_eq!(
            body,
            serde_json::json!({ "message": "an API version is required", "supported": ["v1", "v2"] })
        );
    }
}
