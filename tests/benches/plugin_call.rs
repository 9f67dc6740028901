//! Per-call cost of plugins, measured on a pooled, initialised instance the
//! way the pipeline calls them: take an instance, `on-request` with a request of 12
//! headers, apply nothing, give back. `noop` does nothing in either phase:
//! its figures are the cost of a call itself.
//!
//! Run: `cargo bench -p portcullis-tests --bench plugin_call`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::plugin::engine::EngineLimits;
use portcullis::plugin::view::{BodyView, RequestView, ResponseView};
use portcullis::plugin::{CallLimits, HostServices, PluginEngine, PluginPool, RequestAction};
use portcullis_tests::bench::{api_request, engine, ok_response};
use portcullis_tests::fixtures;
use sha2::{Digest, Sha256};
use tokio::runtime::Runtime;

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
        CallLimits::with_timeout(engine.limits().timeout_ms),
    )
    .await
    .expect("init")
}

/// Times `iters` calls of `on-request` with `view`, the way the pipeline
/// makes them (take an instance, call, give it back), inside one runtime
/// entry.
fn run(
    rt: &Runtime,
    pool: &Arc<PluginPool>,
    view: &mut Option<Box<RequestView>>,
    iters: u64,
    expect_reply: Option<bool>,
) -> Duration {
    rt.block_on(async {
        let started = Instant::now();
        for _ in 0..iters {
            let (v, result) = pool.on_request(view.take().expect("view")).await;
            if let Some(reply) = expect_reply {
                assert_eq!(matches!(result, Ok(RequestAction::Respond(_))), reply);
            }
            *view = Some(v);
            black_box(&result);
        }
        started.elapsed()
    })
}

/// Times `iters` calls of `on-response` with `views`, as [`run`] does
/// `on-request`.
fn run_response(
    rt: &Runtime,
    pool: &Arc<PluginPool>,
    views: &mut Option<(Box<RequestView>, Box<ResponseView>)>,
    iters: u64,
) -> Duration {
    rt.block_on(async {
        let started = Instant::now();
        for _ in 0..iters {
            let (request, response) = views.take().expect("views");
            let (request, response, result) = pool.on_response(request, response).await;
            assert!(result.is_ok(), "{result:?}");
            *views = Some((request, response));
            black_box(&result);
        }
        started.elapsed()
    })
}

/// A request like a typical API call: 12 headers, the last `x-api-key`.
fn request(api_key: Option<&str>) -> RequestView {
    api_request(
        "GET",
        "/api/v1/orders/1234?expand=items&limit=20",
        &[("x-api-key", api_key.unwrap_or("-"))],
        None,
        BodyView::NotRequested,
    )
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let (engine, services) = engine(
        EngineLimits {
            memory_mib: 64,
            timeout_ms: 100,
            // One instance per pool; small enough for valgrind (callgrind)
            // to grant the pooling allocator its reservation.
            max_instances: 4,
        },
        1024,
    );
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
    let noop = rt.block_on(pool(&engine, &services, "noop", fixtures::NOOP, "{}"));

    let mut group = c.benchmark_group("on_request");
    let mut view = Some(Box::new(request(Some(key))));
    group.bench_function("key_auth valid key", |b| {
        b.iter_custom(|iters| run(&rt, &key_auth, &mut view, iters, Some(false)))
    });
    let mut view = Some(Box::new(request(Some("wrong-key"))));
    group.bench_function("key_auth wrong key (401)", |b| {
        b.iter_custom(|iters| run(&rt, &key_auth, &mut view, iters, Some(true)))
    });
    let mut view = Some(Box::new(request(None)));
    group.bench_function("stamp (sets one header)", |b| {
        b.iter_custom(|iters| run(&rt, &stamp, &mut view, iters, None))
    });
    let mut view = Some(Box::new(request(None)));
    group.bench_function("noop (the call alone)", |b| {
        b.iter_custom(|iters| run(&rt, &noop, &mut view, iters, Some(false)))
    });
    group.finish();

    let mut group = c.benchmark_group("on_response");
    let mut views = Some((Box::new(request(None)), Box::new(ok_response())));
    group.bench_function("noop (the call alone)", |b| {
        b.iter_custom(|iters| run_response(&rt, &noop, &mut views, iters))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
