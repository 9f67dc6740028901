//! The alerts plugin end to end: real requests through the gateway, with the
//! gateway's clock under the test's control, and the alerts read from the
//! log sink (target `portcullis::alert`).
//!
//! Alerts are counted ("exactly one") with `logged_lines`, on each test's
//! own routes.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use portcullis::clock::ManualClock;
use portcullis_tests::{
    Client, TestGateway, assert_config_refused, fixtures, logged_lines, route,
    start_routes_with_clock,
};

/// 2023-11-14T22:13:20Z: a multiple of every window used here.
const START_MS: u64 = 1_700_000_000_000;

/// The alert lines raised on `route` that contain every one of `parts`.
fn alerts(route: &str, parts: &[&str]) -> Vec<String> {
    let route = format!(" route={route} ");
    let mut all = vec!["portcullis::alert", route.as_str()];
    all.extend_from_slice(parts);
    logged_lines(&all)
}

/// Waits (at most 10 s, as a safety net) until an alert on `route` with
/// `parts` has been logged; alerts reach the log sink asynchronously.
async fn wait_for_alert(route: &str, parts: &[&str]) -> String {
    for _ in 0..500 {
        if let Some(line) = alerts(route, parts).pop() {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no alert on route `{route}` with {parts:?}");
}

const PLUGINS: &[(&str, &str)] = &[
    ("alerts", fixtures::ALERTS),
    ("key_auth", fixtures::KEY_AUTH),
];

/// A gateway with `routes` (see [`route`]) on the clock `clock`.
async fn start(routes: &str, clock: &Arc<ManualClock>) -> TestGateway {
    start_routes_with_clock(routes, PLUGINS, clock).await.0
}

/// A route `name` on `prefix` with `[alerts, key_auth]`, the alerts plugin
/// configured with `alerts_config` (TOML lines of its config table).
fn key_auth_route(name: &str, prefix: &str, alerts_config: &str) -> String {
    route(
        name,
        prefix,
        &[
            ("alerts", alerts_config),
            (
                "key_auth",
                r#"keys = [{ consumer = "alice", key = "alice-key" }]"#,
            ),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_bad_keys_from_one_ip_raise_one_alert_and_one_resolution() {
    let clock = Arc::new(ManualClock::new(START_MS));
    let routes = key_auth_route(
        "auth",
        "/api",
        r#"sweep_interval_s = 1
[routes.plugins.config.auth_failures]
threshold = 20
window_s = 10
by = "client_ip"
cooldown_s = 300"#,
    );
    let gw = start(&routes, &clock).await;
    let client = Client::new();
    let bad = [("x-api-key", "guess")];

    // 20 bad keys in 2 s: key-auth's 401s go out unchanged.
    for _ in 0..20 {
        let reply = client
            .get(&gw.url("/api/orders"), &bad)
            .await
            .expect("reply");
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert!(reply.header("www-authenticate").is_some());
        clock.advance(100);
    }
    let firing = wait_for_alert("auth", &["kind=auth-failures", "state=firing"]).await;
    for part in [
        "severity=\"warning\"",
        "plugin=alerts",
        "client_ip=127.0.0.1",
        "count=20",
        "threshold=20",
        "window_s=10",
        "from client 127.0.0.1 on route `auth`",
    ] {
        assert!(firing.contains(part), "`{part}` missing in {firing}");
    }

    // 10 more in the same incident, and a good key: no new alert, and the
    // plugin changes nothing in what goes upstream.
    for _ in 0..10 {
        let reply = client
            .get(&gw.url("/api/orders"), &bad)
            .await
            .expect("reply");
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        clock.advance(100);
    }
    let ok = client
        .get(&gw.url("/api/orders?page=2"), &[("x-api-key", "alice-key")])
        .await
        .expect("reply");
    assert_eq!(ok.status, StatusCode::OK);
    let seen = ok.seen();
    assert_eq!(seen.path, "/api/orders");
    assert_eq!(seen.query.as_deref(), Some("page=2"));

    // Eleven seconds without failures: the next request on the route
    // resolves the incident.
    clock.advance(11_000);
    let ok = client
        .get(&gw.url("/api/orders"), &[("x-api-key", "alice-key")])
        .await
        .expect("reply");
    assert_eq!(ok.status, StatusCode::OK);
    let resolved = wait_for_alert("auth", &["kind=auth-failures", "state=resolved"]).await;
    for part in [
        "severity=\"info\"",
        "client_ip=127.0.0.1",
        "count=0",
        "cleared",
    ] {
        assert!(resolved.contains(part), "`{part}` missing in {resolved}");
    }
    // The resolution was raised after every earlier alert (one queue), so
    // the count of firing alerts is final.
    assert_eq!(
        alerts("auth", &["kind=auth-failures", "state=firing"]).len(),
        1
    );
    assert_eq!(
        alerts("auth", &["kind=auth-failures", "state=resolved"]).len(),
        1
    );
    assert_eq!(alerts("auth", &[]).len(), 2, "no other alert");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_below_the_threshold_in_any_window_raise_nothing() {
    let clock = Arc::new(ManualClock::new(START_MS));
    let mut routes = key_auth_route(
        "slow",
        "/api",
        r#"[routes.plugins.config.auth_failures]
threshold = 20
window_s = 10"#,
    );
    // A route whose every 429 alerts: its alert marks the end of the test.
    routes.push_str(&route(
        "marker",
        "/status",
        &[("alerts", "rate_limited = { threshold = 1 }")],
    ));
    let gw = start(&routes, &clock).await;
    let client = Client::new();

    // 19 bad keys in 9.5 s, then 10.5 s later 19 more: never 20 in one
    // window, though 38 in 30 s.
    for batch in 0..2 {
        for _ in 0..19 {
            let reply = client
                .get(&gw.url("/api/x"), &[("x-api-key", "guess")])
                .await
                .expect("reply");
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
            clock.advance(500);
        }
        if batch == 0 {
            clock.advance(10_500);
        }
    }
    let reply = client
        .get(&gw.url("/status/429"), &[])
        .await
        .expect("reply");
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    wait_for_alert("marker", &["kind=rate-limited", "state=firing"]).await;
    assert_eq!(alerts("slow", &[]), Vec::<String>::new());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_rate_over_the_ratio_alerts_once_and_resolves() {
    let clock = Arc::new(ManualClock::new(START_MS));
    let routes = route(
        "flaky",
        "/status",
        &[(
            "alerts",
            r#"sweep_interval_s = 1
[routes.plugins.config.error_rate]
ratio = 0.5
min_requests = 10
window_s = 10"#,
        )],
    );
    let gw = start(&routes, &clock).await;
    let client = Client::new();

    // 5 successes, then 5 errors: the 10th response makes 5 of 10.
    for status in [200, 200, 200, 200, 200, 500, 500, 500, 500, 500] {
        let reply = client
            .get(&gw.url(&format!("/status/{status}")), &[])
            .await
            .expect("reply");
        assert_eq!(reply.status.as_u16(), status);
        clock.advance(100);
    }
    let firing = wait_for_alert("flaky", &["kind=error-rate", "state=firing"]).await;
    for part in [
        "errors=5",
        "requests=10",
        "ratio=0.500",
        "threshold=0.5",
        "count=5",
    ] {
        assert!(firing.contains(part), "`{part}` missing in {firing}");
    }
    // More errors: the same incident.
    for _ in 0..5 {
        let reply = client
            .get(&gw.url("/status/503"), &[])
            .await
            .expect("reply");
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        clock.advance(100);
    }
    clock.advance(11_000);
    let reply = client
        .get(&gw.url("/status/200"), &[])
        .await
        .expect("reply");
    assert_eq!(reply.status, StatusCode::OK);
    wait_for_alert("flaky", &["kind=error-rate", "state=resolved"]).await;
    assert_eq!(
        alerts("flaky", &["kind=error-rate", "state=firing"]).len(),
        1
    );
    assert_eq!(alerts("flaky", &[]).len(), 2);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_429_per_route_and_a_traffic_spike_alert() {
    let clock = Arc::new(ManualClock::new(START_MS));
    let burst = route(
        "burst",
        "/status",
        &[(
            "alerts",
            r#"rate_limited = { threshold = 5, window_s = 10, by = "route", severity = "critical" }"#,
        )],
    );
    let spiky = route(
        "spiky",
        "/spiky",
        &[(
            "alerts",
            r#"[routes.plugins.config.traffic_spike]
window_s = 10
factor = 3
min_requests = 20
alpha = 0.5
warmup_windows = 2"#,
        )],
    );
    let routes = burst + &spiky;
    let gw = start(&routes, &clock).await;
    let client = Client::new();

    for _ in 0..8 {
        let reply = client
            .get(&gw.url("/status/429"), &[])
            .await
            .expect("reply");
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    }
    let burst = wait_for_alert("burst", &["kind=rate-limited", "state=firing"]).await;
    assert!(burst.contains("severity=\"critical\""), "{burst}");
    assert!(burst.contains("count=5"), "{burst}");
    assert!(!burst.contains("client_ip="), "by route: {burst}");

    // Three windows of 5 requests (the first, partial, is not counted),
    // then 25 in the fourth: the baseline is 5, so the 20th (min_requests,
    // above 3 x 5) is a spike.
    for window in 0..3 {
        for _ in 0..5 {
            let reply = client.get(&gw.url("/spiky"), &[]).await.expect("reply");
            assert_eq!(reply.status, StatusCode::OK);
        }
        clock.set(START_MS + (window + 1) * 10_000);
    }
    for _ in 0..25 {
        let reply = client.get(&gw.url("/spiky"), &[]).await.expect("reply");
        assert_eq!(reply.status, StatusCode::OK);
    }
    let spike = wait_for_alert("spiky", &["kind=traffic-spike", "state=firing"]).await;
    for part in ["count=20", "baseline=5", "threshold=20", "window_s=10"] {
        assert!(spike.contains(part), "`{part}` missing in {spike}");
    }
    // The 429 route's own alert is the only one that fired there (the
    // clock moved 30 s, so a tick may already have resolved it).
    assert_eq!(alerts("burst", &["state=firing"]).len(), 1);
    assert!(alerts("burst", &[]).len() <= 2);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_refused_naming_the_key() {
    assert_config_refused(
        &key_auth_route(
            "bad",
            "/api",
            r#"[routes.plugins.config.auth_failures]
threshold = 0
by = "client_ip""#,
        ),
        PLUGINS,
        &["auth_failures.threshold: must be between 1 and"],
    )
    .await;
}
