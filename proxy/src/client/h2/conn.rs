//! One HTTP/2 connection to an endpoint: the `h2` handshake, the task that drives the
//! connection, and its keepalive PINGs.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    client::Pools,
    http::http2::body::{OpenStreams, StreamSlot},
    http::http2::keepalive::{Reads, keep_alive},
    http::{MAX_FRAME, STREAM_WINDOW, error::ProxyError},
};

/// What the client side of HTTP/2 allows itself before the server's SETTINGS arrive (RFC 9113
/// §6.5.2 recommends servers allow at least 100 concurrent streams).
const INITIAL_MAX_SEND_STREAMS: usize = 100;
/// The most response header bytes accepted (as HPACK counts them).
const MAX_HEADER_LIST: u32 = 64 * 1024;
/// What a stream may hold of its request body not yet sent (flow control permitting).
const MAX_SEND_BUFFER: usize = 1 << 20;
/// The connection's receive window: 64 streams' windows (1 MiB each, `STREAM_WINDOW`). The
/// connection is shared by every caller of the endpoint: with 4 MiB, four responses nobody
/// reads (a client that stopped reading) used it all up and every other caller's response
/// stopped with them; now it takes 64. It also bounds what one upstream connection can make
/// the proxy hold unread: 64 MiB. (A client holding 64 unread streams to one endpoint still
/// stalls it; a second connection per endpoint, or a budget per downstream connection, is the
/// remedy, left to the client rebuild.)
const CONN_WINDOW: u32 = 64 << 20;

/// A handle on one upstream connection, cheap to clone: every request to the endpoint opens its
/// stream through one.
#[derive(Debug, Clone)]
pub struct Conn {
    send: SendRequest<Bytes>,
    /// Set when the connection's task has ended (closed, failed, or a keepalive went
    /// unanswered).
    closed: Arc<AtomicBool>,
    /// The streams open on it, against the server's limit: a request takes a place before its
    /// stream is made, so no stream ever waits in h2's own queue (a stream given up on there
    /// is still sent once a place frees, then reset: the upstream would get a request its
    /// client was told failed).
    streams: Arc<OpenStreams>,
}

impl Conn {
    /// Whether new streams can still be opened: the connection is up and has not been told to
    /// go away.
    pub fn is_open(&mut self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        // A handle that has never queued a stream is never told to wait: this only reads the
        // connection's error state.
        let mut cx = Context::from_waker(Waker::noop());
        !matches!(self.send.poll_ready(&mut cx), Poll::Ready(Err(_)))
    }

    pub fn sender(&mut self) -> &mut SendRequest<Bytes> {
        &mut self.send
    }

    /// A place for one more stream, if the connection has one under the server's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` (100 until the server's SETTINGS arrive).
    pub fn try_slot(&self) -> Option<StreamSlot> {
        let max = self.send.current_max_send_streams();
        self.streams
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot::counted(self.streams.clone()))
    }

    /// Waits for a place for one more stream.
    pub async fn slot(&self) -> StreamSlot {
        loop {
            let freed = self.streams.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(s) = self.try_slot() {
                // The server may have raised its limit: let the next waiter look too.
                self.streams.freed.notify_one();
                return s;
            }
            freed.await;
        }
    }
}

/// Connects to the endpoint (mutual TLS when it has an identity) and starts HTTP/2 on it.
pub async fn connect(
    pools: &Pools,
    addr: SocketAddr,
    identity: Option<&Arc<str>>,
) -> Result<Conn, ProxyError> {
    let io = pools
        .connect_upstream(addr, identity, crate::tls::Alpn::H2)
        .await?;
    let cfg = &pools.cfg;
    let keepalive = (!cfg.http2_keepalive_interval.is_zero())
        .then_some((cfg.http2_keepalive_interval, cfg.http2_keepalive_timeout));
    start(io, addr, keepalive).await
}

/// The HTTP/2 handshake on `io`, then a task that drives the connection (and PINGs it every
/// `keepalive.0`, giving it up when a PING is not answered within `keepalive.1`).
pub async fn start<T>(
    io: T,
    addr: SocketAddr,
    keepalive: Option<(Duration, Duration)>,
) -> Result<Conn, ProxyError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, reads) = Reads::new(io);
    let (send, mut conn) = h2::client::Builder::new()
        .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_reset_streams(1024)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| ProxyError::Upstream {
            addr,
            source: e.into(),
        })?;
    let closed = Arc::new(AtomicBool::new(false));
    let keepalive = keepalive.and_then(|(every, within)| Some((conn.ping_pong()?, every, within)));
    let ended = closed.clone();
    tokio::spawn(async move {
        let why = match keepalive {
            Some((ping, every, within)) => tokio::select! {
                r = &mut conn => r.err().map(|e| e.to_string()),
                e = keep_alive(ping, every, within, &reads) => Some(e),
            },
            None => conn.await.err().map(|e| e.to_string()),
        };
        ended.store(true, Ordering::Release);
        match why {
            Some(error) => tracing::debug!(%addr, %error, "upstream h2 connection ended"),
            None => tracing::debug!(%addr, "upstream h2 connection closed"),
        }
        // Dropping the connection fails whatever streams it still had.
    });
    Ok(Conn {
        send,
        closed,
        streams: Arc::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const PING: u8 = 6;

    fn addr() -> SocketAddr {
        "10.0.0.1:80".parse().unwrap()
    }

    /// An HTTP/2 server that sends its SETTINGS and then, every `chatter` if given, a PING of
    /// its own, and never answers anything. Returns the client's frames as (type, flags), once
    /// the client has closed the connection or `until` has passed.
    async fn mute_server(
        mut s: DuplexStream,
        chatter: Option<Duration>,
        until: Duration,
    ) -> Vec<(u8, u8)> {
        s.write_all(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        let end = tokio::time::Instant::now() + until;
        let mut next = chatter.map(|c| tokio::time::Instant::now() + c);
        let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
        loop {
            let wake = next.unwrap_or(end).min(end);
            tokio::select! {
                r = s.read(&mut chunk) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                },
                _ = tokio::time::sleep_until(wake) => {
                    if wake >= end {
                        break;
                    }
                    let ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00weftping";
                    s.write_all(ping).await.unwrap();
                    next = chatter.map(|c| wake + c);
                }
            }
        }
        // The client preface, then frames.
        let (mut at, mut frames) = (24, Vec::new());
        while at + 9 <= buf.len() {
            let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
            frames.push((buf[at + 3], buf[at + 4]));
            at += 9 + len;
        }
        frames
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_keepalive_ping_gives_the_connection_up() {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(mute_server(s, None, Duration::from_secs(600)));
        let keepalive = (Duration::from_secs(10), Duration::from_secs(5));
        let mut conn = start(c, addr(), Some(keepalive)).await.unwrap();
        assert!(conn.is_open());
        tokio::time::sleep(Duration::from_secs(14)).await;
        assert!(conn.is_open(), "no PING is overdue yet");
        // Idle from the server's SETTINGS on: a PING within 20 s, given up 5 s later.
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert!(!conn.is_open(), "no PING ack within 5 s of sending it");
        let frames = server.await.unwrap();
        assert!(frames.contains(&(PING, 0)), "{frames:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_is_receiving_is_not_pinged() {
        let (c, s) = tokio::io::duplex(64 * 1024);
        // Something arrives every 2 s, and the server answers no PING.
        let server = tokio::spawn(mute_server(
            s,
            Some(Duration::from_secs(2)),
            Duration::from_secs(60),
        ));
        let keepalive = (Duration::from_secs(10), Duration::from_secs(5));
        let mut conn = start(c, addr(), Some(keepalive)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert!(conn.is_open());
        let frames = server.await.unwrap();
        assert!(
            frames.contains(&(PING, 1)),
            "the server's PINGs were answered: {frames:?}"
        );
        assert!(
            !frames.contains(&(PING, 0)),
            "the client sent a PING: {frames:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answered_keepalive_pings_keep_the_connection() {
        let (c, s) = tokio::io::duplex(64 * 1024);
        // h2's server answers PINGs as long as its connection is polled.
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(s).await.unwrap();
            while conn.accept().await.is_some() {}
        });
        let keepalive = (Duration::from_secs(10), Duration::from_secs(5));
        let mut conn = start(c, addr(), Some(keepalive)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(conn.is_open(), "six PINGs answered");
    }
}
