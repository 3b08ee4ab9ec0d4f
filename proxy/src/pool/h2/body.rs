//! Bodies on an upstream HTTP/2 stream: the response's, read from `h2` and handed back as
//! frames, and the request's, sent under the stream's flow control.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::http::body::{BoxError, RequestBody};

/// An upstream response's body: its DATA frames as they arrive (each one's flow-control window
/// given back as soon as it is handed on), then its trailers.
#[derive(Debug)]
pub struct ResponseBody {
    recv: RecvStream,
    data_done: bool,
    /// What `content-length` says is still to come.
    remaining: Option<u64>,
}

impl ResponseBody {
    pub fn new(recv: RecvStream, headers: &HeaderMap) -> Self {
        let remaining = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        ResponseBody {
            recv,
            data_done: false,
            remaining,
        }
    }
}

/// A reset with NO_ERROR ends a stream early without failing it (RFC 9113 §8.1: the server
/// has its answer and needs no more of the request).
fn end_or_fail<T>(e: h2::Error) -> Poll<Option<Result<T, BoxError>>> {
    if e.reason() == Some(h2::Reason::NO_ERROR) {
        Poll::Ready(None)
    } else {
        Poll::Ready(Some(Err(e.into())))
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
                Some(Err(e)) => return end_or_fail(e),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(t) => Poll::Ready(t.map(|t| Ok(Frame::trailers(t)))),
            Err(e) => end_or_fail(e),
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
/// the stream. It reads no more of the body than the stream's send window takes: a slow
/// upstream slows the client instead of filling the proxy's memory.
pub fn poll_send(
    body: &mut RequestBody,
    tx: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<()> {
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
                let _ = tx.send_data(Bytes::new(), true);
                return Poll::Ready(());
            }
        };
        match frame.into_data() {
            Ok(data) => {
                let eos = body.is_end_stream();
                if tx.send_data(data, eos).is_err() || eos {
                    return Poll::Ready(());
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = tx.send_trailers(trailers);
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// The reset code for a request body that failed: the h2 code it carries (a cancelled
/// downstream stream, the proxy's own deadline), else INTERNAL_ERROR.
fn reset_reason(e: &(dyn std::error::Error + 'static)) -> h2::Reason {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return r;
        }
        source = s.source();
    }
    h2::Reason::INTERNAL_ERROR
}
