//! The basic-auth plugin, end to end through the gateway with the real
//! `basic_auth.wasm`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::StatusCode;
use portcullis_tests::echo::Echo;
use portcullis_tests::{
    Client, Reply, TestGateway, assert_config_refused, fixtures, logged, route, start_routes,
    start_routes_with_files,
};

const PLUGINS: &[(&str, &str)] = &[("basic_auth", fixtures::BASIC_AUTH)];

/// `alice-pw`, bcrypt cost 4 (fast: a real deployment uses 10 or more).
const ALICE_HASH: &str = "$2y$04$WUvnW0Sra0DqbAyvLkH3b./THqb.QgGaFSRpAQRZOqIF/WBu0AhAS";
/// `bob-pw`, argon2id with m=64 KiB, t=1, p=1 (fast, for tests).
const BOB_HASH: &str = "$argon2id$v=19$m=64,t=1,p=1$Ym9ic2FsdGJvYnNhbHR4eA$LBIuupRtvs5goJPfUD2uMJq8JjcUCd7WyrxONQM2ZTg";
/// `carol-pw`, bcrypt cost 4.
const CAROL_HASH: &str = "$2y$04$W0DwZ0ura0DqbAyvLkH3b.bDc12IaDatfH5TBs2Mon1/NkRuzqiFe";

/// The `Authorization` value for `user` and `password`: standard base64
/// with padding, as RFC 7617 uses it.
fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// A route `name` on `prefix` through `basic_auth` configured with `config`.
fn basic_route(name: &str, prefix: &str, config: &str) -> String {
    route(name, prefix, &[("basic_auth", config)])
}

fn routes() -> String {
    let api = format!(
        r#"realm = "ops"
identity_headers = {{ consumer = "x-consumer", roles = "x-roles", tenant = "x-tenant" }}
users = [
    {{ username = "alice", password_hash = "{ALICE_HASH}", roles = ["admin", "billing"], tenant = "acme" }},
    {{ username = "bob", roles = ["reader"] }},
]
htpasswd = '''
# bob's password is here, his roles are in `users`
bob:{BOB_HASH}
carol:{CAROL_HASH}
'''"#
    );
    let keep = format!(
        r#"hide_credentials = false
users = [{{ username = "alice", password_hash = "{ALICE_HASH}" }}]"#
    );
    basic_route("api", "/api", &api) + &basic_route("keep", "/keep", &keep)
}

async fn gateway() -> (TestGateway, Echo) {
    start_routes(&routes(), PLUGINS).await
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    Client::new()
        .get(&gw.url(path), headers)
        .await
        .expect("response")
}

/// `GET path` as `user` with `password`.
async fn as_user(gw: &TestGateway, path: &str, user: &str, password: &str) -> Reply {
    get(gw, path, &[("authorization", &basic(user, password))]).await
}

/// Asserts a 401 from the gateway with `message` and the challenge for
/// `realm`.
#[track_caller]
fn assert_challenged(reply: &Reply, realm: &str, message: &str) {
    reply.assert_refused(StatusCode::UNAUTHORIZED, message);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(format!(r#"Basic realm="{realm}", charset="UTF-8""#).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_credentials_get_a_401_challenge_and_never_reach_the_upstream() {
    let (gw, _echo) = gateway().await;
    let wrong = basic("alice", "wrong");
    let unknown = basic("mallory", "alice-pw");
    let bob_wrong = basic("bob", "alice-pw");
    let cases = [
        (None, "no Basic credentials found in request"),
        (
            Some("Bearer abc.def.ghi"),
            "no Basic credentials found in request",
        ),
        (Some("Basic !!!"), "malformed Basic credentials"),
        (Some(wrong.as_str()), "invalid user name or password"),
        (Some(unknown.as_str()), "invalid user name or password"),
        (Some(bob_wrong.as_str()), "invalid user name or password"),
    ];
    for (authorization, expected) in cases {
        let headers: Vec<(&str, &str)> = authorization
            .map(|value| ("authorization", value))
            .into_iter()
            .collect();
        let reply = get(&gw, "/api/orders", &headers).await;
        println!("case: {authorization:?}");
        assert_challenged(&reply, "ops", expected);
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_credentials_reach_the_upstream_as_the_user_without_the_header() {
    let (gw, _echo) = gateway().await;

    let alice = basic("alice", "alice-pw");
    let ok = get(
        &gw,
        "/api/basic-alice",
        &[
            ("authorization", &alice),
            ("x-consumer", "spoofed"),
            ("x-tenant", "spoofed"),
        ],
    )
    .await;
    ok.assert_ok();
    let seen = ok.seen();
    assert_eq!(
        seen.header("authorization"),
        None,
        "the credentials are stripped"
    );
    assert_eq!(seen.header("x-consumer"), Some("alice"));
    assert_eq!(seen.header("x-roles"), Some("admin,billing"));
    assert_eq!(seen.header("x-tenant"), Some("acme"));
    assert_eq!(
        seen.headers
            .iter()
            .filter(|(k, _)| k == "x-consumer")
            .count(),
        1,
        "the client's value is replaced, not added to"
    );
    assert!(logged(&["/api/basic-alice", r#"consumer="alice""#]));

    // The same credentials again (served from the verification cache).
    as_user(&gw, "/api/orders", "alice", "alice-pw")
        .await
        .assert_ok();

    // bob: argon2 from the htpasswd text, roles from `users`.
    let seen = as_user(&gw, "/api/orders", "bob", "bob-pw").await.seen();
    assert_eq!(seen.header("x-consumer"), Some("bob"));
    assert_eq!(seen.header("x-roles"), Some("reader"));
    assert_eq!(seen.header("x-tenant"), None);

    // carol: only in the htpasswd text, so no roles and no tenant.
    let carol = basic("carol", "carol-pw");
    let seen = get(
        &gw,
        "/api/orders",
        &[("authorization", &carol), ("x-roles", "admin")],
    )
    .await
    .seen();
    assert_eq!(seen.header("x-consumer"), Some("carol"));
    assert_eq!(seen.header("x-roles"), None, "a spoofed header is removed");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_is_kept_when_hide_credentials_is_off() {
    let (gw, _echo) = gateway().await;
    let alice = basic("alice", "alice-pw");
    let ok = get(&gw, "/keep/x", &[("authorization", &alice)]).await;
    ok.assert_ok();
    assert_eq!(ok.seen().header("authorization"), Some(alice.as_str()));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_can_come_from_an_htpasswd_file() {
    // `[routes.plugins.files]`: the plugin entry's `files` table.
    let routes = basic_route(
        "files",
        "/files",
        r#"users = [{ username = "carol", roles = ["auditor"] }]
identity_headers = { roles = "x-roles" }
[routes.plugins.files]
htpasswd = "users.htpasswd""#,
    );
    let htpasswd = format!("alice:{ALICE_HASH}\r\ncarol:{CAROL_HASH}\r\n");
    let (gw, _echo) =
        start_routes_with_files(&routes, PLUGINS, &[("users.htpasswd", &htpasswd)]).await;

    let ok = as_user(&gw, "/files/x", "carol", "carol-pw").await;
    ok.assert_ok();
    assert_eq!(ok.seen().header("x-roles"), Some("auditor"));

    assert_challenged(
        &as_user(&gw, "/files/x", "alice", "carol-pw").await,
        "portcullis",
        "invalid user name or password",
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_is_refused_naming_the_key() {
    assert_config_refused(
        &basic_route(
            "api",
            "/api",
            r#"users = [{ username = "alice", password_hash = "$apr1$abc$def" }]"#,
        ),
        PLUGINS,
        &["users[0].password_hash: unsupported hash `$apr1$` (Apache MD5)"],
    )
    .await;
}
