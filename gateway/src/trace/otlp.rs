//! Span export over OTLP/HTTP (protobuf), with the OpenTelemetry
//! project's exporter and our own hyper client (`[tracing.otlp]`).
//!
//! A sampled request ends as one server span: its trace and span ids are
//! those the gateway sent upstream in `traceparent`, so the upstream's
//! spans hang under it. Spans wait in a bounded queue, and a tokio task
//! sends them in batches of up to [`BATCH`] at most [`LINGER`] after the
//! first one came. A full queue drops the new span (counted), never a
//! request; a collector that is down costs one failed export a batch.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use tokio::sync::mpsc;

use super::TraceContext;
use crate::config::OtlpConfig;

/// The most spans one export carries.
pub const BATCH: usize = 512;
/// How long the first span of a batch waits for others.
pub const LINGER: Duration = Duration::from_millis(500);
/// The largest collector answer read.
const MAX_ANSWER: usize = 1 << 20;

/// How many spans were exported, dropped (queue full) and failed
/// (the collector refused or could not be reached).
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Accepted by the collector.
    pub exported: AtomicU64,
    /// Not queued: the queue was full.
    pub dropped: AtomicU64,
    /// Sent and refused, or not delivered.
    pub failed: AtomicU64,
}

/// The span exporter: a queue, and the task that empties it.
#[derive(Debug)]
pub struct SpanExport {
    queue: mpsc::Sender<SpanData>,
    stats: Arc<ExportStats>,
    scope: InstrumentationScope,
    stop: tokio::sync::watch::Sender<bool>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl SpanExport {
    /// Starts exporting to `config`'s collector. Runs inside a tokio
    /// runtime; fails on a CA file that cannot be read.
    pub fn start(config: &OtlpConfig) -> Result<Arc<Self>, String> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let client = HyperClient::new(config, timeout)?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(config.endpoint.clone())
            .with_timeout(timeout)
            .with_headers(config.headers.clone().into_iter().collect())
            .build()
            .map_err(|e| format!("tracing.otlp: cannot build the exporter: {e}"))?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(config.service_name.clone())
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        let (queue, spans) = mpsc::channel(config.queue);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let stats = Arc::new(ExportStats::default());
        let task = tokio::spawn(run(
            exporter,
            spans,
            stopped,
            stats.clone(),
            config.endpoint.clone(),
        ));
        Ok(Arc::new(Self {
            queue,
            stats,
            scope: InstrumentationScope::builder("portcullis")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            stop,
            task: std::sync::Mutex::new(Some(task)),
        }))
    }

    /// Queues `span`; drops it (counted) when the queue is full.
    pub fn record(&self, span: FinishedSpan<'_>) {
        if self.queue.try_send(span.into_data(&self.scope)).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts so far.
    pub fn stats(&self) -> &ExportStats {
        &self.stats
    }

    /// Sends what is queued, waiting at most `timeout`, and stops.
    pub async fn shutdown(&self, timeout: Duration) {
        let task = match self.task.lock() {
            Ok(mut task) => task.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(mut task) = task else { return };
        let _ = self.stop.send(true);
        tokio::select! {
            _ = &mut task => {}
            _ = tokio::time::sleep(timeout) => task.abort(),
        }
    }
}

/// Sends the queued spans in batches until told to stop; then sends what
/// is queued and ends.
async fn run(
    exporter: opentelemetry_otlp::SpanExporter,
    mut spans: mpsc::Receiver<SpanData>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    stats: Arc<ExportStats>,
    endpoint: String,
) {
    let mut healthy = true;
    let mut stopping = false;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let got = tokio::select! {
            got = spans.recv_many(&mut batch, BATCH) => got,
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                // What is queued still goes; then `recv_many` says 0.
                spans.close();
                stopping = true;
                continue;
            }
        };
        if got == 0 {
            break;
        }
        let deadline = tokio::time::Instant::now() + LINGER;
        while !stopping && batch.len() < BATCH {
            let room = BATCH - batch.len();
            match tokio::time::timeout_at(deadline, spans.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let count = batch.len() as u64;
        match exporter.export(std::mem::take(&mut batch)).await {
            Ok(()) => {
                stats.exported.fetch_add(count, Ordering::Relaxed);
                if !healthy {
                    healthy = true;
                    tracing::info!("span export to {endpoint} works again");
                }
            }
            Err(e) => {
                stats.failed.fetch_add(count, Ordering::Relaxed);
                // At warn level once an outage, then at debug.
                if healthy {
                    healthy = false;
                    tracing::warn!("span export to {endpoint} failed, {count} spans lost: {e}");
                } else {
                    tracing::debug!("span export to {endpoint} failed, {count} spans lost: {e}");
                }
            }
        }
    }
}

/// A request's span, as the access-log record has it when the response
/// body ends.
pub struct FinishedSpan<'a> {
    /// The trace and this hop's span.
    pub context: TraceContext,
    /// When the request came.
    pub start: SystemTime,
    /// How long it took, to the end of the response body.
    pub duration: Duration,
    /// The request's method.
    pub method: &'a http::Method,
    /// The request's path, normalized.
    pub path: &'a str,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The route that served it, if one matched.
    pub route: Option<&'a str>,
    /// The response status.
    pub status: u16,
    /// The client's address.
    pub client: IpAddr,
    /// The request id.
    pub request_id: Option<&'a str>,
    /// The upstream server that answered.
    pub upstream: Option<&'a str>,
    /// How long the upstream took to its response head.
    pub upstream_time: Option<Duration>,
    /// Each plugin's decision, in order, as the access log's `plugins=`
    /// shows them (`key_auth:respond(401)`).
    pub decisions: Vec<opentelemetry::StringValue>,
    /// Why the gateway answered with an error, if it did.
    pub error: Option<&'a str>,
    /// Bytes of response body sent.
    pub bytes_out: u64,
    /// Whether the client went away before the body ended.
    pub aborted: bool,
}

impl FinishedSpan<'_> {
    fn into_data(self, scope: &InstrumentationScope) -> SpanData {
        let context = SpanContext::new(
            TraceId::from_bytes(self.context.trace_id),
            SpanId::from_bytes(self.context.span_id),
            TraceFlags::new(self.context.flags),
            false,
            TraceState::NONE,
        );
        let name = match self.route {
            Some(route) => format!("{} {route}", self.method),
            None => self.method.to_string(),
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", self.method.to_string()),
            KeyValue::new("url.path", self.path.to_owned()),
            KeyValue::new("url.scheme", self.scheme),
            KeyValue::new("http.response.status_code", i64::from(self.status)),
            KeyValue::new("client.address", self.client.to_string()),
            KeyValue::new("http.response.body.size", self.bytes_out as i64),
        ];
        let mut optional = |key: &'static str, value: Option<&str>| {
            if let Some(value) = value {
                attributes.push(KeyValue::new(key, value.to_owned()));
            }
        };
        optional("portcullis.route", self.route);
        optional("portcullis.request_id", self.request_id);
        optional("portcullis.upstream", self.upstream);
        optional("error.type", self.error);
        if let Some(upstream) = self.upstream_time {
            attributes.push(KeyValue::new(
                "portcullis.upstream_duration_ms",
                upstream.as_secs_f64() * 1000.0,
            ));
        }
        if self.aborted {
            attributes.push(KeyValue::new("portcullis.aborted", true));
        }
        if !self.decisions.is_empty() {
            attributes.push(KeyValue::new(
                "portcullis.plugins",
                opentelemetry::Value::Array(opentelemetry::Array::String(self.decisions)),
            ));
        }
        // Server spans: 5xx are errors; 4xx are the client's (OpenTelemetry
        // HTTP semantic conventions).
        let status = if self.status >= 500 {
            Status::error(self.error.unwrap_or("").to_owned())
        } else {
            Status::Unset
        };
        SpanData {
            span_context: context,
            parent_span_id: self
                .context
                .parent_id
                .map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: self.context.parent_id.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Owned(name),
            start_time: self.start,
            end_time: self.start + self.duration,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope.clone(),
        }
    }
}

/// The exporter's HTTP client: hyper, rustls (aws-lc-rs) with the webpki
/// roots or the configured CA, each call under the export timeout.
#[derive(Debug)]
struct HyperClient {
    client: crate::crypto::OutboundClient,
    timeout: Duration,
}

impl HyperClient {
    fn new(config: &OtlpConfig, timeout: Duration) -> Result<Self, String> {
        let roots = match &config.ca {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("tracing.otlp.ca: cannot read {}: {e}", path.display()))?;
                Some(
                    crate::crypto::root_store(&pem, &path.display())
                        .map_err(|e| format!("tracing.otlp.ca: {e}"))?,
                )
            }
            None => None,
        };
        Ok(Self {
            client: crate::crypto::outbound_client(roots, timeout)
                .map_err(|e| format!("tracing.otlp: {e}"))?,
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for HyperClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let exchange = async {
            let response = self.client.request(request.map(Full::new)).await?;
            let (head, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| -> HttpError { e })?
                .to_bytes();
            Ok::<_, HttpError>(Response::from_parts(head, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| -> HttpError { format!("no answer within {:?}", self.timeout).into() })?
    }
}
