//! The example configuration (`examples/portcullis.toml`, what
//! `scripts/demo.sh` runs) loads with every plugin, and the `curl` lines of
//! the README do what the README says, in the same order.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Method, StatusCode};
use portcullis::clock::ManualClock;
use portcullis_tests::echo::Echo;
use portcullis_tests::tls::{self, TestCa};
use portcullis_tests::{Client, POLICY_PLUGINS, Reply, TestGateway, logged_lines};

/// 2026-12-01T10:00:00Z: the demo tokens are valid (but `expired.jwt`), v1
/// of the catalog is deprecated and not yet sunset.
const NOW_MS: u64 = 1_796_119_200_000;

fn examples() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
}

/// The example config with the listener on an ephemeral port and the echo
/// upstream where the test started it.
fn example_config(echo: &Echo) -> String {
    let text = std::fs::read_to_string(examples().join("portcullis.toml")).expect("example config");
    let listener = r#"address = "127.0.0.1:8080""#;
    let https = r#"address = "127.0.0.1:8443""#;
    let admin = r#"address = "127.0.0.1:9901""#;
    let upstream = r#"servers = ["127.0.0.1:9000", "127.0.0.1:9001"]"#;
    assert!(
        text.contains(listener)
            && text.contains(https)
            && text.contains(admin)
            && text.contains(upstream)
    );
    // A state directory of the test's own (module cache, audit trail),
    // not the user's.
    let text = format!("state_directory = \"state\"\n{text}");
    text.replace(listener, r#"address = "127.0.0.1:0""#)
        .replace(https, r#"address = "127.0.0.1:0""#)
        .replace(admin, r#"address = "127.0.0.1:0""#)
        .replace(
            upstream,
            &format!(r#"servers = ["{}", "{}"]"#, echo.addr, echo.addr),
        )
}

fn token(name: &str) -> String {
    std::fs::read_to_string(examples().join("keys").join(name))
        .expect("demo token")
        .trim()
        .to_owned()
}

/// Starts the example with the certificate `scripts/demo.sh` would make
/// (for `localhost`, signed by `ca`).
async fn start(echo: &Echo, clock: &Arc<ManualClock>, ca: &TestCa) -> TestGateway {
    let dir = TestGateway::prepare(&example_config(echo), &POLICY_PLUGINS).expect("prepare");
    std::fs::create_dir(dir.path().join("certs")).expect("certs dir");
    ca.issue(&["localhost", "127.0.0.1"], -1, 365)
        .write(&dir.path().join("certs"), "localhost")
        .expect("demo certificate");
    std::fs::create_dir(dir.path().join("keys")).expect("keys dir");
    for file in ["jwks.json", "users.htpasswd"] {
        std::fs::copy(
            examples().join("keys").join(file),
            dir.path().join("keys").join(file),
        )
        .expect("copy key file");
    }
    // The example requires signed modules: sign them as scripts/demo.sh
    // does, with a key of the test's own.
    let (key, _) = portcullis::signing::SigningKey::generate().expect("signing key");
    std::fs::write(
        dir.path().join("keys").join("demo-signing.pub"),
        key.public().to_pem(),
    )
    .expect("public key");
    for (name, _) in POLICY_PLUGINS {
        let module = dir.path().join("plugins").join(format!("{name}.wasm"));
        let bytes = std::fs::read(&module).expect("module");
        let version = portcullis::plugin::stamp::read(&bytes)
            .map(|s| s.version)
            .unwrap_or_default();
        let hash = portcullis::plugin::engine::content_hash(&bytes);
        std::fs::write(
            portcullis::signing::signature_path(&module),
            key.sign(name, &version, &hash),
        )
        .expect("signature");
    }
    let gw = TestGateway::start_in_with_clock(dir, clock.clone())
        .await
        .expect("the example config starts");
    // Every module was loaded signed by that key.
    for module in gw.handle.registry().module_infos() {
        assert_eq!(
            module.signer.as_deref(),
            Some(key.id.as_str()),
            "{}",
            module.name
        );
    }
    gw
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    Client::new()
        .get(&gw.url(path), headers)
        .await
        .expect("reply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_curl_lines_do_what_the_readme_says() {
    let echo = Echo::start_local().await.expect("echo starts");
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let ca = TestCa::new();
    let gw = start(&echo, &clock, &ca).await;
    let demo = [("x-api-key", "demo-key")];

    // Public route.
    get(&gw, "/hello", &[]).await.assert_ok();

    // The same over HTTPS on the second listener, HTTP/2 then HTTP/1.1.
    let https = gw.handle.local_addrs()[1];
    for (alpn, version) in [(&b"h2"[..], "h2"), (b"http/1.1", "http/1.1")] {
        let (session, reply) = tls::get(https, "localhost", ca.client_config(&[alpn]), "/hello")
            .await
            .expect("HTTPS request");
        assert_eq!(session.alpn.as_deref(), Some(alpn), "{version}");
        reply.assert_ok();
        assert_eq!(reply.seen().header("x-forwarded-proto"), Some("https"));
    }

    // A WebSocket through the public route: the echo upstream echoes.
    let tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (mut ws, response) = tokio_tungstenite::client_async("ws://localhost/hello/ws", tcp)
        .await
        .expect("WebSocket handshake");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .expect("send");
    let echoed = ws.next().await.expect("a message").expect("echo");
    assert_eq!(echoed.into_text().expect("text").as_str(), "hi");

    // /api: no key, then a good key; the key is stripped, rewrite adds a
    // header upstream and one to the response, rate limits are announced.
    assert_eq!(
        get(&gw, "/api/me", &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let me = get(&gw, "/api/me", &demo).await;
    me.assert_ok();
    let seen = me.seen();
    assert_eq!(seen.header("x-api-key"), None);
    assert_eq!(seen.header("x-gateway"), Some("portcullis"));
    assert_eq!(me.header("cache-control"), Some("no-store"));
    assert_eq!(
        me.header("ratelimit-policy"),
        Some(r#""per-second";q=5;w=1, "daily";q=1000;w=86400"#)
    );

    // RBAC with tenant isolation, and rewrite dropping `debug`.
    let other_tenant = get(&gw, "/api/tenants/globex/orders", &demo).await;
    assert_eq!(other_tenant.status, StatusCode::FORBIDDEN);
    let own = get(&gw, "/api/tenants/acme/orders?debug=1&page=2", &demo).await;
    own.assert_ok();
    assert_eq!(own.seen().query.as_deref(), Some("page=2"));

    // Masking of the response body.
    let masked = Client::new()
        .request(
            Method::POST,
            &gw.url("/api/tenants/acme/reflect"),
            &[
                ("x-api-key", "demo-key"),
                ("content-type", "application/json"),
            ],
            r#"{"card":"4111 1111 1111 1111","email":"jane@example.com"}"#,
        )
        .await
        .expect("reply");
    masked.assert_ok();
    let body: serde_json::Value = masked.json().expect("JSON body");
    assert_eq!(body["card"], "**** **** **** 1111");
    assert_eq!(body["email"], "j***@example.com");

    // 5 per second: in a fresh second, the sixth request is refused.
    clock.advance(1_000);
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(get(&gw, "/api/me", &demo).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    let refused = get(&gw, "/api/me", &demo).await;
    assert_eq!(refused.header("retry-after"), Some("1"));

    // Bad keys from one client: one alert in the log.
    for _ in 0..5 {
        let reply = get(&gw, "/api/me", &[("x-api-key", "wrong")]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let mut alert = Vec::new();
    for _ in 0..500 {
        alert = logged_lines(&["portcullis::alert", "kind=auth-failures", " route=api "]);
        if !alert.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(alert.len(), 1, "{alert:?}");

    // /user/login: Basic auth against the htpasswd file.
    let basic = |credentials: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    };
    let login = get(
        &gw,
        "/user/login",
        &[("authorization", &basic("alice:open-sesame"))],
    )
    .await;
    login.assert_ok();
    assert_eq!(login.seen().header("authorization"), None);
    let wrong = get(
        &gw,
        "/user/login",
        &[("authorization", &basic("alice:wrong"))],
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        wrong
            .header("www-authenticate")
            .is_some_and(|c| c.starts_with(r#"Basic realm="login""#)),
        "{:?}",
        wrong.headers
    );

    // /partners: JWT from the JWKS file, roles from the token.
    let bearer = |name: &str| format!("Bearer {}", token(name));
    let partner = get(
        &gw,
        "/partners/orders",
        &[("authorization", &bearer("partner.jwt"))],
    )
    .await;
    partner.assert_ok();
    assert_eq!(partner.seen().header("x-partner"), Some("partner-7"));
    let viewer = get(
        &gw,
        "/partners/orders",
        &[("authorization", &bearer("viewer.jwt"))],
    )
    .await;
    assert_eq!(viewer.status, StatusCode::FORBIDDEN);
    let expired = get(
        &gw,
        "/partners/orders",
        &[("authorization", &bearer("expired.jwt"))],
    )
    .await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);

    // /catalog: deprecated v1, retired v0.
    let v1 = get(&gw, "/catalog/v1/items", &[]).await;
    v1.assert_ok();
    assert!(v1.header("deprecation").is_some_and(|d| d.starts_with('@')));
    assert_eq!(v1.header("sunset"), Some("Wed, 30 Jun 2027 00:00:00 GMT"));
    let v0 = get(&gw, "/catalog/v0/items", &[]).await;
    assert_eq!(v0.status, StatusCode::GONE);

    // The admin listener: what happened, counted.
    let admin = gw.handle.admin_addr().expect("the example has [admin]");
    let metrics = Client::new()
        .get(&format!("http://{admin}/metrics"), &[])
        .await
        .expect("metrics");
    metrics.assert_ok();
    let text = String::from_utf8_lossy(&metrics.body);
    for line in [
        r#"portcullis_requests_total{route="api",method="GET",code="401"}"#,
        r#"portcullis_requests_total{route="api",method="GET",code="429"}"#,
        r#"portcullis_plugin_decisions_total{plugin="key_auth",route="api",decision="401"}"#,
    ] {
        assert!(text.contains(line), "{line} not in /metrics");
    }
    let generations = Client::new()
        .get(&format!("http://{admin}/generations"), &[])
        .await
        .expect("generations");
    let history: serde_json::Value = generations.json().expect("JSON");
    assert!(
        history["history"]
            .as_array()
            .is_some_and(|h| h.iter().any(|e| e["trigger"] == "startup"
                && e["modules"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m["name"] == "key_auth")))),
        "{history}"
    );

    // The stricter rate limit in shadow refused more than the live one
    // (the burst of /api/me above), and the rewrite canary is running.
    let mut shadow = serde_json::Value::Null;
    for _ in 0..500 {
        let reply = Client::new()
            .get(&format!("http://{admin}/shadows"), &[])
            .await
            .expect("shadows");
        let body: serde_json::Value = reply.json().expect("JSON");
        shadow = body["shadows"][0].clone();
        if shadow["compared"].as_u64() >= Some(7) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(shadow["plugin"], "rate_limit", "{shadow}");
    assert!(
        shadow["disagreements"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["kind"] == "candidate_refuses")),
        "{shadow}"
    );
    let rollouts: serde_json::Value = Client::new()
        .get(&format!("http://{admin}/rollouts"), &[])
        .await
        .expect("rollouts")
        .json()
        .expect("JSON");
    let canary = &rollouts["rollouts"][0];
    assert_eq!(canary["plugin"], "rewrite", "{rollouts}");
    assert_eq!(canary["phase"], "running", "{rollouts}");
    assert_eq!(canary["percent"], 10.0, "{rollouts}");

    gw.stop().await;
}
