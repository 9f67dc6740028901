//! The alert pipeline: plugins raise alerts through the `alert` import; they
//! go into a bounded queue, and one task hands them to the sinks configured
//! in `[alerts]`: the log (target `portcullis::alert`) and webhooks, each
//! with its own bounded queue, batching and retries ([`webhook`]). Raising an
//! alert never blocks a request: when a queue is full the alert is dropped
//! and counted ([`AlertCounts`]).
//!
//! The sinks follow config reloads: when `[alerts]` changes, new webhooks
//! start and the old ones deliver what they hold, then stop.

mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{AlertsConfig, Config};

pub use crate::config::Severity;

/// One alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// When it was raised, ms since the Unix epoch (gateway clock).
    pub time_ms: u64,
    /// How urgent.
    pub severity: Severity,
    /// Short machine-readable name, e.g. `auth-failures`.
    pub kind: String,
    /// Human-readable text.
    pub message: String,
    /// The plugin that raised it.
    pub plugin: String,
    /// The route it was raised on.
    pub route: String,
    /// Context such as the client IP or consumer.
    pub labels: Vec<(String, String)>,
}

impl Alert {
    /// The value of label `key`, if the plugin set it.
    pub fn label(&self, key: &str) -> Option<&str> {
        // The last one, as the `labels` map of a webhook payload keeps it.
        self.labels
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// How one alert is written to a webhook: the labels `consumer` and
/// `client_ip` become fields, labels whose values are whole numbers are
/// also gathered in `counts`, and every label is in `labels`.
///
/// ```json
/// {"time": "2026-12-01T10:00:00.000Z", "time_ms": 1796119200000,
///  "severity": "warning", "kind": "auth-failures", "route": "api",
///  "plugin": "alerts", "consumer": null, "client_ip": "203.0.113.7",
///  "counts": {"count": 20, "threshold": 20, "window_s": 10},
///  "message": "20 authentication failures from 203.0.113.7 in 10 s",
///  "labels": {"client_ip": "203.0.113.7", "count": "20", "state": "firing", ...}}
/// ```
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    time: String,
    time_ms: u64,
    severity: &'static str,
    kind: &'a str,
    route: &'a str,
    plugin: &'a str,
    consumer: Option<&'a str>,
    client_ip: Option<&'a str>,
    counts: BTreeMap<&'a str, i64>,
    message: &'a str,
    labels: BTreeMap<&'a str, &'a str>,
}

impl<'a> From<&'a Alert> for Payload<'a> {
    fn from(alert: &'a Alert) -> Self {
        let time = UNIX_EPOCH + Duration::from_millis(alert.time_ms);
        Payload {
            time: humantime::format_rfc3339_millis(time).to_string(),
            time_ms: alert.time_ms,
            severity: alert.severity.as_str(),
            kind: &alert.kind,
            route: &alert.route,
            plugin: &alert.plugin,
            consumer: alert.label("consumer"),
            client_ip: alert.label("client_ip"),
            counts: alert
                .labels
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.parse::<i64>().ok()?)))
                .collect(),
            message: &alert.message,
            labels: alert
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        }
    }
}

/// How many alerts the admin API keeps.
pub const RECENT: usize = 100;

/// Counters of the alert pipeline, and the last alerts delivered.
#[derive(Debug, Default)]
struct Stats {
    queue_full: AtomicU64,
    webhook_queue_full: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    /// The last [`RECENT`] alerts taken from the queue, oldest first
    /// (written by the sink task, not on the request path).
    recent: std::sync::Mutex<std::collections::VecDeque<Alert>>,
    /// Each sink's counters by its name, kept across reloads.
    sinks: std::sync::Mutex<Vec<(String, Arc<SinkStats>)>>,
}

/// One sink's counters.
#[derive(Debug, Default)]
struct SinkStats {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

impl Stats {
    /// The counters of the sink `name`, made on first use.
    fn sink(&self, name: &str) -> Arc<SinkStats> {
        let mut sinks = match self.sinks.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((_, stats)) = sinks.iter().find(|(n, _)| n == name) {
            return stats.clone();
        }
        let stats = Arc::new(SinkStats::default());
        sinks.push((name.to_owned(), stats.clone()));
        stats
    }

    /// `n` alerts a webhook (`sink`) accepted.
    fn delivered(&self, sink: &SinkStats, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
        sink.delivered.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` alerts a webhook (`sink`) gave up on.
    fn failed(&self, sink: &SinkStats, n: u64) {
        self.failed.fetch_add(n, Ordering::Relaxed);
        sink.failed.fetch_add(n, Ordering::Relaxed);
    }
}

/// What became of the alerts sent to one sink, since start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkCounts {
    /// `log`, or `webhooks[<index>] <host>` (the URL's path and query can
    /// hold a secret, so they are left out).
    pub sink: String,
    /// Written to the log, or accepted by the webhook (2xx).
    pub delivered: u64,
    /// Given up on after the webhook's retries ran out (or a 4xx).
    pub failed: u64,
    /// Not queued for the webhook because its queue was full.
    pub dropped: u64,
}

/// A snapshot of the alert pipeline's counters, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertCounts {
    /// Alerts dropped because the main queue (`limits.alert_queue`) was full.
    pub dropped_queue_full: u64,
    /// Alerts not queued for a webhook because its queue was full.
    pub dropped_webhook_queue_full: u64,
    /// Alerts a webhook accepted (2xx).
    pub delivered: u64,
    /// Alerts given up on after a webhook's retries ran out (or a 4xx).
    pub failed: u64,
}

/// The sending side of the alert queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct AlertSender {
    tx: mpsc::Sender<Alert>,
    stats: Arc<Stats>,
}

impl AlertSender {
    /// Queues an alert without waiting; drops and counts it if the queue is full.
    pub fn send(&self, alert: Alert) {
        if self.tx.try_send(alert).is_err() {
            self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "portcullis::alert", "alert queue full: alert dropped");
        }
    }

    /// Alerts dropped because the queue was full (or the sinks had stopped).
    pub fn dropped(&self) -> u64 {
        self.stats.queue_full.load(Ordering::Relaxed)
    }

    /// The last alerts taken from the queue, oldest first.
    pub fn recent(&self) -> Vec<Alert> {
        match self.stats.recent.lock() {
            Ok(recent) => recent.iter().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
        }
    }

    /// Each sink's counters, in the order the sinks were first configured.
    pub fn sink_counts(&self) -> Vec<SinkCounts> {
        let sinks = match self.stats.sinks.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        sinks
            .iter()
            .map(|(name, s)| SinkCounts {
                sink: name.clone(),
                delivered: load(&s.delivered),
                failed: load(&s.failed),
                dropped: load(&s.dropped),
            })
            .collect()
    }

    /// Every counter of the pipeline.
    pub fn counts(&self) -> AlertCounts {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AlertCounts {
            dropped_queue_full: load(&self.stats.queue_full),
            dropped_webhook_queue_full: load(&self.stats.webhook_queue_full),
            delivered: load(&self.stats.delivered),
            failed: load(&self.stats.failed),
        }
    }
}

/// The receiving side of the queue, for [`run`].
#[derive(Debug)]
pub struct AlertReceiver {
    rx: mpsc::Receiver<Alert>,
    stats: Arc<Stats>,
}

/// A bounded queue of `capacity` alerts.
pub fn queue(capacity: usize) -> (AlertSender, AlertReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let stats = Arc::new(Stats::default());
    (
        AlertSender {
            tx,
            stats: stats.clone(),
        },
        AlertReceiver { rx, stats },
    )
}

/// The sinks of one `[alerts]` configuration.
struct Sinks {
    config: AlertsConfig,
    /// The log sink's counters, when alerts go to the log.
    log: Option<Arc<SinkStats>>,
    webhooks: Vec<webhook::Webhook>,
}

/// A webhook's name as a sink: its place in the config and its host.
fn webhook_name(index: usize, url: &str) -> String {
    let host = url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
        .unwrap_or_default();
    format!("webhooks[{index}] {host}")
}

impl Sinks {
    fn new(config: &AlertsConfig, stats: &Arc<Stats>) -> Self {
        Self {
            config: config.clone(),
            log: config.log.then(|| stats.sink("log")),
            webhooks: config
                .webhooks
                .iter()
                .enumerate()
                .map(|(i, hook)| {
                    let sink = stats.sink(&webhook_name(i, &hook.url));
                    webhook::Webhook::spawn(hook.clone(), stats.clone(), sink)
                })
                .collect(),
        }
    }

    fn deliver(&self, alert: Alert, stats: &Stats) {
        if let Some(sink) = &self.log {
            log(&alert);
            sink.delivered.fetch_add(1, Ordering::Relaxed);
        }
        for hook in &self.webhooks {
            if !hook.send(&alert) {
                stats.webhook_queue_full.fetch_add(1, Ordering::Relaxed);
                hook.sink.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Delivers queued alerts until every sender is gone. `config` gives the
/// configuration serving now; the sinks are rebuilt when its `[alerts]`
/// changes.
pub async fn run(mut queue: AlertReceiver, config: impl Fn() -> Arc<Config> + Send + 'static) {
    let mut sinks = Sinks::new(&config().alerts, &queue.stats);
    while let Some(alert) = queue.rx.recv().await {
        let current = config();
        if current.alerts != sinks.config {
            // Dropping the old webhooks closes their queues: they deliver
            // what they hold, then stop.
            sinks = Sinks::new(&current.alerts, &queue.stats);
        }
        {
            let mut recent = match queue.stats.recent.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(alert.clone());
        }
        sinks.deliver(alert, &queue.stats);
    }
}

/// Writes an alert to the log.
fn log(alert: &Alert) {
    let labels = alert
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    tracing::warn!(
        target: "portcullis::alert",
        severity = alert.severity.as_str(),
        kind = %alert.kind,
        plugin = %alert.plugin,
        route = %alert.route,
        labels = %labels,
        time_ms = alert.time_ms,
        "{}",
        alert.message
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn alert(kind: &str) -> Alert {
        Alert {
            time_ms: 1_796_119_200_123,
            severity: Severity::Warning,
            kind: kind.into(),
            message: "m".into(),
            plugin: "p".into(),
            route: "r".into(),
            labels: vec![
                ("client_ip".into(), "203.0.113.7".into()),
                ("count".into(), "20".into()),
                ("state".into(), "firing".into()),
            ],
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, mut rx) = queue(2);
        for i in 0..5 {
            tx.send(alert(&i.to_string()));
        }
        assert_eq!(tx.dropped(), 3);
        assert_eq!(tx.counts().dropped_queue_full, 3);
        assert_eq!(rx.rx.try_recv().map(|a| a.kind).ok().as_deref(), Some("0"));
        assert_eq!(rx.rx.try_recv().map(|a| a.kind).ok().as_deref(), Some("1"));
        assert!(rx.rx.try_recv().is_err());
    }

    #[test]
    fn the_payload_lifts_well_known_labels() {
        let alert = alert("auth-failures");
        let json = serde_json::to_value(Payload::from(&alert)).expect("serializes");
        assert_eq!(json["time"], "2026-12-01T10:00:00.123Z");
        assert_eq!(json["severity"], "warning");
        assert_eq!(json["kind"], "auth-failures");
        assert_eq!(json["route"], "r");
        assert_eq!(json["client_ip"], "203.0.113.7");
        assert_eq!(json["consumer"], serde_json::Value::Null);
        assert_eq!(json["counts"], serde_json::json!({ "count": 20 }));
        assert_eq!(json["labels"]["state"], "firing");
    }
}
