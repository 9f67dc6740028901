//! The dashboard's time series: every few seconds the sampler reads each
//! route's counters and histograms (kept by the request path anyway) and
//! keeps the difference, 15 minutes of it; `/stats` adds the totals of
//! now. Nothing is added to the request path.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::metrics::{Decision, HistogramSnapshot, RouteMetrics};
use crate::registry::Registry;

/// How long the series covers.
const WINDOW: Duration = Duration::from_secs(15 * 60);

/// Where one route's counters stood at the last sample.
#[derive(Debug, Clone)]
struct Mark {
    classes: [u64; 6],
    duration: HistogramSnapshot,
    overhead: HistogramSnapshot,
}

impl Mark {
    fn of(route: &RouteMetrics) -> Self {
        Self {
            classes: route.classes(),
            duration: route.duration().snapshot(),
            overhead: route.overhead().snapshot(),
        }
    }
}

#[derive(Debug, Default)]
struct Series {
    marks: HashMap<Arc<str>, Mark>,
    samples: VecDeque<Value>,
}

/// Samples the routes' counters at a fixed interval.
#[derive(Debug)]
pub struct Sampler {
    interval: Duration,
    series: Mutex<Series>,
}

/// Seconds as milliseconds, to the microsecond.
fn ms(seconds: Option<f64>) -> Value {
    seconds.map_or(Value::Null, |s| json!((s * 1e6).round() / 1e3))
}

fn per_second(count: u64, interval: Duration) -> f64 {
    let rate = count as f64 / interval.as_secs_f64().max(0.001);
    (rate * 100.0).round() / 100.0
}

const CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

impl Sampler {
    /// A sampler taking one sample every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            series: Mutex::new(Series::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Series> {
        match self.series.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The routes whose counters are sampled: the current generation's,
    /// and requests that matched none.
    fn routes(registry: &Registry) -> Vec<RouteMetrics> {
        let generation = registry.current();
        let mut routes: Vec<RouteMetrics> = generation
            .routes
            .iter()
            .map(|r| r.metrics.clone())
            .collect();
        routes.push(registry.metrics().no_route().clone());
        routes
    }

    /// Takes one sample now.
    pub fn sample(&self, registry: &Registry) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut series = self.lock();
        let mut routes = Map::new();
        let mut marks = HashMap::new();
        for route in Self::routes(registry) {
            let now = Mark::of(&route);
            let before = series.marks.get(route.name());
            let (classes, duration, overhead) = match before {
                Some(before) => (
                    std::array::from_fn::<u64, 6, _>(|i| {
                        now.classes[i].saturating_sub(before.classes[i])
                    }),
                    now.duration.since(&before.duration),
                    now.overhead.since(&before.overhead),
                ),
                // First sight of the route: nothing to compare with yet.
                None => (
                    [0; 6],
                    now.duration.since(&now.duration),
                    now.overhead.since(&now.overhead),
                ),
            };
            let total: u64 = classes.iter().sum();
            let mut by_class = Map::new();
            for (i, name) in CLASSES.iter().enumerate().skip(1) {
                by_class.insert((*name).into(), json!(per_second(classes[i], self.interval)));
            }
            routes.insert(
                route.name().to_string(),
                json!({
                    "rps": per_second(total, self.interval),
                    "classes": by_class,
                    "p50_ms": ms(duration.quantile(0.5)),
                    "p99_ms": ms(duration.quantile(0.99)),
                    "overhead_p50_ms": ms(overhead.quantile(0.5)),
                    "overhead_p99_ms": ms(overhead.quantile(0.99)),
                }),
            );
            marks.insert(route.name().clone(), now);
        }
        series.marks = marks;
        series
            .samples
            .push_back(json!({ "time_ms": now_ms, "routes": routes }));
        let keep = (WINDOW.as_secs_f64() / self.interval.as_secs_f64()).ceil() as usize;
        while series.samples.len() > keep.max(1) {
            series.samples.pop_front();
        }
    }

    /// Samples every interval until `shutdown` turns true.
    pub async fn run(
        self: Arc<Self>,
        registry: Arc<Registry>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.sample(&registry),
                _ = shutdown.wait_for(|down| *down) => break,
            }
        }
    }

    /// What `/stats` answers: the samples, and totals as of now.
    pub fn report(&self, registry: &Registry) -> Value {
        let generation = registry.current();
        let mut total_requests = 0u64;
        let mut routes = Vec::new();
        for route in Self::routes(registry) {
            let classes = route.classes();
            let requests: u64 = classes.iter().sum();
            total_requests += requests;
            let mut by_class = Map::new();
            for (i, name) in CLASSES.iter().enumerate() {
                if classes[i] > 0 {
                    by_class.insert((*name).into(), json!(classes[i]));
                }
            }
            routes.push(json!({
                "name": route.name().as_ref(),
                "requests": requests,
                "classes": by_class,
            }));
        }
        let mut plugins = Vec::new();
        let mut refusals: std::collections::BTreeMap<String, u64> = Default::default();
        for route in &generation.routes {
            for link in &route.chain {
                let (request, response) = (
                    link.metrics.on_request.snapshot(),
                    link.metrics.on_response.snapshot(),
                );
                let calls = request.count() + response.count();
                let mean_us = if calls == 0 {
                    Value::Null
                } else {
                    json!(((request.sum + response.sum) / calls as f64 * 1e7).round() / 10.0)
                };
                let mut decisions = Map::new();
                for (decision, count) in link.metrics.decisions() {
                    let key = match decision {
                        Decision::Continue => "continue".to_owned(),
                        Decision::Respond(status) => {
                            if status >= 400 {
                                *refusals.entry(status.to_string()).or_default() += count;
                            }
                            status.to_string()
                        }
                        Decision::Failed => "failed".to_owned(),
                        Decision::FailedAllowed => "failed_allowed".to_owned(),
                    };
                    decisions.insert(key, json!(count));
                }
                let failures: Map<String, Value> = link
                    .metrics
                    .failures()
                    .into_iter()
                    .map(|(kind, count)| (kind.to_owned(), json!(count)))
                    .collect();
                plugins.push(json!({
                    "plugin": link.plugin.as_ref(),
                    "route": route.name.as_ref(),
                    "calls": calls,
                    "mean_us": mean_us,
                    "decisions": decisions,
                    "failures": failures,
                }));
            }
        }
        let now = SystemTime::now();
        let certificates: Vec<Value> = generation
            .listeners
            .iter()
            .flat_map(|l| l.tls.iter().flat_map(|t| &t.certificates))
            .chain(generation.admin_tls.iter().flat_map(|t| &t.certificates))
            .map(|cert| {
                let left = cert.not_after.duration_since(now).unwrap_or_default();
                json!({
                    "name": cert.display_name(),
                    "file": cert.file,
                    "not_after": super::api::time(cert.not_after),
                    "days_left": left.as_secs() / 86_400,
                })
            })
            .collect();
        let series = self.lock();
        json!({
            "interval_seconds": self.interval.as_secs_f64(),
            "totals": { "requests": total_requests },
            "samples": series.samples.iter().collect::<Vec<_>>(),
            "routes": routes,
            "plugins": plugins,
            "refusals": refusals,
            "certificates": certificates,
        })
    }
}
