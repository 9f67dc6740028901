//! Upstream groups of several servers: balancing by weight and by key,
//! active health checks that take a server out and bring it back, passive
//! ejection, and a group with no healthy server. The servers are real
//! [`Backend`]s on 127.0.0.1 whose behaviour each test switches.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http::StatusCode;
use portcullis_tests::backend::{Backend, Mode};
use portcullis_tests::{Client, TestGateway, assert_config_refused, base_config, logged};

/// A gateway whose `/` route goes to the group `pool` of `backends`, with
/// `group` (TOML keys of `[upstreams.pool]`) and `tables` (sub-tables such
/// as `[upstreams.pool.health]`).
async fn gateway(backends: &[&Backend], weights: &[u32], group: &str, tables: &str) -> TestGateway {
    portcullis_tests::init_logs();
    let servers: Vec<String> = backends
        .iter()
        .zip(weights.iter().chain(std::iter::repeat(&1)))
        .map(|(b, w)| format!("{{ address = \"{}\", weight = {w} }}", b.addr))
        .collect();
    let config = format!(
        "{base}\n[upstreams.pool]\nservers = [{servers}]\ntimeout_ms = 2000\n{group}\n{tables}\n\
         [[routes]]\nname = \"pool\"\npath_prefix = \"/\"\nupstream = \"pool\"\n",
        base = base_config(backends[0].addr),
        servers = servers.join(", "),
    );
    TestGateway::start(&config, &[])
        .await
        .expect("gateway starts")
}

async fn backends(names: &[&str]) -> Vec<Backend> {
    let mut list = Vec::new();
    for name in names {
        list.push(Backend::start(name, None).await.expect("backend starts"));
    }
    list
}

/// Which server answered `count` requests with `headers`, counted by name
/// (`-` for an answer that named none).
async fn spread(
    gw: &TestGateway,
    count: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, usize> {
    spread_on(gw, "/", count, headers).await
}

/// [`spread`] on `path`.
async fn spread_on(
    gw: &TestGateway,
    path: &str,
    count: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, usize> {
    let client = Client::new();
    let mut seen = HashMap::new();
    for _ in 0..count {
        let reply = client.get(&gw.url(path), headers).await.expect("an answer");
        let server = reply.header("x-server").unwrap_or("-").to_owned();
        *seen.entry(server).or_default() += 1;
    }
    seen
}

/// Waits (at most 20 s) until `backend` has received `more` health checks
/// beyond `from`: checks of one server run one after another, so by then
/// the gateway has acted on all but the last of them.
async fn checks_after(backend: &Backend, from: u64, more: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while backend.health_checks() < from + more {
        assert!(
            Instant::now() < deadline,
            "no health checks reach {}",
            backend.name()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const FAST_CHECKS: &str = "[upstreams.pool.health]\npath = \"/healthz\"\ninterval_ms = 100\n\
                           timeout_ms = 1000\nhealthy_threshold = 2\nunhealthy_threshold = 2\n";

#[tokio::test]
async fn round_robin_gives_each_server_its_weight() {
    let list = backends(&["a", "b"]).await;
    let gw = gateway(&[&list[0], &list[1]], &[1, 3], "", "").await;
    let seen = spread(&gw, 400, &[]).await;
    assert_eq!(seen.get("a"), Some(&100), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&300), "{seen:?}");
    gw.stop().await;
}

#[tokio::test]
async fn active_checks_take_a_server_out_and_bring_it_back() {
    let list = backends(&["a", "b", "c"]).await;
    let gw = gateway(&[&list[0], &list[1], &list[2]], &[], "", FAST_CHECKS).await;
    let b = &list[1];
    checks_after(b, 0, 1).await;
    assert_eq!(spread(&gw, 30, &[]).await.get("b"), Some(&10));

    // b fails its checks: after two in a row it gets no more requests.
    b.set_mode(Mode::Unavailable);
    checks_after(b, b.health_checks(), 3).await;
    let served = b.requests();
    let seen = spread(&gw, 30, &[]).await;
    assert_eq!(
        b.requests(),
        served,
        "a server that is down got requests: {seen:?}"
    );
    assert_eq!(
        seen.get("a").copied().unwrap_or(0) + seen.get("c").copied().unwrap_or(0),
        30
    );
    assert!(logged(&["upstream `pool`", "is down", &b.addr.to_string()]));
    assert!(logged(&["upstream-health"]), "raised as an alert");

    // Back after two passes in a row.
    b.set_mode(Mode::Ok);
    checks_after(b, b.health_checks(), 3).await;
    assert_eq!(spread(&gw, 30, &[]).await.get("b"), Some(&10));
    assert!(logged(&["upstream `pool`", "is up again"]));
    gw.stop().await;
}

#[tokio::test]
async fn a_group_with_no_healthy_server_answers_503_without_trying_one() {
    let list = backends(&["a", "b"]).await;
    let gw = gateway(&[&list[0], &list[1]], &[], "", FAST_CHECKS).await;
    for backend in &list {
        backend.set_mode(Mode::Unavailable);
    }
    for backend in &list {
        checks_after(backend, backend.health_checks(), 3).await;
    }
    let reply = Client::new()
        .get(&gw.url("/"), &[])
        .await
        .expect("an answer");
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = reply.json().expect("a JSON body");
    assert_eq!(
        body,
        serde_json::json!({
            "status": 503,
            "error": "Service Unavailable",
            "message": "upstream `pool` has no healthy server",
        })
    );
    assert_eq!(
        list[0].requests() + list[1].requests(),
        0,
        "no server was tried"
    );

    // One recovers: served again.
    list[0].set_mode(Mode::Ok);
    checks_after(&list[0], list[0].health_checks(), 3).await;
    let reply = Client::new()
        .get(&gw.url("/"), &[])
        .await
        .expect("an answer");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-server"), Some("a"));
    gw.stop().await;
}

#[tokio::test]
async fn failing_requests_eject_a_server() {
    let list = backends(&["a", "b", "c"]).await;
    // 100%: b and then c may both be out.
    let outlier = "[upstreams.pool.outlier]\nconsecutive_failures = 3\nmax_ejected_percent = 100\n";
    let gw = gateway(&[&list[0], &list[1], &list[2]], &[], "", outlier).await;
    let b = &list[1];
    b.set_mode(Mode::Unavailable);
    // Round-robin: b's third 503 in a row comes by the ninth request.
    let first = spread(&gw, 9, &[]).await;
    assert_eq!(first.get("b"), Some(&3), "{first:?}");
    let served = b.requests();
    let seen = spread(&gw, 30, &[]).await;
    assert_eq!(
        b.requests(),
        served,
        "an ejected server got requests: {seen:?}"
    );
    assert!(logged(&[
        "upstream `pool`",
        "ejected for 30 s after 3 failed requests"
    ]));

    // Resets count too (and the GETs they cut are retried on a).
    let c = &list[2];
    let before = c.requests();
    c.set_mode(Mode::Reset);
    let seen = spread(&gw, 12, &[]).await;
    assert_eq!(seen.get("a"), Some(&12), "{seen:?}");
    assert_eq!(c.requests(), before + 3, "c is out after its third reset");
    gw.stop().await;
}

#[tokio::test]
async fn no_more_than_the_configured_share_is_ejected() {
    let list = backends(&["a", "b"]).await;
    let outlier = "[upstreams.pool.outlier]\nconsecutive_failures = 2\nmax_ejected_percent = 50\n";
    let gw = gateway(&[&list[0], &list[1]], &[], "", outlier).await;
    for backend in &list {
        backend.set_mode(Mode::Unavailable);
    }
    spread(&gw, 10, &[]).await;
    // One of the two is ejected; the other keeps its requests (the
    // group is not emptied by ejection).
    let seen = spread(&gw, 10, &[]).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen.values().all(|n| *n == 10));
    gw.stop().await;
}

#[tokio::test]
async fn consistent_hash_keeps_a_key_on_its_server_and_moves_only_the_keys_of_one_that_is_out() {
    let list = backends(&["a", "b", "c"]).await;
    let group = "balance = \"consistent_hash\"\nhash_on = \"header:x-user\"\n";
    let gw = gateway(&[&list[0], &list[1], &list[2]], &[], group, FAST_CHECKS).await;
    let client = Client::new();
    let users: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    let mut home = HashMap::new();
    for user in &users {
        for _ in 0..3 {
            let reply = client
                .get(&gw.url("/"), &[("x-user", user)])
                .await
                .expect("answer");
            let server = reply.header("x-server").expect("named").to_owned();
            let first = home.entry(user.clone()).or_insert_with(|| server.clone());
            assert_eq!(*first, server, "{user} moved while the servers stayed");
        }
    }
    let on_b = home.values().filter(|s| *s == "b").count();
    assert!(on_b > 0 && on_b < 60, "{on_b} of 60 keys on b");

    let b = &list[1];
    b.set_mode(Mode::Unavailable);
    checks_after(b, b.health_checks(), 3).await;
    for user in &users {
        let reply = client
            .get(&gw.url("/"), &[("x-user", user)])
            .await
            .expect("answer");
        let server = reply.header("x-server").expect("named");
        if home[user] == "b" {
            assert_ne!(server, "b");
        } else {
            assert_eq!(server, home[user], "{user} moved though its server stayed");
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn least_request_avoids_a_server_that_holds_requests() {
    let list = backends(&["slow", "fast"]).await;
    let group = "balance = \"least_request\"\n[upstreams.pool.outlier]\nconsecutive_failures = 0\n";
    let gw = gateway(&[&list[0], &list[1]], &[], group, "").await;
    list[0].set_mode(Mode::Hang);
    // Requests until one hangs on `slow`.
    let mut hanging = Vec::new();
    for _ in 0..50 {
        if list[0].requests() > 0 {
            break;
        }
        let url = gw.url("/");
        hanging.push(tokio::spawn(
            async move { Client::new().get(&url, &[]).await },
        ));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(list[0].requests() > 0, "no request reached the slow server");
    let seen = spread(&gw, 20, &[]).await;
    assert_eq!(seen.get("fast"), Some(&20), "{seen:?}");
    for task in hanging {
        task.abort();
    }
    gw.stop().await;
}

#[tokio::test]
async fn bad_balancing_settings_are_refused_with_their_keys() {
    let group = |extra: &str| {
        format!(
            "[upstreams.pool]\nservers = [\"127.0.0.1:9\", {{ address = \"127.0.0.1:10\", weight = 0 }}]\n{extra}\n"
        )
    };
    assert_config_refused(
        &group("balance = \"consistent_hash\""),
        &[],
        &["upstreams.pool.hash_on", "upstreams.pool.servers[1].weight"],
    )
    .await;
    assert_config_refused(
        &group("hash_on = \"client_ip\"\n[upstreams.pool.health]\ninterval_ms = 50\npath = \"healthz\""),
        &[],
        &[
            "upstreams.pool.hash_on",
            "only balance = \"consistent_hash\"",
            "upstreams.pool.health.interval_ms",
            "upstreams.pool.health.path",
        ],
    )
    .await;
    assert_config_refused(
        "[upstreams.pool]\nservers = [{ adress = \"127.0.0.1:9\" }]\n",
        &[],
        &["adress"],
    )
    .await;
}

#[tokio::test]
async fn a_dead_server_costs_no_request_when_retries_are_on() {
    let list = backends(&["a", "b", "c"]).await;
    let gw = gateway(&[&list[0], &list[1], &list[2]], &[], "", "").await;
    list[1].stop().await;
    // Connection refused on b: every request retried on another server
    // (the default: one retry), then b is ejected.
    let seen = spread(&gw, 30, &[]).await;
    assert_eq!(seen.get("-"), None, "a request failed: {seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 30);
    assert!(logged(&[
        "upstream `pool`",
        "ejected",
        &list[1].addr.to_string()
    ]));
    gw.stop().await;
}

#[tokio::test]
async fn a_server_killed_under_load_fails_no_request() {
    let list = backends(&["a", "b", "c"]).await;
    let gw = gateway(&[&list[0], &list[1], &list[2]], &[], "", "").await;
    let url = gw.url("/");
    // Three clients, one request after another each, 300 requests each;
    // b dies after the first 100 answers.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let client = Client::new();
            let mut failed = Vec::new();
            for _ in 0..300 {
                let reply = client.get(&url, &[]).await.expect("an answer");
                if reply.status != StatusCode::OK {
                    failed.push(reply.status);
                }
            }
            failed
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while list[0].requests() + list[1].requests() + list[2].requests() < 100 {
        assert!(Instant::now() < deadline, "the clients do not get through");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    list[1].stop().await;
    let killed_at = list[1].requests();
    for client in clients {
        let failed = client.await.expect("client");
        assert!(failed.is_empty(), "failed while a server died: {failed:?}");
    }
    assert!(killed_at < 300, "b died with the load still running");
    gw.stop().await;
}

#[tokio::test]
async fn configured_statuses_are_retried_for_idempotent_requests_only() {
    let list = backends(&["a", "b"]).await;
    let group = "[upstreams.pool.retries]\nstatuses = [503]\nbackoff_ms = 0\n\
                 [upstreams.pool.outlier]\nconsecutive_failures = 0\n";
    let gw = gateway(&[&list[0], &list[1]], &[], group, "").await;
    list[1].set_mode(Mode::Unavailable);
    let client = Client::new();
    for _ in 0..10 {
        let reply = client.get(&gw.url("/"), &[]).await.expect("an answer");
        assert_eq!(reply.status, StatusCode::OK, "a 503 GET was not retried");
        assert_eq!(reply.header("x-server"), Some("a"));
    }
    // A POST with a body is not sent twice: b's 503 reaches the client.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let reply = client
            .request(http::Method::POST, &gw.url("/"), &[], "order=1")
            .await
            .expect("an answer");
        statuses.push(reply.status);
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
            .count(),
        2,
        "{statuses:?}"
    );
    gw.stop().await;
}

/// The keep-alive race: the server drops a request that arrives on a
/// connection it has let idle 100 ms (as if its idle timeout fired as the
/// request was on its way). Every request below reuses such a connection.
async fn race(retries: &str) -> Vec<StatusCode> {
    let backend = Backend::start("a", None).await.expect("backend starts");
    backend.set_stale_after(Duration::from_millis(100));
    let gw = gateway(&[&backend], &[], retries, "").await;
    let client = Client::new();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let reply = client.get(&gw.url("/"), &[]).await.expect("an answer");
        statuses.push(reply.status);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    gw.stop().await;
    statuses
}

#[tokio::test]
async fn the_keep_alive_race_costs_no_request_with_retries() {
    let statuses = race("").await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    // Without retries, the same race is a 502 each time a connection is
    // reused (the one after a 502 is a fresh one): what the retry saves.
    let statuses = race("[upstreams.pool.retries]\nattempts = 0\n").await;
    let failed = statuses
        .iter()
        .filter(|s| **s == StatusCode::BAD_GATEWAY)
        .count();
    assert_eq!(failed, 3, "{statuses:?}");
}

#[tokio::test]
async fn pooled_connections_are_closed_after_the_idle_timeout() {
    // The server closes a connection idle 1 s; the gateway's pool closes
    // its own after 300 ms, before the server does: requests 600 ms apart
    // each open a fresh connection and none meets a closing one.
    let backend = Backend::start("a", Some(Duration::from_secs(1)))
        .await
        .expect("backend starts");
    backend.set_stale_after(Duration::from_millis(500));
    let gw = gateway(
        &[&backend],
        &[],
        "idle_timeout_ms = 300\n[upstreams.pool.retries]\nattempts = 0\n",
        "",
    )
    .await;
    let client = Client::new();
    for _ in 0..4 {
        let reply = client.get(&gw.url("/"), &[]).await.expect("an answer");
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "a stale connection was reused"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn passing_active_checks_end_an_ejection_early() {
    let list = backends(&["a", "b", "c"]).await;
    let outlier = format!(
        "{FAST_CHECKS}[upstreams.pool.outlier]\nconsecutive_failures = 3\nbase_ejection_ms = 600000\n\
         max_ejection_ms = 600000\n"
    );
    let gw = gateway(&[&list[0], &list[1], &list[2]], &[], "", &outlier).await;
    let b = &list[1];
    b.set_mode(Mode::Unavailable);
    spread(&gw, 9, &[]).await;
    let served = b.requests();
    spread(&gw, 9, &[]).await;
    assert_eq!(b.requests(), served, "ejected for 10 minutes");
    // Healthy again: two passing checks bring it back long before.
    b.set_mode(Mode::Ok);
    checks_after(b, b.health_checks(), 3).await;
    assert_eq!(spread(&gw, 30, &[]).await.get("b"), Some(&10));
    assert!(logged(&["upstream `pool`", "is back from ejection"]));
    gw.stop().await;
}

#[tokio::test]
async fn tcp_checks_follow_a_server_that_stops_listening() {
    let list = backends(&["a", "b"]).await;
    let checks = "[upstreams.pool.health]\nkind = \"tcp\"\ninterval_ms = 100\n\
                  unhealthy_threshold = 2\nhealthy_threshold = 2\n\
                  [upstreams.pool.outlier]\nconsecutive_failures = 0\n";
    let gw = gateway(&[&list[0], &list[1]], &[], "", checks).await;
    let b = &list[1];
    b.stop().await;
    // No HTTP reaches b to count checks by: wait until the group stops
    // sending it requests (each connection refused is retried on a).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = spread(&gw, 10, &[]).await;
        assert_eq!(seen.get("a"), Some(&10), "{seen:?}");
        if logged(&["upstream `pool`", "is down", &b.addr.to_string()]) {
            break;
        }
        assert!(Instant::now() < deadline, "b was never taken out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.restart().await.expect("b restarts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !spread(&gw, 10, &[]).await.contains_key("b") {
        assert!(Instant::now() < deadline, "b never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.health_checks(), 0, "a TCP check sends no request");
    gw.stop().await;
}

#[tokio::test]
async fn a_route_sets_its_own_retries_and_response_timeout() {
    portcullis_tests::init_logs();
    let list = backends(&["a", "b"]).await;
    list[1].set_mode(Mode::Hang);
    let config = format!(
        "{base}\n[upstreams.pool]\nservers = [\"{a}\", \"{b}\"]\ntimeout_ms = 5000\n\
         retries = {{ statuses = [503] }}\noutlier = {{ consecutive_failures = 0 }}\n\
         [[routes]]\nname = \"strict\"\npath_prefix = \"/strict\"\nupstream = \"pool\"\n\
         upstream_timeout_ms = 200\nretries = {{ attempts = 0 }}\n\
         [[routes]]\nname = \"hedged\"\npath_prefix = \"/hedged\"\nupstream = \"pool\"\n\
         upstream_timeout_ms = 200\nretries = {{ on_timeout = true, backoff_ms = 0 }}\n\
         [[routes]]\nname = \"pool\"\npath_prefix = \"/\"\nupstream = \"pool\"\n",
        base = base_config(list[0].addr),
        a = list[0].addr,
        b = list[1].addr,
    );
    let gw = TestGateway::start(&config, &[])
        .await
        .expect("gateway starts");
    let client = Client::new();
    // The strict route waits 200 ms for b, not the group's 5 s.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let reply = client
            .get(&gw.url("/strict"), &[])
            .await
            .expect("an answer");
        statuses.push(reply.status);
    }
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::GATEWAY_TIMEOUT]);
    assert!(logged(&["upstream `pool` timed out after 200 ms"]));
    // The hedged route retries a try that timed out: a, after 200 ms on b.
    let hedged = spread_on(&gw, "/hedged", 4, &[]).await;
    assert_eq!(hedged.get("a"), Some(&4), "{hedged:?}");
    // b answers 503 now: the group retries it, the strict route does not.
    list[1].set_mode(Mode::Unavailable);
    let strict = spread_on(&gw, "/strict", 4, &[]).await;
    assert_eq!(strict.get("b"), Some(&2), "{strict:?}");
    let default = spread_on(&gw, "/", 4, &[]).await;
    assert_eq!(default.get("a"), Some(&4), "{default:?}");
    gw.stop().await;
}

#[tokio::test]
async fn small_bodies_are_kept_to_be_sent_again_and_large_ones_are_not() {
    let list = backends(&["a", "b"]).await;
    let group = "[upstreams.pool.retries]\nstatuses = [503]\nbackoff_ms = 0\n\
                 max_body_bytes = 65536\n[upstreams.pool.outlier]\nconsecutive_failures = 0\n";
    let gw = gateway(&[&list[0], &list[1]], &[], group, "").await;
    let client = Client::new();
    let put = |body: Vec<u8>| {
        let (client, url) = (client.clone(), gw.url("/"));
        async move {
            client
                .request(http::Method::PUT, &url, &[], body)
                .await
                .expect("an answer")
        }
    };
    // b answers 503: a PUT of 10 KiB is sent again, whole, to a.
    list[1].set_mode(Mode::Unavailable);
    for _ in 0..4 {
        let reply = put(vec![b'x'; 10 * 1024]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-server"), Some("a"));
        assert_eq!(reply.header("x-body-len"), Some("10240"));
    }
    // 100 KiB is over the cap: streamed through once, b's 503 is the answer.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let reply = put(vec![b'x'; 100 * 1024]).await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(reply.header("x-body-len"), Some("102400"));
        }
        statuses.push(reply.status);
    }
    let unavailable = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!(unavailable, 2, "{statuses:?}");
    // A POST whose server is down is sent to the other, body and all:
    // nothing reached the first.
    list[1].stop().await;
    for _ in 0..4 {
        let reply = client
            .request(http::Method::POST, &gw.url("/"), &[], vec![b'y'; 2048])
            .await
            .expect("an answer");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-body-len"), Some("2048"));
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_reload_that_changes_a_group_keeps_what_it_knew_of_its_servers() {
    let list = backends(&["a", "b"]).await;
    let gw = gateway(&[&list[0], &list[1]], &[], "", FAST_CHECKS).await;
    let b = &list[1];
    b.set_mode(Mode::Unavailable);
    checks_after(b, b.health_checks(), 3).await;
    assert_eq!(spread(&gw, 10, &[]).await.get("a"), Some(&10));
    // New settings (checks once a minute): a new group, which must not
    // start by sending requests to a server the old one knew was down.
    let path = gw.dir().join("portcullis.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    let slower = config.replace("interval_ms = 100", "interval_ms = 60000");
    assert_ne!(slower, config);
    std::fs::write(&path, slower).expect("write config");
    let event = gw.handle.reload_config().await.expect("reload runs");
    assert!(
        matches!(event.outcome, portcullis::registry::Outcome::Applied { .. }),
        "{event:?}"
    );
    let seen = spread(&gw, 20, &[]).await;
    assert_eq!(seen.get("a"), Some(&20), "{seen:?}");
    gw.stop().await;
}

#[tokio::test]
async fn connections_are_retired_after_their_lifetime() {
    let old = Backend::start("a", None).await.expect("backend starts");
    let gw = gateway(&[&old], &[], "connection_lifetime_ms = 300\n", "").await;
    let client = Client::new();
    // One request every 100 ms for a second: a connection serves the
    // requests of its first 300 ms (and the one that crosses the line),
    // then the next request opens a new one.
    for _ in 0..10 {
        let reply = client.get(&gw.url("/"), &[]).await.expect("an answer");
        assert_eq!(reply.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // At least one retirement; how many more depends on how the sleeps
    // fall on a busy machine (a slow one only adds connections).
    let retired = old.connections();
    assert!(retired >= 2, "{retired} connections for 10 requests");
    gw.stop().await;

    // Without a lifetime, one connection serves them all.
    let kept = Backend::start("a", None).await.expect("backend starts");
    let gw = gateway(&[&kept], &[], "", "").await;
    for _ in 0..10 {
        client.get(&gw.url("/"), &[]).await.expect("an answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(kept.connections(), 1);
    gw.stop().await;
}
