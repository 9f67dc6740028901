//! The basic-auth plugin, end to end through the gateway with the real
//! `basic_auth.wasm`.

use http::StatusCode;
use portcullis_tests::echo::Echo;
use portcullis_tests::{Client, TestGateway, base_config, fixtures, logged};

/// `alice-pw`, bcrypt cost 4 (fast: a real deployment uses 10 or more).
const ALICE_HASH: &str = "$2y$04$WUvnW0Sra0DqbAyvLkH3b./THqb.QgGaFSRpAQRZOqIF/WBu0AhAS";
/// `bob-pw`, argon2id with m=64 KiB, t=1, p=1 (fast, for tests).
const BOB_HASH: &str = "$argon2id$v=19$m=64,t=1,p=1$Ym9ic2FsdGJvYnNhbHR4eA$LBIuupRtvs5goJPfUD2uMJq8JjcUCd7WyrxONQM2ZTg";
/// `carol-pw`, bcrypt cost 4.
const CAROL_HASH: &str = "$2y$04$W0DwZ0ura0DqbAyvLkH3b.bDc12IaDatfH5TBs2Mon1/NkRuzqiFe";

/// Standard base64 with padding, as RFC 7617 uses it.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

fn config(echo: &Echo) -> String {
    format!(
        r#"{base}
[[routes]]
name = "api"
path_prefix = "/api"
upstream = "echo"

[[routes.plugins]]
name = "basic_auth"

[routes.plugins.config]
realm = "ops"
identity_headers = {{ consumer = "x-consumer", roles = "x-roles", tenant = "x-tenant" }}
users = [
    {{ username = "alice", password_hash = "{ALICE_HASH}", roles = ["admin", "billing"], tenant = "acme" }},
    {{ username = "bob", roles = ["reader"] }},
]
htpasswd = '''
# bob's password is here, his roles are in `users`
bob:{BOB_HASH}
carol:{CAROL_HASH}
'''

[[routes]]
name = "keep"
path_prefix = "/keep"
upstream = "echo"

[[routes.plugins]]
name = "basic_auth"
config = {{ hide_credentials = false, users = [{{ username = "alice", password_hash = "{ALICE_HASH}" }}] }}
"#,
        base = base_config(echo.addr),
    )
}

async fn gateway() -> (TestGateway, Echo) {
    let echo = Echo::start_local().await.expect("echo starts");
    let gw = TestGateway::start(&config(&echo), &[("basic_auth", fixtures::BASIC_AUTH)])
        .await
        .expect("gateway starts");
    (gw, echo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_credentials_get_a_401_challenge_and_never_reach_the_upstream() {
    let (gw, _echo) = gateway().await;
    let client = Client::new();
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
            .map(|value| vec![("authorization", value)])
            .unwrap_or_default();
        let reply = client
            .get(&gw.url("/api/orders"), &headers)
            .await
            .expect("response");
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{authorization:?}");
        assert_eq!(
            reply.header("www-authenticate"),
            Some(r#"Basic realm="ops", charset="UTF-8""#)
        );
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let body: serde_json::Value = reply.json().expect("JSON body");
        assert_eq!(
            body,
            serde_json::json!({ "message": expected }),
            "{authorization:?}"
        );
        assert_eq!(
            reply.header("x-upstream"),
            None,
            "the upstream must not answer"
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_credentials_reach_the_upstream_as_the_user_without_the_header() {
    let (gw, _echo) = gateway().await;
    let client = Client::new();

    let alice = basic("alice", "alice-pw");
    let ok = client
        .get(
            &gw.url("/api/basic-alice"),
            &[
                ("authorization", alice.as_str()),
                ("x-consumer", "spoofed"),
                ("x-tenant", "spoofed"),
            ],
        )
        .await
        .expect("response");
    assert_eq!(
        ok.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&ok.body)
    );
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
    let again = client
        .get(&gw.url("/api/orders"), &[("authorization", alice.as_str())])
        .await
        .expect("response");
    assert_eq!(again.status, StatusCode::OK);

    // bob: argon2 from the htpasswd text, roles from `users`.
    let bob = basic("bob", "bob-pw");
    let seen = client
        .get(&gw.url("/api/orders"), &[("authorization", bob.as_str())])
        .await
        .expect("response")
        .seen();
    assert_eq!(seen.header("x-consumer"), Some("bob"));
    assert_eq!(seen.header("x-roles"), Some("reader"));
    assert_eq!(seen.header("x-tenant"), None);

    // carol: only in the htpasswd text, so no roles and no tenant.
    let carol = basic("carol", "carol-pw");
    let seen = client
        .get(
            &gw.url("/api/orders"),
            &[("authorization", carol.as_str()), ("x-roles", "admin")],
        )
        .await
        .expect("response")
        .seen();
    assert_eq!(seen.header("x-consumer"), Some("carol"));
    assert_eq!(seen.header("x-roles"), None, "a spoofed header is removed");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_is_kept_when_hide_credentials_is_off() {
    let (gw, _echo) = gateway().await;
    let alice = basic("alice", "alice-pw");
    let ok = Client::new()
        .get(&gw.url("/keep/x"), &[("authorization", alice.as_str())])
        .await
        .expect("response");
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.seen().header("authorization"), Some(alice.as_str()));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_can_come_from_an_htpasswd_file() {
    let echo = Echo::start_local().await.expect("echo starts");
    let config = format!(
        r#"{base}
[[routes]]
name = "files"
path_prefix = "/files"
upstream = "echo"

[[routes.plugins]]
name = "basic_auth"
files = {{ htpasswd = "users.htpasswd" }}
config = {{ users = [{{ username = "carol", roles = ["auditor"] }}], identity_headers = {{ roles = "x-roles" }} }}
"#,
        base = base_config(echo.addr),
    );
    let dir =
        TestGateway::prepare(&config, &[("basic_auth", fixtures::BASIC_AUTH)]).expect("prepare");
    std::fs::write(
        dir.path().join("users.htpasswd"),
        format!("alice:{ALICE_HASH}\r\ncarol:{CAROL_HASH}\r\n"),
    )
    .expect("write htpasswd");
    let gw = TestGateway::start_in(dir).await.expect("gateway starts");
    let client = Client::new();

    let carol = basic("carol", "carol-pw");
    let ok = client
        .get(&gw.url("/files/x"), &[("authorization", carol.as_str())])
        .await
        .expect("response");
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.seen().header("x-roles"), Some("auditor"));

    let wrong = basic("alice", "carol-pw");
    let refused = client
        .get(&gw.url("/files/x"), &[("authorization", wrong.as_str())])
        .await
        .expect("response");
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_is_refused_naming_the_key() {
    let echo = Echo::start_local().await.expect("echo starts");
    let config = format!(
        r#"{base}
[[routes]]
name = "api"
path_prefix = "/api"
upstream = "echo"

[[routes.plugins]]
name = "basic_auth"
config = {{ users = [{{ username = "alice", password_hash = "$apr1$abc$def" }}] }}
"#,
        base = base_config(echo.addr),
    );
    let err = TestGateway::start(&config, &[("basic_auth", fixtures::BASIC_AUTH)])
        .await
        .expect_err("the config must be refused");
    let message = format!("{err:#}");
    assert!(
        message.contains("users[0].password_hash: unsupported hash `$apr1$` (Apache MD5)"),
        "{message}"
    );
}
