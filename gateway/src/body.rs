//! The body type that flows through the proxy, and bounded buffering for the
//! plugins that read bodies.
//!
//! Bodies stream by default: the proxy hands the client's body to the upstream
//! and the upstream's body to the client frame by frame. Only when a plugin
//! asks for a body is it buffered, and only up to the configured cap; past the
//! cap the frames read so far are put back in front of the rest of the stream
//! and the body passes through untouched.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response inside the gateway.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body holding `bytes` and then `trailers`, if any.
pub fn full_with_trailers(bytes: Bytes, trailers: Option<http::HeaderMap>) -> ProxyBody {
    match trailers {
        None => full(bytes),
        Some(trailers) => Full::new(bytes)
            .map_err(|never| match never {})
            .with_trailers(async move { Some(Ok::<_, BoxError>(trailers)) })
            .boxed_unsync(),
    }
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body with `Bytes` frames.
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// What went wrong with a client's request body, as the pipeline learns it
/// after the fact (an upstream send that failed because the body did).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBodyFault {
    /// The body broke its framing or the client went away mid-body.
    Broken,
    /// The body grew past the route's limit.
    TooLarge,
    /// No byte of it came for the idle timeout.
    Idle,
}

/// Why the client's body stopped, as its stream's error.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// The body is larger than the limit.
    #[error("the request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// No byte came for the idle timeout.
    #[error("no request body byte for {0:?}")]
    Idle(Duration),
    /// Reading it failed (bad chunk, connection closed...).
    #[error("the client's request body failed: {0}")]
    Broken(BoxError),
}

/// Tells, after the fact, whether and how a client body failed, and how
/// many bytes of it came.
#[derive(Debug, Clone, Default)]
pub struct BodyWatch(Arc<WatchState>);

#[derive(Debug, Default)]
struct WatchState {
    fault: AtomicU8,
    bytes: AtomicU64,
}

impl BodyWatch {
    /// The fault, if the body failed.
    pub fn fault(&self) -> Option<ClientBodyFault> {
        match self.0.fault.load(Ordering::Acquire) {
            1 => Some(ClientBodyFault::Broken),
            2 => Some(ClientBodyFault::TooLarge),
            3 => Some(ClientBodyFault::Idle),
            _ => None,
        }
    }

    /// Body bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }
}

/// The client's request body, failing with [`ClientBodyError::TooLarge`]
/// as soon as more than `limit` bytes have come (while streaming, not only
/// when a plugin buffers), or with [`ClientBodyError::Idle`] when the
/// gateway waits `idle` for a byte that does not come (a wait that the
/// upstream's back-pressure causes does not count: the body is not read
/// then), and recording any failure in the returned [`BodyWatch`] so that
/// an upstream error it causes is not blamed on the upstream.
pub fn client_body<B>(body: B, limit: u64, idle: Duration) -> (ProxyBody, BodyWatch)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let watch = BodyWatch::default();
    let body = Limited {
        inner: body,
        seen: 0,
        limit,
        state: watch.clone(),
        idle: IdleTimer::new(idle),
    };
    (body.boxed_unsync(), watch)
}

struct Limited<B> {
    inner: B,
    seen: u64,
    limit: u64,
    state: BodyWatch,
    idle: IdleTimer,
}

/// How long a body may keep the gateway waiting for its next frame: armed
/// when a poll finds nothing, disarmed by the next frame.
struct IdleTimer {
    limit: Duration,
    /// Allocated on the body's first wait and re-armed (not re-allocated)
    /// on later ones.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl IdleTimer {
    fn new(limit: Duration) -> Self {
        Self {
            limit,
            timer: None,
            armed: false,
        }
    }

    /// Whether the wait that this poll found has lasted `limit` (arming
    /// the timer on the first poll of a wait).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if !self.armed {
            timer.as_mut().reset(tokio::time::Instant::now() + limit);
            self.armed = true;
        }
        timer.as_mut().poll(cx).is_ready()
    }

    /// A frame came: the next wait starts afresh.
    fn reset(&mut self) {
        self.armed = false;
    }
}

impl<B> Body for Limited<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_pending() {
            if self.idle.expired(cx) {
                self.state.0.fault.store(3, Ordering::Release);
                let idle = self.idle.limit;
                return Poll::Ready(Some(Err(ClientBodyError::Idle(idle).into())));
            }
            return Poll::Pending;
        }
        self.idle.reset();
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.seen += data.len() as u64;
                    self.state.0.bytes.store(self.seen, Ordering::Relaxed);
                    if self.seen > self.limit {
                        self.state.0.fault.store(2, Ordering::Release);
                        let limit = self.limit;
                        return Poll::Ready(Some(Err(ClientBodyError::TooLarge { limit }.into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.state.0.fault.store(1, Ordering::Release);
                Poll::Ready(Some(Err(ClientBodyError::Broken(e.into()).into())))
            }
            other => other.map(|o| o.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An upstream's response body that fails with [`StalledBody`] when it
/// keeps the gateway waiting `idle` for its next frame (like nginx's
/// `proxy_read_timeout`), so that a stalled upstream does not hold the
/// client's connection forever. The client sees the response cut short;
/// the access log says `aborted`.
pub fn idle_bounded(body: ProxyBody, idle: Duration) -> ProxyBody {
    IdleBounded {
        inner: body,
        idle: IdleTimer::new(idle),
    }
    .boxed_unsync()
}

/// The error of an upstream body that stalled.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no response body byte for {0:?}")]
pub struct StalledBody(pub Duration);

struct IdleBounded {
    inner: ProxyBody,
    idle: IdleTimer,
}

impl Body for IdleBounded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_pending() {
            if self.idle.expired(cx) {
                return Poll::Ready(Some(Err(StalledBody(self.idle.limit).into())));
            }
            return Poll::Pending;
        }
        self.idle.reset();
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The result of reading a body for a plugin.
pub enum Buffered {
    /// The whole body fitted under the cap.
    Complete(Bytes),
    /// The body is larger than the cap; this body replays what was read and
    /// streams the rest.
    TooLarge(ProxyBody),
}

/// Reads `body` whole if it fits in `cap` bytes. Trailers of a body that fits
/// are dropped (plugins see data only).
pub async fn buffer(mut body: ProxyBody, cap: usize) -> Result<Buffered, BoxError> {
    if body.size_hint().lower() > cap as u64 {
        return Ok(Buffered::TooLarge(body));
    }
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut size = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            size += data.len();
        }
        frames.push_back(frame);
        if size > cap {
            return Ok(Buffered::TooLarge(
                Replay {
                    prefix: frames,
                    rest: body,
                }
                .boxed_unsync(),
            ));
        }
    }
    let mut whole = BytesMut::with_capacity(size);
    for frame in frames {
        if let Ok(data) = frame.into_data() {
            whole.extend_from_slice(&data);
        }
    }
    Ok(Buffered::Complete(whole.freeze()))
}

/// Frames already read, followed by the rest of the body.
struct Replay {
    prefix: VecDeque<Frame<Bytes>>,
    rest: ProxyBody,
}

impl Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .prefix
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + buffered);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn chunks(parts: &[&'static str]) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    #[tokio::test]
    async fn a_client_body_past_its_limit_fails_and_says_so() {
        let idle = Duration::from_secs(30);
        let (body, watch) = client_body(chunks(&["abc", "def"]), 5, idle);
        let error = body.collect().await.expect_err("too large");
        assert_eq!(error.to_string(), "the request body is larger than 5 bytes");
        assert_eq!(watch.fault(), Some(ClientBodyFault::TooLarge));

        let (body, watch) = client_body(chunks(&["abc", "de"]), 5, idle);
        assert_eq!(body.collect().await.expect("fits").to_bytes(), "abcde");
        assert_eq!(watch.fault(), None);

        let broken: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"a"))),
            Err("reset".into()),
        ];
        let (body, watch) =
            client_body(StreamBody::new(futures_util::stream::iter(broken)), 5, idle);
        assert!(body.collect().await.is_err());
        assert_eq!(watch.fault(), Some(ClientBodyFault::Broken));
    }

    #[tokio::test]
    async fn a_client_body_that_stops_arriving_fails_after_the_idle_timeout() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let (mut body, watch) = client_body(
            StreamBody::new(Box::pin(stream)),
            100,
            Duration::from_millis(100),
        );
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .expect("send");
        assert!(body.frame().await.expect("frame").is_ok());
        // Then nothing (the sender is still open): the idle timer ends it.
        let error = body.frame().await.expect("an error").expect_err("idle");
        assert_eq!(error.to_string(), "no request body byte for 100ms");
        assert_eq!(watch.fault(), Some(ClientBodyFault::Idle));
        drop(tx);
    }

    #[tokio::test]
    async fn a_stalled_upstream_body_fails_after_its_idle_timeout() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let mut body = idle_bounded(
            StreamBody::new(Box::pin(stream)).boxed_unsync(),
            Duration::from_millis(100),
        );
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .expect("send");
        assert!(body.frame().await.expect("frame").is_ok());
        let error = body.frame().await.expect("an error").expect_err("stalled");
        assert_eq!(
            error.to_string(),
            "the upstream sent no response body byte for 100ms"
        );
        drop(tx);
    }

    #[tokio::test]
    async fn a_body_under_the_cap_is_read_whole() {
        match buffer(chunks(&["ab", "cd"]), 4).await.expect("reads") {
            Buffered::Complete(b) => assert_eq!(b, "abcd"),
            Buffered::TooLarge(_) => panic!("fits"),
        }
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_replayed_untouched() {
        match buffer(chunks(&["ab", "cd", "ef"]), 3).await.expect("reads") {
            Buffered::Complete(_) => panic!("too large"),
            Buffered::TooLarge(body) => {
                let all = body.collect().await.expect("replays").to_bytes();
                assert_eq!(all, "abcdef");
            }
        }
    }
}
