//! The reverse proxy with the key-auth plugin, end to end over real sockets.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use portcullis_tests::echo::Echo;
use portcullis_tests::{
    Client, ClientBody, TestGateway, base_config, fixtures, logged, route, sha256_hex, start_routes,
};
use sha2::{Digest, Sha256};

fn routes() -> String {
    let keys = format!(
        r#"query_param = "apikey"
keys = [
    {{ consumer = "alice", sha256 = "{alice}", roles = ["admin"] }},
    {{ consumer = "bob", sha256 = "{bob}" }},
]"#,
        alice = sha256_hex(b"alice-secret"),
        bob = sha256_hex(b"bob-secret"),
    );
    let open = r#"
[[routes]]
name = "open"
path_prefix = "/open"
methods = ["GET", "POST"]
upstream = "echo"
"#;
    route("api", "/api", &[("key_auth", &keys)]) + open
}

async fn gateway() -> (TestGateway, Echo) {
    start_routes(&routes(), &[("key_auth", fixtures::KEY_AUTH)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_key_get_401_and_never_reach_the_upstream() {
    let (gw, _echo) = gateway().await;
    let client = Client::new();

    let missing = client
        .get(&gw.url("/api/users"), &[])
        .await
        .expect("response");
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert!(
        missing
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("ApiKey")),
        "{:?}",
        missing.headers
    );
    assert_eq!(
        missing.header("x-upstream"),
        None,
        "the upstream must not answer"
    );

    let wrong = client
        .get(&gw.url("/api/users"), &[("x-api-key", "guess")])
        .await
        .expect("response");
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.header("x-upstream"), None);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_key_reaches_the_upstream_stripped_with_forwarded_headers() {
    let (gw, _echo) = gateway().await;
    let client = Client::new();

    let ok = client
        .get(
            &gw.url("/api/users/42?limit=5&sort=name%20asc"),
            &[("x-api-key", "alice-secret"), ("host", "api.example.com")],
        )
        .await
        .expect("response");
    ok.assert_ok();
    let seen = ok.seen();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path, "/api/users/42");
    assert_eq!(seen.query.as_deref(), Some("limit=5&sort=name%20asc"));
    assert_eq!(seen.header("x-api-key"), None, "the credential is stripped");
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("api.example.com"));
    assert_eq!(seen.header("host"), Some("api.example.com"));

    // The key in the query: accepted, and removed from the query.
    let by_query = client
        .get(&gw.url("/api/users?apikey=bob-secret&page=2"), &[])
        .await
        .expect("response");
    assert_eq!(by_query.status, StatusCode::OK);
    assert_eq!(by_query.seen().query.as_deref(), Some("page=2"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mib_body_streams_through_without_being_buffered() {
    let (gw, echo) = gateway().await;
    const TOTAL: usize = 10 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;

    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<http_body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>,
    >(4);
    let body: ClientBody = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
    .boxed_unsync();
    let request = Request::builder()
        .method(Method::POST)
        .uri(gw.url("/api/upload"))
        .header("x-api-key", "alice-secret")
        .header("content-length", TOTAL.to_string())
        .body(body)
        .expect("request");
    let client = Client::new();
    let response = tokio::spawn(async move { client.send(request).await });

    let mut hasher = Sha256::new();
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    hasher.update(&chunk);
    tx.send(Ok(http_body::Frame::data(Bytes::from(chunk.clone()))))
        .await
        .expect("first chunk sent");
    // The rest of the body is held back until the upstream has seen the first
    // chunk: a gateway that buffered whole bodies would never pass this point.
    assert!(
        echo.first_chunk(Duration::from_secs(10)).await,
        "the upstream did not receive the first chunk before the body was complete"
    );
    for _ in 1..TOTAL / CHUNK {
        hasher.update(&chunk);
        tx.send(Ok(http_body::Frame::data(Bytes::from(chunk.clone()))))
            .await
            .expect("chunk sent");
    }
    drop(tx);
    let reply = response.await.expect("task").expect("response");
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.seen();
    assert_eq!(seen.body_len, TOTAL);
    assert_eq!(seen.body_sha256, hex::encode(hasher.finalize()));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    let (gw, _echo) = gateway().await;
    let reply = Client::new()
        .get(
            &gw.url("/open/x"),
            &[
                ("connection", "x-session"),
                ("x-session", "abc"),
                ("te", "gzip, trailers"),
                ("x-kept", "1"),
            ],
        )
        .await
        .expect("response");
    let seen = reply.seen();
    assert_eq!(seen.header("x-session"), None);
    assert_eq!(
        seen.header("te"),
        Some("trailers"),
        "of TE only `trailers` crosses a hop (gRPC needs it), as Envoy does"
    );
    assert_eq!(seen.header("x-kept"), Some("1"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let (gw, _echo) = gateway().await;
    let client = Client::new();
    let none = client
        .get(&gw.url("/nowhere"), &[])
        .await
        .expect("response");
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    let method = client
        .request(Method::DELETE, &gw.url("/open/x"), &[], Bytes::new())
        .await
        .expect("response");
    assert_eq!(method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(method.header("allow"), Some("GET, POST"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_is_502_and_a_slow_one_504() {
    let echo = Echo::start_local().await.expect("echo starts");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let config = format!(
        r#"{base}
[upstreams.dead]
servers = ["{closed}"]

[upstreams.slow]
servers = ["{echo}"]
timeout_ms = 200

[[routes]]
name = "dead"
path_prefix = "/dead"
upstream = "dead"

[[routes]]
name = "slow"
path_prefix = "/delay"
upstream = "slow"
"#,
        base = base_config(echo.addr),
        echo = echo.addr,
    );
    let gw = TestGateway::start(&config, &[])
        .await
        .expect("gateway starts");
    let client = Client::new();
    let dead = client.get(&gw.url("/dead"), &[]).await.expect("response");
    assert_eq!(dead.status, StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = dead.json().expect("json body");
    assert_eq!(body["message"], "upstream `dead` is unreachable");

    let slow = client
        .get(&gw.url("/delay/2000"), &[])
        .await
        .expect("response");
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT);
    let body: serde_json::Value = slow.json().expect("json body");
    assert_eq!(body["message"], "upstream `slow` timed out after 200 ms");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_before_routing_so_dot_segments_cannot_skip_a_route() {
    let (gw, _echo) = gateway().await;
    let client = Client::new();

    // Through the open route's prefix, up and into /api: still /api's plugins.
    for sneaky in [
        "/open/../api/users",
        "/open/%2e%2e/api/users",
        "/open/%2E%2E/api/users",
        "//api//users",
    ] {
        let reply = client.get(&gw.url(sneaky), &[]).await.expect("response");
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{sneaky}");
    }

    // What the upstream and the plugins get is the normal form.
    let seen = client
        .get(&gw.url("/open/a/./b/../%63?x=%2e"), &[])
        .await
        .expect("response")
        .seen();
    assert_eq!(seen.path, "/open/a/c");
    assert_eq!(
        seen.query.as_deref(),
        Some("x=%2e"),
        "the query is left as it was"
    );

    // Ambiguous paths are refused.
    for refused in ["/open/a%2Fb", "/open/a%5Cb", "/open/a%zz"] {
        let reply = client.get(&gw.url(refused), &[]).await.expect("response");
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{refused}");
        assert_eq!(reply.header("x-upstream"), None, "{refused}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_believed_from_trusted_proxies_only() {
    let echo = Echo::start_local().await.expect("echo");
    let request = |gw: &TestGateway, path: &str| {
        let url = gw.url(path);
        async move {
            Client::new()
                .get(
                    &url,
                    &[
                        ("x-forwarded-for", "6.6.6.6, 203.0.113.9"),
                        ("x-forwarded-proto", "https"),
                    ],
                )
                .await
                .expect("reply")
        }
    };

    // Untrusted (the default): the peer is the client; the client's
    // X-Forwarded-Proto is replaced, its X-Forwarded-For appended to.
    let config = format!("{}{}", base_config(echo.addr), route("all", "/", &[]));
    let gw = TestGateway::start(&config, &[]).await.expect("gateway");
    let seen = request(&gw, "/untrusted").await.seen();
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("6.6.6.6, 203.0.113.9, 127.0.0.1")
    );
    assert!(logged(&["path=\"/untrusted\"", "client=127.0.0.1"]));
    gw.stop().await;

    // Trusted: the client is the rightmost untrusted hop, and the proxy's
    // X-Forwarded-Proto stands.
    let config = format!(
        "trusted_proxies = [\"127.0.0.0/8\"]\n{}{}",
        base_config(echo.addr),
        route("all", "/", &[])
    );
    let gw = TestGateway::start(&config, &[]).await.expect("gateway");
    let seen = request(&gw, "/trusted").await.seen();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("6.6.6.6, 203.0.113.9, 127.0.0.1")
    );
    assert!(logged(&["path=\"/trusted\"", "client=203.0.113.9"]));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7239_forwarded_and_a_case_insensitive_route_from_the_config() {
    let echo = Echo::start_local().await.expect("echo");
    let admin = route(
        "admin",
        "/Admin",
        &[(
            "key_auth",
            r#"keys = [{ consumer = "demo", key = "demo-key" }]"#,
        )],
    )
    .replacen(
        "upstream = \"echo\"",
        "upstream = \"echo\"\ncase_sensitive = false",
        1,
    );
    let config = format!(
        "forwarded_headers = \"forwarded\"\n{}{}{}",
        base_config(echo.addr),
        admin,
        route("all", "/", &[])
    );
    let gw = TestGateway::start(&config, &[("key_auth", fixtures::KEY_AUTH)])
        .await
        .expect("gateway");
    // The admin route's policy holds whatever the letter case.
    for path in ["/admin/users", "/ADMIN/users"] {
        let reply = Client::new().get(&gw.url(path), &[]).await.expect("reply");
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    // Forwarded instead of X-Forwarded-*, the client's claim removed.
    let seen = Client::new()
        .get(&gw.url("/x"), &[("x-forwarded-for", "6.6.6.6")])
        .await
        .expect("reply")
        .seen();
    let expected = format!("for=127.0.0.1;proto=http;host=\"{}\"", gw.addr);
    assert_eq!(seen.header("forwarded"), Some(expected.as_str()));
    assert_eq!(seen.header("x-forwarded-for"), None);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_says_what_the_client_really_got() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gw, echo) = start_routes(&route("all", "/", &[]), &[]).await;

    // Whole: bytes in and out, the upstream that answered.
    let reply = Client::new()
        .request(
            Method::POST,
            &gw.url("/whole/reflect"),
            &[],
            vec![b'x'; 1000],
        )
        .await
        .expect("reply");
    reply.assert_ok();
    let upstream = format!("upstream=\"{}\"", echo.addr);
    assert!(
        logged(&[
            "path=\"/whole/reflect\"",
            "bytes_in=1000",
            "bytes_out=1000",
            "aborted=false",
            &upstream
        ]),
        "{:?}",
        portcullis_tests::logged_lines(&["/whole/reflect"])
    );

    // Cut short: a 4 MiB answer the client stops reading after its head.
    const SIZE: usize = 4 * 1024 * 1024;
    let mut stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let head =
        format!("POST /cut/reflect HTTP/1.1\r\nhost: a.test\r\ncontent-length: {SIZE}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(&vec![b'y'; SIZE]).await.expect("write");
    let mut first = [0u8; 1024];
    let n = stream.read(&mut first).await.expect("read");
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !logged(&["path=\"/cut/reflect\"", "aborted=true"]) {
        assert!(
            std::time::Instant::now() < deadline,
            "no aborted line: {:?}",
            portcullis_tests::logged_lines(&["/cut/reflect"])
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = portcullis_tests::logged_lines(&["path=\"/cut/reflect\""]).join("\n");
    assert!(!line.contains(&format!("bytes_out={SIZE}")), "{line}");
    gw.stop().await;
}
