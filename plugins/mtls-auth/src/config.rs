//! The plugin's configuration and its validation.

use std::collections::HashMap;

use portcullis_plugin_kit::identity::IdentityHeadersConfig;
use portcullis_sdk::Identity;
use serde::Deserialize;

use crate::MtlsAuth;

/// The configuration of one route's `mtls_auth` plugin.
///
/// ```toml
/// [[routes.plugins]]
/// name = "mtls_auth"
/// config = { consumers = [
///     { consumer = "billing", uri = "spiffe://example.org/billing", roles = ["service"] },
///     { consumer = "ops", subject = "O=Example Corp, CN=ops" },
/// ] }
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The accepted certificates and who they are; at least one.
    #[serde(default)]
    consumers: Vec<ConsumerConfig>,
    /// Headers that carry the identity to the upstream.
    #[serde(default)]
    identity_headers: IdentityHeadersConfig,
}

/// One consumer and the one thing its certificate must show.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumerConfig {
    /// Who presents the certificate; becomes the identity's consumer.
    consumer: String,
    /// The subject's distinguished name, exactly as the gateway writes it.
    #[serde(default)]
    subject: Option<String>,
    /// A DNS name among the subject alternative names (no case).
    #[serde(default)]
    dns: Option<String>,
    /// A URI among the subject alternative names (a SPIFFE ID, say).
    #[serde(default)]
    uri: Option<String>,
    /// An e-mail address among the subject alternative names (no case).
    #[serde(default)]
    email: Option<String>,
    /// The certificate's SHA-256 (hex, any case, colons allowed).
    #[serde(default)]
    sha256: Option<String>,
    /// Roles granted to the consumer.
    #[serde(default)]
    roles: Vec<String>,
    /// The consumer's tenant.
    #[serde(default)]
    tenant: Option<String>,
}

/// What building the plugin from a configuration produced.
pub(crate) type Built = portcullis_plugin_kit::config::Built<MtlsAuth>;

/// The SHA-256 as the gateway writes it (64 lowercase hex characters),
/// from `AB:CD:...` or any case.
fn normalize_sha256(text: &str) -> Option<String> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

impl Config {
    /// Validates the configuration and builds the lookup tables. Reports
    /// every problem at once, each naming its key, separated by `; `.
    pub(crate) fn build(self) -> Result<Built, String> {
        let mut problems = Vec::new();
        if self.consumers.is_empty() {
            problems.push("consumers: at least one consumer is required".to_owned());
        }
        let identity_headers = self
            .identity_headers
            .build("identity_headers", &mut problems);

        let mut plugin = MtlsAuth {
            consumers: Vec::with_capacity(self.consumers.len()),
            by_subject: HashMap::new(),
            by_dns: HashMap::new(),
            by_uri: HashMap::new(),
            by_email: HashMap::new(),
            by_sha256: HashMap::new(),
            identity_headers,
        };
        for (i, entry) in self.consumers.into_iter().enumerate() {
            let key = |field: &str| format!("consumers[{i}].{field}");
            if entry.consumer.is_empty() {
                problems.push(format!("{}: must not be empty", key("consumer")));
            }
            let matchers = [
                ("subject", entry.subject.map(Ok)),
                ("dns", entry.dns.map(|d| Ok(d.to_ascii_lowercase()))),
                ("uri", entry.uri.map(Ok)),
                ("email", entry.email.map(|e| Ok(e.to_ascii_lowercase()))),
                (
                    "sha256",
                    entry.sha256.map(|s| normalize_sha256(&s).ok_or(s)),
                ),
            ];
            let given: Vec<_> = matchers
                .into_iter()
                .filter_map(|(field, value)| value.map(|v| (field, v)))
                .collect();
            let [(field, value)] = given.as_slice() else {
                problems.push(format!(
                    "consumers[{i}]: set exactly one of subject, dns, uri, email and sha256 (got {})",
                    if given.is_empty() {
                        "none".to_owned()
                    } else {
                        given.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(", ")
                    }
                ));
                continue;
            };
            let value = match value {
                Ok(value) if !value.is_empty() => value.clone(),
                Ok(_) => {
                    problems.push(format!("{}: must not be empty", key(field)));
                    continue;
                }
                Err(bad) => {
                    problems.push(format!(
                        "{}: `{bad}` is not a SHA-256: expected 64 hexadecimal characters (colons allowed)",
                        key(field)
                    ));
                    continue;
                }
            };
            let table = match *field {
                "subject" => &mut plugin.by_subject,
                "dns" => &mut plugin.by_dns,
                "uri" => &mut plugin.by_uri,
                "email" => &mut plugin.by_email,
                _ => &mut plugin.by_sha256,
            };
            if let Some(first) = table.get(&value) {
                problems.push(format!(
                    "{}: `{value}` is already the {field} of consumers[{first}]",
                    key(field)
                ));
                continue;
            }
            table.insert(value, plugin.consumers.len());
            let mut identity = Identity::new(entry.consumer).roles(entry.roles);
            identity.tenant = entry.tenant;
            plugin.consumers.push(identity);
        }
        if problems.is_empty() {
            Ok(Built {
                plugin,
                warnings: Vec::new(),
            })
        } else {
            Err(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use portcullis_plugin_kit::testing::assert_problems;
    use serde_json::json;

    use super::*;

    #[test]
    fn bad_entries_are_reported_with_their_key_path() {
        assert_problems(
            [
                (json!({}), "consumers: at least one consumer is required"),
                (
                    json!({"consumers": [{"consumer": "a"}]}),
                    "consumers[0]: set exactly one of subject, dns, uri, email and sha256 (got none)",
                ),
                (
                    json!({"consumers": [{"consumer": "a", "dns": "a.test", "uri": "spiffe://a"}]}),
                    "consumers[0]: set exactly one of subject, dns, uri, email and sha256 (got dns, uri)",
                ),
                (
                    json!({"consumers": [{"consumer": "a", "sha256": "abc"}]}),
                    "consumers[0].sha256: `abc` is not a SHA-256",
                ),
                (
                    json!({"consumers": [{"consumer": "", "dns": "a.test"}]}),
                    "consumers[0].consumer: must not be empty",
                ),
                (
                    json!({"consumers": [{"consumer": "a", "subject": ""}]}),
                    "consumers[0].subject: must not be empty",
                ),
                (
                    json!({"consumers": [
                        {"consumer": "a", "dns": "A.test"},
                        {"consumer": "b", "dns": "a.TEST"},
                    ]}),
                    "consumers[1].dns: `a.test` is already the dns of consumers[0]",
                ),
                (
                    json!({"consumers": [{"consumer": "a", "dns": "a.test", "cn": "x"}]}),
                    "unknown field `cn`",
                ),
                (
                    json!({"consumers": [{"consumer": "a", "dns": "a.test"}],
                           "identity_headers": {"consumer": "authorization"}}),
                    "identity_headers.consumer",
                ),
            ],
            Config::build,
        );
    }

    #[test]
    fn a_pin_is_normalised() {
        let colons = "9F:86:D0:81:88:4C:7D:65:9A:2F:EA:A0:C5:5A:D0:15:A3:BF:4F:1B:2B:0B:82:2C:D1:5D:6C:15:B0:F0:0A:08";
        assert_eq!(
            normalize_sha256(colons).as_deref(),
            Some("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
        );
        assert_eq!(normalize_sha256("zz"), None);
    }
}
