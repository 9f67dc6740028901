//! The plugin's configuration and its validation.

use portcullis_plugin_kit::identity::IdentityHeadersConfig;
use serde::Deserialize;

use crate::Introspection;

/// The largest `cache_ttl_seconds` and `stale_seconds`.
const MAX_CACHE_SECONDS: u64 = 86_400;
/// The largest `negative_cache_seconds`.
const MAX_NEGATIVE_SECONDS: u64 = 300;

/// How the gateway authenticates to the introspection endpoint (RFC 6749
/// §2.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ClientAuth {
    /// HTTP Basic with the form-encoded id and secret
    /// (`client_secret_basic`).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form (`client_secret_post`).
    Post,
}

/// What a request gets when the endpoint cannot answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnUnavailable {
    /// 503: no token passes unchecked.
    #[default]
    FailClosed,
    /// A token that was active when last checked passes for up to
    /// `stale_seconds` past its cache entry (never past its `exp`);
    /// others get 503.
    UseStale,
}

/// The configuration of one route's `oauth2_introspection`.
///
/// ```toml
/// [routes.plugins.config]
/// endpoint = "https://idp.example.com/realms/main/protocol/openid-connect/token/introspect"
/// client_id = "gateway"
/// client_secret = "..."
/// required_scopes = ["orders:read"]
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The introspection endpoint (RFC 7662 §2).
    endpoint: String,
    /// The gateway's client id at the provider.
    client_id: String,
    /// Its secret.
    client_secret: String,
    /// How the client authenticates.
    #[serde(default)]
    client_auth: ClientAuth,
    /// The `token_type_hint` sent; `""` sends none.
    #[serde(default = "default_hint")]
    token_type_hint: String,
    /// Scopes every token must have (all of them).
    #[serde(default)]
    required_scopes: Vec<String>,
    /// Accepted audiences: a token's `aud` must contain one. Empty: not
    /// checked.
    #[serde(default)]
    audience: Vec<String>,
    /// The accepted `iss`; unset: not checked.
    #[serde(default)]
    issuer: Option<String>,
    /// The member naming the consumer.
    #[serde(default = "default_consumer_claim")]
    consumer_claim: String,
    /// The member holding the roles; `""` gives no roles.
    #[serde(default = "default_roles_claim")]
    roles_claim: String,
    /// The member holding the tenant, if any.
    #[serde(default)]
    tenant_claim: Option<String>,
    /// Headers that carry the identity upstream.
    #[serde(default)]
    identity_headers: IdentityHeadersConfig,
    /// Whether to strip the token before the upstream.
    #[serde(default = "default_true")]
    hide_credentials: bool,
    /// The realm of the challenge.
    #[serde(default = "default_realm")]
    realm: String,
    /// How long an active token's answer is used, at most, in seconds
    /// (never past its `exp`).
    #[serde(default = "default_cache_ttl_seconds")]
    cache_ttl_seconds: u64,
    /// How long an inactive token's answer is used, in seconds.
    #[serde(default = "default_negative_cache_seconds")]
    negative_cache_seconds: u64,
    /// What happens when the endpoint cannot answer.
    #[serde(default)]
    on_unavailable: OnUnavailable,
    /// With `use_stale`: how long past its entry an answer may serve.
    #[serde(default = "default_stale_seconds")]
    stale_seconds: u64,
}

fn default_hint() -> String {
    "access_token".into()
}

fn default_consumer_claim() -> String {
    "sub".into()
}

fn default_roles_claim() -> String {
    "scope".into()
}

fn default_true() -> bool {
    true
}

fn default_realm() -> String {
    "portcullis".into()
}

fn default_cache_ttl_seconds() -> u64 {
    300
}

fn default_negative_cache_seconds() -> u64 {
    10
}

fn default_stale_seconds() -> u64 {
    300
}

/// The plugin built from an accepted configuration, with warnings.
pub(crate) type Built = portcullis_plugin_kit::config::Built<Introspection>;

impl Config {
    /// Validates the configuration; every problem at once, each naming its
    /// key, separated by `; `.
    pub(crate) fn build(self) -> Result<Built, String> {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        if !(self.endpoint.starts_with("https://") || self.endpoint.starts_with("http://")) {
            problems.push(format!(
                "endpoint: `{}` is not an http(s) URL",
                self.endpoint
            ));
        } else if self.endpoint.starts_with("http://") {
            warnings.push(
                "endpoint: plain http sends the client secret and tokens unencrypted; use https outside a trusted network"
                    .to_owned(),
            );
        }
        if self.client_id.is_empty() {
            problems.push("client_id: must not be empty".into());
        }
        if self.client_secret.trim_end_matches(['\n', '\r']).is_empty() {
            problems.push("client_secret: must not be empty".into());
        }
        if !self.token_type_hint.bytes().all(|b| b.is_ascii_graphic()) {
            problems.push("token_type_hint: must be printable ASCII".into());
        }
        for (i, scope) in self.required_scopes.iter().enumerate() {
            // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
            if scope.is_empty()
                || !scope
                    .bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
            {
                problems.push(format!(
                    "required_scopes[{i}]: `{scope}` is not a scope token (RFC 6749 §3.3)"
                ));
            }
        }
        for (i, aud) in self.audience.iter().enumerate() {
            if aud.is_empty() {
                problems.push(format!("audience[{i}]: must not be empty"));
            }
        }
        if self.consumer_claim.is_empty() {
            problems.push("consumer_claim: must not be empty".into());
        }
        if self.tenant_claim.as_deref() == Some("") {
            problems.push("tenant_claim: must not be empty".into());
        }
        if !self
            .realm
            .bytes()
            .all(|b| b == b' ' || (b.is_ascii_graphic() && b != b'"' && b != b'\\'))
        {
            problems.push("realm: must be printable ASCII without `\"` or `\\`".to_owned());
        }
        if self.cache_ttl_seconds > MAX_CACHE_SECONDS {
            problems.push(format!("cache_ttl_seconds: at most {MAX_CACHE_SECONDS}"));
        }
        if self.stale_seconds > MAX_CACHE_SECONDS {
            problems.push(format!("stale_seconds: at most {MAX_CACHE_SECONDS}"));
        }
        if self.negative_cache_seconds > MAX_NEGATIVE_SECONDS {
            problems.push(format!(
                "negative_cache_seconds: at most {MAX_NEGATIVE_SECONDS}"
            ));
        }
        let header_names = self
            .identity_headers
            .build("identity_headers", &mut problems);
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let stale_ms = match self.on_unavailable {
            OnUnavailable::FailClosed => 0,
            OnUnavailable::UseStale => self.stale_seconds * 1000,
        };
        Ok(Built {
            plugin: Introspection {
                cache_prefix: crate::cache_prefix(&self.endpoint, &self.client_id),
                endpoint: self.endpoint,
                // A secret read from a file (`files`) ends with its newline.
                client: crate::Client::new(
                    self.client_auth,
                    &self.client_id,
                    self.client_secret.trim_end_matches(['\n', '\r']),
                ),
                token_type_hint: (!self.token_type_hint.is_empty()).then_some(self.token_type_hint),
                required_scopes: self.required_scopes,
                audience: self.audience,
                issuer: self.issuer,
                consumer_claim: self.consumer_claim,
                roles_claim: (!self.roles_claim.is_empty()).then_some(self.roles_claim),
                tenant_claim: self.tenant_claim,
                identity_headers: header_names,
                hide_credentials: self.hide_credentials,
                realm: self.realm,
                cache_ttl_ms: self.cache_ttl_seconds * 1000,
                negative_ttl_ms: self.negative_cache_seconds * 1000,
                stale_ms,
            },
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    portcullis_plugin_kit::config_test_helpers!(Config => Built);

    #[test]
    fn every_problem_is_named() {
        let why = problems(serde_json::json!({
            "endpoint": "idp.example/introspect",
            "client_id": "",
            "client_secret": "",
            "required_scopes": ["orders read"],
            "negative_cache_seconds": 301,
            "realm": "a\"b",
        }));
        for key in [
            "endpoint:",
            "client_id:",
            "client_secret:",
            "required_scopes[0]:",
            "negative_cache_seconds:",
            "realm:",
        ] {
            assert!(why.contains(key), "{key} missing in {why}");
        }
    }

    #[test]
    fn plain_http_is_a_warning() {
        let built = build(serde_json::json!({
            "endpoint": "http://127.0.0.1:9000/introspect",
            "client_id": "gw", "client_secret": "s",
        }))
        .expect("valid");
        assert_eq!(built.warnings.len(), 1);
    }
}
