//! The response body the proxy sends downstream: the upstream's body relayed frame by frame as
//! it arrives (never buffered whole), or a small body the proxy generated itself.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use futures_util::task::AtomicWaker;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

mod observe;

pub use observe::Observer;

use crate::access_log::Flags;
use crate::grpc;

pin_project! {
    #[project = Proj]
    pub enum ProxyBody {
        Upstream {
            // `None` once finished or cut off by the deadline (dropping it resets the upstream
            // stream).
            inner: Option<Received>,
            obs: Observer,
            // The gRPC deadline: when it fires the call ends with DEADLINE_EXCEEDED trailers.
            #[pin]
            deadline: Option<Sleep>,
            // The deadline's budget, for the grpc-message.
            budget: Duration,
            // Fired with the deadline: cuts off the request body, so the upstream stream is
            // reset even while the client is still sending (client streaming, bidi).
            cancel: Option<Arc<Cancel>>,
            // The route's stream idle timeout: pushed back by every frame.
            #[pin]
            idle: Option<Sleep>,
            idle_for: Duration,
            // A circuit-breaker permit the request holds until its response ends.
            hold: Option<crate::resilience::Permit>,
        },
        Full { data: Option<Bytes> },
    }
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Full { data: None }
    }

    pub fn full(data: Bytes) -> Self {
        ProxyBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// Relays `inner`; with a gRPC `deadline` (when, and the budget it came from), the call is
    /// ended with DEADLINE_EXCEEDED trailers when it fires.
    pub fn upstream(
        inner: Received,
        obs: Observer,
        deadline: Option<(Sleep, Duration)>,
        cancel: Option<Arc<Cancel>>,
    ) -> Self {
        let (deadline, budget) = match deadline {
            Some((s, b)) => (Some(s), b),
            None => (None, Duration::ZERO),
        };
        let mut obs = obs;
        // A body that is over before it starts (HEAD, 204, 304, `content-length: 0`, a gRPC
        // trailers-only response) is never polled: dropped, it ended, the client did not leave.
        obs.relaying = !inner.is_end_stream();
        ProxyBody::Upstream {
            inner: Some(inner),
            obs,
            deadline,
            budget,
            cancel,
            idle: None,
            idle_for: Duration::ZERO,
            hold: None,
        }
    }

    /// Ends the stream when no frame has come for `after`: gRPC calls with DEADLINE_EXCEEDED
    /// trailers, others with an error (the downstream stream is reset).
    pub fn idle(mut self, after: Option<Duration>) -> Self {
        if let (ProxyBody::Upstream { idle, idle_for, .. }, Some(after)) = (&mut self, after) {
            *idle = Some(tokio::time::sleep(after));
            *idle_for = after;
        }
        self
    }

    /// Keeps `permit` until the body has ended.
    pub fn hold(mut self, permit: Option<crate::resilience::Permit>) -> Self {
        if let ProxyBody::Upstream { hold, .. } = &mut self {
            *hold = permit;
        }
        self
    }
}

/// A stream that carried nothing for its idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("the stream was idle for {0:?} (weft-proxy)")]
pub struct IdleTimeout(pub Duration);

/// The trailers that end a gRPC call the proxy cut off: DEADLINE_EXCEEDED and why.
fn deadline_trailers(message: &str) -> HeaderMap {
    let mut t = HeaderMap::with_capacity(2);
    t.insert(grpc::STATUS, HeaderValue::from(grpc::DEADLINE_EXCEEDED));
    t.insert(grpc::MESSAGE, grpc::encode_message(message));
    t
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            Proj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Proj::Upstream {
                inner,
                obs,
                mut deadline,
                budget,
                cancel,
                mut idle,
                idle_for,
                hold,
            } => {
                if let Some(sleep) = idle.as_mut().as_pin_mut()
                    && sleep.poll(cx).is_ready()
                {
                    idle.set(None);
                    *hold = None;
                    if inner.take().is_some() {
                        obs.flag(Flags::SI);
                        if obs.grpc {
                            obs.finish(Some(grpc::DEADLINE_EXCEEDED));
                            let t = deadline_trailers(&IdleTimeout(*idle_for).to_string());
                            return Poll::Ready(Some(Ok(Frame::trailers(t))));
                        }
                        obs.finish(None);
                        return Poll::Ready(Some(Err(IdleTimeout(*idle_for).into())));
                    }
                }
                if let Some(sleep) = deadline.as_mut().as_pin_mut()
                    && sleep.poll(cx).is_ready()
                {
                    deadline.set(None);
                    if let Some(c) = cancel {
                        c.fire();
                    }
                    if inner.take().is_some() {
                        obs.flag(Flags::UT);
                        obs.finish(Some(grpc::DEADLINE_EXCEEDED));
                        let t = deadline_trailers(&format!(
                            "deadline of {budget:?} exceeded (weft-proxy)"
                        ));
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                }
                let Some(body) = inner.as_mut() else {
                    return Poll::Ready(None);
                };
                let frame = ready!(Pin::new(body).poll_frame(cx));
                if let Some(sleep) = idle.as_mut().as_pin_mut() {
                    // Configured durations are at most ten years: this cannot overflow.
                    let idle = weft_core::duration::clamp(*idle_for);
                    sleep.reset(tokio::time::Instant::now() + idle);
                }
                match &frame {
                    Some(Ok(f)) => {
                        if let Some(t) = f.trailers_ref() {
                            obs.finish(grpc::status(t));
                        } else if let (Some(e), Some(d)) = (&mut obs.log, f.data_ref()) {
                            e.bytes_out += d.len() as u64;
                        }
                        // hyper stops polling a body that says it has ended (one with a
                        // length): that is its end, not the client going away. (Only the
                        // access log tells the two apart; metrics count it when dropped.)
                        if obs.log.is_some() && inner.as_ref().is_some_and(|b| b.is_end_stream()) {
                            obs.finish(None);
                        }
                    }
                    Some(Err(_)) | None => {
                        if frame.is_some() {
                            obs.flag(Flags::UC);
                        }
                        obs.finish(None);
                        *inner = None;
                        deadline.set(None);
                        idle.set(None);
                        *hold = None;
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full { data } => data.is_none(),
            ProxyBody::Upstream { inner, .. } => inner.as_ref().is_none_or(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ProxyBody::Upstream {
                inner: Some(b),
                deadline: None,
                ..
            } => b.size_hint(),
            ProxyBody::Upstream { .. } => SizeHint::default(),
        }
    }
}

/// A one-way signal to a request body's sender, waking it: the proxy's deadline cutting off the
/// upstream body (which then fails with CANCEL, and the upstream connection resets the stream),
/// or an upstream response dropped before its end (whose stream the sender then resets).
#[derive(Debug, Default)]
pub struct Cancel {
    fired: AtomicBool,
    waker: AtomicWaker,
}

impl Cancel {
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether it has fired; if not, the task is woken when it does.
    pub fn poll_fired(&self, cx: &Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.fired.load(Ordering::Acquire)
    }
}

/// The request body sent upstream: the client's body relayed frame by frame (that a
/// [`Cancel`] can cut off), none, or one try's view of a body kept for replay.
#[derive(Debug)]
pub struct RequestBody(Kind);

#[derive(Debug)]
enum Kind {
    Direct(Direct),
    Empty,
    Replay(super::replay::Replay),
}

/// The client's body as it arrives (its trailers without any header weft reserves).
#[derive(Debug)]
pub struct Direct {
    inner: Received,
    cancel: Option<Arc<Cancel>>,
    /// Bytes received, for the access log.
    counted: Option<Arc<AtomicU64>>,
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl RequestBody {
    pub fn direct(inner: impl Into<Received>, cancel: Option<Arc<Cancel>>) -> Direct {
        Direct {
            inner: inner.into(),
            cancel,
            counted: None,
        }
    }

    pub fn empty() -> Self {
        RequestBody(Kind::Empty)
    }

    pub fn replay(r: super::replay::Replay) -> Self {
        RequestBody(Kind::Replay(r))
    }
}

impl Direct {
    /// Adds the bytes of each data frame to `counter`.
    pub fn counted(mut self, counter: Option<Arc<AtomicU64>>) -> Self {
        self.counted = counter;
        self
    }
}

impl From<Direct> for RequestBody {
    fn from(d: Direct) -> Self {
        RequestBody(Kind::Direct(d))
    }
}

impl Body for Direct {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(c) = &self.cancel
            && c.poll_fired(cx)
        {
            // An h2 CANCEL in the error: hyper resets the upstream stream with that code.
            return Poll::Ready(Some(Err(Box::new(h2::Error::from(h2::Reason::CANCEL)))));
        }
        let mut frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &mut frame {
            // Trailers are headers too: none weft reserves passes, in any spelling.
            if let Some(t) = f.trailers_mut() {
                super::headers::strip_reserved(t);
            } else if let (Some(n), Some(d)) = (&self.counted, f.data_ref()) {
                n.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.0 {
            Kind::Direct(d) => Pin::new(d).poll_frame(cx),
            Kind::Empty => Poll::Ready(None),
            Kind::Replay(r) => Pin::new(r).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Direct(d) => d.is_end_stream(),
            Kind::Empty => true,
            Kind::Replay(r) => r.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Direct(d) => d.size_hint(),
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Replay(r) => r.size_hint(),
        }
    }
}

/// A body received from a peer: hyper's (a downstream request's, an upstream HTTP/1.1
/// response's) or an h2 stream's (an upstream HTTP/2 response's).
#[derive(Debug)]
pub enum Received {
    Hyper(Incoming),
    H2(crate::http::http2::RecvBody),
}

impl Body for Received {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Received::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Received::H2(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Received::Hyper(b) => b.is_end_stream(),
            Received::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Received::Hyper(b) => b.size_hint(),
            Received::H2(b) => b.size_hint(),
        }
    }
}

impl From<Incoming> for Received {
    fn from(b: Incoming) -> Self {
        Received::Hyper(b)
    }
}
