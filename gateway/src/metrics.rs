//! The gateway's metrics, in the Prometheus exposition formats, served by
//! the admin listener at `/metrics` (see [`crate::admin`]); every metric is
//! described in docs/observability.md.
//!
//! Two kinds of value:
//!
//! * Counted as things happen: requests, durations, plugin calls and
//!   decisions, reloads. The request path never looks a metric up by name:
//!   each generation resolves the handles of its routes, plugins and
//!   upstreams once ([`RouteMetrics`], [`LinkMetrics`]), so a request pays
//!   atomic adds and one histogram observation per measure. Only
//!   `portcullis_requests_total`, whose status label is known at the end,
//!   is looked up per request (one read lock and a hash of three labels).
//! * Read at scrape time from what already counts them ([`Sources`]):
//!   plugin instances, store usage, alert counts, upstream health, TLS
//!   certificate expiry. Nothing is kept twice.
//!
//! No label takes a value a client chooses (a path, a header, an address)
//! unless a route opts in to the consumer label: cardinality stays bounded
//! by the config.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry as Prometheus, Unit};

use crate::alerts::AlertSender;
use crate::plugin::PluginError;
use crate::registry::{Outcome as ReloadOutcome, Registry, ReloadEvent};
use crate::state::StoreBackend;

/// Request and upstream durations: 0.5 ms to 10 s.
const REQUEST_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Plugin calls: 5 us (a no-op call) to 100 ms (past any sane deadline).
const PLUGIN_BUCKETS: [f64; 14] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1,
];

fn request_histogram() -> Histogram {
    Histogram::new(&REQUEST_BUCKETS)
}

fn plugin_histogram() -> Histogram {
    Histogram::new(&PLUGIN_BUCKETS)
}

/// A histogram that observes with two relaxed atomic adds and no lock
/// (prometheus-client's own takes a mutex per observation and cannot be
/// read back, which the dashboard needs). Cheap to clone: clones share
/// their counts.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// One count per bound, then the count above the last bound.
    counts: Box<[AtomicU64]>,
    /// The sum of observations, in nanoseconds.
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self(Arc::new(HistogramInner {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }))
    }

    /// Counts a duration.
    pub fn observe(&self, d: Duration) {
        let seconds = d.as_secs_f64();
        let i = self
            .0
            .bounds
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(self.0.bounds.len());
        if let Some(count) = self.0.counts.get(i) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The counts so far: per bucket (not cumulative; the last is above
    /// every bound), and the sum in seconds.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.0.bounds,
            counts: self
                .0
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A histogram's counts at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// The upper bounds of the buckets, seconds.
    pub bounds: &'static [f64],
    /// Per bucket, the last above every bound.
    pub counts: Vec<u64>,
    /// The sum of observations, seconds.
    pub sum: f64,
}

impl HistogramSnapshot {
    /// How many observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// What was observed between `earlier` and this snapshot.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .zip(earlier.counts.iter().chain(std::iter::repeat(&0)))
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
            sum: (self.sum - earlier.sum).max(0.0),
        }
    }

    /// The `q` quantile (0 to 1) in seconds, interpolated within its bucket
    /// as Prometheus's `histogram_quantile` does; `None` without
    /// observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &count) in self.counts.iter().enumerate() {
            if count > 0 && (below + count) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let Some(&upper) = self.bounds.get(i) else {
                    // Above the last bound: the last bound is all we know.
                    return Some(lower);
                };
                let within = (rank - below as f64) / count as f64;
                return Some(lower + (upper - lower) * within);
            }
            below += count;
        }
        self.bounds.last().copied()
    }
}

impl prometheus_client::metrics::TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = self.snapshot();
        let buckets: Vec<(f64, u64)> = snapshot
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(snapshot.counts.iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(snapshot.sum, snapshot.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The route label of a request that matched no route.
pub const NO_ROUTE: &str = "(no route)";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    route: Arc<str>,
    consumer: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    plugin: Arc<str>,
    route: Arc<str>,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LinkLabels {
    plugin: Arc<str>,
    route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboundLabels {
    plugin: Arc<str>,
    route: Arc<str>,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShadowLabels {
    plugin: Arc<str>,
    route: Arc<str>,
    live: Decision,
    candidate: Decision,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    plugin: Arc<str>,
    route: Arc<str>,
    decision: Decision,
}

/// What a plugin decided, as the `decision` label shows it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Decision {
    /// The request went on.
    Continue,
    /// The plugin answered with this status.
    Respond(u16),
    /// The plugin failed and the request failed with it.
    Failed,
    /// The plugin failed and the request went on without it.
    FailedAllowed,
}

impl prometheus_client::encoding::EncodeLabelValue for Decision {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        match self {
            Decision::Continue => encoder.write_str("continue"),
            Decision::Respond(status) => write!(encoder, "{status}"),
            Decision::Failed => encoder.write_str("failed"),
            Decision::FailedAllowed => encoder.write_str("failed_allowed"),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    plugin: Arc<str>,
    route: Arc<str>,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

/// The failure kind of a plugin error, as `portcullis_plugin_failures_total`
/// labels it.
pub fn failure_kind(error: &PluginError) -> &'static str {
    match error {
        PluginError::Trap(_) => "trap",
        PluginError::Deadline(_) => "deadline",
        PluginError::Memory(_) => "memory",
        PluginError::Exhausted => "exhausted",
        PluginError::Busy(_) => "busy",
        PluginError::BadResult(_) => "invalid_result",
        PluginError::Instantiate(_) => "instantiate",
        PluginError::Compile(_) | PluginError::WrongWorld(_) | PluginError::Config(_) => "load",
    }
}

/// The method labels: the standard methods by name, anything else `OTHER`.
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

/// A request's method label, as an index into the labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodLabel(u8);

impl MethodLabel {
    /// The label's text.
    pub fn as_str(self) -> &'static str {
        METHODS.get(usize::from(self.0)).copied().unwrap_or("OTHER")
    }
}

/// The method label of `method`.
pub fn method_label(method: &http::Method) -> MethodLabel {
    MethodLabel(match *method {
        http::Method::GET => 0,
        http::Method::POST => 1,
        http::Method::PUT => 2,
        http::Method::DELETE => 3,
        http::Method::PATCH => 4,
        http::Method::HEAD => 5,
        http::Method::OPTIONS => 6,
        http::Method::CONNECT => 7,
        http::Method::TRACE => 8,
        _ => 9,
    })
}

/// Slots of a route's request table: distinct (method, status) pairs a
/// route sees before the rare ones go to a locked overflow map.
const CODE_SLOTS: usize = 64;

/// A route's requests by method and status, and by status class: what
/// `portcullis_requests_total` and the dashboard read. The request path
/// counts with two atomic operations and no lock: an open-addressing
/// table whose slots are claimed once by compare-and-swap. Shared by the
/// route's handles in every generation (by route name).
#[derive(Debug)]
pub struct RouteCounts {
    /// Index 1 for 1xx to 5 for 5xx; 0 for anything else.
    classes: [AtomicU64; 6],
    /// `(method + 1) << 16 | status`, 0 for a free slot; and its count.
    slots: [(AtomicU32, AtomicU64); CODE_SLOTS],
    /// Pairs beyond the table's slots (a route answering more than 64
    /// distinct method and status pairs).
    overflow: Mutex<HashMap<u32, u64>>,
}

impl Default for RouteCounts {
    fn default() -> Self {
        Self {
            classes: Default::default(),
            slots: std::array::from_fn(|_| Default::default()),
            overflow: Mutex::default(),
        }
    }
}

impl RouteCounts {
    fn add(&self, method: MethodLabel, status: u16) {
        if let Some(class) = self.classes.get(usize::from(status / 100)) {
            class.fetch_add(1, Ordering::Relaxed);
        }
        let key = (u32::from(method.0) + 1) << 16 | u32::from(status);
        let start = (usize::from(status) * 7 + usize::from(method.0)) % CODE_SLOTS;
        for i in 0..CODE_SLOTS {
            let (slot, count) = &self.slots[(start + i) % CODE_SLOTS];
            let mut found = slot.load(Ordering::Acquire);
            if found == 0 {
                found = match slot.compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => key,
                    Err(taken) => taken,
                };
            }
            if found == key {
                count.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut overflow = match self.overflow.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *overflow.entry(key).or_default() += 1;
    }

    /// Every (method, status, count) counted so far.
    fn by_code(&self) -> Vec<(&'static str, u16, u64)> {
        let split = |key: u32| {
            let method = MethodLabel(u8::try_from((key >> 16).saturating_sub(1)).unwrap_or(9));
            (method.as_str(), (key & 0xffff) as u16)
        };
        let mut found: Vec<(&'static str, u16, u64)> = self
            .slots
            .iter()
            .filter_map(|(slot, count)| {
                let key = slot.load(Ordering::Acquire);
                (key != 0).then(|| {
                    let (method, code) = split(key);
                    (method, code, count.load(Ordering::Relaxed))
                })
            })
            .collect();
        let overflow = match self.overflow.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        found.extend(overflow.iter().map(|(key, n)| {
            let (method, code) = split(*key);
            (method, code, *n)
        }));
        found.sort_unstable();
        found
    }
}

/// What the scrape-time metrics are read from; set once the gateway is
/// built (the registry needs the metrics first).
#[derive(Debug)]
pub struct Sources {
    /// The registry, for the current generation and its modules.
    pub registry: Weak<Registry>,
    /// The shared store, for its usage per namespace.
    pub store: Arc<dyn StoreBackend>,
    /// The alert queue, for its counters.
    pub alerts: AlertSender,
}

/// Every metric of one gateway.
pub struct Metrics {
    prometheus: Prometheus,
    consumer_requests: Family<ConsumerLabels, Counter>,
    request_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    overhead: Family<RouteLabel, Histogram, fn() -> Histogram>,
    upstream_duration: Family<UpstreamLabel, Histogram, fn() -> Histogram>,
    plugin_calls: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    decisions: Family<DecisionLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    shadow_comparisons: Family<ShadowLabels, Counter>,
    shadow_dropped: Family<LinkLabels, Counter>,
    outbound_calls: Family<OutboundLabels, Counter>,
    outbound_duration: Family<LinkLabels, Histogram, fn() -> Histogram>,
    reloads: Family<ReloadLabels, Counter>,
    connections: Family<ListenerLabel, Gauge>,
    received: Family<ListenerLabel, Counter>,
    sent: Family<ListenerLabel, Counter>,
    generation: Gauge,
    last_reload: Gauge<f64, AtomicU64>,
    /// Requests by status class per route name, shared by the route's
    /// handles in every generation.
    routes: Arc<dashmap::DashMap<Arc<str>, Arc<RouteCounts>>>,
    no_route: RouteMetrics,
    started: SystemTime,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Registers `metric` and returns the handle the gateway updates.
fn registered<M: prometheus_client::registry::Metric + Clone>(
    p: &mut Prometheus,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    metric: M,
) -> M {
    match unit {
        Some(unit) => p.register_with_unit(name, help, unit, metric.clone()),
        None => p.register(name, help, metric.clone()),
    }
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Arc::new(OnceLock::new()))
    }
}

impl Metrics {
    /// The metrics of a gateway whose scrape-time values come from
    /// `sources` once it is set.
    pub fn new(sources: Arc<OnceLock<Sources>>) -> Self {
        let mut p = Prometheus::with_prefix("portcullis");
        let consumer_requests = registered(
            &mut p,
            "consumer_requests",
            "Requests answered on routes with metrics_consumer_label = true, by consumer",
            None,
            Family::<ConsumerLabels, Counter>::default(),
        );
        let request_duration = registered(
            &mut p,
            "request_duration",
            "Time from the request head to the response head, by route",
            Some(Unit::Seconds),
            Family::new_with_constructor(request_histogram as fn() -> _),
        );
        let overhead = registered(
            &mut p,
            "gateway_overhead",
            "The gateway's own share of a request's time (request time minus upstream time), by route",
            Some(Unit::Seconds),
            Family::new_with_constructor(request_histogram as fn() -> _),
        );
        let upstream_duration = registered(
            &mut p,
            "upstream_duration",
            "Time from sending to an upstream to its response head, retries included, by upstream group",
            Some(Unit::Seconds),
            Family::new_with_constructor(request_histogram as fn() -> _),
        );
        let plugin_calls = registered(
            &mut p,
            "plugin_call_duration",
            "Time of one plugin hook call, waiting for a turn included, by plugin, route and phase",
            Some(Unit::Seconds),
            Family::new_with_constructor(plugin_histogram as fn() -> _),
        );
        let decisions = registered(
            &mut p,
            "plugin_decisions",
            "What plugins decided: continue, the status they answered, failed or failed_allowed",
            None,
            Family::<DecisionLabels, Counter>::default(),
        );
        let failures = registered(
            &mut p,
            "plugin_failures",
            "Failed plugin calls by plugin, route and kind: trap, deadline, memory, exhausted, busy, invalid_result, instantiate, load",
            None,
            Family::<FailureLabels, Counter>::default(),
        );
        let shadow_comparisons = registered(
            &mut p,
            "shadow_comparisons",
            "Requests a shadow candidate decided on, by plugin, route, the live decision and the candidate's (continue, a status, failed, failed_allowed)",
            None,
            Family::<ShadowLabels, Counter>::default(),
        );
        let shadow_dropped = registered(
            &mut p,
            "shadow_dropped",
            "Copies of requests a shadow candidate did not see because its queue was full",
            None,
            Family::<LinkLabels, Counter>::default(),
        );
        let outbound_calls = registered(
            &mut p,
            "plugin_http_calls",
            "Outbound HTTP calls of plugins by plugin, route and outcome: ok (any status), refused (not allowed, private address, bad request), busy, timeout, too_large, failed",
            None,
            Family::<OutboundLabels, Counter>::default(),
        );
        let outbound_duration = registered(
            &mut p,
            "plugin_http_call_duration",
            "Time of plugins' outbound HTTP calls that were sent (redirects and the whole body included), by plugin and route",
            Some(Unit::Seconds),
            Family::new_with_constructor(request_histogram as fn() -> _),
        );
        let reloads = registered(
            &mut p,
            "reloads",
            "Reloads by what caused them (startup, config, plugin, optimized, admin) and result",
            None,
            Family::<ReloadLabels, Counter>::default(),
        );
        let generation = registered(
            &mut p,
            "generation",
            "The id of the generation serving now",
            None,
            Gauge::default(),
        );
        let last_reload = registered(
            &mut p,
            "last_reload_success_timestamp",
            "When a generation last went live, seconds since the Unix epoch",
            Some(Unit::Seconds),
            Gauge::<f64, AtomicU64>::default(),
        );
        let connections = registered(
            &mut p,
            "open_connections",
            "Client connections open now, by listener address",
            None,
            Family::<ListenerLabel, Gauge>::default(),
        );
        let received = registered(
            &mut p,
            "received",
            "Bytes read from clients (TLS records included), by listener address",
            Some(Unit::Bytes),
            Family::<ListenerLabel, Counter>::default(),
        );
        let sent = registered(
            &mut p,
            "sent",
            "Bytes written to clients (TLS records included), by listener address",
            Some(Unit::Bytes),
            Family::<ListenerLabel, Counter>::default(),
        );
        let started = SystemTime::now();
        let start_time = Gauge::<f64, AtomicU64>::default();
        start_time.set(unix_seconds(started));
        p.register_with_unit(
            "start_time",
            "When the gateway started, seconds since the Unix epoch",
            Unit::Seconds,
            start_time,
        );
        let routes: Arc<dashmap::DashMap<Arc<str>, Arc<RouteCounts>>> = Arc::default();
        p.register_collector(Box::new(Live {
            sources,
            routes: routes.clone(),
        }));
        let no_route_label = RouteLabel {
            route: Arc::from(NO_ROUTE),
        };
        let no_route = RouteMetrics {
            route: no_route_label.route.clone(),
            duration: request_duration.get_or_create_owned(&no_route_label),
            overhead: overhead.get_or_create_owned(&no_route_label),
            // Never observed: no upstream is asked.
            upstream: request_histogram(),
            counts: Arc::default(),
            consumer_label: false,
        };
        routes.insert(no_route.route.clone(), no_route.counts.clone());
        Self {
            prometheus: p,
            consumer_requests,
            request_duration,
            overhead,
            upstream_duration,
            plugin_calls,
            decisions,
            failures,
            shadow_comparisons,
            shadow_dropped,
            outbound_calls,
            outbound_duration,
            reloads,
            connections,
            received,
            sent,
            generation,
            last_reload,
            routes,
            no_route,
            started,
        }
    }

    /// When the gateway started.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// The handles of route `route` (`upstream` is its upstream group).
    pub fn route(&self, route: &Arc<str>, upstream: &str, consumer_label: bool) -> RouteMetrics {
        let label = RouteLabel {
            route: route.clone(),
        };
        RouteMetrics {
            route: route.clone(),
            duration: self.request_duration.get_or_create_owned(&label),
            overhead: self.overhead.get_or_create_owned(&label),
            upstream: self.upstream_duration.get_or_create_owned(&UpstreamLabel {
                upstream: upstream.into(),
            }),
            counts: self.routes.entry(route.clone()).or_default().clone(),
            consumer_label,
        }
    }

    /// The handles of plugin `plugin` on route `route`.
    pub fn link(&self, plugin: &Arc<str>, route: &Arc<str>) -> LinkMetrics {
        let phase = |phase| PhaseLabels {
            plugin: plugin.clone(),
            route: route.clone(),
            phase,
        };
        LinkMetrics {
            plugin: plugin.clone(),
            route: route.clone(),
            on_request: self.plugin_calls.get_or_create_owned(&phase("request")),
            on_response: self.plugin_calls.get_or_create_owned(&phase("response")),
            continued: self.decisions.get_or_create_owned(&DecisionLabels {
                plugin: plugin.clone(),
                route: route.clone(),
                decision: Decision::Continue,
            }),
            decisions: self.decisions.clone(),
            failures: self.failures.clone(),
        }
    }

    /// The handles of a shadow candidate of `plugin` on `route`.
    pub fn shadow(&self, plugin: &Arc<str>, route: &Arc<str>) -> ShadowMetrics {
        ShadowMetrics {
            plugin: plugin.clone(),
            route: route.clone(),
            comparisons: self.shadow_comparisons.clone(),
            dropped: self.shadow_dropped.get_or_create_owned(&LinkLabels {
                plugin: plugin.clone(),
                route: route.clone(),
            }),
        }
    }

    /// The handles of `plugin`'s outbound HTTP calls on `route`.
    pub fn outbound(&self, plugin: &Arc<str>, route: &Arc<str>) -> OutboundMetrics {
        let outcome = |outcome| {
            self.outbound_calls.get_or_create_owned(&OutboundLabels {
                plugin: plugin.clone(),
                route: route.clone(),
                outcome,
            })
        };
        OutboundMetrics {
            ok: outcome("ok"),
            refused: outcome("refused"),
            busy: outcome("busy"),
            timeout: outcome("timeout"),
            too_large: outcome("too_large"),
            failed: outcome("failed"),
            duration: self.outbound_duration.get_or_create_owned(&LinkLabels {
                plugin: plugin.clone(),
                route: route.clone(),
            }),
        }
    }

    /// The handles of requests that matched no route.
    pub fn no_route(&self) -> &RouteMetrics {
        &self.no_route
    }

    /// Counts a request on `route` answered with `status` after `total`,
    /// of which `upstream` waiting for the upstream.
    pub fn request(
        &self,
        route: &RouteMetrics,
        method: MethodLabel,
        status: u16,
        total: Duration,
        upstream: Option<Duration>,
        consumer: Option<&str>,
    ) {
        route.duration.observe(total);
        route
            .overhead
            .observe(total.saturating_sub(upstream.unwrap_or_default()));
        if let Some(upstream) = upstream {
            route.upstream.observe(upstream);
        }
        route.counts.add(method, status);
        if route.consumer_label {
            self.consumer_requests
                .get_or_create(&ConsumerLabels {
                    route: route.route.clone(),
                    consumer: consumer.unwrap_or("").to_owned(),
                    code: status,
                })
                .inc();
        }
    }

    /// Counts a reload and, when it applied, the new generation.
    pub fn reloaded(&self, event: &ReloadEvent) {
        if let ReloadOutcome::Applied { generation, .. } = &event.outcome {
            self.generation
                .set(i64::try_from(*generation).unwrap_or(i64::MAX));
            self.last_reload.set(unix_seconds(SystemTime::now()));
        }
        self.reloads
            .get_or_create(&ReloadLabels {
                kind: event.trigger.kind(),
                result: event.outcome.kind(),
            })
            .inc();
    }

    /// The counters of listener `address`'s connections.
    pub fn listener(&self, address: &str) -> ListenerMetrics {
        let label = ListenerLabel {
            listener: address.to_owned(),
        };
        ListenerMetrics {
            open: self.connections.get_or_create_owned(&label),
            received: self.received.get_or_create_owned(&label),
            sent: self.sent.get_or_create_owned(&label),
        }
    }

    /// Every metric in the Prometheus text format (0.0.4).
    pub fn prometheus_text(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.prometheus);
        text
    }

    /// Every metric in the OpenMetrics text format.
    pub fn openmetrics_text(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.prometheus);
        text
    }
}

/// The handles a route's requests use.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    route: Arc<str>,
    duration: Histogram,
    overhead: Histogram,
    upstream: Histogram,
    /// Requests by status class: index 1 for 1xx to 5 for 5xx.
    counts: Arc<RouteCounts>,
    consumer_label: bool,
}

impl RouteMetrics {
    /// The request-duration histogram (for the dashboard's percentiles).
    pub fn duration(&self) -> &Histogram {
        &self.duration
    }

    /// The overhead histogram.
    pub fn overhead(&self) -> &Histogram {
        &self.overhead
    }

    /// The route's name (its label).
    pub fn name(&self) -> &Arc<str> {
        &self.route
    }

    /// Whether requests are also counted by consumer.
    pub fn consumer_label(&self) -> bool {
        self.consumer_label
    }

    /// Requests so far by status class: index 1 for 1xx to 5 for 5xx.
    pub fn classes(&self) -> [u64; 6] {
        std::array::from_fn(|i| self.counts.classes[i].load(Ordering::Relaxed))
    }
}

/// The handles of one plugin's outbound HTTP calls on one route, resolved
/// once, so that counting a call takes no lookup.
#[derive(Debug, Clone)]
pub struct OutboundMetrics {
    /// Calls answered (any status).
    pub ok: Counter,
    /// Calls refused before a socket opened, or by the address check.
    pub refused: Counter,
    /// Calls refused because too many were in flight.
    pub busy: Counter,
    /// Calls that ran out of time.
    pub timeout: Counter,
    /// Calls whose answer was too large.
    pub too_large: Counter,
    /// Calls that failed to connect or in the exchange.
    pub failed: Counter,
    /// Durations of calls that were sent.
    pub duration: Histogram,
}

/// The handles of a shadow candidate.
#[derive(Debug, Clone)]
pub struct ShadowMetrics {
    plugin: Arc<str>,
    route: Arc<str>,
    comparisons: Family<ShadowLabels, Counter>,
    /// Copies dropped because the candidate's queue was full.
    pub dropped: Counter,
}

impl ShadowMetrics {
    /// Counts one comparison.
    pub fn compared(&self, live: Decision, candidate: Decision) {
        self.comparisons
            .get_or_create(&ShadowLabels {
                plugin: self.plugin.clone(),
                route: self.route.clone(),
                live,
                candidate,
            })
            .inc();
    }
}

/// The handles of one plugin on one route.
#[derive(Debug, Clone)]
pub struct LinkMetrics {
    plugin: Arc<str>,
    route: Arc<str>,
    /// `on-request` call durations.
    pub on_request: Histogram,
    /// `on-response` call durations.
    pub on_response: Histogram,
    continued: Counter,
    decisions: Family<DecisionLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
}

impl LinkMetrics {
    /// Counts a decision (continue is resolved ahead; the others, rarer,
    /// are looked up).
    pub fn decided(&self, decision: Decision) {
        if decision == Decision::Continue {
            self.continued.inc();
            return;
        }
        self.decisions
            .get_or_create(&DecisionLabels {
                plugin: self.plugin.clone(),
                route: self.route.clone(),
                decision,
            })
            .inc();
    }

    /// Counts a failed call.
    pub fn failed(&self, error: &PluginError) {
        self.failures
            .get_or_create(&FailureLabels {
                plugin: self.plugin.clone(),
                route: self.route.clone(),
                kind: failure_kind(error),
            })
            .inc();
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &Arc<str> {
        &self.plugin
    }

    /// Calls and decisions so far: `(decision, count)` for this plugin on
    /// this route.
    pub fn decisions(&self) -> Vec<(Decision, u64)> {
        let mut found = vec![(Decision::Continue, self.continued.get())];
        for status in 100..600 {
            let labels = DecisionLabels {
                plugin: self.plugin.clone(),
                route: self.route.clone(),
                decision: Decision::Respond(status),
            };
            if let Some(counter) = self.decisions.get(&labels) {
                found.push((Decision::Respond(status), counter.get()));
            }
        }
        for decision in [Decision::Failed, Decision::FailedAllowed] {
            let labels = DecisionLabels {
                plugin: self.plugin.clone(),
                route: self.route.clone(),
                decision,
            };
            if let Some(counter) = self.decisions.get(&labels) {
                found.push((decision, counter.get()));
            }
        }
        found
    }

    /// Failures so far by kind.
    pub fn failures(&self) -> Vec<(&'static str, u64)> {
        let kinds = [
            "trap",
            "deadline",
            "memory",
            "exhausted",
            "busy",
            "invalid_result",
            "instantiate",
            "load",
        ];
        kinds
            .into_iter()
            .map(|kind| {
                let labels = FailureLabels {
                    plugin: self.plugin.clone(),
                    route: self.route.clone(),
                    kind,
                };
                (kind, self.failures.get(&labels).map_or(0, |c| c.get()))
            })
            .collect()
    }
}

/// The counters of one listener's connections.
#[derive(Debug, Clone, Default)]
pub struct ListenerMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Bytes read from clients.
    pub received: Counter,
    /// Bytes written to clients.
    pub sent: Counter,
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The metrics read at scrape time.
#[derive(Debug)]
struct Live {
    sources: Arc<OnceLock<Sources>>,
    /// Each route's requests (and `(no route)`'s), by name.
    routes: Arc<dashmap::DashMap<Arc<str>, Arc<RouteCounts>>>,
}

/// A gauge or counter value with its labels, for [`encode_family`].
fn encode_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    values: &[(L, f64)],
) -> Result<(), std::fmt::Error> {
    if values.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in values {
        let mut family = metric.encode_family(labels)?;
        match kind {
            MetricType::Counter => {
                // Counters here are whole counts.
                family.encode_counter::<NoLabelSet, _, u64>(&(*value as u64), None)?
            }
            _ => family.encode_gauge(value)?,
        }
    }
    Ok(())
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut requests = Vec::new();
        for entry in self.routes.iter() {
            for (method, code, count) in entry.value().by_code() {
                requests.push((
                    vec![
                        ("route", entry.key().to_string()),
                        ("method", method.to_owned()),
                        ("code", code.to_string()),
                    ],
                    count as f64,
                ));
            }
        }
        encode_family(
            &mut encoder,
            "requests",
            "Requests answered, by route, method and status code",
            None,
            MetricType::Counter,
            &requests,
        )?;
        let Some(sources) = self.sources.get() else {
            return Ok(());
        };
        let counts = sources.alerts.counts();
        let mut alerts = vec![(
            vec![
                ("sink", "queue".to_owned()),
                ("result", "dropped".to_owned()),
            ],
            counts.dropped_queue_full as f64,
        )];
        for sink in sources.alerts.sink_counts() {
            let mut add = |result: &str, value: u64| {
                alerts.push((
                    vec![("sink", sink.sink.clone()), ("result", result.to_owned())],
                    value as f64,
                ));
            };
            add("delivered", sink.delivered);
            if sink.sink != "log" {
                add("failed", sink.failed);
                add("dropped", sink.dropped);
            }
        }
        encode_family(
            &mut encoder,
            "alerts",
            "Alerts by sink and what became of them: delivered (logged, or accepted by a webhook), failed after a webhook's retries, or dropped with a queue full (sink `queue`: the main queue, before any sink)",
            None,
            MetricType::Counter,
            &alerts,
        )?;
        let usage = sources.store.usage();
        let entries: Vec<_> = usage
            .iter()
            .map(|u| (vec![("plugin", u.namespace.clone())], u.entries as f64))
            .collect();
        encode_family(
            &mut encoder,
            "store_entries",
            "Entries in the shared store, by plugin namespace",
            None,
            MetricType::Gauge,
            &entries,
        )?;
        let bytes: Vec<_> = usage
            .iter()
            .map(|u| (vec![("plugin", u.namespace.clone())], u.bytes as f64))
            .collect();
        encode_family(
            &mut encoder,
            "store",
            "Bytes in the shared store, by plugin namespace",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            &bytes,
        )?;
        let Some(registry) = sources.registry.upgrade() else {
            return Ok(());
        };
        if let Some(spans) = registry.spans() {
            let stats = spans.stats();
            let spans: Vec<_> = [
                ("exported", &stats.exported),
                ("dropped", &stats.dropped),
                ("failed", &stats.failed),
            ]
            .into_iter()
            .map(|(result, count)| {
                (
                    vec![("result", result.to_owned())],
                    count.load(std::sync::atomic::Ordering::Relaxed) as f64,
                )
            })
            .collect();
            encode_family(
                &mut encoder,
                "otlp_spans",
                "Spans by what became of them: exported (accepted by the collector), dropped with the export queue full, or failed (refused, or the collector unreachable)",
                None,
                MetricType::Counter,
                &spans,
            )?;
        }
        let generation = registry.current();
        let mut instances = Vec::new();
        let mut servers = Vec::new();
        let mut seen_upstreams = std::collections::HashSet::new();
        for route in &generation.routes {
            for link in &route.chain {
                let labels = |state: &'static str| {
                    vec![
                        ("plugin", link.plugin.to_string()),
                        ("route", route.name.to_string()),
                        ("state", state.to_owned()),
                    ]
                };
                instances.push((labels("in_use"), link.pool.in_use() as f64));
                instances.push((labels("idle"), link.pool.idle_count() as f64));
            }
            let upstream = &route.upstream;
            if seen_upstreams.insert(Arc::as_ptr(upstream)) {
                for server in upstream.health() {
                    let healthy = server.up && server.ejected_for_ms == 0;
                    servers.push((
                        vec![
                            ("upstream", upstream.name().to_owned()),
                            ("server", server.address),
                        ],
                        if healthy { 1.0 } else { 0.0 },
                    ));
                }
            }
        }
        encode_family(
            &mut encoder,
            "plugin_instances",
            "Plugin instances by plugin, route and state (in_use or idle)",
            None,
            MetricType::Gauge,
            &instances,
        )?;
        encode_family(
            &mut encoder,
            "upstream_server_healthy",
            "1 when an upstream server takes requests (active checks pass, not ejected), else 0",
            None,
            MetricType::Gauge,
            &servers,
        )?;
        let mut certificates = Vec::new();
        // The runtime listeners are built from the configured ones, in order.
        let listeners = generation
            .listeners
            .iter()
            .zip(&generation.config.listeners);
        for (listener, config) in listeners {
            for cert in listener.tls.iter().flat_map(|t| &t.certificates) {
                certificates.push((
                    vec![
                        ("name", cert.display_name()),
                        ("listener", config.address.to_string()),
                        ("file", cert.file.clone()),
                    ],
                    unix_seconds(cert.not_after),
                ));
            }
        }
        if let Some(admin) = &generation.config.admin {
            for cert in generation.admin_tls.iter().flat_map(|t| &t.certificates) {
                certificates.push((
                    vec![
                        ("name", cert.display_name()),
                        ("listener", format!("admin {}", admin.address)),
                        ("file", cert.file.clone()),
                    ],
                    unix_seconds(cert.not_after),
                ));
            }
        }
        encode_family(
            &mut encoder,
            "tls_certificate_not_after",
            "When each listener certificate expires, seconds since the Unix epoch, by its first DNS name, listener (the admin listener's as `admin <address>`) and file",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            &certificates,
        )?;
        Ok(())
    }
}
