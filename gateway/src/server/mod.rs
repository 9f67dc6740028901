//! Listeners: accept connections, terminate TLS where the listener has it,
//! serve HTTP/1.1 (keep-alive) or HTTP/2 (chosen by ALPN) through the
//! pipeline, and drain gracefully on shutdown.
//!
//! The TLS handshake runs in the connection's own task under the
//! listener's handshake timeout, so a slow or silent client holds only its
//! own connection. A listener's TLS settings are read from the generation
//! current at accept time (see [`tls`]).

pub mod tls;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::pipeline::{self, Connection, TlsSession};
use crate::registry::Registry;

/// How long shutdown waits for requests in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 streams a client may have open at once on one connection
/// (nginx's default is 128; hyper's 200).
const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Largest header list an HTTP/2 client may send, decoded (hyper's
/// default, as a contract: larger lists are refused before a plugin runs).
const H2_MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Streams a client may open and reset before the server has seen them
/// (the rapid-reset attack, CVE-2023-44487): past it the connection is
/// closed with `ENHANCE_YOUR_CALM`.
const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// Serves listener number `index` of the config until `shutdown` turns
/// true, then stops accepting and waits up to [`DRAIN_TIMEOUT`] for open
/// connections to finish.
pub async fn serve(
    listener: TcpListener,
    index: usize,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let tls = registry.current().tls.get(index).cloned().flatten();
                    let watcher = graceful.watcher();
                    let conn = Connection { listener: index, peer, tls: None };
                    tokio::spawn(connection(stream, conn, tls, registry.clone(), watcher));
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
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!("all connections drained"),
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("drain timeout: closing remaining connections"),
    }
}

/// One accepted connection, from the handshake (if TLS) to its end.
async fn connection(
    stream: TcpStream,
    mut conn: Connection,
    tls: Option<Arc<tls::ListenerTls>>,
    registry: Arc<Registry>,
    watcher: Watcher,
) {
    let peer = conn.peer;
    let Some(tls) = tls else {
        return serve_http(stream, false, Arc::new(conn), registry, watcher).await;
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
    let h2 = session.alpn_protocol() == Some(b"h2");
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
    serve_http(stream, h2, Arc::new(conn), registry, watcher).await;
}

/// Serves HTTP on an established stream: HTTP/2 if `h2` (negotiated by
/// ALPN), else HTTP/1.1.
async fn serve_http<S>(
    stream: S,
    h2: bool,
    conn: Arc<Connection>,
    registry: Arc<Registry>,
    watcher: Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let registry = registry.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(pipeline::handle(&registry, request, &conn).await) }
    });
    let io = TokioIo::new(stream);
    let result = if h2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .max_header_list_size(H2_MAX_HEADER_LIST_SIZE)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS);
        watcher.watch(builder.serve_connection(io, service)).await
    } else {
        let connection = http1::Builder::new()
            .keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(io, service);
        watcher.watch(connection).await
    };
    if let Err(e) = result {
        tracing::debug!(client = %peer, "connection ended with an error: {e}");
    }
}
