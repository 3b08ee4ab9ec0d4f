//! Bodies on an upstream HTTP/2 stream: the response's, read from `h2` and handed back as
//! frames, and the request's, sent under the stream's flow control.

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

/// An upstream response's body: its DATA frames as they arrive (each one's flow-control window
/// given back as soon as it is handed on), then its trailers.
#[derive(Debug)]
pub struct ResponseBody {
    recv: RecvStream,
    data_done: bool,
    ended: bool,
    /// What `content-length` says is still to come.
    remaining: Option<u64>,
    /// Fired when this response is dropped unfinished, so that the task still sending its
    /// request body resets the stream instead of holding it open.
    abandoned: Option<Arc<Cancel>>,
}

impl ResponseBody {
    pub fn new(recv: RecvStream, headers: &HeaderMap, abandoned: Option<Arc<Cancel>>) -> Self {
        let remaining = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        ResponseBody {
            recv,
            data_done: false,
            ended: false,
            remaining,
            abandoned,
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

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(a) = &self.abandoned
            && !self.ended
        {
            a.fire();
        }
    }
}

impl Body for ResponseBody {
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

/// Sends `body` on `tx` until it ends, fails (the stream is then reset), or the server resets
/// the stream, or `abandoned` fires (the stream is then reset with CANCEL). It reads
/// no more of the body than the stream's send window takes: a slow upstream slows the client
/// instead of filling the proxy's memory.
pub fn poll_send<B>(
    body: &mut B,
    tx: &mut SendStream<Bytes>,
    abandoned: Option<&Cancel>,
    cx: &mut Context<'_>,
) -> Poll<()>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    if abandoned.is_some_and(|a| a.poll_fired(cx)) {
        tx.send_reset(h2::Reason::CANCEL);
        return Poll::Ready(());
    }
    loop {
        // Room for at least a byte before the next frame is read; a frame larger than the
        // window waits in h2's send buffer.
        tx.reserve_capacity(1);
        if tx.capacity() == 0 {
            loop {
                match ready!(tx.poll_capacity(cx)) {
                    Some(Ok(0)) => {}
                    Some(Ok(_)) => break,
                    // The stream or the connection is gone.
                    Some(Err(_)) | None => return Poll::Ready(()),
                }
            }
        } else if let Poll::Ready(reason) = tx.poll_reset(cx) {
            tracing::debug!(
                ?reason,
                "upstream reset the stream; request body not sent on"
            );
            return Poll::Ready(());
        }
        let frame = match ready!(Pin::new(&mut *body).poll_frame(cx)) {
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
        // h2 refuses what it cannot send (trailers with a connection-specific field, data
        // after the stream closed): the stream is reset rather than left waiting for its end.
        match frame.into_data() {
            Ok(data) => {
                let eos = body.is_end_stream();
                if tx.send_data(data, eos).is_err() {
                    tx.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Poll::Ready(());
                }
                if eos {
                    return Poll::Ready(());
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    if tx.send_trailers(trailers).is_err() {
                        tx.send_reset(h2::Reason::INTERNAL_ERROR);
                    }
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// The reset code for a request body that failed: the h2 code it carries (a cancelled
/// downstream stream, the proxy's own deadline), else INTERNAL_ERROR.
fn reset_reason(e: &(dyn std::error::Error + 'static)) -> h2::Reason {
    crate::http::error::find_h2(e)
        .and_then(h2::Error::reason)
        .unwrap_or(h2::Reason::INTERNAL_ERROR)
}
