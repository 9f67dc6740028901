//! WebSocket through the gateway: the handshake runs the route's request
//! plugins (so an unauthenticated one is refused before any upstream
//! sees it), and once the upstream switches protocols the bytes flow both
//! ways until a side closes.

use std::time::Duration;

use portcullis_tests::upstream::{Protocol, TestUpstream};
use portcullis_tests::{TestGateway, fixtures, route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn gateway(upstream: &TestUpstream) -> TestGateway {
    gateway_with(upstream, "").await
}

/// Like [`gateway`], with `extra` route keys.
async fn gateway_with(upstream: &TestUpstream, extra: &str) -> TestGateway {
    gateway_with_listener(upstream, "", extra).await
}

/// Like [`gateway_with`], with `listener` keys too.
async fn gateway_with_listener(
    upstream: &TestUpstream,
    listener: &str,
    extra: &str,
) -> TestGateway {
    let config = format!(
        r#"
state_directory = "state"
[[listeners]]
address = "127.0.0.1:0"
{listener}
[plugins]
directory = "plugins"
[limits]
max_instances = 8
[upstreams.echo]
servers = ["{}"]
{}"#,
        upstream.addr,
        route(
            "ws",
            "/",
            &[(
                "key_auth",
                r#"keys = [{ consumer = "demo", key = "demo-key" }]"#
            )]
        )
        .replacen(
            "upstream = \"echo\"",
            &format!("upstream = \"echo\"\n{extra}"),
            1
        )
    );
    TestGateway::start(&config, &[("key_auth", fixtures::KEY_AUTH)])
        .await
        .expect("gateway starts")
}

/// Sends a WebSocket handshake with `extra` header lines; returns the
/// stream and the response head.
async fn handshake(gw: &TestGateway, extra: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let request = format!(
        "GET /chat HTTP/1.1\r\nhost: ws.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut byte))
            .await
            .expect("a response head")
            .expect("read");
        assert_eq!(n, 1, "the connection closed mid-head: {head:?}");
        head.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_carried_both_ways_after_the_plugins_let_it_in() {
    let upstream = TestUpstream::start(Protocol::Http1, None)
        .await
        .expect("upstream");
    let gw = gateway(&upstream).await;

    let (_, refused) = handshake(&gw, "").await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");

    let (mut stream, head) = handshake(&gw, "x-api-key: demo-key\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    assert!(lower.contains("sec-websocket-accept: test"), "{head}");

    for message in [&b"hello"[..], b"second message", &[0u8, 1, 2, 255]] {
        stream.write_all(message).await.expect("write");
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut echoed))
            .await
            .expect("the echo arrives")
            .expect("read");
        assert_eq!(echoed, message);
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_refuse_websockets_and_a_silent_one_is_closed() {
    let upstream = TestUpstream::start(Protocol::Http1, None)
        .await
        .expect("upstream");
    let gw = gateway_with(&upstream, "websocket = false").await;
    let (_, refused) = handshake(&gw, "x-api-key: demo-key\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    gw.stop().await;

    let gw = gateway_with(&upstream, "upgrade_idle_timeout_ms = 1000").await;
    let (mut stream, head) = handshake(&gw, "x-api-key: demo-key\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"ping").await.expect("write");
    let mut echoed = [0u8; 4];
    stream.read_exact(&mut echoed).await.expect("echo");
    assert_eq!(&echoed, b"ping");
    // Then silence: the gateway closes the tunnel (the bound here is only
    // against a hang).
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut rest))
        .await
        .expect("the idle tunnel is closed")
        .expect("read");
    assert!(rest.is_empty(), "{rest:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_holds_its_listener_connection_slot() {
    let upstream = TestUpstream::start(Protocol::Http1, None)
        .await
        .expect("upstream");
    let gw = gateway_with_listener(&upstream, "max_connections = 1", "").await;
    let (mut stream, head) = handshake(&gw, "x-api-key: demo-key\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"ping").await.expect("write");
    let mut echoed = [0u8; 4];
    stream.read_exact(&mut echoed).await.expect("echo");

    // The tunnel holds the only slot: another client waits in the backlog.
    let addr = gw.addr;
    let waiting = tokio::spawn(async move {
        let mut other = TcpStream::connect(addr).await.expect("connect");
        other
            .write_all(b"GET /x HTTP/1.1\r\nhost: ws.test\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        other.read_to_end(&mut answer).await.expect("read");
        String::from_utf8_lossy(&answer).into_owned()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a client was served past max_connections while a WebSocket was open"
    );
    // Closing the WebSocket gives the slot back.
    drop(stream);
    let answer = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("served once the tunnel closed")
        .expect("task");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    gw.stop().await;
}
