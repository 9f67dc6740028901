//! The `[upstreams.NAME]` sections: a group's servers and their weights,
//! how requests are balanced over them, active health checks, outlier
//! ejection, the connection pool, timeouts and TLS.

use std::path::{Path, PathBuf};

use http::HeaderName;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::check_authority;

/// A group of upstream servers.
///
/// ```toml
/// [upstreams.backend]
/// servers = ["10.0.0.1:8080", { address = "10.0.0.2:8080", weight = 3 }]
/// balance = "least_request"       # round_robin (default), least_request, random, consistent_hash
/// connect_timeout_ms = 2000
/// timeout_ms = 30000
/// idle_timeout_ms = 4000          # pooled connections idle longer are closed
/// connection_lifetime_ms = 3600000  # none by default
/// health = { path = "/healthz", interval_ms = 5000 }
///
/// [upstreams.sessions]
/// servers = ["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"]
/// balance = "consistent_hash"
/// hash_on = "header:x-session"    # or "client_ip", "consumer"
///
/// [upstreams.payments]
/// servers = ["https://payments.internal:443"]
/// protocol = "h2"                            # http1 (default), h2 or h2c
/// tls = { ca = "certs/internal-ca.pem", cert = "certs/gw.pem", key = "certs/gw.key" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The servers: `host:port` (or `https://host:port`), or a table with
    /// an `address` and a `weight`.
    pub servers: Vec<ServerConfig>,
    /// How a request's server is chosen.
    #[serde(default)]
    pub balance: Balance,
    /// What `consistent_hash` hashes; required with it, refused without.
    #[serde(default)]
    pub hash_on: Option<HashOn>,
    /// How long to wait for a TCP connection; a connection that fails or
    /// takes longer is answered 502 (if `timeout_ms` has not run out
    /// first).
    #[serde(default = "UpstreamConfig::default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// How long to wait for the response head, counted from when the
    /// request is sent to the upstream client (connecting included); past
    /// it the answer is 504.
    #[serde(default = "UpstreamConfig::default_timeout")]
    pub timeout_ms: u64,
    /// Idle keep-alive connections kept per server.
    #[serde(default = "UpstreamConfig::default_max_idle")]
    pub max_idle_per_server: usize,
    /// How long a pooled connection may stay idle before the gateway
    /// closes it. Keep it below the servers' own keep-alive timeout (Node's
    /// is 5 s, nginx's 75 s), so the server never closes a connection the
    /// gateway is about to reuse.
    #[serde(default = "UpstreamConfig::default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// How long a connection may be reused at most, counted from when it
    /// was made: past it, it is closed after the request it is serving
    /// (nginx's `keepalive_time`, Envoy's `max_connection_duration`).
    /// None by default.
    #[serde(default)]
    pub connection_lifetime_ms: Option<u64>,
    /// How long the response body may go without a byte, in ms; past it
    /// the response is cut short (nginx's `proxy_read_timeout`).
    #[serde(default = "UpstreamConfig::default_body_idle")]
    pub body_idle_timeout_ms: u64,
    /// The protocol spoken to the servers.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS settings for `https://` servers.
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
    /// Active health checks; none by default.
    #[serde(default)]
    pub health: Option<HealthCheckConfig>,
    /// Passive health checks (outlier ejection); on by default.
    #[serde(default)]
    pub outlier: OutlierConfig,
    /// Retries on another server; one by default, for failures before a
    /// response.
    #[serde(default)]
    pub retries: RetryConfig,
}

/// One server of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `host:port`, or `https://host:port`.
    pub address: String,
    /// Its share of the requests against the others' (1 to 1000).
    pub weight: u32,
}

impl<'de> Deserialize<'de> for ServerConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ServerVisitor;

        impl<'de> Visitor<'de> for ServerVisitor {
            type Value = ServerConfig;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"host:port\" or { address = \"host:port\", weight = N }")
            }

            fn visit_str<E: de::Error>(self, address: &str) -> Result<ServerConfig, E> {
                Ok(ServerConfig {
                    address: address.to_owned(),
                    weight: 1,
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ServerConfig, A::Error> {
                let mut address = None;
                let mut weight = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "address" if address.is_none() => address = Some(map.next_value()?),
                        "weight" if weight.is_none() => weight = Some(map.next_value()?),
                        "address" | "weight" => return Err(de::Error::duplicate_field("key")),
                        other => {
                            return Err(de::Error::unknown_field(other, &["address", "weight"]));
                        }
                    }
                }
                Ok(ServerConfig {
                    address: address.ok_or_else(|| de::Error::missing_field("address"))?,
                    weight: weight.unwrap_or(1),
                })
            }
        }

        deserializer.deserialize_any(ServerVisitor)
    }
}

/// How a group chooses a request's server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// In turn, each server as often as its weight says (nginx's smooth
    /// weighted round-robin).
    #[default]
    RoundRobin,
    /// The less busy of two servers drawn at random (power of two
    /// choices), requests in flight divided by weight.
    LeastRequest,
    /// A server drawn at random, by weight.
    Random,
    /// The same key to the same server while the group's healthy servers
    /// stay the same (a hash ring); `hash_on` says what the key is.
    ConsistentHash,
}

/// The key of `consistent_hash`: `client_ip`, `consumer` (the identity an
/// auth plugin set; the client IP when there is none), or `header:NAME`
/// (the client IP when the request has no such header).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum HashOn {
    /// The client's address (after trusted proxies).
    ClientIp,
    /// The consumer an authentication plugin identified.
    Consumer,
    /// A request header.
    Header(HeaderName),
}

impl TryFrom<String> for HashOn {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "client_ip" => Ok(HashOn::ClientIp),
            "consumer" => Ok(HashOn::Consumer),
            _ => match text.strip_prefix("header:") {
                Some(name) => HeaderName::try_from(name)
                    .map(HashOn::Header)
                    .map_err(|_| format!("`{name}` is not a header name")),
                None => Err(format!(
                    "`{text}`: expected \"client_ip\", \"consumer\" or \"header:NAME\""
                )),
            },
        }
    }
}

/// Active health checks: each server probed in the background, on its
/// own jittered schedule, never from the request path.
///
/// ```toml
/// [upstreams.backend.health]
/// kind = "http"               # or "tcp": a connection that opens is healthy
/// path = "/healthz"
/// host = "backend.internal"   # Host header; default: the server's address
/// statuses = [200, 204]       # default: any 2xx or 3xx
/// interval_ms = 5000
/// timeout_ms = 1000
/// healthy_threshold = 2       # passes in a row to come back
/// unhealthy_threshold = 3     # failures in a row to be taken out
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// HTTP `GET` or a TCP connect.
    #[serde(default)]
    pub kind: HealthCheckKind,
    /// The path an HTTP check requests.
    #[serde(default = "HealthCheckConfig::default_path")]
    pub path: String,
    /// The `Host` of an HTTP check.
    #[serde(default)]
    pub host: Option<String>,
    /// Statuses that pass; empty means any 2xx or 3xx.
    #[serde(default)]
    pub statuses: Vec<u16>,
    /// Time between checks of one server (each one jittered by up to 10%).
    #[serde(default = "HealthCheckConfig::default_interval")]
    pub interval_ms: u64,
    /// How long one check may take, connecting included.
    #[serde(default = "HealthCheckConfig::default_timeout")]
    pub timeout_ms: u64,
    /// Checks in a row that must pass for a down server to come back.
    #[serde(default = "HealthCheckConfig::default_healthy")]
    pub healthy_threshold: u32,
    /// Checks in a row that must fail for a server to be taken out.
    #[serde(default = "HealthCheckConfig::default_unhealthy")]
    pub unhealthy_threshold: u32,
}

impl HealthCheckConfig {
    fn default_path() -> String {
        "/".into()
    }
    fn default_interval() -> u64 {
        5_000
    }
    fn default_timeout() -> u64 {
        1_000
    }
    fn default_healthy() -> u32 {
        2
    }
    fn default_unhealthy() -> u32 {
        3
    }

    /// Whether an HTTP check answered `status` passes.
    pub fn passes(&self, status: u16) -> bool {
        if self.statuses.is_empty() {
            (200..400).contains(&status)
        } else {
            self.statuses.contains(&status)
        }
    }
}

/// What an active check does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// `GET path`, judged by the status.
    #[default]
    Http,
    /// A TCP connection (and the TLS handshake, for `https://` servers).
    Tcp,
}

/// Passive health checks: a server that fails `consecutive_failures`
/// requests in a row (no connection, no response head, or a status in
/// `statuses`) is ejected for `base_ejection_ms` times the number of its
/// recent ejections, at most `max_ejection_ms`. At most
/// `max_ejected_percent` of a group is ejected at once: past that, the
/// failing servers keep their share (Envoy's panic threshold).
///
/// ```toml
/// [upstreams.backend.outlier]
/// consecutive_failures = 5    # 0 turns passive checks off
/// statuses = [502, 503, 504]
/// base_ejection_ms = 30000
/// max_ejection_ms = 300000
/// max_ejected_percent = 50
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Failures in a row that eject a server; 0 disables ejection.
    #[serde(default = "OutlierConfig::default_failures")]
    pub consecutive_failures: u32,
    /// Response statuses that count as failures.
    #[serde(default = "OutlierConfig::default_statuses")]
    pub statuses: Vec<u16>,
    /// The first ejection's length.
    #[serde(default = "OutlierConfig::default_base")]
    pub base_ejection_ms: u64,
    /// The longest ejection.
    #[serde(default = "OutlierConfig::default_max")]
    pub max_ejection_ms: u64,
    /// The largest share of the group ejected at once, in percent.
    #[serde(default = "OutlierConfig::default_percent")]
    pub max_ejected_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: Self::default_failures(),
            statuses: Self::default_statuses(),
            base_ejection_ms: Self::default_base(),
            max_ejection_ms: Self::default_max(),
            max_ejected_percent: Self::default_percent(),
        }
    }
}

impl OutlierConfig {
    fn default_failures() -> u32 {
        5
    }
    fn default_statuses() -> Vec<u16> {
        vec![502, 503, 504]
    }
    fn default_base() -> u64 {
        30_000
    }
    fn default_max() -> u64 {
        300_000
    }
    fn default_percent() -> u32 {
        50
    }
}

/// Retries: a request that failed on one server is sent again, to another
/// server when the group has one. Only a request the gateway can send again
/// is retried: one without a body, or whose body (its size known in advance,
/// at most `max_body_bytes`) the gateway reads whole before the first try,
/// as nginx does by default. A connection that
/// could not be made is retried whatever the method (nothing reached the
/// server); a reset before the response head, a status in `statuses`, or
/// (with `on_timeout`) a try that timed out, only for an idempotent method
/// (GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
///
/// ```toml
/// [upstreams.backend.retries]
/// attempts = 2                # tries after the first; 0 turns retries off
/// statuses = [502, 503]       # default: none
/// on_reset = true
/// on_timeout = false          # a try that timed out (see a route's upstream_timeout_ms)
/// backoff_ms = 25             # before the first retry; doubles; jittered
/// budget_percent = 20         # retries in flight: at most 20% of requests in flight
/// budget_min = 10             # but 10 at least
/// max_body_bytes = 65536      # bodies up to this size are kept to be sent again; 0: none
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Tries after the first; 0 turns retries off.
    #[serde(default = "RetryConfig::default_attempts")]
    pub attempts: u32,
    /// Response statuses retried (idempotent requests only).
    #[serde(default)]
    pub statuses: Vec<u16>,
    /// Whether a connection reset or closed before the response head is
    /// retried (idempotent requests only).
    #[serde(default = "super::yes")]
    pub on_reset: bool,
    /// Whether a try whose response head did not come within the timeout
    /// is retried (idempotent requests only).
    #[serde(default)]
    pub on_timeout: bool,
    /// The wait before the first retry, doubled for each next one, each
    /// drawn between half of it and all of it.
    #[serde(default = "RetryConfig::default_backoff")]
    pub backoff_ms: u64,
    /// Retries in flight in the group, at most this share of its requests
    /// in flight (and at least `budget_min`), so retries cannot multiply an
    /// outage.
    #[serde(default = "RetryConfig::default_budget")]
    pub budget_percent: u32,
    /// Retries in flight always allowed, whatever the share (Envoy's
    /// `min_retry_concurrency`).
    #[serde(default = "RetryConfig::default_budget_min")]
    pub budget_min: u32,
    /// The largest request body kept to be sent again: a body whose size
    /// is known in advance (`Content-Length`) and at most this is read
    /// whole before the first try. 0 keeps none (only requests without a
    /// body are retried).
    #[serde(default = "RetryConfig::default_max_body")]
    pub max_body_bytes: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: Self::default_attempts(),
            statuses: Vec::new(),
            on_reset: true,
            on_timeout: false,
            backoff_ms: Self::default_backoff(),
            budget_percent: Self::default_budget(),
            budget_min: Self::default_budget_min(),
            max_body_bytes: Self::default_max_body(),
        }
    }
}

impl RetryConfig {
    /// Problems with the table at `at` (`upstreams.NAME.retries` or
    /// `routes[N].retries`), each reported through `bad` with its key.
    pub(super) fn validate(&self, at: &str, bad: &mut dyn FnMut(String, String)) {
        let key = |field: &str| format!("{at}.{field}");
        if self.attempts > 10 {
            bad(
                key("attempts"),
                format!("must be between 0 and 10, got {}", self.attempts),
            );
        }
        if let Some(status) = self.statuses.iter().find(|s| !(100..=599).contains(*s)) {
            bad(key("statuses"), format!("{status} is not an HTTP status"));
        }
        if self.backoff_ms > 60_000 {
            bad(
                key("backoff_ms"),
                format!("must be at most 60000, got {}", self.backoff_ms),
            );
        }
        if !(1..=10_000).contains(&self.budget_min) {
            bad(
                key("budget_min"),
                format!("must be between 1 and 10000, got {}", self.budget_min),
            );
        }
        if self.max_body_bytes > 16 * 1024 * 1024 {
            bad(
                key("max_body_bytes"),
                format!(
                    "must be at most 16777216 (16 MiB), got {}",
                    self.max_body_bytes
                ),
            );
        }
        if !(1..=100).contains(&self.budget_percent) {
            bad(
                key("budget_percent"),
                format!("must be between 1 and 100, got {}", self.budget_percent),
            );
        }
    }

    fn default_attempts() -> u32 {
        1
    }
    fn default_backoff() -> u64 {
        25
    }
    fn default_budget() -> u32 {
        20
    }
    fn default_budget_min() -> u32 {
        10
    }
    fn default_max_body() -> u64 {
        64 * 1024
    }
}

/// The protocol of an upstream group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive (over TLS for `https://` servers).
    #[default]
    Http1,
    /// HTTP/2 over TLS, negotiated by ALPN: `https://` servers only.
    H2,
    /// HTTP/2 in clear text with prior knowledge: plain servers only.
    H2c,
}

/// How the gateway verifies `https://` upstream servers and presents
/// itself to them.
///
/// ```toml
/// [upstreams.payments.tls]
/// ca = "certs/internal-ca.pem"      # default: the webpki (Mozilla) roots
/// server_name = "payments.internal" # default: each server's host
/// cert = "certs/gateway.pem"        # mutual TLS to the upstream
/// key = "certs/gateway.key"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM bundle of the CAs the servers' certificates must chain to.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The name sent as SNI and checked against the server certificates.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Client certificate chain (PEM) for mutual TLS.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl UpstreamConfig {
    /// Whether the servers are `https://` ones.
    pub fn is_https(&self) -> bool {
        self.servers
            .first()
            .is_some_and(|s| s.address.starts_with("https://"))
    }

    /// The files the group reads (CA, client certificate and key).
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.tls
            .iter()
            .flat_map(|t| [&t.ca, &t.cert, &t.key])
            .filter_map(|p| p.as_deref())
    }
}

/// A server address without its scheme: `host:port`.
pub fn server_authority(server: &str) -> &str {
    server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .unwrap_or(server)
}

impl UpstreamConfig {
    fn default_connect_timeout() -> u64 {
        2_000
    }
    fn default_timeout() -> u64 {
        30_000
    }
    fn default_max_idle() -> usize {
        64
    }
    fn default_body_idle() -> u64 {
        60_000
    }
    fn default_idle_timeout() -> u64 {
        4_000
    }
}

impl UpstreamConfig {
    /// Problems with group `name`, each reported through `bad` with its
    /// key (`upstreams.NAME.FIELD`).
    pub(super) fn validate(&self, name: &str, bad: &mut dyn FnMut(String, String)) {
        let key = |field: &str| format!("upstreams.{name}.{field}");
        if self.servers.is_empty() {
            bad(key("servers"), "at least one server is required".into());
        }
        for (i, server) in self.servers.iter().enumerate() {
            if let Err(why) = check_authority(server_authority(&server.address)) {
                bad(format!("upstreams.{name}.servers[{i}]"), why);
            }
            if !(1..=1000).contains(&server.weight) {
                bad(
                    format!("upstreams.{name}.servers[{i}].weight"),
                    format!("must be between 1 and 1000, got {}", server.weight),
                );
            }
            if server.address.starts_with("https://") != self.is_https() {
                bad(
                    format!("upstreams.{name}.servers[{i}]"),
                    "every server of a group uses the same scheme (all https:// or none)".into(),
                );
            }
        }
        match self.protocol {
            UpstreamProtocol::H2 if !self.is_https() => bad(
                key("protocol"),
                "\"h2\" is HTTP/2 over TLS: the servers must be https://host:port (or use \"h2c\")"
                    .into(),
            ),
            UpstreamProtocol::H2c if self.is_https() => bad(
                key("protocol"),
                "\"h2c\" is HTTP/2 in clear text: use \"h2\" with https:// servers".into(),
            ),
            _ => {}
        }
        if let Some(tls) = &self.tls {
            if !self.is_https() {
                bad(
                    key("tls"),
                    "TLS settings need https:// servers, e.g. servers = [\"https://10.0.0.1:443\"]"
                        .into(),
                );
            }
            if tls.cert.is_some() != tls.key.is_some() {
                bad(
                    key("tls"),
                    "a client certificate needs both `cert` and `key`".into(),
                );
            }
            if let Some(name) = &tls.server_name
                && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
            {
                bad(
                    key("tls.server_name"),
                    format!("`{name}` is not a DNS name or IP address"),
                );
            }
        }
        if self.connect_timeout_ms == 0 {
            bad(key("connect_timeout_ms"), "must be at least 1".into());
        }
        if self.timeout_ms == 0 {
            bad(key("timeout_ms"), "must be at least 1".into());
        }
        if !(100..=86_400_000).contains(&self.body_idle_timeout_ms) {
            bad(
                key("body_idle_timeout_ms"),
                format!(
                    "must be between 100 and 86400000, got {}",
                    self.body_idle_timeout_ms
                ),
            );
        }
        match (self.balance, &self.hash_on) {
            (Balance::ConsistentHash, None) => bad(
                key("hash_on"),
                "consistent_hash needs a key: \"client_ip\", \"consumer\" or \"header:NAME\""
                    .into(),
            ),
            (Balance::ConsistentHash, Some(_)) | (_, None) => {}
            (_, Some(_)) => bad(
                key("hash_on"),
                "only balance = \"consistent_hash\" uses a hash key".into(),
            ),
        }
        if !(100..=3_600_000).contains(&self.idle_timeout_ms) {
            bad(
                key("idle_timeout_ms"),
                format!(
                    "must be between 100 and 3600000, got {}",
                    self.idle_timeout_ms
                ),
            );
        }
        if let Some(lifetime) = self.connection_lifetime_ms
            && !(100..=86_400_000).contains(&lifetime)
        {
            bad(
                key("connection_lifetime_ms"),
                format!("must be between 100 and 86400000, got {lifetime}"),
            );
        }
        if let Some(health) = &self.health {
            let key = |field: &str| format!("upstreams.{name}.health.{field}");
            if !health.path.starts_with('/') {
                bad(key("path"), format!("`{}` must start with /", health.path));
            } else if http::uri::PathAndQuery::try_from(health.path.as_str()).is_err() {
                bad(
                    key("path"),
                    format!("`{}` is not a request path", health.path),
                );
            }
            if let Some(host) = &health.host
                && http::HeaderValue::try_from(host.as_str()).is_err()
            {
                bad(key("host"), format!("`{host}` cannot be a Host header"));
            }
            if let Some(status) = health.statuses.iter().find(|s| !(100..=599).contains(*s)) {
                bad(key("statuses"), format!("{status} is not an HTTP status"));
            }
            if !(100..=3_600_000).contains(&health.interval_ms) {
                bad(
                    key("interval_ms"),
                    format!(
                        "must be between 100 and 3600000, got {}",
                        health.interval_ms
                    ),
                );
            }
            if !(1..=600_000).contains(&health.timeout_ms) {
                bad(
                    key("timeout_ms"),
                    format!("must be between 1 and 600000, got {}", health.timeout_ms),
                );
            }
            for (field, value) in [
                ("healthy_threshold", health.healthy_threshold),
                ("unhealthy_threshold", health.unhealthy_threshold),
            ] {
                if !(1..=100).contains(&value) {
                    bad(
                        key(field),
                        format!("must be between 1 and 100, got {value}"),
                    );
                }
            }
        }
        let outlier = &self.outlier;
        let key = |field: &str| format!("upstreams.{name}.outlier.{field}");
        if let Some(status) = outlier.statuses.iter().find(|s| !(100..=599).contains(*s)) {
            bad(key("statuses"), format!("{status} is not an HTTP status"));
        }
        if outlier.consecutive_failures > 1000 {
            bad(
                key("consecutive_failures"),
                format!(
                    "must be at most 1000 (0 turns ejection off), got {}",
                    outlier.consecutive_failures
                ),
            );
        }
        if !(100..=86_400_000).contains(&outlier.base_ejection_ms) {
            bad(
                key("base_ejection_ms"),
                format!(
                    "must be between 100 and 86400000, got {}",
                    outlier.base_ejection_ms
                ),
            );
        }
        if outlier.max_ejection_ms < outlier.base_ejection_ms
            || outlier.max_ejection_ms > 86_400_000
        {
            bad(
                key("max_ejection_ms"),
                format!(
                    "must be between base_ejection_ms ({}) and 86400000, got {}",
                    outlier.base_ejection_ms, outlier.max_ejection_ms
                ),
            );
        }
        self.retries
            .validate(&format!("upstreams.{name}.retries"), bad);
        if outlier.max_ejected_percent > 100 {
            bad(
                key("max_ejected_percent"),
                format!(
                    "must be between 0 and 100, got {}",
                    outlier.max_ejected_percent
                ),
            );
        }
    }
}
