//! A route's whole plugin chain, in process: the request phase, a stand-in
//! upstream answering 200 with 1 KiB, and the response phase, through
//! `pipeline::run_chain`, the same steps a request from a client takes
//! (applying each plugin's changes, the response phase in reverse order),
//! without sockets on either side. The chains are those the `bench/`
//! harness measures against nginx: `key_auth` alone, and `alerts`,
//! `key_auth`, `rate_limit` and `rewrite`.
//!
//! Run: `cargo bench -p portcullis-tests --bench chain`.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Response, StatusCode};
use portcullis::body;
use portcullis::config::Config;
use portcullis::pipeline;
use portcullis::plugin::engine::EngineLimits;
use portcullis::plugin::view::BodyView;
use portcullis::registry::Registry;
use portcullis_tests::bench::{api_request, engine};
use portcullis_tests::{fixtures, sha256_hex};
use tokio::runtime::Runtime;

const KEY: &str = "bench-key-0123456789";

/// The bench harness's chains (`bench/src/cases.rs`), as routes.
fn config(dir: &std::path::Path) -> String {
    format!(
        r#"
state_directory = "{dir}/state"

[plugins]
directory = "{dir}/plugins"
baseline_compiler = false

[log]
access_log = false

[upstreams.bench]
servers = ["127.0.0.1:9"]

[[routes]]
name = "key_auth"
path_prefix = "/one"
upstream = "bench"
[[routes.plugins]]
name = "key_auth"
[routes.plugins.config]
keys = [{{ consumer = "bench", sha256 = "{key}", roles = ["member"] }}]

[[routes]]
name = "four"
path_prefix = "/four"
upstream = "bench"
[[routes.plugins]]
name = "alerts"
[routes.plugins.config.auth_failures]
threshold = 5
window_s = 60
[[routes.plugins]]
name = "key_auth"
[routes.plugins.config]
keys = [{{ consumer = "bench", sha256 = "{key}", roles = ["member"] }}]
[[routes.plugins]]
name = "rate_limit"
[routes.plugins.config]
by = ["consumer"]
limits = [{{ rate = 1000000, per = "second" }}]
[[routes.plugins]]
name = "rewrite"
[routes.plugins.config.request_headers]
set = {{ x-gateway = "portcullis" }}
[routes.plugins.config.response_headers]
set = {{ cache-control = "no-store" }}
"#,
        dir = dir.display(),
        key = sha256_hex(KEY.as_bytes()),
    )
}

/// The upstream's answer: 200, JSON, 1 KiB.
fn upstream(_: http::request::Parts, _: body::ProxyBody) -> Response<body::ProxyBody> {
    static BODY: [u8; 1024] = [b'x'; 1024];
    let mut response = Response::new(body::full(Bytes::from_static(&BODY)));
    let headers = response.headers_mut();
    headers.insert("content-type", "application/json".parse().expect("value"));
    headers.insert("content-length", "1024".parse().expect("value"));
    response
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    for (name, fixture) in [
        ("alerts", fixtures::ALERTS),
        ("key_auth", fixtures::KEY_AUTH),
        ("rate_limit", fixtures::RATE_LIMIT),
        ("rewrite", fixtures::REWRITE),
    ] {
        std::fs::copy(fixture, plugins.join(format!("{name}.wasm"))).expect("copy fixture");
    }
    let config_path = dir.path().join("portcullis.toml");
    let text = config(dir.path());
    std::fs::write(&config_path, &text).expect("write config");
    let config = Config::parse(&text).expect("config");
    let (engine, services) = engine(
        EngineLimits {
            memory_mib: 64,
            timeout_ms: 100,
            // One instance per pool (five pools), and small enough for valgrind
            // (callgrind) to grant the pooling allocator its reservation.
            max_instances: 6,
        },
        1 << 20,
    );
    let registry = rt
        .block_on(async {
            tokio::task::spawn_blocking(move || {
                Registry::start(config, config_path, engine, services)
            })
            .await
        })
        .expect("join")
        .expect("registry");
    let generation = registry.current();

    let mut group = c.benchmark_group("chain");
    for (name, route) in [
        ("key_auth", "key_auth"),
        ("alerts + key_auth + rate_limit + rewrite", "four"),
    ] {
        let route = generation
            .routes
            .iter()
            .find(|r| &*r.name == route)
            .expect("route");
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let mut view = api_request(
                        "GET",
                        "/four/orders/1234?expand=items",
                        &[("x-api-key", KEY)],
                        None,
                        BodyView::NotRequested,
                    );
                    view.route = Arc::clone(&route.name);
                    (view, body::empty())
                },
                |(view, body)| {
                    let response = rt
                        .block_on(pipeline::run_chain(
                            &generation,
                            route,
                            view,
                            body,
                            upstream,
                        ))
                        .expect("chain");
                    assert_eq!(response.status(), StatusCode::OK);
                    response
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
