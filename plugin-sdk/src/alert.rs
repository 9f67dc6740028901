//! Alerts for the gateway's alert sinks.
//!
//! ```no_run
//! use portcullis_sdk::alert::{self, Alert};
//!
//! alert::raise(
//!     Alert::warning("auth-failures", "20 failed logins in a minute")
//!         .label("client_ip", "203.0.113.7"),
//! );
//! ```

use crate::__private::bindings::portcullis::policy::host::{self, Severity};

/// An alert: a severity, a short machine-readable kind such as
/// `auth-failures`, a message for people, and labels for context.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Alert {
    severity: Severity,
    kind: String,
    message: String,
    labels: Vec<(String, String)>,
}

impl Alert {
    /// For information, e.g. an incident has cleared.
    pub fn info(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Severity::Info, kind.into(), message.into())
    }

    /// Needs attention.
    pub fn warning(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, kind.into(), message.into())
    }

    /// Needs attention now.
    pub fn critical(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Severity::Critical, kind.into(), message.into())
    }

    fn new(severity: Severity, kind: String, message: String) -> Self {
        Alert {
            severity,
            kind,
            message,
            labels: Vec::new(),
        }
    }

    /// Adds a label, e.g. `("client_ip", "203.0.113.7")`.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }
}

/// Raises an alert. It is queued for the gateway's alert sinks and never
/// blocks the request; when the queue is full the gateway drops the alert
/// and counts it.
pub fn raise(alert: Alert) {
    host::alert(alert.severity, &alert.kind, &alert.message, &alert.labels);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_compare_by_every_field() {
        let a = Alert::warning("auth-failures", "too many").label("ip", "::1");
        assert_eq!(
            a,
            Alert::warning("auth-failures", "too many").label("ip", "::1")
        );
        assert_ne!(
            a,
            Alert::critical("auth-failures", "too many").label("ip", "::1")
        );
        assert_ne!(a, Alert::warning("auth-failures", "too many"));
        assert_ne!(Alert::info("k", "m"), Alert::warning("k", "m"));
    }
}
