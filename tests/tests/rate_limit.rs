//! The rate-limit plugin end to end: rates and quotas counted in the shared
//! store, 429 with `Retry-After`, the `RateLimit` fields, keys, overrides,
//! concurrency and store failures, with the gateway's clock under control.

use std::sync::Arc;

use http::StatusCode;
use portcullis::clock::ManualClock;
use portcullis_tests::echo::Echo;
use portcullis_tests::{
    Client, Reply, TestGateway, assert_config_refused, base_config, fixtures, logged, route,
    start_routes_with_clock,
};

/// 2025-03-14T23:59:58Z: two seconds before a day (and a minute, an hour)
/// begins.
const NEAR_MIDNIGHT: u64 = 1_741_996_798_000;

const PLUGINS: &[(&str, &str)] = &[
    ("rate_limit", fixtures::RATE_LIMIT),
    ("key_auth", fixtures::KEY_AUTH),
];

/// A gateway with one route `/api` through `plugins` (name and config, see
/// [`route`]), on a clock standing at `NEAR_MIDNIGHT`.
async fn gateway(plugins: &[(&str, &str)]) -> (TestGateway, Echo, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(NEAR_MIDNIGHT));
    let (gw, echo) = start_routes_with_clock(&route("api", "/api", plugins), PLUGINS, &clock).await;
    (gw, echo, clock)
}

/// A gateway with one route `/api` through `rate_limit` configured with
/// `config`.
async fn rate_limited(config: &str) -> (TestGateway, Echo, Arc<ManualClock>) {
    gateway(&[("rate_limit", config)]).await
}

async fn get(gw: &TestGateway, headers: &[(&str, &str)]) -> Reply {
    Client::new()
        .get(&gw.url("/api/items"), headers)
        .await
        .expect("response")
}

/// Sends `n` requests one after the other; returns their statuses.
async fn statuses(gw: &TestGateway, n: usize, headers: &[(&str, &str)]) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(get(gw, headers).await.status.as_u16());
    }
    out
}

fn assert_throttled(reply: &Reply, retry_after: &str, policy: &str) {
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
    assert_eq!(
        reply.header("x-upstream"),
        None,
        "the upstream must not answer"
    );
    assert_eq!(reply.header("retry-after"), Some(retry_after));
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let body: serde_json::Value = reply.json().expect("JSON body");
    assert_eq!(body["status"], 429);
    assert_eq!(body["violated-policies"], serde_json::json!([policy]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_answers_429_with_retry_after_and_refills_as_the_clock_moves() {
    let (gw, _echo, clock) = rate_limited(r#"limits = [{ rate = 5, per = "second" }]"#).await;
    // Keyed by consumer (the default), but there is no authentication: the
    // client IP stands in for the missing consumer (`missing_key`).

    for remaining in (0..5).rev() {
        let ok = get(&gw, &[]).await;
        assert_eq!(ok.status, StatusCode::OK);
        assert_eq!(ok.header("x-upstream"), Some("echo"));
        assert_eq!(
            ok.header("ratelimit-policy"),
            Some(r#""per-second";q=5;w=1"#)
        );
        assert_eq!(
            ok.header("ratelimit"),
            Some(format!(r#""per-second";r={remaining};t=1"#).as_str())
        );
    }
    let refused = get(&gw, &[]).await;
    assert_throttled(&refused, "1", "per-second");
    assert_eq!(refused.header("ratelimit"), Some(r#""per-second";r=0;t=1"#));
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some(r#""per-second";q=5;w=1"#)
    );

    // One interval (200 ms) later, exactly one more; a second later, five.
    clock.advance(199);
    assert_eq!(statuses(&gw, 1, &[]).await, [429]);
    clock.advance(1);
    assert_eq!(statuses(&gw, 2, &[]).await, [200, 429]);
    clock.advance(1000);
    assert_eq!(statuses(&gw, 6, &[]).await, [200, 200, 200, 200, 200, 429]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_limits_at_once_and_the_daily_quota_starts_again_at_midnight_utc() {
    let (gw, _echo, clock) = rate_limited(
        r#"by = ["ip"]
legacy_headers = true
limits = [
    { rate = 5, per = "second" },
    { quota = 8, per = "day" },
]"#,
    )
    .await;

    let first = get(&gw, &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.header("ratelimit-policy"),
        Some(r#""per-second";q=5;w=1, "daily";q=8;w=86400"#)
    );
    assert_eq!(
        first.header("ratelimit"),
        Some(r#""per-second";r=4;t=1, "daily";r=7;t=2"#)
    );
    // The legacy trio describes the policy closest to exhaustion.
    assert_eq!(first.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("4"));
    assert_eq!(first.header("x-ratelimit-reset"), Some("1"));

    assert_eq!(statuses(&gw, 4, &[]).await, [200; 4]);
    // The rate refuses the sixth; the refused requests do not use up the quota.
    for _ in 0..3 {
        assert_throttled(&get(&gw, &[]).await, "1", "per-second");
    }
    clock.advance(1000);
    let last = {
        assert_eq!(statuses(&gw, 2, &[]).await, [200, 200]);
        get(&gw, &[]).await
    };
    assert_eq!(last.status, StatusCode::OK, "the eighth of eight");
    assert_eq!(
        last.header("ratelimit"),
        Some(r#""per-second";r=2;t=1, "daily";r=0;t=1"#)
    );
    assert_eq!(last.header("x-ratelimit-limit"), Some("8"));
    assert_eq!(last.header("x-ratelimit-remaining"), Some("0"));

    // The quota refuses the ninth until midnight, one second away.
    let refused = get(&gw, &[]).await;
    assert_throttled(&refused, "1", "daily");
    // Every policy, the per-second rate as it stands without the refused
    // request (it counted it, then gave it back).
    assert_eq!(
        refused.header("ratelimit"),
        Some(r#""per-second";r=2;t=1, "daily";r=0;t=1"#)
    );
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    clock.advance(999);
    assert_eq!(statuses(&gw, 1, &[]).await, [429]);
    // 00:00:00.000 UTC: a new day, a new quota.
    clock.advance(1);
    let next_day = get(&gw, &[]).await;
    assert_eq!(next_day.status, StatusCode::OK);
    assert_eq!(
        next_day.header("ratelimit"),
        Some(r#""per-second";r=4;t=1, "daily";r=7;t=86400"#)
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_keyed_by_a_header_count_each_value_apart_and_skip_requests_without_it() {
    let (gw, _echo, _clock) = rate_limited(
        r#"by = ["header:x-tenant"]
missing_key = "skip"
limits = [{ name = "tenant", quota = 2, per = "hour" }]"#,
    )
    .await;

    let acme = [("x-tenant", "acme")];
    let globex = [("x-tenant", "globex")];
    assert_eq!(statuses(&gw, 3, &acme).await, [200, 200, 429]);
    let refused = get(&gw, &acme).await;
    assert_throttled(&refused, "2", "tenant");
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some(r#""tenant";q=2;w=3600"#)
    );
    let other = get(&gw, &globex).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.header("ratelimit"), Some(r#""tenant";r=1;t=2"#));

    // Without the header the limit does not apply: no counting, no fields.
    for _ in 0..4 {
        let free = get(&gw, &[]).await;
        assert_eq!(free.status, StatusCode::OK);
        assert_eq!(free.header("ratelimit"), None);
        assert_eq!(free.header("ratelimit-policy"), None);
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_gives_callers_with_a_role_other_limits() {
    let (gw, _echo, _clock) = gateway(&[
        (
            "key_auth",
            r#"keys = [
    { consumer = "alice", key = "alice-key", roles = ["reader", "gold"] },
    { consumer = "bob", key = "bob-key", roles = ["reader"] },
    { consumer = "carol", key = "carol-key", roles = ["gold"] },
]"#,
        ),
        (
            "rate_limit",
            r#"limits = [{ rate = 2, per = "minute" }]
overrides = [{ role = "gold", limits = [{ rate = 4, per = "minute" }] }]"#,
        ),
    ])
    .await;

    let bob = [("x-api-key", "bob-key")];
    let alice = [("x-api-key", "alice-key")];
    let carol = [("x-api-key", "carol-key")];
    assert_eq!(statuses(&gw, 2, &bob).await, [200, 200]);
    assert_throttled(&get(&gw, &bob).await, "30", "per-minute");

    let gold = get(&gw, &alice).await;
    assert_eq!(gold.status, StatusCode::OK);
    assert_eq!(
        gold.header("ratelimit-policy"),
        Some(r#""per-minute";q=4;w=60"#)
    );
    assert_eq!(statuses(&gw, 4, &alice).await, [200, 200, 200, 429]);
    // Counted per consumer: carol, also gold, has her own bucket.
    assert_eq!(statuses(&gw, 5, &carol).await, [200, 200, 200, 200, 429]);
    assert_throttled(&get(&gw, &carol).await, "15", "per-minute");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_concurrent_requests_never_pass_more_than_the_limit() {
    let (gw, _echo, _clock) = rate_limited(
        r#"limits = [
    { rate = 10, per = "hour", by = ["header:x-user"] },
    { quota = 10, per = "day", by = ["header:x-kind"] },
]"#,
    )
    .await;
    let url = gw.url("/api/items");

    // The clock stands still: nothing refills while the requests race. In
    // the first round every request has the same x-user (one bucket with a
    // burst of 10) and its own x-kind (the quota does not bind); in the
    // second, the other way round (only the daily quota of 10 binds).
    for round in ["rate", "quota"] {
        let client = Client::new();
        let mut tasks = Vec::new();
        for i in 0..40 {
            let client = client.clone();
            let url = url.clone();
            let (user, kind) = if round == "rate" {
                ("same".to_owned(), format!("{round}-{i}"))
            } else {
                (format!("{round}-{i}"), "same".to_owned())
            };
            tasks.push(tokio::spawn(async move {
                let reply = client
                    .get(
                        &url,
                        &[("x-user", user.as_str()), ("x-kind", kind.as_str())],
                    )
                    .await
                    .expect("response");
                reply.status.as_u16()
            }));
        }
        let mut passed = 0;
        let mut refused = 0;
        for task in tasks {
            match task.await.expect("task") {
                200 => passed += 1,
                429 => refused += 1,
                other => panic!("unexpected status {other}"),
            }
        }
        assert_eq!((passed, refused), (10, 30), "{round}");
    }
    gw.stop().await;
}

/// The items of a `RateLimit` field: `(name, r, t)`.
fn rate_limit_items(field: &str) -> Vec<(String, u64, u64)> {
    field
        .split(", ")
        .map(|item| {
            let mut parts = item.split(';');
            let name = parts.next().expect("a name").trim_matches('"').to_owned();
            let mut r = None;
            let mut t = None;
            for param in parts {
                match param.split_once('=') {
                    Some(("r", v)) => r = v.parse().ok(),
                    Some(("t", v)) => t = v.parse().ok(),
                    _ => panic!("unexpected parameter in {item}"),
                }
            }
            (name, r.expect("r"), t.expect("t"))
        })
        .collect()
}

/// `n` requests at once for one `x-user`; their replies.
async fn burst(gw: &TestGateway, n: usize) -> Vec<Reply> {
    let client = Client::new();
    let url = gw.url("/api/items");
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move { client.get(&url, &[("x-user", "u")]).await })
        })
        .collect();
    let mut replies = Vec::with_capacity(n);
    for task in tasks {
        replies.push(task.await.expect("task").expect("response"));
    }
    replies
}

/// Checks a burst's replies against the fields they carry; returns, per
/// policy, the `r` of every admitted request, and the number refused.
fn check_burst(replies: &[Reply]) -> (Vec<u64>, Vec<u64>, usize) {
    let (mut rate, mut quota, mut refused) = (Vec::new(), Vec::new(), 0);
    for reply in replies {
        let field = reply.header("ratelimit").expect("RateLimit on every reply");
        let items = rate_limit_items(field);
        let names: Vec<&str> = items.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["per-10s", "minutely"], "every policy, in order");
        match reply.status.as_u16() {
            200 => {
                rate.push(items[0].1);
                quota.push(items[1].1);
            }
            429 => {
                refused += 1;
                let body: serde_json::Value = reply.json().expect("JSON body");
                let violated: Vec<&str> = body["violated-policies"]
                    .as_array()
                    .expect("violated policies")
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect();
                assert!(!violated.is_empty(), "{body}");
                let retry_after: u64 = reply
                    .header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .expect("Retry-After");
                let waits: Vec<u64> = items
                    .iter()
                    .filter(|(name, _, _)| violated.contains(&name.as_str()))
                    .map(|(_, r, t)| {
                        assert_eq!(*r, 0, "a refusing policy has nothing left: {field}");
                        *t
                    })
                    .collect();
                assert_eq!(waits.len(), violated.len(), "{field} vs {violated:?}");
                assert_eq!(
                    waits.iter().max(),
                    Some(&retry_after),
                    "Retry-After is the latest reset of the refusing policies: {field}"
                );
            }
            other => panic!("unexpected status {other}"),
        }
    }
    (rate, quota, refused)
}

/// `r` values of admitted requests, largest first.
fn descending(mut values: Vec<u64>) -> Vec<u64> {
    values.sort_unstable_by(|a, b| b.cmp(a));
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_concurrency_the_fields_stay_consistent_with_the_decisions() {
    // 12:00:00 UTC: the minute's window has just begun.
    let clock = Arc::new(ManualClock::new(1_741_953_600_000));
    let (gw, _echo) = start_routes_with_clock(
        &route(
            "api",
            "/api",
            &[(
                "rate_limit",
                r#"by = ["header:x-user"]
limits = [{ rate = 10, per = "10s" }, { quota = 15, window_s = 60 }]"#,
            )],
        ),
        PLUGINS,
        &clock,
    )
    .await;

    // 40 at once, the clock standing still: the rate's burst of 10 passes.
    // Every admission counted once in each policy, so the `r` values are
    // each distinct and count down without a gap (in the order of
    // admission they never increase); the 30 refusals counted nothing.
    let (rate, quota, refused) = check_burst(&burst(&gw, 40).await);
    assert_eq!(refused, 30);
    assert_eq!(descending(rate), (0..10).rev().collect::<Vec<u64>>());
    assert_eq!(descending(quota), (5..15).rev().collect::<Vec<u64>>());

    // 10 s later the rate is full again, and the quota, in the same
    // window, has 5 left: it binds, and its `r` goes on counting down from
    // where it stood.
    clock.advance(10_000);
    let replies = burst(&gw, 40).await;
    let (_, quota, refused) = check_burst(&replies);
    assert_eq!(refused, 35);
    assert_eq!(descending(quota), (0..5).rev().collect::<Vec<u64>>());
    // Refused by the quota alone: wait for the next minute, 50 s away.
    let by_quota_only = replies.iter().find(|reply| {
        reply.status == StatusCode::TOO_MANY_REQUESTS
            && reply
                .header("ratelimit")
                .is_some_and(|f| rate_limit_items(f)[0].1 > 0)
    });
    let reply = by_quota_only.expect("a request the rate admitted and the quota refused");
    assert_eq!(reply.header("retry-after"), Some("50"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_fails_closed_or_open_as_configured() {
    let echo = Echo::start_local().await.expect("echo starts");
    // base_config with a store of one entry.
    let base = base_config(echo.addr).replace(
        "plugin_timeout_ms = 100",
        "plugin_timeout_ms = 100\nstate_max_entries = 1",
    );
    assert!(base.contains("state_max_entries = 1"));
    let closed = r#"by = ["header:x-user"]
on_store_error = "deny"
limits = [{ quota = 100, per = "day" }]"#;
    let open = r#"by = ["header:x-user"]
limits = [{ name = "open-daily", quota = 100, per = "day" }]"#;
    let config = [
        base,
        route("closed", "/closed", &[("rate_limit", closed)]),
        route("open", "/open", &[("rate_limit", open)]),
    ]
    .concat();
    let gw = TestGateway::start_with_clock(
        &config,
        &[("rate_limit", fixtures::RATE_LIMIT)],
        Arc::new(ManualClock::new(NEAR_MIDNIGHT)),
    )
    .await
    .expect("gateway starts");
    let client = Client::new();

    // The first user's counter takes the only entry.
    let first = client
        .get(&gw.url("/closed/x"), &[("x-user", "u1")])
        .await
        .expect("response");
    assert_eq!(first.status, StatusCode::OK);

    let closed = client
        .get(&gw.url("/closed/x"), &[("x-user", "u2")])
        .await
        .expect("response");
    assert_eq!(closed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(closed.header("x-upstream"), None);
    let body: serde_json::Value = closed.json().expect("JSON body");
    assert_eq!(body["status"], 503);

    let open = client
        .get(&gw.url("/open/x"), &[("x-user", "u3")])
        .await
        .expect("response");
    assert_eq!(open.status, StatusCode::OK);
    assert_eq!(open.header("x-upstream"), Some("echo"));
    assert_eq!(open.header("ratelimit"), None, "the limit was not applied");
    assert!(logged(&[
        "limit `open-daily`: the store failed: the store is full; the limit is not applied",
        r#"on_store_error = "allow""#,
        r#"route="open""#,
    ]));
    assert!(logged(&[
        "limit `daily`: the store failed: the store is full; the request is refused with 503",
        r#"route="closed""#,
    ]));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_is_refused_naming_the_key() {
    assert_config_refused(
        &route(
            "api",
            "/api",
            &[(
                "rate_limit",
                r#"limits = [{ rate = 5, per = "fortnight" }]"#,
            )],
        ),
        &[("rate_limit", fixtures::RATE_LIMIT)],
        &["limits[0].per: `fortnight` is not a rate period"],
    )
    .await;
}
