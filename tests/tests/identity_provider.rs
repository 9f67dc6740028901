//! jwt_auth against a local identity provider (tests/src/idp.rs): keys
//! from `jwks_url` and from OpenID Connect discovery, rotation, a storm of
//! unknown key ids, the provider down at load and while serving.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::clock::ManualClock;
use portcullis_tests::echo::Echo;
use portcullis_tests::idp::{Idp, IdpState};
use portcullis_tests::{Client, Reply, TestGateway, base_config, fixtures};
use serde_json::{Value, json};

const NOW_MS: u64 = 1_700_000_000_000;

fn data(name: &str) -> String {
    let path = format!("{}/tests/data/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The test JWKS with only the keys of `kids`.
fn jwks(kids: &[&str]) -> String {
    let all: Value = serde_json::from_str(&data("jwks.json")).expect("JWKS");
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap_or_default()))
        .cloned()
        .collect();
    json!({ "keys": keys }).to_string()
}

/// An RS256 token signed by `rsa-1` or `rsa-2` (`file` is its private
/// key), naming `kid`, from `iss`.
fn token(file: &str, kid: &str, iss: &str, header: impl FnOnce(&mut Header)) -> String {
    let key = EncodingKey::from_rsa_pem(data(file).as_bytes()).expect("RSA key");
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.to_owned());
    header(&mut h);
    let claims = json!({ "sub": "alice", "iss": iss, "exp": NOW_MS / 1000 + 3600 });
    jsonwebtoken::encode(&h, &claims, &key).expect("signs")
}

fn rsa1(iss: &str) -> String {
    token("rsa_private.pem", "rsa-1", iss, |_| {})
}

fn rsa2(iss: &str) -> String {
    token("rsa2_private.pem", "rsa-2", iss, |_| {})
}

/// `/api` through `plugin` with `config` (which names the provider), and
/// the grant to call `idp`.
fn route(idp: &Idp, plugin: &str, config: &str) -> String {
    format!(
        "{}[routes.plugins.outbound]\nallow = [\"{}\"]\n",
        portcullis_tests::route("api", "/api", &[(plugin, config)]),
        idp.origin()
    )
}

/// A gateway with `plugin` (its `fixture`) on `/api`, configured with
/// `config` and granted `idp`, on a manual clock.
async fn start_plugin(
    idp: &Idp,
    plugin: &str,
    fixture: &str,
    config: &str,
) -> anyhow::Result<(TestGateway, Echo, Arc<ManualClock>)> {
    let echo = Echo::start_local().await.expect("echo");
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let config = format!("{}{}", base_config(echo.addr), route(idp, plugin, config));
    let gw = TestGateway::start_with_clock(&config, &[(plugin, fixture)], clock.clone()).await?;
    Ok((gw, echo, clock))
}

/// jwt_auth for RS256 with `config`.
async fn start(idp: &Idp, config: &str) -> anyhow::Result<(TestGateway, Echo, Arc<ManualClock>)> {
    let config = format!("algorithms = [\"RS256\"]\n{config}");
    start_plugin(idp, "jwt_auth", fixtures::JWT_AUTH, &config).await
}

async fn call(gw: &TestGateway, token: &str) -> Reply {
    Client::new()
        .get(
            &gw.url("/api/x"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
        .expect("gateway answers")
}

/// A provider serving `rsa-1`, to be fetched again after 600 s.
async fn provider_of_rsa1() -> Idp {
    Idp::start(IdpState {
        jwks: jwks(&["rsa-1"]),
        cache_control: Some("public, max-age=600".into()),
        ..IdpState::default()
    })
    .await
}

/// Calls with `token` (a bounded number of times) until it passes; every
/// refusal meanwhile is the 503 of keys not available (a request that
/// finds another's fetch in flight gets one).
async fn until_admitted(gw: &TestGateway, token: &str) {
    for _ in 0..250 {
        let reply = call(gw, token).await;
        if reply.status == StatusCode::OK {
            return;
        }
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the keys never came");
}

#[tokio::test]
async fn keys_rotate_without_a_failed_request_and_unknown_kids_cannot_storm_the_provider() {
    let idp = provider_of_rsa1().await;
    let iss = idp.origin();
    let config = format!("jwks_url = \"{}\"", idp.url("/jwks"));
    let (gw, _echo, clock) = start(&idp, &config).await.expect("starts");
    assert_eq!(
        idp.hits("/jwks"),
        1,
        "fetched once at load, for every instance"
    );
    call(&gw, &rsa1(&iss)).await.assert_ok();

    // The provider publishes a new key and signs with it: the first token
    // naming it makes the plugin fetch again, and passes.
    idp.state().jwks = jwks(&["rsa-1", "rsa-2"]);
    call(&gw, &rsa2(&iss)).await.assert_ok();
    assert_eq!(idp.hits("/jwks"), 2);
    call(&gw, &rsa2(&iss)).await.assert_ok();
    assert_eq!(idp.hits("/jwks"), 2, "a known key asks nothing");

    // A storm of made-up key ids, once the interval has passed: one fetch,
    // whatever the number of tokens; never the URL a token names.
    clock.advance(31_000);
    for i in 0..40 {
        let bogus = token("rsa_private.pem", &format!("made-up-{i}"), &iss, |h| {
            h.jku = Some(idp.url("/attacker-jwks"));
        });
        let reply = call(&gw, &bogus).await;
        reply.assert_refused(
            StatusCode::UNAUTHORIZED,
            "no key matches the token's key id (`kid`)",
        );
    }
    assert_eq!(idp.hits("/jwks"), 3, "one fetch for 40 unknown kids");
    assert_eq!(idp.hits("/attacker-jwks"), 0, "`jku` is never fetched");
    clock.advance(31_000);
    for i in 0..10 {
        let bogus = token("rsa_private.pem", &format!("again-{i}"), &iss, |_| {});
        call(&gw, &bogus).await;
    }
    assert_eq!(idp.hits("/jwks"), 4, "one more per interval");

    // The provider retires rsa-1; once the document is due (max-age 600)
    // the tick fetches it, and tokens of the retired key are refused (the
    // verification cache goes with the old keys).
    idp.state().jwks = jwks(&["rsa-2"]);
    clock.advance(601_000);
    idp.until_hits("/jwks", 5).await;
    // The fetch is shared once the tick has stored it; instances look at
    // the shared document once a second of the gateway's clock.
    let mut refused = false;
    for _ in 0..250 {
        clock.advance(1_001);
        let reply = call(&gw, &rsa1(&iss)).await;
        if reply.status == StatusCode::UNAUTHORIZED {
            reply.assert_refused(
                StatusCode::UNAUTHORIZED,
                "no key matches the token's key id (`kid`)",
            );
            refused = true;
            break;
        }
        reply.assert_ok();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the retired key kept working");
    call(&gw, &rsa2(&iss)).await.assert_ok();

    // The provider goes down: refreshes fail, the keys in service stay.
    idp.state().down = true;
    clock.advance(601_000);
    idp.until_hits("/jwks", 6).await;
    for _ in 0..5 {
        call(&gw, &rsa2(&iss)).await.assert_ok();
    }
}

#[tokio::test]
async fn discovery_finds_the_keys_and_enforces_the_issuer() {
    let idp = Idp::start(IdpState {
        jwks: jwks(&["rsa-1"]),
        ..IdpState::default()
    })
    .await;
    let iss = idp.origin();
    let config = format!("issuer = \"{iss}\"\ndiscovery = true");
    let (gw, _echo, _clock) = start(&idp, &config).await.expect("starts");
    assert_eq!(idp.hits("/.well-known/openid-configuration"), 1);
    assert_eq!(idp.hits("/jwks"), 1);
    call(&gw, &rsa1(&iss)).await.assert_ok();
    let reply = call(&gw, &rsa1("https://someone.else")).await;
    reply.assert_refused(
        StatusCode::UNAUTHORIZED,
        "the token's issuer is not accepted",
    );

    // A discovery document naming another issuer is refused at load.
    let liar = Idp::start(IdpState {
        jwks: jwks(&["rsa-1"]),
        issuer: Some("https://idp.example".into()),
        ..IdpState::default()
    })
    .await;
    let config = format!("issuer = \"{}\"\ndiscovery = true", liar.origin());
    let err = start(&liar, &config).await.expect_err("refused");
    assert!(
        format!("{err:#}").contains("names the issuer `https://idp.example`"),
        "{err:#}"
    );
    assert_eq!(liar.hits("/jwks"), 0);
}

#[tokio::test]
async fn a_provider_down_at_load_refuses_the_config_or_fails_closed() {
    let idp = Idp::start(IdpState {
        jwks: jwks(&["rsa-1"]),
        down: true,
        ..IdpState::default()
    })
    .await;
    let iss = idp.origin();
    let url = idp.url("/jwks");

    // `require` (the default): the route does not go live.
    let err = start(&idp, &format!("jwks_url = \"{url}\""))
        .await
        .expect_err("refused");
    let err = format!("{err:#}");
    assert!(err.contains("answered 503"), "{err}");
    assert!(err.contains("jwks_startup"), "{err}");

    // `fail_closed`: it serves, refusing tokens with 503 until the keys
    // come; then they pass without a restart.
    let config = format!("jwks_url = \"{url}\"\njwks_startup = \"fail_closed\"");
    let (gw, _echo, clock) = start(&idp, &config).await.expect("starts");
    let reply = call(&gw, &rsa1(&iss)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.header("retry-after"), Some("30"));
    // Without a token it is still a 401 challenge.
    let reply = Client::new()
        .get(&gw.url("/api/x"), &[])
        .await
        .expect("answers");
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // The provider comes back. Once the interval has passed, the tick or
    // the next token fetches the keys (whichever takes the gate first; a
    // request that finds the other's fetch in flight still gets 503), and
    // tokens pass without a restart.
    idp.state().down = false;
    clock.advance(31_000);
    until_admitted(&gw, &rsa1(&iss)).await;
    assert_eq!(
        idp.hits("/jwks"),
        3,
        "each gateway's failed load, then one fetch"
    );
}

#[tokio::test]
async fn keys_past_max_stale_fail_closed_until_the_provider_is_back() {
    let idp = provider_of_rsa1().await;
    let iss = idp.origin();
    let config = format!(
        "jwks_url = \"{}\"\njwks_max_stale_seconds = 120",
        idp.url("/jwks")
    );
    let (gw, _echo, clock) = start(&idp, &config).await.expect("starts");
    call(&gw, &rsa1(&iss)).await.assert_ok();

    // The provider goes down. The document is due by half the bound
    // (60 s, not max-age's 600): that refresh fails, and the keys serve on
    // within the bound.
    idp.state().down = true;
    clock.advance(61_000);
    idp.until_hits("/jwks", 2).await;
    call(&gw, &rsa1(&iss)).await.assert_ok();

    // Past the bound: tokens get 503, even one that verified before (the
    // verification cache does not outlive the keys).
    clock.advance(60_000);
    let reply = call(&gw, &rsa1(&iss)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.header("retry-after"), Some("30"));
    assert!(portcullis_tests::logged(&[
        "more than jwks_max_stale_seconds",
        &idp.url("/jwks")
    ]));

    // The provider comes back: once the gate's interval has passed, a
    // fetch (the tick's or a request's) makes the keys fresh again.
    idp.state().down = false;
    clock.advance(31_000);
    until_admitted(&gw, &rsa1(&iss)).await;
}

fn provider_with_tokens() -> IdpState {
    let exp = NOW_MS / 1000 + 600;
    IdpState {
        client: ("gateway".into(), "gateway-secret".into()),
        tokens: [
            (
                "good".to_owned(),
                json!({ "active": true, "sub": "alice", "scope": "orders:read profile", "exp": exp, "client_id": "app" }),
            ),
            (
                "reader".to_owned(),
                json!({ "active": true, "sub": "bob", "scope": "profile", "exp": exp }),
            ),
        ]
        .into_iter()
        .collect(),
        ..IdpState::default()
    }
}

/// oauth2_introspection asking `idp` as the client `gateway`, with
/// `config`.
async fn start_introspection(idp: &Idp, config: &str) -> (TestGateway, Echo, Arc<ManualClock>) {
    let config = format!(
        r#"endpoint = "{endpoint}"
client_id = "gateway"
client_secret = "gateway-secret"
identity_headers = {{ consumer = "x-consumer", roles = "x-roles" }}
{config}"#,
        endpoint = idp.url("/introspect")
    );
    let fixture = fixtures::OAUTH2_INTROSPECTION;
    start_plugin(idp, "oauth2_introspection", fixture, &config)
        .await
        .expect("starts")
}

#[tokio::test]
async fn introspection_admits_active_tokens_caches_answers_and_fails_closed() {
    let idp = Idp::start(provider_with_tokens()).await;
    let (gw, _echo, clock) =
        start_introspection(&idp, r#"required_scopes = ["orders:read"]"#).await;

    // Active, with the scope: in, as alice, without the token upstream.
    let reply = call(&gw, "good").await;
    reply.assert_ok();
    let seen = reply.seen();
    assert_eq!(seen.header("x-consumer"), Some("alice"));
    assert_eq!(seen.header("x-roles"), Some("orders:read,profile"));
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(idp.state().last_client_auth, Some("basic"));
    for _ in 0..5 {
        call(&gw, "good").await.assert_ok();
    }
    assert_eq!(idp.hits("/introspect"), 1, "cached");

    // Active without the scope: 403 insufficient_scope.
    let reply = call(&gw, "reader").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    let challenge = reply
        .header("www-authenticate")
        .unwrap_or_default()
        .to_owned();
    assert!(
        challenge.contains(r#"error="insufficient_scope""#),
        "{challenge}"
    );
    assert!(challenge.contains(r#"scope="orders:read""#), "{challenge}");

    // Unknown: inactive, 401 invalid_token, and cached briefly.
    for _ in 0..3 {
        let reply = call(&gw, "forged").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        let challenge = reply.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{challenge}"
        );
    }
    assert_eq!(idp.hits("/introspect"), 3, "good, reader, forged once");

    // Revoked at the provider: refused once the cache entry (300 s) ends.
    idp.state().tokens.remove("good");
    call(&gw, "good").await.assert_ok();
    clock.advance(300_000);
    assert_eq!(call(&gw, "good").await.status, StatusCode::UNAUTHORIZED);

    // The provider down: an unchecked token gets 503, and the provider is
    // asked once for a burst.
    idp.state().down = true;
    let before = idp.hits("/introspect");
    for _ in 0..5 {
        let reply = call(&gw, "reader").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    }
    assert_eq!(idp.hits("/introspect"), before + 1);
}

#[tokio::test]
async fn introspection_with_client_secret_post() {
    let idp = Idp::start(provider_with_tokens()).await;
    let (gw, _echo, _clock) = start_introspection(&idp, r#"client_auth = "post""#).await;
    call(&gw, "good").await.assert_ok();
    assert_eq!(idp.state().last_client_auth, Some("post"));
    // A wrong secret is the provider's 401: the gateway fails closed.
    idp.state().client.1 = "rotated".into();
    assert_eq!(
        call(&gw, "reader").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn keys_from_a_provider_need_a_grant() {
    let idp = Idp::start(IdpState {
        jwks: jwks(&["rsa-1"]),
        ..IdpState::default()
    })
    .await;
    let config = format!(
        "algorithms = [\"RS256\"]\njwks_url = \"{}\"",
        idp.url("/jwks")
    );
    let routes = portcullis_tests::route("api", "/api", &[("jwt_auth", &config)]);
    portcullis_tests::assert_config_refused(
        &routes,
        &[("jwt_auth", fixtures::JWT_AUTH)],
        &[
            "route `api` plugin `jwt_auth`",
            "the route grants this plugin no outbound calls",
        ],
    )
    .await;
    assert_eq!(idp.hits("/jwks"), 0);
}
