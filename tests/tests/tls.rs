//! TLS termination: certificates chosen by SNI, HTTP/2 or HTTP/1.1 by
//! ALPN, bad certificates refused (at start, and on reload with the old one
//! still serving), a renewed certificate served without a restart and
//! without a failed request, and clients that never finish a handshake cut
//! off.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use portcullis::registry::Outcome;
use portcullis_tests::echo::Echo;
use portcullis_tests::tls::{self, Issued, TestCa};
use portcullis_tests::{TestGateway, base_config, fixtures, route, wait_for_reload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PLAIN_LISTENER: &str = "[[listeners]]\naddress = \"127.0.0.1:0\"\n";

/// A config whose one listener is TLS with `certificates` (file stems in
/// the gateway's directory; the one marked `true` is the default).
fn tls_config(echo: &Echo, certificates: &[(&str, bool)], handshake_timeout_ms: u64) -> String {
    let mut listener = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.tls]\nhandshake_timeout_ms = {handshake_timeout_ms}\n"
    );
    for (stem, default) in certificates {
        listener.push_str(&format!(
            "[[listeners.tls.certificates]]\ncert = \"{stem}.pem\"\nkey = \"{stem}.key\"\ndefault = {default}\n"
        ));
    }
    let base = base_config(echo.addr);
    assert!(base.contains(PLAIN_LISTENER));
    format!(
        "{}{}",
        base.replace(PLAIN_LISTENER, &listener),
        route("all", "/", &[])
    )
}

async fn start(
    echo: &Echo,
    files: &[(&str, &Issued)],
    certificates: &[(&str, bool)],
    handshake_timeout_ms: u64,
) -> anyhow::Result<TestGateway> {
    let config = tls_config(echo, certificates, handshake_timeout_ms);
    let dir = TestGateway::prepare(&config, &[])?;
    for (stem, issued) in files {
        issued.write(dir.path(), stem)?;
    }
    TestGateway::start_in(dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_and_alpn_the_protocol() {
    let echo = Echo::start_local().await.expect("echo");
    let ca = TestCa::new();
    let api = ca.issue(&["api.example.test"], -1, 90);
    let wildcard = ca.issue(&["*.example.test"], -1, 90);
    let other = ca.issue(&["other.test"], -1, 90);
    let gw = start(
        &echo,
        &[("api", &api), ("wild", &wildcard), ("other", &other)],
        &[("api", false), ("wild", false), ("other", true)],
        10_000,
    )
    .await
    .expect("gateway starts");

    let (session, reply) = tls::get(
        gw.addr,
        "api.example.test",
        ca.client_config(&[b"h2", b"http/1.1"]),
        "/x?y=1",
    )
    .await
    .expect("h2 request");
    assert_eq!(session.served, api.der);
    assert_eq!(session.alpn.as_deref(), Some(&b"h2"[..]));
    reply.assert_ok();
    let seen = reply.seen();
    assert_eq!(seen.path, "/x");
    assert_eq!(seen.header("host"), Some("api.example.test"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some("api.example.test"));

    let (session, reply) = tls::get(
        gw.addr,
        "www.example.test",
        ca.client_config(&[b"http/1.1"]),
        "/",
    )
    .await
    .expect("HTTP/1.1 request");
    assert_eq!(session.served, wildcard.der);
    assert_eq!(session.alpn.as_deref(), Some(&b"http/1.1"[..]));
    reply.assert_ok();
    assert_eq!(reply.seen().header("x-forwarded-proto"), Some("https"));

    // No ALPN at all: HTTP/1.1.
    let (session, reply) = tls::get(gw.addr, "other.test", ca.client_config(&[]), "/")
        .await
        .expect("request without ALPN");
    assert_eq!(session.served, other.der);
    assert_eq!(session.alpn, None);
    reply.assert_ok();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_keeps_the_gateway_from_starting() {
    let echo = Echo::start_local().await.expect("echo");
    let ca = TestCa::new();
    let expired = ca.issue(&["a.test"], -30, -1);
    let error = start(&echo, &[("a", &expired)], &[("a", true)], 10_000)
        .await
        .expect_err("an expired certificate is refused");
    assert!(
        format!("{error:#}").contains("a.pem: the certificate expired on"),
        "{error:#}"
    );

    let good = ca.issue(&["a.test"], -1, 30);
    let other = ca.issue(&["a.test"], -1, 30);
    let mismatched = Issued {
        key: other.key.clone(),
        ..good.clone()
    };
    let error = start(&echo, &[("a", &mismatched)], &[("a", true)], 10_000)
        .await
        .expect_err("a key of another certificate is refused");
    assert!(
        format!("{error:#}").contains("a.key is not the private key of the certificate in"),
        "{error:#}"
    );

    let error = start(&echo, &[], &[("missing", true)], 10_000)
        .await
        .expect_err("a missing file is refused");
    assert!(
        format!("{error:#}").contains("listeners[0].tls: cannot read"),
        "{error:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_serves_without_a_failed_request_and_a_bad_one_is_refused() {
    let echo = Echo::start_local().await.expect("echo");
    let ca = TestCa::new();
    let first = ca.issue(&["api.test"], -1, 30);
    let gw = start(&echo, &[("api", &first)], &[("api", true)], 10_000)
        .await
        .expect("gateway starts");
    let config = ca.client_config(&[b"h2", b"http/1.1"]);

    // Load: new connections (a handshake each) all through the swap.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (stop, ok, failed, config, addr) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            config.clone(),
            gw.addr,
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tls::get(addr, "api.test", config.clone(), "/").await {
                    Ok((_, reply)) if reply.status == StatusCode::OK => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    while ok.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let renewed = ca.issue(&["api.test"], -1, 90);
    let mut events = gw.events();
    renewed.write(gw.dir(), "api").expect("write");
    wait_for_reload(&mut events, |o| matches!(o, Outcome::Applied { .. })).await;
    let (session, reply) = tls::get(gw.addr, "api.test", config.clone(), "/")
        .await
        .expect("request after the swap");
    reply.assert_ok();
    assert_eq!(
        session.served, renewed.der,
        "new connections get the new certificate"
    );

    let served_before = ok.load(Ordering::Relaxed);
    while ok.load(Ordering::Relaxed) < served_before + 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // An expired certificate is refused; the renewed one keeps serving.
    let expired = ca.issue(&["api.test"], -60, -1);
    let mut events = gw.events();
    expired.write(gw.dir(), "api").expect("write");
    wait_for_reload(
        &mut events,
        |o| matches!(o, Outcome::Rejected { reason } if reason.contains("expired")),
    )
    .await;
    let (session, reply) = tls::get(gw.addr, "api.test", config.clone(), "/")
        .await
        .expect("request after the refused update");
    reply.assert_ok();
    assert_eq!(session.served, renewed.der);

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    assert!(ok.load(Ordering::Relaxed) >= served_before + 20);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_handshake_is_cut_off() {
    let echo = Echo::start_local().await.expect("echo");
    let ca = TestCa::new();
    let cert = ca.issue(&["api.test"], -1, 30);
    let gw = start(&echo, &[("api", &cert)], &[("api", true)], 200)
        .await
        .expect("gateway starts");

    // Silent: the gateway closes the connection (the bound here is only
    // against a hang; the handshake timeout is 200 ms).
    let mut silent = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(20), silent.read(&mut buf))
        .await
        .expect("the gateway closes a silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // Plain HTTP on a TLS port is not served.
    let mut plain = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: api.test\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), plain.read_to_end(&mut answer))
        .await
        .expect("the gateway closes the connection");
    assert!(!answer.starts_with(b"HTTP/1.1"), "{answer:?}");

    // And the listener still serves.
    let (_, reply) = tls::get(gw.addr, "api.test", ca.client_config(&[b"h2"]), "/")
        .await
        .expect("request");
    reply.assert_ok();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_listener_can_redirect_every_request_to_https() {
    let echo = Echo::start_local().await.expect("echo");
    let listener =
        "[[listeners]]\naddress = \"127.0.0.1:0\"\nredirect_https = true\nhttps_port = 8443\n";
    let config = format!(
        "{}{}",
        base_config(echo.addr).replace(PLAIN_LISTENER, listener),
        route("all", "/", &[])
    );
    let gw = TestGateway::start(&config, &[])
        .await
        .expect("gateway starts");
    let client = portcullis_tests::Client::new();
    for method in [http::Method::GET, http::Method::POST] {
        let reply = client
            .request(
                method,
                &gw.url("/a/b?c=1"),
                &[("host", "api.test:8080")],
                "body",
            )
            .await
            .expect("reply");
        assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            reply.header("location"),
            Some("https://api.test:8443/a/b?c=1")
        );
        assert_eq!(reply.header("x-upstream"), None, "nothing went upstream");
    }
    gw.stop().await;
}

/// A gateway whose one listener asks for client certificates from
/// `clients` (`mode` "required" or "optional"), with a route that maps
/// them to consumers with `mtls_auth`.
async fn start_mtls(echo: &Echo, server: &Issued, clients: &TestCa, mode: &str) -> TestGateway {
    let listener = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.tls]\n\
         [[listeners.tls.certificates]]\ncert = \"api.pem\"\nkey = \"api.key\"\n\
         [listeners.tls.client_auth]\nca = \"clients.pem\"\nmode = \"{mode}\"\n"
    );
    let config = format!(
        "{}{}",
        base_config(echo.addr).replace(PLAIN_LISTENER, &listener),
        route(
            "services",
            "/",
            &[(
                "mtls_auth",
                r#"consumers = [{ consumer = "billing", uri = "spiffe://example.org/billing", tenant = "acme" }]
identity_headers = { consumer = "x-consumer", tenant = "x-tenant" }"#
            )]
        )
    );
    let dir =
        TestGateway::prepare(&config, &[("mtls_auth", fixtures::MTLS_AUTH)]).expect("prepare");
    server.write(dir.path(), "api").expect("write");
    std::fs::write(dir.path().join("clients.pem"), clients.pem()).expect("write");
    TestGateway::start_in(dir).await.expect("gateway starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_client_certificate_becomes_the_identity() {
    let echo = Echo::start_local().await.expect("echo");
    let servers = TestCa::new();
    let clients = TestCa::new();
    let server = servers.issue(&["api.test"], -1, 30);
    let gw = start_mtls(&echo, &server, &clients, "required").await;

    let billing = clients.issue_client("billing", &["spiffe://example.org/billing"]);
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let config = servers.client_config_with(&[alpn], Some(&billing));
        let (_, reply) = tls::get(gw.addr, "api.test", config, "/invoices")
            .await
            .expect("request with a client certificate");
        reply.assert_ok();
        let seen = reply.seen();
        assert_eq!(seen.header("x-consumer"), Some("billing"));
        assert_eq!(seen.header("x-tenant"), Some("acme"));
    }

    // A known CA but no certificate, or a certificate from another CA:
    // refused at the handshake, before any plugin.
    let without = tls::get(gw.addr, "api.test", servers.client_config(&[b"h2"]), "/").await;
    assert!(without.is_err(), "{without:?}");
    let stranger = servers.issue(&["billing"], -1, 30);
    let foreign = tls::get(
        gw.addr,
        "api.test",
        servers.client_config_with(&[b"h2"], Some(&stranger)),
        "/",
    )
    .await;
    assert!(foreign.is_err(), "{foreign:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_optional_client_auth_the_plugin_decides() {
    let echo = Echo::start_local().await.expect("echo");
    let servers = TestCa::new();
    let clients = TestCa::new();
    let server = servers.issue(&["api.test"], -1, 30);
    let gw = start_mtls(&echo, &server, &clients, "optional").await;

    let (_, reply) = tls::get(gw.addr, "api.test", servers.client_config(&[b"h2"]), "/")
        .await
        .expect("a client without a certificate is let in");
    reply.assert_refused(StatusCode::FORBIDDEN, "client certificate required");

    let unknown = clients.issue_client("intruder", &["spiffe://example.org/intruder"]);
    let (_, reply) = tls::get(
        gw.addr,
        "api.test",
        servers.client_config_with(&[b"http/1.1"], Some(&unknown)),
        "/",
    )
    .await
    .expect("a verified but unknown client is let in");
    reply.assert_refused(StatusCode::FORBIDDEN, "client certificate not allowed");

    let billing = clients.issue_client("billing", &["spiffe://example.org/billing"]);
    let (_, reply) = tls::get(
        gw.addr,
        "api.test",
        servers.client_config_with(&[b"h2"], Some(&billing)),
        "/",
    )
    .await
    .expect("request");
    reply.assert_ok();
    assert_eq!(reply.seen().header("x-consumer"), Some("billing"));
    gw.stop().await;
}
