//! `jwt_auth`: a Portcullis policy plugin that authenticates requests by a
//! JSON Web Token (RFC 7519, JWS compact form) taken from the
//! `Authorization: Bearer` header, another header, or a cookie, and
//! verified with keys from its configuration (PEM public keys, HMAC
//! secrets, a JWKS document). See the README for the configuration.
//!
//! The accepted algorithms come from the configuration only: a token's
//! `alg` merely selects among them, `none` is never accepted, and a token
//! is verified only with keys of its algorithm's family, so an HMAC token
//! can never be checked against an RSA public key used as a secret.
//!
//! `exp` and `nbf` are checked against the gateway's clock (`now_ms`), not
//! the system clock, with a configurable leeway; `iss` and `aud` against
//! the configured lists. A request without a token, or with a token that
//! fails any check, is answered with 401 and an RFC 6750 challenge. A good
//! token lets the request go on with an identity built from its claims,
//! the attribute `consumer`, chosen claims as headers, and by default
//! without the token.
//!
//! Successful verifications are remembered per instance for a short time
//! (the plugin kit's `VerifiedCache`), keyed by a salted SHA-256 of the
//! whole token as presented, signature included, so that a client sending
//! the same token on every request pays for one signature verification
//! (about 0.4 ms for RS256 in wasm) per `cache_ttl_seconds`. Only a
//! byte-identical token hits; an entry never outlives the token's `exp`;
//! failures are never remembered; `exp` and `nbf` are still checked on
//! every request.

use std::cell::RefCell;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use portcullis_plugin_kit::cache::VerifiedCache;
use portcullis_sdk::{Action, Identity, Policy, Reply, Request, RequestChanges, policy};
use serde_json::Value;

mod claims;
mod config;
mod keys;
mod remote;
mod token;

use claims::{Checks, Claims};
use config::Config;
use keys::Key;
use remote::{Change, Env, Live, Remote};

/// One route's `jwt_auth`, built from a validated [`Config`].
struct JwtAuth {
    /// The accepted algorithms.
    algorithms: Vec<Algorithm>,
    /// The keys; each usable by at least one accepted algorithm.
    keys: Vec<Key>,
    /// Checks of `exp`, `nbf`, `iss`, `aud` and required claims.
    checks: Checks,
    /// The header carrying the token (lowercase), if header lookup is on.
    header: Option<String>,
    /// The cookie carrying the token, if any.
    cookie: Option<String>,
    /// Whether to strip the token before the upstream.
    hide_credentials: bool,
    /// The claim naming the consumer.
    consumer_claim: String,
    /// The claim holding the roles, if any.
    roles_claim: Option<String>,
    /// The claim holding the tenant, if any.
    tenant_claim: Option<String>,
    /// (claim, lowercase header) pairs sent upstream.
    claims_to_headers: Vec<(String, String)>,
    /// The realm of the challenge (printable ASCII, no quotes).
    realm: String,
    /// Recent successful verifications. An instance handles one request
    /// at a time, so a `RefCell` is enough.
    cache: RefCell<VerifiedCache<Verified>>,
    /// Keys from the identity provider (`jwks_url`, `discovery`), if any.
    remote: Option<Remote>,
}

/// What verifying a token produced: all a later request with the same
/// token needs, so that the claims themselves are not kept.
#[derive(Debug, Clone, PartialEq)]
struct Verified {
    /// The identity built from the claims.
    identity: Identity,
    /// The value for each of the plugin's `claims_to_headers` entries, in
    /// their order; `None` where the claim is absent or unusable.
    claim_headers: Vec<Option<String>>,
    /// The token's `exp` (seconds since the epoch), if it has one.
    exp: Option<f64>,
    /// The token's `nbf` (seconds since the epoch), if it has one.
    nbf: Option<f64>,
}

impl Verified {
    /// The last millisecond before the token's `exp`, if it has one: a
    /// cache entry must end by then. A fractional `exp` is rounded down
    /// (`as` saturates and maps NaN to 0, which ends the entry at once).
    fn not_after_ms(&self) -> Option<u64> {
        self.exp.map(|exp| (exp * 1000.0) as u64)
    }
}

#[policy]
impl Policy for JwtAuth {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let plugin = config.build()?.log_warnings(portcullis_sdk::log::warn);
        if let Some(remote) = &plugin.remote {
            remote.start(&Live, portcullis_sdk::time::now_ms())?;
        }
        Ok(plugin)
    }

    fn on_request(&self, req: &Request) -> Action {
        let header = self.header.as_deref().and_then(|name| req.header(name));
        let cookies = if self.cookie.is_some() {
            req.header_values("cookie")
        } else {
            Vec::new()
        };
        let now_ms = portcullis_sdk::time::now_ms();
        if let Some(remote) = &self.remote
            && remote.sync(&Live, now_ms, false) == Ok(Change::Replaced)
        {
            self.forget_verifications();
        }
        self.authenticate_in(&Live, header.as_deref(), &cookies, now_ms)
    }

    fn needs(&self) -> portcullis_sdk::Needs {
        // Only keys from the provider need the tick (their refresh).
        portcullis_sdk::Needs {
            on_tick: self.remote.is_some(),
            ..portcullis_sdk::Needs::ALL
        }
    }

    fn on_tick(&self, _route: &str) {
        if let Some(remote) = &self.remote {
            remote.refresh_if_due(&Live, portcullis_sdk::time::now_ms());
        }
    }
}

/// Why a token did not verify.
#[derive(Debug)]
enum Unverified {
    /// No key in service can verify it (an unknown `kid`, say): the
    /// provider may have a new one.
    NoKey(String),
    /// It is invalid; the RFC 6750 `error_description`.
    Invalid(String),
}

impl From<String> for Unverified {
    fn from(description: String) -> Self {
        Unverified::Invalid(description)
    }
}

impl Unverified {
    fn into_description(self) -> String {
        match self {
            Unverified::NoKey(d) | Unverified::Invalid(d) => d,
        }
    }
}

/// Where the token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Header,
    Cookie,
}

impl JwtAuth {
    /// [`JwtAuth::authenticate_in`] without the gateway (unit tests of
    /// plugins without `jwks_url`).
    #[cfg(test)]
    fn authenticate(&self, header: Option<&str>, cookies: &[String], now_ms: u64) -> Action {
        self.authenticate_in(&remote::fake::Fake::at(now_ms), header, cookies, now_ms)
    }

    /// Empties the verification cache: the keys changed, and a token
    /// verified with a key that is gone must not pass from the cache.
    fn forget_verifications(&self) {
        let mut cache = self.cache.borrow_mut();
        *cache = VerifiedCache::new(cache.capacity(), cache.ttl_ms());
    }

    /// The decision for a request whose token header has the value `header`
    /// (if present) and whose `Cookie` headers are `cookies`, at `now_ms`
    /// on the gateway's clock, with the gateway's services in `env`. The
    /// header is tried first.
    fn authenticate_in(
        &self,
        env: &dyn Env,
        header: Option<&str>,
        cookies: &[String],
        now_ms: u64,
    ) -> Action {
        let is_authorization = self.header.as_deref() == Some("authorization");
        let from_header = header
            .and_then(|value| token::from_header(value, is_authorization))
            .map(|t| (t, Source::Header));
        let found = from_header.or_else(|| {
            let name = self.cookie.as_deref()?;
            token::from_cookies(cookies, name).map(|t| (t, Source::Cookie))
        });
        let Some((token, source)) = found else {
            return self.reject(None, "no bearer token found in request");
        };
        if let Some(remote) = &self.remote
            && self.keys.is_empty()
            && remote.unavailable(env, now_ms)
        {
            // Failing closed: no key from the provider yet (it was down at
            // load, `jwks_startup = "fail_closed"`), or none fetched within
            // `jwks_max_stale_seconds`. (With configured keys as well, those
            // verify on, and stale provider keys are left out of
            // `verify_with_keys`.)
            return Reply::message(503, "the identity provider's keys are not available")
                .header("retry-after", remote.retry_after_seconds().to_string())
                .into();
        }
        match self.admit(env, token, now_ms) {
            Ok(verified) => self.accept(verified, source, cookies).into(),
            Err(description) => {
                let description = description_text(&description);
                self.reject(Some(&description), &description)
            }
        }
    }

    /// What `token` verifies as at `now_ms`: from the cache if the same
    /// token (byte for byte) verified recently, with its `exp` and `nbf`
    /// checked again at `now_ms`; otherwise by verifying it in full, a
    /// success being remembered. The error is an RFC 6750
    /// `error_description`, the same either way.
    fn admit(&self, env: &dyn Env, token: &str, now_ms: u64) -> Result<Verified, String> {
        let mut cache = self.cache.borrow_mut();
        let key = cache.enabled().then(|| cache.key(&[token.as_bytes()]));
        if let Some(verified) = key.as_ref().and_then(|key| cache.get(key, now_ms)) {
            self.checks
                .check_times(verified.exp, verified.nbf, now_ms)?;
            return Ok(verified.clone());
        }
        drop(cache);
        let verified = self
            .verify(env, token, now_ms)
            .and_then(|claims| self.identify(&claims))?;
        let mut cache = self.cache.borrow_mut();
        if let Some(key) = key {
            let not_after = verified.not_after_ms();
            cache.insert(key, verified.clone(), now_ms, not_after);
        }
        Ok(verified)
    }

    /// Verifies `token`'s signature with the configured keys (and the
    /// provider's; a `kid` none of them has asks the provider once per
    /// interval) and checks its claims at `now_ms`. The error is an RFC
    /// 6750 `error_description`.
    fn verify(&self, env: &dyn Env, token: &str, now_ms: u64) -> Result<Claims, String> {
        match self.verify_with_keys(token, now_ms) {
            Err(Unverified::NoKey(why)) => match &self.remote {
                Some(remote) if remote.refetch_for_unknown_key(env, now_ms) == Change::Replaced => {
                    self.forget_verifications();
                    self.verify_with_keys(token, now_ms)
                        .map_err(Unverified::into_description)
                }
                _ => Err(why),
            },
            other => other.map_err(Unverified::into_description),
        }
    }

    /// [`JwtAuth::verify`] with the keys in service.
    fn verify_with_keys(&self, token: &str, now_ms: u64) -> Result<Claims, Unverified> {
        let header = read_header(token)?;
        let alg = self.algorithm(&header)?;
        let kid = match header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err("the token header's `kid` is not a string".to_owned().into()),
        };
        // Keys from the provider that went stale are not used (configured
        // keys, if any, still are).
        let remote = self.remote.as_ref().and_then(|r| r.keys_at(now_ms));
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .chain(remote.iter().flat_map(|keys| keys.iter()))
            .filter(|key| key.usable_for(alg))
            .filter(|key| match (kid, &key.kid) {
                (Some(wanted), Some(has)) => wanted == has,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(Unverified::NoKey(match kid {
                Some(_) => "no key matches the token's key id (`kid`)".to_owned(),
                None => format!("no key can verify {alg:?} tokens"),
            }));
        }

        // Only the signature: the registered claims are checked below,
        // against the gateway's clock rather than the system clock.
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;

        let mut failure = "the signature is invalid";
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    self.checks.check(&data.claims, now_ms)?;
                    return Ok(data.claims);
                }
                Err(e) => {
                    if let ErrorKind::Base64(_)
                    | ErrorKind::Json(_)
                    | ErrorKind::Utf8(_)
                    | ErrorKind::InvalidToken = e.kind()
                    {
                        failure = "the token is malformed";
                    }
                }
            }
        }
        Err(failure.to_owned().into())
    }

    /// The token's algorithm, if it is one of the accepted ones.
    fn algorithm(&self, header: &serde_json::Map<String, Value>) -> Result<Algorithm, String> {
        let name = match header.get("alg") {
            Some(Value::String(name)) => name.as_str(),
            _ => return Err("the token header has no `alg`".to_owned()),
        };
        if name.eq_ignore_ascii_case("none") {
            return Err("unsigned tokens (`alg` = `none`) are not accepted".to_owned());
        }
        if header.contains_key("crit") {
            return Err(
                "the token has critical header parameters (`crit`), which are not supported"
                    .to_owned(),
            );
        }
        name.parse::<Algorithm>()
            .ok()
            .filter(|alg| self.algorithms.contains(alg))
            .ok_or_else(|| format!("the algorithm `{}` is not accepted", printable(name, 16)))
    }

    /// What a request with a token of these (verified) `claims` gets: the
    /// identity and the claim header values, and the token's `exp` and
    /// `nbf` for checking them again later. An error if a claim the
    /// identity needs is missing or of the wrong type.
    fn identify(&self, claims: &Claims) -> Result<Verified, String> {
        let consumer_claim = &self.consumer_claim;
        let consumer = claims::lookup(claims, consumer_claim)
            .ok_or_else(|| format!("the token has no `{consumer_claim}` claim"))?;
        let consumer = claims::as_text(consumer)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| format!("the `{consumer_claim}` claim is not a non-empty string"))?;
        let mut identity = Identity::new(consumer);
        if let Some(name) = &self.roles_claim
            && let Some(value) = claims::lookup(claims, name)
        {
            identity.roles = claims::as_roles(value).ok_or_else(|| {
                format!("the `{name}` claim is not an array of strings or a space-separated string")
            })?;
        }
        if let Some(name) = &self.tenant_claim
            && let Some(value) = claims::lookup(claims, name)
        {
            identity.tenant = Some(
                claims::as_text(value)
                    .ok_or_else(|| format!("the `{name}` claim is not a string"))?,
            );
        }

        let claim_headers = self
            .claims_to_headers
            .iter()
            .map(|(claim, _)| claims::lookup(claims, claim).and_then(claims::header_value))
            .collect();
        // `verify` has checked that these, when present, are numbers.
        let time = |name| claims::number(claims, name);
        Ok(Verified {
            identity,
            claim_headers,
            exp: time("exp"),
            nbf: time("nbf"),
        })
    }

    /// The request changes for a verified token: its identity, the
    /// `consumer` attribute, claim headers, and the token stripped.
    fn accept(&self, verified: Verified, source: Source, cookies: &[String]) -> RequestChanges {
        let mut changes = RequestChanges::new().authenticated(verified.identity);
        if self.hide_credentials {
            match (source, &self.header, &self.cookie) {
                (Source::Header, Some(header), _) => {
                    changes = changes.remove_header(header.as_str());
                }
                (Source::Cookie, _, Some(name)) => {
                    changes = changes.remove_header("cookie");
                    for rest in token::without_cookie(cookies, name) {
                        changes = changes.add_header("cookie", rest);
                    }
                }
                _ => {}
            }
        }
        for ((_, header), value) in self.claims_to_headers.iter().zip(verified.claim_headers) {
            // Whatever the client sent under that name goes first.
            changes = changes.remove_header(header.as_str());
            if let Some(value) = value {
                changes = changes.set_header(header.as_str(), value);
            }
        }
        changes
    }

    /// A 401 with an RFC 6750 challenge (with `error="invalid_token"` when
    /// a token was presented, `description` set, in the characters
    /// [`description_text`] keeps) and a JSON message.
    fn reject(&self, description: Option<&str>, message: &str) -> Action {
        let mut challenge = format!("Bearer realm=\"{}\"", self.realm);
        if let Some(description) = description {
            challenge.push_str(", error=\"invalid_token\", error_description=\"");
            challenge.push_str(description);
            challenge.push('"');
        }
        Reply::unauthorized(challenge, message).into()
    }
}

/// The token's JOSE header, decoded. Only the compact JWS form (three
/// base64url parts) is accepted.
fn read_header(token: &str) -> Result<serde_json::Map<String, Value>, String> {
    let parts = token.split('.').count();
    if parts == 5 {
        return Err("encrypted tokens (JWE) are not supported".to_owned());
    }
    if parts != 3 {
        return Err("the token is malformed".to_owned());
    }
    let encoded = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| "the token is malformed".to_owned())?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(header)) => Ok(header),
        _ => Err("the token is malformed".to_owned()),
    }
}

/// `text` cut to `max` characters, with anything but printable ASCII
/// replaced by `?`: for echoing token contents in messages.
fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// `description` in the characters RFC 6750 §3 allows in
/// `error_description` (printable ASCII without `"` and `\`); backquotes
/// are kept, others become `'`.
fn description_text(description: &str) -> String {
    description
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
mod tests;
