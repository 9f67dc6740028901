//! One request's journey, and the only place that knows the order of the
//! phases:
//!
//! ```text
//!  client ──► route ──► request phase ──────────► upstream ──► response phase ──► client
//!             (404,      plugin 1 on-request        (502/504)     plugin N .. 1
//!              405)      plugin 2 on-request                      on-response
//!                        ...   │ respond (401, 429, ...)             ▲
//!                              └─────────────────────────────────────┘
//! ```
//!
//! * Plugins run in chain order for the request and in reverse order for the
//!   response. A plugin that answers the request itself (`respond`) stops the
//!   request phase; the plugins that already ran still see that reply in
//!   their `on-response`, as they would an upstream response.
//! * A plugin holds an instance for one hook call only: its `on-response`
//!   may run on another instance than its `on-request` (what it carries
//!   between them rides in the request's attributes), and no instance is
//!   held across the upstream call.
//! * A failed plugin (trap, deadline, memory, invalid result) fails this
//!   request only: 500 if it is configured `on_error = "deny"` (the default),
//!   or the request goes on without it with `on_error = "allow"`.
//! * Bodies stream unless a plugin on the route reads them.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::body::{self, Buffered, ProxyBody};
use crate::config::{ListenerConfig, OnError, UpstreamProtocol};
use crate::error::ProxyError;
use crate::plugin::view::{BodyView, RequestView, ResponseView};
use crate::plugin::{
    ClientCertificate, Hooks, PluginError, Reply, RequestAction, RequestChanges, ResponseChanges,
};
use crate::registry::{ChainLink, Generation, Registry, RouteRuntime};
use crate::router::Match;

/// The client connection a request came on.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The index of the listener in the config.
    pub listener: usize,
    /// The client's address.
    pub peer: SocketAddr,
    /// The TLS session, on a TLS listener.
    pub tls: Option<TlsSession>,
}

/// What the TLS handshake settled.
#[derive(Debug, Clone)]
pub struct TlsSession {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// The SNI the client sent.
    pub server_name: Option<Box<str>>,
    /// The certificate the client presented, verified (mutual TLS).
    pub client_certificate: Option<Arc<ClientCertificate>>,
}

/// Serves one request with the registry's current generation, and writes
/// its access-log line.
pub async fn handle(
    registry: &Registry,
    request: Request<Incoming>,
    conn: &Connection,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let generation = registry.current();
    // Copied only when there is an access log to write.
    let access = generation
        .config
        .log
        .access_log
        .then(|| (request.method().clone(), request.uri().path().to_owned()));
    let mut record = Record::default();
    let response = match proxy(&generation, request, conn, &mut record).await {
        Ok(response) => response,
        Err(error) => {
            record.fail(&error);
            error.into_response()
        }
    };
    if let Some((method, path)) = access {
        record.log(&method, &path, conn, response.status(), started);
    }
    response
}

/// What the access log says about a request.
#[derive(Default)]
struct Record {
    /// The client's address, when it is not the peer's (trusted proxies).
    client: Option<IpAddr>,
    route: Option<Arc<str>>,
    decisions: Vec<String>,
    consumer: Option<String>,
    error: Option<String>,
}

impl Record {
    fn decide(&mut self, link: &ChainLink, what: impl std::fmt::Display) {
        self.decisions.push(format!("{}:{what}", link.plugin));
    }

    fn fail(&mut self, error: &ProxyError) {
        self.error = Some(format!("{}: {error}", error.source_kind().as_str()));
    }

    fn log(
        &self,
        method: &Method,
        path: &str,
        conn: &Connection,
        status: StatusCode,
        started: Instant,
    ) {
        let tls = conn.tls.as_ref();
        tracing::info!(
            target: "portcullis::access",
            route = self.route.as_deref().unwrap_or("-"),
            method = %method,
            path,
            status = status.as_u16(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            client = %self.client.unwrap_or(conn.peer.ip()),
            tls = tls.map_or("-", |t| t.version),
            sni = tls.and_then(|t| t.server_name.as_deref()).unwrap_or("-"),
            consumer = self.consumer.as_deref().unwrap_or("-"),
            plugins = %self.decisions.join(" "),
            error = self.error.as_deref().unwrap_or(""),
        );
    }
}

/// Replaces the request's path by its normal form (see [`crate::path`]), or
/// refuses it.
fn normalize_path(request: &mut Request<Incoming>) -> Result<(), ProxyError> {
    let uri = request.uri();
    let path = match crate::path::normalize(uri.path()) {
        Ok(Cow::Borrowed(_)) => return Ok(()),
        Ok(Cow::Owned(path)) => path,
        Err(e) => return Err(ProxyError::BadRequest(e.to_string())),
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        PathAndQuery::try_from(path_and_query)
            .map_err(|e| ProxyError::BadRequest(format!("invalid path: {e}")))?,
    );
    *request.uri_mut() =
        Uri::from_parts(parts).map_err(|e| ProxyError::BadRequest(format!("invalid path: {e}")))?;
    Ok(())
}

async fn proxy(
    generation: &Generation,
    mut request: Request<Incoming>,
    conn: &Connection,
    record: &mut Record,
) -> Result<Response<ProxyBody>, ProxyError> {
    let original_host = host_of(&request)?;
    if let Some(port) = generation
        .config
        .listeners
        .get(conn.listener)
        .and_then(ListenerConfig::https_redirect)
    {
        return Err(https_redirect(&request, original_host.as_deref(), port));
    }
    normalize_path(&mut request)?;
    let (client_ip, via_trusted_proxy) = client_address(
        conn.peer.ip(),
        request.headers(),
        &generation.trusted_proxies,
    );
    if client_ip != conn.peer.ip() {
        record.client = Some(client_ip);
    }
    let route = match generation.router.find(
        original_host.as_deref(),
        request.uri().path(),
        request.method(),
    ) {
        Match::Route(i) => generation
            .routes
            .get(i)
            .ok_or_else(|| ProxyError::Internal(format!("route index {i} out of range")))?,
        Match::MethodNotAllowed(allow) => return Err(ProxyError::MethodNotAllowed { allow }),
        Match::NotFound => return Err(ProxyError::NoRoute),
    };
    record.route = Some(route.name.clone());
    let max_body = generation.config.limits.max_body_bytes;
    // The client's side of a WebSocket upgrade, if it asks for one and the
    // upstream speaks HTTP/1.1 (the only way to carry it on).
    let client_upgrade = if route.upstream.protocol() == UpstreamProtocol::Http1 {
        websocket_upgrade(&mut request)
    } else {
        None
    };
    if client_upgrade.is_some() && !route.websocket {
        return Err(ProxyError::UpgradeRefused);
    }

    let (head, incoming) = request.into_parts();
    let limit = route.max_request_body;
    let declared = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ProxyError::PayloadTooLarge { limit });
    }
    let (incoming, body_watch) = body::client_body(incoming, limit);
    let (mut body, body_view) = if route.request_body {
        read_body(incoming, max_body)
            .await
            .map_err(|e| client_body_error(&body_watch, limit, &*e))?
    } else {
        (incoming, BodyView::NotRequested)
    };
    let mut request = RequestView {
        head,
        client_ip,
        client_certificate: conn.tls.as_ref().and_then(|t| t.client_certificate.clone()),
        route: route.name.clone(),
        identity: None,
        attributes: Vec::new(),
        body: body_view,
    };

    // Request phase. `responders` are the plugins whose `on-response` runs
    // later: those the request phase reached and that did not fail.
    let mut responders: Vec<&ChainLink> = Vec::new();
    let mut reply: Option<Response<ProxyBody>> = None;
    for link in &route.chain {
        let on_response = link.hooks.contains(Hooks::ON_RESPONSE);
        if !link.hooks.contains(Hooks::ON_REQUEST) {
            if on_response {
                responders.push(link);
            }
            continue;
        }
        let (returned, result) = link.pool.on_request(request).await;
        request = returned;
        let step = result.and_then(|action| apply_action(&mut request, &mut body, action));
        match step {
            Ok(answer) => {
                if on_response {
                    responders.push(link);
                }
                match answer {
                    None => record.decide(link, "continue"),
                    Some(response) => {
                        record.decide(
                            link,
                            format_args!("respond({})", response.status().as_u16()),
                        );
                        reply = Some(response);
                        break;
                    }
                }
            }
            Err(e) => match plugin_failed(route, link, e, record) {
                Some(response) => {
                    reply = Some(response);
                    break;
                }
                None => continue,
            },
        }
    }
    record.consumer = request.identity.as_ref().map(|i| i.consumer.clone());

    // Upstream, unless a plugin answered.
    let mut upstream_upgrade: Option<OnUpgrade> = None;
    let response = match reply {
        Some(response) => response,
        None => {
            let head = if responders.is_empty() {
                std::mem::replace(&mut request.head, Request::new(()).into_parts().0)
            } else {
                request.head.clone()
            };
            let mut outgoing = upstream_request(
                head,
                body,
                conn,
                original_host.as_deref(),
                via_trusted_proxy,
            );
            if client_upgrade.is_some() {
                let headers = outgoing.headers_mut();
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            match route.upstream.send(outgoing).await {
                Ok(response) if let Some(why) = ambiguous_framing(response.headers()) => {
                    let error = ProxyError::Upstream {
                        upstream: route.upstream.name().to_owned(),
                        reason: format!("a response framed two ways: {why}"),
                    };
                    tracing::warn!(route = %route.name, "{error}");
                    record.fail(&error);
                    error.into_response()
                }
                Ok(mut response) => {
                    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                    if switching && client_upgrade.is_some() {
                        upstream_upgrade = Some(hyper::upgrade::on(&mut response));
                    }
                    let (mut head, incoming) = response.into_parts();
                    let upgrade_token = head.headers.get(header::UPGRADE).cloned();
                    strip_hop_by_hop(&mut head.headers);
                    // hyper frames the response to the client itself.
                    head.headers.remove(header::TRANSFER_ENCODING);
                    match (switching, upstream_upgrade.is_some(), upgrade_token) {
                        (true, true, Some(token)) => {
                            head.headers
                                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                            head.headers.insert(header::UPGRADE, token);
                            Response::from_parts(head, body::boxed(incoming))
                        }
                        // A 101 nobody asked for (or without `Upgrade`)
                        // cannot be passed on.
                        (true, _, _) => {
                            let error = ProxyError::Upstream {
                                upstream: route.upstream.name().to_owned(),
                                reason: "switched protocols without a WebSocket upgrade".into(),
                            };
                            record.fail(&error);
                            upstream_upgrade = None;
                            error.into_response()
                        }
                        _ => Response::from_parts(head, body::boxed(incoming)),
                    }
                }
                Err(error) => {
                    // A send that failed because the client's body did is
                    // the client's fault, not the upstream's.
                    let error = match body_watch.fault() {
                        Some(_) => client_body_error(&body_watch, limit, &error),
                        None => error,
                    };
                    tracing::warn!(route = %route.name, "{error}");
                    record.fail(&error);
                    error.into_response()
                }
            }
        }
    };
    if let (Some(client), Some(upstream)) = (client_upgrade, upstream_upgrade) {
        // A switch of protocols is not a response plugins can change: what
        // follows is not HTTP.
        let idle = route.upgrade_idle_timeout;
        tokio::spawn(tunnel(
            client,
            upstream,
            idle,
            conn.peer,
            route.name.clone(),
        ));
        return Ok(response);
    }
    if responders.is_empty() {
        return Ok(response);
    }
    response_phase(route, &responders, request, response, max_body, record).await
}

/// The client's upgrade, if `request` is an HTTP/1.1 WebSocket handshake
/// (RFC 6455 §4.1: GET, `Connection: upgrade`, `Upgrade: websocket`).
fn websocket_upgrade(request: &mut Request<Incoming>) -> Option<OnUpgrade> {
    let tokens = |name: header::HeaderName| {
        request
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>()
    };
    let asks = request.version() == Version::HTTP_11
        && request.method() == Method::GET
        && tokens(header::CONNECTION)
            .iter()
            .any(|t| t.eq_ignore_ascii_case("upgrade"))
        && tokens(header::UPGRADE)
            .iter()
            .any(|t| t.eq_ignore_ascii_case("websocket"));
    if asks {
        request.extensions_mut().remove::<OnUpgrade>()
    } else {
        None
    }
}

/// Carries an upgraded connection's bytes both ways until either side
/// closes, or until no byte has moved either way for `idle`.
async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    peer: SocketAddr,
    route: Arc<str>,
) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(client), Ok(upstream)) => (client, upstream),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(client = %peer, %route, "upgrade failed: {e}");
            return;
        }
    };
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Active::new(TokioIo::new(client), &last, started);
    let mut upstream = Active::new(TokioIo::new(upstream), &last, started);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        let quiet_since = started + Duration::from_millis(last.load(Ordering::Relaxed));
        tokio::select! {
            done = &mut copy => {
                match done {
                    Ok((up, down)) => tracing::debug!(
                        client = %peer, %route, bytes_up = up, bytes_down = down,
                        "upgraded connection closed"
                    ),
                    Err(e) => tracing::debug!(client = %peer, %route, "upgraded connection failed: {e}"),
                }
                return;
            }
            _ = tokio::time::sleep_until((quiet_since + idle).into()) => {
                let moved = started + Duration::from_millis(last.load(Ordering::Relaxed));
                if moved == quiet_since {
                    tracing::debug!(client = %peer, %route, "upgraded connection idle for {idle:?}: closed");
                    return;
                }
            }
        }
    }
}

/// A stream that notes when bytes last moved through it (ms since
/// `started`), for the idle timeout of a tunnel.
struct Active<S> {
    inner: S,
    last: Arc<AtomicU64>,
    started: Instant,
}

impl<S> Active<S> {
    fn new(inner: S, last: &Arc<AtomicU64>, started: Instant) -> Self {
        Self {
            inner,
            last: last.clone(),
            started,
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Active<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Active<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Runs `on-response` of the plugins the request phase reached, last to
/// first.
async fn response_phase(
    route: &RouteRuntime,
    responders: &[&ChainLink],
    mut request: RequestView,
    response: Response<ProxyBody>,
    max_body: usize,
    record: &mut Record,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (head, body) = response.into_parts();
    let (mut body, body_view) = if route.response_body {
        read_body(body, max_body)
            .await
            .map_err(|e| ProxyError::Upstream {
                upstream: route.upstream.name().to_owned(),
                reason: format!("cannot read the response body: {e}"),
            })?
    } else {
        (body, BodyView::NotRequested)
    };
    let mut response = ResponseView {
        head,
        body: body_view,
    };
    for link in responders.iter().rev() {
        let (req, resp, result) = link.pool.on_response(request, response).await;
        request = req;
        response = resp;
        let applied = result.and_then(|changes| apply_response(&mut response, &mut body, changes));
        if let Err(e) = applied
            && let Some(error_response) = plugin_failed(route, link, e, record)
        {
            let (head, error_body) = error_response.into_parts();
            response = ResponseView {
                head,
                body: BodyView::NotRequested,
            };
            body = error_body;
        }
    }
    Ok(Response::from_parts(response.head, body))
}

/// Why an upstream response head could be read two ways (RFC 9112 §6.3),
/// if it could: such a response is not passed on.
fn ambiguous_framing(headers: &HeaderMap) -> Option<&'static str> {
    let lengths: Vec<&HeaderValue> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    if lengths.is_empty() {
        return None;
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Some("both Content-Length and Transfer-Encoding");
    }
    let valid = |v: &&HeaderValue| !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit);
    if !lengths.iter().all(valid) {
        return Some("an invalid Content-Length");
    }
    if lengths.windows(2).any(|pair| pair[0] != pair[1]) {
        return Some("differing Content-Length values");
    }
    None
}

/// The error of a request whose client body failed, as its watch tells.
fn client_body_error(
    watch: &body::BodyWatch,
    limit: u64,
    error: &dyn std::fmt::Display,
) -> ProxyError {
    match watch.fault() {
        Some(body::ClientBodyFault::TooLarge) => ProxyError::PayloadTooLarge { limit },
        _ => ProxyError::ClientBody(error.to_string()),
    }
}

/// Reads a body for the plugins, up to `max` bytes.
async fn read_body(body: ProxyBody, max: usize) -> Result<(ProxyBody, BodyView), body::BoxError> {
    Ok(match body::buffer(body, max).await? {
        Buffered::Complete(bytes) => (body::full(bytes.clone()), BodyView::Complete(bytes)),
        Buffered::TooLarge(body) => (body, BodyView::TooLarge),
    })
}

/// Logs a plugin failure; returns the response that ends the request when
/// the plugin fails closed.
fn plugin_failed(
    route: &RouteRuntime,
    link: &ChainLink,
    error: PluginError,
    record: &mut Record,
) -> Option<Response<ProxyBody>> {
    tracing::warn!(
        plugin = %link.plugin,
        route = %route.name,
        on_error = ?link.on_error,
        "plugin failed: {error}"
    );
    match link.on_error {
        OnError::Allow => {
            record.decide(link, "failed(allowed)");
            None
        }
        OnError::Deny => {
            record.decide(link, "failed");
            let error = if error.is_overload() {
                ProxyError::Overloaded {
                    plugin: link.plugin.to_string(),
                }
            } else {
                ProxyError::Plugin {
                    plugin: link.plugin.to_string(),
                    reason: error.to_string(),
                }
            };
            record.fail(&error);
            Some(error.into_response())
        }
    }
}

fn bad(what: impl Into<String>) -> PluginError {
    PluginError::BadResult(what.into())
}

fn header_name(name: &str) -> Result<HeaderName, PluginError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| bad(format!("invalid header name `{name}`")))
}

fn header_value(name: &str, value: &str) -> Result<HeaderValue, PluginError> {
    HeaderValue::from_str(value).map_err(|_| bad(format!("invalid value for header `{name}`")))
}

/// Header changes, checked: a plugin's changes are validated whole before
/// any is applied, so an invalid result leaves the message untouched (which
/// matters with `on_error = "allow"`).
struct HeaderEdits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdits {
    fn parse(
        remove: &[String],
        set: &[(String, String)],
        add: &[(String, String)],
    ) -> Result<Self, PluginError> {
        let pairs = |list: &[(String, String)]| {
            list.iter()
                .map(|(n, v)| Ok((header_name(n)?, header_value(n, v)?)))
                .collect::<Result<Vec<_>, PluginError>>()
        };
        Ok(Self {
            remove: remove
                .iter()
                .map(|n| header_name(n))
                .collect::<Result<_, _>>()?,
            set: pairs(set)?,
            add: pairs(add)?,
        })
    }

    /// Applies the changes in the contract's order: remove, set, add.
    fn apply(self, headers: &mut HeaderMap) {
        for name in self.remove {
            headers.remove(name);
        }
        for (name, value) in self.set {
            headers.insert(name, value);
        }
        for (name, value) in self.add {
            headers.append(name, value);
        }
    }
}

/// Replaces a body (whether the plugins read it or not; an unread one is
/// dropped), keeping the framing headers right.
fn replace_body(headers: &mut HeaderMap, view: &mut BodyView, body: &mut ProxyBody, new: Vec<u8>) {
    let new = Bytes::from(new);
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(new.len()));
    *body = body::full(new.clone());
    // Plugins that read bodies see the new one; on routes where none does,
    // they keep seeing `not-requested`.
    if !matches!(view, BodyView::NotRequested) {
        *view = BodyView::Complete(new);
    }
}

/// Applies a plugin's decision; `Some` is the reply that ends the request.
fn apply_action(
    request: &mut RequestView,
    body: &mut ProxyBody,
    action: RequestAction,
) -> Result<Option<Response<ProxyBody>>, PluginError> {
    match action {
        RequestAction::Continue(changes) => apply_request(request, body, changes).map(|()| None),
        RequestAction::Respond(reply) => reply_response(reply).map(Some),
    }
}

fn apply_request(
    request: &mut RequestView,
    body: &mut ProxyBody,
    changes: RequestChanges,
) -> Result<(), PluginError> {
    let RequestChanges {
        remove_headers,
        set_headers,
        add_headers,
        method,
        path,
        query,
        attributes,
        identity,
        body: new_body,
    } = changes;
    let head = &mut request.head;
    // Everything fallible first; nothing changes unless all of it is valid.
    let edits = HeaderEdits::parse(&remove_headers, &set_headers, &add_headers)?;
    let method = method
        .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| bad(format!("invalid method `{m}`"))))
        .transpose()?;
    let uri = if path.is_some() || query.is_some() {
        let path = path.unwrap_or_else(|| head.uri.path().to_owned());
        if !path.starts_with('/') {
            return Err(bad(format!("path `{path}` does not start with `/`")));
        }
        let query = match query {
            Some(q) if q.is_empty() => None,
            Some(q) => Some(q),
            None => head.uri.query().map(str::to_owned),
        };
        let text = match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let pq = PathAndQuery::try_from(text.as_str())
            .map_err(|_| bad(format!("invalid path or query `{text}`")))?;
        Some(Uri::from(pq))
    } else {
        None
    };
    edits.apply(&mut head.headers);
    if let Some(method) = method {
        head.method = method;
    }
    if let Some(uri) = uri {
        head.uri = uri;
    }
    for (key, value) in attributes {
        request.set_attribute(key, value);
    }
    if identity.is_some() {
        request.identity = identity;
    }
    if let Some(new) = new_body {
        replace_body(&mut request.head.headers, &mut request.body, body, new);
    }
    Ok(())
}

fn reply_response(reply: Reply) -> Result<Response<ProxyBody>, PluginError> {
    let status = StatusCode::from_u16(reply.status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .ok_or_else(|| {
            bad(format!(
                "reply status {} is not between 200 and 599",
                reply.status
            ))
        })?;
    let mut response = Response::new(body::full(reply.body));
    *response.status_mut() = status;
    HeaderEdits::parse(&[], &[], &reply.headers)?.apply(response.headers_mut());
    Ok(response)
}

fn apply_response(
    response: &mut ResponseView,
    body: &mut ProxyBody,
    changes: ResponseChanges,
) -> Result<(), PluginError> {
    let status = changes
        .status
        .map(|status| {
            StatusCode::from_u16(status)
                .ok()
                .filter(|s| (200..=599).contains(&s.as_u16()))
                .ok_or_else(|| bad(format!("status {status} is not between 200 and 599")))
        })
        .transpose()?;
    let edits = HeaderEdits::parse(
        &changes.remove_headers,
        &changes.set_headers,
        &changes.add_headers,
    )?;
    if let Some(status) = status {
        response.head.status = status;
    }
    edits.apply(&mut response.head.headers);
    if let Some(new) = changes.body {
        replace_body(&mut response.head.headers, &mut response.body, body, new);
    }
    Ok(())
}

/// The host the request is for: the authority of its target (HTTP/2's
/// `:authority`, or an absolute-form HTTP/1.1 target, which RFC 9112
/// §3.2.2 puts before `Host`), else its `Host` header. Refused with 400,
/// as RFC 9112 §3.2 says a server MUST: an HTTP/1.1 request without a
/// host, more than one `Host`, a `Host` that is not a `host[:port]`. And a
/// `Host` naming another authority than the target (RFC 9113 §8.3.1): the
/// gateway would route on one and the upstream see the other.
fn host_of<B>(request: &Request<B>) -> Result<Option<String>, ProxyError> {
    let bad = |why: &str| Err(ProxyError::BadRequest(why.to_owned()));
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return bad("more than one Host header");
    }
    let host = match host {
        None => None,
        Some(value) => match value.to_str().ok().filter(|h| is_authority(h)) {
            Some(host) => Some(host),
            None => return bad("the Host header is not a host[:port]"),
        },
    };
    match (request.uri().authority(), host) {
        (Some(authority), _) if !is_authority(authority.as_str()) => {
            bad("the request target's authority is not a host[:port]")
        }
        (Some(authority), Some(host)) if !host.eq_ignore_ascii_case(authority.as_str()) => {
            bad("the Host header and the request target name different hosts")
        }
        (Some(authority), _) => Ok(Some(authority.as_str().to_owned())),
        (None, Some(host)) => Ok(Some(host.to_owned())),
        (None, None) if request.version() == Version::HTTP_11 => bad("a Host header is required"),
        (None, None) => Ok(None),
    }
}

/// Whether `text` is a `host[:port]` (RFC 9110 §7.2), without userinfo.
fn is_authority(text: &str) -> bool {
    !text.is_empty()
        && !text.contains('@')
        && text
            .parse::<http::uri::Authority>()
            .is_ok_and(|a| a.as_str() == text)
}

/// Headers that concern one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
/// `Transfer-Encoding` is left to hyper, which frames each side itself.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The request as it goes upstream: origin-form URI, HTTP/1.1 with a
/// `Host` (the client's, as plugins left it, or HTTP/2's `:authority`
/// when there is none, RFC 9113 §8.3.1) and one `Cookie` line (§8.2.3), hop-by-hop headers
/// removed, `X-Forwarded-*` set.
fn upstream_request(
    mut head: http::request::Parts,
    body: ProxyBody,
    conn: &Connection,
    original_host: Option<&str>,
    via_trusted_proxy: bool,
) -> Request<ProxyBody> {
    // `TE: trailers` says the client takes trailers; gRPC servers require
    // it. The only TE value that crosses a hop (as HTTP/2 allows).
    let trailers = head
        .headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    strip_hop_by_hop(&mut head.headers);
    head.headers.remove(header::TRANSFER_ENCODING);
    if trailers {
        head.headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if !head.headers.contains_key(header::HOST)
        && let Some(value) = original_host.and_then(|h| HeaderValue::from_str(h).ok())
    {
        head.headers.insert(header::HOST, value);
    }
    if head.version == Version::HTTP_2 {
        join_cookies(&mut head.headers);
    }
    let client = conn.peer.ip().to_string();
    let forwarded_for = match head
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(earlier) => format!("{earlier}, {client}"),
        None => client,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        head.headers.insert("x-forwarded-for", value);
    }
    // A trusted proxy's `X-Forwarded-Proto` stands (it may have terminated
    // TLS); anyone else's is replaced by what the client really used.
    let forwarded_proto = head
        .headers
        .get("x-forwarded-proto")
        .filter(|v| *v == "https" || *v == "http");
    if !(via_trusted_proxy && forwarded_proto.is_some()) {
        let proto = if conn.tls.is_some() { "https" } else { "http" };
        head.headers
            .insert("x-forwarded-proto", HeaderValue::from_static(proto));
    }
    let kept_host = via_trusted_proxy && head.headers.contains_key("x-forwarded-host");
    if !kept_host && let Some(value) = original_host.and_then(|h| HeaderValue::from_str(h).ok()) {
        head.headers.insert("x-forwarded-host", value);
    }
    if !via_trusted_proxy {
        // What an untrusted client says about itself in these is a lie
        // an upstream might believe.
        head.headers.remove(header::FORWARDED);
        head.headers.remove("x-real-ip");
    }
    if let Some(pq) = head.uri.path_and_query().cloned() {
        head.uri = Uri::from(pq);
    }
    head.version = Version::HTTP_11;
    Request::from_parts(head, body)
}

/// The redirect of a request to the same host, path and query over https
/// on `port`.
fn https_redirect<B>(request: &Request<B>, host: Option<&str>, port: u16) -> ProxyError {
    let authority = host.and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(authority) = authority.filter(|a| !a.as_str().contains('@')) else {
        return ProxyError::BadRequest("a Host header is required".into());
    };
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", PathAndQuery::as_str);
    let location = if port == 443 {
        format!("https://{}{target}", authority.host())
    } else {
        format!("https://{}:{port}{target}", authority.host())
    };
    ProxyError::HttpsRequired { location }
}

/// The client's address and whether the request came through a trusted
/// proxy. From a trusted proxy, the client is the rightmost address of
/// `X-Forwarded-For` that is not itself a trusted proxy (an entry that is
/// not an address ends the walk at the last good one); from anyone else,
/// the peer, whatever the headers say.
fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> (IpAddr, bool) {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return (peer, false);
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|v| v.to_str().unwrap_or("").rsplit(','));
    for hop in hops {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    (client, true)
}

/// HTTP/2 may split `Cookie` into one field per cookie; HTTP/1.1 wants one
/// line, joined with `; ` (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (cookies.next(), cookies.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for more in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(more.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_those_named_by_connection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_headers_are_set_and_appended() {
        let mut req = Request::builder()
            .uri("http://api.example.com/a?b=1")
            .header("x-forwarded-for", "10.0.0.1")
            .header("forwarded", "for=1.2.3.4")
            .header("x-real-ip", "1.2.3.4")
            .body(())
            .expect("request");
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("api.example.com"));
        let (head, ()) = req.into_parts();
        let conn = Connection {
            listener: 0,
            peer: "192.0.2.7:5000".parse().expect("addr"),
            tls: None,
        };
        let out = upstream_request(head, body::empty(), &conn, Some("api.example.com"), false);
        assert_eq!(out.uri(), "/a?b=1");
        assert!(!out.headers().contains_key(header::FORWARDED));
        assert!(!out.headers().contains_key("x-real-ip"));
        assert_eq!(out.headers()["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(out.headers()["x-forwarded-proto"], "http");
        assert_eq!(out.headers()["x-forwarded-host"], "api.example.com");
    }

    #[test]
    fn an_http2_request_goes_up_as_http1_with_host_and_one_cookie_line() {
        let (head, ()) = Request::builder()
            .version(Version::HTTP_2)
            .uri("https://api.example.com/a")
            .header(header::COOKIE, "a=1")
            .header(header::COOKIE, "b=2")
            .body(())
            .expect("request")
            .into_parts();
        let conn = Connection {
            listener: 0,
            peer: "192.0.2.7:5000".parse().expect("addr"),
            tls: Some(TlsSession {
                version: "TLSv1.3",
                server_name: Some("api.example.com".into()),
                client_certificate: None,
            }),
        };
        let out = upstream_request(head, body::empty(), &conn, Some("api.example.com"), false);
        assert_eq!(out.version(), Version::HTTP_11);
        assert_eq!(out.uri(), "/a");
        assert_eq!(out.headers()[header::HOST], "api.example.com");
        assert_eq!(out.headers()[header::COOKIE], "a=1; b=2");
        assert_eq!(out.headers()["x-forwarded-proto"], "https");
    }

    #[test]
    fn the_client_is_found_behind_trusted_proxies_only() {
        let trusted: Vec<ipnet::IpNet> = ["10.0.0.0/8", "192.0.2.1"]
            .iter()
            .filter_map(|p| crate::config::parse_network(p))
            .collect();
        let headers = |xff: &[&str]| {
            let mut h = HeaderMap::new();
            for v in xff {
                h.append("x-forwarded-for", HeaderValue::from_str(v).expect("value"));
            }
            h
        };
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let xff = headers(&["1.1.1.1, 203.0.113.9", "10.1.1.1"]);
        // From an untrusted peer the headers are not believed.
        assert_eq!(
            client_address(ip("198.51.100.5"), &xff, &trusted),
            (ip("198.51.100.5"), false)
        );
        assert_eq!(
            client_address(ip("10.0.0.2"), &xff, &[]),
            (ip("10.0.0.2"), false)
        );
        // From a trusted one: the rightmost untrusted hop, not the leftmost
        // (which the client wrote).
        assert_eq!(
            client_address(ip("10.0.0.2"), &xff, &trusted),
            (ip("203.0.113.9"), true)
        );
        assert_eq!(
            client_address(ip("192.0.2.1"), &headers(&[]), &trusted),
            (ip("192.0.2.1"), true)
        );
        // Garbage ends the walk at the last address known.
        let junk = headers(&["1.1.1.1, junk, 10.2.2.2"]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &junk, &trusted),
            (ip("10.2.2.2"), true)
        );
    }

    #[test]
    fn the_https_redirect_keeps_host_path_and_query_and_drops_the_port() {
        let request = Request::get("/a/b?c=1").body(()).expect("request");
        let location = |host: Option<&str>, port| match https_redirect(&request, host, port) {
            ProxyError::HttpsRequired { location } => Ok(location),
            other => Err(other.to_string()),
        };
        assert_eq!(
            location(Some("api.test:8080"), 443),
            Ok("https://api.test/a/b?c=1".into())
        );
        assert_eq!(
            location(Some("[::1]:8080"), 8443),
            Ok("https://[::1]:8443/a/b?c=1".into())
        );
        assert!(location(None, 443).is_err());
        assert!(location(Some("user@evil.test"), 443).is_err());
        assert!(location(Some("a.test/x"), 443).is_err());
    }

    #[test]
    fn the_target_authority_wins_and_a_different_host_is_refused() {
        let request = |uri: &str, host: Option<&str>| {
            let mut b = Request::builder().uri(uri);
            if let Some(host) = host {
                b = b.header(header::HOST, host);
            }
            b.body(()).expect("request")
        };
        let host = |r: &Request<()>| host_of(r).map_err(|e| e.to_string());
        assert_eq!(
            host(&request("/a", Some("a.test"))),
            Ok(Some("a.test".into()))
        );
        assert!(host(&request("/a", None)).is_err(), "HTTP/1.1 needs a host");
        assert_eq!(
            host(&request("http://b.test/a", None)),
            Ok(Some("b.test".into()))
        );
        assert_eq!(
            host(&request("http://b.test/a", Some("B.test"))),
            Ok(Some("b.test".into()))
        );
        assert!(host(&request("http://b.test/a", Some("a.test"))).is_err());
        assert!(host(&request("/a", Some("user@a.test"))).is_err());
        assert!(host(&request("/a", Some("a.test/x"))).is_err());
        assert!(host(&request("/a", Some(""))).is_err());
        assert_eq!(
            host(&request("/a", Some("[::1]:8080"))),
            Ok(Some("[::1]:8080".into()))
        );
        let two = Request::builder()
            .uri("/")
            .header(header::HOST, "a.test")
            .header(header::HOST, "a.test")
            .body(())
            .expect("request");
        assert!(host(&two).is_err());
        let http10 = Request::builder()
            .version(Version::HTTP_10)
            .uri("/")
            .body(())
            .expect("request");
        assert_eq!(host(&http10), Ok(None));
    }

    fn view(uri: &str) -> RequestView {
        let (head, ()) = Request::builder()
            .uri(uri)
            .body(())
            .expect("request")
            .into_parts();
        RequestView {
            head,
            client_ip: "127.0.0.1".parse().expect("ip"),
            client_certificate: None,
            route: "r".into(),
            identity: None,
            attributes: Vec::new(),
            body: BodyView::NotRequested,
        }
    }

    fn changes() -> RequestChanges {
        RequestChanges {
            remove_headers: vec![],
            set_headers: vec![],
            add_headers: vec![],
            method: None,
            path: None,
            query: None,
            attributes: vec![],
            identity: None,
            body: None,
        }
    }

    #[test]
    fn path_and_query_rewrites() {
        let mut v = view("/a?x=1");
        let mut b = body::empty();
        apply_request(
            &mut v,
            &mut b,
            RequestChanges {
                query: Some(String::new()),
                ..changes()
            },
        )
        .expect("ok");
        assert_eq!(v.head.uri, "/a");
        apply_request(
            &mut v,
            &mut b,
            RequestChanges {
                path: Some("/b".into()),
                query: Some("y=2".into()),
                ..changes()
            },
        )
        .expect("ok");
        assert_eq!(v.head.uri, "/b?y=2");
        let err = apply_request(
            &mut v,
            &mut b,
            RequestChanges {
                path: Some("nope".into()),
                ..changes()
            },
        );
        assert!(matches!(err, Err(PluginError::BadResult(_))));
    }

    #[test]
    fn header_changes_apply_remove_then_set_then_add() {
        let mut v = view("/");
        v.head
            .headers
            .insert("x-a", HeaderValue::from_static("old"));
        let mut b = body::empty();
        let c = RequestChanges {
            remove_headers: vec!["x-a".into()],
            set_headers: vec![("x-b".into(), "1".into())],
            add_headers: vec![("x-b".into(), "2".into()), ("x-a".into(), "new".into())],
            attributes: vec![("k".into(), "v".into())],
            ..changes()
        };
        apply_request(&mut v, &mut b, c).expect("ok");
        assert_eq!(v.head.headers.get_all("x-b").iter().count(), 2);
        assert_eq!(v.head.headers["x-a"], "new");
        assert_eq!(v.attribute("k"), Some("v"));
        let bad_header = RequestChanges {
            remove_headers: vec!["x-a".into()],
            set_headers: vec![("bad header".into(), "1".into())],
            path: Some("/moved".into()),
            ..changes()
        };
        assert!(apply_request(&mut v, &mut b, bad_header).is_err());
        assert_eq!(
            v.head.headers["x-a"], "new",
            "an invalid result changes nothing"
        );
        assert_eq!(v.head.uri, "/");
    }

    #[tokio::test]
    async fn a_replaced_body_gets_a_matching_content_length() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let mut view = BodyView::NotRequested;
        let mut body = body::empty();
        replace_body(
            &mut headers,
            &mut view,
            &mut body,
            b"{\"error\":\"masked\"}".to_vec(),
        );
        assert_eq!(headers[header::CONTENT_LENGTH], "18");
        assert!(!headers.contains_key(header::TRANSFER_ENCODING));
        assert!(
            matches!(view, BodyView::NotRequested),
            "routes that read no body keep not-requested"
        );
        let bytes = http_body_util::BodyExt::collect(body)
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(bytes, "{\"error\":\"masked\"}");

        let mut view = BodyView::Complete(Bytes::from_static(b"old"));
        let mut body = body::empty();
        replace_body(&mut headers, &mut view, &mut body, b"new".to_vec());
        assert!(matches!(view, BodyView::Complete(b) if b == "new"));
    }

    #[test]
    fn replies_need_a_final_status() {
        let ok = Reply {
            status: 401,
            headers: vec![("www-authenticate".into(), "ApiKey".into())],
            body: b"no".to_vec(),
        };
        assert_eq!(
            reply_response(ok).expect("valid").status(),
            StatusCode::UNAUTHORIZED
        );
        let informational = Reply {
            status: 101,
            headers: vec![],
            body: vec![],
        };
        assert!(reply_response(informational).is_err());
    }
}
