//! HTTP/2 keepalive: a PING once a connection has been quiet for an interval, and the
//! connection given up when the PING is not answered in time. A connection that is receiving is
//! alive, and its PING could wait behind a window's worth of DATA: only quiet connections are
//! PINGed.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// PINGs the peer once nothing has been read from it for `every`; returns why the connection
/// should be given up when a PING is not answered within `within`.
pub async fn keep_alive(
    mut ping: h2::PingPong,
    every: Duration,
    within: Duration,
    reads: &AtomicU64,
) -> String {
    let mut seen = reads.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(every).await;
        let now = reads.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            continue;
        }
        match tokio::time::timeout(within, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => seen = reads.load(Ordering::Relaxed),
            Ok(Err(e)) => return format!("keepalive PING failed: {e}"),
            Err(_) => return format!("keepalive PING not answered within {within:?}"),
        }
    }
}

/// The connection's IO, counting reads that returned data (what keepalive watches).
pub struct Reads<T> {
    io: T,
    count: Arc<AtomicU64>,
}

impl<T> Reads<T> {
    /// `io`, and the count of its reads that returned data.
    pub fn new(io: T) -> (Self, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        (
            Reads {
                io,
                count: count.clone(),
            },
            count,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Reads<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Reads<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
