//! A webhook receiver for alert tests: records every alert POSTed to it,
//! and can be told to fail its first requests to exercise retries.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A running receiver.
#[derive(Debug, Clone)]
pub struct WebhookReceiver {
    /// Its address.
    pub addr: SocketAddr,
    state: Arc<State>,
    received: watch::Receiver<Vec<serde_json::Value>>,
}

#[derive(Debug)]
struct State {
    fail_first: AtomicUsize,
    requests: AtomicUsize,
    received: watch::Sender<Vec<serde_json::Value>>,
}

impl WebhookReceiver {
    /// Starts on an ephemeral port of 127.0.0.1; answers 503 to its first
    /// `fail_first` requests, 204 to the others.
    pub async fn start(fail_first: usize) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let (tx, received) = watch::channel(Vec::new());
        let state = Arc::new(State {
            fail_first: AtomicUsize::new(fail_first),
            requests: AtomicUsize::new(0),
            received: tx,
        });
        let serving = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(req, &state).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            state,
            received,
        })
    }

    /// `http://<addr>/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Requests received so far, failed ones included.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Every alert accepted so far, in arrival order.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        self.received.borrow().clone()
    }

    /// Waits until at least `n` alerts were accepted, for at most `timeout`;
    /// returns the alerts accepted by then.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let mut rx = self.received.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|alerts| alerts.len() >= n)).await;
        self.alerts()
    }
}

async fn answer(req: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return status(StatusCode::BAD_REQUEST),
    };
    let failing = state
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return status(StatusCode::SERVICE_UNAVAILABLE);
    }
    let Ok(batch) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let Some(alerts) = batch.get("alerts").and_then(|a| a.as_array()) else {
        return status(StatusCode::UNPROCESSABLE_ENTITY);
    };
    state
        .received
        .send_modify(|received| received.extend(alerts.iter().cloned()));
    status(StatusCode::NO_CONTENT)
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}
