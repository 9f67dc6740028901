//! The plugin's configuration and its validation.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

use jsonwebtoken::Algorithm;
use portcullis_plugin_kit::http::is_token_byte;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use crate::JwtAuth;
use crate::claims::Checks;
use crate::keys::{Key, KeyConfig, family_name, jwks_keys};
use crate::remote::{Remote, RemoteConfig, Startup};
use portcullis_plugin_kit::cache::VerifiedCache;

/// The algorithms this plugin verifies, by their JOSE names.
const SUPPORTED: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

/// The largest accepted `leeway_seconds`.
const MAX_LEEWAY_SECONDS: u64 = 3600;

/// The largest accepted `cache_size`: entries take a few hundred bytes
/// each, in every instance's memory.
const MAX_CACHE_SIZE: usize = 65_536;

/// The configuration of one route's `jwt_auth` plugin.
///
/// ```toml
/// [[routes.plugins]]
/// name = "jwt_auth"
/// files = { jwks = "jwks.json" }      # sets config.jwks to the file's text
/// [routes.plugins.config]
/// algorithms = ["RS256"]
/// issuer = "https://idp.example.com/"
/// audience = "orders-api"
/// roles_claim = "scope"
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The accepted signature algorithms; a token's `alg` must be one.
    algorithms: Vec<String>,
    /// Keys given one by one: PEM public keys or HMAC secrets.
    #[serde(default)]
    keys: Vec<KeyConfig>,
    /// A JWKS document, as a table or as its JSON text.
    #[serde(default)]
    jwks: Option<serde_json::Value>,
    /// The accepted issuers (`iss`); unset: not checked.
    #[serde(default)]
    issuer: Option<StringList>,
    /// The accepted audiences (`aud`); unset: not checked.
    #[serde(default)]
    audience: Option<StringList>,
    /// Claims every token must have.
    #[serde(default = "default_required_claims")]
    required_claims: Vec<String>,
    /// Clock skew allowed for `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_seconds")]
    leeway_seconds: u64,
    /// The header carrying the token; `""` disables header lookup.
    #[serde(default = "default_header")]
    header: String,
    /// The cookie carrying the token, if any; the header is tried first.
    #[serde(default)]
    cookie: Option<String>,
    /// Whether to strip the token before the upstream.
    #[serde(default = "default_true")]
    hide_credentials: bool,
    /// The claim whose value is the identity's consumer.
    #[serde(default = "default_consumer_claim")]
    consumer_claim: String,
    /// The claim holding the roles, if any.
    #[serde(default)]
    roles_claim: Option<String>,
    /// The claim holding the tenant, if any.
    #[serde(default)]
    tenant_claim: Option<String>,
    /// Claims sent to the upstream as headers: claim name to header name.
    #[serde(default)]
    claims_to_headers: BTreeMap<String, String>,
    /// The realm of the `WWW-Authenticate: Bearer realm="..."` challenge.
    #[serde(default = "default_realm")]
    realm: String,
    /// The most successful verifications remembered per instance; 0 turns
    /// the cache off.
    #[serde(default = "default_cache_size")]
    cache_size: usize,
    /// How long a successful verification is remembered at most, in
    /// seconds (never past the token's `exp`); 0 turns the cache off.
    #[serde(default = "default_cache_ttl_seconds")]
    cache_ttl_seconds: u64,
    /// A JWKS to fetch from the identity provider, and keep fresh.
    #[serde(default)]
    jwks_url: Option<String>,
    /// Whether to find the JWKS through `issuer`'s OpenID Connect
    /// discovery document.
    #[serde(default)]
    discovery: bool,
    /// The shortest interval between two fetches of the JWKS, in seconds:
    /// the floor of the provider's `max-age`, and how often a token naming
    /// an unknown key may cause a fetch.
    #[serde(default = "default_jwks_min_refresh_seconds")]
    jwks_min_refresh_seconds: u64,
    /// The longest the JWKS (and the discovery document) is used before
    /// it is fetched again, in seconds.
    #[serde(default = "default_jwks_max_refresh_seconds")]
    jwks_max_refresh_seconds: u64,
    /// What happens when the keys cannot be fetched at load.
    #[serde(default = "default_jwks_startup")]
    jwks_startup: Startup,
    /// How long after its last successful fetch the JWKS may still be
    /// used while the provider cannot be reached, in seconds; unset: for
    /// as long as the provider is down.
    #[serde(default)]
    jwks_max_stale_seconds: Option<u64>,
}

fn default_jwks_min_refresh_seconds() -> u64 {
    30
}

fn default_jwks_max_refresh_seconds() -> u64 {
    86_400
}

fn default_jwks_startup() -> Startup {
    Startup::Require
}

/// A string or an array of strings, as a list.
pub(crate) struct StringList(Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;

        impl<'de> Visitor<'de> for ListVisitor {
            type Value = StringList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<StringList, E> {
                Ok(StringList(vec![value.to_owned()]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StringList, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(StringList(items))
            }
        }

        deserializer.deserialize_any(ListVisitor)
    }
}

fn default_required_claims() -> Vec<String> {
    vec!["exp".to_owned()]
}

fn default_leeway_seconds() -> u64 {
    60
}

fn default_header() -> String {
    "authorization".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_consumer_claim() -> String {
    "sub".to_owned()
}

fn default_realm() -> String {
    "portcullis".to_owned()
}

fn default_cache_size() -> usize {
    1024
}

fn default_cache_ttl_seconds() -> u64 {
    60
}

/// What building the plugin from a configuration produced: the plugin and
/// the warnings to log.
pub(crate) type Built = portcullis_plugin_kit::config::Built<JwtAuth>;

impl Config {
    /// Where keys come from the provider (`jwks_url` or `discovery`), if
    /// anywhere; problems go to `problems`.
    fn remote(&self, problems: &mut Vec<String>) -> Option<RemoteConfig> {
        let issuer = match (&self.issuer, self.discovery) {
            (_, false) => None,
            (Some(StringList(list)), true) if list.len() == 1 => Some(list[0].clone()),
            (_, true) => {
                problems
                    .push("discovery: needs `issuer` set to the one issuer to discover".to_owned());
                None
            }
        };
        if let Some(url) = &self.jwks_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                problems.push(format!("jwks_url: `{url}` is not an http(s) URL"));
            }
            if self.discovery {
                problems.push(
                    "jwks_url, discovery: set one: discovery finds the JWKS URL itself".to_owned(),
                );
            }
        }
        if let Some(issuer) = &issuer
            && !(issuer.starts_with("https://") || issuer.starts_with("http://"))
        {
            problems.push(format!(
                "issuer: `{issuer}` is not an http(s) URL, so it cannot be discovered"
            ));
        }
        let (min, max) = (self.jwks_min_refresh_seconds, self.jwks_max_refresh_seconds);
        if !(1..=86_400).contains(&min) {
            problems.push(format!(
                "jwks_min_refresh_seconds: must be between 1 and 86400, got {min}"
            ));
        }
        if max < min || max > 604_800 {
            problems.push(format!(
                "jwks_max_refresh_seconds: must be between jwks_min_refresh_seconds ({min}) and 604800, got {max}"
            ));
        }
        if let Some(stale) = self.jwks_max_stale_seconds {
            // A document is fetched again by half its allowed age at the
            // latest, so one failed fetch does not make it stale.
            let floor = min.saturating_mul(2);
            if stale < floor || stale > 31_536_000 {
                problems.push(format!(
                    "jwks_max_stale_seconds: must be between twice jwks_min_refresh_seconds ({floor}) and 31536000, got {stale}"
                ));
            }
        }
        if self.jwks_url.is_none() && issuer.is_none() {
            if self.jwks_max_stale_seconds.is_some() {
                problems.push(
                    "jwks_max_stale_seconds: only applies to keys fetched from `jwks_url` or by `discovery`".to_owned(),
                );
            }
            return None;
        }
        Some(RemoteConfig {
            jwks_url: self.jwks_url.clone(),
            issuer,
            min_refresh_ms: min.saturating_mul(1000),
            max_refresh_ms: max.saturating_mul(1000),
            max_stale_ms: self.jwks_max_stale_seconds.map(|s| s.saturating_mul(1000)),
            startup: self.jwks_startup,
        })
    }

    /// Validates the configuration and builds the key set. Reports every
    /// problem at once, each naming its key, separated by `; `.
    pub(crate) fn build(self) -> Result<Built, String> {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let remote = self.remote(&mut problems);

        let mut algorithms: Vec<Algorithm> = Vec::new();
        if self.algorithms.is_empty() {
            problems.push(format!(
                "algorithms: at least one is required ({SUPPORTED})"
            ));
        }
        for (i, name) in self.algorithms.iter().enumerate() {
            if name.eq_ignore_ascii_case("none") {
                problems.push(format!(
                    "algorithms[{i}]: `none` (unsigned tokens) is never accepted"
                ));
                continue;
            }
            match name.parse::<Algorithm>() {
                Ok(alg) if algorithms.contains(&alg) => {
                    problems.push(format!("algorithms[{i}]: `{name}` is listed twice"));
                }
                Ok(alg) => algorithms.push(alg),
                Err(_) => problems.push(format!(
                    "algorithms[{i}]: unknown algorithm `{name}` (supported: {SUPPORTED})"
                )),
            }
        }

        let mut keys: Vec<Key> = Vec::new();
        for (i, entry) in self.keys.into_iter().enumerate() {
            match entry.build(i, &mut warnings) {
                Ok(key) => keys.push(key),
                Err(why) => problems.push(why),
            }
        }
        let configured_keys = keys.len();
        if let Some(jwks) = self.jwks {
            match jwks_keys(jwks, &mut warnings) {
                Ok(mut more) => keys.append(&mut more),
                Err(mut why) => problems.append(&mut why),
            }
        }

        // Keys and algorithms must fit each other: a key nothing can use,
        // or an algorithm no key can verify, is a configuration mistake.
        if problems.is_empty() {
            if keys.is_empty() && remote.is_none() {
                problems.push(
                    "keys, jwks: no key is configured; add `keys` entries, a `jwks` document, a `jwks_url` or `discovery`"
                        .to_owned(),
                );
            }
            for alg in &algorithms {
                // Keys from the provider may serve it: they are not known yet.
                if remote.is_none() && !keys.is_empty() && !keys.iter().any(|k| k.usable_for(*alg))
                {
                    problems.push(format!(
                        "algorithms: `{alg:?}` is accepted but no configured key can verify it (it needs an {})",
                        family_name(alg.family())
                    ));
                }
            }
            let mut usable = Vec::with_capacity(keys.len());
            for (i, key) in keys.into_iter().enumerate() {
                if algorithms.iter().any(|alg| key.usable_for(*alg)) {
                    usable.push(key);
                } else if i < configured_keys {
                    problems.push(format!(
                        "{}: an {} that none of `algorithms` uses",
                        key.origin,
                        family_name(key.key.family())
                    ));
                } else {
                    warnings.push(format!(
                        "{}: skipped: an {} that none of `algorithms` uses",
                        key.origin,
                        family_name(key.key.family())
                    ));
                }
            }
            keys = usable;
        }

        let issuers = self.issuer.map(|list| list.0);
        let audiences = self.audience.map(|list| list.0);
        for (name, list) in [("issuer", &issuers), ("audience", &audiences)] {
            match list {
                Some(list) if list.is_empty() => {
                    problems.push(format!(
                        "{name}: an empty list accepts nothing; leave it unset to skip the check"
                    ));
                }
                Some(list) if list.iter().any(String::is_empty) => {
                    problems.push(format!("{name}: must not contain an empty string"));
                }
                _ => {}
            }
        }
        for (i, claim) in self.required_claims.iter().enumerate() {
            if claim.is_empty() {
                problems.push(format!("required_claims[{i}]: must not be empty"));
            }
        }
        if self.leeway_seconds > MAX_LEEWAY_SECONDS {
            problems.push(format!("leeway_seconds: at most {MAX_LEEWAY_SECONDS}"));
        }

        let header = self.header.to_ascii_lowercase();
        if !header.is_empty() && !header.bytes().all(is_token_byte) {
            problems.push(format!(
                "header: `{}` is not a valid header name",
                self.header
            ));
        }
        let cookie = self.cookie.filter(|c| !c.is_empty());
        if let Some(name) = &cookie
            && !name.bytes().all(is_token_byte)
        {
            problems.push(format!("cookie: `{name}` is not a valid cookie name"));
        }
        if header.is_empty() && cookie.is_none() {
            problems.push(
                "header, cookie: `header` is empty and `cookie` is not set, so no token could be found"
                    .to_owned(),
            );
        }

        for (name, claim) in [
            ("consumer_claim", Some(&self.consumer_claim)),
            ("roles_claim", self.roles_claim.as_ref()),
            ("tenant_claim", self.tenant_claim.as_ref()),
        ] {
            if claim.is_some_and(|c| c.is_empty()) {
                problems.push(format!("{name}: must not be empty"));
            }
        }
        let mut claims_to_headers = Vec::with_capacity(self.claims_to_headers.len());
        for (claim, name) in self.claims_to_headers {
            let lower = name.to_ascii_lowercase();
            if claim.is_empty() {
                problems.push("claims_to_headers: a claim name is empty".to_owned());
            } else if lower.is_empty() || !lower.bytes().all(is_token_byte) {
                problems.push(format!(
                    "claims_to_headers.{claim}: `{name}` is not a valid header name"
                ));
            } else if [
                "authorization",
                "cookie",
                "host",
                "content-length",
                "transfer-encoding",
            ]
            .contains(&lower.as_str())
                || lower == header
            {
                problems.push(format!(
                    "claims_to_headers.{claim}: `{name}` cannot carry a claim"
                ));
            } else if claims_to_headers.iter().any(|(_, h)| *h == lower) {
                problems.push(format!(
                    "claims_to_headers.{claim}: `{name}` is used by another claim"
                ));
            } else {
                claims_to_headers.push((claim, lower));
            }
        }
        if !self
            .realm
            .bytes()
            .all(|b| b == b' ' || (b.is_ascii_graphic() && b != b'"' && b != b'\\'))
        {
            problems.push("realm: must be printable ASCII without `\"` or `\\`".to_owned());
        }

        if self.cache_size > MAX_CACHE_SIZE {
            problems.push(format!("cache_size: at most {MAX_CACHE_SIZE}"));
        }
        let cache_ttl_ms = self.cache_ttl_seconds.saturating_mul(1000);

        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Built {
            plugin: JwtAuth {
                keys,
                checks: Checks {
                    issuers,
                    audiences,
                    required: self.required_claims,
                    leeway_seconds: self.leeway_seconds,
                },
                header: (!header.is_empty()).then_some(header),
                cookie,
                hide_credentials: self.hide_credentials,
                consumer_claim: self.consumer_claim,
                roles_claim: self.roles_claim,
                tenant_claim: self.tenant_claim,
                claims_to_headers,
                realm: self.realm,
                cache: RefCell::new(VerifiedCache::new(self.cache_size, cache_ttl_ms)),
                remote: remote.map(|config| Remote::new(config, algorithms.clone())),
                algorithms,
            },
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/tests/data/jwt/");

    fn read(name: &str) -> String {
        std::fs::read_to_string(format!("{DATA}{name}")).expect("test key")
    }

    portcullis_plugin_kit::config_test_helpers!(Config => Built);

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults_apply() {
        let built = build(serde_json::json!({
            "algorithms": ["HS256"], "keys": [{ "secret": SECRET }],
        }))
        .expect("valid");
        let plugin = built.plugin;
        assert_eq!(plugin.algorithms, [Algorithm::HS256]);
        assert_eq!(plugin.keys.len(), 1);
        assert_eq!(plugin.header.as_deref(), Some("authorization"));
        assert_eq!(plugin.cookie, None);
        assert!(plugin.hide_credentials);
        assert_eq!(plugin.consumer_claim, "sub");
        assert_eq!(plugin.roles_claim, None);
        assert_eq!(plugin.tenant_claim, None);
        assert!(plugin.claims_to_headers.is_empty());
        assert_eq!(plugin.realm, "portcullis");
        assert_eq!(plugin.checks.required, ["exp"]);
        assert_eq!(plugin.checks.leeway_seconds, 60);
        assert_eq!(plugin.checks.issuers, None);
        assert_eq!(plugin.checks.audiences, None);
        assert!(plugin.cache.borrow().enabled());
        assert_eq!(plugin.cache.borrow().capacity(), 1024);
        assert_eq!(plugin.cache.borrow().ttl_ms(), 60_000);
        assert!(built.warnings.is_empty());
    }

    #[test]
    fn every_field_is_read() {
        let built = build(serde_json::json!({
            "algorithms": ["RS256", "ES256", "EdDSA", "HS512"],
            "keys": [{ "kid": "h", "secret_base64": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" }],
            "jwks": read("jwks.json"),
            "issuer": "https://idp.example",
            "audience": ["api", "web"],
            "required_claims": ["exp", "sub"],
            "leeway_seconds": 5,
            "header": "X-Token",
            "cookie": "session",
            "hide_credentials": false,
            "consumer_claim": "email",
            "roles_claim": "scope",
            "tenant_claim": "org.id",
            "claims_to_headers": { "email": "X-User-Email", "sub": "x-user" },
            "realm": "orders",
            "cache_size": 10,
            "cache_ttl_seconds": 5,
        }))
        .expect("valid");
        let plugin = built.plugin;
        assert_eq!(plugin.algorithms.len(), 4);
        let kids: Vec<_> = plugin
            .keys
            .iter()
            .filter_map(|k| k.kid.as_deref())
            .collect();
        assert_eq!(kids, ["h", "rsa-1", "rsa-2", "ec-1", "ed-1"]);
        assert_eq!(
            plugin.checks.issuers,
            Some(vec!["https://idp.example".to_owned()])
        );
        assert_eq!(
            plugin.checks.audiences,
            Some(vec!["api".to_owned(), "web".to_owned()])
        );
        assert_eq!(plugin.checks.required, ["exp", "sub"]);
        assert_eq!(plugin.checks.leeway_seconds, 5);
        assert_eq!(plugin.header.as_deref(), Some("x-token"));
        assert_eq!(plugin.cookie.as_deref(), Some("session"));
        assert!(!plugin.hide_credentials);
        assert_eq!(plugin.consumer_claim, "email");
        assert_eq!(plugin.roles_claim.as_deref(), Some("scope"));
        assert_eq!(plugin.tenant_claim.as_deref(), Some("org.id"));
        assert_eq!(
            plugin.claims_to_headers,
            [
                ("email".to_owned(), "x-user-email".to_owned()),
                ("sub".to_owned(), "x-user".to_owned())
            ]
        );
        assert_eq!(plugin.realm, "orders");
        assert_eq!(plugin.cache.borrow().capacity(), 10);
        assert_eq!(plugin.cache.borrow().ttl_ms(), 5_000);
        assert!(built.warnings.is_empty(), "{:?}", built.warnings);
    }

    #[test]
    fn the_provider_keys_are_read() {
        let built = build(serde_json::json!({
            "algorithms": ["RS256"],
            "jwks_url": "https://idp.example/jwks",
            "jwks_min_refresh_seconds": 10,
            "jwks_max_refresh_seconds": 600,
            "jwks_max_stale_seconds": 3600,
            "jwks_startup": "fail_closed",
        }))
        .expect("valid");
        let remote = built.plugin.remote.expect("keys from the provider");
        assert_eq!(
            remote.config(),
            &RemoteConfig {
                jwks_url: Some("https://idp.example/jwks".to_owned()),
                issuer: None,
                min_refresh_ms: 10_000,
                max_refresh_ms: 600_000,
                max_stale_ms: Some(3_600_000),
                startup: Startup::FailClosed,
            }
        );
    }

    #[test]
    fn jwks_keys_no_algorithm_uses_are_skipped_with_a_warning() {
        let built =
            build(serde_json::json!({ "algorithms": ["RS256"], "jwks": read("jwks.json") }))
                .expect("valid");
        assert_eq!(built.plugin.keys.len(), 2, "the two RSA keys");
        assert_eq!(built.warnings.len(), 2, "{:?}", built.warnings);
        assert!(built.warnings[0].starts_with("jwks.keys[2]: skipped: an EC key"));
    }

    #[test]
    fn problems_name_their_key() {
        let rsa = read("rsa_public.pem");
        let cases = [
            (
                serde_json::json!({ "keys": [{ "secret": SECRET }] }),
                "missing field `algorithms`",
            ),
            (
                serde_json::json!({ "algorithms": [], "keys": [{ "secret": SECRET }] }),
                "algorithms: at least one is required",
            ),
            (
                serde_json::json!({ "algorithms": ["none"], "keys": [{ "secret": SECRET }] }),
                "algorithms[0]: `none` (unsigned tokens) is never accepted",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256", "XS1"], "keys": [{ "secret": SECRET }] }),
                "algorithms[1]: unknown algorithm `XS1`",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256", "HS256"], "keys": [{ "secret": SECRET }] }),
                "algorithms[1]: `HS256` is listed twice",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"] }),
                "keys, jwks: no key is configured",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256", "RS256"], "keys": [{ "secret": SECRET }] }),
                "algorithms: `RS256` is accepted but no configured key can verify it (it needs an RSA key)",
            ),
            (
                serde_json::json!({ "algorithms": ["ES384"], "keys": [{ "pem": read("ec_public.pem") }] }),
                "algorithms: `ES384` is accepted but no configured key can verify it",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }, { "pem": rsa }] }),
                "keys[1]: an RSA key that none of `algorithms` uses",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "issuer": [] }),
                "issuer: an empty list accepts nothing",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "audience": ["a", ""] }),
                "audience: must not contain an empty string",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "audience": 5 }),
                "invalid type: integer `5`, expected a string or an array of strings",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "required_claims": [""] }),
                "required_claims[0]: must not be empty",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "leeway_seconds": 3601 }),
                "leeway_seconds: at most 3600",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "header": "x token" }),
                "header: `x token` is not a valid header name",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "cookie": "a=b" }),
                "cookie: `a=b` is not a valid cookie name",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "header": "" }),
                "header, cookie: `header` is empty and `cookie` is not set",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "consumer_claim": "" }),
                "consumer_claim: must not be empty",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "roles_claim": "" }),
                "roles_claim: must not be empty",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "claims_to_headers": { "sub": "x y" } }),
                "claims_to_headers.sub: `x y` is not a valid header name",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "claims_to_headers": { "sub": "Authorization" } }),
                "claims_to_headers.sub: `Authorization` cannot carry a claim",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "claims_to_headers": { "a": "x-a", "b": "X-A" } }),
                "claims_to_headers.b: `X-A` is used by another claim",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "realm": "a\"b" }),
                "realm: must be printable ASCII",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "jwks": "nope" }),
                "jwks: the text is not JSON",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "cache_size": 65_537 }),
                "cache_size: at most 65536",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "cache_size": -1 }),
                "invalid value: integer `-1`",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "nope": 1 }),
                "unknown field `nope`",
            ),
            (
                serde_json::json!({ "algorithms": ["RS256"], "jwks_url": "https://idp.example/jwks", "jwks_max_stale_seconds": 59 }),
                "jwks_max_stale_seconds: must be between twice jwks_min_refresh_seconds (60) and 31536000, got 59",
            ),
            (
                serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }], "jwks_max_stale_seconds": 600 }),
                "jwks_max_stale_seconds: only applies to keys fetched from `jwks_url` or by `discovery`",
            ),
        ];
        portcullis_plugin_kit::testing::assert_problems(cases, Config::build);
    }

    #[test]
    fn a_short_secret_is_accepted_with_a_warning() {
        let built =
            build(serde_json::json!({ "algorithms": ["HS256"], "keys": [{ "secret": "short" }] }))
                .expect("valid");
        assert_eq!(built.warnings.len(), 1);
        assert!(built.warnings[0].starts_with("keys[0].secret: the secret is 5 bytes"));
    }
}
