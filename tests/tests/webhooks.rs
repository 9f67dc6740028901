//! Alert webhooks end to end: the alerts plugin watching a key-auth route,
//! the gateway's clock under the test's control, and a local receiver that
//! records what the gateway POSTs.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use portcullis::clock::ManualClock;
use portcullis::registry::Outcome;
use portcullis_tests::webhook::WebhookReceiver;
use portcullis_tests::{Client, TestGateway, fixtures, route, start_routes_with_clock};

/// 2026-12-01T10:00:00Z.
const START_MS: u64 = 1_796_119_200_000;
/// Long enough for any alert in flight to arrive (a safety net, not a timing
/// assertion: the tests wait for what they expect and stop as soon as it
/// is there).
const PATIENCE: Duration = Duration::from_secs(10);

/// A gateway with one route `hooked` = [alerts, key_auth] and `[alerts]` set
/// to `alerts_section`. (Not `api`: the examples test counts the alerts
/// logged on its own route `api`, in the same process.)
async fn gateway(clock: &Arc<ManualClock>, alerts_section: &str) -> TestGateway {
    let api = route(
        "hooked",
        "/api",
        &[
            (
                "alerts",
                r#"[routes.plugins.config.auth_failures]
threshold = 20
window_s = 10
by = "client_ip"
cooldown_s = 300"#,
            ),
            (
                "key_auth",
                r#"keys = [{ consumer = "alice", key = "alice-key" }]"#,
            ),
        ],
    );
    let plugins = [
        ("alerts", fixtures::ALERTS),
        ("key_auth", fixtures::KEY_AUTH),
    ];
    start_routes_with_clock(&format!("{api}\n{alerts_section}\n"), &plugins, clock)
        .await
        .0
}

fn webhook_section(url: &str, extra: &str) -> String {
    format!(
        r#"[alerts]
log = true
[[alerts.webhooks]]
url = "{url}"
batch_wait_ms = 20
{extra}
"#
    )
}

/// Waits (at most [`PATIENCE`]) until `done` holds; returns whether it does.
/// The gateway counts a delivery when the receiver's answer arrives, just
/// after the receiver has recorded the alert.
async fn eventually(done: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

/// `n` requests with a bad key, 100 ms apart on the gateway's clock.
async fn bad_keys(gw: &TestGateway, clock: &ManualClock, n: usize) {
    let client = Client::new();
    for _ in 0..n {
        let reply = client
            .get(&gw.url("/api/orders"), &[("x-api-key", "guess")])
            .await
            .expect("reply");
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        clock.advance(100);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_bad_keys_from_one_ip_post_one_alert_then_one_resolution() {
    let receiver = WebhookReceiver::start(0).await.expect("receiver starts");
    let clock = Arc::new(ManualClock::new(START_MS));
    let gw = gateway(
        &clock,
        &webhook_section(
            &receiver.url(),
            "headers = { authorization = \"Bearer hook-token\" }",
        ),
    )
    .await;

    // The incident: 20 bad keys from one IP in 2 s, then 10 more.
    bad_keys(&gw, &clock, 30).await;
    let alerts = receiver.wait_for(1, PATIENCE).await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let alert = &alerts[0];
    assert_eq!(alert["kind"], "auth-failures");
    assert_eq!(alert["severity"], "warning");
    assert_eq!(alert["route"], "hooked");
    assert_eq!(alert["plugin"], "alerts");
    assert_eq!(alert["client_ip"], "127.0.0.1");
    assert_eq!(alert["labels"]["state"], "firing");
    // The request that fired it, as its X-Request-Id (and the access log) name it.
    assert!(
        alert["labels"]["request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36),
        "{alert}"
    );
    assert_eq!(alert["counts"]["count"], 20);
    assert_eq!(alert["counts"]["threshold"], 20);
    assert_eq!(alert["counts"]["window_s"], 10);
    // The 20th failure came 1.9 s after the first, on the gateway's clock.
    assert_eq!(alert["time"], "2026-12-01T10:00:01.900Z");
    assert!(
        alert["message"]
            .as_str()
            .is_some_and(|m| m.contains("127.0.0.1")),
        "{alert}"
    );

    // Quiet for longer than the window: the next request resolves it.
    clock.advance(11_000);
    let ok = Client::new()
        .get(&gw.url("/api/orders"), &[("x-api-key", "alice-key")])
        .await
        .expect("reply");
    assert_eq!(ok.status, StatusCode::OK);
    let alerts = receiver.wait_for(2, PATIENCE).await;
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    assert_eq!(alerts[1]["kind"], "auth-failures");
    assert_eq!(alerts[1]["severity"], "info");
    assert_eq!(alerts[1]["labels"]["state"], "resolved");
    assert_eq!(alerts[1]["client_ip"], "127.0.0.1");

    assert!(eventually(|| gw.handle.alert_counts().delivered == 2).await);
    let counts = gw.handle.alert_counts();
    assert_eq!(counts.failed, 0);
    assert_eq!(counts.dropped_queue_full, 0);
    // Per sink, as /metrics shows them (`portcullis_alerts_total{sink,result}`).
    let hook = gw
        .handle
        .alert_sink_counts()
        .into_iter()
        .find(|s| s.sink == "webhooks[0] 127.0.0.1")
        .expect("the webhook's counters");
    assert_eq!((hook.delivered, hook.failed, hook.dropped), (2, 0, 0));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_resolves_without_traffic_on_the_next_tick() {
    let receiver = WebhookReceiver::start(0).await.expect("receiver starts");
    let clock = Arc::new(ManualClock::new(START_MS));
    let gw = gateway(&clock, &webhook_section(&receiver.url(), "")).await;

    bad_keys(&gw, &clock, 20).await;
    let alerts = receiver.wait_for(1, PATIENCE).await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["labels"]["state"], "firing");

    // The attacker stops and nobody else calls: the gateway's ticks (every
    // 20 ms in tests) find the incident cleared once the clock has moved
    // past the window.
    clock.advance(11_000);
    let alerts = receiver.wait_for(2, PATIENCE).await;
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    assert_eq!(alerts[1]["kind"], "auth-failures");
    assert_eq!(alerts[1]["labels"]["state"], "resolved");
    assert_eq!(alerts[1]["client_ip"], "127.0.0.1");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_is_retried_until_it_accepts() {
    // 503 twice, then 204.
    let receiver = WebhookReceiver::start(2).await.expect("receiver starts");
    let clock = Arc::new(ManualClock::new(START_MS));
    let gw = gateway(
        &clock,
        &webhook_section(&receiver.url(), "retry_backoff_ms = 10\nmax_retries = 3"),
    )
    .await;

    bad_keys(&gw, &clock, 20).await;
    let alerts = receiver.wait_for(1, PATIENCE).await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["kind"], "auth-failures");
    assert_eq!(receiver.requests(), 3, "two refusals, then the delivery");
    assert!(eventually(|| gw.handle.alert_counts().delivered == 1).await);
    assert_eq!(gw.handle.alert_counts().failed, 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_webhook_costs_requests_nothing_and_its_alerts_are_counted() {
    // A webhook that closes every connection without answering. The port
    // stays bound by this test (a port merely freed could be taken by
    // another test's receiver running in parallel and answer 200).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        // At most one connection per attempt (max_retries = 2), bounded.
        for stream in listener.incoming().take(16) {
            drop(stream);
        }
    });
    let clock = Arc::new(ManualClock::new(START_MS));
    let gw = gateway(
        &clock,
        &webhook_section(
            &format!("http://{dead}/hook"),
            "retry_backoff_ms = 10\nmax_retries = 2\ntimeout_ms = 500",
        ),
    )
    .await;

    // Every request is answered as usual while the alert fails to deliver.
    bad_keys(&gw, &clock, 25).await;
    let ok = Client::new()
        .get(&gw.url("/api/orders"), &[("x-api-key", "alice-key")])
        .await
        .expect("reply");
    assert_eq!(ok.status, StatusCode::OK);

    eventually(|| gw.handle.alert_counts().failed > 0).await;
    let counts = gw.handle.alert_counts();
    assert_eq!(counts.failed, 1, "{counts:?}");
    assert_eq!(counts.delivered, 0, "{counts:?}");
    let sinks = gw.handle.alert_sink_counts();
    let hook = sinks
        .iter()
        .find(|s| s.sink == "webhooks[0] 127.0.0.1")
        .expect("the webhook's counters");
    assert_eq!((hook.delivered, hook.failed), (0, 1), "{sinks:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_added_by_a_config_reload_receives_the_next_alerts() {
    let receiver = WebhookReceiver::start(0).await.expect("receiver starts");
    let clock = Arc::new(ManualClock::new(START_MS));
    let gw = gateway(&clock, "").await;

    let config_path = gw.dir().join("portcullis.toml");
    let config = std::fs::read_to_string(&config_path).expect("config");
    let updated = format!("{config}\n{}", webhook_section(&receiver.url(), ""));
    std::fs::write(&config_path, updated).expect("write config");
    let event = gw.handle.reload_config().await.expect("reload runs");
    assert!(
        matches!(event.outcome, Outcome::Applied { .. }),
        "{event:?}"
    );

    bad_keys(&gw, &clock, 20).await;
    let alerts = receiver.wait_for(1, PATIENCE).await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["kind"], "auth-failures");
    gw.stop().await;
}
