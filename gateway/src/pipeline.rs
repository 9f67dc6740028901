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
//!
//! What crosses the gateway (hosts, forwarded headers, hop-by-hop headers,
//! framing checks, upgrades) is [`crate::forward`]'s; applying what a
//! plugin returned is [`crate::plugin::apply`]'s; the access-log line is
//! [`crate::access_log`]'s.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use crate::access_log::{self, Outcome, Pending, Record};
use crate::body::{self, Buffered, ProxyBody};
use crate::config::{ListenerConfig, OnError, UpstreamProtocol};
use crate::error::ProxyError;
pub use crate::forward::{Connection, TlsSession};
use crate::forward::{
    ambiguous_framing, client_address, host_of, https_redirect, strip_hop_by_hop, tunnel,
    upstream_request, websocket_upgrade,
};
use crate::metrics;
use crate::plugin::apply::{apply_action, apply_response};
use crate::plugin::view::{BodyView, RequestView, ResponseView};
use crate::plugin::{Hooks, PluginError, PluginPool};
use crate::registry::{ChainLink, Generation, Registry, RouteRuntime};
use crate::rollout::{Arm, Routed};
use crate::router::Match;
use crate::trace::{self, TraceContext};
use crate::upstream::{Affinity, UpstreamServer};

/// Serves one request with the registry's current generation, and writes
/// its access-log line.
pub async fn handle(
    registry: &Registry,
    mut request: Request<Incoming>,
    conn: &Arc<Connection>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let generation = registry.current();
    let method = metrics::method_label(request.method());
    let trusted = generation
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&conn.peer.ip()));
    let request_id = trace::request_id(request.headers_mut(), trusted);
    let tracing = &generation.config.tracing;
    let context = TraceContext::propagate(
        request.headers_mut(),
        tracing.start_traces,
        tracing.sample_ratio(),
    );
    let log = generation.config.log.access_log;
    let span = registry
        .spans()
        .filter(|_| context.is_some_and(|c| c.sampled()))
        .cloned();
    // Copied only when there is an access-log line or a span to write.
    let head = (log || span.is_some())
        .then(|| (request.method().clone(), request.uri().path().to_owned()));
    let mut record = Record::new(head.is_some());
    record.trace(&request_id, context);
    let mut response = match proxy(&generation, request, conn, &mut record).await {
        Ok(response) => response,
        Err(error) => {
            record.fail(&error);
            error.into_response()
        }
    };
    response.headers_mut().insert(trace::REQUEST_ID, request_id);
    let metrics = registry.metrics();
    let route = record
        .served
        .and_then(|i| generation.routes.get(i))
        .map_or(metrics.no_route(), |r| &r.metrics);
    metrics.request(
        route,
        method,
        response.status().as_u16(),
        started.elapsed(),
        record.upstream_time,
        record.consumer_name(),
    );
    match head {
        Some((method, path)) => access_log::logged(
            response,
            Pending {
                record,
                method,
                path,
                conn: conn.clone(),
                started,
                log,
                span,
            },
        ),
        None => response,
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
    conn: &Arc<Connection>,
    record: &mut Record,
) -> Result<Response<ProxyBody>, ProxyError> {
    let max_uri = generation.config.limits.max_uri_bytes;
    if request
        .uri()
        .path_and_query()
        .is_some_and(|pq| pq.as_str().len() > max_uri)
    {
        return Err(ProxyError::UriTooLong { limit: max_uri });
    }
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
        record.client(client_ip);
    }
    let (index, route) = match generation.router.find(
        original_host.as_deref(),
        request.uri().path(),
        request.method(),
    ) {
        Match::Route(i) => generation
            .routes
            .get(i)
            .map(|route| (i, route))
            .ok_or_else(|| ProxyError::Internal(format!("route index {i} out of range")))?,
        Match::MethodNotAllowed(allow) => return Err(ProxyError::MethodNotAllowed { allow }),
        Match::NotFound => return Err(ProxyError::NoRoute),
    };
    record.route(index, &route.name, route.metrics.consumer_label());
    let journey = serve_route(
        generation,
        route,
        request,
        conn,
        record,
        original_host,
        client_ip,
        via_trusted_proxy,
    );
    match route.timeout {
        None => journey.await,
        Some(deadline) => tokio::time::timeout(deadline, journey)
            .await
            .unwrap_or_else(|_| {
                Err(ProxyError::RouteTimeout {
                    timeout_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                })
            }),
    }
}

/// The request phase, the upstream and the response phase of a request
/// whose route is known.
#[allow(clippy::too_many_arguments)]
async fn serve_route(
    generation: &Generation,
    route: &RouteRuntime,
    mut request: Request<Incoming>,
    conn: &Arc<Connection>,
    record: &mut Record,
    original_host: Option<String>,
    client_ip: std::net::IpAddr,
    via_trusted_proxy: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
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
    let idle = Duration::from_millis(generation.config.limits.request_body_idle_timeout_ms);
    let (incoming, body_watch) = body::client_body(incoming, limit, idle);
    record.body_in(&body_watch);
    let (mut body, body_view) = if route.request_body {
        read_body(incoming, max_body)
            .await
            .map_err(|e| client_body_error(&body_watch, limit, &*e))?
    } else {
        (incoming, BodyView::NotRequested)
    };
    // Boxed: it is lent to every plugin call and handed back.
    let request = Box::new(RequestView {
        head,
        client_ip,
        client_certificate: conn.tls.as_ref().and_then(|t| t.client_certificate.clone()),
        route: route.name.clone(),
        identity: None,
        attributes: Vec::new(),
        body: body_view,
    });

    let RequestPhase {
        mut request,
        responders,
        canaries,
        reply,
    } = request_phase(route, request, &mut body, record).await;
    record.consumer(request.identity.as_ref().map(|i| i.consumer.as_str()));
    let upstream_called = reply.is_none();

    // Upstream, unless a plugin answered.
    let mut upstream_upgrade: Option<OnUpgrade> = None;
    let response = match reply {
        Some(response) => response,
        None => {
            let head = upstream_head(&mut request, &responders);
            let mut outgoing = upstream_request(
                head,
                body,
                conn,
                original_host.as_deref(),
                via_trusted_proxy,
                generation.config.forwarded_headers,
            );
            if client_upgrade.is_some() {
                let headers = outgoing.headers_mut();
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            let affinity = Affinity {
                client_ip: request.client_ip,
                consumer: request.identity.as_ref().map(|i| i.consumer.as_str()),
            };
            let sent = Instant::now();
            let answer = route
                .upstream
                .send(outgoing, &affinity, &route.upstream_overrides)
                .await;
            record.upstream_time = Some(sent.elapsed());
            match answer {
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
                    record.upstream(response.extensions().get::<UpstreamServer>().map(|s| &s.0));
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
                        _ => {
                            let idle = route.upstream.body_idle_timeout();
                            let body = body::idle_bounded(body::boxed(incoming), idle);
                            Response::from_parts(head, body)
                        }
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
    if upstream_called {
        for routed in &canaries {
            routed.upstream_answered(response.status().as_u16());
        }
    }
    if let (Some(client), Some(upstream)) = (client_upgrade, upstream_upgrade) {
        // A switch of protocols is not a response plugins can change: what
        // follows is not HTTP.
        let idle = route.upgrade_idle_timeout;
        tokio::spawn(tunnel(
            client,
            upstream,
            idle,
            conn.clone(),
            route.name.clone(),
        ));
        return Ok(response);
    }
    if responders.is_empty() {
        return Ok(response);
    }
    response_phase(route, &responders, request, response, max_body, record).await
}

/// A plugin whose `on-response` runs later: its link, and the version
/// that served this request there (the live plugin, or a canary's
/// candidate).
struct Responder<'r> {
    link: &'r ChainLink,
    pool: &'r PluginPool,
    /// Whether `pool` is the canary's candidate.
    candidate: bool,
}

/// What the request phase leaves.
struct RequestPhase<'r> {
    /// The request as the plugins left it.
    request: Box<RequestView>,
    /// The plugins whose `on-response` runs later (those the phase
    /// reached and that did not fail).
    responders: Vec<Responder<'r>>,
    /// The canaries the request went through, each with the version that
    /// served it, until the response.
    canaries: Vec<Routed<'r>>,
    /// The reply that ends the request, if a plugin gave one.
    reply: Option<Response<ProxyBody>>,
}

/// The request phase: `on-request` of each plugin of the chain, in order,
/// until one answers. At a link with a canary, the canary picks the
/// version that serves this request.
async fn request_phase<'r>(
    route: &'r RouteRuntime,
    mut request: Box<RequestView>,
    body: &mut ProxyBody,
    record: &mut Record,
) -> RequestPhase<'r> {
    let mut responders: Vec<Responder<'r>> = Vec::new();
    let mut canaries: Vec<Routed<'r>> = Vec::new();
    for link in &route.chain {
        let canary = link.canary.as_deref();
        let routed = canary.map(|c| c.route(&request));
        let candidate = routed.as_ref().is_some_and(|r| r.arm() == Arm::Candidate);
        let (pool, hooks): (&PluginPool, Hooks) = match canary {
            Some(c) if candidate => (c.pool(), c.hooks()),
            _ => (&link.pool, link.hooks),
        };
        let on_response = hooks.contains(Hooks::ON_RESPONSE);
        let responder = Responder {
            link,
            pool,
            candidate,
        };
        if !hooks.contains(Hooks::ON_REQUEST) {
            if on_response {
                responders.push(responder);
            }
            canaries.extend(routed);
            continue;
        }
        // A shadow candidate gets the request as the live plugin sees it.
        let copy = link.shadow.as_ref().and_then(|s| s.copy(&request));
        let called = Instant::now();
        let (returned, result) = pool.on_request(request).await;
        link.metrics.on_request.observe(called.elapsed());
        request = returned;
        let step = result.and_then(|action| apply_action(&mut request, body, action));
        let (outcome, reply) = match step {
            Ok(answer) => {
                if on_response {
                    responders.push(responder);
                }
                match answer {
                    None => (Outcome::Continue, None),
                    Some(response) => {
                        (Outcome::Respond(response.status().as_u16()), Some(response))
                    }
                }
            }
            Err(e) => plugin_failed(route, link, e, record),
        };
        decide(record, link, outcome);
        if let (Some(shadow), Some(copy)) = (&link.shadow, copy) {
            shadow.offer(copy, outcome);
        }
        if let (Some(canary), Some(routed)) = (canary, routed) {
            canary.decided(&routed, outcome);
            canaries.push(routed);
        }
        if reply.is_some() {
            return RequestPhase {
                request,
                responders,
                canaries,
                reply,
            };
        }
    }
    RequestPhase {
        request,
        responders,
        canaries,
        reply: None,
    }
}

/// The request head that goes upstream: the plugins' request itself when
/// no `on-response` will read it, else a copy.
fn upstream_head(request: &mut RequestView, responders: &[Responder<'_>]) -> http::request::Parts {
    if responders.is_empty() {
        std::mem::replace(&mut request.head, Request::new(()).into_parts().0)
    } else {
        request.head.clone()
    }
}

/// A route's plugin chain on one request, in process: the request phase,
/// then `upstream` in place of the upstream (unless a plugin answered),
/// then the response phase; the same steps, in the same order, as a
/// request from a client takes, without the sockets on either side. For
/// benchmarks and offline policy tests.
pub async fn run_chain(
    generation: &Generation,
    route: &RouteRuntime,
    request: RequestView,
    mut body: ProxyBody,
    upstream: impl FnOnce(http::request::Parts, ProxyBody) -> Response<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut record = Record::new(false);
    let RequestPhase {
        mut request,
        responders,
        canaries,
        reply,
    } = request_phase(route, Box::new(request), &mut body, &mut record).await;
    let response = match reply {
        Some(reply) => reply,
        None => {
            let response = upstream(upstream_head(&mut request, &responders), body);
            for routed in &canaries {
                routed.upstream_answered(response.status().as_u16());
            }
            response
        }
    };
    if responders.is_empty() {
        return Ok(response);
    }
    let max_body = generation.config.limits.max_body_bytes;
    response_phase(route, &responders, request, response, max_body, &mut record).await
}

/// Runs `on-response` of the plugins the request phase reached, last to
/// first.
async fn response_phase(
    route: &RouteRuntime,
    responders: &[Responder<'_>],
    mut request: Box<RequestView>,
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
    let mut response = Box::new(ResponseView {
        head,
        body: body_view,
    });
    for responder in responders.iter().rev() {
        let link = responder.link;
        let called = Instant::now();
        let (req, resp, result) = responder.pool.on_response(request, response).await;
        link.metrics.on_response.observe(called.elapsed());
        request = req;
        response = resp;
        let applied = result.and_then(|changes| apply_response(&mut response, &mut body, changes));
        let failed = applied.err().map(|e| plugin_failed(route, link, e, record));
        if let Some((outcome, _)) = failed {
            decide(record, link, outcome);
            if let (true, Some(canary)) = (responder.candidate, &link.canary) {
                canary.response_failed();
            }
        }
        if let Some((_, Some(error_response))) = failed {
            let (head, error_body) = error_response.into_parts();
            *response = ResponseView {
                head,
                body: BodyView::NotRequested,
            };
            body = error_body;
        }
    }
    Ok(Response::from_parts(response.head, body))
}

/// The error of a request whose client body failed, as its watch tells.
fn client_body_error(
    watch: &body::BodyWatch,
    limit: u64,
    error: &dyn std::fmt::Display,
) -> ProxyError {
    match watch.fault() {
        Some(body::ClientBodyFault::TooLarge) => ProxyError::PayloadTooLarge { limit },
        Some(body::ClientBodyFault::Idle) => ProxyError::RequestTimeout,
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

/// Counts what a plugin decided, for the access log and the metrics.
fn decide(record: &mut Record, link: &ChainLink, outcome: Outcome) {
    link.metrics.decided(outcome);
    record.decide(link, outcome);
}

/// Logs a plugin failure; returns what it comes to, and the response that
/// ends the request when the plugin fails closed. The caller counts the
/// outcome.
fn plugin_failed(
    route: &RouteRuntime,
    link: &ChainLink,
    error: PluginError,
    record: &mut Record,
) -> (Outcome, Option<Response<ProxyBody>>) {
    tracing::warn!(
        plugin = %link.plugin,
        route = %route.name,
        on_error = ?link.on_error,
        "plugin failed: {error}"
    );
    link.metrics.failed(&error);
    match link.on_error {
        OnError::Allow => (Outcome::FailedAllowed, None),
        OnError::Deny => {
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
            (Outcome::Failed, Some(error.into_response()))
        }
    }
}
