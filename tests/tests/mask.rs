//! The `mask` plugin end to end: the real `mask.wasm` in a gateway in front
//! of the echo upstream. The echo answers with a JSON description of the
//! request it received (headers and query included), so what a client
//! sends in headers comes back in a JSON response body to be masked.

use http::{Method, StatusCode};
use portcullis_tests::echo::Echo;
use portcullis_tests::{Client, Reply, TestGateway, base_config, fixtures, logged};
use sha2::{Digest, Sha256};

fn config(echo: &Echo) -> String {
    format!(
        r#"{base}
[[routes]]
name = "out"
path_prefix = "/out"
upstream = "echo"

[[routes.plugins]]
name = "mask"

[routes.plugins.config]
paths = ["method"]
response_headers = ["x-upstream"]

[[routes]]
name = "in"
path_prefix = "/in"
upstream = "echo"

[[routes.plugins]]
name = "mask"

[routes.plugins.config]
request_body = true
response_body = false
request_headers = ["authorization"]
paths = ["user.ssn", "items[*].cvv"]
patterns = [{{ regex = 'order-(\d+)', replace = "order-#" }}]

[[routes]]
name = "strict-in"
path_prefix = "/strict-in"
upstream = "echo"

[[routes.plugins]]
name = "mask"
config = {{ request_body = true, response_body = false, max_body_bytes = 64, on_too_large = "refuse" }}

[[routes]]
name = "strict-out"
path_prefix = "/strict-out"
upstream = "echo"

[[routes.plugins]]
name = "mask"
config = {{ max_body_bytes = 1000, on_too_large = "refuse" }}

[[routes]]
name = "lenient"
path_prefix = "/lenient"
upstream = "echo"

[[routes.plugins]]
name = "mask"
config = {{ max_body_bytes = 1000 }}
"#,
        base = base_config(echo.addr),
    )
}

async fn gateway() -> TestGateway {
    let echo = Echo::start_local().await.expect("echo starts");
    TestGateway::start(&config(&echo), &[("mask", fixtures::MASK)])
        .await
        .expect("gateway starts")
}

fn ok(reply: &Reply) {
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_and_headers_are_masked() {
    let gw = gateway().await;
    let reply = Client::new()
        .get(
            &gw.url("/out/profile?pan=4111111111111111&page=2"),
            &[
                ("x-card", "4111 1111 1111 1111"),
                ("x-mail", "jane.doe@example.com"),
                ("x-not-a-card", "4111 1111 1111 1112"),
                ("accept-encoding", "gzip, br"),
            ],
        )
        .await
        .expect("response");
    ok(&reply);
    let text = String::from_utf8_lossy(&reply.body);
    assert!(!text.contains("4111 1111 1111 1111"), "{text}");
    assert!(!text.contains("jane.doe"), "{text}");
    assert_eq!(
        reply.header("content-length"),
        Some(reply.body.len().to_string().as_str()),
        "the gateway frames the masked body"
    );
    // Still valid JSON, and still the echo's report.
    let seen = reply.seen();
    assert_eq!(seen.header("x-card"), Some("**** **** **** 1111"));
    assert_eq!(seen.header("x-mail"), Some("j***@example.com"));
    assert_eq!(
        seen.header("x-not-a-card"),
        Some("4111 1111 1111 1112"),
        "fails the Luhn check"
    );
    assert_eq!(seen.query.as_deref(), Some("pan=************1111&page=2"));
    assert_eq!(seen.method, "[REDACTED]", "a configured path");
    assert_eq!(seen.path, "/out/profile");
    assert_eq!(
        seen.header("accept-encoding"),
        None,
        "removed so that the upstream answers uncompressed"
    );
    assert_eq!(reply.header("x-upstream"), Some("[REDACTED]"));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_and_headers_are_masked_before_the_upstream() {
    let gw = gateway().await;
    let client = Client::new();
    let body = r#"{"user": {"ssn": "123-45-6789", "email": "jane@example.com"},
 "card": "4111-1111-1111-1111", "items": [{"cvv": 123, "ref": "order-981"}], "n": 1.50}"#;
    let reply = client
        .request(
            Method::POST,
            &gw.url("/in/pay"),
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer secret"),
            ],
            body,
        )
        .await
        .expect("response");
    ok(&reply);
    let seen = reply.seen();
    // Masked in place: the layout and the untouched values stay as sent.
    let expected = r#"{"user": {"ssn": "[REDACTED]", "email": "j***@example.com"},
 "card": "****-****-****-1111", "items": [{"cvv": "[REDACTED]", "ref": "order-#"}], "n": 1.50}"#;
    assert_eq!(seen.body_sha256, sha256(expected.as_bytes()));
    assert_eq!(seen.body_len, expected.len());
    assert_eq!(
        seen.header("content-length"),
        Some(expected.len().to_string().as_str())
    );
    assert_eq!(seen.header("authorization"), Some("[REDACTED]"));

    // Text is masked as text; other media types pass untouched.
    let text = client
        .request(
            Method::POST,
            &gw.url("/in/note"),
            &[("content-type", "text/plain; charset=utf-8")],
            "card 5555555555554444, mail bob@example.org",
        )
        .await
        .expect("response");
    ok(&text);
    let expected = "card ************4444, mail b***@example.org";
    assert_eq!(text.seen().body_sha256, sha256(expected.as_bytes()));
    let binary = "card 5555555555554444";
    let untouched = client
        .request(
            Method::POST,
            &gw.url("/in/blob"),
            &[("content-type", "application/octet-stream")],
            binary,
        )
        .await
        .expect("response");
    ok(&untouched);
    assert_eq!(untouched.seen().body_sha256, sha256(binary.as_bytes()));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_cap_are_refused_or_passed_as_configured() {
    let gw = gateway().await;
    let client = Client::new();
    let big = format!(
        r#"{{"card":"4111111111111111","pad":"{}"}}"#,
        "x".repeat(100)
    );

    // A request over the plugin's cap, `refuse`: 413, the upstream never
    // sees it. Under the cap, it is masked.
    let refused = client
        .request(
            Method::POST,
            &gw.url("/strict-in"),
            &[("content-type", "application/json")],
            big.clone(),
        )
        .await
        .expect("response");
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(refused.header("x-upstream"), None);
    let message: serde_json::Value = refused.json().expect("JSON error");
    assert_eq!(message["message"], "the body is too large to be masked");
    let small = client
        .request(
            Method::POST,
            &gw.url("/strict-in"),
            &[("content-type", "application/json")],
            r#"{"card":"4111111111111111"}"#,
        )
        .await
        .expect("response");
    ok(&small);
    assert_eq!(
        small.seen().body_sha256,
        sha256(br#"{"card":"************1111"}"#)
    );

    // The echo's answer to a long query is over the cap: the response body
    // (which holds the card number) is replaced by a 502. A short one is
    // masked.
    let long = format!("?pan=4111111111111111&pad={}", "y".repeat(2000));
    let bad_gateway = client
        .get(&gw.url(&format!("/strict-out{long}")), &[])
        .await
        .expect("response");
    assert_eq!(bad_gateway.status, StatusCode::BAD_GATEWAY);
    assert!(!String::from_utf8_lossy(&bad_gateway.body).contains("4111111111111111"));
    assert_eq!(bad_gateway.header("content-type"), Some("application/json"));
    let short = client
        .get(&gw.url("/strict-out?pan=4111111111111111"), &[])
        .await
        .expect("response");
    ok(&short);
    assert_eq!(short.seen().query.as_deref(), Some("pan=************1111"));

    // `pass` (the default): the body goes through unmasked, with a warning.
    let passed = client
        .get(&gw.url(&format!("/lenient{long}")), &[])
        .await
        .expect("response");
    ok(&passed);
    assert!(String::from_utf8_lossy(&passed.body).contains("4111111111111111"));
    assert!(logged(&[
        "response body not masked: the body is too large to be masked"
    ]));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_refused_at_load_naming_the_key() {
    let echo = Echo::start_local().await.expect("echo starts");
    let bad = format!(
        r#"{base}
[[routes]]
name = "api"
path_prefix = "/api"
upstream = "echo"

[[routes.plugins]]
name = "mask"
config = {{ paths = ["items[x]"], card_keep_last = 6, on_too_large = "drop" }}
"#,
        base = base_config(echo.addr),
    );
    let dir = TestGateway::prepare(&bad, &[("mask", fixtures::MASK)]).expect("prepare");
    let err = TestGateway::start_in(dir)
        .await
        .expect_err("a bad mask config must not start");
    let message = format!("{err:#}");
    assert!(
        message.contains("route `api` plugin `mask`: rejected its configuration"),
        "{message}"
    );
    assert!(
        message.contains("on_too_large: unknown variant `drop`"),
        "{message}"
    );

    let bad = bad.replace(r#", on_too_large = "drop""#, "");
    let dir = TestGateway::prepare(&bad, &[("mask", fixtures::MASK)]).expect("prepare");
    let message = format!(
        "{:#}",
        TestGateway::start_in(dir)
            .await
            .expect_err("a bad mask config must not start")
    );
    assert!(message.contains("paths[0]: `items[x]`"), "{message}");
    assert!(
        message.contains("card_keep_last: 6 is more than 4"),
        "{message}"
    );
}
