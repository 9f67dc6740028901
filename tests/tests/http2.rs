//! HTTP/2 from clients: h2c with prior knowledge on a plain listener that
//! enables it (HTTP/1.1 still served there), and the rapid-reset attack
//! (CVE-2023-44487) answered by closing the attacking connection while
//! other connections keep being served, and the idle timeout of a
//! connection with no stream open.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_tests::echo::Echo;
use portcullis_tests::h2;
use portcullis_tests::{Client, TestGateway, base_config, route};
use tokio::net::TcpStream;

const PLAIN_LISTENER: &str = "[[listeners]]\naddress = \"127.0.0.1:0\"\n";

async fn h2c_gateway(echo: &Echo) -> TestGateway {
    h2c_gateway_with(echo, "").await
}

/// An h2c gateway whose listener also has `listener_tables` (TOML).
async fn h2c_gateway_with(echo: &Echo, listener_tables: &str) -> TestGateway {
    let base = base_config(echo.addr);
    assert!(base.contains(PLAIN_LISTENER));
    let config = format!(
        "{}{}",
        base.replace(
            PLAIN_LISTENER,
            &format!("{PLAIN_LISTENER}h2c = true\n{listener_tables}\n")
        ),
        route("all", "/", &[])
    );
    TestGateway::start(&config, &[])
        .await
        .expect("gateway starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_and_http1_share_a_listener() {
    let echo = Echo::start_local().await.expect("echo");
    let gw = h2c_gateway(&echo).await;

    let io = TokioIo::new(TcpStream::connect(gw.addr).await.expect("connect"));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("h2c handshake");
    tokio::spawn(conn);
    for _ in 0..3 {
        let request = Request::get("http://h2c.test/x")
            .version(Version::HTTP_2)
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), Version::HTTP_2);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let seen: portcullis_tests::echo::Seen = serde_json::from_slice(&body).expect("echo");
        assert_eq!(seen.header("host"), Some("h2c.test"));
        assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    }

    Client::new()
        .get(&gw.url("/x"), &[])
        .await
        .expect("HTTP/1.1 on the same listener")
        .assert_ok();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_but_not_while_a_stream_is_open() {
    let echo = Echo::start_local().await.expect("echo");
    let idle_ms = 600;
    let gw = h2c_gateway_with(
        &echo,
        &format!("[listeners.http2]\nidle_timeout_ms = {idle_ms}"),
    )
    .await;

    let io = TokioIo::new(TcpStream::connect(gw.addr).await.expect("connect"));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("h2c handshake");
    let conn = tokio::spawn(conn);
    // A request whose answer takes two and a half idle timeouts (within
    // the upstream's 2 s timeout) keeps the connection open: had the
    // gateway sent GOAWAY meanwhile, the next request on the connection
    // would be refused.
    let request = Request::get(format!("http://h2c.test/delay/{}", 5 * idle_ms / 2))
        .version(Version::HTTP_2)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.expect("whole body");
    let request = Request::get("http://h2c.test/next")
        .version(Version::HTTP_2)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender
        .send_request(request)
        .await
        .expect("the connection still takes requests");
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.expect("whole body");
    // Then, with nothing in flight, the gateway ends the connection
    // (GOAWAY), which the client sees as the connection finishing.
    let ended = tokio::time::timeout(Duration::from_secs(30), conn).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the idle connection was not closed cleanly: {ended:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_closes_that_connection_only() {
    let echo = Echo::start_local().await.expect("echo");
    let gw = h2c_gateway(&echo).await;

    // The flood: 5000 requests each reset at once, written in one go.
    let flood = h2::rapid_reset_flood(5000);
    let addr = gw.addr;
    let writing = tokio::spawn(async move { h2::send_flood(addr, &flood).await });

    // Meanwhile another client is served.
    let client = Client::new();
    for _ in 0..20 {
        client
            .get(&gw.url("/x"), &[])
            .await
            .expect("reply")
            .assert_ok();
    }

    let received = writing.await.expect("attacker task");
    let goaway = h2::goaway_code(&received);
    assert_eq!(
        goaway,
        Some(0xb),
        "GOAWAY with ENHANCE_YOUR_CALM ({} bytes received)",
        received.len()
    );
    // And the gateway still serves new connections.
    client
        .get(&gw.url("/x"), &[])
        .await
        .expect("reply")
        .assert_ok();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_on_one_connection_are_all_served() {
    let echo = Echo::start_local().await.expect("echo");
    let gw = h2c_gateway(&echo).await;
    let io = TokioIo::new(TcpStream::connect(gw.addr).await.expect("connect"));
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("h2c handshake");
    tokio::spawn(conn);
    // 32 streams in flight at once on the one connection, each to the
    // HTTP/1.1 upstream, each answered with its own path.
    let calls = (0..32).map(|i| {
        let mut sender = sender.clone();
        async move {
            let request = Request::get(format!("http://h2c.test/stream/{i}"))
                .version(Version::HTTP_2)
                .body(Empty::<Bytes>::new())
                .expect("request");
            let response = sender.send_request(request).await.expect("response");
            assert_eq!(response.status(), StatusCode::OK);
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            let seen: portcullis_tests::echo::Seen = serde_json::from_slice(&body).expect("echo");
            seen.path
        }
    });
    let paths = futures_util::future::join_all(calls).await;
    let expected: Vec<String> = (0..32).map(|i| format!("/stream/{i}")).collect();
    assert_eq!(paths, expected);
    gw.stop().await;
}
