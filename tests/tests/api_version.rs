//! The api-version plugin end to end over real sockets: deprecation and
//! sunset headers, retired versions, unknown and missing versions, the three
//! version sources, and retirement at sunset on the gateway's clock.

use std::sync::Arc;

use http::StatusCode;
use portcullis::clock::ManualClock;
use portcullis_tests::echo::Echo;
use portcullis_tests::{
    Client, Reply, TestGateway, assert_config_refused, fixtures, route, start_routes_with_clock,
};

/// 2025-06-01T00:00:00Z.
const JUNE_2025_MS: u64 = 1_748_736_000_000;
/// 2026-01-01T00:00:00Z: v1's sunset.
const SUNSET_MS: u64 = 1_767_225_600_000;

const DEPRECATION: &str = "@1735689600"; // 2025-01-01T00:00:00Z
const SUNSET: &str = "Thu, 01 Jan 2026 00:00:00 GMT";
const SUCCESSOR_LINK: &str = r#"<https://api.example.com/v2>; rel="successor-version""#;
const DOCS_LINK: &str = r#"<https://docs.example.com/v1>; rel="deprecation""#;

const PLUGINS: &[(&str, &str)] = &[("api_version", fixtures::API_VERSION)];

/// A route `name` on `prefix` through `api_version` configured with `config`.
fn versioned_route(name: &str, prefix: &str, config: &str) -> String {
    route(name, prefix, &[("api_version", config)])
}

fn routes() -> String {
    [
        versioned_route(
            "api",
            "/api",
            r#"source = "path"
path_segment = 1
unknown = "reject"
missing = "reject"
enforce_sunset = true

[[routes.plugins.config.versions]]
version = "v0"
retired = true
successor = "https://api.example.com/v2"

[[routes.plugins.config.versions]]
version = "v1"
deprecated = 2025-01-01
sunset = 2026-01-01T00:00:00Z
successor = "https://api.example.com/v2"
deprecation_link = "https://docs.example.com/v1"

[[routes.plugins.config.versions]]
version = "v2""#,
        ),
        versioned_route(
            "by-header",
            "/status",
            r#"source = "header"
header = "x-api-version"
default_version = "2"
versions = [
    { version = "1", deprecated = "2025-01-01", sunset = "2026-01-01", successor = "https://api.example.com/v2" },
]"#,
        ),
        versioned_route(
            "by-media-type",
            "/media",
            r#"source = "media_type"
media_type = "application/vnd.acme+json"
versions = [{ version = "1", deprecated = "2025-01-01T00:00:00Z" }]"#,
        ),
    ]
    .concat()
}

async fn gateway() -> (TestGateway, Echo, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(JUNE_2025_MS));
    let (gw, echo) = start_routes_with_clock(&routes(), PLUGINS, &clock).await;
    (gw, echo, clock)
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    Client::new()
        .get(&gw.url(path), headers)
        .await
        .expect("response")
}

fn links(reply: &Reply) -> Vec<&str> {
    reply
        .headers
        .get_all("link")
        .iter()
        .map(|v| v.to_str().expect("ASCII link"))
        .collect()
}

fn assert_no_notices(reply: &Reply) {
    assert_eq!(reply.header("deprecation"), None);
    assert_eq!(reply.header("sunset"), None);
    assert!(links(reply).is_empty(), "{:?}", links(reply));
}

fn body(reply: &Reply) -> serde_json::Value {
    reply.json().expect("JSON body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deprecated_version_is_served_with_deprecation_sunset_and_links() {
    let (gw, _echo, _clock) = gateway().await;

    let reply = get(&gw, "/api/v1/users", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.seen().path, "/api/v1/users", "the upstream serves it");
    assert_eq!(reply.header("deprecation"), Some(DEPRECATION));
    assert_eq!(reply.header("sunset"), Some(SUNSET));
    assert_eq!(links(&reply), [SUCCESSOR_LINK, DOCS_LINK]);

    let current = get(&gw, "/api/v2/users", &[]).await;
    assert_eq!(current.status, StatusCode::OK);
    assert_eq!(current.header("x-upstream"), Some("echo"));
    assert_no_notices(&current);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_version_is_gone_and_points_to_its_successor() {
    let (gw, _echo, _clock) = gateway().await;

    let reply = get(&gw, "/api/v0/users", &[]).await;
    assert_eq!(reply.status, StatusCode::GONE);
    assert_eq!(
        reply.header("x-upstream"),
        None,
        "the upstream must not answer"
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        body(&reply),
        serde_json::json!({
            "message": "API version `v0` has been retired",
            "version": "v0",
            "successor": "https://api.example.com/v2",
        })
    );
    assert_eq!(links(&reply), [SUCCESSOR_LINK]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_missing_versions_are_refused_when_configured() {
    let (gw, _echo, _clock) = gateway().await;

    let unknown = get(&gw, "/api/v9/users", &[]).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.header("x-upstream"), None);
    assert_eq!(
        body(&unknown),
        serde_json::json!({
            "message": "unsupported API version",
            "version": "v9",
            "supported": ["v1", "v2"],
        })
    );

    let missing = get(&gw, "/api", &[]).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body(&missing),
        serde_json::json!({
            "message": "an API version is required",
            "supported": ["v1", "v2"],
        })
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_retires_itself_at_its_sunset_on_the_gateway_clock() {
    let (gw, _echo, clock) = gateway().await;

    clock.set(SUNSET_MS - 1_000);
    let before = get(&gw, "/api/v1/users", &[]).await;
    assert_eq!(before.status, StatusCode::OK);
    assert_eq!(before.header("sunset"), Some(SUNSET));

    clock.advance(1_000);
    let after = get(&gw, "/api/v1/users", &[]).await;
    assert_eq!(after.status, StatusCode::GONE);
    assert_eq!(after.header("x-upstream"), None);
    assert_eq!(after.header("deprecation"), Some(DEPRECATION));
    assert_eq!(after.header("sunset"), Some(SUNSET));
    assert_eq!(links(&after), [SUCCESSOR_LINK, DOCS_LINK]);
    assert_eq!(
        body(&after),
        serde_json::json!({
            "message": "API version `v1` has been retired",
            "version": "v1",
            "successor": "https://api.example.com/v2",
            "deprecation_link": "https://docs.example.com/v1",
        })
    );

    let unknown = get(&gw, "/api/v9", &[]).await;
    assert_eq!(
        body(&unknown)["supported"],
        serde_json::json!(["v2"]),
        "a retired version is no longer supported"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_can_come_from_a_header_with_a_default() {
    let (gw, _echo, _clock) = gateway().await;

    // Error responses of the upstream are marked too.
    let old = get(&gw, "/status/500", &[("x-api-version", " 1 ")]).await;
    assert_eq!(old.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(old.header("x-upstream"), Some("echo"));
    assert_eq!(old.header("deprecation"), Some(DEPRECATION));
    assert_eq!(old.header("sunset"), Some(SUNSET));
    assert_eq!(links(&old), [SUCCESSOR_LINK]);

    // No header: the default version 2, which has no policy.
    let default = get(&gw, "/status/200", &[]).await;
    assert_eq!(default.status, StatusCode::OK);
    assert_no_notices(&default);
    // An unknown version passes by default.
    let unknown = get(&gw, "/status/200", &[("x-api-version", "7")]).await;
    assert_eq!(unknown.status, StatusCode::OK);
    assert_no_notices(&unknown);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_can_come_from_the_accepted_media_type() {
    let (gw, _echo, _clock) = gateway().await;

    let old = get(
        &gw,
        "/media/things",
        &[(
            "accept",
            "text/plain, application/vnd.acme+json; version=1; q=0.9",
        )],
    )
    .await;
    assert_eq!(old.status, StatusCode::OK);
    assert_eq!(old.header("deprecation"), Some(DEPRECATION));
    assert_eq!(old.header("sunset"), None, "v1 of this route has no sunset");

    let other_type = get(
        &gw,
        "/media/things",
        &[("accept", "application/json; version=1")],
    )
    .await;
    assert_eq!(other_type.status, StatusCode::OK);
    assert_no_notices(&other_type);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_version_policy_refuses_the_configuration_naming_the_key() {
    assert_config_refused(
        &versioned_route(
            "api",
            "/api",
            r#"source = "path"
versions = [
    { version = "v1" },
    { version = "v2", deprecated = 2026-01-01, sunset = 2025-01-01 },
]"#,
        ),
        PLUGINS,
        &[
            "route `api` plugin `api_version`: rejected its configuration",
            "versions[1].sunset: must not be before `deprecated`",
        ],
    )
    .await;
}
