//! Upstreams over TLS (verified against a configured CA, SNI from the
//! config, a client certificate for mutual TLS), over HTTP/2 (by ALPN, and
//! h2c with prior knowledge), and gRPC-style trailers carried end to end.

use http::StatusCode;
use portcullis_tests::tls::{self, TestCa};
use portcullis_tests::upstream::{Protocol, TestUpstream};
use portcullis_tests::{Client, Reply, TestGateway, route};

/// A gateway with a plain listener and one route to the upstream group
/// `up`, whose TOML (`[upstreams.up]` body) is `group`; `files` (name,
/// text) are written beside the config.
async fn gateway(group: &str, files: &[(&str, String)]) -> anyhow::Result<TestGateway> {
    let config = format!(
        r#"
state_directory = "state"
[[listeners]]
address = "127.0.0.1:0"
[plugins]
directory = "plugins"
[limits]
max_instances = 8
[upstreams.up]
timeout_ms = 5000
{group}
{}"#,
        route("all", "/", &[]).replace("upstream = \"echo\"", "upstream = \"up\"")
    );
    let dir = TestGateway::prepare(&config, &[])?;
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text)?;
    }
    TestGateway::start_in(dir).await
}

async fn get(gw: &TestGateway, headers: &[(&str, &str)]) -> Reply {
    Client::new()
        .get(&gw.url("/svc/call"), headers)
        .await
        .expect("reply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_verified_and_the_gateway_presents_its_certificate() {
    let upstream_ca = TestCa::new();
    let gateway_ca = TestCa::new();
    let upstream_cert = upstream_ca.issue(&["upstream.test"], -1, 30);
    let upstream = TestUpstream::start(
        Protocol::Http1,
        Some(tls::server_config(
            &upstream_cert,
            Some(&gateway_ca),
            &[b"http/1.1"],
        )),
    )
    .await
    .expect("upstream");
    let gateway_cert = gateway_ca.issue_client("portcullis", &[]);
    let files = [
        ("upstream-ca.pem", upstream_ca.pem()),
        ("gw.pem", gateway_cert.cert.clone()),
        ("gw.key", gateway_cert.key.clone()),
    ];
    let group = format!(
        r#"servers = ["https://{}"]
tls = {{ ca = "upstream-ca.pem", server_name = "upstream.test", cert = "gw.pem", key = "gw.key" }}"#,
        upstream.addr
    );
    let gw = gateway(&group, &files).await.expect("gateway starts");
    let reply = get(&gw, &[("host", "api.example")]).await;
    reply.assert_ok();
    assert_eq!(reply.header("x-seen-version"), Some("HTTP/1.1"));
    assert_eq!(reply.header("x-seen-client-cert"), Some("yes"));
    assert_eq!(reply.header("x-seen-host"), Some("api.example"));
    gw.stop().await;

    // Without the CA (the webpki roots), the upstream is not trusted: 502.
    let group = format!(
        r#"servers = ["https://{}"]
tls = {{ server_name = "upstream.test", cert = "gw.pem", key = "gw.key" }}"#,
        upstream.addr
    );
    let gw = gateway(&group, &files).await.expect("gateway starts");
    let reply = get(&gw, &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    gw.stop().await;

    // A name the certificate does not carry: 502.
    let group = format!(
        r#"servers = ["https://{}"]
tls = {{ ca = "upstream-ca.pem", server_name = "other.test", cert = "gw.pem", key = "gw.key" }}"#,
        upstream.addr
    );
    let gw = gateway(&group, &files).await.expect("gateway starts");
    assert_eq!(get(&gw, &[]).await.status, StatusCode::BAD_GATEWAY);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_and_h2c_upstreams_speak_http2() {
    let ca = TestCa::new();
    let cert = ca.issue(&["upstream.test"], -1, 30);
    let h2 = TestUpstream::start(
        Protocol::H2,
        Some(tls::server_config(&cert, None, &[b"h2"])),
    )
    .await
    .expect("upstream");
    let group = format!(
        r#"servers = ["https://{}"]
protocol = "h2"
tls = {{ ca = "ca.pem", server_name = "upstream.test" }}"#,
        h2.addr
    );
    let gw = gateway(&group, &[("ca.pem", ca.pem())])
        .await
        .expect("gateway starts");
    let reply = get(&gw, &[("host", "api.example")]).await;
    reply.assert_ok();
    assert_eq!(reply.header("x-seen-version"), Some("HTTP/2.0"));
    assert_eq!(
        reply.header("x-seen-host"),
        Some("-"),
        "no Host beside :authority"
    );
    gw.stop().await;

    let h2c = TestUpstream::start(Protocol::H2, None)
        .await
        .expect("upstream");
    let group = format!("servers = [\"{}\"]\nprotocol = \"h2c\"", h2c.addr);
    let gw = gateway(&group, &[]).await.expect("gateway starts");
    let reply = get(&gw, &[]).await;
    reply.assert_ok();
    assert_eq!(reply.header("x-seen-version"), Some("HTTP/2.0"));
    assert_eq!(
        reply.header("x-seen-authority"),
        Some(h2c.addr.to_string().as_str())
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_trailers_cross_the_gateway() {
    let upstream = TestUpstream::start(Protocol::H2, None)
        .await
        .expect("upstream");
    let ca = TestCa::new();
    let cert = ca.issue(&["api.test"], -1, 30);
    let config = format!(
        r#"
state_directory = "state"
[[listeners]]
address = "127.0.0.1:0"
[listeners.tls]
[[listeners.tls.certificates]]
cert = "api.pem"
key = "api.key"
[plugins]
directory = "plugins"
[limits]
max_instances = 8
[upstreams.grpc]
servers = ["{}"]
protocol = "h2c"
[[routes]]
name = "grpc"
path_prefix = "/"
upstream = "grpc"
"#,
        upstream.addr
    );
    let dir = TestGateway::prepare(&config, &[]).expect("prepare");
    cert.write(dir.path(), "api").expect("write");
    let gw = TestGateway::start_in(dir).await.expect("gateway starts");

    let (session, reply) = tls::get_with(
        gw.addr,
        "api.test",
        ca.client_config(&[b"h2"]),
        http::Request::post("https://api.test/helloworld.Greeter/SayHello")
            .header("content-type", "application/grpc")
            .header("te", "trailers"),
    )
    .await
    .expect("gRPC call");
    assert_eq!(session.alpn.as_deref(), Some(&b"h2"[..]));
    reply.assert_ok();
    assert_eq!(&reply.body[..], b"hello");
    assert_eq!(reply.header("x-seen-te"), Some("trailers"));
    let trailers = reply.trailers.expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
    gw.stop().await;
}

#[tokio::test]
async fn inconsistent_upstream_settings_are_refused_with_their_key() {
    for (group, key, message) in [
        (
            r#"servers = ["127.0.0.1:1"]
protocol = "h2""#,
            "upstreams.up.protocol",
            "over TLS",
        ),
        (
            r#"servers = ["https://127.0.0.1:1"]
protocol = "h2c""#,
            "upstreams.up.protocol",
            "clear text",
        ),
        (
            r#"servers = ["127.0.0.1:1"]
tls = { ca = "ca.pem" }"#,
            "upstreams.up.tls",
            "need https:// servers",
        ),
        (
            r#"servers = ["https://127.0.0.1:1", "127.0.0.1:2"]"#,
            "upstreams.up.servers[1]",
            "same scheme",
        ),
        (
            r#"servers = ["https://127.0.0.1:1"]
tls = { cert = "gw.pem" }"#,
            "upstreams.up.tls",
            "both `cert` and `key`",
        ),
    ] {
        let error = gateway(group, &[])
            .await
            .expect_err("the config is refused");
        let text = format!("{error:#}");
        assert!(
            text.contains(&format!("{key}: ")) && text.contains(message),
            "{group}: {text}"
        );
    }
}
