//! Policy cases: what `portcullis test` runs. A case file (TOML) lists
//! requests and what should come of each; the cases go, in file order,
//! through the real pipeline of a gateway loaded from the config under
//! test ([`Config::go_offline`]), with its real plugins, to a stand-in
//! upstream on 127.0.0.1 that records what it receives and answers what
//! the case says. Nothing leaves the machine.
//!
//! ```toml
//! [[case]]
//! name = "a member reads their own tenant"
//! request = { method = "GET", path = "/api/tenants/acme/orders", headers = { x-api-key = "demo-key" } }
//! upstream = { status = 200, body = '{"card": "4111 1111 1111 1111"}' }
//! [case.expect]
//! status = 200
//! body_contains = "**** **** **** 1111"
//! upstream = { path = "/api/tenants/acme/orders", headers = { x-gateway = "portcullis" } }
//!
//! [[case]]
//! name = "no key, no entry"
//! request = { path = "/api/me", client = "203.0.113.9", time = 2026-12-07T10:00:00Z }
//! expect = { status = 401, upstream = false }
//! ```
//!
//! Cases share one gateway, so what plugins remember (rate-limit
//! counters, caches) carries from one case to the next, and the clock
//! plugins read stands at the last `time` a case set (2026-01-01T00:00:00Z
//! before the first).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use serde::de::{self, Deserializer};
use tokio::net::TcpListener;

use crate::Gateway;
use crate::clock::ManualClock;
use crate::config::Config;
use crate::forward::{Connection, TlsSession};
use crate::registry::Registry;

/// Where the clock stands before a case sets it: 2026-01-01T00:00:00Z.
pub const DEFAULT_TIME_MS: u64 = 1_767_225_600_000;
/// The client address of a case that names none (TEST-NET-1).
const DEFAULT_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
/// How long one case may take before it is a failure.
const CASE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest body quoted in a failure.
const QUOTE_MAX: usize = 200;

/// A case file: `[[case]]` tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// The cases, run in this order.
    #[serde(rename = "case", default)]
    pub cases: Vec<Case>,
}

/// One request and what should come of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the output calls it.
    pub name: String,
    /// The request the client sends.
    pub request: CaseRequest,
    /// What the stand-in upstream answers, if the request reaches it.
    #[serde(default)]
    pub upstream: StandInReply,
    /// What the client and the upstream should see.
    #[serde(default)]
    pub expect: Expect,
}

/// The client's request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    /// `GET` by default.
    #[serde(default = "default_method")]
    pub method: String,
    /// Path and query, as sent (`/api/me?debug=1`).
    pub path: String,
    /// The `Host` header; `localhost` by default.
    #[serde(default)]
    pub host: Option<String>,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The request body (sent with its `Content-Length`).
    #[serde(default)]
    pub body: String,
    /// The client's address; 192.0.2.10 by default.
    #[serde(default)]
    pub client: Option<IpAddr>,
    /// The time plugins see from this case on (RFC 3339, UTC: a TOML
    /// date-time or a string).
    #[serde(default)]
    pub time: Option<toml::Value>,
    /// The index of the listener it arrives on (0 by default). A TLS
    /// listener's requests count as HTTPS, without a client certificate.
    #[serde(default)]
    pub listener: usize,
}

fn default_method() -> String {
    "GET".into()
}

/// What the stand-in upstream answers; `200` with an empty body by
/// default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandInReply {
    /// The status.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The response body.
    #[serde(default)]
    pub body: String,
}

fn default_status() -> u16 {
    200
}

impl Default for StandInReply {
    fn default() -> Self {
        Self {
            status: default_status(),
            headers: BTreeMap::new(),
            body: String::new(),
        }
    }
}

/// What the client should receive. Every key is optional; an absent one
/// is not checked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The response status.
    #[serde(default)]
    pub status: Option<u16>,
    /// Response headers and their values (one of the values, for a
    /// repeated header).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Response headers that must not be there.
    #[serde(default)]
    pub absent_headers: Vec<String>,
    /// The whole response body.
    #[serde(default)]
    pub body: Option<String>,
    /// Text the response body must contain.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// `false`: the upstream receives nothing; `true`: it receives the
    /// request; a table: it receives a request like this.
    #[serde(default)]
    pub upstream: Option<ExpectUpstream>,
}

/// What the upstream should receive.
#[derive(Debug, Clone)]
pub enum ExpectUpstream {
    /// Nothing (`false`) or anything (`true`).
    Reached(bool),
    /// A request like this.
    Request(ExpectRequest),
}

impl<'de> Deserialize<'de> for ExpectUpstream {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;

        impl<'de> de::Visitor<'de> for Visit {
            type Value = ExpectUpstream;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`false`, `true`, or a table of what the upstream receives")
            }

            fn visit_bool<E: de::Error>(self, reached: bool) -> Result<ExpectUpstream, E> {
                Ok(ExpectUpstream::Reached(reached))
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<ExpectUpstream, A::Error> {
                ExpectRequest::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(ExpectUpstream::Request)
            }
        }

        deserializer.deserialize_any(Visit)
    }
}

/// The request the upstream should receive. Every key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectRequest {
    /// Its method.
    #[serde(default)]
    pub method: Option<String>,
    /// Its path and query.
    #[serde(default)]
    pub path: Option<String>,
    /// Headers and their values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers that must not be there.
    #[serde(default)]
    pub absent_headers: Vec<String>,
    /// The whole body.
    #[serde(default)]
    pub body: Option<String>,
    /// Text the body must contain.
    #[serde(default)]
    pub body_contains: Option<String>,
}

/// A case ready to send: checked and parsed.
struct Prepared {
    request: Request<Full<Bytes>>,
    client: IpAddr,
    time_ms: Option<u64>,
    listener: usize,
    reply: Reply,
}

/// A case's request, as the stand-in sees it or as it answers.
#[derive(Debug, Clone, Default)]
struct Exchange {
    method: String,
    path: String,
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

/// The stand-in's answer, parsed.
#[derive(Debug, Clone)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl CaseFile {
    /// Reads and checks the case file at `path`, and builds each case's
    /// request: every problem, each named by its case and key.
    fn load(path: &Path) -> anyhow::Result<Vec<(Case, Prepared)>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let file: CaseFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        if file.cases.is_empty() {
            anyhow::bail!("{}: no `[[case]]` in the file", path.display());
        }
        let mut cases = Vec::with_capacity(file.cases.len());
        let mut problems = Vec::new();
        for (i, case) in file.cases.into_iter().enumerate() {
            match prepare(&case) {
                Ok(prepared) => cases.push((case, prepared)),
                Err(found) => problems.extend(
                    found
                        .into_iter()
                        .map(|p| format!("  - case[{i}] ({}): {p}", case.name)),
                ),
            }
        }
        if !problems.is_empty() {
            anyhow::bail!("{}:\n{}", path.display(), problems.join("\n"));
        }
        Ok(cases)
    }
}

/// Checks a case and builds its request; every problem, each naming its
/// key.
fn prepare(case: &Case) -> Result<Prepared, Vec<String>> {
    let mut problems = Vec::new();
    let r = &case.request;
    let method = Method::from_bytes(r.method.as_bytes())
        .map_err(|_| problems.push(format!("request.method: `{}` is not a method", r.method)))
        .ok();
    if !r.path.starts_with('/') {
        problems.push(format!(
            "request.path: `{}` must start with `/` (origin form)",
            r.path
        ));
    }
    let host = r.host.as_deref().unwrap_or("localhost");
    let mut headers = header_map("request.headers", &r.headers, &mut problems);
    match HeaderValue::from_str(host) {
        Ok(value) => {
            headers.entry(http::header::HOST).or_insert(value);
        }
        Err(_) => problems.push(format!("request.host: `{host}` is not a header value")),
    }
    let time_ms = r.time.as_ref().and_then(|value| {
        parse_time(value)
            .map_err(|e| problems.push(format!("request.time: {e}")))
            .ok()
    });
    let reply_headers = header_map("upstream.headers", &case.upstream.headers, &mut problems);
    let status = StatusCode::from_u16(case.upstream.status)
        .map_err(|_| {
            problems.push(format!(
                "upstream.status: {} is not a status code",
                case.upstream.status
            ))
        })
        .ok();
    if let Some(status) = case.expect.status
        && StatusCode::from_u16(status).is_err()
    {
        problems.push(format!("expect.status: {status} is not a status code"));
    }
    let names = case
        .expect
        .headers
        .keys()
        .map(|n| ("expect.headers", n))
        .chain(
            case.expect
                .absent_headers
                .iter()
                .map(|n| ("expect.absent_headers", n)),
        );
    let upstream_names = match &case.expect.upstream {
        Some(ExpectUpstream::Request(e)) => e
            .headers
            .keys()
            .map(|n| ("expect.upstream.headers", n))
            .chain(
                e.absent_headers
                    .iter()
                    .map(|n| ("expect.upstream.absent_headers", n)),
            )
            .collect(),
        _ => Vec::new(),
    };
    for (key, name) in names.chain(upstream_names) {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push(format!("{key}: `{name}` is not a header name"));
        }
    }
    let (Some(method), Some(status), true) = (method, status, problems.is_empty()) else {
        return Err(problems);
    };
    let mut request = Request::new(Full::new(Bytes::from(r.body.clone())));
    *request.method_mut() = method;
    *request.headers_mut() = headers;
    *request.uri_mut() = r
        .path
        .parse()
        .map_err(|e| vec![format!("request.path: `{}`: {e}", r.path)])?;
    Ok(Prepared {
        request,
        client: r.client.unwrap_or(DEFAULT_CLIENT),
        time_ms,
        listener: r.listener,
        reply: Reply {
            status,
            headers: reply_headers,
            body: Bytes::from(case.upstream.body.clone()),
        },
    })
}

fn header_map(
    key: &str,
    headers: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                map.append(name, value);
            }
            (Err(_), _) => problems.push(format!("{key}: `{name}` is not a header name")),
            (_, Err(_)) => problems.push(format!("{key}.{name}: `{value}` is not a header value")),
        }
    }
    map
}

/// A case's `time`: a TOML date-time or an RFC 3339 string, in UTC.
fn parse_time(value: &toml::Value) -> Result<u64, String> {
    let text = match value {
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::String(s) => s.clone(),
        other => return Err(format!("expected a date-time, got {}", other.type_str())),
    };
    let time = humantime::parse_rfc3339(&text)
        .map_err(|e| format!("`{text}`: {e} (expected UTC, like 2026-12-07T10:00:00Z)"))?;
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|_| format!("`{text}` is before 1970"))
}

/// What running a case file came to.
#[derive(Debug)]
pub struct Report {
    /// Each case's result, in file order.
    pub cases: Vec<CaseResult>,
    /// Loading the config and its plugins.
    pub load_time: Duration,
    /// Running the cases.
    pub run_time: Duration,
}

impl Report {
    /// How many cases failed.
    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.failures.is_empty()).count()
    }
}

/// One case's result.
#[derive(Debug)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// The status the client received (none if no response came).
    pub status: Option<u16>,
    /// What differed from the expectation; empty if the case passed.
    pub failures: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, case) in self.cases.iter().enumerate() {
            let status = case
                .status
                .map_or_else(|| "no response".to_owned(), |s| s.to_string());
            let verdict = if case.failures.is_empty() {
                "ok  "
            } else {
                "FAIL"
            };
            writeln!(f, "{verdict} {:>3} {} ({status})", i + 1, case.name)?;
            for failure in &case.failures {
                writeln!(f, "           {failure}")?;
            }
        }
        let failed = self.failed();
        write!(
            f,
            "{} passed, {failed} failed; cases ran in {:.1} ms (config and plugins loaded in {:.0} ms)",
            self.cases.len() - failed,
            self.run_time.as_secs_f64() * 1e3,
            self.load_time.as_secs_f64() * 1e3,
        )
    }
}

/// Runs the cases of `cases` against the config at `config`, offline.
/// An error is a case file or a config that cannot be run at all; failed
/// cases are in the report.
pub async fn run(config: &Path, cases: &Path) -> anyhow::Result<Report> {
    let cases = CaseFile::load(cases)?;
    let started = Instant::now();
    let stand_in = StandIn::start().await?;
    let clock = Arc::new(ManualClock::new(DEFAULT_TIME_MS));
    // Which listeners have TLS, before going offline drops it (a config
    // that does not parse is reported by the load below).
    let listeners: Vec<bool> = std::fs::read_to_string(config)
        .ok()
        .and_then(|text| Config::parse(&text).ok())
        .map(|c| c.listeners.iter().map(|l| l.tls.is_some()).collect())
        .unwrap_or_default();
    let registry = Gateway::builder(config)
        .clock(clock.clone())
        .offline(stand_in.addr)
        .check()
        .await?;
    let load_time = started.elapsed();
    let started = Instant::now();
    let mut results = Vec::with_capacity(cases.len());
    for (case, prepared) in cases {
        results.push(run_case(&case, prepared, &registry, &clock, &stand_in, &listeners).await);
    }
    Ok(Report {
        cases: results,
        load_time,
        run_time: started.elapsed(),
    })
}

async fn run_case(
    case: &Case,
    prepared: Prepared,
    registry: &Arc<Registry>,
    clock: &ManualClock,
    stand_in: &StandIn,
    listeners: &[bool],
) -> CaseResult {
    let mut result = CaseResult {
        name: case.name.clone(),
        status: None,
        failures: Vec::new(),
    };
    let listener_count = registry.current().listeners.len();
    if prepared.listener >= listener_count {
        result.failures.push(format!(
            "request.listener: {} but the config has {listener_count} listeners",
            prepared.listener
        ));
        return result;
    }
    if let Some(time) = prepared.time_ms {
        clock.set(time);
    }
    stand_in.expect(prepared.reply);
    let host = prepared
        .request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(Box::from);
    let conn = Connection {
        listener: prepared.listener,
        peer: SocketAddr::new(prepared.client, 49_152),
        tls: listeners
            .get(prepared.listener)
            .copied()
            .unwrap_or(false)
            .then_some(TlsSession {
                version: "TLSv1.3",
                server_name: host,
                client_certificate: None,
            }),
        slot: None,
    };
    let sent =
        tokio::time::timeout(CASE_TIMEOUT, send(prepared.request, conn, registry.clone())).await;
    let response = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            result.failures.push(format!("no response: {e:#}"));
            return result;
        }
        Err(_) => {
            result
                .failures
                .push(format!("no response within {} s", CASE_TIMEOUT.as_secs()));
            return result;
        }
    };
    result.status = Some(response.status);
    check_response(&case.expect, &response, &mut result.failures);
    let received = stand_in.received();
    check_upstream(
        case.expect.upstream.as_ref(),
        received.last(),
        &mut result.failures,
    );
    result
}

/// Sends `request` through the pipeline on an in-memory connection and
/// reads the whole response.
async fn send(
    request: Request<Full<Bytes>>,
    conn: Connection,
    registry: Arc<Registry>,
) -> anyhow::Result<Exchange> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let serving = tokio::spawn(crate::server::serve_stream(server, conn, registry));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .context("handshake")?;
    let driving = tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let (head, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    drop(sender);
    let _ = driving.await;
    let _ = serving.await;
    Ok(Exchange {
        status: head.status.as_u16(),
        headers: head.headers,
        body,
        ..Exchange::default()
    })
}

fn check_response(expect: &Expect, response: &Exchange, failures: &mut Vec<String>) {
    if let Some(status) = expect.status
        && status != response.status
    {
        failures.push(format!(
            "status: expected {status}, got {}",
            response.status
        ));
    }
    check_message(
        "",
        &expect.headers,
        &expect.absent_headers,
        expect.body.as_deref(),
        expect.body_contains.as_deref(),
        response,
        failures,
    );
}

fn check_upstream(
    expect: Option<&ExpectUpstream>,
    received: Option<&Exchange>,
    failures: &mut Vec<String>,
) {
    let expect = match (expect, received) {
        (None, _) => return,
        (Some(ExpectUpstream::Reached(false)), None) => return,
        (Some(ExpectUpstream::Reached(false)), Some(got)) => {
            failures.push(format!(
                "upstream: expected no request, got {} {}",
                got.method, got.path
            ));
            return;
        }
        (Some(_), None) => {
            failures.push("upstream: expected a request, got none".into());
            return;
        }
        (Some(ExpectUpstream::Reached(true)), Some(_)) => return,
        (Some(ExpectUpstream::Request(expect)), Some(_)) => expect,
    };
    let Some(got) = received else { return };
    if let Some(method) = &expect.method
        && !method.eq_ignore_ascii_case(&got.method)
    {
        failures.push(format!(
            "upstream method: expected {method}, got {}",
            got.method
        ));
    }
    if let Some(path) = &expect.path
        && *path != got.path
    {
        failures.push(format!(
            "upstream path: expected `{path}`, got `{}`",
            got.path
        ));
    }
    check_message(
        "upstream ",
        &expect.headers,
        &expect.absent_headers,
        expect.body.as_deref(),
        expect.body_contains.as_deref(),
        got,
        failures,
    );
}

/// The checks a response and an upstream request share.
fn check_message(
    side: &str,
    headers: &BTreeMap<String, String>,
    absent: &[String],
    body: Option<&str>,
    contains: Option<&str>,
    got: &Exchange,
    failures: &mut Vec<String>,
) {
    for (name, value) in headers {
        let values: Vec<&str> = got
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| v.to_str().unwrap_or("<not text>"))
            .collect();
        if !values.contains(&value.as_str()) {
            let got = if values.is_empty() {
                "none".to_owned()
            } else {
                values
                    .iter()
                    .map(|v| format!("`{v}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            failures.push(format!(
                "{side}header {name}: expected `{value}`, got {got}"
            ));
        }
    }
    for name in absent {
        if let Some(value) = got.headers.get(name.as_str()) {
            failures.push(format!(
                "{side}header {name}: expected none, got `{}`",
                value.to_str().unwrap_or("<not text>")
            ));
        }
    }
    let text = String::from_utf8_lossy(&got.body);
    if let Some(body) = body
        && body != text
    {
        failures.push(format!(
            "{side}body: expected `{}`, got `{}`",
            quote(body),
            quote(&text)
        ));
    }
    if let Some(part) = contains
        && !text.contains(part)
    {
        failures.push(format!(
            "{side}body: expected to contain `{}`, got `{}`",
            quote(part),
            quote(&text)
        ));
    }
}

/// `text`, cut to [`QUOTE_MAX`] characters.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_MAX) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// The stand-in upstream: records each request it receives and answers
/// with the current case's reply. HTTP/1.1 or, with prior knowledge,
/// HTTP/2, on 127.0.0.1.
struct StandIn {
    addr: SocketAddr,
    state: Arc<StandInState>,
    task: tokio::task::JoinHandle<()>,
}

struct StandInState {
    reply: Mutex<Reply>,
    received: Mutex<Vec<Exchange>>,
}

impl StandIn {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("cannot start the stand-in upstream on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(StandInState {
            reply: Mutex::new(Reply {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: Bytes::new(),
            }),
            received: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(accept(listener, state.clone()));
        Ok(Self { addr, state, task })
    }

    /// Clears what was received and answers `reply` from now on.
    fn expect(&self, reply: Reply) {
        *self
            .state
            .reply
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = reply;
        self.state
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// What was received since [`StandIn::expect`].
    fn received(&self) -> Vec<Exchange> {
        self.state
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, state: Arc<StandInState>) {
    while let Ok((stream, _)) = listener.accept().await {
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&state, request).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(state: &StandInState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (head, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    state
        .received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Exchange {
            method: head.method.to_string(),
            path: head
                .uri
                .path_and_query()
                .map_or_else(|| head.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
            status: 0,
            headers: head.headers,
            body,
        });
    let reply = state
        .reply
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = reply.status;
    *response.headers_mut() = reply.headers;
    response
}
