//! Bodies on upstream HTTP/2 streams: the response's ([`RecvBody`]), read from `h2` and handed
//! on as frames, and the request's, sent ([`Sender`]) under the stream's flow control.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::http::body::{BoxError, Cancel};

/// The streams this proxy holds open on one upstream connection, counted against the server's
/// `SETTINGS_MAX_CONCURRENT_STREAMS` (`client/h2/conn.rs`).
#[derive(Debug, Default)]
pub struct OpenStreams {
    pub(crate) open: std::sync::atomic::AtomicUsize,
    pub(crate) freed: tokio::sync::Notify,
}

/// One stream's place on its connection, given back when dropped.
#[derive(Debug)]
pub struct StreamSlot(Arc<OpenStreams>);

impl StreamSlot {
    /// Stands for a place `streams` has already counted.
    pub(crate) fn counted(streams: Arc<OpenStreams>) -> Self {
        StreamSlot(streams)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

/// Who holds a stream's place: its response body alone, or that and the task still sending
/// the request body (streaming calls).
#[derive(Debug)]
pub enum Held {
    Alone(StreamSlot),
    Shared(Arc<StreamSlot>),
}

/// A received body: its DATA frames as they arrive (each one's flow-control window given back
/// as soon as it is handed on), then its trailers.
#[derive(Debug)]
pub struct RecvBody {
    recv: RecvStream,
    data_done: bool,
    ended: bool,
    /// What `content-length` says is still to come.
    remaining: Option<u64>,
    /// Fired when the response is dropped unfinished, so that the task still sending its
    /// request body resets the stream instead of holding it open.
    abandoned: Option<Arc<Cancel>>,
    /// The stream's place on its connection, until the body is done with.
    _slot: Held,
}

impl RecvBody {
    pub fn new(
        recv: RecvStream,
        headers: &HeaderMap,
        abandoned: Option<Arc<Cancel>>,
        slot: Held,
    ) -> Self {
        let remaining = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        RecvBody {
            recv,
            data_done: false,
            ended: false,
            remaining,
            abandoned,
            _slot: slot,
        }
    }

    /// A reset ends the body with an error, except a graceful one (NO_ERROR) once all the
    /// body `content-length` announced has arrived. (h2 already ends a body cleanly when the
    /// reset follows END_STREAM, RFC 9113 §8.1; a reset before it means the response was cut
    /// short.)
    fn reset(&mut self, e: h2::Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.ended = true;
        if e.reason() == Some(h2::Reason::NO_ERROR) && self.remaining == Some(0) {
            Poll::Ready(None)
        } else {
            Poll::Ready(Some(Err(e.into())))
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        if let Some(a) = &self.abandoned
            && !self.ended
        {
            a.fire();
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(r) = &mut this.remaining {
                        *r = r.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return this.reset(e),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(t) => {
                this.ended = true;
                Poll::Ready(t.map(|t| Ok(Frame::trailers(t))))
            }
            Err(e) => this.reset(e),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Sends a body on an HTTP/2 stream under the stream's flow control: one frame is read from
/// the body and held until the stream's send window takes it, so a slow reader on the far side
/// slows the body's source instead of filling the proxy's memory. The frame is read before any
/// window is claimed: a stream waiting on its source holds none of the connection's window
/// (a peer that sends WINDOW_UPDATE only once its window is spent would otherwise wait
/// forever).
#[derive(Debug)]
pub struct Sender {
    tx: SendStream<Bytes>,
    /// A DATA frame read but not yet sent, and whether it ends the stream.
    held: Option<(Bytes, bool)>,
}

impl Sender {
    pub fn new(tx: SendStream<Bytes>) -> Self {
        Sender { tx, held: None }
    }

    /// Sends `body` until it ends, fails (the stream is then reset with the failure's code),
    /// the peer resets the stream, or `abandoned` fires (the stream is then reset with
    /// CANCEL).
    pub fn poll_send<B>(
        &mut self,
        mut body: Pin<&mut B>,
        abandoned: Option<&Cancel>,
        cx: &mut Context<'_>,
    ) -> Poll<()>
    where
        B: Body<Data = Bytes, Error = BoxError> + ?Sized,
    {
        let tx = &mut self.tx;
        if abandoned.is_some_and(|a| a.poll_fired(cx)) {
            tx.send_reset(h2::Reason::CANCEL);
            return Poll::Ready(());
        }
        loop {
            if let Poll::Ready(reason) = tx.poll_reset(cx) {
                tracing::debug!(?reason, "the peer reset the stream; body not sent on");
                return Poll::Ready(());
            }
            if let Some((data, eos)) = self.held.take() {
                while tx.capacity() == 0 {
                    match tx.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(0))) => {}
                        Poll::Ready(Some(Ok(_))) => break,
                        // The stream or the connection is gone.
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                        Poll::Pending => {
                            self.held = Some((data, eos));
                            return Poll::Pending;
                        }
                    }
                }
                // h2 refuses what it cannot send (data after the stream closed): the stream is
                // reset rather than left waiting for its end.
                if tx.send_data(data, eos).is_err() {
                    tx.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Poll::Ready(());
                }
                if eos {
                    return Poll::Ready(());
                }
                continue;
            }
            let frame = match ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    tx.send_reset(reset_reason(&*e));
                    return Poll::Ready(());
                }
                None => {
                    if tx.send_data(Bytes::new(), true).is_err() {
                        tx.send_reset(h2::Reason::INTERNAL_ERROR);
                    }
                    return Poll::Ready(());
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let eos = body.is_end_stream();
                    if data.is_empty() {
                        // Needs no window: an empty frame only ends the stream.
                        if !eos {
                            continue;
                        }
                        if tx.send_data(data, true).is_err() {
                            tx.send_reset(h2::Reason::INTERNAL_ERROR);
                        }
                        return Poll::Ready(());
                    }
                    // A claim on the window for the frame in hand; h2 raises it to the frame's
                    // length as it sends.
                    tx.reserve_capacity(1);
                    self.held = Some((data, eos));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        tx.reserve_capacity(0);
                        if tx.send_trailers(trailers).is_err() {
                            tx.send_reset(h2::Reason::INTERNAL_ERROR);
                        }
                        return Poll::Ready(());
                    }
                }
            }
        }
    }
}

/// The reset code for a body that failed: the h2 code it carries (a cancelled stream on the
/// other side, the proxy's own deadline), else INTERNAL_ERROR.
fn reset_reason(e: &(dyn std::error::Error + 'static)) -> h2::Reason {
    crate::http::error::find_h2(e)
        .and_then(h2::Error::reason)
        .unwrap_or(h2::Reason::INTERNAL_ERROR)
}
