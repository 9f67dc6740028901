//! Shadow runs end to end: a candidate config that refuses more than the
//! live policy is counted exactly over a scripted run, while every client
//! gets what the live policy decides and the live plugin's own counters
//! are untouched; samples keep no secret; a full queue drops copies
//! without failing a request; a candidate whose module is missing is
//! refused with the config.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use portcullis::clock::ManualClock;
use portcullis_tests::echo::Echo;
use portcullis_tests::prom::Scrape;
use portcullis_tests::{Client, TestGateway, assert_config_refused, base_config, fixtures};
use serde_json::Value;

/// 2026-12-07T10:00:00.500Z: mid-second, so that a burst stays in one.
const NOW_MS: u64 = 1_796_637_600_500;

const PLUGINS: &[(&str, &str)] = &[
    ("key_auth", fixtures::KEY_AUTH),
    ("rate_limit", fixtures::RATE_LIMIT),
];

/// `/api`: key_auth, then rate_limit at 10 a second, with a candidate at 3
/// a second in shadow (`shadow` is the rest of its table).
fn routes(shadow: &str) -> String {
    format!(
        r#"
[admin]
address = "127.0.0.1:0"

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "echo"

[[routes.plugins]]
name = "key_auth"
[routes.plugins.config]
keys = [{{ consumer = "alice", key = "alice-key" }}]

[[routes.plugins]]
name = "rate_limit"
[routes.plugins.config]
limits = [{{ rate = 10, per = "second" }}]
[routes.plugins.shadow]
config = {{ limits = [{{ rate = 3, per = "second" }}] }}
{shadow}
"#
    )
}

async fn start(shadow: &str) -> (TestGateway, Echo) {
    let echo = Echo::start_local().await.expect("echo");
    let config = format!("{}{}", base_config(echo.addr), routes(shadow));
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let gw = TestGateway::start_with_clock(&config, PLUGINS, clock)
        .await
        .expect("gateway starts");
    (gw, echo)
}

async fn admin(gw: &TestGateway, path: &str) -> String {
    let addr = gw.handle.admin_addr().expect("admin");
    let reply = Client::new()
        .request(
            Method::GET,
            &format!("http://{addr}{path}"),
            &[],
            Bytes::new(),
        )
        .await
        .expect("admin answers");
    assert_eq!(reply.status, StatusCode::OK);
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// The only shadow of the gateway, once it has seen `n` copies (compared
/// or dropped): the candidate works off the request's path, so its count
/// catches up after the responses.
async fn shadow_after(gw: &TestGateway, n: u64) -> Value {
    for _ in 0..500 {
        let body: Value = serde_json::from_str(&admin(gw, "/shadows").await).expect("JSON");
        let shadow = body["shadows"][0].clone();
        let seen =
            shadow["compared"].as_u64().unwrap_or(0) + shadow["dropped"].as_u64().unwrap_or(0);
        if seen >= n {
            return shadow;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the shadow did not see {n} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stricter_candidate_is_counted_exactly_and_changes_nothing_live() {
    let (gw, _echo) = start("").await;
    let client = Client::new();
    // Refused before rate_limit: the live plugin never sees these, so
    // neither does the candidate.
    for _ in 0..2 {
        let reply = client.get(&gw.url("/api/items"), &[]).await.expect("reply");
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let mut remaining = Vec::new();
    for _ in 0..8 {
        let reply = client
            .get(
                &gw.url("/api/items?token=abc&page=2"),
                &[
                    ("x-api-key", "alice-key"),
                    ("x-trace-note", "scripted"),
                    ("cookie", "sid=s3cr3t"),
                ],
            )
            .await
            .expect("reply");
        assert_eq!(reply.status, StatusCode::OK, "the live policy decides");
        assert_eq!(reply.header("x-upstream"), Some("echo"));
        remaining.push(reply.header("ratelimit").unwrap_or_default().to_owned());
    }
    // The live limit spent 8 of its 10: the candidate's 3 a second is
    // counted in a store of its own.
    assert_eq!(
        remaining.last().map(String::as_str),
        Some("\"per-second\";r=2;t=1"),
        "{remaining:?}"
    );

    let shadow = shadow_after(&gw, 8).await;
    assert_eq!(shadow["route"], "api");
    assert_eq!(shadow["plugin"], "rate_limit");
    assert_eq!(shadow["module"], "rate_limit");
    assert_eq!(shadow["config_keys"], serde_json::json!(["limits"]));
    assert_eq!(shadow["compared"], 8);
    assert_eq!(shadow["agreed"], 3);
    assert_eq!(shadow["dropped"], 0);
    assert_eq!(
        shadow["disagreements"],
        serde_json::json!([{ "kind": "candidate_refuses", "live": "continue", "candidate": "429", "count": 5 }])
    );
    let samples = shadow["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 5);
    let sample = &samples[0];
    assert_eq!(
        sample["path"],
        "/api/items?token=[redacted]&page=[redacted]"
    );
    assert_eq!(sample["consumer"], "alice");
    assert_eq!(sample["time_ms"], NOW_MS);
    let headers = sample["headers"].as_array().expect("headers");
    assert!(
        headers.contains(&serde_json::json!(["x-trace-note", "scripted"])),
        "{headers:?}"
    );
    assert!(
        headers.contains(&serde_json::json!(["cookie", "[redacted]"])),
        "{headers:?}"
    );
    // key_auth took the key off before rate_limit (and so the candidate)
    // saw the request.
    assert!(!sample.to_string().contains("alice-key"), "{sample}");
    assert!(!sample.to_string().contains("s3cr3t"), "{sample}");

    let text = admin(&gw, "/metrics").await;
    let scrape = Scrape::parse(&text).expect("metrics parse");
    let pair = |live: &str, candidate: &str| {
        scrape.value(
            "portcullis_shadow_comparisons_total",
            &[
                ("route", "api"),
                ("plugin", "rate_limit"),
                ("live", live),
                ("candidate", candidate),
            ],
        )
    };
    assert_eq!(pair("continue", "continue"), 3.0);
    assert_eq!(pair("continue", "429"), 5.0);

    // The config as the admin API shows it names the candidate.
    let routes: Value = serde_json::from_str(&admin(&gw, "/routes").await).expect("JSON");
    assert_eq!(
        routes["routes"][0]["plugins"][1]["shadow"]["module"],
        "rate_limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_copies_and_fails_no_request() {
    let (gw, _echo) = start("queue = 1").await;
    let client = Client::new();
    let n = 40;
    let requests = (0..n).map(|_| {
        let client = client.clone();
        let url = gw.url("/api/items");
        async move {
            client
                .get(&url, &[("x-api-key", "alice-key")])
                .await
                .expect("reply")
                .status
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    // The live limit is 10 a second: 10 served, 30 refused, by the live
    // policy alone.
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        10
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        30
    );
    let shadow = shadow_after(&gw, n).await;
    let compared = shadow["compared"].as_u64().expect("compared");
    let dropped = shadow["dropped"].as_u64().expect("dropped");
    assert_eq!(compared + dropped, n, "{shadow}");
    let text = admin(&gw, "/metrics").await;
    let scrape = Scrape::parse(&text).expect("metrics parse");
    assert_eq!(
        scrape.value(
            "portcullis_shadow_dropped_total",
            &[("route", "api"), ("plugin", "rate_limit")]
        ),
        dropped as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_module_that_is_not_there_is_refused_with_the_config() {
    assert_config_refused(
        &routes("module = \"rate_limit_next\""),
        PLUGINS,
        &["route `api` plugin `rate_limit`: shadow.module: no module rate_limit_next.wasm"],
    )
    .await;
    assert_config_refused(
        &routes("queue = 0"),
        PLUGINS,
        &["routes[0].plugins[1].shadow.queue: must be between 1 and 65536, got 0"],
    )
    .await;
}
