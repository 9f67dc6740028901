//! A small upstream that answers every request with a JSON description of
//! what it received: method, path, query, headers, and the body's length and
//! SHA-256 (never the body itself, so 10 MiB bodies stay cheap).
//!
//! Paths with a meaning: `/status/<code>` answers with that status,
//! `/delay/<ms>` waits before answering, and a path ending in `/reflect`
//! answers with the request's own body and `Content-Type` (for plugins that
//! rewrite response bodies), the `Seen` JSON going into the header
//! `x-seen` instead.
//!
//! A WebSocket handshake (on any path) is answered `101` and every message
//! then comes back as it was sent.
//!
//! It also reports, through [`Echo::first_chunk`], when the first body bytes
//! of a request arrive, which lets a test prove the gateway streams bodies.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the echo server saw of a request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seen {
    /// The method.
    pub method: String,
    /// The path.
    pub path: String,
    /// The query, if any.
    pub query: Option<String>,
    /// Every header, lowercase name, in order.
    pub headers: Vec<(String, String)>,
    /// Body length.
    pub body_len: usize,
    /// Body SHA-256, hex.
    pub body_sha256: String,
}

impl Seen {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running echo server.
#[derive(Debug, Clone)]
pub struct Echo {
    /// Its address.
    pub addr: SocketAddr,
    first_chunk: watch::Receiver<u64>,
}

impl Echo {
    /// Binds `addr` (port 0 for any) and serves until the runtime ends.
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (chunk_tx, first_chunk) = watch::channel(0u64);
        let chunk_tx = Arc::new(chunk_tx);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let chunk_tx = chunk_tx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let chunk_tx = chunk_tx.clone();
                        async move { Ok::<_, Infallible>(answer(req, &chunk_tx).await) }
                    });
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(Self { addr, first_chunk })
    }

    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start_local() -> std::io::Result<Self> {
        Self::start(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Waits until a request body's first bytes have reached the server
    /// (counted across all requests since start).
    pub async fn first_chunk(&self, timeout: Duration) -> bool {
        let mut rx = self.first_chunk.clone();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Answers a WebSocket handshake with 101 and echoes its messages, if
/// `req` is one.
fn websocket(req: &mut Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let wants = req
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let key = req.headers().get("sec-websocket-key")?.as_bytes().to_vec();
    if !wants {
        return None;
    }
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                break;
            }
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header("sec-websocket-accept", accept)
        .body(Full::new(Bytes::new()))
        .ok()
}

async fn answer(
    mut req: Request<Incoming>,
    chunk_tx: &watch::Sender<u64>,
) -> Response<Full<Bytes>> {
    if let Some(response) = websocket(&mut req) {
        return response;
    }
    let (head, mut body) = req.into_parts();
    let reflect = head.uri.path().ends_with("/reflect");
    let mut kept = Vec::new();
    let mut hasher = Sha256::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            if len == 0 && !data.is_empty() {
                chunk_tx.send_modify(|n| *n += 1);
            }
            len += data.len();
            hasher.update(data);
            if reflect {
                kept.extend_from_slice(data);
            }
        }
    }
    let path = head.uri.path().to_owned();
    let mut status = StatusCode::OK;
    if let Some(code) = path.strip_prefix("/status/") {
        status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
    }
    if let Some(ms) = path
        .strip_prefix("/delay/")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let seen = Seen {
        method: head.method.to_string(),
        path,
        query: head.uri.query().map(str::to_owned),
        headers: head
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len: len,
        body_sha256: hex::encode(hasher.finalize()),
    };
    let seen = serde_json::to_vec(&seen).unwrap_or_default();
    let mut response = if reflect {
        let mut response = Response::new(Full::new(Bytes::from(kept)));
        if let Some(content_type) = head.headers.get(http::header::CONTENT_TYPE) {
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, content_type.clone());
        }
        if let Ok(seen) = http::HeaderValue::from_bytes(&seen) {
            response.headers_mut().insert("x-seen", seen);
        }
        response
    } else {
        let mut response = Response::new(Full::new(Bytes::from(seen)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    };
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("x-upstream", http::HeaderValue::from_static("echo"));
    response
}
