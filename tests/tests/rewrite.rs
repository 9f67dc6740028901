//! The `rewrite` plugin end to end: the real `rewrite.wasm` in a gateway in
//! front of the echo upstream, which reports what reached it.

use http::{Method, StatusCode};
use portcullis_tests::echo::Echo;
use portcullis_tests::{Client, Reply, TestGateway, base_config, fixtures};
use sha2::{Digest, Sha256};

fn config(echo: &Echo) -> String {
    format!(
        r#"{base}
[[routes]]
name = "v1"
path_prefix = "/v1"
upstream = "echo"

[[routes.plugins]]
name = "rewrite"

[routes.plugins.config]
path = [
    {{ regex = '^/v1/users/(\d+)$', replace = "/users/$1" }},
    {{ strip_prefix = "/v1" }},
]
host = "users.internal"

[routes.plugins.config.query]
map = {{ sort = {{ asc = "ascending", desc = "descending" }} }}
rename = {{ sort = "order" }}
remove = ["debug"]
set = {{ version = "2" }}

[routes.plugins.config.request_headers]
rename = {{ x-old = "x-new" }}
remove = ["x-debug"]
set = {{ x-env = "prod" }}
add = {{ via = "portcullis" }}

[routes.plugins.config.response_headers]
rename = {{ x-upstream = "x-served-by" }}
set = {{ cache-control = "no-store" }}

[[routes]]
name = "legacy"
path_prefix = "/legacy"
upstream = "echo"

[[routes.plugins]]
name = "rewrite"
config = {{ method = "POST", path = [{{ prefix = "/legacy", replace = "/api/v2" }}] }}

[[routes]]
name = "body"
path_prefix = "/body"
upstream = "echo"

[[routes.plugins]]
name = "rewrite"

[routes.plugins.config.body]
rename = {{ "user.email" = "work_email" }}
remove = ["user.password", "items[*].secret"]
nullify = ["user.ssn"]
set = {{ "meta.via" = "gateway" }}

[[routes]]
name = "strict"
path_prefix = "/strict"
upstream = "echo"

[[routes.plugins]]
name = "rewrite"
config = {{ body = {{ remove = ["password"], on_not_json = "refuse" }} }}
"#,
        base = base_config(echo.addr),
    )
}

async fn gateway() -> TestGateway {
    let echo = Echo::start_local().await.expect("echo starts");
    TestGateway::start(&config(&echo), &[("rewrite", fixtures::REWRITE)])
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
async fn path_query_host_and_headers_are_rewritten_both_ways() {
    let gw = gateway().await;
    let client = Client::new();

    let reply = client
        .get(
            &gw.url("/v1/users/42?sort=asc&debug=1&page=3"),
            &[("x-old", "a"), ("x-debug", "1"), ("x-kept", "k")],
        )
        .await
        .expect("response");
    ok(&reply);
    let seen = reply.seen();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path, "/users/42", "the regex rule with its capture");
    assert_eq!(
        seen.query.as_deref(),
        Some("order=ascending&page=3&version=2")
    );
    assert_eq!(seen.header("host"), Some("users.internal"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(gw.addr.to_string().as_str()),
        "the client's host is still reported"
    );
    assert_eq!(seen.header("x-new"), Some("a"));
    assert_eq!(seen.header("x-old"), None);
    assert_eq!(seen.header("x-debug"), None);
    assert_eq!(seen.header("x-env"), Some("prod"));
    assert_eq!(seen.header("via"), Some("portcullis"));
    assert_eq!(seen.header("x-kept"), Some("k"));

    assert_eq!(reply.header("x-served-by"), Some("echo"));
    assert_eq!(reply.header("x-upstream"), None);
    assert_eq!(reply.header("cache-control"), Some("no-store"));

    // The regex does not match: the next rule strips the prefix; no query
    // came, so the query is only what `set` adds.
    let other = client
        .get(&gw.url("/v1/users/42/orders"), &[])
        .await
        .expect("response");
    ok(&other);
    let seen = other.seen();
    assert_eq!(seen.path, "/users/42/orders");
    assert_eq!(seen.query.as_deref(), Some("version=2"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_method_is_overridden_and_a_prefix_replaced() {
    let gw = gateway().await;
    let reply = Client::new()
        .get(&gw.url("/legacy/orders/7?x=1"), &[])
        .await
        .expect("response");
    ok(&reply);
    let seen = reply.seen();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/api/v2/orders/7");
    assert_eq!(seen.query.as_deref(), Some("x=1"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_body_fields_are_renamed_removed_and_nulled() {
    let gw = gateway().await;
    let client = Client::new();
    let body = r#"{"user":{"email":"a@example.com","password":"hunter2","ssn":"123"},"items":[{"sku":"A","secret":1}]}"#;
    let reply = client
        .request(
            Method::POST,
            &gw.url("/body/signup"),
            &[("content-type", "application/json")],
            body,
        )
        .await
        .expect("response");
    ok(&reply);
    let seen = reply.seen();
    // Keys come out sorted and compact (the document is re-serialized).
    let expected = r#"{"items":[{"sku":"A"}],"meta":{"via":"gateway"},"user":{"ssn":null,"work_email":"a@example.com"}}"#;
    assert_eq!(seen.body_len, expected.len());
    assert_eq!(seen.body_sha256, sha256(expected.as_bytes()));
    assert_eq!(
        seen.header("content-length"),
        Some(expected.len().to_string().as_str()),
        "the gateway frames the new body"
    );

    // Not JSON, or JSON no rule changes (`meta.via` is already set):
    // untouched, byte for byte.
    for (content_type, body) in [
        ("text/plain", "user.email=a@example.com"),
        (
            "application/json",
            r#"{ "meta" : {"via": "gateway"}, "n": 1.50 }"#,
        ),
        ("application/json", "{broken"),
    ] {
        let reply = client
            .request(
                Method::POST,
                &gw.url("/body/x"),
                &[("content-type", content_type)],
                body,
            )
            .await
            .expect("response");
        ok(&reply);
        assert_eq!(
            reply.seen().body_sha256,
            sha256(body.as_bytes()),
            "{content_type}: {body}"
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_can_be_refused() {
    let gw = gateway().await;
    let client = Client::new();
    let refused = client
        .request(
            Method::POST,
            &gw.url("/strict"),
            &[("content-type", "text/plain")],
            "password=x",
        )
        .await
        .expect("response");
    assert_eq!(refused.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        refused.header("x-upstream"),
        None,
        "never reaches the upstream"
    );
    let message: serde_json::Value = refused.json().expect("JSON error");
    assert_eq!(message["message"], "request body is not JSON");

    let broken = client
        .request(
            Method::POST,
            &gw.url("/strict"),
            &[("content-type", "application/json")],
            "{",
        )
        .await
        .expect("response");
    assert_eq!(broken.status, StatusCode::BAD_REQUEST);

    let fine = client
        .request(
            Method::POST,
            &gw.url("/strict"),
            &[("content-type", "application/json")],
            r#"{"password":"x","name":"n"}"#,
        )
        .await
        .expect("response");
    ok(&fine);
    let expected = r#"{"name":"n"}"#;
    assert_eq!(fine.seen().body_sha256, sha256(expected.as_bytes()));

    // A request without a body is not refused.
    ok(&client.get(&gw.url("/strict"), &[]).await.expect("response"));
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
name = "rewrite"
config = {{ path = [{{ regex = '^/u/(\d+)$', replace = "/users/$1x" }}], request_headers = {{ set = {{ content-length = "1" }} }} }}
"#,
        base = base_config(echo.addr),
    );
    let dir = TestGateway::prepare(&bad, &[("rewrite", fixtures::REWRITE)]).expect("prepare");
    let err = TestGateway::start_in(dir)
        .await
        .expect_err("a bad rewrite config must not start");
    let message = format!("{err:#}");
    assert!(
        message.contains("route `api` plugin `rewrite`: rejected its configuration"),
        "{message}"
    );
    assert!(
        message.contains("path[0].replace: `$1x` refers to no capture group"),
        "{message}"
    );
    assert!(
        message.contains("request_headers.set: `content-length` is set by the gateway"),
        "{message}"
    );
}
