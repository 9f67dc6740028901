//! A test upstream server whose behaviour a test switches while it runs,
//! for health checks, ejection, balancing and failover: it answers `200`
//! with its name (`x-server` header and body), or `503`, or never answers,
//! or resets the connection; it can close idle keep-alive connections
//! early, be stopped (its port refuses connections) and started again on
//! the same port.
//!
//! With [`Backend::set_stale_after`] it also plays the keep-alive race the
//! way a server sees it: a request that arrives on a connection idle that
//! long is dropped unanswered, as if the server had decided to close the
//! connection just as the request was on its way.
//!
//! Every answer says the length of the request body it read, in
//! `x-body-len`.
//!
//! `GET /healthz` answers `200` while the server is [`Mode::Ok`] and `503`
//! otherwise (a reset for [`Mode::Reset`], nothing for [`Mode::Hang`]);
//! health checks are counted apart from requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::task::JoinSet;

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// `200` with its name.
    Ok = 0,
    /// `503`.
    Unavailable = 1,
    /// Reads the request and never answers.
    Hang = 2,
    /// Closes the connection without an answer.
    Reset = 3,
}

#[derive(Debug)]
struct Shared {
    name: String,
    mode: AtomicU8,
    requests: AtomicU64,
    health_checks: AtomicU64,
    connections: AtomicU64,
    /// Ms of idleness after which a reused connection is dropped; 0: never.
    stale_after_ms: AtomicU64,
    /// The server's clock.
    start: Instant,
}

/// A running (or stopped) test server on 127.0.0.1.
#[derive(Debug)]
pub struct Backend {
    /// Where it listens (the same port after a restart).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    idle_timeout: Option<Duration>,
    tasks: Mutex<Option<JoinSet<()>>>,
}

impl Backend {
    /// Starts a server called `name` on an ephemeral port; with
    /// `idle_timeout`, it closes keep-alive connections idle that long.
    pub async fn start(name: &str, idle_timeout: Option<Duration>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let backend = Self {
            addr: listener.local_addr()?,
            shared: Arc::new(Shared {
                name: name.to_owned(),
                mode: AtomicU8::new(Mode::Ok as u8),
                requests: AtomicU64::new(0),
                health_checks: AtomicU64::new(0),
                connections: AtomicU64::new(0),
                stale_after_ms: AtomicU64::new(0),
                start: Instant::now(),
            }),
            idle_timeout,
            tasks: Mutex::new(None),
        };
        backend.serve(listener).await;
        Ok(backend)
    }

    /// Its name, as it answers it.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Switches how it answers, from the next request on.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Drops, unanswered, a request that arrives on a connection idle for
    /// `idle` or longer since its last answer.
    pub fn set_stale_after(&self, idle: Duration) {
        self.shared
            .stale_after_ms
            .store(idle.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests answered or taken, health checks left out.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Health checks received.
    pub fn health_checks(&self) -> u64 {
        self.shared.health_checks.load(Ordering::SeqCst)
    }

    /// Stops it: the listener closes and every open connection is dropped,
    /// as when the process dies.
    pub async fn stop(&self) {
        if let Some(mut tasks) = self.tasks.lock().await.take() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Starts it again on its port.
    pub async fn restart(&self) -> std::io::Result<()> {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener).await;
        Ok(())
    }

    async fn serve(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let idle = self.idle_timeout;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let shared = shared.clone();
                connections.spawn(async move {
                    // When this connection last answered, ms on the
                    // server's clock (u64::MAX: never).
                    let last = Arc::new(AtomicU64::new(u64::MAX));
                    let service = service_fn(move |request| {
                        let (shared, last) = (shared.clone(), last.clone());
                        async move { answer(&shared, &last, request).await }
                    });
                    let mut builder = http1::Builder::new();
                    builder.keep_alive(true).timer(TokioTimer::new());
                    // hyper's header read timeout also bounds the wait for
                    // the next request on a kept-alive connection.
                    if let Some(idle) = idle {
                        builder.header_read_timeout(idle);
                    }
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                // Reap the connections that ended.
                while connections.try_join_next().is_some() {}
            }
        });
        *self.tasks.lock().await = Some(tasks);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Ok(mut tasks) = self.tasks.try_lock()
            && let Some(tasks) = tasks.as_mut()
        {
            tasks.abort_all();
        }
    }
}

/// An error that makes hyper close the connection without an answer.
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset by the test")
    }
}

impl std::error::Error for Reset {}

async fn answer(
    shared: &Shared,
    last: &AtomicU64,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Reset> {
    let now = shared.start.elapsed().as_millis() as u64;
    let stale_after = shared.stale_after_ms.load(Ordering::SeqCst);
    let previous = last.swap(now, Ordering::SeqCst);
    if stale_after > 0 && previous != u64::MAX && now.saturating_sub(previous) >= stale_after {
        shared.requests.fetch_add(1, Ordering::SeqCst);
        return Err(Reset);
    }
    let health = request.uri().path() == "/healthz";
    if health {
        shared.health_checks.fetch_add(1, Ordering::SeqCst);
    } else {
        shared.requests.fetch_add(1, Ordering::SeqCst);
    }
    let mode = match shared.mode.load(Ordering::SeqCst) {
        0 => Mode::Ok,
        1 => Mode::Unavailable,
        2 => Mode::Hang,
        _ => Mode::Reset,
    };
    let status = match mode {
        Mode::Ok => StatusCode::OK,
        Mode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Mode::Hang => {
            std::future::pending::<()>().await;
            StatusCode::OK
        }
        Mode::Reset => return Err(Reset),
    };
    // The body, read whole: its length is answered in `x-body-len`.
    let body_len = request
        .into_body()
        .collect()
        .await
        .map_or(0, |body| body.to_bytes().len());
    let response = Response::builder()
        .status(status)
        .header("x-server", shared.name.as_str())
        .header("x-body-len", body_len)
        .body(Full::new(Bytes::from(shared.name.clone())))
        .map_err(|_| Reset)?;
    Ok::<_, Infallible>(response).map_err(|never| match never {})
}
