//! The access log: one line per request, written when the client has the
//! whole response (or when it went away before), with what it really got:
//! status, bytes in and out, time to the response head and to the last
//! byte, whether the response body was cut short, the upstream server,
//! and TLS version and SNI.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::uri::Authority;
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use crate::body::{BodyWatch, BoxError, ProxyBody};
use crate::error::ProxyError;
use crate::forward::Connection;
use crate::registry::ChainLink;
use crate::trace::otlp::{FinishedSpan, SpanExport};

/// What the access log and the metrics say about a request, gathered on
/// its way.
///
/// Built with [`Record::new`]`(false)` when there is no access log and no
/// span to export: then
/// the setters below keep only what metrics need (the route, the upstream
/// time, and the consumer on a route counted by consumer), so a request
/// pays no allocation or formatting for a line nobody writes.
#[derive(Default)]
pub(crate) struct Record {
    /// Whether everything is kept (there is an access log).
    on: bool,
    /// The index of the route that served it, if one matched.
    pub(crate) served: Option<usize>,
    /// Whether the consumer is kept for metrics.
    keep_consumer: bool,
    /// How long the upstream took to the response head.
    pub(crate) upstream_time: Option<std::time::Duration>,
    /// The request's id.
    request_id: Option<http::HeaderValue>,
    /// The trace it belongs to.
    trace: Option<crate::trace::TraceContext>,
    /// The client's address, when it is not the peer's (trusted proxies).
    client: Option<IpAddr>,
    route: Option<Arc<str>>,
    decisions: Vec<Decision>,
    consumer: Option<String>,
    error: Option<String>,
    /// The upstream server that answered.
    upstream: Option<Authority>,
    /// The client's request body, to count its bytes.
    body_in: Option<BodyWatch>,
}

/// What one plugin decided, as the `plugins=` field shows it.
struct Decision {
    plugin: Arc<str>,
    outcome: Outcome,
}

/// The outcome of one plugin's call: what the metrics count too.
pub(crate) use crate::metrics::Decision as Outcome;

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plugin = &self.plugin;
        match self.outcome {
            Outcome::Continue => write!(f, "{plugin}:continue"),
            Outcome::Respond(status) => write!(f, "{plugin}:respond({status})"),
            Outcome::Failed => write!(f, "{plugin}:failed"),
            Outcome::FailedAllowed => write!(f, "{plugin}:failed(allowed)"),
        }
    }
}

/// The decisions, space-separated.
struct Decisions<'a>(&'a [Decision]);

impl std::fmt::Display for Decisions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, decision) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            decision.fmt(f)?;
        }
        Ok(())
    }
}

impl Record {
    /// A record that keeps what it is told when `on`, else nothing.
    pub(crate) fn new(on: bool) -> Self {
        Self {
            on,
            ..Self::default()
        }
    }

    pub(crate) fn client(&mut self, client: IpAddr) {
        if self.on {
            self.client = Some(client);
        }
    }

    /// The route, number `index` of its generation, that serves the
    /// request.
    pub(crate) fn route(&mut self, index: usize, route: &Arc<str>, keep_consumer: bool) {
        self.served = Some(index);
        self.keep_consumer = keep_consumer;
        if self.on {
            self.route = Some(route.clone());
        }
    }

    /// The request's id and trace.
    pub(crate) fn trace(
        &mut self,
        id: &http::HeaderValue,
        trace: Option<crate::trace::TraceContext>,
    ) {
        if self.on {
            self.request_id = Some(id.clone());
            self.trace = trace;
        }
    }

    /// The consumer, when kept.
    pub(crate) fn consumer_name(&self) -> Option<&str> {
        self.consumer.as_deref()
    }

    pub(crate) fn decide(&mut self, link: &ChainLink, outcome: Outcome) {
        if self.on {
            self.decisions.push(Decision {
                plugin: link.plugin.clone(),
                outcome,
            });
        }
    }

    pub(crate) fn consumer(&mut self, consumer: Option<&str>) {
        if self.on || self.keep_consumer {
            self.consumer = consumer.map(str::to_owned);
        }
    }

    pub(crate) fn upstream(&mut self, server: Option<&Authority>) {
        if self.on {
            self.upstream = server.cloned();
        }
    }

    pub(crate) fn body_in(&mut self, watch: &BodyWatch) {
        if self.on {
            self.body_in = Some(watch.clone());
        }
    }

    pub(crate) fn fail(&mut self, error: &ProxyError) {
        if self.on {
            self.error = Some(format!("{}: {error}", error.source_kind().as_str()));
        }
    }
}

/// A request whose line (or span) waits for the end of its response body.
pub(crate) struct Pending {
    pub(crate) record: Record,
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) conn: Arc<Connection>,
    pub(crate) started: Instant,
    /// Whether to write the access-log line.
    pub(crate) log: bool,
    /// Where the request's span goes, when its trace is sampled.
    pub(crate) span: Option<Arc<SpanExport>>,
}

/// `response`, whose body writes the access-log line and exports the
/// request's span when it ends, fails or is dropped (the client went away:
/// `aborted=true`).
pub(crate) fn logged(response: Response<ProxyBody>, pending: Pending) -> Response<ProxyBody> {
    let status = response.status();
    let head_ms = pending.started.elapsed().as_secs_f64() * 1000.0;
    response.map(|inner| {
        http_body_util::BodyExt::boxed_unsync(Logged {
            inner,
            pending: Some(pending),
            status,
            head_ms,
            bytes_out: 0,
        })
    })
}

struct Logged {
    inner: ProxyBody,
    pending: Option<Pending>,
    status: StatusCode,
    head_ms: f64,
    bytes_out: u64,
}

impl Logged {
    fn finish(&mut self, aborted: bool) {
        let Some(p) = self.pending.take() else { return };
        if p.log {
            self.log(&p, aborted);
        }
        if let (Some(export), Some(context)) = (&p.span, p.record.trace) {
            let r = &p.record;
            let duration = p.started.elapsed();
            export.record(FinishedSpan {
                context,
                start: SystemTime::now()
                    .checked_sub(duration)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                duration,
                method: &p.method,
                path: &p.path,
                scheme: if p.conn.tls.is_some() {
                    "https"
                } else {
                    "http"
                },
                route: r.route.as_deref(),
                status: self.status.as_u16(),
                client: r.client.unwrap_or(p.conn.peer.ip()),
                request_id: r.request_id.as_ref().and_then(|v| v.to_str().ok()),
                upstream: r.upstream.as_ref().map(Authority::as_str),
                upstream_time: r.upstream_time,
                decisions: r.decisions.iter().map(|d| d.to_string().into()).collect(),
                error: r.error.as_deref(),
                bytes_out: self.bytes_out,
                aborted,
            });
        }
    }

    fn log(&self, p: &Pending, aborted: bool) {
        let r = &p.record;
        let tls = p.conn.tls.as_ref();
        tracing::info!(
            target: "portcullis::access",
            route = r.route.as_deref().unwrap_or("-"),
            method = %p.method,
            path = p.path,
            status = self.status.as_u16(),
            latency_ms = p.started.elapsed().as_secs_f64() * 1000.0,
            head_ms = self.head_ms,
            bytes_in = r.body_in.as_ref().map_or(0, BodyWatch::bytes),
            bytes_out = self.bytes_out,
            aborted,
            client = %r.client.unwrap_or(p.conn.peer.ip()),
            upstream = r.upstream.as_ref().map_or("-", Authority::as_str),
            tls = tls.map_or("-", |t| t.version),
            sni = tls.and_then(|t| t.server_name.as_deref()).unwrap_or("-"),
            consumer = r.consumer.as_deref().unwrap_or("-"),
            request_id = r.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
            trace_id = r.trace.map(|t| t.trace_id_hex()).as_deref().unwrap_or("-"),
            plugins = %Decisions(&r.decisions),
            error = r.error.as_deref().unwrap_or(""),
        );
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes_out += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish(false);
                }
            }
            Poll::Ready(None) => self.finish(false),
            Poll::Ready(Some(Err(_))) => self.finish(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // A body nobody read to its end: the client went away, unless
        // there was nothing to read (HEAD, 204, 304).
        let aborted = !self.inner.is_end_stream();
        self.finish(aborted);
    }
}
