//! How long a module update takes: from the moment the new file is in place
//! (renamed into the plugin directory) to the first response served by the
//! new version, through the real watcher and a running gateway.
//!
//! Two cases, side by side:
//! * `new build`: content never seen before (a unique custom section is
//!   appended), so it is compiled: its baseline (Winch) build goes live,
//!   then its optimized build, which mostly hits Cranelift's incremental
//!   cache (the functions of the build it replaces), replaces it; the
//!   common case of a policy update. Each round waits for the optimized
//!   build before the next;
//! * `cached module`: content compiled before, loaded from the on-disk cache.
//!
//! It also times a module never seen before going live through the watcher
//! (`key_auth`, 270 KB, and `jwt_auth`, 1.6 MB): file renamed into place to
//! its baseline (Winch) build serving, and to its optimized (Cranelift)
//! build replacing it; and a cold Cranelift compile (a fresh engine,
//! nothing cached) of each fixture, what the first load cost before the
//! baseline compiler.
//!
//! Run: `cargo bench -p portcullis-tests --bench reload`.

use std::time::{Duration, Instant};

use portcullis::plugin::PluginEngine;
use portcullis::plugin::engine::EngineLimits;
use portcullis::registry::{Outcome, ReloadEvent, Trigger};
use portcullis_tests::echo::Echo;
use portcullis_tests::{Client, TestGateway, base_config, fixtures, next_event, route};

const ROUNDS: usize = 15;

/// Appends a custom section (id 0) named `portcullis-bench` holding `n`, so
/// the module's content hash is new while its behaviour is unchanged.
fn unique(module: &[u8], n: usize) -> Vec<u8> {
    let name = b"portcullis-bench";
    let payload = n.to_le_bytes();
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    let mut out = module.to_vec();
    out.push(0);
    out.push(section.len() as u8);
    out.extend_from_slice(&section);
    out
}

async fn wait_for_stamp(client: &Client, gw: &TestGateway, want: &str) -> Duration {
    let started = Instant::now();
    loop {
        let reply = client.get(&gw.url("/x"), &[]).await.expect("response");
        assert_eq!(reply.status, 200);
        if reply.header("x-stamp") == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no reload after 10 s"
        );
    }
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<16} n={:<3} min {:>7.1} ms  median {:>7.1} ms  p90 {:>7.1} ms  max {:>7.1} ms",
        samples.len(),
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() * 9 / 10]),
        ms(samples[samples.len() - 1]),
    );
}

/// Waits for the optimized build of `name` to go live.
async fn optimized_build(events: &mut tokio::sync::broadcast::Receiver<ReloadEvent>, name: &str) {
    let trigger = Trigger::Optimized(name.to_owned());
    next_event(events, &trigger, Duration::from_secs(60))
        .await
        .expect("the optimized build follows");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let echo = Echo::start_local().await.expect("echo starts");
    let config = format!(
        "{}\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"echo\"\nplugins = [{{ name = \"stamp\" }}]\n",
        base_config(echo.addr)
    );
    let gw = TestGateway::start(&config, &[("stamp", fixtures::STAMP_V1)])
        .await
        .expect("gateway starts");
    let client = Client::new();
    let v1 = std::fs::read(fixtures::STAMP_V1).expect("v1");
    let v2 = std::fs::read(fixtures::STAMP_V2).expect("v2");

    let mut fresh = Vec::new();
    let mut cached = Vec::new();
    for round in 0..ROUNDS {
        // New content each time: compiled.
        let (bytes, want) = if round % 2 == 0 {
            (&v2, "v2")
        } else {
            (&v1, "v1")
        };
        let mut events = gw.events();
        gw.install("stamp", &unique(bytes, round)).expect("install");
        fresh.push(wait_for_stamp(&client, &gw, want).await);
        // Its optimized build compiles in the background: wait for it, so
        // that rounds measure one update each, not the one before too.
        optimized_build(&mut events, "stamp").await;
    }
    // Alternate two modules already compiled: cache hits.
    let known = [unique(&v1, 1000), unique(&v2, 1001)];
    for (bytes, want) in known.iter().zip(["v1", "v2"]) {
        let mut events = gw.events();
        gw.install("stamp", bytes).expect("install");
        wait_for_stamp(&client, &gw, want).await;
        optimized_build(&mut events, "stamp").await;
    }
    for round in 0..ROUNDS {
        let (bytes, want) = if round % 2 == 0 {
            (&known[0], "v1")
        } else {
            (&known[1], "v2")
        };
        gw.install("stamp", bytes).expect("install");
        cached.push(wait_for_stamp(&client, &gw, want).await);
    }
    gw.stop().await;

    // Never-seen modules through the watcher: the baseline build, then the
    // optimized one.
    let jwks = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/keys/jwks.json"
    ))
    .expect("example JWKS");
    let jwt_config = format!("algorithms = [\"RS256\"]\njwks = '''{jwks}'''");
    let routes = route(
        "keys",
        "/keys",
        &[("key_auth", r#"keys = [{ consumer = "c", key = "k" }]"#)],
    ) + &route("tokens", "/tokens", &[("jwt_auth", &jwt_config)]);
    let gw = TestGateway::start(
        &format!("{}{routes}", base_config(echo.addr)),
        &[
            ("key_auth", fixtures::KEY_AUTH),
            ("jwt_auth", fixtures::JWT_AUTH),
        ],
    )
    .await
    .expect("gateway starts");
    let mut never_seen = Vec::new();
    for (name, path) in [
        ("key_auth", fixtures::KEY_AUTH),
        ("jwt_auth", fixtures::JWT_AUTH),
    ] {
        let bytes = std::fs::read(path).expect("fixture");
        let (mut live, mut optimized) = (Vec::new(), Vec::new());
        for round in 0..5 {
            let mut events = gw.events();
            let started = Instant::now();
            gw.install(name, &unique(&bytes, 2000 + round))
                .expect("install");
            let trigger = Trigger::Plugin(name.to_owned());
            let event = next_event(&mut events, &trigger, Duration::from_secs(30))
                .await
                .expect("it goes live");
            assert!(
                matches!(event.outcome, Outcome::Applied { .. }),
                "{event:?}"
            );
            live.push(started.elapsed());
            optimized_build(&mut events, name).await;
            optimized.push(started.elapsed());
        }
        never_seen.push((name, bytes.len(), live, optimized));
    }
    gw.stop().await;

    let mut cold = Vec::new();
    for (name, path) in [
        ("key_auth", fixtures::KEY_AUTH),
        ("stamp", fixtures::STAMP_V1),
        ("misbehave", fixtures::MISBEHAVE),
    ] {
        let bytes = std::fs::read(path).expect("fixture");
        let mut samples = Vec::new();
        for _ in 0..3 {
            let engine = PluginEngine::new(EngineLimits {
                memory_mib: 16,
                timeout_ms: 100,
                max_instances: 4,
            })
            .expect("engine");
            let started = Instant::now();
            engine.compile(name, &bytes, None).expect("compiles");
            samples.push(started.elapsed());
        }
        cold.push((name, bytes.len(), samples));
    }

    println!("reload latency, file renamed into place -> first response from the new version");
    summary("new build", fresh);
    summary("cached module", cached);
    println!("a module never seen, renamed into place -> its generation is live");
    for (name, size, live, optimized) in never_seen {
        summary(&format!("{name} {}K", size / 1024), live);
        summary("  optimized", optimized);
    }
    println!("cold Cranelift compile of a module never seen (fresh engine, no cache)");
    for (name, size, samples) in cold {
        summary(&format!("{name} {}K", size / 1024), samples);
    }
}
