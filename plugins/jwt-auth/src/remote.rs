//! Keys from the identity provider: a JWKS fetched from `jwks_url`, or
//! from the `jwks_uri` of the OpenID Connect discovery document of
//! `issuer` (`discovery = true`).
//!
//! The fetched document is shared by every instance of the plugin through
//! the gateway's store, so that one fetch serves them all:
//!
//! - `jwks:<url>`: `{"hash": ..., "next": <ms>, "fetched": <ms>, "jwks":
//!   "<text>"}`, the last good document, when it is due again, when it was
//!   last fetched, and a hash that tells an instance whether its parsed
//!   keys are current. Kept until replaced: a provider that goes down
//!   leaves the last good keys in service, for at most
//!   `jwks_max_stale_seconds` after that last fetch if it is set (then
//!   requests with a token get 503, as with no keys at all).
//! - `oidc:<issuer>`: the discovery document's `jwks_uri`, for at most
//!   `jwks_max_refresh_seconds`.
//! - `jwks-gate:<source>` (the configured URL or issuer): taken
//!   (compare-and-swap on an absent key, with a time to live of
//!   `jwks_min_refresh_seconds`) by whichever instance fetches: at most one
//!   fetch per interval, whatever the traffic. A token naming an unknown
//!   `kid` asks for a fetch through the gate, so a storm of made-up key ids
//!   costs at most one fetch per interval. A fetch at load takes it too,
//!   and gives it back when it succeeds.
//!
//! The document is due again after the provider's `Cache-Control:
//! max-age`, bounded by `jwks_min_refresh_seconds` and
//! `jwks_max_refresh_seconds` (300 s when it sends none); `on_tick`
//! fetches it then, off the request path. Instances look at the shared
//! document at most once a second on the request path (one store read),
//! and at once when a token names a key they do not have.
//!
//! A token's `jku`, `x5u`, `jwk` and `x5c` header parameters are never
//! read: only the configured URLs are ever fetched.

use std::cell::{Ref, RefCell};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};

use crate::keys::{Key, jwks_keys};

/// How often an instance looks at the shared document on the request path.
const SYNC_MS: u64 = 1_000;
/// When the provider sends no `Cache-Control: max-age` (then bounded).
const DEFAULT_REFRESH_MS: u64 = 300_000;

/// What the plugin does when it cannot get the keys at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Startup {
    /// The configuration is refused (the route does not go live, the
    /// previous configuration keeps serving).
    Require,
    /// The configuration is accepted and requests with a token get 503
    /// until a fetch succeeds.
    FailClosed,
}

/// Where the keys come from and how often they are fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteConfig {
    /// `jwks_url`, if given.
    pub(crate) jwks_url: Option<String>,
    /// The issuer to discover, with `discovery = true`.
    pub(crate) issuer: Option<String>,
    /// The shortest interval between fetches, in ms.
    pub(crate) min_refresh_ms: u64,
    /// The longest a document is used before it is fetched again, in ms.
    pub(crate) max_refresh_ms: u64,
    /// How long after its last fetch a document may be used while it
    /// cannot be fetched again, in ms; `None`: without limit.
    pub(crate) max_stale_ms: Option<u64>,
    /// What happens when the keys cannot be fetched at load.
    pub(crate) startup: Startup,
}

/// An answer to a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fetched {
    /// The status code.
    pub(crate) status: u16,
    /// The `Cache-Control` header, if any.
    pub(crate) cache_control: Option<String>,
    /// The body.
    pub(crate) body: Vec<u8>,
}

/// What the plugin uses from the gateway: the network, the shared store,
/// the log. The hooks pass [`Live`]; unit tests pass a fake.
pub(crate) trait Env {
    /// `GET url`, asking for JSON.
    fn fetch(&self, url: &str) -> Result<Fetched, String>;
    /// The store's value at `key`.
    fn get(&self, key: &str) -> Option<String>;
    /// Sets the store's `key`, expiring after `ttl_ms` if given.
    fn set(&self, key: &str, value: &str, ttl_ms: Option<u64>);
    /// Takes `key` if it is absent (for `ttl_ms`); whether this caller got it.
    fn take(&self, key: &str, ttl_ms: u64) -> bool;
    /// Gives `key` back before its time.
    fn release(&self, key: &str);
    /// Logs at `warn`.
    fn warn(&self, message: &str);
    /// Logs at `info`.
    fn info(&self, message: &str);
}

/// The gateway's services, for the hooks.
pub(crate) struct Live;

impl Env for Live {
    fn fetch(&self, url: &str) -> Result<Fetched, String> {
        use portcullis_sdk::http;
        let answer = http::Request::get(url)
            .header("accept", "application/json")
            .send()
            .map_err(|e| e.to_string())?;
        Ok(Fetched {
            status: answer.status,
            cache_control: answer.header("cache-control").map(str::to_owned),
            body: answer.body,
        })
    }

    fn get(&self, key: &str) -> Option<String> {
        portcullis_sdk::store::get(key)
    }

    fn set(&self, key: &str, value: &str, ttl_ms: Option<u64>) {
        let ttl = ttl_ms.map(Duration::from_millis);
        if let Err(e) = portcullis_sdk::store::set(key, value, ttl) {
            portcullis_sdk::log::warn(&format!("cannot keep `{key}` in the store: {e}"));
        }
    }

    fn take(&self, key: &str, ttl_ms: u64) -> bool {
        let ttl = Some(Duration::from_millis(ttl_ms));
        portcullis_sdk::store::compare_and_swap(key, None, "1", ttl).unwrap_or(false)
    }

    fn release(&self, key: &str) {
        portcullis_sdk::store::delete(key);
    }

    fn warn(&self, message: &str) {
        portcullis_sdk::log::warn(message);
    }

    fn info(&self, message: &str) {
        portcullis_sdk::log::info(message);
    }
}

/// The shared document, as kept in the store.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    hash: String,
    next: u64,
    /// When the provider last served the document (the same one or not).
    #[serde(default)]
    fetched: Option<u64>,
    jwks: String,
}

/// An instance's view of the provider's keys.
#[derive(Debug)]
pub(crate) struct Remote {
    config: RemoteConfig,
    /// The accepted algorithms: fetched keys none of them uses are left out.
    algorithms: Vec<Algorithm>,
    state: RefCell<Synced>,
}

#[derive(Debug, Default)]
struct Synced {
    /// The JWKS URL (given, or discovered).
    url: Option<String>,
    /// The hash of the document the keys come from.
    hash: Option<String>,
    keys: Vec<Key>,
    /// When to look at the shared document next.
    next_sync_ms: u64,
    /// When the shared document is due to be fetched again, as last seen;
    /// `None` when there was none.
    due_ms: Option<u64>,
    /// When the provider last served the document, as last seen.
    fetched_ms: Option<u64>,
    /// Whether the keys' going stale has been logged (once per outage).
    stale_logged: bool,
}

impl Synced {
    /// The provider served the document at `fetched_ms` (seen here, or
    /// by another instance through the store).
    fn note_fetched(&mut self, fetched_ms: u64) {
        if self.fetched_ms.is_none_or(|known| fetched_ms > known) {
            self.fetched_ms = Some(fetched_ms);
            self.stale_logged = false;
        }
    }
}

/// What [`Remote::refetch`] and [`Remote::sync`] did to the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// The keys are the same.
    Same,
    /// The keys were replaced.
    Replaced,
}

impl Remote {
    /// The remote keys of `config`, for `algorithms`; nothing fetched yet.
    pub(crate) fn new(config: RemoteConfig, algorithms: Vec<Algorithm>) -> Self {
        let url = config.jwks_url.clone();
        Self {
            config,
            algorithms,
            state: RefCell::new(Synced {
                url,
                ..Synced::default()
            }),
        }
    }

    /// Its configuration.
    #[cfg(test)]
    pub(crate) fn config(&self) -> &RemoteConfig {
        &self.config
    }

    /// The keys in service.
    pub(crate) fn keys(&self) -> Ref<'_, Vec<Key>> {
        Ref::map(self.state.borrow(), |s| &s.keys)
    }

    /// The keys that may be used at `now_ms`: none once they are stale.
    pub(crate) fn keys_at(&self, now_ms: u64) -> Option<Ref<'_, Vec<Key>>> {
        (!self.is_stale(now_ms)).then(|| self.keys())
    }

    /// Whether there are no keys at all (nothing fetched yet).
    pub(crate) fn is_empty(&self) -> bool {
        self.state.borrow().keys.is_empty()
    }

    /// Whether the keys were last fetched more than `jwks_max_stale_seconds`
    /// before `now_ms`.
    fn is_stale(&self, now_ms: u64) -> bool {
        let fetched = self.state.borrow().fetched_ms;
        match (self.config.max_stale_ms, fetched) {
            (Some(max), Some(fetched)) => now_ms.saturating_sub(fetched) > max,
            _ => false,
        }
    }

    /// Whether a request with a token must be refused for want of usable
    /// keys at `now_ms`: none fetched yet (`jwks_startup = "fail_closed"`)
    /// or all stale. Asks for a fetch first, through the gate. Keys going
    /// stale are logged once per outage.
    pub(crate) fn unavailable(&self, env: &dyn Env, now_ms: u64) -> bool {
        if !self.is_empty() && !self.is_stale(now_ms) {
            return false;
        }
        // Another instance may have fetched already; else fetch.
        let synced = self.sync(env, now_ms, true);
        if synced.is_err() || self.is_empty() || self.is_stale(now_ms) {
            self.refetch(env, now_ms);
        }
        if self.is_empty() {
            return true;
        }
        let stale = self.is_stale(now_ms);
        let mut state = self.state.borrow_mut();
        if stale && !state.stale_logged {
            state.stale_logged = true;
            let age_s = now_ms.saturating_sub(state.fetched_ms.unwrap_or(now_ms)) / 1000;
            env.warn(&format!(
                "jwks: the keys from {} were last fetched {age_s} s ago, more than jwks_max_stale_seconds: requests with a token get 503 until a fetch succeeds",
                self.source()
            ));
        }
        stale
    }

    /// How long a client should wait before trying again when there are
    /// no keys, in seconds.
    pub(crate) fn retry_after_seconds(&self) -> u64 {
        self.config.min_refresh_ms.div_ceil(1000)
    }

    /// At load: the shared document if there is one, else a fetch (without
    /// the gate: a new configuration must not wait for an interval). What
    /// cannot be had is an error with [`Startup::Require`], a warning with
    /// [`Startup::FailClosed`].
    pub(crate) fn start(&self, env: &dyn Env, now_ms: u64) -> Result<(), String> {
        let result = self.sync(env, now_ms, true).and_then(|change| {
            if !self.is_empty() || change == Change::Replaced {
                return Ok(());
            }
            // Nothing shared yet: fetch, unless a fetch failed less than an
            // interval ago (then fail at once rather than make every new
            // instance wait for a provider that does not answer).
            let gate = self.gate();
            if !env.take(&gate, self.config.min_refresh_ms) {
                return Err(format!(
                    "no keys yet from {}: a fetch failed less than jwks_min_refresh_seconds ago",
                    self.source()
                ));
            }
            self.fetch(env, now_ms)?;
            // A fetch that succeeded does not hold back the next one (a
            // token signed by a key the provider has just added).
            env.release(&gate);
            Ok(())
        });
        match (result, self.config.startup) {
            (Ok(()), _) => Ok(()),
            (Err(why), Startup::Require) => Err(format!(
                "{why} (jwks_startup = \"require\": the route does not go live without its keys)"
            )),
            (Err(why), Startup::FailClosed) => {
                env.warn(&format!(
                    "{why}; requests with a token get 503 until the keys are fetched (jwks_startup = \"fail_closed\")"
                ));
                Ok(())
            }
        }
    }

    /// The gate of this plugin's fetches: one per configured source.
    fn gate(&self) -> String {
        format!("jwks-gate:{}", self.source())
    }

    /// What the keys come from, as configured: the JWKS URL, or the issuer
    /// to discover.
    fn source(&self) -> &str {
        self.config
            .jwks_url
            .as_deref()
            .or(self.config.issuer.as_deref())
            .unwrap_or_default()
    }

    /// Brings the keys up to the shared document, if it is time to look
    /// (or `now`): on the request path, a store read once a second.
    pub(crate) fn sync(&self, env: &dyn Env, now_ms: u64, now: bool) -> Result<Change, String> {
        let url = {
            let mut state = self.state.borrow_mut();
            if !now && now_ms < state.next_sync_ms {
                return Ok(Change::Same);
            }
            state.next_sync_ms = now_ms.saturating_add(SYNC_MS);
            state.url.clone()
        };
        // The discovered URL another instance shared, if any: discovery
        // itself is fetched only through the gate (`fetch`).
        let url = url.or_else(|| {
            let issuer = self.config.issuer.as_ref()?;
            let url = env.get(&format!("oidc:{issuer}"))?;
            self.state.borrow_mut().url = Some(url.clone());
            Some(url)
        });
        let Some(url) = url else {
            return Ok(Change::Same);
        };
        let stored = env
            .get(&format!("jwks:{url}"))
            .and_then(|text| serde_json::from_str::<Stored>(&text).ok());
        {
            let mut state = self.state.borrow_mut();
            state.due_ms = stored.as_ref().map(|s| s.next);
            if let Some(fetched) = stored.as_ref().and_then(|s| s.fetched) {
                state.note_fetched(fetched);
            }
        }
        let Some(stored) = stored else {
            return Ok(Change::Same);
        };
        if self.state.borrow().hash.as_deref() == Some(stored.hash.as_str()) {
            return Ok(Change::Same);
        }
        self.apply(&url, &stored)?;
        Ok(Change::Replaced)
    }

    /// On a tick: fetches the document if it is due (or missing), through
    /// the gate.
    pub(crate) fn refresh_if_due(&self, env: &dyn Env, now_ms: u64) {
        let synced = self.sync(env, now_ms, true);
        let due = self.state.borrow().due_ms.is_none_or(|due| now_ms >= due);
        if synced.is_err() || due {
            self.refetch(env, now_ms);
        }
    }

    /// A token names a key this instance does not have: the shared
    /// document first, then a fetch if the gate lets one through.
    pub(crate) fn refetch_for_unknown_key(&self, env: &dyn Env, now_ms: u64) -> Change {
        match self.sync(env, now_ms, true) {
            Ok(Change::Replaced) => Change::Replaced,
            _ => self.refetch(env, now_ms),
        }
    }

    /// Fetches through the gate: at most once per `jwks_min_refresh_seconds`
    /// across every instance. Failures are logged; the keys in service
    /// stay.
    fn refetch(&self, env: &dyn Env, now_ms: u64) -> Change {
        if !env.take(&self.gate(), self.config.min_refresh_ms) {
            return Change::Same;
        }
        match self.fetch(env, now_ms) {
            Ok(change) => change,
            Err(why) => {
                env.warn(&format!("{why}; the keys in service stay"));
                Change::Same
            }
        }
    }

    /// The JWKS URL from the discovery document, fetched now and shared.
    fn discover(&self, env: &dyn Env) -> Result<Option<String>, String> {
        let Some(issuer) = &self.config.issuer else {
            return Ok(self.config.jwks_url.clone());
        };
        let key = format!("oidc:{issuer}");
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let fetched = env
            .fetch(&url)
            .map_err(|e| format!("discovery: fetching {url} failed: {e}"))?;
        if fetched.status != 200 {
            return Err(format!("discovery: {url} answered {}", fetched.status));
        }
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let doc: Discovery = serde_json::from_slice(&fetched.body).map_err(|e| {
            format!(
                "discovery: {url} is not a discovery document with `issuer` and `jwks_uri`: {e}"
            )
        })?;
        // OpenID Connect Discovery 1.0 §4.3: the issuer in the document
        // MUST be the one it was fetched for.
        if doc.issuer != *issuer {
            return Err(format!(
                "discovery: {url} names the issuer `{}`, not `{issuer}`",
                doc.issuer
            ));
        }
        if !(doc.jwks_uri.starts_with("https://") || doc.jwks_uri.starts_with("http://")) {
            return Err(format!(
                "discovery: {url}: `jwks_uri` is not an http(s) URL"
            ));
        }
        env.set(&key, &doc.jwks_uri, Some(self.config.max_refresh_ms));
        self.state.borrow_mut().url = Some(doc.jwks_uri.clone());
        Ok(Some(doc.jwks_uri))
    }

    /// Fetches the document (discovering its URL first if there is none,
    /// or the discovery has expired), shares it, and applies it.
    fn fetch(&self, env: &dyn Env, now_ms: u64) -> Result<Change, String> {
        let known = self.state.borrow().url.clone();
        let url = match &self.config.issuer {
            None => known,
            // The discovery document is fetched again once its entry has
            // expired (`jwks_max_refresh_seconds`).
            Some(issuer) => match env.get(&format!("oidc:{issuer}")) {
                Some(url) => Some(url),
                None => match self.discover(env) {
                    Ok(url) => url,
                    Err(why) => match known {
                        Some(url) => {
                            env.warn(&format!("{why}; the JWKS stays {url}"));
                            Some(url)
                        }
                        None => return Err(why),
                    },
                },
            },
        };
        let url = url.ok_or("no JWKS URL to fetch")?;
        let fetched = env
            .fetch(&url)
            .map_err(|e| format!("jwks: fetching {url} failed: {e}"))?;
        if fetched.status != 200 {
            return Err(format!("jwks: {url} answered {}", fetched.status));
        }
        let text = String::from_utf8(fetched.body)
            .map_err(|_| format!("jwks: {url}: the document is not UTF-8"))?;
        let next = now_ms.saturating_add(self.refresh_ms(fetched.cache_control.as_deref()));
        let stored = Stored {
            hash: digest(&text),
            next,
            fetched: Some(now_ms),
            jwks: text,
        };
        let change = if self.state.borrow().hash.as_deref() == Some(stored.hash.as_str()) {
            Change::Same
        } else {
            let count = self.apply(&url, &stored)?;
            env.info(&format!("jwks: {count} keys in service from {url}"));
            Change::Replaced
        };
        if let Ok(json) = serde_json::to_string(&stored) {
            env.set(&format!("jwks:{url}"), &json, None);
        }
        let mut state = self.state.borrow_mut();
        state.url = Some(url);
        state.due_ms = Some(next);
        state.note_fetched(now_ms);
        Ok(change)
    }

    /// Parses `stored` and puts its keys in service; how many.
    fn apply(&self, url: &str, stored: &Stored) -> Result<usize, String> {
        let mut warnings = Vec::new();
        let keys = jwks_keys(
            serde_json::Value::String(stored.jwks.clone()),
            &mut warnings,
        )
        .map_err(|problems| format!("jwks: {url}: {}", problems.join("; ")))?;
        let keys: Vec<Key> = keys
            .into_iter()
            .filter(|key| self.algorithms.iter().any(|alg| key.usable_for(*alg)))
            .collect();
        let count = keys.len();
        let mut state = self.state.borrow_mut();
        state.keys = keys;
        state.hash = Some(stored.hash.clone());
        Ok(count)
    }

    /// When a document fetched with `cache_control` is due again, in ms
    /// from now: its `max-age` (0 with `no-cache` or `no-store`), bounded.
    fn refresh_ms(&self, cache_control: Option<&str>) -> u64 {
        let mut wanted = None;
        for directive in cache_control.unwrap_or_default().split(',') {
            let directive = directive.trim().to_ascii_lowercase();
            if directive == "no-cache" || directive == "no-store" {
                wanted = Some(0);
            } else if let Some(age) = directive.strip_prefix("max-age=")
                && wanted.is_none()
            {
                wanted = age
                    .trim_matches('"')
                    .parse::<u64>()
                    .ok()
                    .map(|s| s.saturating_mul(1000));
            }
        }
        // With a bound on staleness, the document is fetched again by half
        // that age, so a failed fetch or two are retried before it goes
        // stale (the config keeps the bound at twice the minimum or more).
        let max = match self.config.max_stale_ms {
            Some(stale) => self.config.max_refresh_ms.min(stale / 2),
            None => self.config.max_refresh_ms,
        };
        wanted.unwrap_or(DEFAULT_REFRESH_MS).clamp(
            self.config.min_refresh_ms,
            max.max(self.config.min_refresh_ms),
        )
    }
}

/// A digest of a document, to tell whether it changed.
fn digest(text: &str) -> String {
    use std::hash::{Hash, Hasher};
    // Not a security boundary: whoever can write the store can write the
    // document itself. SipHash with fixed keys is stable within a build.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    format!("{:016x}{}", hasher.finish(), text.len())
}

#[cfg(test)]
pub(crate) mod fake {
    //! An [`Env`] for unit tests: a store on a clock the test moves, and a
    //! provider the test scripts.

    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::time::Duration;

    use portcullis_sdk::store::{MemoryStore, Store};

    use super::{Env, Fetched};

    pub(crate) struct Fake {
        pub(crate) store: MemoryStore,
        /// The answers by URL; a missing URL fails to connect.
        pub(crate) answers: RefCell<HashMap<String, Fetched>>,
        /// Every URL fetched, in order.
        pub(crate) fetched: RefCell<Vec<String>>,
        pub(crate) warnings: RefCell<Vec<String>>,
    }

    impl Fake {
        pub(crate) fn at(now_ms: u64) -> Self {
            Self {
                store: MemoryStore::at(now_ms),
                answers: RefCell::default(),
                fetched: RefCell::default(),
                warnings: RefCell::default(),
            }
        }

        pub(crate) fn answer(&self, url: &str, body: &str, cache_control: Option<&str>) {
            self.answers.borrow_mut().insert(
                url.to_owned(),
                Fetched {
                    status: 200,
                    cache_control: cache_control.map(str::to_owned),
                    body: body.as_bytes().to_vec(),
                },
            );
        }

        pub(crate) fn fetches(&self, url: &str) -> usize {
            self.fetched.borrow().iter().filter(|u| *u == url).count()
        }
    }

    impl Env for Fake {
        fn fetch(&self, url: &str) -> Result<Fetched, String> {
            self.fetched.borrow_mut().push(url.to_owned());
            self.answers
                .borrow()
                .get(url)
                .cloned()
                .ok_or_else(|| "cannot connect: connection refused".to_owned())
        }

        fn get(&self, key: &str) -> Option<String> {
            self.store.get(key)
        }

        fn set(&self, key: &str, value: &str, ttl_ms: Option<u64>) {
            self.store
                .set(key, value, ttl_ms.map(Duration::from_millis))
                .expect("stored");
        }

        fn take(&self, key: &str, ttl_ms: u64) -> bool {
            self.store
                .compare_and_swap(key, None, "1", Some(Duration::from_millis(ttl_ms)))
                .expect("store works")
        }

        fn release(&self, key: &str) {
            self.store.delete(key);
        }

        fn warn(&self, message: &str) {
            self.warnings.borrow_mut().push(message.to_owned());
        }

        fn info(&self, _: &str) {}
    }
}

#[cfg(test)]
mod tests {
    use super::fake::Fake;
    use super::*;

    const URL: &str = "https://idp.example/jwks";
    const ONE: &str = r#"{"keys":[{"kty":"oct","kid":"a","alg":"HS256","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}]}"#;
    const TWO: &str = r#"{"keys":[{"kty":"oct","kid":"a","alg":"HS256","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},{"kty":"oct","kid":"b","alg":"HS256","k":"YW5vdGhlci1zZWNyZXQtYW5vdGhlci1zZWNyZXQtYW5vdGhlcg"}]}"#;

    fn remote(startup: Startup) -> Remote {
        Remote::new(
            RemoteConfig {
                jwks_url: Some(URL.into()),
                issuer: None,
                min_refresh_ms: 30_000,
                max_refresh_ms: 3_600_000,
                max_stale_ms: None,
                startup,
            },
            vec![Algorithm::HS256],
        )
    }

    fn kids(remote: &Remote) -> Vec<String> {
        remote.keys().iter().filter_map(|k| k.kid.clone()).collect()
    }

    #[test]
    fn one_fetch_serves_every_instance() {
        let env = Fake::at(1_000);
        env.answer(URL, ONE, Some("public, max-age=600"));
        let first = remote(Startup::Require);
        first.start(&env, 1_000).expect("starts");
        let second = remote(Startup::Require);
        second.start(&env, 1_000).expect("starts");
        assert_eq!(env.fetches(URL), 1);
        assert_eq!(kids(&second), ["a"]);

        // Due after max-age, fetched by the tick; the other instance sees
        // the new document at its next look.
        env.answer(URL, TWO, None);
        first.refresh_if_due(&env, 500_000);
        assert_eq!(env.fetches(URL), 1, "not due yet");
        env.store.advance(600_000);
        first.refresh_if_due(&env, 601_000);
        assert_eq!(env.fetches(URL), 2);
        assert_eq!(kids(&first), ["a", "b"]);
        assert_eq!(second.sync(&env, 601_500, false), Ok(Change::Replaced));
        assert_eq!(kids(&second), ["a", "b"]);
    }

    #[test]
    fn unknown_keys_fetch_at_most_once_per_interval() {
        let env = Fake::at(1_000);
        env.answer(URL, ONE, None);
        let r = remote(Startup::Require);
        r.start(&env, 1_000).expect("starts");
        env.answer(URL, TWO, None);
        assert_eq!(r.refetch_for_unknown_key(&env, 2_000), Change::Replaced);
        for t in 0..100 {
            assert_eq!(r.refetch_for_unknown_key(&env, 2_001 + t), Change::Same);
        }
        assert_eq!(env.fetches(URL), 2, "the load, then one for the storm");
        env.store.advance(30_000);
        r.refetch_for_unknown_key(&env, 32_001);
        assert_eq!(env.fetches(URL), 3, "one more once the interval passed");
    }

    #[test]
    fn startup_modes() {
        let env = Fake::at(1_000);
        let why = remote(Startup::Require)
            .start(&env, 1_000)
            .expect_err("refused");
        assert!(
            why.contains("jwks: fetching https://idp.example/jwks failed"),
            "{why}"
        );
        let r = remote(Startup::FailClosed);
        r.start(&env, 1_000).expect("accepted");
        assert!(r.is_empty());
        assert_eq!(
            env.fetches(URL),
            1,
            "the failed fetch holds the gate: no second try"
        );
        assert!(
            env.warnings.borrow()[0].contains("failed less than"),
            "{:?}",
            env.warnings.borrow()
        );
        env.store.advance(30_000);
        // The provider comes back; the first token after the gate's
        // interval brings the keys.
        env.answer(URL, ONE, None);
        assert_eq!(r.refetch_for_unknown_key(&env, 31_000), Change::Replaced);
        assert_eq!(kids(&r), ["a"]);
    }

    #[test]
    fn a_bad_document_leaves_the_keys_in_service() {
        let env = Fake::at(1_000);
        env.answer(URL, ONE, None);
        let r = remote(Startup::Require);
        r.start(&env, 1_000).expect("starts");
        env.answer(URL, r#"{"keys":[{"kty":"RSA","kid":"x"}]}"#, None);
        env.store.advance(400_000);
        r.refresh_if_due(&env, 401_000);
        assert_eq!(kids(&r), ["a"]);
        assert!(env.warnings.borrow()[0].contains("the keys in service stay"));
    }

    #[test]
    fn keys_older_than_max_stale_are_not_used() {
        let env = Fake::at(1_000);
        env.answer(URL, ONE, Some("max-age=600"));
        let bounded = || {
            let mut r = remote(Startup::Require);
            r.config.max_stale_ms = Some(120_000);
            r
        };
        let (first, second) = (bounded(), bounded());
        first.start(&env, 1_000).expect("starts");
        second.start(&env, 1_000).expect("starts");
        // Due again by half the bound, whatever max-age says.
        assert_eq!(first.refresh_ms(Some("max-age=600")), 60_000);

        // The provider goes down: a failed refresh leaves the keys usable
        // until the bound.
        env.answers.borrow_mut().clear();
        env.store.advance(60_000);
        first.refresh_if_due(&env, 61_000);
        assert_eq!(env.fetches(URL), 2);
        assert!(!first.unavailable(&env, 121_000));
        assert!(first.keys_at(121_000).is_some());

        // Past it: refused, after one more try through the gate, and
        // logged once.
        env.store.advance(61_000);
        assert!(first.unavailable(&env, 122_000));
        assert!(first.keys_at(122_000).is_none());
        assert!(first.unavailable(&env, 122_500));
        assert_eq!(
            env.fetches(URL),
            3,
            "the gate holds the second request back"
        );
        let stale = |w: &String| w.contains("more than jwks_max_stale_seconds");
        assert_eq!(env.warnings.borrow().iter().filter(|w| stale(w)).count(), 1);

        // Back: the same document, fetched again, is fresh again, for
        // every instance.
        env.answer(URL, ONE, None);
        env.store.advance(30_000);
        assert!(!first.unavailable(&env, 152_500));
        assert_eq!(env.fetches(URL), 4);
        assert!(!second.unavailable(&env, 152_600));
        assert_eq!(env.fetches(URL), 4, "the other instance reads the store");
        assert!(second.keys_at(152_600).is_some());
    }

    #[test]
    fn cache_control_is_bounded() {
        let r = remote(Startup::Require);
        assert_eq!(r.refresh_ms(Some("max-age=600")), 600_000);
        assert_eq!(r.refresh_ms(Some("max-age=1")), 30_000);
        assert_eq!(r.refresh_ms(Some("max-age=999999")), 3_600_000);
        assert_eq!(r.refresh_ms(Some("no-cache, max-age=600")), 30_000);
        assert_eq!(r.refresh_ms(None), 300_000);
    }

    #[test]
    fn discovery_gives_the_jwks_uri_and_must_name_the_issuer() {
        let issuer = "https://idp.example/realms/main";
        let discovery = "https://idp.example/realms/main/.well-known/openid-configuration";
        let config = RemoteConfig {
            jwks_url: None,
            issuer: Some(issuer.into()),
            min_refresh_ms: 30_000,
            max_refresh_ms: 3_600_000,
            max_stale_ms: None,
            startup: Startup::Require,
        };
        let env = Fake::at(1_000);
        env.answer(
            discovery,
            &format!(r#"{{"issuer":"{issuer}","jwks_uri":"{URL}"}}"#),
            None,
        );
        env.answer(URL, ONE, None);
        let r = Remote::new(config.clone(), vec![Algorithm::HS256]);
        r.start(&env, 1_000).expect("starts");
        assert_eq!(kids(&r), ["a"]);

        let env = Fake::at(1_000);
        env.answer(
            discovery,
            &format!(r#"{{"issuer":"https://evil.example","jwks_uri":"{URL}"}}"#),
            None,
        );
        env.answer(URL, ONE, None);
        let why = Remote::new(config, vec![Algorithm::HS256])
            .start(&env, 1_000)
            .expect_err("refused");
        assert!(
            why.contains("names the issuer `https://evil.example`"),
            "{why}"
        );
        assert_eq!(env.fetches(URL), 0);
    }
}
