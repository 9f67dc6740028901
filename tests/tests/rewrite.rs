//! The `rewrite` plugin end to end: the real `rewrite.wasm` in a gateway in
//! front of the echo upstream, which reports what reached it.

use http::{Method, StatusCode};
use portcullis_tests::{
    Client, TestGateway, assert_config_refused, fixtures, route, sha256_hex, start_routes,
};

const PLUGINS: &[(&str, &str)] = &[("rewrite", fixtures::REWRITE)];

/// A route `name` on `prefix` through `rewrite` configured with `config`.
fn rewrite_route(name: &str, prefix: &str, config: &str) -> String {
    route(name, prefix, &[("rewrite", config)])
}

fn routes() -> String {
    [
        rewrite_route(
            "v1",
            "/v1",
            r#"path = [
    { regex = '^/v1/users/(\d+)$', replace = "/users/$1" },
    { strip_prefix = "/v1" },
]
host = "users.internal"

[routes.plugins.config.query]
map = { sort = { asc = "ascending", desc = "descending" } }
rename = { sort = "order" }
remove = ["debug"]
set = { version = "2" }

[routes.plugins.config.request_headers]
rename = { x-old = "x-new" }
remove = ["x-debug"]
set = { x-env = "prod" }
add = { via = "portcullis" }

[routes.plugins.config.response_headers]
rename = { x-upstream = "x-served-by" }
set = { cache-control = "no-store" }"#,
        ),
        rewrite_route(
            "legacy",
            "/legacy",
            r#"method = "POST"
path = [{ prefix = "/legacy", replace = "/api/v2" }]"#,
        ),
        rewrite_route(
            "body",
            "/body",
            r#"[routes.plugins.config.body]
rename = { "user.email" = "work_email" }
remove = ["user.password", "items[*].secret"]
nullify = ["user.ssn"]
set = { "meta.via" = "gateway" }"#,
        ),
        rewrite_route(
            "strict",
            "/strict",
            r#"body = { remove = ["password"], on_not_json = "refuse" }"#,
        ),
    ]
    .concat()
}

async fn gateway() -> TestGateway {
    start_routes(&routes(), PLUGINS).await.0
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
    reply.assert_ok();
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
    other.assert_ok();
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
    reply.assert_ok();
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
    reply.assert_ok();
    let seen = reply.seen();
    // Keys come out sorted and compact (the document is re-serialized).
    let expected = r#"{"items":[{"sku":"A"}],"meta":{"via":"gateway"},"user":{"ssn":null,"work_email":"a@example.com"}}"#;
    assert_eq!(seen.body_len, expected.len());
    assert_eq!(seen.body_sha256, sha256_hex(expected.as_bytes()));
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
        reply.assert_ok();
        assert_eq!(
            reply.seen().body_sha256,
            sha256_hex(body.as_bytes()),
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
    fine.assert_ok();
    let expected = r#"{"name":"n"}"#;
    assert_eq!(fine.seen().body_sha256, sha256_hex(expected.as_bytes()));

    // A request without a body is not refused.
    client
        .get(&gw.url("/strict"), &[])
        .await
        .expect("response")
        .assert_ok();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_refused_at_load_naming_the_key() {
    assert_config_refused(
        &rewrite_route(
            "api",
            "/api",
            r#"path = [{ regex = '^/u/(\d+)$', replace = "/users/$1x" }]
request_headers = { set = { content-length = "1" } }"#,
        ),
        PLUGINS,
        &[
            "route `api` plugin `rewrite`: rejected its configuration",
            "path[0].replace: `$1x` refers to no capture group",
            "request_headers.set: `content-length` is set by the gateway",
        ],
    )
    .await;
}
