//! The health of a group's servers: active checks (a probe per server on
//! its own jittered schedule, in the background) and passive ones (outlier
//! ejection from what requests see), kept in atomics that the balancer
//! reads without a lock.
//!
//! A server is *available* when its active checks have not taken it out
//! and it is not ejected. Every change is logged once, raised as an alert
//! of kind `upstream-health`, and readable through [`Servers::report`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::alerts::{Alert, AlertSender, Severity};
use crate::config::{HealthCheckConfig, HealthCheckKind, OutlierConfig, UpstreamProtocol};

/// One server and what is known of its health.
#[derive(Debug)]
pub(super) struct Server {
    /// `host:port`.
    pub(super) authority: Authority,
    /// Its weight.
    pub(super) weight: u32,
    /// Whether the active checks let it serve (true until they say not).
    up: AtomicBool,
    /// Until when it is ejected, ms on the group's clock; 0 when it is not.
    ejected_until: AtomicU64,
    /// Requests in a row that failed.
    failures: AtomicU32,
    /// Ejections that count towards the next one's length.
    ejections: AtomicU32,
    /// When its last ejection ended, ms on the group's clock.
    returned_at: AtomicU64,
    /// Requests sent and not yet answered (`least_request`).
    in_flight: AtomicUsize,
}

/// What a request to a server came to, for the passive checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// A response head with a status that is not a failure.
    Success,
    /// No connection, no response head, or a failure status.
    Failure,
}

/// A change of a server's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Active checks took it out.
    Down,
    /// Active checks brought it back.
    Up,
    /// Passive checks ejected it for this long.
    Ejected(Duration),
    /// Its ejection ended.
    Returned,
}

/// A server as the admin API and the tests see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerHealth {
    /// `host:port`.
    pub address: String,
    /// Its weight.
    pub weight: u32,
    /// Whether the active checks let it serve.
    pub up: bool,
    /// How much longer it stays ejected, ms; 0 when it is not.
    pub ejected_for_ms: u64,
    /// Requests in flight, counted for `least_request` only.
    pub in_flight: usize,
}

/// A group's servers and their health.
#[derive(Debug)]
pub(super) struct Servers {
    group: Arc<str>,
    list: Box<[Server]>,
    /// The group's clock starts here (ejections are ms on it).
    start: Instant,
    /// Servers the active checks took out.
    down: AtomicUsize,
    /// Servers ejected now.
    ejected: AtomicUsize,
    outlier: OutlierConfig,
    alerts: Option<AlertSender>,
}

impl Servers {
    /// The servers `(authority, weight)` of `group`, all available.
    pub(super) fn new(
        group: Arc<str>,
        servers: Vec<(Authority, u32)>,
        outlier: OutlierConfig,
        alerts: Option<AlertSender>,
    ) -> Self {
        Self {
            group,
            list: servers
                .into_iter()
                .map(|(authority, weight)| Server {
                    authority,
                    weight,
                    up: AtomicBool::new(true),
                    ejected_until: AtomicU64::new(0),
                    failures: AtomicU32::new(0),
                    ejections: AtomicU32::new(0),
                    returned_at: AtomicU64::new(0),
                    in_flight: AtomicUsize::new(0),
                })
                .collect(),
            start: Instant::now(),
            down: AtomicUsize::new(0),
            ejected: AtomicUsize::new(0),
            outlier,
            alerts,
        }
    }

    /// Takes over what `old` (the group as it was before a reload that
    /// changed its settings) knew of the servers both have: down stays
    /// down, an ejection keeps its end and its count. Nothing is announced:
    /// nothing changed.
    pub(super) fn inherit(self: &Arc<Self>, old: &Servers) {
        let old_now = old.now_ms();
        let now = self.now_ms();
        for (index, server) in self.list.iter().enumerate() {
            let Some(before) = old.list.iter().find(|s| s.authority == server.authority) else {
                continue;
            };
            if !before.up.load(Ordering::Relaxed) {
                server.up.store(false, Ordering::Relaxed);
                self.down.fetch_add(1, Ordering::AcqRel);
            }
            server
                .ejections
                .store(before.ejections.load(Ordering::Relaxed), Ordering::Relaxed);
            let left = before
                .ejected_until
                .load(Ordering::Relaxed)
                .saturating_sub(old_now);
            if left > 0 {
                server.ejected_until.store(now + left, Ordering::Relaxed);
                self.ejected.fetch_add(1, Ordering::AcqRel);
                self.end_ejection_after(index, Duration::from_millis(left));
            }
        }
    }

    /// How many servers.
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// Server `index`.
    pub(super) fn get(&self, index: usize) -> &Server {
        &self.list[index]
    }

    /// Whether every server is available: none down, none ejected.
    pub(super) fn all_available(&self) -> bool {
        self.down.load(Ordering::Relaxed) == 0 && self.ejected.load(Ordering::Relaxed) == 0
    }

    /// Ms on the group's clock.
    pub(super) fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Whether server `index` may take a request at `now` (ms).
    pub(super) fn available(&self, index: usize, now: u64) -> bool {
        let server = &self.list[index];
        server.up.load(Ordering::Relaxed) && server.ejected_until.load(Ordering::Relaxed) <= now
    }

    /// The first available server from `from` on, in order.
    pub(super) fn first_available(&self, from: usize) -> Option<usize> {
        let now = self.now_ms();
        let count = self.list.len();
        (0..count)
            .map(|k| (from + k) % count)
            .find(|i| self.available(*i, now))
    }

    /// Whether server `a` is less loaded than `b`: fewer requests in
    /// flight per unit of weight.
    pub(super) fn load_below(&self, a: usize, b: usize) -> bool {
        let (a, b) = (&self.list[a], &self.list[b]);
        let load = |s: &Server| s.in_flight.load(Ordering::Relaxed) as u64;
        load(a) * u64::from(b.weight) < load(b) * u64::from(a.weight)
    }

    /// Counts a request in flight to server `index` until the guard drops.
    pub(super) fn enter(&self, index: usize) -> InFlight<'_> {
        let server = &self.list[index];
        server.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(server)
    }

    /// Whether a response status counts as a failure for the passive
    /// checks.
    pub(super) fn failure_status(&self, status: u16) -> bool {
        self.outlier.statuses.contains(&status)
    }

    /// The passive checks: counts `outcome` for server `index`, and ejects
    /// it after `consecutive_failures` failures in a row, unless the
    /// group already has its share ejected.
    pub(super) fn record(self: &Arc<Self>, index: usize, outcome: Outcome) {
        let server = &self.list[index];
        if outcome == Outcome::Success {
            if server.failures.load(Ordering::Relaxed) != 0 {
                server.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let threshold = self.outlier.consecutive_failures;
        let failures = server.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold == 0 || failures < threshold {
            return;
        }
        let now = self.now_ms();
        let previous = server.ejected_until.load(Ordering::Relaxed);
        if previous > now {
            return;
        }
        if previous != 0 {
            // An ejection that ran out before its task could say so.
            self.end_ejection(index, false);
        }
        // Reserve a place in the ejected share first.
        let most = self.list.len() * self.outlier.max_ejected_percent as usize / 100;
        let reserved = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |ejected| {
                (ejected < most).then_some(ejected + 1)
            })
            .is_ok();
        if !reserved {
            return;
        }
        // A long healthy stretch forgets the earlier ejections.
        let returned = server.returned_at.load(Ordering::Relaxed);
        if returned != 0 && now.saturating_sub(returned) > self.outlier.max_ejection_ms {
            server.ejections.store(0, Ordering::Relaxed);
        }
        let count = u64::from(server.ejections.load(Ordering::Relaxed)) + 1;
        let length =
            (self.outlier.base_ejection_ms.saturating_mul(count)).min(self.outlier.max_ejection_ms);
        if server
            .ejected_until
            .compare_exchange(0, now + length, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            // Another request ejected it first.
            self.ejected.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        server.ejections.fetch_add(1, Ordering::Relaxed);
        server.failures.store(0, Ordering::Relaxed);
        let length = Duration::from_millis(length);
        self.announce(index, Change::Ejected(length), failures);
        self.end_ejection_after(index, length);
    }

    /// The ejection of server `index` ends by itself after `length` (the
    /// balancer compares the time); this task frees its place in the share
    /// and says so.
    fn end_ejection_after(self: &Arc<Self>, index: usize, length: Duration) {
        let servers = Arc::downgrade(self);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep(length).await;
                if let Some(servers) = servers.upgrade() {
                    servers.end_ejection(index, false);
                }
            });
        }
    }

    /// Ends server `index`'s ejection if it has run out, or at once with
    /// `early` (its active checks pass again).
    fn end_ejection(&self, index: usize, early: bool) {
        let server = &self.list[index];
        let now = self.now_ms();
        let until = server.ejected_until.load(Ordering::Relaxed);
        if until != 0
            && (early || until <= now)
            && server
                .ejected_until
                .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            server.returned_at.store(now.max(1), Ordering::Relaxed);
            server.failures.store(0, Ordering::Relaxed);
            self.ejected.fetch_sub(1, Ordering::AcqRel);
            self.announce(index, Change::Returned, 0);
        }
    }

    /// The active checks' verdict on server `index`.
    pub(super) fn set_up(&self, index: usize, up: bool, streak: u32) {
        let server = &self.list[index];
        if server.up.swap(up, Ordering::AcqRel) == up {
            return;
        }
        if up {
            self.down.fetch_sub(1, Ordering::AcqRel);
            self.announce(index, Change::Up, streak);
        } else {
            self.down.fetch_add(1, Ordering::AcqRel);
            self.announce(index, Change::Down, streak);
        }
    }

    /// Logs a change and raises it as an alert.
    fn announce(&self, index: usize, change: Change, count: u32) {
        let server = self.list[index].authority.as_str();
        let group = &*self.group;
        let (severity, state, message) = match change {
            Change::Down => (
                Severity::Warning,
                "down",
                format!(
                    "upstream `{group}`: server {server} is down ({count} failed health checks in a row)"
                ),
            ),
            Change::Up => (
                Severity::Info,
                "up",
                format!(
                    "upstream `{group}`: server {server} is up again ({count} passed health checks in a row)"
                ),
            ),
            Change::Ejected(length) => (
                Severity::Warning,
                "ejected",
                format!(
                    "upstream `{group}`: server {server} ejected for {} s after {count} failed requests in a row",
                    length.as_secs_f64()
                ),
            ),
            Change::Returned => (
                Severity::Info,
                "returned",
                format!("upstream `{group}`: server {server} is back from ejection"),
            ),
        };
        match severity {
            Severity::Info => tracing::info!(upstream = group, server, state, "{message}"),
            _ => tracing::warn!(upstream = group, server, state, "{message}"),
        }
        if let Some(alerts) = &self.alerts {
            let time_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            alerts.send(Alert {
                time_ms,
                severity,
                kind: "upstream-health".into(),
                message,
                plugin: String::new(),
                route: String::new(),
                labels: vec![
                    ("upstream".into(), group.to_owned()),
                    ("server".into(), server.to_owned()),
                    ("state".into(), state.into()),
                ],
            });
        }
    }

    /// Every server's health, in config order.
    pub(super) fn report(&self) -> Vec<ServerHealth> {
        let now = self.now_ms();
        self.list
            .iter()
            .map(|s| ServerHealth {
                address: s.authority.to_string(),
                weight: s.weight,
                up: s.up.load(Ordering::Relaxed),
                ejected_for_ms: s.ejected_until.load(Ordering::Relaxed).saturating_sub(now),
                in_flight: s.in_flight.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// A request in flight to a server; counted until dropped.
#[derive(Debug)]
pub(super) struct InFlight<'a>(&'a Server);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an active check needs besides the server: the check, the group's
/// protocol, and its TLS client (for `https://` groups).
#[derive(Clone)]
pub(super) struct Probe {
    pub(super) check: HealthCheckConfig,
    pub(super) protocol: UpstreamProtocol,
    pub(super) tls: Option<(tokio_rustls::TlsConnector, Option<ServerName<'static>>)>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("check", &self.check)
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Starts the active checks of `servers`: one task per server, each
/// ending when the group is dropped. Without a runtime (the `check`
/// command), nothing starts.
pub(super) fn spawn_checks(servers: &Arc<Servers>, probe: Probe) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let probe = Arc::new(probe);
    for index in 0..servers.len() {
        let weak = Arc::downgrade(servers);
        let probe = probe.clone();
        runtime.spawn(check_loop(weak, index, probe));
    }
}

async fn check_loop(servers: Weak<Servers>, index: usize, probe: Arc<Probe>) {
    let interval = probe.check.interval_ms;
    // The first check soon, spread over a tenth of the interval, so that
    // the servers of a group (and the groups) are not probed in step.
    let mut wait = Duration::from_millis(fastrand::u64(0..=interval / 10));
    let (mut passes, mut fails) = (0u32, 0u32);
    // Passes since the server's current ejection began: as in Envoy, an
    // ejected server whose checks pass `healthy_threshold` times comes back
    // before its ejection runs out.
    let (mut ejection, mut passes_since) = (0u64, 0u32);
    loop {
        tokio::time::sleep(wait).await;
        let Some(group) = servers.upgrade() else {
            return;
        };
        let authority = group.get(index).authority.clone();
        drop(group);
        let passed = probe_once(&probe, &authority).await;
        let Some(group) = servers.upgrade() else {
            return;
        };
        let server = group.get(index);
        let up = server.up.load(Ordering::Relaxed);
        let ejected_until = server.ejected_until.load(Ordering::Relaxed);
        if ejected_until != ejection {
            ejection = ejected_until;
            passes_since = 0;
        }
        match passed {
            Ok(()) => {
                passes = passes.saturating_add(1);
                fails = 0;
                if !up && passes >= probe.check.healthy_threshold {
                    group.set_up(index, true, passes);
                }
                if ejected_until != 0 {
                    passes_since += 1;
                    if passes_since >= probe.check.healthy_threshold {
                        group.end_ejection(index, true);
                    }
                }
            }
            Err(why) => {
                fails = fails.saturating_add(1);
                passes = 0;
                if up && fails >= probe.check.unhealthy_threshold {
                    tracing::debug!(upstream = &*group.group, server = %authority, "health check: {why}");
                    group.set_up(index, false, fails);
                }
            }
        }
        // Jitter: 90% to 110% of the interval.
        wait = Duration::from_millis(interval - interval / 10 + fastrand::u64(0..=interval / 5));
    }
}

/// One check of `authority`, within the check's timeout.
async fn probe_once(probe: &Probe, authority: &Authority) -> Result<(), String> {
    let timeout = Duration::from_millis(probe.check.timeout_ms);
    match tokio::time::timeout(timeout, probe_inner(probe, authority)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", probe.check.timeout_ms)),
    }
}

async fn probe_inner(probe: &Probe, authority: &Authority) -> Result<(), String> {
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let tcp = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => TcpStream::connect(SocketAddr::new(ip, port)).await,
        Err(_) => TcpStream::connect((host, port)).await,
    }
    .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match &probe.tls {
        None => speak(probe, authority, tcp).await,
        Some((connector, fixed)) => {
            let name = match fixed {
                Some(name) => name.clone(),
                None => ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?,
            };
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            speak(probe, authority, tls).await
        }
    }
}

/// The HTTP part of a check, on an open connection (nothing for `tcp`).
async fn speak<S>(probe: &Probe, authority: &Authority, stream: S) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if probe.check.kind == HealthCheckKind::Tcp {
        return Ok(());
    }
    let host = probe
        .check
        .host
        .clone()
        .unwrap_or_else(|| authority.to_string());
    // HTTP/2 names the target in `:authority` (from the URI); HTTP/1.1 in
    // `Host`, on a connection closed after the answer.
    let builder = if probe.protocol == UpstreamProtocol::Http1 {
        Request::get(probe.check.path.as_str())
            .header(header::HOST, host.as_str())
            .header(header::CONNECTION, "close")
    } else {
        let scheme = if probe.tls.is_some() { "https" } else { "http" };
        Request::get(format!("{scheme}://{host}{}", probe.check.path))
    };
    let request = builder
        .header(header::USER_AGENT, "portcullis-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("health check request: {e}"))?;
    let io = TokioIo::new(stream);
    let status = match probe.protocol {
        UpstreamProtocol::Http1 => {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1: {e}"))?;
            tokio::spawn(connection);
            sender
                .send_request(request)
                .await
                .map_err(|e| format!("HTTP/1.1: {e}"))?
                .status()
        }
        UpstreamProtocol::H2 | UpstreamProtocol::H2c => {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("HTTP/2: {e}"))?;
            tokio::spawn(connection);
            sender
                .send_request(request)
                .await
                .map_err(|e| format!("HTTP/2: {e}"))?
                .status()
        }
    };
    if probe.check.passes(status.as_u16()) {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(count: usize, outlier: OutlierConfig) -> Arc<Servers> {
        let list = (0..count)
            .map(|i| {
                let authority = format!("10.0.0.{}:80", i + 1);
                (authority.parse::<Authority>().expect("authority"), 1)
            })
            .collect();
        Arc::new(Servers::new(Arc::from("test"), list, outlier, None))
    }

    #[test]
    fn failures_in_a_row_eject_and_a_success_resets_the_count() {
        let servers = group(
            4,
            OutlierConfig {
                consecutive_failures: 3,
                ..OutlierConfig::default()
            },
        );
        let now = servers.now_ms();
        for _ in 0..2 {
            servers.record(0, Outcome::Failure);
        }
        servers.record(0, Outcome::Success);
        for _ in 0..2 {
            servers.record(0, Outcome::Failure);
        }
        assert!(servers.available(0, now), "not three in a row");
        servers.record(0, Outcome::Failure);
        assert!(!servers.available(0, servers.now_ms()));
        assert!(!servers.all_available());
        let report = servers.report();
        assert!(report[0].ejected_for_ms > 29_000, "{report:?}");
        assert_eq!(report[1].ejected_for_ms, 0);
    }

    #[test]
    fn at_most_the_configured_share_is_ejected() {
        let servers = group(
            4,
            OutlierConfig {
                consecutive_failures: 1,
                max_ejected_percent: 50,
                ..OutlierConfig::default()
            },
        );
        for index in 0..4 {
            servers.record(index, Outcome::Failure);
        }
        let now = servers.now_ms();
        let out = (0..4).filter(|i| !servers.available(*i, now)).count();
        assert_eq!(out, 2, "half of four");
        assert_eq!(servers.ejected.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn zero_failures_turns_ejection_off() {
        let servers = group(
            2,
            OutlierConfig {
                consecutive_failures: 0,
                ..OutlierConfig::default()
            },
        );
        for _ in 0..100 {
            servers.record(0, Outcome::Failure);
        }
        assert!(servers.all_available());
    }

    #[test]
    fn an_ejection_that_ran_out_frees_its_place() {
        let servers = group(
            2,
            OutlierConfig {
                consecutive_failures: 1,
                base_ejection_ms: 100,
                max_ejection_ms: 100,
                max_ejected_percent: 50,
                ..OutlierConfig::default()
            },
        );
        servers.record(0, Outcome::Failure);
        assert_eq!(servers.ejected.load(Ordering::Relaxed), 1);
        // Run the ejection out by hand (no runtime here to end it).
        servers.get(0).ejected_until.store(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(2));
        servers.end_ejection(0, false);
        assert!(servers.all_available());
        // Server 1 can now be ejected: the share was freed.
        servers.record(1, Outcome::Failure);
        assert!(!servers.available(1, servers.now_ms()));
    }
}
