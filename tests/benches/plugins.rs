//! Per-call cost of each policy plugin in `plugins/`, on a pooled,
//! initialised instance the way the pipeline calls it (take an instance, call with a
//! typical 12-header API request, give back), with a realistic config.
//! Each case is the plugin's common path: a request that passes.
//!
//! Run: `cargo bench -p portcullis-tests --bench plugins`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::plugin::engine::EngineLimits;
use portcullis::plugin::view::{BodyView, RequestView, ResponseView};
use portcullis::plugin::{CallLimits, Identity, PluginPool, RequestAction};
use portcullis_tests::bench::{api_request, engine, ok_response};
use portcullis_tests::fixtures;
use sha2::{Digest, Sha256};
use tokio::runtime::Runtime;

/// What a case calls, and with what.
struct Case {
    name: &'static str,
    fixture: &'static str,
    config: String,
    request: Box<dyn Fn() -> RequestView>,
    /// `Some(response)`: the case calls `on-response`, else `on-request`.
    response: Option<Box<dyn Fn() -> ResponseView>>,
}

/// The example config's key files (`examples/keys`).
fn example_key(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/keys/");
    std::fs::read_to_string(format!("{path}{name}"))
        .expect("example key file")
        .trim()
        .to_owned()
}

fn with_header(name: &'static str, value: String) -> Box<dyn Fn() -> RequestView> {
    Box::new(move || {
        api_request(
            "GET",
            "/partners/orders/1234",
            &[(name, value.as_str())],
            None,
            BodyView::NotRequested,
        )
    })
}

/// A 1 KiB JSON response: ten orders, each with a customer e-mail address
/// and a card number.
fn orders_response() -> ResponseView {
    let orders: Vec<serde_json::Value> = (0..10)
        .map(|i| {
            serde_json::json!({
                "id": 1000 + i,
                "email": format!("customer{i}@example.com"),
                "card": "4111 1111 1111 1111",
                "total": 99.5,
            })
        })
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({ "orders": orders })).expect("json");
    let mut view = ok_response();
    view.body = BodyView::Complete(body.into());
    view
}

fn alice() -> Identity {
    Identity {
        consumer: "alice".into(),
        roles: vec!["member".into()],
        tenant: Some("acme".into()),
    }
}

fn plain_request() -> RequestView {
    api_request(
        "GET",
        "/api/v1/orders/1234?expand=items&limit=20",
        &[("x-api-key", "bench-key-0123456789")],
        None,
        BodyView::NotRequested,
    )
}

fn authenticated_request() -> RequestView {
    api_request(
        "GET",
        "/api/tenants/acme/orders/1234?expand=items",
        &[],
        Some(alice()),
        BodyView::NotRequested,
    )
}

fn versioned_request() -> RequestView {
    api_request("GET", "/v1/orders/1234", &[], None, BodyView::NotRequested)
}

/// The same request as the response phase sees it: with the attribute
/// `on-request` set.
fn versioned_request_after() -> RequestView {
    let mut view = versioned_request();
    view.set_attribute("api_version".into(), "v1".into());
    view
}

fn sha256(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// v1 deprecated (and sunset in 2027), v2 current.
const API_VERSION_CONFIG: &str = r#"{"source":"path","versions":[
    {"version":"v1","deprecated":"2025-07-01","sunset":"2027-01-01","successor":"https://api.example.com/v2"},
    {"version":"v2"}
]}"#;

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "key_auth (valid key)",
            fixture: fixtures::KEY_AUTH,
            config: format!(
                r#"{{"keys":[{{"consumer":"bench","sha256":"{}","roles":["member"]}}]}}"#,
                sha256("bench-key-0123456789")
            ),
            request: Box::new(plain_request),
            response: None,
        },
        Case {
            name: "rbac (4 rules, tenant match)",
            fixture: fixtures::RBAC,
            config: r#"{"rules":[
                {"roles":["admin"],"paths":["/api/**"]},
                {"roles":["member"],"methods":["GET","POST"],"paths":["/api/tenants/{tenant}/**"],"require_tenant":"tenant"},
                {"roles":["*"],"methods":["GET"],"paths":["/api/me","/api/docs/**"]},
                {"effect":"deny","roles":["*"],"methods":["DELETE"],"paths":["/api/audit/**"]}
            ]}"#
            .into(),
            request: Box::new(authenticated_request),
            response: None,
        },
        Case {
            // The common path (under both limits): a compare-and-swap for
            // the rate and an increment for the quota. The limits are high
            // enough that the bench never hits them.
            name: "rate_limit (a rate and a daily quota per consumer), request",
            fixture: fixtures::RATE_LIMIT,
            config: r#"{"limits":[{"rate":1000000,"per":"second"},{"quota":4000000000,"per":"day"}]}"#.into(),
            request: Box::new(authenticated_request),
            response: None,
        },
        Case {
            name: "api_version (deprecated v1), request",
            fixture: fixtures::API_VERSION,
            config: API_VERSION_CONFIG.into(),
            request: Box::new(versioned_request),
            response: None,
        },
        Case {
            name: "api_version (deprecated v1), response",
            fixture: fixtures::API_VERSION,
            config: API_VERSION_CONFIG.into(),
            request: Box::new(versioned_request_after),
            response: Some(Box::new(ok_response)),
        },
        Case {
            name: "basic_auth (bcrypt cost 10, verification cached)",
            fixture: fixtures::BASIC_AUTH,
            config: serde_json::json!({
                "htpasswd": example_key("users.htpasswd"),
                "users": [{ "username": "alice", "roles": ["member"], "tenant": "acme" }],
            })
            .to_string(),
            // base64("alice:open-sesame")
            request: with_header("authorization", "Basic YWxpY2U6b3Blbi1zZXNhbWU=".into()),
            response: None,
        },
        Case {
            name: "jwt_auth (RS256 from a JWKS, iss/aud/exp, roles)",
            fixture: fixtures::JWT_AUTH,
            config: serde_json::json!({
                "algorithms": ["RS256"],
                "jwks": example_key("jwks.json"),
                "issuer": "https://idp.example.com/",
                "audience": "partners-api",
                "roles_claim": "roles",
                "tenant_claim": "org",
            })
            .to_string(),
            request: with_header(
                "authorization",
                format!("Bearer {}", example_key("partner.jwt")),
            ),
            response: None,
        },
        Case {
            name: "rewrite (prefix, query, two headers), request",
            fixture: fixtures::REWRITE,
            config: r#"{"path":[{"strip_prefix":"/api"}],"query":{"remove":["limit"]},
                "request_headers":{"set":{"x-gateway":"portcullis"},"remove":["cookie"]}}"#
                .into(),
            request: Box::new(plain_request),
            response: None,
        },
        Case {
            name: "mask (1 KiB JSON response, cards and e-mails)",
            fixture: fixtures::MASK,
            config: r#"{"response_body":true}"#.into(),
            request: Box::new(plain_request),
            response: Some(Box::new(orders_response)),
        },
        Case {
            name: "alerts (every detector, a 200), response",
            fixture: fixtures::ALERTS,
            config: "{}".into(),
            request: Box::new(plain_request),
            response: Some(Box::new(ok_response)),
        },
    ]
}

/// Times `iters` calls of the case's hook, the way the pipeline makes them.
fn run(rt: &Runtime, pool: &Arc<PluginPool>, case: &Case, iters: u64) -> Duration {
    rt.block_on(async {
        let mut request = Some(Box::new((case.request)()));
        let mut response = case.response.as_ref().map(|r| Box::new(r()));
        let started = Instant::now();
        for _ in 0..iters {
            match response.take() {
                None => {
                    let (view, result) = pool.on_request(request.take().expect("view")).await;
                    assert!(
                        matches!(result, Ok(RequestAction::Continue(_))),
                        "{}: {result:?}",
                        case.name
                    );
                    request = Some(view);
                }
                Some(resp) => {
                    let (view, resp, result) =
                        pool.on_response(request.take().expect("view"), resp).await;
                    assert!(result.is_ok(), "{}: {result:?}", case.name);
                    request = Some(view);
                    response = Some(resp);
                }
            }
            black_box(&request);
        }
        started.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let (engine, services) = engine(
        EngineLimits {
            memory_mib: 64,
            timeout_ms: 1000,
            max_instances: 32,
        },
        1 << 20,
    );
    let mut group = c.benchmark_group("plugins");
    for case in cases() {
        let bytes = std::fs::read(case.fixture).expect("fixture");
        let started = Instant::now();
        let compiled = engine.compile(case.name, &bytes, None).expect("compiles");
        // Not a criterion measurement (one sample), but the figure that
        // decides how fast a new module goes live: printed for the record.
        eprintln!(
            "{}: {} KiB, compiled in {:.0} ms",
            case.name,
            bytes.len() / 1024,
            started.elapsed().as_secs_f64() * 1000.0
        );
        let pool = rt
            .block_on(PluginPool::new(
                engine.clone(),
                Arc::new(compiled),
                "bench".into(),
                case.config.clone(),
                services.clone(),
                CallLimits::with_timeout(1000),
            ))
            .unwrap_or_else(|e| panic!("{}: init: {e}", case.name));
        group.bench_function(case.name, |b| {
            b.iter_custom(|iters| run(&rt, &pool, &case, iters))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
