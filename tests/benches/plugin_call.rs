//! Per-call cost of plugins, measured on a pooled, initialised instance the
//! way the pipeline calls them: lease, `on-request` with a request of 12
//! headers, apply nothing, give back.
//!
//! Run: `cargo bench -p portcullis-tests --bench plugin_call`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use portcullis::alerts;
use portcullis::clock::{Clock, SystemClock};
use portcullis::plugin::engine::EngineLimits;
use portcullis::plugin::view::{BodyView, RequestView};
use portcullis::plugin::{HostServices, PluginEngine, PluginPool, RequestAction};
use portcullis::state::SharedStore;
use portcullis_tests::fixtures;
use sha2::{Digest, Sha256};
use tokio::runtime::Runtime;

fn engine() -> (Arc<PluginEngine>, Arc<HostServices>) {
    let engine = PluginEngine::new(EngineLimits {
        memory_mib: 64,
        timeout_ms: 100,
        max_instances: 16,
    })
    .expect("engine");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (alerts, rx) = alerts::queue(16);
    std::mem::forget(rx);
    let services = HostServices {
        store: Arc::new(SharedStore::new(1024, clock.clone())),
        alerts,
        clock,
    };
    (Arc::new(engine), Arc::new(services))
}

async fn pool(
    engine: &Arc<PluginEngine>,
    services: &Arc<HostServices>,
    name: &str,
    path: &str,
    config: &str,
) -> Arc<PluginPool> {
    let bytes = std::fs::read(path).expect("fixture");
    let compiled = engine.compile(name, &bytes, None).expect("compiles");
    PluginPool::new(
        engine.clone(),
        Arc::new(compiled),
        "bench".into(),
        config.into(),
        services.clone(),
    )
    .await
    .expect("init")
}

/// Times `iters` calls of `on-request` with `view`, the way the pipeline
/// makes them (lease, call, give back), inside one runtime entry.
fn run(
    rt: &Runtime,
    pool: &Arc<PluginPool>,
    view: &mut Option<RequestView>,
    iters: u64,
    expect_reply: Option<bool>,
) -> Duration {
    rt.block_on(async {
        let started = Instant::now();
        for _ in 0..iters {
            let mut lease = pool.lease().await.expect("lease");
            let (v, result) = lease.on_request(view.take().expect("view")).await;
            if let Some(reply) = expect_reply {
                assert_eq!(matches!(result, Ok(RequestAction::Respond(_))), reply);
            }
            *view = Some(v);
            black_box(&result);
        }
        started.elapsed()
    })
}

/// A request like a typical API call: 12 headers.
fn request(api_key: Option<&str>) -> RequestView {
    let mut builder = Request::builder()
        .method("GET")
        .uri("/api/v1/orders/1234?expand=items&limit=20")
        .header("host", "api.example.com")
        .header("user-agent", "curl/8.5.0")
        .header("accept", "application/json")
        .header("accept-encoding", "gzip, deflate, br")
        .header("accept-language", "en-US,en;q=0.9")
        .header("cache-control", "no-cache")
        .header("connection", "keep-alive")
        .header("x-request-id", "7f9c2ba4-e88f-4c1b-9a5e-3d2f1c0b8a71")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("cookie", "session=abc123; theme=dark")
        .header("x-forwarded-for", "198.51.100.23");
    builder = builder.header("x-api-key", api_key.unwrap_or("-"));
    let (head, ()) = builder.body(()).expect("request").into_parts();
    RequestView {
        head,
        client_ip: "198.51.100.23".parse().expect("ip"),
        route: "bench".into(),
        identity: None,
        attributes: Vec::new(),
        body: BodyView::NotRequested,
    }
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let (engine, services) = engine();
    let key = "bench-key-0123456789";
    let key_config = format!(
        r#"{{"keys":[{{"consumer":"bench","sha256":"{}"}},{{"consumer":"other","sha256":"{}"}}]}}"#,
        hex::encode(Sha256::digest(key.as_bytes())),
        hex::encode(Sha256::digest(b"other-key"))
    );
    let key_auth = rt.block_on(pool(
        &engine,
        &services,
        "key_auth",
        fixtures::KEY_AUTH,
        &key_config,
    ));
    let stamp = rt.block_on(pool(&engine, &services, "stamp", fixtures::STAMP_V1, "{}"));

    let mut group = c.benchmark_group("on_request");
    let mut view = Some(request(Some(key)));
    group.bench_function("key_auth valid key", |b| {
        b.iter_custom(|iters| run(&rt, &key_auth, &mut view, iters, Some(false)))
    });
    let mut view = Some(request(Some("wrong-key")));
    group.bench_function("key_auth wrong key (401)", |b| {
        b.iter_custom(|iters| run(&rt, &key_auth, &mut view, iters, Some(true)))
    });
    let mut view = Some(request(None));
    group.bench_function("stamp (sets one header)", |b| {
        b.iter_custom(|iters| run(&rt, &stamp, &mut view, iters, None))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
