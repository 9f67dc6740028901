//! Deliberately bad plugins (trap, endless loop, memory bomb, panic) fail
//! only the request they were serving, as configured; the gateway stays up.

use http::StatusCode;
use portcullis_tests::echo::Echo;
use portcullis_tests::{Client, TestGateway, base_config, fixtures, logged};

const MODES: [&str; 4] = ["trap", "loop", "bomb", "panic"];

/// Per mode, two routes: `/deny-<mode>` fails closed, `/allow-<mode>` open.
/// The plugin misbehaves only on the path `.../boom`.
fn config(echo: &Echo) -> String {
    let mut config = base_config(echo.addr);
    for mode in MODES {
        for on_error in ["deny", "allow"] {
            config.push_str(&format!(
                r#"
[[routes]]
name = "{on_error}-{mode}"
path_prefix = "/{on_error}-{mode}"
upstream = "echo"
[[routes.plugins]]
name = "misbehave"
on_error = "{on_error}"
config = {{ mode = "{mode}", only_path = "/{on_error}-{mode}/boom" }}
"#
            ));
        }
    }
    config.push_str(
        r#"
[[routes]]
name = "response-trap"
path_prefix = "/response-trap"
upstream = "echo"
[[routes.plugins]]
name = "misbehave"
config = { mode = "trap", on = "response" }
"#,
    );
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_misbehaviour_fails_only_its_own_request() {
    let echo = Echo::start_local().await.expect("echo starts");
    let gw = TestGateway::start(&config(&echo), &[("misbehave", fixtures::MISBEHAVE)])
        .await
        .expect("gateway starts");
    let client = Client::new();
    let reasons = [
        ("trap", "unreachable"),
        ("loop", "exceeded its CPU deadline of 100 ms"),
        ("bomb", "exceeded its memory limit of 32 MiB"),
        ("panic", "misbehave: deliberate panic"),
    ];
    for (mode, reason) in reasons {
        // Fail closed: this request gets 500, with no detail for the client.
        let failed = client
            .get(&gw.url(&format!("/deny-{mode}/boom")), &[])
            .await
            .expect("response");
        assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR, "{mode}");
        assert_eq!(
            failed.header("x-upstream"),
            None,
            "{mode}: must not reach the upstream"
        );
        assert!(
            !String::from_utf8_lossy(&failed.body).contains(reason),
            "{mode}: detail leaked"
        );
        assert!(
            logged(&[
                "plugin failed",
                "misbehave",
                &format!("deny-{mode}"),
                reason
            ]),
            "{mode}: the log names plugin, route and reason `{reason}`"
        );

        // The next request on the same route is served by a fresh instance.
        let next = client
            .get(&gw.url(&format!("/deny-{mode}/fine")), &[])
            .await
            .expect("response");
        assert_eq!(next.status, StatusCode::OK, "{mode}");
        assert_eq!(next.header("x-misbehave"), Some("ok"));

        // Fail open: the request goes on without the plugin.
        let allowed = client
            .get(&gw.url(&format!("/allow-{mode}/boom")), &[])
            .await
            .expect("response");
        assert_eq!(allowed.status, StatusCode::OK, "{mode}");
        assert_eq!(allowed.header("x-upstream"), Some("echo"));
        assert_eq!(allowed.header("x-misbehave"), None);
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_in_the_response_phase_replaces_the_response_with_500() {
    let echo = Echo::start_local().await.expect("echo starts");
    let gw = TestGateway::start(&config(&echo), &[("misbehave", fixtures::MISBEHAVE)])
        .await
        .expect("gateway starts");
    let reply = Client::new()
        .get(&gw.url("/response-trap/x"), &[])
        .await
        .expect("response");
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        reply.header("x-upstream"),
        None,
        "the upstream's response is not passed on"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_failures_leave_the_gateway_serving() {
    let echo = Echo::start_local().await.expect("echo starts");
    let gw = TestGateway::start(&config(&echo), &[("misbehave", fixtures::MISBEHAVE)])
        .await
        .expect("gateway starts");
    let client = Client::new();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let client = client.clone();
        let path = if i % 2 == 0 {
            "/deny-bomb/boom"
        } else {
            "/deny-bomb/fine"
        };
        let url = gw.url(path);
        tasks.push(tokio::spawn(
            async move { (i, client.get(&url, &[]).await) },
        ));
    }
    for task in tasks {
        let (i, reply) = task.await.expect("task");
        let reply = reply.expect("response");
        let expected = if i % 2 == 0 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        assert_eq!(reply.status, expected, "request {i}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_give_one_plugin_its_own_deadline() {
    let echo = Echo::start_local().await.expect("echo starts");
    let config = format!(
        r#"{}
[[routes]]
name = "tight"
path_prefix = "/tight"
upstream = "echo"
[[routes.plugins]]
name = "misbehave"
timeout_ms = 30
config = {{ mode = "loop", only_path = "/tight/boom" }}
"#,
        base_config(echo.addr)
    );
    let gw = TestGateway::start(&config, &[("misbehave", fixtures::MISBEHAVE)])
        .await
        .expect("gateway starts");
    let failed = Client::new()
        .get(&gw.url("/tight/boom"), &[])
        .await
        .expect("response");
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        logged(&[
            "plugin failed",
            "tight",
            "exceeded its CPU deadline of 30 ms"
        ]),
        "the route's deadline (30 ms), not limits.plugin_timeout_ms (100 ms), applied"
    );
    gw.stop().await;
}
