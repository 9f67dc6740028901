//! Which WIT shape is cheaper for handing a request to a plugin that reads
//! one header: a record holding the whole request (every header copied into
//! guest memory on every call) or a resource the plugin queries?
//!
//! The fixture `tests/fixtures/shape-probe` makes the same decision both
//! ways. The record is built from the request's `HeaderMap` on each call,
//! as the gateway would have to. This is the measurement behind the shape of
//! `wit/policy.wit` (see `docs/plugins.md`).
//!
//! Run: `cargo bench -p portcullis-tests --bench shape`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod probe {
    wasmtime::component::bindgen!({
        path: "fixtures/shape-probe/probe.wit",
        world: "probe",
        with: { "portcullis:shape-probe/req.request": super::RequestHandle },
    });
}

/// The same bindings with async exports, as the gateway calls plugins
/// (`call_async` on a fiber), to price the async call itself.
mod probe_async {
    wasmtime::component::bindgen!({
        path: "fixtures/shape-probe/probe.wit",
        world: "probe",
        with: { "portcullis:shape-probe/req": super::probe::portcullis::shape_probe::req },
        exports: { default: async },
    });
}

use probe::portcullis::shape_probe::req;

pub struct RequestHandle;

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    headers: HeaderMap,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl req::Host for State {}

impl req::HostRequest for State {
    fn header(&mut self, _: Resource<RequestHandle>, name: String) -> Option<String> {
        self.headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    fn drop(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<()> {
        Ok(())
    }
}

fn headers(n: usize) -> HeaderMap {
    let mut h = HeaderMap::new();
    for i in 0..n.saturating_sub(1) {
        let name: http::HeaderName = format!("x-header-{i}").parse().expect("name");
        h.insert(
            name,
            "some typical header value, 40 bytes long"
                .parse()
                .expect("value"),
        );
    }
    h.insert("x-api-key", "bench-key-0123456789".parse().expect("value"));
    h
}

fn record(h: &HeaderMap) -> probe::RequestRecord {
    probe::RequestRecord {
        method: "GET".into(),
        path: "/api/v1/orders/1234".into(),
        query: Some("expand=items".into()),
        headers: h
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        client_ip: "198.51.100.23".into(),
        route: "bench".into(),
    }
}

fn bench(c: &mut Criterion) {
    let mut config = Config::new();
    config.wasm_component_model(true);
    let engine = Engine::new(&config).expect("engine");
    let bytes = std::fs::read(portcullis_tests::fixtures::SHAPE_PROBE).expect("fixture");
    let component = Component::new(&engine, bytes).expect("compiles");
    let mut linker = Linker::<State>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("wasi");
    probe::Probe::add_to_linker::<_, HasSelf<State>>(&mut linker, |s| s).expect("probe imports");

    let mut group = c.benchmark_group("shape");
    for n in [4usize, 12, 32] {
        let mut store = Store::new(
            &engine,
            State {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
                headers: headers(n),
            },
        );
        let instance =
            probe::Probe::instantiate(&mut store, &component, &linker).expect("instance");
        group.bench_with_input(BenchmarkId::new("record", n), &n, |b, _| {
            b.iter(|| {
                let r = record(&store.data().headers);
                let found = instance.call_by_record(&mut store, &r).expect("call");
                assert!(black_box(found));
            })
        });
        group.bench_with_input(BenchmarkId::new("resource", n), &n, |b, _| {
            b.iter(|| {
                let found = instance
                    .call_by_resource(&mut store, Resource::new_borrow(0))
                    .expect("call");
                assert!(black_box(found));
            })
        });
    }
    group.finish();

    // Sync versus async call of the same export, 12 headers.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut linker = Linker::<State>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
    probe_async::Probe::add_to_linker::<_, HasSelf<State>>(&mut linker, |s| s)
        .expect("probe imports");
    let mut store = Store::new(
        &engine,
        State {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            headers: headers(12),
        },
    );
    let instance = rt
        .block_on(probe_async::Probe::instantiate_async(
            &mut store, &component, &linker,
        ))
        .expect("instance");
    c.bench_function("shape/resource/12 call_async", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = std::time::Instant::now();
                for _ in 0..iters {
                    let found = instance
                        .call_by_resource(&mut store, Resource::new_borrow(0))
                        .await
                        .expect("call");
                    assert!(black_box(found));
                }
                started.elapsed()
            })
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
