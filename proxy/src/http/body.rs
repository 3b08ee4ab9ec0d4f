//! The response body the proxy sends downstream: the upstream's body relayed frame by frame as
//! it arrives (never buffered whole), or a small body the proxy generated itself.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
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

use crate::grpc;
use crate::metrics::TargetMetrics;

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

/// Counts a request's response in metrics once it is over: at its end of stream, at its
/// trailers, or when it is dropped unfinished (a reset or cancelled stream). Made as soon as a
/// request is routed, so a request the client abandons before any response counts too: as
/// status 499 (nginx's "client closed request"), gRPC status 1 CANCELLED.
#[derive(Debug)]
pub struct Observer {
    metrics: Arc<TargetMetrics>,
    status: u16,
    /// Whether the request was gRPC.
    grpc: bool,
    /// grpc-status from the response headers (trailers-only responses).
    header_status: Option<u32>,
    done: bool,
}

impl Observer {
    pub fn new(metrics: Arc<TargetMetrics>, grpc: bool) -> Self {
        Observer {
            metrics,
            status: 499,
            grpc,
            header_status: grpc.then_some(grpc::CANCELLED),
            done: false,
        }
    }

    /// The response's head has been sent downstream.
    pub fn response_head(&mut self, status: u16, headers: &HeaderMap) {
        self.status = status;
        self.header_status = if self.grpc {
            grpc::status(headers)
        } else {
            None
        };
    }

    fn finish(&mut self, trailer_status: Option<u32>) {
        if !self.done {
            self.done = true;
            let g = trailer_status.or(self.header_status);
            self.metrics
                .response(self.status, if self.grpc { g } else { None });
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.finish(None);
    }
}

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
                        }
                    }
                    Some(Err(_)) | None => {
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
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl RequestBody {
    pub fn direct(inner: impl Into<Received>, cancel: Option<Arc<Cancel>>) -> Direct {
        Direct {
            inner: inner.into(),
            cancel,
        }
    }

    pub fn empty() -> Self {
        RequestBody(Kind::Empty)
    }

    pub fn replay(r: super::replay::Replay) -> Self {
        RequestBody(Kind::Replay(r))
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
        // Trailers are headers too: none weft reserves passes, in any spelling.
        if let Some(Ok(f)) = &mut frame
            && let Some(t) = f.trailers_mut()
        {
            super::headers::strip_reserved(t);
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
