//! What keys and answers from an identity provider cost, side by side in
//! one run, against the local provider of the tests (tests/src/idp.rs) on
//! 127.0.0.1:
//!
//! - `cached`: one `on-request` call on a pooled instance, for a token the
//!   plugin has already checked: jwt_auth with the same JWKS inline and
//!   from `jwks_url` (whose cached path adds a look at the shared document
//!   once a second), the same with `jwks_max_stale_seconds` (the keys' age
//!   checked on every request), and oauth2_introspection with its answer in the store
//!   (a SHA-256 of the token, a store read, a JSON parse), beside key_auth.
//! - `refresh`: a new pool (instantiate and `init`) of jwt_auth with the
//!   JWKS inline and with it fetched from `jwks_url` (a URL never seen, so
//!   the store has nothing and `init` fetches, parses and shares it: what a
//!   refresh costs, plus what the inline case also pays).
//!
//! Run: `cargo bench -p portcullis-tests --bench identity`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::config::OutboundConfig;
use portcullis::plugin::engine::EngineLimits;
use portcullis::plugin::view::BodyView;
use portcullis::plugin::{
    CallLimits, CompiledPlugin, HostServices, Outbound, PluginEngine, PluginPool, PoolRole,
    RequestAction,
};
use portcullis_tests::bench::{api_request, engine};
use portcullis_tests::fixtures;
use portcullis_tests::idp::{Idp, IdpState};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::runtime::Runtime;

fn data(name: &str) -> String {
    let path = format!("{}/tests/data/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A pool of `fixture` with `config`, granted `idp`'s origin.
fn pool(
    rt: &Runtime,
    engine: &Arc<PluginEngine>,
    services: &Arc<HostServices>,
    module: &Arc<CompiledPlugin>,
    idp: &Idp,
    config: String,
) -> Arc<PluginPool> {
    let grant = OutboundConfig {
        allow: vec![idp.origin()],
        private_hosts: Vec::new(),
        max_redirects: 0,
        timeout_ms: 5_000,
        max_response_bytes: 1 << 20,
        max_concurrent: 16,
        ca: None,
    };
    let outbound = Outbound::new(
        module.name.clone(),
        "bench".into(),
        &grant,
        &services.metrics,
        engine,
    )
    .expect("grant");
    let role = PoolRole {
        shadow: false,
        outbound: Some(outbound),
    };
    rt.block_on(PluginPool::with_role(
        engine.clone(),
        module.clone(),
        "bench".into(),
        config,
        services.clone(),
        CallLimits::with_timeout(1000),
        role,
    ))
    .unwrap_or_else(|e| panic!("{}: init: {e}", module.name))
}

/// Times `iters` `on-request` calls with `authorization`, each passing.
fn calls(rt: &Runtime, pool: &Arc<PluginPool>, header: &(&str, String), iters: u64) -> Duration {
    rt.block_on(async {
        let mut request = Some(Box::new(api_request(
            "GET",
            "/api/orders",
            &[(header.0, header.1.as_str())],
            None,
            BodyView::NotRequested,
        )));
        let started = Instant::now();
        for _ in 0..iters {
            let (view, result) = pool.on_request(request.take().expect("view")).await;
            assert!(
                matches!(result, Ok(RequestAction::Continue(_))),
                "{result:?}"
            );
            request = Some(black_box(view));
        }
        started.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let jwks = data("jwks.json");
    let idp = rt.block_on(Idp::start(IdpState {
        jwks: jwks.clone(),
        cache_control: Some("max-age=3600".into()),
        client: ("gateway".into(), "secret".into()),
        tokens: [(
            "opaque-token".to_owned(),
            json!({ "active": true, "sub": "alice", "scope": "orders:read", "exp": now + 86_400 }),
        )]
        .into_iter()
        .collect(),
        ..IdpState::default()
    }));
    let (engine, services) = engine(
        EngineLimits {
            memory_mib: 64,
            timeout_ms: 1000,
            max_instances: 64,
        },
        1 << 20,
    );
    let compile = |name: &str, fixture: &str| {
        let bytes = std::fs::read(fixture).expect("fixture");
        Arc::new(engine.compile(name, &bytes, None).expect("compiles"))
    };
    let jwt = compile("jwt_auth", fixtures::JWT_AUTH);
    let introspection = compile("oauth2_introspection", fixtures::OAUTH2_INTROSPECTION);
    let key_auth = compile("key_auth", fixtures::KEY_AUTH);

    let token = {
        let key = EncodingKey::from_rsa_pem(data("rsa_private.pem").as_bytes()).expect("key");
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        let claims = json!({ "sub": "alice", "iss": "https://idp.example", "exp": now + 86_400 });
        jsonwebtoken::encode(&header, &claims, &key).expect("signs")
    };
    let bearer = ("authorization", format!("Bearer {token}"));
    let jwt_config = |keys: serde_json::Value| {
        let mut config = json!({ "algorithms": ["RS256"], "issuer": "https://idp.example" });
        if let (Some(config), Some(keys)) = (config.as_object_mut(), keys.as_object()) {
            config.extend(keys.clone());
        }
        config.to_string()
    };
    let inline = jwt_config(json!({ "jwks": jwks }));
    let fetched = |url: String| jwt_config(json!({ "jwks_url": url }));

    let mut group = c.benchmark_group("cached");
    let key_pool = pool(
        &rt,
        &engine,
        &services,
        &key_auth,
        &idp,
        json!({ "keys": [{ "consumer": "alice", "sha256": hex::encode(Sha256::digest(b"bench-key")) }] })
            .to_string(),
    );
    let key_header = ("x-api-key", "bench-key".to_owned());
    group.bench_function("key_auth", |b| {
        b.iter_custom(|iters| calls(&rt, &key_pool, &key_header, iters))
    });
    let inline_pool = pool(&rt, &engine, &services, &jwt, &idp, inline.clone());
    group.bench_function("jwt_auth, JWKS inline", |b| {
        b.iter_custom(|iters| calls(&rt, &inline_pool, &bearer, iters))
    });
    let url_pool = pool(
        &rt,
        &engine,
        &services,
        &jwt,
        &idp,
        fetched(idp.url("/jwks")),
    );
    group.bench_function("jwt_auth, jwks_url", |b| {
        b.iter_custom(|iters| calls(&rt, &url_pool, &bearer, iters))
    });
    let bounded = jwt_config(json!({
        "jwks_url": idp.url("/jwks"),
        "jwks_max_stale_seconds": 86_400,
    }));
    let bounded_pool = pool(&rt, &engine, &services, &jwt, &idp, bounded);
    group.bench_function("jwt_auth, jwks_url, jwks_max_stale_seconds", |b| {
        b.iter_custom(|iters| calls(&rt, &bounded_pool, &bearer, iters))
    });
    let intro_pool = pool(
        &rt,
        &engine,
        &services,
        &introspection,
        &idp,
        json!({
            "endpoint": idp.url("/introspect"),
            "client_id": "gateway",
            "client_secret": "secret",
            "required_scopes": ["orders:read"],
        })
        .to_string(),
    );
    let opaque = ("authorization", "Bearer opaque-token".to_owned());
    group.bench_function("oauth2_introspection, answer cached", |b| {
        b.iter_custom(|iters| calls(&rt, &intro_pool, &opaque, iters))
    });
    group.finish();
    eprintln!(
        "provider requests during the cached group: /jwks {}, /introspect {}",
        idp.hits("/jwks"),
        idp.hits("/introspect")
    );

    let mut group = c.benchmark_group("refresh");
    group.sample_size(20);
    group.bench_function("jwt_auth init, JWKS inline", |b| {
        b.iter(|| pool(&rt, &engine, &services, &jwt, &idp, inline.clone()))
    });
    let fresh = AtomicU64::new(0);
    group.bench_function("jwt_auth init, JWKS fetched", |b| {
        b.iter(|| {
            // A URL the store has never seen: init fetches it.
            let n = fresh.fetch_add(1, Ordering::Relaxed);
            pool(
                &rt,
                &engine,
                &services,
                &jwt,
                &idp,
                fetched(idp.url(&format!("/jwks?n={n}"))),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
