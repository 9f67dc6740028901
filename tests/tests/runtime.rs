//! The plugin runtime under contention: a plugin that computes for its
//! whole budget does not hold up other routes, instance slots are held for
//! one call only (not across the upstream), an abandoned call's instance is
//! thrown away, and capacity runs out with a 503 to retry, after idle
//! instances of other pools have made room.
//!
//! Assertions are about order and counts, never durations.

use std::time::{Duration, Instant};

use http::StatusCode;
use portcullis_tests::echo::{Echo, Seen};
use portcullis_tests::{Client, Reply, TestGateway, base_config, fixtures, logged, route};

/// A gateway with `routes` (see [`route`]) after the base config, whose
/// `max_instances` is `slots`; `misbehave` and `stamp` installed.
async fn gateway(slots: u32, routes: &str) -> (TestGateway, Echo) {
    let echo = Echo::start_local().await.expect("echo starts");
    let config = base_config(echo.addr)
        .replace("max_instances = 64", &format!("max_instances = {slots}"))
        + routes;
    let plugins = [
        ("misbehave", fixtures::MISBEHAVE),
        ("stamp", fixtures::STAMP_V1),
    ];
    let gw = TestGateway::start(&config, &plugins)
        .await
        .expect("gateway starts");
    (gw, echo)
}

/// A route whose `misbehave` computes for `busy_ms` on every request (but
/// `/…/report`, answered with the instance's call count), with a budget of
/// 5 s.
fn busy_route(name: &str, prefix: &str, busy_ms: u64, extra: &str) -> String {
    route(name, prefix, &[("misbehave", "")]).replace(
        "name = \"misbehave\"\n",
        &format!(
            "name = \"misbehave\"\ntimeout_ms = 5000\n{extra}\nconfig = {{ mode = \"busy\", busy_ms = {busy_ms}, only_path = \"{prefix}/work\", report_path = \"{prefix}/report\" }}\n"
        ),
    )
}

/// Waits until `ready` holds, checking every 2 ms for at most 20 s (a
/// setup step, not something the test measures).
async fn wait_until(what: &str, ready: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("never happened: {what}");
}

/// Sends `GET path` in a task; the reply and when it arrived.
fn send(gw: &TestGateway, path: &str) -> tokio::task::JoinHandle<(Reply, Instant)> {
    let url = gw.url(path);
    tokio::spawn(async move {
        let reply = Client::new().get(&url, &[]).await.expect("response");
        (reply, Instant::now())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_computing_for_its_budget_does_not_hold_up_another_route() {
    let routes = busy_route("busy", "/busy", 1500, "") + &route("hello", "/hello", &[]);
    let (gw, _echo) = gateway(16, &routes).await;
    // As many long calls as the runtime has workers, then a plugin-free
    // request. A call that held its worker would keep `/hello` waiting
    // until one of them ended.
    let busy: Vec<_> = (0..2).map(|_| send(&gw, "/busy/work")).collect();
    let pool = gw.handle.registry().current().routes[0].chain[0]
        .pool
        .clone();
    wait_until("both long calls run", || pool.in_use() == 2).await;
    let (hello, hello_at) = send(&gw, "/hello").await.expect("task");
    assert_eq!(hello.status, StatusCode::OK);
    for task in busy {
        let (reply, at) = task.await.expect("task");
        assert_eq!(reply.status, StatusCode::OK, "the long calls complete");
        assert!(
            hello_at < at,
            "`/hello` was answered before the long calls ended"
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_holds_no_instance_slot() {
    // Two slots in all, and four requests that wait 400 ms on the upstream
    // each, through a plugin with request and response hooks.
    let (gw, _echo) = gateway(2, &route("held", "/delay", &[("stamp", "")])).await;
    let tasks: Vec<_> = (0..4).map(|_| send(&gw, "/delay/400")).collect();
    for task in tasks {
        let (reply, _) = task.await.expect("task");
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.header("x-stamp"), Some("v1"));
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_slot_is_computing_the_request_gets_503_and_retry_after() {
    // Two slots, both taken by long calls: a third call finds none free
    // and no idle instance to evict.
    let (gw, _echo) = gateway(2, &busy_route("busy", "/busy", 1500, "")).await;
    let busy: Vec<_> = (0..2).map(|_| send(&gw, "/busy/work")).collect();
    let pool = gw.handle.registry().current().routes[0].chain[0]
        .pool
        .clone();
    wait_until("both long calls run", || pool.in_use() == 2).await;
    let (refused, _) = send(&gw, "/busy/other").await.expect("task");
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(logged(&["plugin failed", "busy", "no free instance slot"]));
    for task in busy {
        assert_eq!(task.await.expect("task").0.status, StatusCode::OK);
    }
    // Once the calls end, their slots serve again.
    let (after, _) = send(&gw, "/busy/other").await.expect("task");
    assert_eq!(after.status, StatusCode::OK);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_of_other_pools_make_room_before_a_503() {
    // Two slots, each held by the idle instance one route made at start.
    let routes =
        busy_route("busy", "/busy", 1000, "") + &route("other", "/other", &[("stamp", "")]);
    let (gw, _echo) = gateway(2, &routes).await;
    let generation = gw.handle.registry().current();
    assert_eq!(generation.routes[1].chain[0].pool.idle_count(), 1);
    // Two concurrent calls on `busy`: the second needs a slot, which the
    // idle `stamp` instance gives up.
    let busy: Vec<_> = (0..2).map(|_| send(&gw, "/busy/work")).collect();
    for task in busy {
        assert_eq!(task.await.expect("task").0.status, StatusCode::OK);
    }
    assert_eq!(
        generation.routes[1].chain[0].pool.idle_count(),
        0,
        "evicted"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_concurrent_calls_a_call_waits_its_turn_then_gets_503() {
    let routes = busy_route(
        "busy",
        "/busy",
        1000,
        "max_concurrent_calls = 1\nqueue_timeout_ms = 0",
    );
    let (gw, _echo) = gateway(16, &routes).await;
    let first = send(&gw, "/busy/work");
    let pool = gw.handle.registry().current().routes[0].chain[0]
        .pool
        .clone();
    wait_until("the long call runs", || pool.in_use() == 1).await;
    let (refused, _) = send(&gw, "/busy/other").await.expect("task");
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(logged(&[
        "plugin failed",
        "busy",
        "no turn came free in time"
    ]));
    assert_eq!(first.await.expect("task").0.status, StatusCode::OK);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_abandoned_by_its_client_discards_its_instance() {
    let (gw, _echo) = gateway(16, &busy_route("busy", "/busy", 2000, "")).await;
    let pool = gw.handle.registry().current().routes[0].chain[0]
        .pool
        .clone();
    assert_eq!(pool.idle_count(), 1, "the instance `init` made");
    // The client gives up while the call computes.
    let url = gw.url("/busy/work");
    let abandoned = tokio::spawn(async move { Client::new().get(&url, &[]).await });
    wait_until("the call runs", || pool.in_use() == 1).await;
    abandoned.abort();
    let _ = abandoned.await;
    // The gateway sees the connection close and drops the request, and the
    // call with it: the instance is not given back.
    wait_until("the call is dropped", || pool.in_use() == 0).await;
    assert_eq!(pool.idle_count(), 0, "the half-run instance is not kept");
    let (report, _) = send(&gw, "/busy/report").await.expect("task");
    assert_eq!(report.status, StatusCode::OK);
    assert_eq!(
        report.header("x-instance-calls"),
        Some("1"),
        "a fresh instance serves the next request"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_built_against_contract_0_2_0_loads_and_serves() {
    let echo = Echo::start_local().await.expect("echo starts");
    let config = base_config(echo.addr) + &route("old", "/old", &[("contract_0_2_0", "")]);
    let gw = TestGateway::start(&config, &[("contract_0_2_0", fixtures::CONTRACT_0_2_0)])
        .await
        .expect("a 0.2.0 module loads into a 0.2.3 gateway");
    for n in 1..=2 {
        let (reply, _) = send(&gw, "/old/x").await.expect("task");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-contract-response"), Some("0.2.0"));
        // The request headers it set reached the upstream, which echoes
        // them; its store counter counts.
        let seen: Seen = reply.json().expect("echo body");
        assert_eq!(seen.header("x-contract"), Some("0.2.0"), "{seen:?}");
        let count = n.to_string();
        assert_eq!(seen.header("x-contract-count"), Some(count.as_str()));
    }
    assert!(logged(&["contract 0.2.0 plugin saw /old/x"]));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_plugin_filling_its_namespace_does_not_refuse_anothers_writes() {
    let echo = Echo::start_local().await.expect("echo starts");
    // Two entries per plugin namespace.
    let base = base_config(echo.addr).replace(
        "plugin_timeout_ms = 100",
        "plugin_timeout_ms = 100\nstate_max_entries = 2",
    );
    assert!(base.contains("state_max_entries = 2"));
    let limited = r#"by = ["header:x-user"]
limits = [{ quota = 100, per = "day" }]"#;
    let config = base
        + &route("limited", "/limited", &[("rate_limit", limited)])
        + &route("old", "/old", &[("contract_0_2_0", "")]);
    let plugins = [
        ("rate_limit", fixtures::RATE_LIMIT),
        ("contract_0_2_0", fixtures::CONTRACT_0_2_0),
    ];
    let gw = TestGateway::start(&config, &plugins)
        .await
        .expect("gateway starts");
    let client = Client::new();
    // rate_limit fills its two entries, then fails open (its default).
    let mut counted = 0;
    for user in ["a", "b", "c", "d", "e"] {
        let reply = client
            .get(&gw.url("/limited/x"), &[("x-user", user)])
            .await
            .expect("response");
        assert_eq!(reply.status, StatusCode::OK);
        if reply.header("ratelimit").is_some() {
            counted += 1;
        }
    }
    assert_eq!(counted, 2, "its namespace holds two counters");
    // Another plugin's namespace still takes writes.
    for n in 1..=2 {
        let (reply, _) = send(&gw, "/old/x").await.expect("task");
        let seen: Seen = reply.json().expect("echo body");
        let count = n.to_string();
        assert_eq!(seen.header("x-contract-count"), Some(count.as_str()));
    }
    let usage = gw.handle.store().usage();
    let entries = |name: &str| {
        usage
            .iter()
            .find(|u| u.namespace == name)
            .map(|u| u.entries)
    };
    assert_eq!(entries("rate_limit"), Some(2));
    assert_eq!(entries("contract_0_2_0"), Some(1));
    gw.stop().await;
}
