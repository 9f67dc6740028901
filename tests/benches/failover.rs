//! Failover: what a client sees when one server of three dies, or hangs,
//! under load, and when it comes back. Eight clients send `GET /` one
//! request after another to a group of three [`Backend`]s (round-robin,
//! default retries and passive checks, active checks every second with
//! thresholds of 2); after 2 s one server is stopped (or stops answering),
//! after 6 s it is back. A third run hangs the server again, on a route
//! that waits 100 ms a try and retries a try that timed out.
//!
//! Reported per scenario: requests answered and failed (not 200), the time
//! from the failure to the gateway taking the server out (its health as
//! `Upstream::health` says), and from the recovery to the server's first
//! request.
//!
//! Run: `cargo bench -p portcullis-tests --bench failover`. Bounded: each
//! scenario runs 10 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portcullis_tests::backend::{Backend, Mode};
use portcullis_tests::{Client, TestGateway, base_config};

const CLIENTS: usize = 8;
const FAIL_AT: Duration = Duration::from_secs(2);
const RECOVER_AT: Duration = Duration::from_secs(6);
const RUN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
enum Failure {
    /// The process dies: connections reset, the port refuses.
    Killed,
    /// It accepts requests and never answers (the group's `timeout_ms`,
    /// 1 s here, runs out).
    Hung,
    /// It hangs, and the route waits 100 ms a try and retries a try that
    /// timed out (`upstream_timeout_ms`, `retries.on_timeout`).
    HungWithTryTimeout,
}

fn config(backends: &[Backend], failure: Failure) -> String {
    let route = match failure {
        Failure::HungWithTryTimeout => {
            "upstream_timeout_ms = 100\nretries = { on_timeout = true }\n"
        }
        Failure::Killed | Failure::Hung => "",
    };
    let servers: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!(
        "{base}\n[upstreams.pool]\nservers = [{servers}]\ntimeout_ms = 1000\n\
         health = {{ path = \"/healthz\", interval_ms = 1000, timeout_ms = 500, \
         healthy_threshold = 2, unhealthy_threshold = 2 }}\n\
         [log]\naccess_log = false\n\
         [[routes]]\nname = \"pool\"\npath_prefix = \"/\"\nupstream = \"pool\"\n{route}",
        base = base_config(backends[0].addr),
        servers = servers.join(", "),
    )
}

/// Whether the gateway has server `index` of the `pool` route's group out.
fn out(gw: &TestGateway, index: usize) -> bool {
    let generation = gw.handle.registry().current();
    generation
        .routes
        .iter()
        .find(|r| &*r.name == "pool")
        .and_then(|r| r.upstream.health().get(index).cloned())
        .is_some_and(|s| !s.up || s.ejected_for_ms > 0)
}

async fn scenario(failure: Failure) {
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        backends.push(Backend::start(name, None).await.expect("backend starts"));
    }
    let gw = TestGateway::start(&config(&backends, failure), &[])
        .await
        .expect("gateway starts");
    let url = gw.url("/");
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (url, stop, answered, failed) =
            (url.clone(), stop.clone(), answered.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let client = Client::new();
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url, &[]).await {
                    Ok(reply) if reply.status == 200 => answered.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    let start = Instant::now();
    tokio::time::sleep(FAIL_AT).await;
    let b = &backends[1];
    let failed_at = Instant::now();
    match failure {
        Failure::Killed => b.stop().await,
        Failure::Hung | Failure::HungWithTryTimeout => b.set_mode(Mode::Hang),
    }
    let mut out_after = None;
    while failed_at.elapsed() < RECOVER_AT - FAIL_AT {
        if out_after.is_none() && out(&gw, 1) {
            out_after = Some(failed_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let recovered_at = Instant::now();
    let before = b.requests();
    match failure {
        Failure::Killed => b.restart().await.expect("restart"),
        Failure::Hung | Failure::HungWithTryTimeout => b.set_mode(Mode::Ok),
    }
    let mut back_after = None;
    while start.elapsed() < RUN {
        if back_after.is_none() && b.requests() > before {
            back_after = Some(recovered_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    let ms = |d: Option<Duration>| {
        d.map_or_else(
            || "never".into(),
            |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0),
        )
    };
    println!(
        "{failure:?}: {} answered, {} failed; out {} after the failure; first request {} after the recovery",
        answered.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        ms(out_after),
        ms(back_after),
    );
    gw.stop().await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        scenario(Failure::Killed).await;
        scenario(Failure::Hung).await;
        scenario(Failure::HungWithTryTimeout).await;
    });
}
