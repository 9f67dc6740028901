//! A webhook sink: alerts POSTed as JSON, `{"alerts": [...]}`, in batches,
//! retried with exponential backoff. Each webhook has its own bounded queue
//! and task, so a slow or dead receiver delays only itself.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::Full;
use serde::Serialize;
use tokio::sync::mpsc;

use super::{Alert, Payload, SinkStats, Stats};
use crate::config::WebhookConfig;

/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

type HttpsClient = crate::crypto::OutboundClient;

/// The sending side of one webhook; dropping it lets the task deliver what
/// is queued and stop.
pub(super) struct Webhook {
    tx: mpsc::Sender<Alert>,
    min_severity: super::Severity,
    /// This webhook's counters.
    pub(super) sink: Arc<SinkStats>,
}

impl Webhook {
    /// Starts the webhook's task.
    pub(super) fn spawn(config: WebhookConfig, stats: Arc<Stats>, sink: Arc<SinkStats>) -> Self {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let min_severity = config.min_severity;
        tokio::spawn(run(config, rx, stats, sink.clone()));
        Self {
            tx,
            min_severity,
            sink,
        }
    }

    /// Queues `alert` if it is severe enough; false if the queue was full.
    pub(super) fn send(&self, alert: &Alert) -> bool {
        alert.severity < self.min_severity || self.tx.try_send(alert.clone()).is_ok()
    }
}

#[derive(Serialize)]
struct Batch<'a> {
    alerts: Vec<Payload<'a>>,
}

/// What became of one attempt.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Delivered,
    /// Worth trying again (connection error, timeout, 408, 429, 5xx).
    Retry(String),
    /// Will not get better (another 4xx).
    GiveUp(String),
}

async fn run(
    config: WebhookConfig,
    mut rx: mpsc::Receiver<Alert>,
    stats: Arc<Stats>,
    sink: Arc<SinkStats>,
) {
    let endpoint = match Endpoint::new(&config) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            tracing::error!(target: "portcullis::alert", url = %config.url, "webhook disabled: {e}");
            while let Some(_alert) = rx.recv().await {
                stats.failed(&sink, 1);
            }
            return;
        }
    };
    let wait = Duration::from_millis(config.batch_wait_ms);
    let mut closed = false;
    while !closed {
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + wait;
        while batch.len() < config.batch_max {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(alert) => batch.push(alert),
                    None => { closed = true; break; }
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        deliver(&endpoint, &config, &batch, &stats, &sink).await;
    }
}

/// Where and how a webhook's batches go, prepared once per webhook.
struct Endpoint {
    client: HttpsClient,
    uri: Uri,
    /// Content type, user agent and the configured headers.
    headers: HeaderMap,
}

impl Endpoint {
    fn new(config: &WebhookConfig) -> anyhow::Result<Self> {
        let client = crate::crypto::outbound_client(None, Duration::from_millis(config.timeout_ms))
            .map_err(anyhow::Error::msg)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("portcullis/", env!("CARGO_PKG_VERSION"))),
        );
        for (name, value) in &config.headers {
            // Often a token: kept out of Debug output.
            let mut value = HeaderValue::try_from(value.as_str())?;
            value.set_sensitive(true);
            headers.insert(HeaderName::try_from(name.as_str())?, value);
        }
        Ok(Self {
            client,
            uri: config.url.parse()?,
            headers,
        })
    }
}

/// Sends one batch, retrying as configured; counts the outcome.
async fn deliver(
    endpoint: &Endpoint,
    config: &WebhookConfig,
    batch: &[Alert],
    stats: &Stats,
    sink: &SinkStats,
) {
    let body = match serde_json::to_vec(&Batch {
        alerts: batch.iter().map(Payload::from).collect(),
    }) {
        Ok(body) => Bytes::from(body),
        Err(e) => {
            tracing::error!(target: "portcullis::alert", "cannot encode alerts: {e}");
            stats.failed(sink, batch.len() as u64);
            return;
        }
    };
    let mut backoff = Duration::from_millis(config.retry_backoff_ms);
    let mut attempt_no = 0;
    loop {
        let why = match attempt(endpoint, config.timeout_ms, body.clone()).await {
            Attempt::Delivered => {
                stats.delivered(sink, batch.len() as u64);
                return;
            }
            Attempt::Retry(why) if attempt_no < config.max_retries => {
                tracing::debug!(target: "portcullis::alert", url = %config.url, attempt = attempt_no + 1, "webhook failed, retrying in {backoff:?}: {why}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempt_no += 1;
                continue;
            }
            Attempt::Retry(why) | Attempt::GiveUp(why) => why,
        };
        stats.failed(sink, batch.len() as u64);
        tracing::warn!(
            target: "portcullis::alert",
            url = %config.url,
            alerts = batch.len(),
            attempts = attempt_no + 1,
            "webhook delivery failed, alerts dropped: {why}"
        );
        return;
    }
}

async fn attempt(endpoint: &Endpoint, timeout_ms: u64, body: Bytes) -> Attempt {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = endpoint.uri.clone();
    *request.headers_mut() = endpoint.headers.clone();
    let timeout = Duration::from_millis(timeout_ms);
    match tokio::time::timeout(timeout, endpoint.client.request(request)).await {
        Err(_) => Attempt::Retry(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => Attempt::Retry(format!("request failed: {e}")),
        Ok(Ok(response)) => classify(response.status()),
    }
}

fn classify(status: StatusCode) -> Attempt {
    if status.is_success() {
        Attempt::Delivered
    } else if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Attempt::Retry(format!("answered {status}"))
    } else {
        Attempt::GiveUp(format!("answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_failures_are_retried() {
        assert_eq!(classify(StatusCode::NO_CONTENT), Attempt::Delivered);
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY),
            Attempt::Retry(_)
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS),
            Attempt::Retry(_)
        ));
        assert!(matches!(
            classify(StatusCode::NOT_FOUND),
            Attempt::GiveUp(_)
        ));
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED),
            Attempt::GiveUp(_)
        ));
    }
}
