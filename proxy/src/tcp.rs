//! Opaque TCP: bytes copied both ways until each side has closed, half-close included (a side
//! that finishes sending has its write half shut on the other connection; the other direction
//! keeps flowing).

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{
    access_log::{Entry, Flags},
    client::Pools,
    metrics::Direction,
};

/// Copy buffer per direction.
const BUF: usize = 32 * 1024;

/// Forwards `down` to `addr`: mutual TLS when it carries `identity` (and this proxy has one).
/// With the access log on, `log` is the connection's line, written when it ends.
pub async fn forward<I>(
    mut down: I,
    addr: SocketAddr,
    identity: Option<&Arc<str>>,
    pools: &Arc<Pools>,
    direction: Direction,
    log: Option<Box<Entry>>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = match pools
        .connect_upstream(addr, identity, crate::tls::Alpn::Opaque)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(direction = direction.as_str(), error = %e, "opaque connection failed");
            if let Some(mut l) = log {
                l.flags.set(Flags::UF);
                l.finish();
            }
            return;
        }
    };
    let upstream_start = log.as_ref().map(|l| l.started.elapsed());
    // Counted on each side, so that a connection that ends with an error (a reset) still says
    // what it carried, and which side failed.
    let (mut down, mut up) = (Counted::new(&mut down), Counted::new(&mut up));
    match tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, BUF, BUF).await {
        Ok((sent, received)) => {
            tracing::trace!(%addr, sent, received, "opaque connection closed")
        }
        Err(e) => tracing::debug!(%addr, error = %e, "opaque connection ended with an error"),
    }
    if let Some(mut l) = log {
        l.bytes_from_client = up.written;
        l.bytes_out = down.written;
        if down.failed {
            l.flags.set(Flags::DC);
        }
        if up.failed {
            l.flags.set(Flags::UC);
        }
        // For a connection: the time its upstream connection took to open.
        l.upstream_time = upstream_start;
        l.finish();
    }
}

/// One side of a copied connection: the bytes written to it, and whether any read or write
/// of it failed.
struct Counted<T> {
    io: T,
    written: u64,
    failed: bool,
}

impl<T> Counted<T> {
    fn new(io: T) -> Self {
        Counted {
            io,
            written: 0,
            failed: false,
        }
    }

    fn note<R>(&mut self, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if let Poll::Ready(Err(_)) = &r {
            self.failed = true;
        }
        r
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        this.note(r)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        let n = ready!(this.note(r))?;
        this.written += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.note(r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.note(r)
    }
}

#[cfg(test)]
mod tests;
