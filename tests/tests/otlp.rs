//! Span export over OTLP/HTTP: a collector on 127.0.0.1 decodes what the
//! gateway sends with the OpenTelemetry project's generated types.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use portcullis_tests::echo::Echo;
use portcullis_tests::prom::Scrape;
use portcullis_tests::{Client, TestGateway, base_config, fixtures, route};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

/// What the collector was sent.
#[derive(Debug, Clone)]
struct Export {
    path: String,
    content_type: Option<String>,
    key: Option<String>,
    service: Option<String>,
    spans: Vec<Span>,
}

/// A collector that keeps each export; when `hold` is set it answers only
/// as permits are added to it.
#[derive(Clone, Default)]
struct Collector {
    exports: Arc<Mutex<Vec<Export>>>,
    arrived: Arc<Notify>,
    hold: Option<Arc<Semaphore>>,
}

impl Collector {
    async fn start(self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let collector = self.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let collector = collector.clone();
                        async move { Ok::<_, Infallible>(collector.receive(request).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    async fn receive(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (path, content_type, key) = (
            request.uri().path().to_owned(),
            header("content-type"),
            header("x-collector-key"),
        );
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let decoded = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
        let mut export = Export {
            path,
            content_type,
            key,
            service: None,
            spans: Vec::new(),
        };
        for resource_spans in decoded.resource_spans {
            export.service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| string(&r.attributes, "service.name"));
            for scope in resource_spans.scope_spans {
                export.spans.extend(scope.spans);
            }
        }
        self.exports.lock().expect("lock").push(export);
        self.arrived.notify_waiters();
        if let Some(hold) = &self.hold {
            hold.acquire().await.expect("open").forget();
        }
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::new()))
            .expect("response")
    }

    fn spans(&self) -> Vec<Span> {
        let exports = self.exports.lock().expect("lock");
        exports.iter().flat_map(|e| e.spans.clone()).collect()
    }

    /// Waits until `count` spans came (at most 20 s: a bound, not a
    /// measurement).
    async fn wait_for(&self, count: usize) -> Vec<Span> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let arrived = self.arrived.notified();
            let spans = self.spans();
            if spans.len() >= count {
                return spans;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("{count} spans expected, {} came", self.spans().len());
            }
        }
    }
}

fn string(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match v.value {
            Some(any_value::Value::IntValue(i)) => Some(i),
            _ => None,
        })
}

fn strings(attributes: &[KeyValue], key: &str) -> Vec<String> {
    let Some(AnyValue {
        value: Some(any_value::Value::ArrayValue(array)),
    }) = attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
    else {
        return Vec::new();
    };
    array
        .values
        .iter()
        .filter_map(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn config(echo: &Echo, collector: SocketAddr, otlp_extra: &str) -> String {
    format!(
        r#"{base}
[admin]
address = "127.0.0.1:0"

[tracing]
start_traces = true

[tracing.otlp]
endpoint = "http://{collector}/v1/traces"
service_name = "edge-test"
headers = {{ "x-collector-key" = "collector-secret-123" }}
{otlp_extra}
{keyed}{open}"#,
        base = base_config(echo.addr),
        keyed = route(
            "keyed",
            "/keyed",
            &[(
                "key_auth",
                r#"keys = [{ consumer = "alice", key = "alice-key-0123" }]"#
            )]
        ),
        open = route("open", "/open", &[]),
    )
}

async fn scrape(gw: &TestGateway) -> Scrape {
    let admin = gw.handle.admin_addr().expect("admin listener");
    let reply = Client::new()
        .get(&format!("http://{admin}/metrics"), &[])
        .await
        .expect("metrics");
    Scrape::parse(&String::from_utf8_lossy(&reply.body)).expect("prometheus text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_requests_reach_the_collector_as_server_spans() {
    let echo = Echo::start_local().await.expect("echo");
    let collector = Collector::default();
    let addr = collector.clone().start().await;
    let gw = TestGateway::start(
        &config(&echo, addr, ""),
        &[("key_auth", fixtures::KEY_AUTH)],
    )
    .await
    .expect("starts");
    let client = Client::new();
    let (t1, p1) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let (t2, p2) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    // Not sampled by its caller: continued, not exported. Sent first, so
    // that its span, were there one, would come before the others.
    let unsampled = client
        .get(
            &gw.url("/open/unsampled"),
            &[("traceparent", &format!("00-{t2}-{p2}-00"))],
        )
        .await
        .expect("response");
    unsampled.assert_ok();
    assert!(
        unsampled
            .seen()
            .header("traceparent")
            .is_some_and(|t| t.starts_with(&format!("00-{t2}-")) && t.ends_with("-00"))
    );
    // Sampled by its caller.
    let continued = client
        .get(
            &gw.url("/open/continued"),
            &[("traceparent", &format!("00-{t1}-{p1}-01"))],
        )
        .await
        .expect("response");
    continued.assert_ok();
    let sent = continued
        .seen()
        .header("traceparent")
        .expect("traceparent upstream")
        .to_owned();
    // Started here: sampled at the default ratio of 1.
    let started = client
        .get(&gw.url("/open/started"), &[])
        .await
        .expect("response");
    let started_sent = started
        .seen()
        .header("traceparent")
        .expect("a started trace")
        .to_owned();
    assert!(started_sent.ends_with("-01"), "{started_sent}");
    // Refused by a plugin.
    let refused = client.get(&gw.url("/keyed"), &[]).await.expect("response");
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);

    let spans = collector.wait_for(3).await;
    let by_path = |path: &str| {
        spans
            .iter()
            .find(|s| string(&s.attributes, "url.path").as_deref() == Some(path))
            .unwrap_or_else(|| panic!("no span for {path}: {spans:#?}"))
    };
    // The continued trace: its trace id, the caller's span as parent, and
    // the span id the upstream was given.
    let span = by_path("/open/continued");
    assert_eq!(hex(&span.trace_id), t1);
    assert_eq!(hex(&span.parent_span_id), p1);
    assert_eq!(sent, format!("00-{t1}-{}-01", hex(&span.span_id)));
    assert_eq!(span.name, "GET open");
    assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(
        int(&span.attributes, "http.response.status_code"),
        Some(200)
    );
    assert_eq!(
        string(&span.attributes, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        string(&span.attributes, "portcullis.route").as_deref(),
        Some("open")
    );
    assert_eq!(
        string(&span.attributes, "portcullis.request_id").as_deref(),
        continued.header("x-request-id")
    );
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    assert!(span.start_time_unix_nano > 0);
    // The started trace has no parent.
    let span = by_path("/open/started");
    assert!(span.parent_span_id.is_empty());
    assert_eq!(
        started_sent,
        format!("00-{}-{}-01", hex(&span.trace_id), hex(&span.span_id))
    );
    // The refusal: the plugin's decision, and a 4xx that is not an error
    // of the server.
    let span = by_path("/keyed");
    assert_eq!(
        int(&span.attributes, "http.response.status_code"),
        Some(401)
    );
    assert_eq!(
        strings(&span.attributes, "portcullis.plugins"),
        vec!["key_auth:respond(401)".to_owned()]
    );
    assert_ne!(span.status.as_ref().map_or(0, |s| s.code), 2, "not ERROR");

    // Stopping sends what is queued: still no span of the unsampled trace.
    gw.stop().await;
    let spans = collector.spans();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert!(spans.iter().all(|s| hex(&s.trace_id) != t2));
    let exports = collector.exports.lock().expect("lock").clone();
    for export in &exports {
        assert_eq!(export.path, "/v1/traces");
        assert_eq!(
            export.content_type.as_deref(),
            Some("application/x-protobuf")
        );
        assert_eq!(export.key.as_deref(), Some("collector-secret-123"));
        assert_eq!(export.service.as_deref(), Some("edge-test"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_collector_drops_spans_not_requests() {
    let echo = Echo::start_local().await.expect("echo");
    let hold = Arc::new(Semaphore::new(0));
    let collector = Collector {
        hold: Some(hold.clone()),
        ..Collector::default()
    };
    let addr = collector.clone().start().await;
    let gw = TestGateway::start(
        &config(&echo, addr, "queue = 1"),
        &[("key_auth", fixtures::KEY_AUTH)],
    )
    .await
    .expect("starts");
    let client = Client::new();
    // The first span goes out, and the collector holds its answer.
    client
        .get(&gw.url("/open/first"), &[])
        .await
        .expect("response")
        .assert_ok();
    collector.wait_for(1).await;
    // The exporter waits on it: one span fits in the queue, four do not,
    // and every request is served all the same.
    for i in 0..5 {
        client
            .get(&gw.url(&format!("/open/{i}")), &[])
            .await
            .expect("response")
            .assert_ok();
    }
    let counts = span_counts(scrape(&gw).await);
    assert_eq!(counts("dropped"), 4.0);
    assert_eq!(counts("exported"), 0.0);
    // Let the collector answer: the held export and the queued span.
    hold.add_permits(10);
    collector.wait_for(2).await;
    let counts = spans_when(&gw, "exported", 2.0).await;
    assert_eq!(counts("dropped"), 4.0);
    assert_eq!(counts("failed"), 0.0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_fails_exports_not_requests() {
    let echo = Echo::start_local().await.expect("echo");
    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let gw = TestGateway::start(
        &config(&echo, addr, "timeout_ms = 2000"),
        &[("key_auth", fixtures::KEY_AUTH)],
    )
    .await
    .expect("starts");
    let client = Client::new();
    for i in 0..3 {
        client
            .get(&gw.url(&format!("/open/{i}")), &[])
            .await
            .expect("response")
            .assert_ok();
    }
    let counts = spans_when(&gw, "failed", 3.0).await;
    assert_eq!(counts("exported"), 0.0);
    gw.stop().await;
}

/// `portcullis_otlp_spans_total` by result.
fn span_counts(metrics: Scrape) -> impl Fn(&str) -> f64 {
    move |result| metrics.value("portcullis_otlp_spans_total", &[("result", result)])
}

/// The span counts once `result` reached `count` (waiting at most 30 s:
/// exports run in the background).
async fn spans_when(gw: &TestGateway, result: &str, count: f64) -> impl Fn(&str) -> f64 + use<> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let counts = span_counts(scrape(gw).await);
        if counts(result) == count {
            return counts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{result}: {} spans, {count} expected",
            counts(result)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
