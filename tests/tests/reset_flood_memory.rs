//! A rapid-reset flood (CVE-2023-44487) does not grow the gateway's
//! memory: each flooding connection is closed after
//! `max_pending_accept_reset_streams` resets, and what it held is freed.
//! Its own test binary, so no other test allocates in the process while the
//! resident set is read.

use std::sync::Arc;

use portcullis_tests::echo::Echo;
use portcullis_tests::{Client, TestGateway, base_config, h2, route};

/// Resident set of this process (the gateway runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Floods from `connections` connections, `at_once` at a time; returns how
/// many were closed with GOAWAY ENHANCE_YOUR_CALM.
async fn flood(
    gw: &TestGateway,
    flood: &Arc<Vec<u8>>,
    connections: usize,
    at_once: usize,
) -> usize {
    let mut calmed = 0;
    for _ in 0..connections / at_once {
        let batch: Vec<_> = (0..at_once)
            .map(|_| {
                let (addr, flood) = (gw.addr, flood.clone());
                tokio::spawn(async move { h2::send_flood(addr, &flood).await })
            })
            .collect();
        for attacker in batch {
            let received = attacker.await.expect("attacker task");
            if h2::goaway_code(&received) == Some(0xb) {
                calmed += 1;
            }
        }
    }
    calmed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sustained_reset_flood_does_not_grow_memory() {
    let echo = Echo::start_local().await.expect("echo");
    let config = format!(
        "{}{}",
        base_config(echo.addr).replace(
            "address = \"127.0.0.1:0\"\n",
            "address = \"127.0.0.1:0\"\nh2c = true\n"
        ),
        route("all", "/", &[])
    );
    let gw = TestGateway::start(&config, &[])
        .await
        .expect("gateway starts");
    let payload = Arc::new(h2::rapid_reset_flood(5000));

    // Warm up: allocator arenas, buffers and tasks reach their working size.
    assert_eq!(flood(&gw, &payload, 40, 10).await, 40);
    let before = rss_kib();
    // 400 more flooding connections, 2 million reset streams offered.
    assert_eq!(flood(&gw, &payload, 400, 10).await, 400);
    let after = rss_kib();
    let grown = after.saturating_sub(before);
    // A connection's state is a few KiB; a leak of one per connection, or
    // of the reset streams, would be far past this bound.
    assert!(
        grown < 16 * 1024,
        "the resident set grew by {grown} KiB over 400 flooding connections ({before} -> {after} KiB)"
    );
    eprintln!("resident set: {before} KiB before, {after} KiB after 400 flooding connections");
    // And the gateway still serves.
    Client::new()
        .get(&gw.url("/x"), &[])
        .await
        .expect("reply")
        .assert_ok();
    gw.stop().await;
}
