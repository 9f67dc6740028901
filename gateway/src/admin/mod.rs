//! The admin listener: Prometheus metrics, a JSON admin API and the
//! dashboard, on an address of their own (`[admin]`, default
//! `127.0.0.1:9901`). Every endpoint is in `openapi.json`, served at
//! `/openapi.json` and checked against the implementation by the tests.
//!
//! Access: loopback by default. On any other address the config is
//! refused without TLS and a bearer token; with a token, every endpoint
//! but `/healthz`, `/readyz`, `/openapi.json` and the dashboard's page
//! (which holds no data: it fetches the API with the token) needs
//! `Authorization: Bearer <token>`, compared in constant time. Every call
//! is logged (target `portcullis::admin`).
//!
//! Nothing here is on the request path: the API reads the current
//! generation and the counters the request path keeps anyway.

mod api;
pub mod client;
mod stats;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::alerts::AlertSender;
use crate::registry::Registry;

pub use stats::Sampler;

/// The dashboard: one page, its script and styles inline.
const DASHBOARD: &str = include_str!("dashboard.html");
/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the gateway is ready for traffic.
#[derive(Debug, Default)]
pub struct Lifecycle {
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Lifecycle {
    /// Listeners bound and the first generation live.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Shutting down: finishing what is in flight, taking nothing new.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    /// Whether the gateway is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// What the admin API reads.
#[derive(Debug)]
pub struct Admin {
    /// The registry: generations, modules, history, metrics.
    pub registry: Arc<Registry>,
    /// The alert queue: recent alerts and counters.
    pub alerts: AlertSender,
    /// The traffic listeners' bound addresses.
    pub listeners: Vec<SocketAddr>,
    /// Readiness.
    pub lifecycle: Arc<Lifecycle>,
    /// The dashboard's time series.
    pub sampler: Arc<Sampler>,
}

type AdminBody = Full<Bytes>;

/// A JSON answer.
fn json(status: StatusCode, value: &serde_json::Value) -> Response<AdminBody> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    respond(status, "application/json", body)
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<AdminBody> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    response
}

/// An error answer: `{"error": "..."}`.
fn error(status: StatusCode, message: &str) -> Response<AdminBody> {
    json(status, &serde_json::json!({ "error": message }))
}

/// Whether `given` is the token, in time that does not depend on where
/// they differ (both are hashed first, so not on their lengths either).
fn token_matches(given: &[u8], token: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(token));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is
/// case-insensitive (RFC 9110, section 11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Refuses what a web page open in the operator's browser could make the
/// browser send (a reason, for a 403):
///
/// * without a token, a `Host` that is a DNS name other than `localhost`:
///   a page whose name was rebound to 127.0.0.1 could otherwise read the
///   API (DNS rebinding);
/// * a request that changes something (`POST /reload`) from another
///   origin (`Origin` not this `Host`, or `Sec-Fetch-Site` cross-site or
///   same-site): cross-site request forgery. Browsers send those headers;
///   other clients (curl, Prometheus) do not.
fn browser_guard<B>(request: &Request<B>, has_token: bool) -> Option<&'static str> {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    if !has_token && let Some(host) = host {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        let name = name.trim_start_matches('[').trim_end_matches(']');
        if !name.eq_ignore_ascii_case("localhost") && name.parse::<std::net::IpAddr>().is_err() {
            return Some(
                "without [admin] token the admin API answers only to an IP address or localhost in Host",
            );
        }
    }
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let fetch_site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
    if matches!(fetch_site, Some(b"cross-site" | b"same-site")) {
        return Some("a request from another site is refused");
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if let Some(origin) = origin {
        let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if !host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
            return Some("a request from another origin is refused");
        }
    }
    None
}

/// Whether `Accept` asks for OpenMetrics (a media range with a q-value
/// above 0), as Prometheus does.
fn wants_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        parts
            .next()
            .is_some_and(|media| media.eq_ignore_ascii_case("application/openmetrics-text"))
            && !parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f64>().ok())
                    .is_some_and(|q| q <= 0.0)
            })
    })
}

/// Endpoints anyone who reaches the listener may call.
fn is_public(method: &Method, path: &str) -> bool {
    *method == Method::GET
        && matches!(
            path,
            "/healthz" | "/readyz" | "/openapi.json" | "/" | "/dashboard"
        )
}

impl Admin {
    /// Answers one admin call.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<AdminBody> {
        // HEAD is GET without the body (hyper leaves the body out).
        let method = match request.method() {
            &Method::HEAD => Method::GET,
            m => m.clone(),
        };
        let path = request.uri().path().to_owned();
        let query = request.uri().query().map(str::to_owned);
        let config = self.registry.current().config.clone();
        let admin = config.admin.as_ref();
        let has_token = admin.is_some_and(|a| a.token.is_some());
        if let Some(reason) = browser_guard(&request, has_token) {
            return error(StatusCode::FORBIDDEN, reason);
        }
        if let Some(token) = admin.and_then(|a| a.token.as_deref())
            && !is_public(&method, &path)
        {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer);
            if !given.is_some_and(|g| token_matches(g.as_bytes(), token.as_bytes())) {
                let mut response =
                    error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
                );
                return response;
            }
        }
        let dashboard = admin.is_none_or(|a| a.dashboard);
        let accept = request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        match (method, path.as_str()) {
            (Method::GET, "/" | "/dashboard") if dashboard => {
                let mut response = respond(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD);
                response.headers_mut().insert(
                    header::CONTENT_SECURITY_POLICY,
                    http::HeaderValue::from_static(
                        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
                    ),
                );
                response
            }
            (Method::GET, "/healthz") => {
                json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
            }
            (Method::GET, "/readyz") => {
                let lifecycle = &self.lifecycle;
                let (status, word) = if lifecycle.is_ready() {
                    (StatusCode::OK, "ready")
                } else if lifecycle.is_draining() {
                    (StatusCode::SERVICE_UNAVAILABLE, "draining")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                };
                json(status, &serde_json::json!({ "status": word }))
            }
            (Method::GET, "/openapi.json") => respond(StatusCode::OK, "application/json", OPENAPI),
            (Method::GET, "/metrics") => {
                let metrics = self.registry.metrics();
                if wants_openmetrics(&accept) {
                    respond(
                        StatusCode::OK,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        metrics.openmetrics_text(),
                    )
                } else {
                    respond(
                        StatusCode::OK,
                        "text/plain; version=0.0.4; charset=utf-8",
                        metrics.prometheus_text(),
                    )
                }
            }
            (Method::GET, "/status") => json(StatusCode::OK, &api::status(self)),
            (Method::GET, "/routes") => json(StatusCode::OK, &api::routes(&self.registry)),
            (Method::GET, "/plugins") => json(StatusCode::OK, &api::plugins(&self.registry)),
            (Method::GET, "/shadows") => json(StatusCode::OK, &api::shadows(&self.registry)),
            (Method::GET, "/rollouts") => json(StatusCode::OK, &api::rollouts(&self.registry)),
            (Method::POST, path) if path.starts_with("/rollouts/") => {
                // Which token the command came with, for the audit trail.
                let token = admin
                    .and_then(|a| a.token.as_deref())
                    .map(crate::registry::token_fingerprint);
                match api::rollout_command(&self.registry, path, token) {
                    Ok(rollout) => json(StatusCode::OK, &rollout),
                    Err((status, why)) => error(status, &why),
                }
            }
            (Method::GET, "/generations") => {
                json(StatusCode::OK, &api::generations(&self.registry))
            }
            (Method::GET, "/upstreams") => json(StatusCode::OK, &api::upstreams(&self.registry)),
            (Method::GET, "/alerts") => json(StatusCode::OK, &api::alerts(&self.alerts)),
            (Method::GET, "/audit") => match api::audit(&self.registry, query.as_deref()) {
                Ok(page) => json(StatusCode::OK, &page),
                Err(e) => error(StatusCode::BAD_REQUEST, &e),
            },
            (Method::GET, "/stats") => json(StatusCode::OK, &self.sampler.report(&self.registry)),
            (Method::POST, "/reload") => {
                let registry = self.registry.clone();
                // The token this call was let in with (checked above).
                let token = admin
                    .and_then(|a| a.token.as_deref())
                    .map(crate::registry::token_fingerprint);
                match tokio::task::spawn_blocking(move || {
                    registry.reload_config_by(crate::registry::Trigger::Admin(token))
                })
                .await
                {
                    Ok(event) => {
                        let status = match event.outcome {
                            crate::registry::Outcome::Rejected { .. } => {
                                StatusCode::UNPROCESSABLE_ENTITY
                            }
                            _ => StatusCode::OK,
                        };
                        json(status, &api::reload_event(&event))
                    }
                    Err(e) => error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("the reload task failed: {e}"),
                    ),
                }
            }
            (method, path) => {
                let allow = api::allowed(path, dashboard);
                match allow {
                    Some(allow) => {
                        let mut response = error(
                            StatusCode::METHOD_NOT_ALLOWED,
                            &format!("{method} is not allowed on {path}"),
                        );
                        response
                            .headers_mut()
                            .insert(header::ALLOW, http::HeaderValue::from_static(allow));
                        response
                    }
                    None => error(StatusCode::NOT_FOUND, &format!("no admin endpoint {path}")),
                }
            }
        }
    }
}

/// Serves the admin API on `listener` until `shutdown` turns true. With
/// `[admin.tls]`, each connection gets the certificates of the current
/// generation, so a reload (of the config, or of a certificate file)
/// renews them without a restart.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|down| *down) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(target: "portcullis::admin", "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        let tls = admin.registry.current().admin_tls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            match tls {
                None => connection(stream, peer, admin, shutdown).await,
                Some(tls) => {
                    let acceptor = TlsAcceptor::from(tls.server.clone());
                    match tokio::time::timeout(tls.handshake_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => connection(stream, peer, admin, shutdown).await,
                        _ => {
                            tracing::debug!(target: "portcullis::admin", client = %peer, "TLS handshake failed")
                        }
                    }
                }
            }
        });
    }
}

async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    admin: Arc<Admin>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let admin = admin.clone();
        async move {
            let (method, path) = (request.method().clone(), request.uri().path().to_owned());
            let response = admin.handle(request).await;
            tracing::info!(
                target: "portcullis::admin",
                client = %peer,
                %method,
                path,
                status = response.status().as_u16(),
                "admin call"
            );
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let stopping = tokio::select! {
        _ = connection.as_mut() => false,
        _ = shutdown.wait_for(|down| *down) => true,
    };
    if stopping {
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_asked_for_with_a_positive_q() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(prometheus));
        assert!(!wants_openmetrics("text/plain"));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
        assert!(!wants_openmetrics(""));
    }

    fn request(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri("/reload");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn a_rebound_name_or_another_origin_is_refused() {
        let ok = [
            ("127.0.0.1:9901", true),
            ("localhost:9901", true),
            ("[::1]:9901", true),
            ("admin.example.com:9901", false),
        ];
        for (host, allowed) in ok {
            let get = request(Method::GET, &[("host", host)]);
            assert_eq!(browser_guard(&get, false).is_none(), allowed, "{host}");
            // With a token a page cannot read anything: any name will do.
            assert!(browser_guard(&get, true).is_none(), "{host}");
        }
        let same = request(
            Method::POST,
            &[
                ("host", "127.0.0.1:9901"),
                ("origin", "http://127.0.0.1:9901"),
            ],
        );
        assert!(browser_guard(&same, false).is_none());
        let forged = request(
            Method::POST,
            &[
                ("host", "127.0.0.1:9901"),
                ("origin", "https://evil.example"),
            ],
        );
        assert!(browser_guard(&forged, true).is_some());
        let cross = request(
            Method::POST,
            &[("host", "127.0.0.1:9901"), ("sec-fetch-site", "cross-site")],
        );
        assert!(browser_guard(&cross, true).is_some());
        let curl = request(Method::POST, &[("host", "127.0.0.1:9901")]);
        assert!(browser_guard(&curl, false).is_none());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
