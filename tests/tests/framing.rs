//! The front end refuses every request the gateway and an upstream could
//! read two ways (request smuggling, RFC 9112 §6 and §11.2) or that RFC
//! 9112 says a server MUST reject, with 400 (or 431 for oversized heads),
//! before any route or plugin runs, and closes the connection after it.

use std::time::Duration;

use portcullis_tests::{route, start_routes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `raw` on a new connection and reads until the gateway closes it
/// (bounded: a connection still open after 10 s is reported as such).
async fn exchange(addr: std::net::SocketAddr, raw: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(raw.as_bytes()).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    if read.is_err() {
        format!("(still open) {text}")
    } else {
        text
    }
}

fn status(response: &str) -> &str {
    response.get(9..12).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_malformed_requests_are_refused_and_the_connection_closed() {
    let (gw, _echo) = start_routes(&route("all", "/", &[]), &[]).await;
    let cases: &[(&str, &str, &str)] = &[
        (
            "two different Content-Length values",
            "POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde",
            "400",
        ),
        (
            "a Content-Length list",
            "POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 4, 5\r\n\r\nabcde",
            "400",
        ),
        (
            "a signed Content-Length",
            "POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: +4\r\n\r\nabcd",
            "400",
        ),
        (
            "chunked not the final coding",
            "POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
            "400",
        ),
        (
            "an unknown transfer coding",
            "POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n",
            "400",
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            "POST / HTTP/1.0\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "400",
        ),
        (
            "whitespace before the colon",
            "GET / HTTP/1.1\r\nhost: a.test\r\nx-a : 1\r\n\r\n",
            "400",
        ),
        (
            "an obsolete folded header line",
            "GET / HTTP/1.1\r\nhost: a.test\r\nx-a: 1\r\n  folded\r\n\r\n",
            "400",
        ),
        ("no Host in HTTP/1.1", "GET / HTTP/1.1\r\n\r\n", "400"),
        (
            "two Host headers",
            "GET / HTTP/1.1\r\nhost: a.test\r\nhost: b.test\r\n\r\n",
            "400",
        ),
        (
            "a Host with userinfo",
            "GET / HTTP/1.1\r\nhost: user@a.test\r\n\r\n",
            "400",
        ),
        (
            "a Host with a path",
            "GET / HTTP/1.1\r\nhost: a.test/x\r\n\r\n",
            "400",
        ),
        (
            "an absolute target naming another host",
            "GET http://b.test/ HTTP/1.1\r\nhost: a.test\r\n\r\n",
            "400",
        ),
        (
            "a bad chunk size",
            "POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            "400",
        ),
        (
            "a chunk longer than its size",
            "POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
            "400",
        ),
        (
            "a bare LF in a chunk line",
            "POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
            "400",
        ),
    ];
    let mut failures = Vec::new();
    for (what, raw, expected) in cases {
        let response = exchange(gw.addr, raw).await;
        let got = status(&response);
        // A bad chunk is seen after the head went upstream: the gateway
        // cannot answer 400 any more, it must not pass the rest on.
        let ok = if expected.is_empty() {
            !response.contains("\"body_len\"") || response.contains("\"body_len\":0")
        } else {
            got == *expected && !response.starts_with("(still open)")
        };
        if !ok {
            failures.push(format!("{what}: got {got:?}: {response:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Content-Length and Transfer-Encoding together: read by
    // Transfer-Encoding alone, Content-Length dropped, and the connection
    // closed after the answer (RFC 9112 §6.1), so the upstream sees one
    // message framed one way.
    for raw in [
        "POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n",
    ] {
        let response = exchange(gw.addr, raw).await;
        assert!(!response.starts_with("(still open)"), "{response}");
        assert_eq!(status(&response), "200", "{response}");
        assert!(response.contains("\"body_len\":0"), "{response}");
        assert!(!response.contains("content-length\",\"4"), "{response}");
    }

    // Oversized heads: 431.
    let big = format!(
        "GET / HTTP/1.1\r\nhost: a.test\r\nx-big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let response = exchange(gw.addr, &big).await;
    assert_eq!(
        status(&response),
        "431",
        "{}",
        &response[..response.len().min(200)]
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_past_the_route_limit_are_413_declared_or_streamed() {
    let routes = route("small", "/", &[]).replace(
        "upstream = \"echo\"",
        "upstream = \"echo\"\nmax_request_body_bytes = 16",
    );
    let (gw, _echo) = start_routes(&routes, &[]).await;
    let declared = exchange(
        gw.addr,
        "POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 17\r\n\r\n",
    )
    .await;
    assert_eq!(status(&declared), "413", "{declared}");
    assert!(!declared.contains("x-upstream"), "{declared}");
    let streamed = exchange(
        gw.addr,
        "POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n\
         a\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status(&streamed), "413", "{streamed}");
    let fits = exchange(
        gw.addr,
        "POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 16\r\nconnection: close\r\n\r\n0123456789abcdef",
    )
    .await;
    assert_eq!(status(&fits), "200", "{fits}");
    assert!(fits.contains("\"body_len\":16"), "{fits}");
    gw.stop().await;
}

/// An upstream that answers every connection with `raw`, then closes.
async fn raw_upstream(raw: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(raw.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answer_framed_two_ways_is_502() {
    for (what, raw) in [
        (
            "Content-Length and Transfer-Encoding",
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "two Content-Lengths",
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        ),
        (
            "an invalid Content-Length",
            "HTTP/1.1 200 OK\r\ncontent-length: 3x\r\n\r\nabc",
        ),
    ] {
        let upstream = raw_upstream(raw).await;
        let config = format!(
            "{}{}",
            portcullis_tests::base_config(upstream),
            route("all", "/", &[])
        );
        let gw = portcullis_tests::TestGateway::start(&config, &[])
            .await
            .expect("gateway");
        let reply = portcullis_tests::Client::new().get(&gw.url("/"), &[]).await;
        match reply {
            Ok(reply) => assert_eq!(
                reply.status,
                http::StatusCode::BAD_GATEWAY,
                "{what}: {:?} {:?}",
                reply.headers,
                reply.body
            ),
            Err(e) => panic!("{what}: the client got no answer: {e}"),
        }
        gw.stop().await;
    }
}

/// A gateway on the echo upstream whose config is `base_config` with
/// `replace` applied, and `routes`.
async fn gateway_with(
    echo: &portcullis_tests::echo::Echo,
    replace: (&str, &str),
    routes: &str,
    plugins: &[(&str, &str)],
) -> portcullis_tests::TestGateway {
    let base = portcullis_tests::base_config(echo.addr);
    assert!(base.contains(replace.0), "{}", replace.0);
    let config = format!("{}{routes}", base.replace(replace.0, replace.1));
    portcullis_tests::TestGateway::start(&config, plugins)
        .await
        .expect("gateway starts")
}

const LISTENER: &str = "[[listeners]]\naddress = \"127.0.0.1:0\"\n";
const LIMITS: &str = "[limits]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_number_of_header_fields_is_bounded_and_configurable() {
    let echo = portcullis_tests::echo::Echo::start_local()
        .await
        .expect("echo");
    let raw = |fields: usize| {
        let fields: String = (0..fields)
            .map(|i| format!("x-field-{i}: {i}\r\n"))
            .collect();
        format!("GET / HTTP/1.1\r\nhost: a.test\r\n{fields}connection: close\r\n\r\n")
    };
    // 122 fields (120, host, connection): past the default of 100.
    let gw = gateway_with(&echo, (LISTENER, LISTENER), &route("all", "/", &[]), &[]).await;
    assert_eq!(status(&exchange(gw.addr, &raw(120)).await), "431");
    assert_eq!(status(&exchange(gw.addr, &raw(60)).await), "200");
    gw.stop().await;
    // Lowered to 40: 62 fields are refused, 32 pass.
    let lowered = format!("{LISTENER}[listeners.http1]\nmax_headers = 40\n");
    let gw = gateway_with(&echo, (LISTENER, &lowered), &route("all", "/", &[]), &[]).await;
    assert_eq!(status(&exchange(gw.addr, &raw(60)).await), "431");
    assert_eq!(status(&exchange(gw.addr, &raw(30)).await), "200");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_targets_slow_bodies_and_slow_routes_get_their_statuses() {
    let echo = portcullis_tests::echo::Echo::start_local()
        .await
        .expect("echo");
    let routes = route("slow", "/delay", &[]).replace(
        "upstream = \"echo\"",
        "upstream = \"echo\"\ntimeout_ms = 200",
    ) + &route("all", "/", &[]);
    let gw = gateway_with(
        &echo,
        (
            LIMITS,
            "[limits]\nmax_uri_bytes = 1024\nrequest_body_idle_timeout_ms = 300\n",
        ),
        &routes,
        &[],
    )
    .await;

    let long = format!("GET /{} HTTP/1.1\r\nhost: a.test\r\n\r\n", "a".repeat(2000));
    let response = exchange(gw.addr, &long).await;
    assert_eq!(status(&response), "414", "{response}");

    // A body announced but never sent: 408 once it has been idle.
    let response = exchange(
        gw.addr,
        "POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 10\r\n\r\nabc",
    )
    .await;
    assert_eq!(status(&response), "408", "{response}");

    // A route whose deadline passes before the upstream answers: 504.
    let response = exchange(
        gw.addr,
        "GET /delay/1500 HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&response), "504", "{response}");
    assert!(response.contains("deadline of 200 ms"), "{response}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_only_once_the_plugins_let_the_request_in() {
    let echo = portcullis_tests::echo::Echo::start_local()
        .await
        .expect("echo");
    let routes = route(
        "api",
        "/",
        &[(
            "key_auth",
            r#"keys = [{ consumer = "demo", key = "demo-key" }]"#,
        )],
    );
    let gw = gateway_with(
        &echo,
        (LIMITS, LIMITS),
        &routes,
        &[("key_auth", portcullis_tests::fixtures::KEY_AUTH)],
    )
    .await;
    // Refused: the answer comes without a 100 Continue, and the body is
    // never asked for.
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
        .await
        .expect("an answer")
        .expect("read");
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 401"), "{first}");

    // Let in: 100 Continue, then the upstream's answer to the body.
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    stream
        .write_all(b"POST / HTTP/1.1\r\nhost: a.test\r\nx-api-key: demo-key\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        .await
        .expect("write");
    let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
        .await
        .expect("an answer")
        .expect("read");
    let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    stream.write_all(b"hello").await.expect("write");
    let mut rest = interim;
    while !rest.contains("\"body_len\":5") {
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("the answer")
            .expect("read");
        assert!(n > 0, "closed early: {rest}");
        rest.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(rest.contains("HTTP/1.1 200"), "{rest}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_and_a_full_listener_waits() {
    let echo = portcullis_tests::echo::Echo::start_local()
        .await
        .expect("echo");
    let gw = gateway_with(
        &echo,
        (
            LISTENER,
            "[[listeners]]\naddress = \"127.0.0.1:0\"\nmax_connections = 1\n[listeners.http1]\nheader_read_timeout_ms = 2000\n",
        ),
        &route("all", "/", &[]),
        &[],
    )
    .await;

    // The one slot, held by a keep-alive connection after one request.
    let mut first = TcpStream::connect(gw.addr).await.expect("connect");
    first
        .write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 8192];
    let n = first.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    // A second client is accepted by the kernel but not served while the
    // slot is taken.
    let mut second = TcpStream::connect(gw.addr).await.expect("connect");
    second
        .write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let waiting = tokio::time::timeout(Duration::from_millis(200), second.read(&mut buf)).await;
    assert!(waiting.is_err(), "served while the listener was full");

    // The idle first connection is closed by the header timeout, which
    // frees the slot for the second.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), first.read_to_end(&mut rest))
        .await
        .expect("the idle connection is closed")
        .expect("read");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), second.read_to_end(&mut answer))
        .await
        .expect("the second client is served")
        .expect("read");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_that_stalls_is_cut_short() {
    // An upstream that promises 10 bytes, sends 3, then keeps the
    // connection open without a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                    .await;
                tokio::time::sleep(Duration::from_secs(120)).await;
            });
        }
    });
    let base = portcullis_tests::base_config(upstream).replace(
        "timeout_ms = 2000\n",
        "timeout_ms = 2000\nbody_idle_timeout_ms = 300\n",
    );
    assert!(base.contains("body_idle_timeout_ms = 300"));
    let config = format!("{base}{}", route("all", "/", &[]));
    let gw = portcullis_tests::TestGateway::start(&config, &[])
        .await
        .expect("gateway");
    let response = exchange(gw.addr, "GET /stall HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "the head went out before the stall: {response}"
    );
    assert!(response.ends_with("abc"), "{response}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !portcullis_tests::logged(&["path=\"/stall\"", "aborted=true", "bytes_out=3"]) {
        assert!(
            std::time::Instant::now() < deadline,
            "no aborted access-log line"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop().await;
}
