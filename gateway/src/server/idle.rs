//! Idle connections: whether a connection has had a request in flight
//! lately, so that an HTTP/2 connection with no stream open can be closed
//! (hyper bounds an idle HTTP/1.1 connection by its header read timeout,
//! but has no such bound for HTTP/2).
//!
//! A request is in flight from the moment the service is called until
//! hyper drops its response body, so a long download or a gRPC stream
//! keeps its connection busy. Two atomics and a [`Notify`] per connection;
//! no lock and no allocation per request.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use crate::body::{BoxError, ProxyBody};

/// What a connection has in flight.
#[derive(Debug, Default)]
pub(super) struct Activity {
    /// Requests whose response has not been dropped yet.
    in_flight: AtomicUsize,
    /// Requests started on this connection, ever.
    started: AtomicU64,
    /// Signalled when `in_flight` drops to zero.
    idle: Notify,
}

impl Activity {
    /// Counts a request in flight until the returned guard drops.
    pub(super) fn start(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Resolves once the connection has had nothing in flight and started
    /// nothing for `timeout`.
    pub(super) async fn idle_for(&self, timeout: Duration) {
        loop {
            while self.in_flight.load(Ordering::Acquire) != 0 {
                // `notify_one` keeps a permit when nobody waits, so a
                // request that ends between the load and this wait is not
                // missed.
                self.idle.notified().await;
            }
            let seen = self.started.load(Ordering::Acquire);
            tokio::time::sleep(timeout).await;
            if self.in_flight.load(Ordering::Acquire) == 0
                && self.started.load(Ordering::Acquire) == seen
            {
                return;
            }
        }
    }
}

/// One request in flight; dropping it ends the request's share of the
/// connection's activity.
#[derive(Debug)]
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}

/// A response body that keeps its request in flight until hyper drops it.
#[derive(Debug)]
pub(super) struct Tracked {
    inner: ProxyBody,
    _in_flight: InFlight,
}

impl Tracked {
    /// Ties `inner` to the request `in_flight`.
    pub(super) fn new(inner: ProxyBody, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
