//! A request body kept for replay, so that a request can be retried or mirrored: the first
//! try reads the client's body and keeps a copy of what it read, up to a cap; a later try
//! sends the copy again and then goes on reading the client's body where the first left off.
//! Once the body outgrows the cap the copy is dropped and no later try may start.
//!
//! Tries take turns: each new try supersedes the last, whose body fails from then on (its
//! upstream stream is reset), so the client's body is only ever read by the newest try.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::body::{BoxError, Direct};

/// What every try of one request shares.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<State>,
    /// Wakes the mirror's copy when more of the body has arrived.
    mirror: AtomicWaker,
    size_hint: SizeHint,
}

#[derive(Debug)]
struct State {
    /// The client's body; `None` once it has ended or failed.
    inner: Option<Direct>,
    /// What has been read of it, while within the cap (copies: a kept frame never holds on
    /// to the buffer it was read into).
    chunks: Vec<Bytes>,
    /// The bytes kept, plus [`FRAME_COST`] a frame: what the cap bounds.
    len: usize,
    cap: usize,
    /// The body outgrew the cap: the copy is gone.
    capped: bool,
    trailers: Option<HeaderMap>,
    ended: bool,
    failed: bool,
    /// The try that may read the client's body.
    current: u32,
}

/// A try's (or the mirror's) view of the shared body.
#[derive(Debug)]
pub struct Replay {
    shared: Arc<Shared>,
    /// Which try this is; [`MIRROR`] only reads the copy.
    try_no: u32,
    /// Chunks of the copy already sent.
    pos: usize,
    trailers_sent: bool,
}

/// The mirror's try number: it never reads the client's body itself.
const MIRROR: u32 = u32::MAX;

/// What one kept frame costs against the cap besides its bytes: a body of many tiny frames
/// (65,536 one-byte frames) is capped as soon as one of a few large ones.
const FRAME_COST: usize = 64;

impl Shared {
    /// Keeps up to `cap` bytes of `inner` for replay.
    pub fn new(inner: Direct, cap: usize) -> Arc<Self> {
        let size_hint = inner.size_hint();
        Arc::new(Shared {
            state: Mutex::new(State {
                inner: Some(inner),
                chunks: Vec::new(),
                len: 0,
                cap,
                capped: false,
                trailers: None,
                ended: false,
                failed: false,
                current: 0,
            }),
            mirror: AtomicWaker::new(),
            size_hint,
        })
    }

    /// The first try's body.
    pub fn first(self: &Arc<Self>) -> Replay {
        Replay {
            shared: self.clone(),
            try_no: 0,
            pos: 0,
            trailers_sent: false,
        }
    }

    /// The next try's body, superseding every earlier one; `None` when the body can no longer
    /// be replayed (it outgrew the cap, or the client's body failed).
    pub fn next(self: &Arc<Self>) -> Option<Replay> {
        let mut s = self.state.lock().expect("replay lock");
        if s.capped || s.failed {
            return None;
        }
        s.current += 1;
        Some(Replay {
            shared: self.clone(),
            try_no: s.current,
            pos: 0,
            trailers_sent: false,
        })
    }

    /// Whether a later try could still send the whole body.
    pub fn replayable(&self) -> bool {
        let s = self.state.lock().expect("replay lock");
        !s.capped && !s.failed
    }

    /// The mirror's body: the copy, as it fills; it fails if the body outgrows the cap.
    pub fn mirror(self: &Arc<Self>) -> Replay {
        Replay {
            shared: self.clone(),
            try_no: MIRROR,
            pos: 0,
            trailers_sent: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ReplayError {
    #[error("a later try took over the request body")]
    Superseded,
    #[error("the request body outgrew the replay buffer")]
    Capped,
    #[error("the request body failed")]
    Failed,
}

impl Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let shared = this.shared.clone();
        let mut s = shared.state.lock().expect("replay lock");
        if this.try_no != MIRROR && this.try_no != s.current {
            return Poll::Ready(Some(Err(Box::new(ReplayError::Superseded))));
        }
        if this.try_no == MIRROR && s.capped {
            return Poll::Ready(Some(Err(Box::new(ReplayError::Capped))));
        }
        if !s.capped && this.pos < s.chunks.len() {
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(s.chunks[this.pos - 1].clone()))));
        }
        if s.ended {
            if !this.trailers_sent
                && let Some(t) = &s.trailers
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
            }
            return Poll::Ready(None);
        }
        if this.try_no == MIRROR {
            if s.failed {
                return Poll::Ready(Some(Err(Box::new(ReplayError::Failed))));
            }
            shared.mirror.register(cx.waker());
            return Poll::Pending;
        }
        let Some(inner) = s.inner.as_mut() else {
            return Poll::Ready(Some(Err(Box::new(ReplayError::Failed))));
        };
        let polled = Pin::new(inner).poll_frame(cx);
        let Poll::Ready(frame) = polled else {
            return Poll::Pending;
        };
        let out = match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if !s.capped {
                        let cost = data.len() + FRAME_COST;
                        if s.len + cost > s.cap {
                            s.capped = true;
                            s.chunks = Vec::new();
                        } else {
                            s.len += cost;
                            s.chunks.push(Bytes::copy_from_slice(data));
                            this.pos = s.chunks.len();
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    s.trailers = Some(t.clone());
                    s.ended = true;
                    s.inner = None;
                    this.trailers_sent = true;
                }
                Some(Ok(frame))
            }
            Some(Err(e)) => {
                s.failed = true;
                s.inner = None;
                Some(Err(e))
            }
            None => {
                s.ended = true;
                s.inner = None;
                None
            }
        };
        drop(s);
        shared.mirror.wake();
        Poll::Ready(out)
    }

    fn is_end_stream(&self) -> bool {
        let s = self.shared.state.lock().expect("replay lock");
        s.ended
            && (s.capped || self.pos >= s.chunks.len())
            && (self.trailers_sent || s.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.shared.size_hint
    }
}

#[cfg(test)]
mod tests;
