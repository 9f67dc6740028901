//! Hot loading: a module replaced under load serves the new version with no
//! failed request; bad modules, removals and bad configs are refused while
//! the previous version keeps serving; compiled modules are cached.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use portcullis::plugin::Tier;
use portcullis::registry::{Outcome, Trigger};
use portcullis_tests::echo::Echo;
use portcullis_tests::{Client, TestGateway, base_config, fixtures, logged, next_event};

/// How long the new version may take to serve after the file is in place.
/// Measured reloads take tens of milliseconds (see `benches/reload.rs`);
/// this bound is loose so that a loaded CI machine does not fail the test.
const RELOAD_BOUND: Duration = Duration::from_secs(5);

fn stamp_config(echo: &Echo) -> String {
    format!(
        r#"{}
[[routes]]
name = "stamped"
path_prefix = "/"
upstream = "echo"
[[routes.plugins]]
name = "stamp"
"#,
        base_config(echo.addr)
    )
}

async fn stamp_gateway() -> (TestGateway, Echo) {
    let echo = Echo::start_local().await.expect("echo starts");
    let gw = TestGateway::start(&stamp_config(&echo), &[("stamp", fixtures::STAMP_V1)])
        .await
        .expect("gateway starts");
    (gw, echo)
}

/// The module serving the first plugin of the first route.
fn serving(handle: &portcullis::GatewayHandle) -> Arc<portcullis::plugin::CompiledPlugin> {
    handle.registry().current().routes[0].chain[0]
        .pool
        .plugin()
        .clone()
}

async fn stamp_of(client: &Client, gw: &TestGateway) -> Option<String> {
    let reply = client.get(&gw.url("/x"), &[]).await.expect("response");
    assert_eq!(reply.status, StatusCode::OK);
    reply.header("x-stamp").map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_replaced_under_load_loses_no_request() {
    let (gw, _echo) = stamp_gateway().await;
    let url = gw.url("/load");
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let client = Client::new();
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let reply = client.get(&url, &[]).await;
                let outcome = match reply {
                    Ok(r) => (
                        r.status,
                        r.header("x-stamp").map(str::to_owned),
                        r.header("x-upstream").is_some(),
                    ),
                    Err(e) => panic!("request failed during reload: {e}"),
                };
                seen.push((Instant::now(), outcome));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut events = gw.events();
    let v2 = std::fs::read(fixtures::STAMP_V2).expect("fixture");
    let written = Instant::now();
    gw.install("stamp", &v2).expect("install v2");
    let event = next_event(&mut events, &Trigger::Plugin("stamp".into()), RELOAD_BOUND)
        .await
        .expect("reload event");
    assert!(
        matches!(event.outcome, Outcome::Applied { .. }),
        "{event:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let mut first_v2: Option<Instant> = None;
    let mut total = 0;
    for client in clients {
        let seen = client.await.expect("client task");
        let mut switched = false;
        for (at, (status, stamp, upstream)) in seen {
            total += 1;
            assert_eq!(
                status,
                StatusCode::OK,
                "no request may fail during a reload"
            );
            assert!(upstream, "every request reached the upstream");
            match stamp.as_deref() {
                Some("v1") => assert!(!switched, "v1 served after this client had seen v2"),
                Some("v2") => {
                    switched = true;
                    first_v2 = Some(first_v2.map_or(at, |t| t.min(at)));
                }
                other => panic!("unexpected stamp {other:?}"),
            }
        }
        assert!(switched, "every client ends on v2");
    }
    let latency = first_v2
        .expect("v2 served")
        .saturating_duration_since(written);
    println!(
        "{total} requests, none failed; v2 first served {latency:?} after the file was written"
    );
    assert!(latency < RELOAD_BOUND, "v2 served after {latency:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_modules_are_refused_and_the_old_version_keeps_serving() {
    let (gw, _echo) = stamp_gateway().await;
    let client = Client::new();
    let v2 = std::fs::read(fixtures::STAMP_V2).expect("fixture");
    let wrong_world = std::fs::read(fixtures::WRONG_WORLD).expect("fixture");
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "garbage",
            b"this is not wasm at all".to_vec(),
            "not a valid WebAssembly component",
        ),
        (
            "truncated",
            v2[..v2.len() / 2].to_vec(),
            "not a valid WebAssembly component",
        ),
        (
            "wrong world",
            wrong_world,
            "does not implement the portcullis:policy@0.2 world",
        ),
    ];
    for (what, bytes, reason) in cases {
        let mut events = gw.events();
        gw.install("stamp", &bytes).expect("install");
        let event = next_event(&mut events, &Trigger::Plugin("stamp".into()), RELOAD_BOUND)
            .await
            .expect("reload event");
        match &event.outcome {
            Outcome::Rejected { reason: why } => assert!(why.contains(reason), "{what}: {why}"),
            other => panic!("{what}: expected a rejection, got {other:?}"),
        }
        assert!(
            logged(&["plugin `stamp` rejected", reason]),
            "{what}: reason logged"
        );
        assert_eq!(
            stamp_of(&client, &gw).await.as_deref(),
            Some("v1"),
            "{what}: v1 still serves"
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_copy_over_the_module_is_picked_up() {
    let (gw, _echo) = stamp_gateway().await;
    let client = Client::new();
    let mut events = gw.events();
    // Not an atomic rename: the file is truncated and written in place, as
    // `cp` does. The reload waits for the write to finish.
    std::fs::copy(fixtures::STAMP_V2, gw.plugin_dir().join("stamp.wasm")).expect("copy");
    let deadline = Instant::now() + RELOAD_BOUND;
    loop {
        let event = next_event(&mut events, &Trigger::Plugin("stamp".into()), RELOAD_BOUND)
            .await
            .expect("reload event");
        if matches!(event.outcome, Outcome::Applied { .. }) {
            break;
        }
        assert!(Instant::now() < deadline, "no successful reload: {event:?}");
    }
    assert_eq!(stamp_of(&client, &gw).await.as_deref(), Some("v2"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_module_that_routes_use_is_refused() {
    let (gw, _echo) = stamp_gateway().await;
    let client = Client::new();
    let mut events = gw.events();
    std::fs::remove_file(gw.plugin_dir().join("stamp.wasm")).expect("remove");
    let event = next_event(&mut events, &Trigger::Plugin("stamp".into()), RELOAD_BOUND)
        .await
        .expect("reload event");
    match &event.outcome {
        Outcome::Rejected { reason } => {
            assert!(reason.contains("routes `stamped` use it"), "{reason}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(stamp_of(&client, &gw).await.as_deref(), Some("v1"));
    gw.stop().await;
}

fn key_auth_route(echo: &Echo, keys: &str) -> String {
    format!(
        r#"{}
[[routes]]
name = "api"
path_prefix = "/"
upstream = "echo"
[[routes.plugins]]
name = "key_auth"
config = {{ keys = [{keys}] }}
"#,
        base_config(echo.addr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_the_plugin_rejects_is_refused_at_start_and_on_reload() {
    let echo = Echo::start_local().await.expect("echo starts");
    let bad = key_auth_route(&echo, r#"{ consumer = "x", sha256 = "not-hex" }"#);
    let dir = TestGateway::prepare(&bad, &[("key_auth", fixtures::KEY_AUTH)]).expect("prepare");
    let err = TestGateway::start_in(dir)
        .await
        .expect_err("bad plugin config must not start");
    let message = format!("{err:#}");
    assert!(
        message.contains("route `api` plugin `key_auth`: rejected its configuration"),
        "{message}"
    );
    assert!(
        message.contains("keys[0].sha256"),
        "the message names the key: {message}"
    );

    let good = key_auth_route(&echo, r#"{ consumer = "ci", key = "first" }"#);
    let gw = TestGateway::start(&good, &[("key_auth", fixtures::KEY_AUTH)])
        .await
        .expect("gateway starts");
    let client = Client::new();
    let url = gw.url("/x");
    let first = || client.get(&url, &[("x-api-key", "first")]);
    assert_eq!(first().await.expect("response").status, StatusCode::OK);

    // A reload with a bad plugin config is refused; the old config serves.
    let config_path = gw.dir().join("portcullis.toml");
    std::fs::write(&config_path, &bad).expect("write config");
    let event = gw.handle.reload_config().await.expect("reload runs");
    assert!(
        matches!(event.outcome, Outcome::Rejected { .. }),
        "{event:?}"
    );
    assert_eq!(first().await.expect("response").status, StatusCode::OK);

    // A good change applies: the new key works, the old one no longer does.
    let next = key_auth_route(&echo, r#"{ consumer = "ci", key = "second" }"#);
    let mut events = gw.events();
    std::fs::write(&config_path, &next).expect("write config");
    // A plain write is not atomic: a reload that a change event of the
    // earlier write starts while this one is under way may read half a file
    // and be refused (the old config keeps serving); the write's own
    // close event then reloads the whole file.
    let mut seen = Vec::new();
    loop {
        let event = next_event(&mut events, &Trigger::Config, RELOAD_BOUND)
            .await
            .unwrap_or_else(|| panic!("the watcher applies the config; saw {seen:?}"));
        if matches!(event.outcome, Outcome::Applied { .. }) {
            break;
        }
        seen.push(event);
    }
    assert_eq!(
        first().await.expect("response").status,
        StatusCode::UNAUTHORIZED
    );
    let second = client
        .get(&gw.url("/x"), &[("x-api-key", "second")])
        .await
        .expect("response");
    assert_eq!(second.status, StatusCode::OK);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_modules_are_cached_for_the_next_start() {
    let echo = Echo::start_local().await.expect("echo starts");
    let dir = TestGateway::prepare(&stamp_config(&echo), &[("stamp", fixtures::STAMP_V1)])
        .expect("prepare");
    let from_cache = |gw: &TestGateway| serving(&gw.handle).from_cache;

    let gw = TestGateway::start_in(dir).await.expect("first start");
    assert!(!from_cache(&gw), "first start compiles");
    // The compiled module is written in the background, after it serves.
    let cache = gw.dir().join("state").join("modules");
    let deadline = Instant::now() + RELOAD_BOUND;
    let cached = loop {
        let entries: Vec<_> = std::fs::read_dir(&cache)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        let done: Vec<_> = entries
            .iter()
            .filter(|n| n.to_string_lossy().ends_with(".cwasm"))
            .collect();
        if !done.is_empty() || Instant::now() > deadline {
            break done.len();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(cached, 1, "one compiled module in the cache");
    let dir_path = gw.dir().to_path_buf();
    let handle = gw.handle;
    handle.shutdown().await;

    let second = portcullis::Gateway::builder(dir_path.join("portcullis.toml"))
        .start()
        .await
        .expect("second start");
    assert!(
        serving(&second).from_cache,
        "second start loads from the cache"
    );
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_no_route_uses_is_validated_and_compiled_only_once_a_route_uses_it() {
    let echo = Echo::start_local().await.expect("echo starts");
    let plugins = [
        ("stamp", fixtures::STAMP_V1),
        ("key_auth", fixtures::KEY_AUTH),
    ];
    let dir = TestGateway::prepare(&stamp_config(&echo), &plugins).expect("prepare");
    // Not a component at all, and unused: skipped with a warning.
    std::fs::write(dir.path().join("plugins/junk.wasm"), b"\0asm junk").expect("write");
    let gw = TestGateway::start_in(dir).await.expect("gateway starts");
    let registry = gw.handle.registry().clone();
    assert_eq!(
        registry.modules(),
        (vec!["stamp".to_owned()], vec!["key_auth".to_owned()]),
        "key_auth is only validated; junk is not loaded"
    );
    assert!(logged(&["skipping unused plugin module", "junk"]));

    // A new version of the unused module is validated, not compiled.
    let mut events = gw.events();
    let bytes = std::fs::read(fixtures::RATE_LIMIT).expect("fixture");
    gw.install("key_auth", &bytes).expect("install");
    let event = next_event(
        &mut events,
        &Trigger::Plugin("key_auth".into()),
        RELOAD_BOUND,
    )
    .await
    .expect("the watcher sees it");
    assert_eq!(event.outcome, Outcome::Validated);

    // A route starts using it: compiled then.
    let config_path = gw.dir().join("portcullis.toml");
    let config = std::fs::read_to_string(&config_path).expect("config")
        + r#"
[[routes]]
name = "limited"
path_prefix = "/limited"
upstream = "echo"
[[routes.plugins]]
name = "key_auth"
config = { by = ["ip"], limits = [{ rate = 100, per = "second" }] }
"#;
    std::fs::write(&config_path, config).expect("write config");
    let event = gw.handle.reload_config().await.expect("reload runs");
    assert!(
        matches!(event.outcome, Outcome::Applied { .. }),
        "{event:?}"
    );
    assert_eq!(
        registry.modules(),
        (vec!["key_auth".to_owned(), "stamp".to_owned()], Vec::new())
    );
    let reply = Client::new()
        .get(&gw.url("/limited/x"), &[])
        .await
        .expect("response");
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.header("ratelimit").is_some(), "the module serves");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_never_compiled_serves_its_baseline_build_then_its_optimized_one() {
    let (gw, _echo) = stamp_gateway().await;
    let client = Client::new();
    let mut events = gw.events();
    let v2 = std::fs::read(fixtures::STAMP_V2).expect("fixture");
    gw.install("stamp", &v2).expect("install");

    // First the baseline (Winch) build goes live, never seen before...
    let first = next_event(&mut events, &Trigger::Plugin("stamp".into()), RELOAD_BOUND)
        .await
        .expect("the watcher loads it");
    let Outcome::Applied { generation: g1, .. } = first.outcome else {
        panic!("{first:?}");
    };
    assert!(logged(&["plugin module loaded", "stamp", "tier=Baseline"]));
    let baseline = Arc::downgrade(&serving(&gw.handle));
    // ...then the optimized (Cranelift) build takes its place.
    let second = next_event(
        &mut events,
        &Trigger::Optimized("stamp".into()),
        RELOAD_BOUND,
    )
    .await
    .expect("the optimized build arrives");
    let Outcome::Applied { generation: g2, .. } = second.outcome else {
        panic!("{second:?}");
    };
    assert!(g2 > g1);
    assert_eq!(serving(&gw.handle).tier, Tier::Optimized);
    assert_eq!(stamp_of(&client, &gw).await.as_deref(), Some("v2"));
    // The baseline build, its code and its instances are freed once the
    // requests that started on it are done.
    let deadline = Instant::now() + RELOAD_BOUND;
    while baseline.strong_count() > 0 {
        assert!(
            Instant::now() < deadline,
            "the baseline build is never freed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_baseline_compiler_off_a_new_module_goes_live_optimized() {
    let echo = Echo::start_local().await.expect("echo starts");
    let config = stamp_config(&echo).replace(
        "tick_interval_ms = 20\n",
        "tick_interval_ms = 20\nbaseline_compiler = false\n",
    );
    assert!(config.contains("baseline_compiler = false"));
    let gw = TestGateway::start(&config, &[("stamp", fixtures::STAMP_V1)])
        .await
        .expect("gateway starts");
    assert_eq!(serving(&gw.handle).tier, Tier::Optimized);
    let client = Client::new();
    let mut events = gw.events();
    let v2 = std::fs::read(fixtures::STAMP_V2).expect("fixture");
    gw.install("stamp", &v2).expect("install");
    let event = next_event(&mut events, &Trigger::Plugin("stamp".into()), RELOAD_BOUND)
        .await
        .expect("the watcher loads it");
    assert!(
        matches!(event.outcome, Outcome::Applied { .. }),
        "{event:?}"
    );
    // The first generation with v2 already has its optimized build.
    assert_eq!(serving(&gw.handle).tier, Tier::Optimized);
    assert_eq!(stamp_of(&client, &gw).await.as_deref(), Some("v2"));
    gw.stop().await;
}
