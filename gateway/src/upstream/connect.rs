//! Connections with a birth date: a connector that wraps the group's own
//! and, when the group bounds a connection's lifetime, stamps each new
//! connection with the time it was made. hyper-util's pool hands the stamp
//! to every response of that connection (its `extra`), and the group then
//! retires a connection past its lifetime (poisons it: the pool does not
//! reuse it, and it closes once idle), between two requests, never in the
//! middle of one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use tower_service::Service;

/// When a connection was made, in the extensions of its responses.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnectedAt(pub(super) Instant);

/// A connector that stamps its connections when `lifetime` is set.
#[derive(Debug, Clone)]
pub(super) struct Stamped<C> {
    inner: C,
    lifetime: Option<Duration>,
}

impl<C> Stamped<C> {
    /// Wraps `inner`; without a `lifetime` nothing is stamped.
    pub(super) fn new(inner: C, lifetime: Option<Duration>) -> Self {
        Self { inner, lifetime }
    }
}

impl<C> Service<Uri> for Stamped<C>
where
    C: Service<Uri>,
    C::Future: Send + 'static,
{
    type Response = StampedIo<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let stamp = self.lifetime.is_some();
        Box::pin(async move {
            let io = connecting.await?;
            Ok(StampedIo {
                inner: io,
                at: stamp.then(Instant::now),
            })
        })
    }
}

/// A connection and, if stamped, when it was made.
#[derive(Debug)]
pub(super) struct StampedIo<T> {
    inner: T,
    at: Option<Instant>,
}

impl<T: Connection> Connection for StampedIo<T> {
    fn connected(&self) -> Connected {
        let connected = self.inner.connected();
        match self.at {
            Some(at) => connected.extra(ConnectedAt(at)),
            None => connected,
        }
    }
}

impl<T: Read + Unpin> Read for StampedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for StampedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}
