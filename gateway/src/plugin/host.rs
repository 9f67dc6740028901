//! Store state of one plugin instance and the host side of the contract: the
//! `request` and `response` getters, logging, time, alerts, the shared store,
//! and the captured stdout/stderr.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime::component::Resource;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

use super::bindings::portcullis::policy::{host, http, store, types};
use super::outbound::Outbound;
use super::view::{self, RequestHandle, RequestView, ResponseHandle, ResponseView};
use crate::alerts::{Alert, AlertSender, Severity};
use crate::clock::Clock;
use crate::state::{Namespace, StoreBackend, StoreError};

/// What the host provides to every instance; shared by all of them.
pub struct HostServices {
    /// The shared key-value store (a namespace per plugin).
    pub store: Arc<dyn StoreBackend>,
    /// The alert queue.
    pub alerts: AlertSender,
    /// The clock behind `now-ms`.
    pub clock: Arc<dyn Clock>,
    /// The gateway's metrics (the registry resolves each generation's
    /// handles from them).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where sampled requests' spans go (`[tracing.otlp]`), if anywhere.
    pub spans: Option<Arc<crate::trace::otlp::SpanExport>>,
}

impl std::fmt::Debug for HostServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostServices").finish_non_exhaustive()
    }
}

/// Caps linear memory and remembers that the cap was hit, so that the trap
/// can be reported as a memory-limit failure.
pub(super) struct MemoryCap {
    max_bytes: usize,
    pub(super) exceeded: bool,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.exceeded = true;
            wasmtime::bail!(
                "memory limit of {} bytes exceeded (wanted {desired})",
                self.max_bytes
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Bytes of plugin output kept for error reports.
const OUTPUT_TAIL: usize = 2048;
/// Longest line of plugin output written to the log as one line.
const OUTPUT_LINE: usize = 4096;

/// The data of one instance's store.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) memory: MemoryCap,
    plugin: Arc<str>,
    route: Arc<str>,
    services: Arc<HostServices>,
    /// The plugin's namespace of the shared store.
    namespace: Arc<dyn Namespace>,
    /// The request of the call in progress.
    pub(super) request: Option<Box<RequestView>>,
    /// The response of the call in progress (response phase only).
    pub(super) response: Option<Box<ResponseView>>,
    /// The last bytes the plugin wrote to stdout or stderr.
    pub(super) output: Arc<Mutex<String>>,
    /// Epoch ticks the call in progress may still run in; at 0 it traps.
    pub(super) ticks_left: u64,
    /// A shadow candidate's instance: its alerts are dropped.
    shadow: bool,
    /// The origins the plugin may call on this route, if any.
    outbound: Option<Arc<Outbound>>,
    /// Whether the call in progress made an outbound call: a call that
    /// waited on the network is not a long (CPU-bound) one.
    pub(super) awaited_network: bool,
}

impl StoreState {
    pub(super) fn new(
        plugin: Arc<str>,
        route: Arc<str>,
        services: Arc<HostServices>,
        memory_bytes: usize,
        shadow: bool,
        outbound: Option<Arc<Outbound>>,
    ) -> Self {
        // A shadow candidate keeps its own store and says so in its logs.
        let (plugin, namespace) = if shadow {
            (
                Arc::from(format!("{plugin} (shadow)")),
                services.store.namespace(&format!("{plugin}#shadow")),
            )
        } else {
            let namespace = services.store.namespace(&plugin);
            (plugin, namespace)
        };
        let output = Arc::new(Mutex::new(String::new()));
        let capture = |stream: &'static str| CapturedOutput {
            plugin: plugin.clone(),
            route: route.clone(),
            stream,
            tail: output.clone(),
        };
        let wasi = WasiCtx::builder()
            .stdout(capture("stdout"))
            .stderr(capture("stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            namespace,
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap {
                max_bytes: memory_bytes,
                exceeded: false,
            },
            plugin,
            route,
            services,
            request: None,
            response: None,
            output,
            ticks_left: 0,
            shadow,
            outbound,
            awaited_network: false,
        }
    }

    /// What the plugin last wrote to stdout/stderr, for error reports.
    pub(super) fn output_tail(&self) -> String {
        self.output
            .lock()
            .map(|s| {
                s.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .unwrap_or_default()
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for StoreState {}

impl http::Host for StoreState {
    async fn send(
        &mut self,
        request: http::OutboundRequest,
    ) -> Result<http::OutboundResponse, http::HttpError> {
        let Some(outbound) = self.outbound.clone() else {
            return Err(http::HttpError::NotGranted);
        };
        self.awaited_network = true;
        outbound.send(request).await
    }
}

impl types::HostRequest for StoreState {
    fn method(&mut self, _: Resource<RequestHandle>) -> String {
        self.request
            .as_ref()
            .map(|r| r.head.method.as_str().to_owned())
            .unwrap_or_default()
    }

    fn path(&mut self, _: Resource<RequestHandle>) -> String {
        self.request
            .as_ref()
            .map(|r| r.head.uri.path().to_owned())
            .unwrap_or_default()
    }

    fn query(&mut self, _: Resource<RequestHandle>) -> Option<String> {
        self.request
            .as_ref()
            .and_then(|r| r.head.uri.query().map(str::to_owned))
    }

    fn header(&mut self, _: Resource<RequestHandle>, name: String) -> Option<String> {
        self.request
            .as_ref()
            .and_then(|r| view::header_first(&r.head.headers, &name))
    }

    fn header_values(&mut self, _: Resource<RequestHandle>, name: String) -> Vec<String> {
        self.request
            .as_ref()
            .map(|r| view::header_all(&r.head.headers, &name))
            .unwrap_or_default()
    }

    fn headers(&mut self, _: Resource<RequestHandle>) -> Vec<(String, String)> {
        self.request
            .as_ref()
            .map(|r| view::header_list(&r.head.headers))
            .unwrap_or_default()
    }

    fn client_ip(&mut self, _: Resource<RequestHandle>) -> String {
        self.request
            .as_ref()
            .map(|r| crate::ipfmt::text(r.client_ip))
            .unwrap_or_default()
    }

    fn client_certificate(
        &mut self,
        _: Resource<RequestHandle>,
    ) -> Option<types::ClientCertificate> {
        self.request
            .as_ref()
            .and_then(|r| r.client_certificate.as_deref().cloned())
    }

    fn route(&mut self, _: Resource<RequestHandle>) -> String {
        self.route.to_string()
    }

    fn identity(&mut self, _: Resource<RequestHandle>) -> Option<types::Identity> {
        self.request.as_ref().and_then(|r| r.identity.clone())
    }

    fn attribute(&mut self, _: Resource<RequestHandle>, key: String) -> Option<String> {
        self.request
            .as_ref()
            .and_then(|r| r.attribute(&key).map(str::to_owned))
    }

    fn body(&mut self, _: Resource<RequestHandle>) -> types::Body {
        self.request
            .as_ref()
            .map(|r| r.body.to_wit())
            .unwrap_or(types::Body::NotRequested)
    }

    fn drop(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl types::HostResponse for StoreState {
    fn status(&mut self, _: Resource<ResponseHandle>) -> u16 {
        self.response
            .as_ref()
            .map(|r| r.head.status.as_u16())
            .unwrap_or_default()
    }

    fn header(&mut self, _: Resource<ResponseHandle>, name: String) -> Option<String> {
        self.response
            .as_ref()
            .and_then(|r| view::header_first(&r.head.headers, &name))
    }

    fn header_values(&mut self, _: Resource<ResponseHandle>, name: String) -> Vec<String> {
        self.response
            .as_ref()
            .map(|r| view::header_all(&r.head.headers, &name))
            .unwrap_or_default()
    }

    fn headers(&mut self, _: Resource<ResponseHandle>) -> Vec<(String, String)> {
        self.response
            .as_ref()
            .map(|r| view::header_list(&r.head.headers))
            .unwrap_or_default()
    }

    fn body(&mut self, _: Resource<ResponseHandle>) -> types::Body {
        self.response
            .as_ref()
            .map(|r| r.body.to_wit())
            .unwrap_or(types::Body::NotRequested)
    }

    fn drop(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl host::Host for StoreState {
    fn log(&mut self, level: host::Level, message: String) {
        let (plugin, route) = (&*self.plugin, &*self.route);
        match level {
            host::Level::Trace => {
                tracing::trace!(target: "portcullis::plugin", plugin, route, "{message}")
            }
            host::Level::Debug => {
                tracing::debug!(target: "portcullis::plugin", plugin, route, "{message}")
            }
            host::Level::Info => {
                tracing::info!(target: "portcullis::plugin", plugin, route, "{message}")
            }
            host::Level::Warn => {
                tracing::warn!(target: "portcullis::plugin", plugin, route, "{message}")
            }
            host::Level::Error => {
                tracing::error!(target: "portcullis::plugin", plugin, route, "{message}")
            }
        }
    }

    fn now_ms(&mut self) -> u64 {
        self.services.clock.now_ms()
    }

    fn alert(
        &mut self,
        severity: host::Severity,
        kind: String,
        message: String,
        mut labels: Vec<(String, String)>,
    ) {
        if self.shadow {
            tracing::debug!(plugin = %self.plugin, route = %self.route, kind, "a shadow candidate's alert, dropped");
            return;
        }
        // The request the alert was raised on, so that an alert can be
        // followed to its access-log line and its trace.
        let request_id = self
            .request
            .as_ref()
            .and_then(|r| r.head.headers.get(crate::trace::REQUEST_ID))
            .and_then(|v| v.to_str().ok());
        if let Some(id) = request_id
            && !labels.iter().any(|(k, _)| k == "request_id")
        {
            labels.push(("request_id".to_owned(), id.to_owned()));
        }
        self.services.alerts.send(Alert {
            time_ms: self.services.clock.now_ms(),
            severity: match severity {
                host::Severity::Info => Severity::Info,
                host::Severity::Warning => Severity::Warning,
                host::Severity::Critical => Severity::Critical,
            },
            kind,
            message,
            plugin: self.plugin.to_string(),
            route: self.route.to_string(),
            labels,
        });
    }
}

fn store_error(e: StoreError) -> store::StoreError {
    match e {
        StoreError::NotANumber => store::StoreError::NotANumber,
        StoreError::Full => store::StoreError::Full,
        StoreError::TooLarge => store::StoreError::TooLarge,
    }
}

impl store::Host for StoreState {
    fn get(&mut self, key: String) -> Option<String> {
        self.namespace.get(&key)
    }

    fn set(
        &mut self,
        key: String,
        value: String,
        ttl_ms: Option<u64>,
    ) -> Result<(), store::StoreError> {
        self.namespace.set(&key, value, ttl_ms).map_err(store_error)
    }

    fn delete(&mut self, key: String) -> bool {
        self.namespace.delete(&key)
    }

    fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, store::StoreError> {
        self.namespace
            .increment(&key, delta, ttl_ms)
            .map_err(store_error)
    }

    fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<String>,
        new: String,
        ttl_ms: Option<u64>,
    ) -> Result<bool, store::StoreError> {
        self.namespace
            .compare_and_swap(&key, expected.as_deref(), new, ttl_ms)
            .map_err(store_error)
    }
}

/// stdout or stderr of an instance: written to the log line by line, with
/// the last bytes kept for error reports. Never blocks and never fails, so a
/// chatty plugin cannot trap itself by printing.
#[derive(Clone)]
struct CapturedOutput {
    plugin: Arc<str>,
    route: Arc<str>,
    stream: &'static str,
    tail: Arc<Mutex<String>>,
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(OutputLines {
            out: self.clone(),
            line: Vec::new(),
        })
    }
}

struct OutputLines {
    out: CapturedOutput,
    line: Vec<u8>,
}

impl OutputLines {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        let (plugin, route, stream) = (&*self.out.plugin, &*self.out.route, self.out.stream);
        if stream == "stderr" {
            tracing::warn!(target: "portcullis::plugin", plugin, route, stream, "{text}");
        } else {
            tracing::info!(target: "portcullis::plugin", plugin, route, stream, "{text}");
        }
        if let Ok(mut tail) = self.out.tail.lock() {
            tail.push_str(&text);
            tail.push('\n');
            if tail.len() > OUTPUT_TAIL {
                let mut cut = tail.len() - OUTPUT_TAIL;
                while !tail.is_char_boundary(cut) {
                    cut += 1;
                }
                tail.drain(..cut);
            }
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for OutputLines {
    async fn ready(&mut self) {}
}

impl OutputStream for OutputLines {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        for &b in bytes.iter() {
            if b == b'\n' {
                self.emit();
            } else {
                self.line.push(b);
                if self.line.len() >= OUTPUT_LINE {
                    self.emit();
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.emit();
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl Drop for OutputLines {
    fn drop(&mut self) {
        self.emit();
    }
}
