//! The four-plugin chain under many connections: alerts, key_auth,
//! rate_limit and rewrite on one route, `N` clients each sending requests
//! one after the other on its own keep-alive connection for a few seconds,
//! at 32, 256 and 1,024 connections. Counts every status: issue 11's target
//! is zero non-2xx (no 503 for want of instance slots, with the default
//! limits). Also prints the requests per second and the instances the
//! route's pools made.
//!
//! Run: `cargo bench -p portcullis-tests --bench chain_load`. Bounded: each
//! round runs `ROUND` and stops.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portcullis_tests::echo::Echo;
use portcullis_tests::{Client, TestGateway, base_config, fixtures, route, sha256_hex};

/// How long each round sends.
const ROUND: Duration = Duration::from_secs(4);
const KEY: &str = "bench-key-0123456789";

fn config(echo: &Echo) -> String {
    let key_auth = format!(
        r#"keys = [{{ consumer = "bench", sha256 = "{}", roles = ["member"] }}]"#,
        sha256_hex(KEY.as_bytes())
    );
    let rate_limit =
        r#"limits = [{ rate = 1000000, per = "second" }, { quota = 4000000000, per = "day" }]"#;
    let rewrite = r#"path = [{ strip_prefix = "/api" }]
request_headers = { set = { x-gateway = "portcullis" } }"#;
    // The default limits, as an operator would run them.
    base_config(echo.addr)
        .replace("max_instances = 64\n", "")
        .replace("plugin_memory_mib = 32\n", "")
        + &route(
            "api",
            "/api",
            &[
                ("alerts", ""),
                ("key_auth", &key_auth),
                ("rate_limit", rate_limit),
                ("rewrite", rewrite),
            ],
        )
        // Not the terminal's speed.
        + "\n[log]\naccess_log = false\n"
}

fn main() {
    let gateway_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("gateway runtime");
    let clients_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    let (gw, _echo) = gateway_rt.block_on(async {
        let echo = Echo::start_local().await.expect("echo starts");
        let plugins = [
            ("alerts", fixtures::ALERTS),
            ("key_auth", fixtures::KEY_AUTH),
            ("rate_limit", fixtures::RATE_LIMIT),
            ("rewrite", fixtures::REWRITE),
        ];
        let gw = TestGateway::start(&config(&echo), &plugins)
            .await
            .expect("gateway starts");
        (gw, echo)
    });
    let url = gw.url("/api/items");
    for connections in [32usize, 256, 1024] {
        let (statuses, sent, elapsed) = clients_rt.block_on(async {
            let stop = Arc::new(AtomicBool::new(false));
            let tasks: Vec<_> = (0..connections)
                .map(|_| {
                    let (stop, url) = (stop.clone(), url.clone());
                    tokio::spawn(async move {
                        // One client per task: its own keep-alive connection.
                        let client = Client::new();
                        let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
                        while !stop.load(Ordering::Relaxed) {
                            let status = match client.get(&url, &[("x-api-key", KEY)]).await {
                                Ok(reply) => reply.status.as_u16(),
                                Err(_) => 0,
                            };
                            *statuses.entry(status).or_default() += 1;
                        }
                        statuses
                    })
                })
                .collect();
            let started = Instant::now();
            tokio::time::sleep(ROUND).await;
            stop.store(true, Ordering::Relaxed);
            let mut all: BTreeMap<u16, u64> = BTreeMap::new();
            for task in tasks {
                for (status, n) in task.await.expect("client task") {
                    *all.entry(status).or_default() += n;
                }
            }
            let sent: u64 = all.values().sum();
            (all, sent, started.elapsed())
        });
        let non_2xx: u64 = statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, n)| n)
            .sum();
        let generation = gw.handle.registry().current();
        let idle: Vec<usize> = generation.routes[0]
            .chain
            .iter()
            .map(|l| l.pool.idle_count())
            .collect();
        println!(
            "{connections:>5} connections: {sent:>7} requests, {:>7.0} req/s, non-2xx {non_2xx} {statuses:?} (0 = connection error); idle instances per plugin {idle:?}",
            sent as f64 / elapsed.as_secs_f64()
        );
    }
    gateway_rt.block_on(gw.stop());
}
