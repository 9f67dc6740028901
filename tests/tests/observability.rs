//! Observability end to end: `/metrics` after scripted traffic, the admin
//! API against its OpenAPI document, its token and its secrets, request
//! ids and W3C trace context.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use portcullis::registry::Trigger;
use portcullis_tests::echo::Echo;
use portcullis_tests::prom::Scrape;
use portcullis_tests::{
    Client, Reply, TestGateway, assert_config_refused, base_config, fixtures, logged_lines,
    next_event, route, sha256_hex,
};
use serde_json::Value;

/// The admin token of the test gateways.
const TOKEN: &str = "admin-token-0123456789abcdef";
/// The API key in plain text in the config (accepted with a warning).
const PLAIN_KEY: &str = "bob-plain-key-9f8e7d";
/// The API key whose SHA-256 the config holds.
const ALICE_KEY: &str = "alice-secret";
/// An HMAC secret in the config.
const JWT_SECRET: &str = "jwt-hmac-secret-in-config-0123456789";
/// An HMAC key (base64url) in a JWKS file.
const JWKS_K: &str = "c2VjcmV0LWZyb20tYS1maWxlLTAxMjM0NTY3ODk";

/// Every value of the config that must never appear in an admin answer.
fn secrets() -> Vec<String> {
    vec![
        TOKEN.to_owned(),
        PLAIN_KEY.to_owned(),
        sha256_hex(ALICE_KEY.as_bytes()),
        JWT_SECRET.to_owned(),
        JWKS_K.to_owned(),
    ]
}

/// Routes: `keyed` (key_auth), `limited` (two requests an hour per IP),
/// `trap` (a plugin that traps on `/trap/boom`, failing closed), `jwt`
/// (secrets in config and in a file) and `open`.
fn config(echo: &Echo) -> String {
    let keys = format!(
        r#"keys = [
    {{ consumer = "alice", sha256 = "{alice}" }},
    {{ consumer = "bob", key = "{PLAIN_KEY}" }},
]"#,
        alice = sha256_hex(ALICE_KEY.as_bytes()),
    );
    let jwt = format!(
        r#"algorithms = ["HS256"]
keys = [{{ kid = "cfg", secret = "{JWT_SECRET}" }}]
[routes.plugins.files]
jwks = "jwks.json""#
    );
    format!(
        r#"{base}
[log]
access_log = true

[admin]
address = "127.0.0.1:0"
token = "{TOKEN}"
{keyed}{limited}{trap}{jwt}{open}"#,
        base = base_config(echo.addr),
        // A candidate in shadow that knows only bob's key: alice's
        // requests are its disagreements (and a secret in its config).
        keyed = route(
            "keyed",
            "/keyed",
            &[(
                "key_auth",
                &format!(
                    "{keys}\n[routes.plugins.shadow]\nconfig = {{ keys = [{{ consumer = \"bob\", key = \"{PLAIN_KEY}\" }}] }}"
                )
            )]
        ),
        limited = route(
            "limited",
            "/limited",
            &[(
                "rate_limit",
                r#"by = ["ip"]
limits = [{ quota = 2, per = "hour" }]"#
            )]
        ),
        trap = route(
            "trap",
            "/trap",
            &[(
                "misbehave",
                r#"mode = "trap"
only_path = "/trap/boom"
[routes.plugins.outbound]
allow = ["https://idp.example.com"]"#
            )]
        ),
        jwt = route("jwt", "/jwt", &[("jwt_auth", &jwt)]),
        open = route("open", "/open", &[]),
    )
}

const PLUGINS: [(&str, &str); 4] = [
    ("key_auth", fixtures::KEY_AUTH),
    ("rate_limit", fixtures::RATE_LIMIT),
    ("misbehave", fixtures::MISBEHAVE),
    ("jwt_auth", fixtures::JWT_AUTH),
];

async fn start() -> (TestGateway, Echo, Admin) {
    let echo = Echo::start_local().await.expect("echo starts");
    let dir = TestGateway::prepare(&config(&echo), &PLUGINS).expect("prepare");
    std::fs::write(
        dir.path().join("jwks.json"),
        format!(r#"{{"keys":[{{"kty":"oct","kid":"file","alg":"HS256","k":"{JWKS_K}"}}]}}"#),
    )
    .expect("jwks.json");
    let gw = TestGateway::start_in(dir).await.expect("gateway starts");
    let admin = Admin::new(gw.handle.admin_addr().expect("an admin listener"));
    (gw, echo, admin)
}

/// A client of the admin API.
struct Admin {
    addr: SocketAddr,
    client: Client,
}

impl Admin {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            client: Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>) -> Reply {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| vec![("authorization", b)])
            .unwrap_or_default();
        self.client
            .request(method, &self.url(path), &headers, Bytes::new())
            .await
            .expect("admin answers")
    }

    async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, Some(TOKEN)).await
    }

    async fn json(&self, path: &str) -> Value {
        let reply = self.get(path).await;
        reply.assert_ok();
        reply.json().expect("JSON")
    }

    async fn scrape(&self) -> Scrape {
        let reply = self.get("/metrics").await;
        reply.assert_ok();
        assert!(
            reply
                .header("content-type")
                .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
            "{:?}",
            reply.headers
        );
        let text = std::str::from_utf8(&reply.body).expect("UTF-8");
        Scrape::parse(text).unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{text}"))
    }
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    Client::new()
        .get(&gw.url(path), headers)
        .await
        .expect("response")
}

/// The difference of one sample between two scrapes.
fn moved(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.sum(name, labels) - before.sum(name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_counter_moves_by_exactly_what_the_traffic_did() {
    let (gw, _echo, admin) = start().await;
    let before = admin.scrape().await;

    // 3 accepted keys, 2 refused.
    for key in [ALICE_KEY, PLAIN_KEY, ALICE_KEY] {
        get(&gw, "/keyed/x", &[("x-api-key", key)])
            .await
            .assert_ok();
    }
    for headers in [&[][..], &[("x-api-key", "wrong")][..]] {
        let refused = get(&gw, "/keyed/x", headers).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    }
    // 2 admitted, 1 over the quota.
    for _ in 0..2 {
        get(&gw, "/limited", &[]).await.assert_ok();
    }
    let limited = get(&gw, "/limited", &[]).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    // One call that goes through, one that traps.
    get(&gw, "/trap/fine", &[]).await.assert_ok();
    let trapped = get(&gw, "/trap/boom", &[]).await;
    assert!(trapped.status.is_server_error(), "{}", trapped.status);
    let trap_code = trapped.status.as_u16().to_string();
    // No route.
    let missing = get(&gw, "/nowhere", &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    // A reload through the admin API, then a refused module.
    let mut events = gw.events();
    let reload = admin.call(Method::POST, "/reload", Some(TOKEN)).await;
    reload.assert_ok();
    gw.install("key_auth", b"\0asm not really a module")
        .expect("install");
    let refused = next_event(
        &mut events,
        &Trigger::Plugin("key_auth".into()),
        Duration::from_secs(30),
    )
    .await
    .expect("the bad module is seen");
    assert!(
        matches!(
            refused.outcome,
            portcullis::registry::Outcome::Rejected { .. }
        ),
        "{refused:?}"
    );
    // The old key_auth still serves.
    get(&gw, "/keyed/x", &[("x-api-key", ALICE_KEY)])
        .await
        .assert_ok();

    let after = admin.scrape().await;
    let requests = |route: &str, code: &str| {
        moved(
            &before,
            &after,
            "portcullis_requests_total",
            &[("route", route), ("method", "GET"), ("code", code)],
        )
    };
    assert_eq!(requests("keyed", "200"), 4.0);
    assert_eq!(requests("keyed", "401"), 2.0);
    assert_eq!(requests("limited", "200"), 2.0);
    assert_eq!(requests("limited", "429"), 1.0);
    assert_eq!(requests("trap", "200"), 1.0);
    assert_eq!(requests("trap", &trap_code), 1.0);
    assert_eq!(requests("(no route)", "404"), 1.0);
    assert_eq!(
        moved(&before, &after, "portcullis_requests_total", &[]),
        12.0,
        "no other request was counted"
    );

    let decisions = |plugin: &str, route: &str, decision: &str| {
        moved(
            &before,
            &after,
            "portcullis_plugin_decisions_total",
            &[("plugin", plugin), ("route", route), ("decision", decision)],
        )
    };
    assert_eq!(decisions("key_auth", "keyed", "continue"), 4.0);
    assert_eq!(decisions("key_auth", "keyed", "401"), 2.0);
    assert_eq!(decisions("rate_limit", "limited", "continue"), 2.0);
    assert_eq!(decisions("rate_limit", "limited", "429"), 1.0);
    assert_eq!(decisions("misbehave", "trap", "continue"), 1.0);
    assert_eq!(decisions("misbehave", "trap", "failed"), 1.0);
    assert_eq!(
        moved(
            &before,
            &after,
            "portcullis_plugin_failures_total",
            &[("plugin", "misbehave"), ("kind", "trap")]
        ),
        1.0
    );
    assert_eq!(
        moved(&before, &after, "portcullis_plugin_failures_total", &[]),
        1.0,
        "no other failure"
    );

    // One plugin call per request through a plugin (the response hooks of
    // these plugins are not called: they register none, or the request
    // was answered by the plugin itself).
    let calls = |plugin: &str, phase: &str| {
        moved(
            &before,
            &after,
            "portcullis_plugin_call_duration_seconds_count",
            &[("plugin", plugin), ("phase", phase)],
        )
    };
    assert_eq!(calls("key_auth", "request"), 6.0);
    assert_eq!(calls("rate_limit", "request"), 3.0);
    assert_eq!(calls("misbehave", "request"), 2.0);

    // Histograms: one observation per request; the upstream saw the
    // requests no plugin answered.
    let count = |name: &str, labels: &[(&str, &str)]| moved(&before, &after, name, labels);
    assert_eq!(
        count(
            "portcullis_request_duration_seconds_count",
            &[("route", "keyed")]
        ),
        6.0
    );
    assert_eq!(
        count(
            "portcullis_gateway_overhead_seconds_count",
            &[("route", "keyed")]
        ),
        6.0
    );
    assert_eq!(
        count(
            "portcullis_upstream_duration_seconds_count",
            &[("upstream", "echo")]
        ),
        4.0 + 2.0 + 1.0
    );
    for route in ["keyed", "limited", "trap"] {
        let inf = after.sum(
            "portcullis_request_duration_seconds_bucket",
            &[("route", route), ("le", "+Inf")],
        );
        let total = after.sum(
            "portcullis_request_duration_seconds_count",
            &[("route", route)],
        );
        assert_eq!(inf, total, "the +Inf bucket of {route} holds every request");
    }

    // Reloads: the admin one applied, the module refused.
    let reloads = |kind: &str, result: &str| {
        moved(
            &before,
            &after,
            "portcullis_reloads_total",
            &[("kind", kind), ("result", result)],
        )
    };
    assert_eq!(reloads("admin", "applied"), 1.0);
    assert_eq!(reloads("plugin", "rejected"), 1.0);
    let status = admin.json("/status").await;
    assert_eq!(
        after.value("portcullis_generation", &[]),
        status["generation"].as_f64().expect("generation"),
    );
    assert!(
        after.value("portcullis_last_reload_success_timestamp_seconds", &[])
            >= before.value("portcullis_last_reload_success_timestamp_seconds", &[])
    );

    // Bytes and connections on the listener.
    let listener = gw.addr.to_string();
    assert!(
        moved(
            &before,
            &after,
            "portcullis_received_bytes_total",
            &[("listener", &listener)]
        ) > 0.0
    );
    assert!(
        moved(
            &before,
            &after,
            "portcullis_sent_bytes_total",
            &[("listener", &listener)]
        ) > 0.0
    );
    assert!(
        after
            .matching("portcullis_open_connections", &[("listener", &listener)])
            .next()
            .is_some()
    );
    // Scrape-time values: pools, store, upstream health.
    assert!(
        after.sum(
            "portcullis_plugin_instances",
            &[("plugin", "key_auth"), ("route", "keyed")]
        ) >= 1.0
    );
    assert!(after.sum("portcullis_store_entries", &[("plugin", "rate_limit")]) >= 1.0);
    assert_eq!(
        after.sum(
            "portcullis_upstream_server_healthy",
            &[("upstream", "echo")]
        ),
        1.0
    );
    // No consumer label anywhere by default.
    assert!(
        after
            .samples
            .iter()
            .all(|s| !s.labels.contains_key("consumer")),
        "a consumer label without opting in"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_opt_in_to_a_consumer_label() {
    let echo = Echo::start_local().await.expect("echo");
    let keys = format!(
        r#"keys = [{{ consumer = "alice", sha256 = "{}" }}]"#,
        sha256_hex(ALICE_KEY.as_bytes())
    );
    let routes = route("keyed", "/keyed", &[("key_auth", &keys)]).replace(
        "upstream = \"echo\"\n",
        "upstream = \"echo\"\nmetrics_consumer_label = true\n",
    );
    let config = format!(
        "{}\n[admin]\naddress = \"127.0.0.1:0\"\n{routes}",
        base_config(echo.addr)
    );
    let gw = TestGateway::start(&config, &[("key_auth", fixtures::KEY_AUTH)])
        .await
        .expect("starts");
    let admin = Admin::new(gw.handle.admin_addr().expect("admin"));
    get(&gw, "/keyed", &[("x-api-key", ALICE_KEY)])
        .await
        .assert_ok();
    get(&gw, "/keyed", &[]).await;
    let scrape = admin.scrape().await;
    assert_eq!(
        scrape.value(
            "portcullis_consumer_requests_total",
            &[("route", "keyed"), ("consumer", "alice"), ("code", "200")]
        ),
        1.0
    );
    assert_eq!(
        scrape.value(
            "portcullis_consumer_requests_total",
            &[("route", "keyed"), ("consumer", ""), ("code", "401")]
        ),
        1.0
    );
    gw.stop().await;
}

/// The OpenAPI document's response schema of `GET path` answering 200, as
/// a JSON Schema whose `$ref`s resolve against the whole document.
fn response_schema(openapi: &Value, method: &str, path: &str, status: &str) -> Value {
    let schema = &openapi["paths"][path][method]["responses"][status]["content"]["application/json"]
        ["schema"];
    assert!(
        schema.is_object(),
        "no JSON schema for {method} {path} {status}"
    );
    let mut root = openapi.clone();
    if let Value::Object(map) = &mut root {
        map.remove("paths");
        map.insert(
            "$schema".into(),
            "https://json-schema.org/draft/2020-12/schema".into(),
        );
        map.insert("allOf".into(), Value::Array(vec![schema.clone()]));
    }
    root
}

#[track_caller]
fn assert_matches_schema(openapi: &Value, method: &str, path: &str, status: &str, answer: &Value) {
    let schema = response_schema(openapi, method, path, status);
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("the schema of {method} {path} {status} is invalid: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(answer)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status} does not match openapi.json:\n{}\n{answer:#}",
        errors.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_as_the_openapi_document_says() {
    let (gw, _echo, admin) = start().await;
    // Some traffic and history, so that lists are not empty.
    get(&gw, "/keyed", &[("x-api-key", ALICE_KEY)])
        .await
        .assert_ok();
    get(&gw, "/trap/boom", &[]).await;
    let openapi_reply = admin.call(Method::GET, "/openapi.json", None).await;
    openapi_reply.assert_ok();
    let openapi: Value = openapi_reply.json().expect("JSON");
    assert_eq!(openapi["openapi"], "3.1.0");
    let paths = openapi["paths"].as_object().expect("paths");

    let mut checked = BTreeSet::new();
    for (path, item) in paths {
        let item = item.as_object().expect("path item");
        for method in item
            .keys()
            .filter(|m| ["get", "post"].contains(&m.as_str()))
        {
            let operation = &item[method];
            let public = operation["security"]
                .as_array()
                .is_some_and(|s| s.is_empty());
            let http_method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            // Without the token: only public endpoints answer.
            let anonymous = admin.call(http_method.clone(), path, None).await;
            if public {
                assert_ne!(
                    anonymous.status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path}"
                );
            } else {
                assert_eq!(
                    anonymous.status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} answered without a token"
                );
                assert!(
                    anonymous
                        .header("www-authenticate")
                        .is_some_and(|v| v.starts_with("Bearer")),
                    "{method} {path}"
                );
                assert!(
                    operation["responses"]["401"].is_object(),
                    "{method} {path}: 401 not documented"
                );
                let wrong = admin
                    .call(
                        http_method.clone(),
                        path,
                        Some("admin-token-0123456789abcdeX"),
                    )
                    .await;
                assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{method} {path}");
            }
            let reply = admin.call(http_method, path, Some(TOKEN)).await;
            let status = reply.status.as_str().to_owned();
            assert!(
                operation["responses"][&status].is_object(),
                "{method} {path} answered {status}, which the document does not list"
            );
            let content_type = reply.header("content-type").unwrap_or("").to_owned();
            if content_type.starts_with("application/json") {
                let answer: Value = reply.json().expect("JSON");
                assert_matches_schema(&openapi, method, path, &status, &answer);
            } else {
                let media = content_type.split(';').next().unwrap_or("").trim();
                assert!(
                    operation["responses"][&status]["content"][media].is_object(),
                    "{method} {path}: {content_type} not documented"
                );
            }
            checked.insert(format!("{method} {path}"));
        }
    }
    for endpoint in [
        "get /metrics",
        "get /status",
        "get /routes",
        "get /plugins",
        "get /generations",
        "get /upstreams",
        "get /alerts",
        "get /stats",
        "get /healthz",
        "get /readyz",
        "get /openapi.json",
        "get /dashboard",
        "post /reload",
    ] {
        assert!(
            checked.contains(endpoint),
            "{endpoint} is not in the document"
        );
    }

    // What the answers say, beyond their shape.
    let status = admin.json("/status").await;
    assert_eq!(status["ready"], true);
    assert_eq!(status["contract"], "portcullis:policy@0.2.3");
    assert_eq!(status["listeners"][0], gw.addr.to_string());
    let routes = admin.json("/routes").await;
    let names: Vec<&str> = routes["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["keyed", "limited", "trap", "jwt", "open"]);
    // A plugin's outbound grant is shown with its route.
    assert_eq!(
        routes["routes"][2]["plugins"][0]["outbound"]["allow"],
        serde_json::json!(["https://idp.example.com"])
    );
    assert_eq!(routes["routes"][0]["plugins"][0]["outbound"], Value::Null);
    let plugins = admin.json("/plugins").await;
    let key_auth = plugins["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .find(|p| p["name"] == "key_auth")
        .expect("key_auth listed");
    let bytes = std::fs::read(fixtures::KEY_AUTH).expect("fixture");
    assert_eq!(key_auth["sha256"], sha256_hex(&bytes));
    assert_eq!(key_auth["size"], bytes.len());
    assert_eq!(key_auth["routes"], serde_json::json!(["keyed"]));
    let upstreams = admin.json("/upstreams").await;
    assert_eq!(upstreams["upstreams"][0]["name"], "echo");
    let stats = admin.json("/stats").await;
    assert!(stats["totals"]["requests"].as_u64() >= Some(2));

    // A refused config: 422 with the reason, and the old one keeps serving.
    let config_path = gw.dir().join("portcullis.toml");
    let good = std::fs::read_to_string(&config_path).expect("config");
    std::fs::write(
        &config_path,
        good.replace("path_prefix = \"/open\"", "path_prefix = 7"),
    )
    .expect("write");
    let refused = admin.call(Method::POST, "/reload", Some(TOKEN)).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    let answer: Value = refused.json().expect("JSON");
    assert_matches_schema(&openapi, "post", "/reload", "422", &answer);
    assert!(
        answer["reason"]
            .as_str()
            .is_some_and(|r| r.contains("path_prefix")),
        "{answer}"
    );
    get(&gw, "/open", &[]).await.assert_ok();
    let history = admin.json("/generations").await;
    // (The file watcher saw the change too, and refused it as well.)
    let entries = history["history"].as_array().expect("history");
    let by_admin = entries
        .iter()
        .find(|e| e["trigger"] == "admin")
        .expect("the admin reload is in the history");
    assert_eq!(by_admin["result"], "rejected", "{history:#}");
    assert!(
        by_admin["reason"]
            .as_str()
            .is_some_and(|r| r.contains("path_prefix")),
        "{by_admin}"
    );

    // Unknown paths and wrong methods.
    let unknown = admin.get("/nope").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let wrong = admin.call(Method::GET, "/reload", Some(TOKEN)).await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.header("allow"), Some("POST"));
    let wrong = admin.call(Method::DELETE, "/status", Some(TOKEN)).await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.header("allow"), Some("GET, HEAD"));
    let head = admin.call(Method::HEAD, "/healthz", None).await;
    head.assert_ok();
    assert!(head.body.is_empty());

    // Every call was logged, with its status.
    assert!(
        !logged_lines(&["portcullis::admin", "/reload", "422"]).is_empty(),
        "admin calls are logged"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_configured_secret_appears_in_any_answer() {
    let (gw, _echo, admin) = start().await;
    get(&gw, "/keyed", &[("x-api-key", ALICE_KEY)])
        .await
        .assert_ok();
    let mut answers = Vec::new();
    for path in [
        "/",
        "/dashboard",
        "/metrics",
        "/status",
        "/routes",
        "/plugins",
        "/generations",
        "/upstreams",
        "/alerts",
        "/stats",
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/nope",
    ] {
        answers.push((path, admin.get(path).await));
    }
    answers.push((
        "POST /reload",
        admin.call(Method::POST, "/reload", Some(TOKEN)).await,
    ));
    for (path, reply) in &answers {
        let text = String::from_utf8_lossy(&reply.body);
        let headers = format!("{:?}", reply.headers);
        for secret in secrets() {
            assert!(
                !text.contains(&secret) && !headers.contains(&secret),
                "{path} shows the secret {secret}"
            );
        }
    }
    // The values are redacted, not the whole config.
    let routes = admin.json("/routes").await;
    let jwt = &routes["routes"][3]["plugins"][0];
    assert_eq!(jwt["config"]["algorithms"], serde_json::json!(["HS256"]));
    assert_eq!(jwt["config"]["keys"], "[redacted]");
    assert_eq!(jwt["config"]["jwks"], "[redacted]");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_and_trace_context_go_upstream_back_and_into_the_log() {
    let (gw, _echo, admin) = start().await;
    let parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("00-{parent_trace}-00f067aa0ba902b7-01");
    let reply = get(
        &gw,
        "/open/traced",
        &[
            ("x-request-id", "client-chosen-id"),
            ("traceparent", &parent),
            ("tracestate", "vendor=opaque"),
        ],
    )
    .await;
    reply.assert_ok();
    let id = reply
        .header("x-request-id")
        .expect("a request id")
        .to_owned();
    // The client is not a trusted proxy: its id is replaced.
    assert_ne!(id, "client-chosen-id");
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(&id[14..15], "4", "version 4: {id}");
    let seen = reply.seen();
    assert_eq!(seen.header("x-request-id"), Some(id.as_str()));
    let upstream_parent = seen.header("traceparent").expect("traceparent upstream");
    let fields: Vec<&str> = upstream_parent.split('-').collect();
    assert_eq!(fields.len(), 4, "{upstream_parent}");
    assert_eq!(fields[0], "00");
    assert_eq!(fields[1], parent_trace, "the trace id is kept");
    assert_ne!(fields[2], "00f067aa0ba902b7", "a new span id for this hop");
    assert_eq!(fields[2].len(), 16);
    assert_eq!(fields[3], "01", "the flags are kept");
    assert_eq!(seen.header("tracestate"), Some("vendor=opaque"));
    // In the access log.
    let lines = logged_lines(&[&format!("request_id=\"{id}\""), "/open/traced"]);
    assert_eq!(lines.len(), 1, "one access-log line with the id");
    assert!(
        lines[0].contains(&format!("trace_id=\"{parent_trace}\"")),
        "{}",
        lines[0]
    );

    // Without a parent, no trace is started (`[tracing] start_traces` is
    // off): the gateway forwards trace headers as they came.
    let reply = get(&gw, "/open/new", &[("tracestate", "vendor=orphan")]).await;
    let seen = reply.seen();
    assert_eq!(seen.header("traceparent"), None);
    assert_eq!(seen.header("tracestate"), Some("vendor=orphan"));
    // An invalid parent is not passed on, nor is its tracestate.
    let reply = get(
        &gw,
        "/open/new",
        &[("traceparent", "00-XYZ"), ("tracestate", "vendor=stale")],
    )
    .await;
    let seen = reply.seen();
    assert_eq!(seen.header("traceparent"), None);
    assert_eq!(seen.header("tracestate"), None);
    let id = reply.header("x-request-id").expect("id");
    let lines = logged_lines(&[&format!("request_id=\"{id}\"")]);
    assert!(lines[0].contains("trace_id=\"-\""), "{}", lines[0]);
    // A refused request gets an id too; so do requests that match no route.
    for path in ["/keyed", "/nowhere"] {
        let reply = get(&gw, path, &[]).await;
        assert!(reply.header("x-request-id").is_some_and(|v| v.len() == 36));
    }
    // Two requests, two ids.
    let a = get(&gw, "/open", &[]).await;
    let b = get(&gw, "/open", &[]).await;
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
    drop(admin);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_request_id_is_kept_and_traces_can_start_here() {
    let echo = Echo::start_local().await.expect("echo");
    let config = format!(
        "trusted_proxies = [\"127.0.0.1/32\"]\n{}\n[tracing]\nstart_traces = true\n{}",
        base_config(echo.addr),
        route("open", "/open", &[])
    );
    let gw = TestGateway::start(&config, &[]).await.expect("starts");
    let reply = get(
        &gw,
        "/open",
        &[
            ("x-request-id", "edge-4711"),
            ("tracestate", "vendor=orphan"),
        ],
    )
    .await;
    assert_eq!(reply.header("x-request-id"), Some("edge-4711"));
    let seen = reply.seen();
    assert_eq!(seen.header("x-request-id"), Some("edge-4711"));
    // `start_traces`: a request without a parent starts a trace; the
    // orphan tracestate is dropped.
    let started = seen.header("traceparent").expect("a new traceparent");
    assert!(
        started.starts_with("00-") && started.len() == 55,
        "{started}"
    );
    assert!(started.ends_with("-00"), "not sampled: no span is recorded");
    assert_eq!(seen.header("tracestate"), None);
    // Malformed or repeated ids are replaced even from a trusted proxy.
    let reply = get(&gw, "/open", &[("x-request-id", "has space")]).await;
    assert_ne!(reply.header("x-request-id"), Some("has space"));
    let reply = get(
        &gw,
        "/open",
        &[("x-request-id", "one"), ("x-request-id", "two")],
    )
    .await;
    let id = reply.header("x-request-id").expect("id");
    assert!(id != "one" && id != "two", "{id}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_admin_listener_needs_tls_and_a_token() {
    let open = route("open", "/open", &[]);
    assert_config_refused(
        &format!("[admin]\naddress = \"0.0.0.0:0\"\n{open}"),
        &[],
        &["admin.tls", "admin.token"],
    )
    .await;
    assert_config_refused(
        &format!("[admin]\naddress = \"0.0.0.0:0\"\ntoken = \"{TOKEN}\"\n{open}"),
        &[],
        &["admin.tls"],
    )
    .await;
    assert_config_refused(
        &format!("[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"short\"\n{open}"),
        &[],
        &["admin.token", "16"],
    )
    .await;
    // Its TLS is checked as a listener's is.
    assert_config_refused(
        &format!(
            "[admin]\naddress = \"127.0.0.1:0\"\n[admin.tls]\nhandshake_timeout_ms = 0\n\
             [[admin.tls.certificates]]\ncert = \"c.pem\"\nkey = \"k.pem\"\n{open}"
        ),
        &[],
        &["admin.tls.handshake_timeout_ms", "between 100 and 300000"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listeners_certificate_is_in_the_expiry_metric_and_renews_without_a_restart() {
    use portcullis_tests::tls::{self, TestCa};
    let echo = Echo::start_local().await.expect("echo");
    let ca = TestCa::new();
    let config = format!(
        "{}\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
         [[admin.tls.certificates]]\ncert = \"admin.pem\"\nkey = \"admin.key\"\n{}",
        base_config(echo.addr),
        route("open", "/open", &[])
    );
    let dir = TestGateway::prepare(&config, &[]).expect("prepared");
    ca.issue(&["admin.test"], -1, 30)
        .write(dir.path(), "admin")
        .expect("certificate written");
    let gw = TestGateway::start_in(dir).await.expect("starts");
    let admin = gw.handle.admin_addr().expect("admin");
    // The admin listener's metrics over TLS: the certificate served, and
    // the days left on the one in the expiry metric.
    let scrape = || async {
        let (session, reply) = tls::get_with(
            admin,
            "admin.test",
            ca.client_config(&[b"http/1.1"]),
            http::Request::get("https://admin.test/metrics")
                .header("authorization", format!("Bearer {TOKEN}")),
        )
        .await
        .expect("metrics over TLS");
        assert_eq!(reply.status, StatusCode::OK);
        let scrape = Scrape::parse(&String::from_utf8_lossy(&reply.body)).expect("parses");
        let not_after = scrape.sum(
            "portcullis_tls_certificate_not_after_seconds",
            &[("name", "admin.test"), ("listener", "admin 127.0.0.1:0")],
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        (session.served, (not_after - now) / 86_400.0)
    };
    let (_, days) = scrape().await;
    assert!((29.0..=31.0).contains(&days), "{days} days left");

    // Renewed: the files are watched, and the next connection gets the new
    // certificate, without a restart.
    let renewed = ca.issue(&["admin.test"], -1, 90);
    let mut events = gw.events();
    renewed
        .write(gw.dir(), "admin")
        .expect("certificate written");
    portcullis_tests::wait_for_reload(&mut events, |o| {
        matches!(o, portcullis::registry::Outcome::Applied { .. })
    })
    .await;
    let (served, days) = scrape().await;
    assert_eq!(served, renewed.der, "the renewed certificate is served");
    assert!((89.0..=91.0).contains(&days), "{days} days left");

    // An expired one is refused by the reload, naming the key; the
    // renewed one keeps serving.
    let expired = ca.issue(&["admin.test"], -60, -1);
    let mut events = gw.events();
    expired
        .write(gw.dir(), "admin")
        .expect("certificate written");
    portcullis_tests::wait_for_reload(&mut events, |o| {
        matches!(o, portcullis::registry::Outcome::Rejected { reason }
            if reason.contains("admin.tls") && reason.contains("expired"))
    })
    .await;
    let (served, _) = scrape().await;
    assert_eq!(served, renewed.der);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_need_no_token() {
    let (gw, _echo, admin) = start().await;
    for path in ["/healthz", "/readyz"] {
        let reply = admin.call(Method::GET, path, None).await;
        reply.assert_ok();
    }
    let ready: Value = admin
        .call(Method::GET, "/readyz", None)
        .await
        .json()
        .expect("JSON");
    assert_eq!(ready["status"], "ready");
    // The dashboard's page holds no data; the API behind it needs the token.
    let page = admin.call(Method::GET, "/", None).await;
    page.assert_ok();
    assert!(page.header("content-security-policy").is_some());
    let data = admin.call(Method::GET, "/stats", None).await;
    assert_eq!(data.status, StatusCode::UNAUTHORIZED);
    // The scheme is case-insensitive (RFC 9110, 11.1).
    let lower = admin
        .client
        .get(
            &admin.url("/status"),
            &[("authorization", &format!("bearer {TOKEN}"))],
        )
        .await
        .expect("answer");
    lower.assert_ok();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_section_there_is_no_admin_listener() {
    let echo = Echo::start_local().await.expect("echo");
    let config = format!("{}{}", base_config(echo.addr), route("open", "/open", &[]));
    let gw = TestGateway::start(&config, &[]).await.expect("starts");
    assert_eq!(gw.handle.admin_addr(), None);
    // The request path still counts and tags requests.
    let reply = get(&gw, "/open", &[]).await;
    assert!(reply.header("x-request-id").is_some());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_in_the_operators_browser_cannot_use_the_admin_api() {
    let echo = Echo::start_local().await.expect("echo");
    let config = format!(
        "{}\n[admin]\naddress = \"127.0.0.1:0\"\n{}",
        base_config(echo.addr),
        route("open", "/open", &[])
    );
    let gw = TestGateway::start(&config, &[]).await.expect("starts");
    let addr = gw.handle.admin_addr().expect("admin");
    let client = Client::new();
    let url = |path: &str| format!("http://{addr}{path}");
    // No token: a rebound name is refused, an address or localhost is not.
    let rebound = client
        .get(&url("/status"), &[("host", "rebind.example:9901")])
        .await
        .expect("answer");
    assert_eq!(rebound.status, StatusCode::FORBIDDEN);
    let local = client
        .get(
            &url("/status"),
            &[("host", &format!("localhost:{}", addr.port()))],
        )
        .await
        .expect("answer");
    local.assert_ok();
    // A forged POST from another site is refused, and nothing reloads.
    for header in [
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let forged = client
            .request(Method::POST, &url("/reload"), &[header], Bytes::new())
            .await
            .expect("answer");
        assert_eq!(forged.status, StatusCode::FORBIDDEN, "{header:?}");
    }
    let history: Value = client
        .get(&url("/generations"), &[])
        .await
        .expect("answer")
        .json()
        .expect("JSON");
    assert!(
        !history["history"]
            .as_array()
            .expect("history")
            .iter()
            .any(|e| e["trigger"] == "admin"),
        "{history}"
    );
    // Its own page (same origin) and curl may.
    let own = client
        .request(
            Method::POST,
            &url("/reload"),
            &[("origin", &format!("http://{addr}"))],
            Bytes::new(),
        )
        .await
        .expect("answer");
    own.assert_ok();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_gets_openmetrics_when_it_asks() {
    let (gw, _echo, admin) = start().await;
    get(&gw, "/open", &[]).await.assert_ok();
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let reply = admin
        .client
        .get(
            &admin.url("/metrics"),
            &[
                ("authorization", &format!("Bearer {TOKEN}")),
                ("accept", accept),
            ],
        )
        .await
        .expect("metrics");
    reply.assert_ok();
    assert!(
        reply
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text; version=1.0.0")),
        "{:?}",
        reply.headers
    );
    let text = String::from_utf8_lossy(&reply.body);
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    // Every histogram has its +Inf bucket, which histogram_quantile needs.
    assert!(
        text.contains(r#"portcullis_request_duration_seconds_bucket{le="+Inf",route="open"} 1"#),
        "{text}"
    );
    assert!(!text.contains("e308"), "no finite stand-in for +Inf");
    gw.stop().await;
}
