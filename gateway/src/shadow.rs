//! Shadow runs: a candidate (a new module, or a new config, for a plugin
//! on a route) sees a copy of each request the live plugin decides on,
//! and what it would have decided is compared with what the live plugin
//! did. Nothing it decides reaches the client or the upstream.
//!
//! The live request pays for a copy of the request as the live plugin saw
//! it and a non-blocking send, and only while the candidate's queue has
//! room: past `queue` copies waiting, the copy is not made and counted as
//! dropped. The candidate runs in a task of its own, one call at a time,
//! on instances of its own (with a store namespace of its own, so a
//! candidate rate limit never spends the live one's budget, and its
//! alerts dropped).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::config::OnError;
use crate::metrics::{Decision, ShadowMetrics};
use crate::plugin::PluginPool;
use crate::plugin::apply::apply_action;
use crate::plugin::view::RequestView;

/// Request headers whose values a sample never shows.
const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "x-auth-token",
    "x-csrf-token",
];
/// Header names containing one of these are redacted too.
const SENSITIVE_WORDS: &[&str] = &["token", "secret", "key", "password", "session", "auth"];
const REDACTED: &str = "[redacted]";

/// A candidate running in shadow next to a live plugin.
#[derive(Debug)]
pub struct Shadow {
    pool: Arc<PluginPool>,
    jobs: mpsc::Sender<Job>,
    /// What it has decided so far.
    pub stats: Arc<ShadowStats>,
}

/// A copy of a request and what the live plugin decided on it.
struct Job {
    request: Box<RequestView>,
    live: Decision,
}

/// What a shadow candidate is, and how its decisions compared.
pub struct ShadowStats {
    /// The route.
    pub route: Arc<str>,
    /// The live plugin.
    pub plugin: Arc<str>,
    /// The candidate's module.
    pub module: Arc<str>,
    /// The candidate module's SHA-256.
    pub sha256: String,
    /// The config keys it sets otherwise than the live plugin.
    pub config_keys: Vec<String>,
    /// When it started, in ms since the epoch (the gateway's clock).
    pub since_ms: u64,
    compared: AtomicU64,
    dropped: AtomicU64,
    /// Comparisons by (live, candidate) decision.
    pairs: Mutex<HashMap<(Decision, Decision), u64>>,
    samples: Mutex<VecDeque<Sample>>,
    sample_cap: usize,
    metrics: ShadowMetrics,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for ShadowStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowStats")
            .field("route", &self.route)
            .field("plugin", &self.plugin)
            .field("module", &self.module)
            .field("compared", &self.compared)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

/// One request on which the candidate and the live plugin disagreed.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// When, in ms since the epoch.
    pub time_ms: u64,
    /// When, RFC 3339.
    pub time: String,
    /// Which way they disagreed (see [`kind`]).
    pub kind: &'static str,
    /// What the live plugin decided.
    pub live: String,
    /// What the candidate would have decided.
    pub candidate: String,
    /// Why the candidate failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The request's method.
    pub method: String,
    /// Its path, with query values redacted.
    pub path: String,
    /// The client's address.
    pub client: String,
    /// The consumer an earlier plugin identified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// Its headers, sensitive values redacted.
    pub headers: Vec<(String, String)>,
}

/// What the admin API shows of a shadow candidate.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowReport {
    /// The route.
    pub route: String,
    /// The live plugin.
    pub plugin: String,
    /// The candidate's module and its SHA-256.
    pub module: String,
    /// The candidate module's SHA-256.
    pub sha256: String,
    /// The config keys it sets otherwise.
    pub config_keys: Vec<String>,
    /// When it started.
    pub since_ms: u64,
    /// Requests compared.
    pub compared: u64,
    /// Requests on which they agreed.
    pub agreed: u64,
    /// Copies dropped because the candidate's queue was full.
    pub dropped: u64,
    /// Disagreements by kind, with the decisions.
    pub disagreements: Vec<Disagreement>,
    /// The latest disagreements, newest last.
    pub samples: Vec<Sample>,
}

/// A count of one kind of disagreement.
#[derive(Debug, Clone, Serialize)]
pub struct Disagreement {
    /// See [`kind`].
    pub kind: &'static str,
    /// What the live plugin decided.
    pub live: String,
    /// What the candidate would have.
    pub candidate: String,
    /// How many requests.
    pub count: u64,
}

/// The label of a decision: `continue`, the status, `failed` or
/// `failed_allowed`.
pub fn label(decision: Decision) -> String {
    match decision {
        Decision::Continue => "continue".into(),
        Decision::Respond(status) => status.to_string(),
        Decision::Failed => "failed".into(),
        Decision::FailedAllowed => "failed_allowed".into(),
    }
}

fn failed(decision: Decision) -> bool {
    matches!(decision, Decision::Failed | Decision::FailedAllowed)
}

/// How the candidate's decision differs from the live one, or `None` if
/// they agree: `candidate_refuses` (live let it through, the candidate
/// answered), `candidate_allows` (the reverse), `status_differs` (both
/// answered, with different statuses), `candidate_fails`, `live_fails`.
pub fn kind(live: Decision, candidate: Decision) -> Option<&'static str> {
    if live == candidate || (failed(live) && failed(candidate)) {
        return None;
    }
    Some(match (live, candidate) {
        (_, c) if failed(c) => "candidate_fails",
        (l, _) if failed(l) => "live_fails",
        (Decision::Continue, Decision::Respond(_)) => "candidate_refuses",
        (Decision::Respond(_), Decision::Continue) => "candidate_allows",
        _ => "status_differs",
    })
}

impl Shadow {
    /// Starts the candidate's task on `runtime`, counting into `stats`
    /// (those of the same candidate before, on a new build of its module);
    /// the task ends when the last handle to the shadow is dropped.
    pub fn start(
        pool: Arc<PluginPool>,
        on_error: OnError,
        queue: usize,
        stats: Arc<ShadowStats>,
        runtime: &tokio::runtime::Handle,
    ) -> Arc<Self> {
        let (jobs, receiver) = mpsc::channel(queue.max(1));
        runtime.spawn(run(pool.clone(), on_error, receiver, stats.clone()));
        Arc::new(Self { pool, jobs, stats })
    }

    /// The candidate's instances.
    pub fn pool(&self) -> &Arc<PluginPool> {
        &self.pool
    }

    /// The queue's capacity, as configured.
    pub fn queue(&self) -> usize {
        self.jobs.max_capacity()
    }

    /// A copy of `request` for the candidate, if its queue has room;
    /// otherwise the copy is counted as dropped.
    pub fn copy(&self, request: &RequestView) -> Option<Box<RequestView>> {
        if self.jobs.capacity() == 0 {
            self.stats.drop_one();
            return None;
        }
        Some(Box::new(request.clone()))
    }

    /// Hands the candidate `request` (a [`Shadow::copy`]) and what the live
    /// plugin decided on it; never waits.
    pub fn offer(&self, request: Box<RequestView>, live: Decision) {
        if self.jobs.try_send(Job { request, live }).is_err() {
            self.stats.drop_one();
        }
    }
}

async fn run(
    pool: Arc<PluginPool>,
    on_error: OnError,
    mut jobs: mpsc::Receiver<Job>,
    stats: Arc<ShadowStats>,
) {
    while let Some(Job { request, live }) = jobs.recv().await {
        let (request, result) = pool.on_request(request).await;
        // The request as the candidate got it, for a sample.
        let mut applied = request.clone();
        let mut body = crate::body::empty();
        let (candidate, error) = match result.and_then(|a| apply_action(&mut applied, &mut body, a))
        {
            Ok(None) => (Decision::Continue, None),
            Ok(Some(reply)) => (Decision::Respond(reply.status().as_u16()), None),
            Err(e) => (
                match on_error {
                    OnError::Deny => Decision::Failed,
                    OnError::Allow => Decision::FailedAllowed,
                },
                Some(e.to_string()),
            ),
        };
        stats.record(&request, live, candidate, error);
    }
}

impl ShadowStats {
    /// The stats of a candidate that starts now.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        route: Arc<str>,
        plugin: Arc<str>,
        module: Arc<str>,
        sha256: String,
        config_keys: Vec<String>,
        sample_cap: usize,
        metrics: ShadowMetrics,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            since_ms: clock.now_ms(),
            route,
            plugin,
            module,
            sha256,
            config_keys,
            compared: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            pairs: Mutex::new(HashMap::new()),
            samples: Mutex::new(VecDeque::new()),
            sample_cap,
            metrics,
            clock,
        }
    }

    /// How many disagreements it keeps as samples.
    pub fn sample_cap(&self) -> usize {
        self.sample_cap
    }

    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.metrics.dropped.inc();
    }

    fn record(
        &self,
        request: &RequestView,
        live: Decision,
        candidate: Decision,
        error: Option<String>,
    ) {
        self.metrics.compared(live, candidate);
        *self
            .pairs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((live, candidate))
            .or_default() += 1;
        // Counted last: a reader that sees `compared` sees the pair too.
        self.compared.fetch_add(1, Ordering::Release);
        let Some(kind) = kind(live, candidate) else {
            return;
        };
        if self.sample_cap == 0 {
            return;
        }
        let time_ms = self.clock.now_ms();
        let sample = Sample {
            time_ms,
            time: humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(time_ms),
            )
            .to_string(),
            kind,
            live: label(live),
            candidate: label(candidate),
            error,
            method: request.head.method.to_string(),
            path: redacted_path(&request.head.uri),
            client: request.client_ip.to_string(),
            consumer: request.identity.as_ref().map(|i| i.consumer.clone()),
            headers: request
                .head
                .headers
                .iter()
                .map(|(name, value)| {
                    let value = if sensitive(name.as_str()) {
                        REDACTED.to_owned()
                    } else {
                        String::from_utf8_lossy(value.as_bytes()).into_owned()
                    };
                    (name.as_str().to_owned(), value)
                })
                .collect(),
        };
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == self.sample_cap {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// What the admin API shows.
    pub fn report(&self) -> ShadowReport {
        let compared = self.compared.load(Ordering::Acquire);
        let pairs = self
            .pairs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut agreed = 0;
        let mut disagreements = Vec::new();
        for ((live, candidate), count) in pairs {
            match kind(live, candidate) {
                None => agreed += count,
                Some(kind) => disagreements.push(Disagreement {
                    kind,
                    live: label(live),
                    candidate: label(candidate),
                    count,
                }),
            }
        }
        disagreements.sort_by(|a, b| {
            (b.count, a.kind, &a.live, &a.candidate).cmp(&(a.count, b.kind, &b.live, &b.candidate))
        });
        ShadowReport {
            route: self.route.to_string(),
            plugin: self.plugin.to_string(),
            module: self.module.to_string(),
            sha256: self.sha256.clone(),
            config_keys: self.config_keys.clone(),
            since_ms: self.since_ms,
            compared,
            agreed,
            dropped: self.dropped.load(Ordering::Relaxed),
            disagreements,
            samples: self
                .samples
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect(),
        }
    }
}

/// Whether a header's value is kept out of samples.
fn sensitive(name: &str) -> bool {
    SENSITIVE_HEADERS.contains(&name) || SENSITIVE_WORDS.iter().any(|w| name.contains(w))
}

/// The path with each query value replaced (API keys travel there too).
fn redacted_path(uri: &http::Uri) -> String {
    match uri.query() {
        None => uri.path().to_owned(),
        Some(query) => {
            let params: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) => format!("{name}={REDACTED}"),
                    None => pair.to_owned(),
                })
                .collect();
            format!("{}?{}", uri.path(), params.join("&"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disagreements_are_named_by_which_way_they_go() {
        use Decision::*;
        assert_eq!(kind(Continue, Continue), None);
        assert_eq!(kind(Respond(401), Respond(401)), None);
        assert_eq!(kind(Failed, FailedAllowed), None);
        assert_eq!(kind(Continue, Respond(403)), Some("candidate_refuses"));
        assert_eq!(kind(Respond(429), Continue), Some("candidate_allows"));
        assert_eq!(kind(Respond(401), Respond(403)), Some("status_differs"));
        assert_eq!(kind(Continue, Failed), Some("candidate_fails"));
        assert_eq!(kind(Failed, Respond(403)), Some("live_fails"));
        let labels: Vec<String> = [Continue, Respond(418), Failed, FailedAllowed]
            .into_iter()
            .map(label)
            .collect();
        assert_eq!(labels, ["continue", "418", "failed", "failed_allowed"]);
    }

    #[test]
    fn samples_keep_no_secret() {
        assert!(sensitive("authorization"));
        assert!(sensitive("x-api-key"));
        assert!(sensitive("x-session-id"));
        assert!(!sensitive("accept"));
        let uri: http::Uri = "/api/me?apikey=s3cret&page=2&flag".parse().expect("uri");
        assert_eq!(
            redacted_path(&uri),
            "/api/me?apikey=[redacted]&page=[redacted]&flag"
        );
    }
}
