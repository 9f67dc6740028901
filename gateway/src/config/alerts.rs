//! The `[alerts]` section: where the alerts plugins raise are delivered.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Problem;

/// Alert sinks. Alerts always go through a bounded queue
/// (`limits.alert_queue`); each sink takes them from there without ever
/// blocking a request.
///
/// ```toml
/// [alerts]
/// log = true                     # write each alert to the log (target portcullis::alert)
///
/// [[alerts.webhooks]]
/// url = "https://hooks.example.com/portcullis"
/// headers = { authorization = "Bearer s3cr3t" }
/// min_severity = "warning"       # info, warning or critical
/// batch_max = 50                 # alerts per POST
/// batch_wait_ms = 1000           # how long a batch waits to fill
/// timeout_ms = 5000              # per attempt
/// max_retries = 5                # then the batch is dropped and counted
/// retry_backoff_ms = 500         # first wait; doubles, at most 30 s
/// queue = 1000                   # alerts waiting for this webhook
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Whether alerts are written to the log.
    #[serde(default = "super::yes")]
    pub log: bool,
    /// Webhooks that receive alerts as JSON POSTs.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            log: true,
            webhooks: Vec::new(),
        }
    }
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For information, e.g. an incident has cleared.
    #[default]
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

/// A webhook: alerts are POSTed to `url` as `{"alerts": [...]}`, in batches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL (TLS verified against the Mozilla roots).
    pub url: String,
    /// Extra request headers, e.g. an authorization token.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Alerts below this severity are not sent here.
    #[serde(default)]
    pub min_severity: Severity,
    /// Most alerts in one POST.
    #[serde(default = "WebhookConfig::default_batch_max")]
    pub batch_max: usize,
    /// How long the first alert of a batch waits for others, in ms.
    #[serde(default = "WebhookConfig::default_batch_wait")]
    pub batch_wait_ms: u64,
    /// Timeout of one attempt (connect and response), in ms.
    #[serde(default = "WebhookConfig::default_timeout")]
    pub timeout_ms: u64,
    /// Retries after the first attempt fails (a connection error, a timeout,
    /// 408, 429 or 5xx); other answers are not retried.
    #[serde(default = "WebhookConfig::default_retries")]
    pub max_retries: u32,
    /// Wait before the first retry, in ms; doubles on each retry, at most 30 s.
    #[serde(default = "WebhookConfig::default_backoff")]
    pub retry_backoff_ms: u64,
    /// Most alerts waiting for this webhook (while it is slow or retrying);
    /// more are dropped and counted.
    #[serde(default = "WebhookConfig::default_queue")]
    pub queue: usize,
}

impl WebhookConfig {
    fn default_batch_max() -> usize {
        50
    }
    fn default_batch_wait() -> u64 {
        1_000
    }
    fn default_timeout() -> u64 {
        5_000
    }
    fn default_retries() -> u32 {
        5
    }
    fn default_backoff() -> u64 {
        500
    }
    fn default_queue() -> usize {
        1_000
    }
}

impl AlertsConfig {
    /// Problems with the section, keyed from `alerts`.
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        for (i, hook) in self.webhooks.iter().enumerate() {
            let mut bad = |field: &str, message: String| {
                problems.push(Problem {
                    key: format!("alerts.webhooks[{i}].{field}"),
                    message,
                });
            };
            if let Err(why) = check_url(&hook.url) {
                bad("url", why);
            }
            for name in hook.headers.keys() {
                if http::HeaderName::try_from(name.as_str()).is_err() {
                    bad("headers", format!("`{name}` is not a valid header name"));
                }
            }
            for value in hook.headers.values() {
                if http::HeaderValue::try_from(value.as_str()).is_err() {
                    bad(
                        "headers",
                        "values must be visible ASCII without line breaks".into(),
                    );
                }
            }
            if !(1..=10_000).contains(&hook.batch_max) {
                bad(
                    "batch_max",
                    format!("must be between 1 and 10000, got {}", hook.batch_max),
                );
            }
            if hook.timeout_ms == 0 {
                bad("timeout_ms", "must be at least 1".into());
            }
            if hook.retry_backoff_ms == 0 {
                bad("retry_backoff_ms", "must be at least 1".into());
            }
            if hook.max_retries > 100 {
                bad(
                    "max_retries",
                    format!("must be at most 100, got {}", hook.max_retries),
                );
            }
            if hook.queue == 0 {
                bad("queue", "must be at least 1".into());
            }
        }
    }
}

/// A webhook URL: absolute `http` or `https` with a host.
fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!("`{url}` must start with http:// or https://"));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_absolute_http() {
        assert!(check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(check_url("https://hooks.example.com/x?y=1").is_ok());
        assert!(check_url("ftp://example.com/").is_err());
        assert!(check_url("/relative").is_err());
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn severities_order_by_urgency() {
        assert!(Severity::Info < Severity::Warning);
        assert!(Severity::Warning < Severity::Critical);
    }
}
