use std::cell::RefCell;
use std::time::Duration;

use portcullis_plugin_kit::testing::{self, continued, replied};
use portcullis_sdk::store::{MemoryStore, Store};
use serde_json::json;

use super::*;

const NOW_MS: u64 = 1_700_000_000_000;
const NOW: u64 = NOW_MS / 1000;

/// A post to the provider: its headers and body.
type Post = (Vec<(String, String)>, String);

/// A provider the test scripts, and a store on the test's clock.
struct Fake {
    store: MemoryStore,
    /// The answer to every introspection, or a failure.
    answer: RefCell<Result<(u16, Value), String>>,
    /// What was posted: (headers, body).
    posts: RefCell<Vec<Post>>,
}

impl Fake {
    fn answering(answer: Value) -> Self {
        Self {
            store: MemoryStore::at(NOW_MS),
            answer: RefCell::new(Ok((200, answer))),
            posts: RefCell::default(),
        }
    }

    fn posts(&self) -> usize {
        self.posts.borrow().len()
    }
}

impl Env for Fake {
    fn post(
        &self,
        _: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Result<(u16, Vec<u8>), String> {
        self.posts.borrow_mut().push((
            headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body,
        ));
        self.answer
            .borrow()
            .clone()
            .map(|(status, value)| (status, value.to_string().into_bytes()))
    }

    fn get(&self, key: &str) -> Option<String> {
        self.store.get(key)
    }

    fn set(&self, key: &str, value: &str, ttl_ms: u64) {
        self.store
            .set(key, value, Some(Duration::from_millis(ttl_ms)))
            .expect("stored");
    }

    fn warn(&self, _: &str) {}
}

fn plugin(extra: Value) -> Introspection {
    let mut config = json!({
        "endpoint": "https://idp.example/introspect",
        "client_id": "gate way",
        "client_secret": "s3cr:t",
        "tenant_claim": "org",
    });
    if let (Value::Object(base), Value::Object(extra)) = (&mut config, extra) {
        base.extend(extra);
    }
    testing::valid(&config.to_string(), Config::build).plugin
}

fn active() -> Value {
    json!({ "active": true, "sub": "alice", "scope": "orders:read profile", "org": "acme", "exp": NOW + 600, "aud": ["orders"] })
}

/// Asserts that the request goes on.
#[track_caller]
fn passes(action: Action) {
    let _ = continued(action);
}

fn at(p: &Introspection, env: &Fake, ms: u64) -> Action {
    p.authenticate(env, Some("Bearer opaque-token"), ms)
}

#[test]
fn an_active_token_is_admitted_with_its_identity_and_cached_until_exp() {
    let p = plugin(json!({ "cache_ttl_seconds": 3600 }));
    let env = Fake::answering(active());
    let changes = continued(at(&p, &env, NOW_MS));
    let identity = changes.identity.expect("identity");
    assert_eq!(identity.consumer, "alice");
    assert_eq!(identity.roles, ["orders:read", "profile"]);
    assert_eq!(identity.tenant.as_deref(), Some("acme"));
    assert_eq!(changes.remove_headers, ["authorization"]);

    // Basic client authentication, form-encoded first (RFC 6749 §2.3.1).
    let (headers, body) = env.posts.borrow()[0].clone();
    let basic = base64::engine::general_purpose::STANDARD.encode("gate+way:s3cr%3At");
    assert!(
        headers.contains(&("authorization".into(), format!("Basic {basic}"))),
        "{headers:?}"
    );
    assert_eq!(body, "token=opaque-token&token_type_hint=access_token");

    // Cached: no second post, until the token's exp ends the entry.
    passes(at(&p, &env, NOW_MS + 1_000));
    passes(at(&p, &env, NOW_MS + 599_000));
    assert_eq!(env.posts(), 1);
    env.store.advance(600_000);
    *env.answer.borrow_mut() = Ok((200, json!({ "active": false })));
    let reply = replied(at(&p, &env, NOW_MS + 600_000));
    assert_eq!(reply.status, 401);
    assert_eq!(env.posts(), 2);
}

#[test]
fn inactive_tokens_are_cached_briefly() {
    let p = plugin(json!({ "negative_cache_seconds": 10 }));
    let env = Fake::answering(json!({ "active": false }));
    for _ in 0..5 {
        let reply = replied(at(&p, &env, NOW_MS));
        assert_eq!(reply.status, 401);
        assert!(
            reply
                .header_value("www-authenticate")
                .is_some_and(|c| c.contains(r#"error="invalid_token""#)),
            "{reply:?}"
        );
    }
    assert_eq!(env.posts(), 1);
    env.store.advance(10_000);
    assert_eq!(replied(at(&p, &env, NOW_MS + 10_000)).status, 401);
    assert_eq!(env.posts(), 2);
}

#[test]
fn scope_audience_and_issuer_checks() {
    let env = Fake::answering(active());
    let p = plugin(json!({ "required_scopes": ["orders:write"] }));
    let reply = replied(at(&p, &env, NOW_MS));
    assert_eq!(reply.status, 403);
    let challenge = reply.header_value("www-authenticate").expect("challenge");
    assert!(
        challenge.contains(r#"error="insufficient_scope""#),
        "{challenge}"
    );
    assert!(challenge.contains(r#"scope="orders:write""#), "{challenge}");

    let env = Fake::answering(active());
    passes(at(
        &plugin(json!({ "required_scopes": ["orders:read"], "audience": ["orders"] })),
        &env,
        NOW_MS,
    ));
    let env = Fake::answering(active());
    assert_eq!(
        replied(at(
            &plugin(json!({ "audience": ["billing"] })),
            &env,
            NOW_MS
        ))
        .status,
        401
    );
    let env = Fake::answering(active());
    assert_eq!(
        replied(at(
            &plugin(json!({ "issuer": "https://idp.example" })),
            &env,
            NOW_MS
        ))
        .status,
        401
    );
    // `active` must be the boolean true.
    let env = Fake::answering(json!({ "active": "true", "sub": "alice" }));
    assert_eq!(replied(at(&plugin(json!({})), &env, NOW_MS)).status, 401);
}

#[test]
fn client_secret_post_puts_the_credentials_in_the_form() {
    let p = plugin(json!({ "client_auth": "post", "token_type_hint": "" }));
    let env = Fake::answering(active());
    passes(at(&p, &env, NOW_MS));
    let (headers, body) = env.posts.borrow()[0].clone();
    assert!(!headers.iter().any(|(n, _)| n == "authorization"));
    assert_eq!(
        body,
        "token=opaque-token&client_id=gate+way&client_secret=s3cr%3At"
    );
}

#[test]
fn the_endpoint_down_fails_closed_without_hammering_it_or_serves_stale() {
    let p = plugin(json!({ "cache_ttl_seconds": 60 }));
    let env = Fake::answering(active());
    passes(at(&p, &env, NOW_MS));
    env.store.advance(60_000);
    *env.answer.borrow_mut() = Err("cannot connect".into());
    for _ in 0..10 {
        let reply = replied(at(&p, &env, NOW_MS + 60_000));
        assert_eq!(reply.status, 503);
        assert_eq!(reply.header_value("retry-after"), Some("1"));
    }
    assert_eq!(env.posts(), 2, "one failed post, then a second of backoff");

    let p = plugin(
        json!({ "cache_ttl_seconds": 60, "on_unavailable": "use_stale", "stale_seconds": 120 }),
    );
    let env = Fake::answering(active());
    passes(at(&p, &env, NOW_MS));
    env.store.advance(60_000);
    *env.answer.borrow_mut() = Ok((500, json!({})));
    passes(at(&p, &env, NOW_MS + 60_000));
    env.store.advance(120_000);
    assert_eq!(
        replied(at(&p, &env, NOW_MS + 180_000)).status,
        503,
        "past the stale allowance"
    );
}

#[test]
fn no_token_is_a_bare_challenge() {
    let p = plugin(json!({ "realm": "orders" }));
    let env = Fake::answering(active());
    for header in [None, Some("Basic abc"), Some("Bearer ")] {
        let reply = replied(p.authenticate(&env, header, NOW_MS));
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.header_value("www-authenticate"),
            Some(r#"Bearer realm="orders""#)
        );
    }
    assert_eq!(env.posts(), 0);
}
