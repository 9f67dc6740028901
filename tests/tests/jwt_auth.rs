//! The jwt-auth plugin, end to end through the gateway with the real
//! `jwt_auth.wasm`, tokens signed here with the test-only keys under
//! `tests/data/jwt/`, and the gateway's clock under the test's control.

use std::sync::Arc;

use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::clock::ManualClock;
use portcullis_tests::echo::Echo;
use portcullis_tests::{
    Client, Reply, TestGateway, assert_config_refused, fixtures, logged, route,
    start_routes_with_clock, start_routes_with_files,
};
use serde_json::{Value, json};

const PLUGINS: &[(&str, &str)] = &[("jwt_auth", fixtures::JWT_AUTH)];

/// The gateway clock's start: 2023-11-14T22:13:20Z.
const NOW_MS: u64 = 1_700_000_000_000;
const NOW: u64 = NOW_MS / 1000;
const SECRET: &str = "an-hmac-secret-of-32-bytes-long!";

fn data(name: &str) -> String {
    let path = format!("{}/tests/data/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A route `name` on `prefix` through `jwt_auth` configured with `config`.
fn jwt_route(name: &str, prefix: &str, config: &str) -> String {
    route(name, prefix, &[("jwt_auth", config)])
}

fn routes() -> String {
    let api = format!(
        r#"algorithms = ["RS256", "ES256", "EdDSA"]
issuer = "https://idp.example"
audience = ["orders", "billing"]
leeway_seconds = 30
cookie = "jwt"
roles_claim = "scope"
tenant_claim = "org"
claims_to_headers = {{ sub = "x-user", scope = "x-scope", org = "x-org" }}
realm = "orders"
jwks = '''
{jwks}'''"#,
        jwks = data("jwks.json"),
    );
    let rsa = data("rsa_public.pem");
    let pem = format!(
        r#"algorithms = ["RS256", "HS256"]
claims_to_headers = {{ sub = "x-user" }}
keys = [
    {{ pem = '''
{rsa}''' }},
    {{ secret = "{SECRET}" }},
]"#
    );
    let rsa_only = format!(
        r#"algorithms = ["RS256"]
keys = [{{ pem = '''
{rsa}''' }}]"#
    );
    [
        jwt_route("api", "/api", &api),
        jwt_route("pem", "/pem", &pem),
        jwt_route("rsa", "/rsa", &rsa_only),
    ]
    .concat()
}

async fn gateway() -> (TestGateway, Echo, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let (gw, echo) = start_routes_with_clock(&routes(), PLUGINS, &clock).await;
    (gw, echo, clock)
}

fn private_key(alg: Algorithm, file: &str) -> EncodingKey {
    let pem = data(file);
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).expect("EC key"),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()).expect("Ed25519 key"),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()).expect("RSA key"),
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("signs")
}

/// An RS256 token from the first RSA key (`kid` = `rsa-1`).
fn rs256(claims: &Value) -> String {
    sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &private_key(Algorithm::RS256, "rsa_private.pem"),
        claims,
    )
}

/// Claims the `api` route accepts at `now` (seconds).
fn claims_at(now: u64) -> Value {
    json!({
        "iss": "https://idp.example",
        "aud": "orders",
        "sub": "alice",
        "scope": "orders:read orders:write",
        "org": "acme",
        "iat": now,
        "exp": now + 60,
    })
}

fn with(field: &str, value: Value) -> Value {
    let mut claims = claims_at(NOW);
    claims[field] = value;
    claims
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    Client::new()
        .get(&gw.url(path), headers)
        .await
        .expect("response")
}

async fn with_bearer(gw: &TestGateway, path: &str, token: &str) -> Reply {
    get(gw, path, &[("authorization", &format!("Bearer {token}"))]).await
}

/// Asserts a 401 from the gateway for an invalid token with
/// `description`, in the body and in the challenge for `realm`.
#[track_caller]
fn assert_invalid(reply: &Reply, realm: &str, description: &str) {
    reply.assert_refused(StatusCode::UNAUTHORIZED, description);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(
            format!(
                r#"Bearer realm="{realm}", error="invalid_token", error_description="{description}""#
            )
            .as_str()
        )
    );
}

/// Asserts that `reply` is the upstream's 200, reached as `user`.
#[track_caller]
fn assert_passed_as(reply: &Reply, user: &str) {
    reply.assert_ok();
    assert_eq!(reply.seen().header("x-user"), Some(user));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_rs256_token_reaches_the_upstream_with_claim_headers_and_no_token() {
    let (gw, _echo, _clock) = gateway().await;
    let token = rs256(&claims_at(NOW));
    let ok = get(
        &gw,
        "/api/jwt-alice",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-user", "spoofed"),
        ],
    )
    .await;
    ok.assert_ok();
    let seen = ok.seen();
    assert_eq!(seen.header("authorization"), None, "the token is stripped");
    assert_eq!(seen.header("x-user"), Some("alice"));
    assert_eq!(
        seen.headers.iter().filter(|(k, _)| k == "x-user").count(),
        1
    );
    assert_eq!(seen.header("x-scope"), Some("orders:read orders:write"));
    assert_eq!(seen.header("x-org"), Some("acme"));
    assert!(logged(&["/api/jwt-alice", r#"consumer="alice""#]));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_not_before_follow_the_gateway_clock() {
    let (gw, _echo, clock) = gateway().await;
    let token = rs256(&claims_at(NOW));
    with_bearer(&gw, "/api/x", &token).await.assert_ok();
    // exp = NOW + 60, leeway 30 s: still good one millisecond before.
    clock.advance(89_999);
    with_bearer(&gw, "/api/x", &token).await.assert_ok();
    clock.advance(1);
    assert_invalid(
        &with_bearer(&gw, "/api/x", &token).await,
        "orders",
        "the token has expired",
    );

    let mut not_yet = with("nbf", json!(NOW + 600));
    not_yet["exp"] = json!(NOW + 3600);
    let early = rs256(&not_yet);
    assert_invalid(
        &with_bearer(&gw, "/api/x", &early).await,
        "orders",
        "the token is not valid yet",
    );
    clock.set(NOW_MS + 570_000);
    with_bearer(&gw, "/api/x", &early).await.assert_ok();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_expires_like_an_uncached_one() {
    let (gw, _echo, clock) = gateway().await;
    let token = rs256(&claims_at(NOW));
    // The second request is answered from the verification cache (of
    // whichever instance served the first).
    for _ in 0..2 {
        assert_passed_as(&with_bearer(&gw, "/api/cached", &token).await, "alice");
    }
    clock.advance(30_000);
    with_bearer(&gw, "/api/cached", &token).await.assert_ok();
    // exp = NOW + 60, leeway 30 s: expired 90 s on, cached or not (an
    // entry never outlives the token's exp).
    clock.advance(60_000);
    assert_invalid(
        &with_bearer(&gw, "/api/cached", &token).await,
        "orders",
        "the token has expired",
    );
    // The same answer as for an expired token never seen before.
    let unseen = rs256(&with("jti", json!("never-presented")));
    assert_invalid(
        &with_bearer(&gw, "/api/cached", &unseen).await,
        "orders",
        "the token has expired",
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_issuer_or_audience_is_refused() {
    let (gw, _echo, _clock) = gateway().await;
    let cases = [
        (
            with("iss", json!("https://evil.example")),
            "the token's issuer is not accepted",
        ),
        (
            with("aud", json!("payroll")),
            "the token's audience is not accepted",
        ),
        (
            with("aud", json!(["payroll", "hr"])),
            "the token's audience is not accepted",
        ),
    ];
    for (claims, description) in cases {
        assert_invalid(
            &with_bearer(&gw, "/api/x", &rs256(&claims)).await,
            "orders",
            description,
        );
    }
    let second_audience = rs256(&with("aud", json!(["payroll", "billing"])));
    with_bearer(&gw, "/api/x", &second_audience)
        .await
        .assert_ok();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_alg_none_tokens_are_refused() {
    let (gw, _echo, _clock) = gateway().await;
    // A genuine token's payload, re-headed `{"alg":"none","typ":"JWT"}`,
    // with and without the signature.
    let genuine = rs256(&claims_at(NOW));
    let mut parts = genuine.split('.');
    let (_, payload, signature) = (
        parts.next(),
        parts.next().expect("payload"),
        parts.next().expect("signature"),
    );
    let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    for token in [
        format!("{none_header}.{payload}."),
        format!("{none_header}.{payload}.{signature}"),
    ] {
        for (path, realm) in [("/api/x", "orders"), ("/pem/x", "portcullis")] {
            assert_invalid(
                &with_bearer(&gw, path, &token).await,
                realm,
                "unsigned tokens (`alg` = `none`) are not accepted",
            );
        }
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_tokens_signed_with_the_rsa_public_key_are_refused() {
    let (gw, _echo, _clock) = gateway().await;
    let public_pem = data("rsa_public.pem");
    let forged = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(public_pem.as_bytes()).expect("secret"),
        &claims_at(NOW),
    );
    assert_invalid(
        &with_bearer(&gw, "/rsa/x", &forged).await,
        "portcullis",
        "the algorithm `HS256` is not accepted",
    );
    // Where HS256 is accepted, only the configured secret verifies it.
    assert_invalid(
        &with_bearer(&gw, "/pem/x", &forged).await,
        "portcullis",
        "the signature is invalid",
    );
    let genuine = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()).expect("secret"),
        &claims_at(NOW),
    );
    assert_passed_as(&with_bearer(&gw, "/pem/x", &genuine).await, "alice");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_are_selected_by_kid() {
    let (gw, _echo, _clock) = gateway().await;
    let rsa2 = private_key(Algorithm::RS256, "rsa2_private.pem");
    let claims = claims_at(NOW);

    let right = sign(Algorithm::RS256, Some("rsa-2"), &rsa2, &claims);
    with_bearer(&gw, "/api/x", &right).await.assert_ok();

    let wrong = sign(Algorithm::RS256, Some("rsa-1"), &rsa2, &claims);
    assert_invalid(
        &with_bearer(&gw, "/api/x", &wrong).await,
        "orders",
        "the signature is invalid",
    );

    let unknown = sign(Algorithm::RS256, Some("rsa-9"), &rsa2, &claims);
    assert_invalid(
        &with_bearer(&gw, "/api/x", &unknown).await,
        "orders",
        "no key matches the token's key id (`kid`)",
    );

    for (alg, kid, file) in [
        (Algorithm::ES256, "ec-1", "ec_private.pem"),
        (Algorithm::EdDSA, "ed-1", "ed25519_private.pem"),
    ] {
        let token = sign(alg, Some(kid), &private_key(alg, file), &claims);
        let reply = with_bearer(&gw, "/api/x", &token).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{alg:?}: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_a_cookie_is_accepted_and_taken_out_of_the_cookie_header() {
    let (gw, _echo, _clock) = gateway().await;
    let token = rs256(&claims_at(NOW));
    let cookie = format!("theme=dark; jwt={token}; lang=en");
    let ok = get(&gw, "/api/x", &[("cookie", &cookie)]).await;
    ok.assert_ok();
    let seen = ok.seen();
    assert_eq!(seen.header("cookie"), Some("theme=dark; lang=en"));
    assert_eq!(seen.header("x-user"), Some("alice"));

    let missing = get(&gw, "/api/x", &[("cookie", "theme=dark")]).await;
    missing.assert_refused(StatusCode::UNAUTHORIZED, "no bearer token found in request");
    assert_eq!(
        missing.header("www-authenticate"),
        Some(r#"Bearer realm="orders""#)
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_can_come_from_a_file() {
    // `[routes.plugins.files]`: the plugin entry's `files` table.
    let routes = jwt_route(
        "files",
        "/files",
        r#"algorithms = ["RS256"]
claims_to_headers = { sub = "x-user" }
[routes.plugins.files]
jwks = "jwks.json""#,
    );
    let (gw, _echo) =
        start_routes_with_files(&routes, PLUGINS, &[("jwks.json", &data("jwks.json"))]).await;

    // This gateway runs on the system clock.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let token = rs256(&json!({ "sub": "alice", "exp": now + 3600 }));
    assert_passed_as(&with_bearer(&gw, "/files/x", &token).await, "alice");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_is_refused_naming_the_key() {
    let config = format!(
        r#"algorithms = ["none"]
keys = [{{ secret = "{SECRET}" }}]"#
    );
    assert_config_refused(
        &jwt_route("api", "/api", &config),
        PLUGINS,
        &["algorithms[0]: `none` (unsigned tokens) is never accepted"],
    )
    .await;
}
