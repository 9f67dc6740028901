//! Listeners: accept connections, terminate TLS where the listener has it,
//! serve HTTP/1.1 (keep-alive, upgrades) or HTTP/2 (chosen by ALPN, or by
//! the preface with h2c) through the pipeline, and drain gracefully on
//! shutdown.
//!
//! The TLS handshake runs in the connection's own task under the
//! listener's handshake timeout, so a slow or silent client holds only its
//! own connection. A listener's TLS settings are read from the generation
//! current at accept time (see [`tls`]).
//!
//! Every connection holds one of its listener's `max_connections` slots
//! until it ends (an upgraded connection until its tunnel ends), so
//! draining is waiting for all the slots to come back.

mod counted;
mod idle;
pub mod tls;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::{Http1Config, Http2Config};
use crate::pipeline::{self, Connection, TlsSession};
use crate::registry::Registry;

/// How long shutdown waits for requests in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener's settings as connections use them, part of a generation.
#[derive(Debug)]
pub struct ListenerRuntime {
    /// TLS, on a TLS listener.
    pub tls: Option<Arc<tls::ListenerTls>>,
    /// Whether a plain listener also takes h2c with prior knowledge.
    pub h2c: bool,
    /// HTTP/2 limits.
    pub http2: Http2Config,
    /// HTTP/1.1 limits.
    pub http1: Http1Config,
}

/// Which HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaks {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only (ALPN `h2`).
    Http2,
    /// HTTP/1.1, or HTTP/2 if the connection opens with its preface (h2c).
    Either,
}

/// Serves listener number `index` of the config until `shutdown` turns
/// true, then stops accepting and waits up to [`DRAIN_TIMEOUT`] for open
/// connections to finish.
pub async fn serve(
    listener: TcpListener,
    index: usize,
    max_connections: usize,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let address = listener
        .local_addr()
        .map_or_else(|_| format!("listener {index}"), |a| a.to_string());
    let metrics = registry.metrics().listener(&address);
    loop {
        // A free slot first: at the limit the listener stops accepting
        // and new clients wait in the kernel's backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let Some(settings) = registry.current().listeners.get(index).cloned() else {
                        continue;
                    };
                    let registry = registry.clone();
                    let shutdown = shutdown.clone();
                    let conn = Connection { listener: index, peer, tls: None, slot: Some(slot) };
                    let stream = counted::Counted::new(stream, metrics.clone());
                    tokio::spawn(connection(stream, conn, settings, registry, shutdown));
                }
                Err(e) => {
                    // Typically out of file descriptors: back off briefly.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    // Validated to at most a million, so this never saturates.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    tokio::select! {
        _ = slots.acquire_many(all) => tracing::debug!("all connections drained"),
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("drain timeout: closing remaining connections"),
    }
}

/// Serves HTTP/1.1 on a stream that no listener accepted (an in-memory
/// pipe: what `portcullis test` sends its cases through), with the
/// settings of the listener `conn` names, until the client side closes.
pub async fn serve_stream<S>(stream: S, conn: Connection, registry: Arc<Registry>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(settings) = registry.current().listeners.get(conn.listener).cloned() else {
        return;
    };
    // Held until the connection ends: a dropped sender would read as a
    // shutdown.
    let (_running, shutdown) = watch::channel(false);
    serve_http(
        stream,
        Speaks::Http1,
        &settings,
        Arc::new(conn),
        registry,
        shutdown,
    )
    .await;
}

/// One accepted connection, from the handshake (if TLS) to its end.
async fn connection<S>(
    stream: S,
    mut conn: Connection,
    settings: Arc<ListenerRuntime>,
    registry: Arc<Registry>,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let Some(tls) = settings.tls.clone() else {
        let speaks = if settings.h2c {
            Speaks::Either
        } else {
            Speaks::Http1
        };
        return serve_http(
            stream,
            speaks,
            &settings,
            Arc::new(conn),
            registry,
            shutdown,
        )
        .await;
    };
    let acceptor = TlsAcceptor::from(tls.server.clone());
    let stream = match tokio::time::timeout(tls.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %peer, "TLS handshake timed out");
            return;
        }
    };
    let (_, session) = stream.get_ref();
    let speaks = if session.alpn_protocol() == Some(b"h2") {
        Speaks::Http2
    } else {
        Speaks::Http1
    };
    conn.tls = Some(TlsSession {
        version: match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        },
        server_name: session.server_name().map(Into::into),
        client_certificate: session
            .peer_certificates()
            .and_then(<[_]>::first)
            .and_then(|der| tls::client_certificate(der).map(Arc::new)),
    });
    serve_http(
        stream,
        speaks,
        &settings,
        Arc::new(conn),
        registry,
        shutdown,
    )
    .await;
}

/// Serves HTTP on an established stream, with upgrades (WebSocket) on
/// HTTP/1.1, until the client closes, the connection is idle past the
/// HTTP/2 idle timeout, or the gateway shuts down; the last two close
/// gracefully (GOAWAY, or `Connection: close` after the request in flight).
async fn serve_http<S>(
    stream: S,
    speaks: Speaks,
    settings: &ListenerRuntime,
    conn: Arc<Connection>,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let activity = Arc::new(idle::Activity::default());
    let service = service_fn({
        let activity = activity.clone();
        move |request: hyper::Request<Incoming>| {
            let in_flight = activity.start();
            let registry = registry.clone();
            let conn = conn.clone();
            async move {
                let response = pipeline::handle(&registry, request, &conn).await;
                Ok::<_, Infallible>(response.map(|body| idle::Tracked::new(body, in_flight)))
            }
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(settings.http1.header_read_timeout_ms))
        .max_buf_size(settings.http1.max_head_bytes);
    if settings.http1.max_headers != Http1Config::DEFAULT_MAX_HEADERS {
        // hyper keeps its default header array on the stack; another size
        // is a heap allocation per request, so only when asked for.
        builder.http1().max_headers(settings.http1.max_headers);
    }
    let h2 = &settings.http2;
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_header_list_size(h2.max_header_list_size)
        .initial_stream_window_size(h2.initial_stream_window_size)
        .initial_connection_window_size(h2.initial_connection_window_size)
        .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams);
    let builder = match speaks {
        Speaks::Http1 => builder.http1_only(),
        Speaks::Http2 => builder.http2_only(),
        Speaks::Either => builder,
    };
    // HTTP/1.1 keep-alive connections are bounded by the header read
    // timeout already; hyper has no such bound for HTTP/2.
    let idle_timeout =
        (speaks != Speaks::Http1).then(|| Duration::from_millis(settings.http2.idle_timeout_ms));
    let idle = async {
        match idle_timeout {
            Some(timeout) => activity.idle_for(timeout).await,
            None => std::future::pending().await,
        }
    };
    let mut idle = std::pin::pin!(idle);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let mut closing = false;
    let ended = loop {
        tokio::select! {
            ended = connection.as_mut() => break ended,
            () = &mut idle, if !closing => {
                tracing::debug!(client = %peer, "closing an idle connection");
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = shutdown.wait_for(|down| *down), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(client = %peer, "connection ended with an error: {e}");
    }
}
