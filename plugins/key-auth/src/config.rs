//! The plugin's configuration and its validation.

use std::collections::HashMap;

use portcullis_plugin_kit::http::{is_token_byte, quoted_string};
use portcullis_plugin_kit::identity::IdentityHeadersConfig;
use portcullis_sdk::Identity;
use serde::Deserialize;

use crate::{Digest, KeyAuth, digest};

/// The configuration of one route's `key_auth` plugin.
///
/// ```toml
/// [[routes.plugins]]
/// name = "key_auth"
/// config = { header = "x-api-key", query_param = "apikey", keys = [
///     { consumer = "alice", sha256 = "<64 hex chars>", roles = ["admin"], tenant = "acme" },
/// ] }
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The header carrying the key; `""` disables header lookup.
    #[serde(default = "default_header")]
    header: String,
    /// The query parameter carrying the key, if any; the header is tried
    /// first. `""` is the same as unset.
    #[serde(default)]
    query_param: Option<String>,
    /// Whether to strip the key (header and query parameter) before the
    /// request goes upstream.
    #[serde(default = "default_hide_credentials")]
    hide_credentials: bool,
    /// The realm of the `WWW-Authenticate: ApiKey realm="..."` challenge.
    #[serde(default = "default_realm")]
    realm: String,
    /// The accepted keys; at least one.
    #[serde(default)]
    keys: Vec<KeyConfig>,
    /// Headers that carry the identity to the upstream.
    #[serde(default)]
    identity_headers: IdentityHeadersConfig,
}

/// One accepted key and the consumer it identifies.
///
/// ```toml
/// { consumer = "alice", sha256 = "<64 hex chars>", roles = ["admin"], tenant = "acme" }
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    /// Who presents the key; becomes the identity's consumer.
    consumer: String,
    /// The SHA-256 of the key, hex (`printf %s 'the-key' | sha256sum`).
    #[serde(default)]
    sha256: Option<String>,
    /// The key in plain text: accepted, with a warning in the log.
    #[serde(default)]
    key: Option<String>,
    /// Roles granted to the consumer.
    #[serde(default)]
    roles: Vec<String>,
    /// The consumer's tenant.
    #[serde(default)]
    tenant: Option<String>,
}

fn default_header() -> String {
    "x-api-key".to_owned()
}

fn default_hide_credentials() -> bool {
    true
}

fn default_realm() -> String {
    "portcullis".to_owned()
}

/// What building the plugin from a configuration produced: the plugin and
/// the warnings to log.
pub(crate) type Built = portcullis_plugin_kit::config::Built<KeyAuth>;

impl Config {
    /// Validates the configuration and builds the key table. Reports every
    /// problem at once, each naming its key, separated by `; `.
    pub(crate) fn build(self) -> Result<Built, String> {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();

        let header = self.header.to_ascii_lowercase();
        if !header.is_empty() && !header.bytes().all(is_token_byte) {
            problems.push(format!(
                "header: `{}` is not a valid header name",
                self.header
            ));
        }
        let query_param = self.query_param.filter(|p| !p.is_empty());
        if header.is_empty() && query_param.is_none() {
            problems.push(
                "header, query_param: `header` is empty and `query_param` is not set, so no key could be found"
                    .to_owned(),
            );
        }
        if !self
            .realm
            .bytes()
            .all(|b| b == b' ' || b.is_ascii_graphic())
        {
            problems.push("realm: must be printable ASCII".to_owned());
        }
        if self.keys.is_empty() {
            problems.push("keys: at least one key is required".to_owned());
        }

        let mut consumers: HashMap<Digest, Identity> = HashMap::with_capacity(self.keys.len());
        let mut first_seen: HashMap<Digest, usize> = HashMap::with_capacity(self.keys.len());
        for (i, entry) in self.keys.into_iter().enumerate() {
            if entry.consumer.trim().is_empty() {
                problems.push(format!("keys[{i}].consumer: must not be empty"));
            }
            let hash = match (&entry.sha256, &entry.key) {
                (Some(_), Some(_)) => {
                    problems.push(format!("keys[{i}]: set `sha256` or `key`, not both"));
                    None
                }
                (None, None) => {
                    problems.push(format!(
                        "keys[{i}]: set `sha256` (the SHA-256 of the key, hex) or `key`"
                    ));
                    None
                }
                (Some(hex), None) => {
                    let parsed = parse_sha256(hex);
                    if parsed.is_none() {
                        problems.push(format!(
                            "keys[{i}].sha256: must be 64 hexadecimal characters, the SHA-256 of the key (`printf %s 'the-key' | sha256sum`)"
                        ));
                    }
                    parsed
                }
                (None, Some(key)) if key.is_empty() => {
                    problems.push(format!("keys[{i}].key: must not be empty"));
                    None
                }
                (None, Some(key)) => {
                    warnings.push(format!(
                        "keys[{i}].key: the key of consumer `{}` is in the configuration in plain text; put its SHA-256 in `sha256` instead (`printf %s 'the-key' | sha256sum`)",
                        entry.consumer
                    ));
                    Some(digest(key))
                }
            };
            let Some(hash) = hash else { continue };
            if let Some(first) = first_seen.get(&hash) {
                problems.push(format!("keys[{i}]: the same key as keys[{first}]"));
                continue;
            }
            first_seen.insert(hash, i);
            let mut identity = Identity::new(entry.consumer).roles(entry.roles);
            identity.tenant = entry.tenant;
            consumers.insert(hash, identity);
        }

        let identity_headers = self
            .identity_headers
            .build("identity_headers", &mut problems);
        if let Some(clash) = [
            &identity_headers.consumer,
            &identity_headers.roles,
            &identity_headers.tenant,
        ]
        .into_iter()
        .flatten()
        .find(|name| **name == header)
        {
            problems.push(format!(
                "identity_headers: `{clash}` is the header that carries the key"
            ));
        }

        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Built {
            plugin: KeyAuth {
                header: (!header.is_empty()).then_some(header),
                query_param,
                hide_credentials: self.hide_credentials,
                challenge: challenge(&self.realm),
                consumers,
                identity_headers,
            },
            warnings,
        })
    }
}

/// A SHA-256 in hex (either case), if that is what `text` is.
fn parse_sha256(text: &str) -> Option<Digest> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text, &mut hash).ok()?;
    Some(hash)
}

/// The `WWW-Authenticate` value for `realm`, quoted as RFC 9110 says.
fn challenge(realm: &str) -> String {
    format!("ApiKey realm={}", quoted_string(realm))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE_SHA: &str = "8d3f0a3e0bc1c9e8a1e5a3e2f5a51f0a7b1f9cb2b0ccf1e1ef3c3c8b5c2b0b9a";

    portcullis_plugin_kit::config_test_helpers!(Config => Built);

    #[test]
    fn defaults_apply() {
        let built = build(&format!(
            r#"{{"keys":[{{"consumer":"alice","sha256":"{ALICE_SHA}"}}]}}"#
        ))
        .expect("valid");
        let plugin = built.plugin;
        assert_eq!(plugin.header.as_deref(), Some("x-api-key"));
        assert_eq!(plugin.query_param, None);
        assert!(plugin.hide_credentials);
        assert_eq!(plugin.challenge, r#"ApiKey realm="portcullis""#);
        assert!(built.warnings.is_empty());
        let hash = parse_sha256(ALICE_SHA).expect("hex");
        assert_eq!(plugin.consumers[&hash], Identity::new("alice"));
    }

    #[test]
    fn every_field_is_read() {
        let built = build(&format!(
            r#"{{"header":"Authorization-Key","query_param":"apikey","hide_credentials":false,"realm":"my \"api\"",
                "keys":[{{"consumer":"alice","sha256":"{}","roles":["admin","ops"],"tenant":"acme"}}]}}"#,
            ALICE_SHA.to_uppercase()
        ))
        .expect("valid");
        let plugin = built.plugin;
        assert_eq!(plugin.header.as_deref(), Some("authorization-key"));
        assert_eq!(plugin.query_param.as_deref(), Some("apikey"));
        assert!(!plugin.hide_credentials);
        assert_eq!(plugin.challenge, r#"ApiKey realm="my \"api\"""#);
        let hash = parse_sha256(ALICE_SHA).expect("hex");
        assert_eq!(
            plugin.consumers[&hash],
            Identity::new("alice")
                .roles(["admin", "ops"])
                .tenant("acme")
        );
    }

    #[test]
    fn a_plain_key_is_accepted_with_a_warning_that_names_it() {
        let built = build(r#"{"keys":[{"consumer":"ci","key":"first"}]}"#).expect("valid");
        assert_eq!(built.warnings.len(), 1);
        assert!(
            built.warnings[0].starts_with("keys[0].key: "),
            "{}",
            built.warnings[0]
        );
        assert!(
            built.warnings[0].contains("sha256"),
            "{}",
            built.warnings[0]
        );
        assert!(
            !built.warnings[0].contains("first"),
            "the warning must not log the key"
        );
        assert!(built.plugin.consumers.contains_key(&digest("first")));
    }

    #[test]
    fn identity_headers_are_checked() {
        let built = build(
            r#"{"identity_headers":{"consumer":"X-Consumer","tenant":"x-tenant"},"keys":[{"consumer":"c","key":"x"}]}"#,
        )
        .expect("valid");
        assert_eq!(
            built.plugin.identity_headers.consumer.as_deref(),
            Some("x-consumer")
        );
        assert_eq!(built.plugin.identity_headers.roles, None);
        assert_eq!(
            problems(
                r#"{"identity_headers":{"consumer":"X-API-Key","roles":"cookie"},"keys":[{"consumer":"c","key":"x"}]}"#
            ),
            "identity_headers.roles: `cookie` cannot carry the identity; \
             identity_headers: `x-api-key` is the header that carries the key"
        );
    }

    #[test]
    fn an_empty_header_leaves_the_query_parameter() {
        let built = build(r#"{"header":"","query_param":"k","keys":[{"consumer":"c","key":"x"}]}"#)
            .expect("valid");
        assert_eq!(built.plugin.header, None);
        assert_eq!(built.plugin.query_param.as_deref(), Some("k"));
    }

    #[test]
    fn bad_entries_are_reported_with_their_key_path() {
        let cases = [
            (
                r#"{"consumer":"x","sha256":"not-hex"}"#,
                "keys[0].sha256: must be 64 hexadecimal characters",
            ),
            (
                &format!(r#"{{"consumer":"x","sha256":"{}"}}"#, &ALICE_SHA[..62]),
                "keys[0].sha256: must be 64 hexadecimal characters",
            ),
            (
                &format!(r#"{{"consumer":"x","sha256":"{}zz"}}"#, &ALICE_SHA[..62]),
                "keys[0].sha256: must be 64 hexadecimal characters",
            ),
            (
                &format!(r#"{{"consumer":"x","sha256":"{ALICE_SHA}","key":"k"}}"#),
                "keys[0]: set `sha256` or `key`, not both",
            ),
            (
                r#"{"consumer":"x"}"#,
                "keys[0]: set `sha256` (the SHA-256 of the key, hex) or `key`",
            ),
            (
                r#"{"consumer":"x","key":""}"#,
                "keys[0].key: must not be empty",
            ),
            (
                r#"{"consumer":" ","key":"k"}"#,
                "keys[0].consumer: must not be empty",
            ),
        ];
        for (entry, expected) in cases {
            let message = problems(&format!(r#"{{"keys":[{entry}]}}"#));
            assert!(message.starts_with(expected), "{entry}: {message}");
        }
    }

    #[test]
    fn duplicate_keys_are_rejected_however_they_are_written() {
        let sha = hex::encode(digest("same"));
        let message = problems(&format!(
            r#"{{"keys":[{{"consumer":"a","key":"same"}},{{"consumer":"b","key":"other"}},{{"consumer":"c","sha256":"{sha}"}}]}}"#
        ));
        assert!(
            message.contains("keys[2]: the same key as keys[0]"),
            "{message}"
        );
    }

    #[test]
    fn one_consumer_may_have_several_keys() {
        let built =
            build(r#"{"keys":[{"consumer":"a","key":"old"},{"consumer":"a","key":"new"}]}"#)
                .expect("key rotation is allowed");
        assert_eq!(built.plugin.consumers.len(), 2);
    }

    #[test]
    fn plugin_wide_problems_are_reported_together() {
        let message = problems(r#"{"header":"","query_param":"","realm":"a\nb"}"#);
        assert_eq!(
            message,
            "header, query_param: `header` is empty and `query_param` is not set, so no key could be found; \
             realm: must be printable ASCII; keys: at least one key is required"
        );
        let message = problems(r#"{"header":"x api key","keys":[{"consumer":"c","key":"k"}]}"#);
        assert_eq!(message, "header: `x api key` is not a valid header name");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<Config>(r#"{"keys":[],"hide_credential":true}"#)
            .err()
            .expect("unknown field");
        assert!(
            err.to_string()
                .starts_with("unknown field `hide_credential`"),
            "{err}"
        );
        let err =
            serde_json::from_str::<Config>(r#"{"keys":[{"consumer":"c","key":"k","role":"x"}]}"#)
                .err()
                .expect("unknown field");
        assert!(err.to_string().starts_with("unknown field `role`"), "{err}");
    }
}
