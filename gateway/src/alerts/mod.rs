//! The alert pipeline: plugins raise alerts through the `alert` import; they
//! go into a bounded queue and a sink task delivers them, so raising an alert
//! never blocks a request. When the queue is full the alert is dropped and
//! counted.
//!
//! The sink here is the log (target `portcullis::alert`). Webhook sinks come
//! with the alerts plugin.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// For information, e.g. an incident has cleared.
    Info,
    /// Needs attention.
    Warning,
    /// Needs attention now.
    Critical,
}

impl Severity {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

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

/// The sending side of the alert queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct AlertSender {
    tx: mpsc::Sender<Alert>,
    dropped: Arc<AtomicU64>,
}

impl AlertSender {
    /// Queues an alert without waiting; drops and counts it if the queue is full.
    pub fn send(&self, alert: Alert) {
        if self.tx.try_send(alert).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Alerts dropped because the queue was full (or the sink had stopped).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A bounded queue of `capacity` alerts.
pub fn queue(capacity: usize) -> (AlertSender, mpsc::Receiver<Alert>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        AlertSender {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        },
        rx,
    )
}

/// Delivers queued alerts to the log until every sender is gone.
pub async fn run_log_sink(mut rx: mpsc::Receiver<Alert>) {
    while let Some(alert) = rx.recv().await {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(kind: &str) -> Alert {
        Alert {
            time_ms: 1,
            severity: Severity::Warning,
            kind: kind.into(),
            message: "m".into(),
            plugin: "p".into(),
            route: "r".into(),
            labels: vec![],
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, mut rx) = queue(2);
        for i in 0..5 {
            tx.send(alert(&i.to_string()));
        }
        assert_eq!(tx.dropped(), 3);
        assert_eq!(rx.try_recv().map(|a| a.kind).ok().as_deref(), Some("0"));
        assert_eq!(rx.try_recv().map(|a| a.kind).ok().as_deref(), Some("1"));
        assert!(rx.try_recv().is_err());
    }
}
