//! `oauth2_introspection`: a Portcullis policy plugin that checks opaque
//! OAuth 2.0 bearer tokens at the provider's introspection endpoint
//! (RFC 7662), through the route's outbound grant. See the README.
//!
//! The token comes from `Authorization: Bearer` (RFC 6750 §2.1). It is
//! posted to the endpoint with the gateway's client credentials (Basic or
//! in the form); the answer must say `"active": true`, and is then checked
//! here too: `exp` and `nbf` on the gateway's clock, `iss` and `aud` when
//! configured, and the required scopes. The request goes on with the same
//! identity as the other authentication plugins (consumer, roles from the
//! scopes or a member, tenant).
//!
//! Answers are cached in the gateway's store, shared by every instance, by
//! a SHA-256 of the endpoint, the client id and the token (never the token
//! itself): an active token's until its `exp` and `cache_ttl_seconds` at
//! most, an inactive one's for `negative_cache_seconds`. When the endpoint
//! fails, requests fail closed (503) for a second without asking it again,
//! so a provider in trouble is not hammered; with `use_stale`, a token
//! that was active when last asked keeps passing for `stale_seconds`.

use base64::Engine as _;
use portcullis_plugin_kit::identity::IdentityHeaders;
use portcullis_sdk::{Action, Identity, Policy, Reply, Request, RequestChanges, policy};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

mod config;

use config::{ClientAuth, Config};

/// How long requests fail fast after the endpoint failed, in ms.
const BACKOFF_MS: u64 = 1_000;

/// How the plugin authenticates to the endpoint, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Client {
    /// The `Authorization: Basic` value.
    Basic(String),
    /// The form fields, encoded (`client_id=..&client_secret=..`).
    Post(String),
}

impl Client {
    fn new(auth: ClientAuth, id: &str, secret: &str) -> Self {
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        match auth {
            // RFC 6749 §2.3.1: the id and secret are form-encoded, then
            // joined and base64-encoded.
            ClientAuth::Basic => Client::Basic(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    encode(id),
                    encode(secret)
                ))
            )),
            ClientAuth::Post => Client::Post(
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("client_id", id)
                    .append_pair("client_secret", secret)
                    .finish(),
            ),
        }
    }
}

/// The store key prefix of one endpoint and client's answers.
fn cache_prefix(endpoint: &str, client_id: &str) -> String {
    let digest = Sha256::digest(format!("{endpoint}\n{client_id}").as_bytes());
    format!("i:{}:", &hex::encode(digest)[..16])
}

/// One route's `oauth2_introspection`, built from a validated [`Config`].
pub(crate) struct Introspection {
    endpoint: String,
    client: Client,
    token_type_hint: Option<String>,
    required_scopes: Vec<String>,
    audience: Vec<String>,
    issuer: Option<String>,
    consumer_claim: String,
    roles_claim: Option<String>,
    tenant_claim: Option<String>,
    identity_headers: IdentityHeaders,
    hide_credentials: bool,
    realm: String,
    cache_ttl_ms: u64,
    negative_ttl_ms: u64,
    /// How long past its entry an active answer may serve when the
    /// endpoint fails (0: never).
    stale_ms: u64,
    /// `i:<digest of endpoint and client>:`, before the token's digest.
    cache_prefix: String,
}

/// What the plugin uses from the gateway; the hook passes [`Live`], unit
/// tests a fake.
pub(crate) trait Env {
    /// POSTs `body` (a form) to `url` with `headers`; the status and body.
    fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Result<(u16, Vec<u8>), String>;
    /// The store's value at `key`.
    fn get(&self, key: &str) -> Option<String>;
    /// Sets the store's `key` for `ttl_ms`.
    fn set(&self, key: &str, value: &str, ttl_ms: u64);
    /// Logs at `warn`.
    fn warn(&self, message: &str);
}

/// The gateway's services.
struct Live;

thread_local! {
    /// Whether this instance has said that the store refused an answer: a
    /// full store would otherwise log on every request.
    static STORE_WARNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Env for Live {
    fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Result<(u16, Vec<u8>), String> {
        let mut request = portcullis_sdk::http::Request::post(url).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let answer = request.send().map_err(|e| e.to_string())?;
        Ok((answer.status, answer.body))
    }

    fn get(&self, key: &str) -> Option<String> {
        portcullis_sdk::store::get(key)
    }

    fn set(&self, key: &str, value: &str, ttl_ms: u64) {
        let ttl = Some(std::time::Duration::from_millis(ttl_ms.max(1)));
        if let Err(e) = portcullis_sdk::store::set(key, value, ttl)
            && !STORE_WARNED.replace(true)
        {
            portcullis_sdk::log::warn(&format!(
                "cannot cache introspection answers: {e}; every request asks the endpoint (logged once per instance)"
            ));
        }
    }

    fn warn(&self, message: &str) {
        portcullis_sdk::log::warn(message);
    }
}

/// A cached answer.
#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    /// Until when it is used without asking again (ms).
    fresh_until: u64,
    /// The endpoint's answer (the members this plugin reads).
    claims: Map<String, Value>,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// 401 `invalid_token`, with a description.
    Invalid(&'static str),
    /// 403 `insufficient_scope`.
    Scope,
    /// 503: the endpoint cannot answer.
    Unavailable,
}

#[policy]
impl Policy for Introspection {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(config.build()?.log_warnings(portcullis_sdk::log::warn))
    }

    fn on_request(&self, req: &Request) -> Action {
        let header = req.header("authorization");
        self.authenticate(&Live, header.as_deref(), portcullis_sdk::time::now_ms())
    }
}

impl Introspection {
    /// The decision for a request whose `Authorization` is `header`, at
    /// `now_ms` on the gateway's clock.
    fn authenticate(&self, env: &dyn Env, header: Option<&str>, now_ms: u64) -> Action {
        let token = header.and_then(bearer).filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Reply::unauthorized(
                format!("Bearer realm=\"{}\"", self.realm),
                "no bearer token found in request",
            )
            .into();
        };
        match self
            .claims(env, token, now_ms)
            .and_then(|claims| self.admit(&claims, now_ms))
        {
            Ok(identity) => {
                let mut changes = RequestChanges::new().authenticated(identity.clone());
                if self.hide_credentials {
                    changes = changes.remove_header("authorization");
                }
                self.identity_headers.apply(changes, &identity).into()
            }
            Err(refusal) => self.refuse(refusal),
        }
    }

    /// The endpoint's answer for `token`: cached, or asked now.
    fn claims(
        &self,
        env: &dyn Env,
        token: &str,
        now_ms: u64,
    ) -> Result<Map<String, Value>, Refusal> {
        let key = format!(
            "{}{}",
            self.cache_prefix,
            hex::encode(Sha256::digest(token.as_bytes()))
        );
        let cached = env
            .get(&key)
            .and_then(|text| serde_json::from_str::<Cached>(&text).ok());
        if let Some(cached) = &cached
            && now_ms < cached.fresh_until
        {
            return Ok(cached.claims.clone());
        }
        let backoff = format!("{}down", self.cache_prefix);
        let answer = if env.get(&backoff).is_some() {
            Err(None)
        } else {
            self.ask(env, token).map_err(Some)
        };
        match answer {
            Ok(claims) => {
                self.remember(env, &key, &claims, now_ms);
                Ok(claims)
            }
            Err(why) => {
                if let Some(why) = why {
                    env.warn(&format!("introspection at {} failed: {why}", self.endpoint));
                    env.set(&backoff, "1", BACKOFF_MS);
                }
                // A stale answer is only ever an active one kept for this.
                match cached {
                    Some(cached) if self.stale_ms > 0 => Ok(cached.claims),
                    _ => Err(Refusal::Unavailable),
                }
            }
        }
    }

    /// Posts the token to the endpoint (RFC 7662 §2.1).
    fn ask(&self, env: &dyn Env, token: &str) -> Result<Map<String, Value>, String> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token);
        if let Some(hint) = &self.token_type_hint {
            form.append_pair("token_type_hint", hint);
        }
        let mut body = form.finish();
        let mut headers = vec![
            ("content-type", "application/x-www-form-urlencoded"),
            ("accept", "application/json"),
        ];
        match &self.client {
            Client::Basic(value) => headers.push(("authorization", value.as_str())),
            Client::Post(fields) => {
                body.push('&');
                body.push_str(fields);
            }
        }
        let (status, answer) = env.post(&self.endpoint, &headers, body)?;
        if status != 200 {
            return Err(format!("it answered {status}"));
        }
        match serde_json::from_slice::<Value>(&answer) {
            Ok(Value::Object(claims)) => Ok(claims),
            _ => Err("its answer is not a JSON object".into()),
        }
    }

    /// Caches `claims`: an active token's until its `exp` and the TTL (plus
    /// the stale allowance), an inactive one's briefly.
    fn remember(&self, env: &dyn Env, key: &str, claims: &Map<String, Value>, now_ms: u64) {
        let active = claims.get("active") == Some(&Value::Bool(true));
        let (fresh, keep) = if active {
            let until_exp = seconds(claims, "exp")
                .map(|exp| ((exp * 1000.0) as u64).saturating_sub(now_ms))
                .unwrap_or(u64::MAX);
            let fresh = self.cache_ttl_ms.min(until_exp);
            (fresh, fresh.saturating_add(self.stale_ms).min(until_exp))
        } else {
            (self.negative_ttl_ms, self.negative_ttl_ms)
        };
        if keep == 0 {
            return;
        }
        // Only the members a check or the identity reads are kept.
        let mut kept = Map::new();
        for name in ["active", "exp", "nbf", "iss", "aud", "scope"]
            .into_iter()
            .chain([self.consumer_claim.as_str()])
            .chain(self.roles_claim.as_deref())
            .chain(self.tenant_claim.as_deref())
        {
            if let Some(value) = claims.get(name) {
                kept.insert(name.to_owned(), value.clone());
            }
        }
        let cached = Cached {
            fresh_until: now_ms.saturating_add(fresh),
            claims: kept,
        };
        if let Ok(text) = serde_json::to_string(&cached) {
            env.set(key, &text, keep);
        }
    }

    /// The identity of an answer, if it lets the request in at `now_ms`.
    fn admit(&self, claims: &Map<String, Value>, now_ms: u64) -> Result<Identity, Refusal> {
        if claims.get("active") != Some(&Value::Bool(true)) {
            return Err(Refusal::Invalid("the token is not active"));
        }
        let now = now_ms as f64 / 1000.0;
        match claims.get("exp") {
            None => {}
            Some(_) => match seconds(claims, "exp") {
                Some(exp) if now < exp => {}
                Some(_) => return Err(Refusal::Invalid("the token has expired")),
                None => return Err(Refusal::Invalid("the token's `exp` is not a number")),
            },
        }
        if let Some(nbf) = seconds(claims, "nbf")
            && now < nbf
        {
            return Err(Refusal::Invalid("the token is not valid yet"));
        }
        if let Some(issuer) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
        {
            return Err(Refusal::Invalid("the token's issuer is not accepted"));
        }
        if !self.audience.is_empty() {
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => self.audience.contains(aud),
                Some(Value::Array(auds)) => auds
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|aud| self.audience.iter().any(|a| a == aud)),
                _ => false,
            };
            if !ok {
                return Err(Refusal::Invalid("the token's audience is not accepted"));
            }
        }
        if !self.required_scopes.is_empty() {
            let scopes: Vec<&str> = claims
                .get("scope")
                .and_then(Value::as_str)
                .map(|s| s.split(' ').filter(|s| !s.is_empty()).collect())
                .unwrap_or_default();
            if !self
                .required_scopes
                .iter()
                .all(|s| scopes.contains(&s.as_str()))
            {
                return Err(Refusal::Scope);
            }
        }
        let consumer = claims
            .get(&self.consumer_claim)
            .and_then(text)
            .filter(|c| !c.is_empty())
            .ok_or(Refusal::Invalid(
                "the token has no consumer (`consumer_claim`)",
            ))?;
        let mut identity = Identity::new(consumer);
        if let Some(name) = &self.roles_claim {
            identity.roles = match claims.get(name) {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::String(s)) => s
                    .split(' ')
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned)
                    .collect(),
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                Some(_) => return Err(Refusal::Invalid("the token's roles are not strings")),
            };
        }
        if let Some(name) = &self.tenant_claim {
            identity.tenant = claims.get(name).and_then(text);
        }
        Ok(identity)
    }

    /// The reply for a refusal, with an RFC 6750 §3 challenge.
    fn refuse(&self, refusal: Refusal) -> Action {
        let realm = &self.realm;
        match refusal {
            Refusal::Invalid(why) => Reply::unauthorized(
                format!(
                    "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{why}\""
                ),
                why,
            )
            .into(),
            Refusal::Scope => {
                let scope = self.required_scopes.join(" ");
                Reply::message(403, "the token lacks a required scope")
                    .header(
                        "www-authenticate",
                        format!(
                            "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"the token lacks a required scope\", scope=\"{scope}\""
                        ),
                    )
                    .into()
            }
            Refusal::Unavailable => Reply::message(
                503,
                "the token cannot be checked now: the introspection endpoint is unavailable",
            )
            .header("retry-after", "1")
            .into(),
        }
    }
}

/// The token of an `Authorization: Bearer` value (the scheme is
/// case-insensitive, RFC 6750 §2.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A member holding seconds since the epoch (a number).
fn seconds(claims: &Map<String, Value>, name: &str) -> Option<f64> {
    claims.get(name).and_then(Value::as_f64)
}

/// A string member, or a number as text.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
