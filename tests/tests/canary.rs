//! Canary rollouts end to end: a candidate that traps on some requests is
//! rolled back at the first failure, with no failed request outside its
//! share and every request after it served by the stable version, and
//! stays rolled back after a restart; a healthy one is promoted step by
//! step (with a pause) on the gateway's clock; an operator's commands.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use portcullis::clock::ManualClock;
use portcullis_tests::echo::Echo;
use portcullis_tests::{Client, TestGateway, base_config, fixtures};
use serde_json::Value;

const NOW_MS: u64 = 1_796_637_600_000;
const USERS: usize = 40;

/// `/api` through `misbehave`, which does nothing live; its candidate
/// (`candidate`, the rest of the canary's config table) answers
/// `/api/which` itself, so a test can tell which version a caller has.
fn config(echo: &Echo, candidate: &str, canary: &str) -> String {
    format!(
        r#"{base}
[admin]
address = "127.0.0.1:0"

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "echo"

[[routes.plugins]]
name = "misbehave"
[routes.plugins.config]
mode = "none"
[routes.plugins.canary]
config = {{ report_path = "/api/which", {candidate} }}
sticky = "header:x-user"
max_refusal_increase = 1.0
{canary}
"#,
        base = base_config(echo.addr)
    )
}

async fn admin(gw: &TestGateway, method: Method, path: &str) -> (StatusCode, Value) {
    let addr = gw.handle.admin_addr().expect("admin");
    let reply = Client::new()
        .request(method, &format!("http://{addr}{path}"), &[], Bytes::new())
        .await
        .expect("admin answers");
    (
        reply.status,
        serde_json::from_slice(&reply.body).unwrap_or(Value::Null),
    )
}

async fn rollout(gw: &TestGateway) -> Value {
    let (status, body) = admin(gw, Method::GET, "/rollouts").await;
    assert_eq!(status, StatusCode::OK);
    body["rollouts"][0].clone()
}

/// Users whose requests the candidate serves now.
async fn candidate_users(gw: &TestGateway) -> BTreeSet<usize> {
    let client = Client::new();
    let mut users = BTreeSet::new();
    for user in 0..USERS {
        let reply = client
            .get(&gw.url("/api/which"), &[("x-user", &format!("u{user}"))])
            .await
            .expect("reply");
        assert_eq!(reply.status, StatusCode::OK);
        if reply.header("x-instance-calls").is_some() {
            users.insert(user);
        } else {
            assert_eq!(reply.header("x-upstream"), Some("echo"));
        }
    }
    users
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_at_once_and_stays_so() {
    let echo = Echo::start_local().await.expect("echo");
    let text = config(
        &echo,
        r#"mode = "trap", only_path = "/api/boom""#,
        "steps = [50, 100]\nmin_requests = 5\nmax_failure_ratio = 0.01",
    );
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let gw = TestGateway::start_with_clock(&text, &[("misbehave", fixtures::MISBEHAVE)], clock)
        .await
        .expect("starts");
    let before = rollout(&gw).await;
    assert_eq!(before["phase"], "running");
    assert_eq!(before["percent"], 50.0);

    // Sticky: each user has one version, the same on every request.
    let candidates = candidate_users(&gw).await;
    assert!(
        !candidates.is_empty() && candidates.len() < USERS,
        "{candidates:?}"
    );
    assert_eq!(candidate_users(&gw).await, candidates);

    // Every user once on the path the candidate traps on: the first
    // candidate user's request fails (500) and rolls the canary back;
    // nobody else's fails, the candidate's later users included.
    let client = Client::new();
    let first = *candidates.iter().next().expect("a candidate user");
    for user in 0..USERS {
        let reply = client
            .get(&gw.url("/api/boom"), &[("x-user", &format!("u{user}"))])
            .await
            .expect("reply");
        let expected = if user == first {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        assert_eq!(reply.status, expected, "user {user}");
    }
    let after = rollout(&gw).await;
    assert_eq!(after["phase"], "rolled_back", "{after:#}");
    assert_eq!(after["percent"], 0.0);
    assert_eq!(after["candidate"]["failures"], 1);
    assert!(
        after["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("plugin failures: 1 of")),
        "{after:#}"
    );
    assert_eq!(after["candidate_in_flight"], 0);
    assert!(after["drained_us"].is_u64(), "{after:#}");
    // Every request since is the stable version's.
    assert!(candidate_users(&gw).await.is_empty());
    // The optimized build of the module (usually done by now, not always)
    // and a reload take the rollout over as it stands.
    gw.wait_optimized().await;
    gw.handle.reload_config().await.expect("reload");
    let kept = rollout(&gw).await;
    assert_eq!(kept["phase"], "rolled_back", "{kept:#}");
    assert_eq!(kept["candidate"]["failures"], 1, "{kept:#}");
    assert_eq!(kept["drained_us"], after["drained_us"], "{kept:#}");

    // An operator cannot bring an ended rollout back.
    let (status, body) = admin(&gw, Method::POST, "/rollouts/api/misbehave/promote").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = admin(&gw, Method::POST, "/rollouts/api/nothing/abort").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = admin(&gw, Method::POST, "/rollouts/api/misbehave/jump").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // An alert and an audit record.
    let mut alerted = false;
    for _ in 0..200 {
        alerted = gw
            .handle
            .recent_alerts()
            .iter()
            .any(|a| a.kind == "canary-rolled-back" && a.route == "api");
        if alerted {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(alerted, "{:?}", gw.handle.recent_alerts());
    let audit = gw.handle.registry().audit_file().expect("audit").to_owned();
    let trail = std::fs::read_to_string(&audit).expect("trail");
    let results: Vec<String> = trail
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|r| r["result"].as_str().map(str::to_owned))
        .collect();
    assert!(
        results.contains(&"rollout_started".to_owned()),
        "{results:?}"
    );
    assert!(
        results.contains(&"rollout_rolled_back".to_owned()),
        "{results:?}"
    );
    portcullis::audit::verify(&audit).expect("the chain holds");

    // A restart does not try the rolled-back candidate again.
    let gw = gw.restart().await.expect("restarts");
    let restarted = rollout(&gw).await;
    assert_eq!(restarted["phase"], "rolled_back", "{restarted:#}");
    assert!(candidate_users(&gw).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_step_by_step() {
    let echo = Echo::start_local().await.expect("echo");
    let text = config(
        &echo,
        r#"mode = "none""#,
        "steps = [50, 100]\nstep_ms = 60000\nmin_requests = 5",
    );
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let gw =
        TestGateway::start_with_clock(&text, &[("misbehave", fixtures::MISBEHAVE)], clock.clone())
            .await
            .expect("starts");
    let at_half = candidate_users(&gw).await;
    assert!(at_half.len() >= 5 && at_half.len() < USERS, "{at_half:?}");
    // Enough requests, not enough time: still at the first step.
    assert_eq!(rollout(&gw).await["step"], 1);

    // Paused, the step does not end however long it lasts.
    let (status, body) = admin(&gw, Method::POST, "/rollouts/api/misbehave/pause").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["phase"], "paused");
    clock.advance(120_000);
    candidate_users(&gw).await;
    assert_eq!(rollout(&gw).await["step"], 1);
    let (_, body) = admin(&gw, Method::POST, "/rollouts/api/misbehave/resume").await;
    assert_eq!(body["phase"], "running");

    // A step's time after the resume: on to 100%, then promoted.
    clock.advance(60_000);
    candidate_users(&gw).await;
    let second = rollout(&gw).await;
    assert_eq!(second["step"], 2, "{second:#}");
    assert_eq!(second["percent"], 100.0);
    assert_eq!(candidate_users(&gw).await.len(), USERS);
    clock.advance(60_000);
    candidate_users(&gw).await;
    let done = rollout(&gw).await;
    assert_eq!(done["phase"], "promoted", "{done:#}");
    assert_eq!(done["percent"], 100.0);
    let events: Vec<&str> = done["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(events, ["paused", "resumed", "step", "promoted"]);
    assert_eq!(candidate_users(&gw).await.len(), USERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_can_abort_a_canary() {
    let echo = Echo::start_local().await.expect("echo");
    let text = config(&echo, r#"mode = "none""#, "steps = [50]");
    let gw = TestGateway::start(&text, &[("misbehave", fixtures::MISBEHAVE)])
        .await
        .expect("starts");
    assert!(!candidate_users(&gw).await.is_empty());
    let (status, body) = admin(&gw, Method::POST, "/rollouts/api/misbehave/abort").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["phase"], "aborted");
    assert!(candidate_users(&gw).await.is_empty());
}
