//! A test upstream for protocols the echo upstream does not speak: TLS
//! (optionally asking for a client certificate), HTTP/2 over TLS, h2c, and
//! responses with trailers, as gRPC sends them.
//!
//! Every response is `200` with the body `hello` and the trailers
//! `grpc-status: 0` and `grpc-message: ok` (HTTP/1.1 sends trailers only to
//! a client that asked with `TE: trailers`), and headers that tell what the
//! upstream saw: `x-seen-version`, `x-seen-host`, `x-seen-authority`,
//! `x-seen-te`, `x-seen-client-cert` (`yes` or `no`).
//!
//! A WebSocket handshake (HTTP/1.1) is answered `101` and the upgraded
//! connection then echoes every byte back (no WebSocket framing: the
//! gateway carries bytes and must not care).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// The protocol the test upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 (over TLS by ALPN, or h2c with prior knowledge without TLS).
    H2,
}

/// A running test upstream on 127.0.0.1.
#[derive(Debug)]
pub struct TestUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestUpstream {
    /// Starts serving `protocol`, over TLS with `tls` if given.
    pub async fn start(
        protocol: Protocol,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve(stream, protocol, false).await,
                        Some(config) => {
                            let Ok(stream) = TlsAcceptor::from(config).accept(stream).await else {
                                return;
                            };
                            let client_cert = stream.get_ref().1.peer_certificates().is_some();
                            serve(stream, protocol, client_cert).await;
                        }
                    }
                });
            }
        });
        Ok(Self { addr, task })
    }
}

async fn serve<S>(stream: S, protocol: Protocol, client_cert: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| async move {
        Ok::<_, Infallible>(answer(request, client_cert).await)
    });
    let io = TokioIo::new(stream);
    let _ = match protocol {
        Protocol::Http1 => {
            http1::Builder::new()
                .serve_connection(io, service)
                .with_upgrades()
                .await
        }
        Protocol::H2 => {
            http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, service)
                .await
        }
    };
}

type AnswerBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(mut request: Request<Incoming>, client_cert: bool) -> Response<AnswerBody> {
    let websocket = request
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if websocket {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut read, &mut write).await;
            }
        });
        let mut response = Response::new(http_body_util::Empty::new().boxed());
        *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        headers.insert("connection", HeaderValue::from_static("upgrade"));
        headers.insert("sec-websocket-accept", HeaderValue::from_static("test"));
        return response;
    }
    let (head, body) = request.into_parts();
    // Read the request to its end, trailers included.
    let _ = body.collect().await;
    let text = |name: &str| {
        head.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let seen = [
        ("x-seen-version", format!("{:?}", head.version)),
        ("x-seen-host", text("host")),
        (
            "x-seen-authority",
            head.uri
                .authority()
                .map_or("-".to_owned(), ToString::to_string),
        ),
        ("x-seen-te", text("te")),
        (
            "x-seen-client-cert",
            if client_cert { "yes" } else { "no" }.to_owned(),
        ),
    ];
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("grpc-message", HeaderValue::from_static("ok"));
    let frames = futures_util::stream::iter([
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"hello"))),
        Ok(Frame::trailers(trailers)),
    ]);
    let mut response = Response::new(StreamBody::new(frames).boxed());
    for (name, value) in seen {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}
