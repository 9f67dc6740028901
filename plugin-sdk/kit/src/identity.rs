//! Sending the identity an authentication plugin attaches (consumer, roles,
//! tenant) to the upstream as headers, for upstreams that do not read the
//! gateway's identity any other way, as Kong's `X-Consumer-*` headers do.
//!
//! The configuration names a header for each part; a part without a name
//! is not sent. Whatever the client sent under those names is always
//! removed first, so a client can never pose as a consumer by sending the
//! header itself.
//!
//! ```
//! use portcullis_plugin_kit::identity::IdentityHeadersConfig;
//! use portcullis_sdk::{Identity, RequestChanges};
//!
//! // `identity_headers = { consumer = "X-Consumer", roles = "x-roles" }`
//! let config: IdentityHeadersConfig =
//!     serde_json::from_str(r#"{"consumer":"X-Consumer","roles":"x-roles"}"#).unwrap();
//! let mut problems = Vec::new();
//! let headers = config.build("identity_headers", &mut problems);
//! assert!(problems.is_empty());
//!
//! let mut alice = Identity::new("alice");
//! alice.roles = vec!["admin".into(), "ops".into()];
//! let changes = headers.apply(RequestChanges::new(), &alice);
//! assert_eq!(changes.remove_headers, ["x-consumer", "x-roles"]);
//! assert_eq!(
//!     changes.set_headers,
//!     [
//!         ("x-consumer".to_owned(), "alice".to_owned()),
//!         ("x-roles".to_owned(), "admin,ops".to_owned()),
//!     ]
//! );
//! ```

use portcullis_sdk::{Identity, RequestChanges};
use serde::Deserialize;

use crate::http::{is_header_value, is_token_byte};

/// Headers that cannot carry an identity: the request's framing, its
/// target and its credentials.
const RESERVED: &[&str] = &[
    "authorization",
    "cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
];

/// The `identity_headers` table of a plugin's configuration: the header
/// names for each part of the identity, each optional.
///
/// ```toml
/// identity_headers = { consumer = "x-consumer", roles = "x-consumer-roles", tenant = "x-tenant" }
/// ```
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeadersConfig {
    /// The header for the consumer.
    #[serde(default)]
    pub consumer: Option<String>,
    /// The header for the roles, comma-separated.
    #[serde(default)]
    pub roles: Option<String>,
    /// The header for the tenant.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// Validated header names (lowercase) for the parts of the identity.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// The header for the consumer, if it is sent.
    pub consumer: Option<String>,
    /// The header for the roles (comma-separated), if they are sent.
    pub roles: Option<String>,
    /// The header for the tenant, if it is sent.
    pub tenant: Option<String>,
}

impl IdentityHeadersConfig {
    /// Validates the names, reporting each problem under `key` (the table's
    /// key path, e.g. `identity_headers`): a name must be a valid header
    /// name, not one of the request's framing or credential headers, and
    /// not used by another part.
    pub fn build(self, key: &str, problems: &mut Vec<String>) -> IdentityHeaders {
        let mut taken: Vec<String> = Vec::new();
        let mut check = |part: &str, name: Option<String>| {
            let name = name?;
            let lower = name.to_ascii_lowercase();
            let problem = if lower.is_empty() || !lower.bytes().all(is_token_byte) {
                "is not a valid header name"
            } else if RESERVED.contains(&lower.as_str()) {
                "cannot carry the identity"
            } else if taken.contains(&lower) {
                "is used by another part of the identity"
            } else {
                taken.push(lower.clone());
                return Some(lower);
            };
            problems.push(format!("{key}.{part}: `{name}` {problem}"));
            None
        };
        IdentityHeaders {
            consumer: check("consumer", self.consumer),
            roles: check("roles", self.roles),
            tenant: check("tenant", self.tenant),
        }
    }
}

impl IdentityHeaders {
    /// `changes` with the configured headers removed and set from
    /// `identity`: the consumer, the roles joined with `,` (none: no
    /// header), the tenant (none: no header). A value that cannot be a
    /// header value (control characters) is not sent.
    pub fn apply(&self, mut changes: RequestChanges, identity: &Identity) -> RequestChanges {
        let values = [
            (&self.consumer, Some(identity.consumer.clone())),
            (
                &self.roles,
                (!identity.roles.is_empty()).then(|| identity.roles.join(",")),
            ),
            (&self.tenant, identity.tenant.clone()),
        ];
        for (name, value) in values {
            let Some(name) = name else { continue };
            // Whatever the client sent under that name goes first.
            changes = changes.remove_header(name.as_str());
            if let Some(value) = value.filter(|v| is_header_value(v)) {
                changes = changes.set_header(name.as_str(), value);
            }
        }
        changes
    }

    /// Whether no part of the identity is sent.
    pub fn is_empty(&self) -> bool {
        self.consumer.is_none() && self.roles.is_none() && self.tenant.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(json: &str) -> (IdentityHeaders, Vec<String>) {
        let config: IdentityHeadersConfig = serde_json::from_str(json).expect("valid JSON");
        let mut problems = Vec::new();
        (config.build("identity_headers", &mut problems), problems)
    }

    #[test]
    fn names_are_lowercased_and_checked() {
        let (headers, problems) = build(r#"{"consumer":"X-Consumer","tenant":"x-tenant"}"#);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(headers.consumer.as_deref(), Some("x-consumer"));
        assert_eq!(headers.roles, None);
        assert_eq!(headers.tenant.as_deref(), Some("x-tenant"));
        assert!(!headers.is_empty());
        assert!(build("{}").0.is_empty());

        let (_, problems) =
            build(r#"{"consumer":"x consumer","roles":"Authorization","tenant":"X-CONSUMER-2"}"#);
        assert_eq!(
            problems,
            [
                "identity_headers.consumer: `x consumer` is not a valid header name",
                "identity_headers.roles: `Authorization` cannot carry the identity",
            ]
        );
        let (_, problems) = build(r#"{"consumer":"x-who","tenant":"X-Who"}"#);
        assert_eq!(
            problems,
            ["identity_headers.tenant: `X-Who` is used by another part of the identity"]
        );
        let err = serde_json::from_str::<IdentityHeadersConfig>(r#"{"user":"x"}"#)
            .expect_err("unknown field");
        assert!(err.to_string().contains("unknown field `user`"), "{err}");
    }

    #[test]
    fn the_identity_replaces_what_the_client_sent() {
        let (headers, _) =
            build(r#"{"consumer":"x-consumer","roles":"x-roles","tenant":"x-tenant"}"#);
        let mut identity = Identity::new("alice");
        identity.tenant = Some("acme\r\nx-admin: 1".into());
        let changes = headers.apply(RequestChanges::new(), &identity);
        assert_eq!(
            changes.remove_headers,
            ["x-consumer", "x-roles", "x-tenant"]
        );
        assert_eq!(
            changes.set_headers,
            [("x-consumer".to_owned(), "alice".to_owned())],
            "no roles, and a tenant with control characters, send nothing"
        );
    }
}
