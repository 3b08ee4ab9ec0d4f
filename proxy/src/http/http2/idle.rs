//! Downstream HTTP/2 connections left with no open stream for `--http2-idle-timeout` are shut
//! down gracefully (GOAWAY). A stream counts as open from its request's arrival to the end of
//! its response body, so a long call keeps its connection; keepalive PINGs do not.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// One connection's open streams, and since when it has had none.
#[derive(Debug)]
pub struct Streams {
    open: AtomicU32,
    /// Milliseconds from `born` to when the last stream ended.
    idle_since_ms: AtomicU64,
    born: Instant,
}

impl Streams {
    pub fn new() -> Arc<Self> {
        Arc::new(Streams {
            open: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            born: Instant::now(),
        })
    }

    /// A stream opened; it is open until the guard is dropped.
    pub fn open(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }

    /// How long the connection has had no open stream; `None` while it has one.
    fn idle_for(&self) -> Option<Duration> {
        if self.open.load(Ordering::Acquire) != 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.born.elapsed().saturating_sub(since))
    }

    /// Resolves once the connection has had no open stream for `after`.
    pub async fn idle(&self, after: Duration) {
        loop {
            let wait = match self.idle_for() {
                Some(d) if d >= after => return,
                Some(d) => after - d,
                None => after,
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// An open stream.
#[derive(Debug)]
pub struct Open(Arc<Streams>);

impl Drop for Open {
    fn drop(&mut self) {
        let s = &self.0;
        // The clock is read only when the last stream ends.
        if s.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ms = s.born.elapsed().as_millis() as u64;
            s.idle_since_ms.store(ms, Ordering::Release);
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its stream counted as open until it has ended (or is
    /// dropped).
    #[derive(Debug)]
    pub struct Tracked<B> {
        #[pin]
        body: B,
        open: Option<Open>,
    }
}

impl<B> Tracked<B> {
    pub fn new(body: B, open: Option<Open>) -> Self {
        Tracked { body, open }
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_the_last_stream_ends() {
        let streams = Streams::new();
        let after = Duration::from_secs(60);
        let a = streams.open();
        let b = streams.open();
        let idle = streams.idle(after);
        tokio::pin!(idle);
        tokio::select! {
            _ = &mut idle => panic!("idle with two streams open"),
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
        drop(a);
        tokio::select! {
            _ = &mut idle => panic!("idle with a stream open"),
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
        drop(b);
        let closed_at = Instant::now();
        idle.await;
        assert_eq!(closed_at.elapsed(), after, "idle for exactly the timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_had_a_stream_is_idle_from_its_start() {
        let streams = Streams::new();
        let start = Instant::now();
        streams.idle(Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
