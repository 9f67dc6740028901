//! The `mask` plugin end to end: the real `mask.wasm` in a gateway in front
//! of the echo upstream. The echo answers with a JSON description of the
//! request it received (headers and query included), so what a client
//! sends in headers comes back in a JSON response body to be masked.

use http::{Method, StatusCode};
use portcullis_tests::{
    Client, TestGateway, assert_config_refused, fixtures, logged, route, sha256_hex, start_routes,
};

const PLUGINS: &[(&str, &str)] = &[("mask", fixtures::MASK)];

/// A route `name` on `prefix` through `mask` configured with `config`.
fn mask_route(name: &str, prefix: &str, config: &str) -> String {
    route(name, prefix, &[("mask", config)])
}

fn routes() -> String {
    [
        mask_route(
            "out",
            "/out",
            r#"paths = ["method"]
response_headers = ["x-upstream"]"#,
        ),
        mask_route(
            "in",
            "/in",
            r#"request_body = true
response_body = false
request_headers = ["authorization"]
paths = ["user.ssn", "items[*].cvv"]
patterns = [{ regex = 'order-(\d+)', replace = "order-#" }]"#,
        ),
        mask_route(
            "strict-in",
            "/strict-in",
            r#"request_body = true
response_body = false
max_body_bytes = 64
on_too_large = "refuse""#,
        ),
        mask_route(
            "strict-out",
            "/strict-out",
            r#"max_body_bytes = 1000
on_too_large = "refuse""#,
        ),
        mask_route("lenient", "/lenient", "max_body_bytes = 1000"),
    ]
    .concat()
}

async fn gateway() -> TestGateway {
    start_routes(&routes(), PLUGINS).await.0
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
    reply.assert_ok();
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
    reply.assert_ok();
    let seen = reply.seen();
    // Masked in place: the layout and the untouched values stay as sent.
    let expected = r#"{"user": {"ssn": "[REDACTED]", "email": "j***@example.com"},
 "card": "****-****-****-1111", "items": [{"cvv": "[REDACTED]", "ref": "order-#"}], "n": 1.50}"#;
    assert_eq!(seen.body_sha256, sha256_hex(expected.as_bytes()));
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
    text.assert_ok();
    let expected = "card ************4444, mail b***@example.org";
    assert_eq!(text.seen().body_sha256, sha256_hex(expected.as_bytes()));
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
    untouched.assert_ok();
    assert_eq!(untouched.seen().body_sha256, sha256_hex(binary.as_bytes()));
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
    small.assert_ok();
    assert_eq!(
        small.seen().body_sha256,
        sha256_hex(br#"{"card":"************1111"}"#)
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
    short.assert_ok();
    assert_eq!(short.seen().query.as_deref(), Some("pan=************1111"));

    // `pass` (the default): the body goes through unmasked, with a warning.
    let passed = client
        .get(&gw.url(&format!("/lenient{long}")), &[])
        .await
        .expect("response");
    passed.assert_ok();
    assert!(String::from_utf8_lossy(&passed.body).contains("4111111111111111"));
    assert!(logged(&[
        "response body not masked: the body is too large to be masked"
    ]));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_refused_at_load_naming_the_key() {
    let bad = r#"paths = ["items[x]"]
card_keep_last = 6"#;
    assert_config_refused(
        &mask_route("api", "/api", &format!("{bad}\non_too_large = \"drop\"")),
        PLUGINS,
        &[
            "route `api` plugin `mask`: rejected its configuration",
            "on_too_large: unknown variant `drop`",
        ],
    )
    .await;
    assert_config_refused(
        &mask_route("api", "/api", bad),
        PLUGINS,
        &["paths[0]: `items[x]`", "card_keep_last: 6 is more than 4"],
    )
    .await;
}
