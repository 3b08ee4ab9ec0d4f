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
    http::{CONN_WINDOW, MAX_FRAME, STREAM_WINDOW, error::ProxyError},
    pool::Pools,
};

/// What the client side of HTTP/2 allows itself before the server's SETTINGS arrive (RFC 9113
/// §6.5.2 recommends servers allow at least 100 concurrent streams).
const INITIAL_MAX_SEND_STREAMS: usize = 100;
/// The most response header bytes accepted (as HPACK counts them).
const MAX_HEADER_LIST: u32 = 64 * 1024;
/// What the connection may hold of request bodies not yet sent (flow control permitting).
const MAX_SEND_BUFFER: usize = 1 << 20;

/// A handle on one upstream connection, cheap to clone: every request to the endpoint opens its
/// stream through one.
#[derive(Debug, Clone)]
pub struct Conn {
    send: SendRequest<Bytes>,
    /// Set when the connection's task has ended (closed, failed, or a keepalive went
    /// unanswered).
    closed: Arc<AtomicBool>,
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
}

/// Connects to the endpoint (mutual TLS when it has an identity) and starts HTTP/2 on it.
pub async fn connect(
    pools: &Pools,
    addr: SocketAddr,
    identity: Option<&Arc<str>>,
) -> Result<Conn, ProxyError> {
    let io = pools
        .connect_upstream(addr, identity, crate::transport::tls::Alpn::H2)
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
                e = keep_alive(ping, every, within) => Some(e),
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
    Ok(Conn { send, closed })
}

/// PINGs the server every `every`; returns why the connection should be given up when one is
/// not answered within `within`.
async fn keep_alive(mut ping: h2::PingPong, every: Duration, within: Duration) -> String {
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(within, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return format!("keepalive PING failed: {e}"),
            Err(_) => return format!("keepalive PING not answered within {within:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const PING: u8 = 6;

    fn addr() -> SocketAddr {
        "10.0.0.1:80".parse().unwrap()
    }

    /// An HTTP/2 server that sends its SETTINGS and then never answers anything; returns the
    /// types of the frames it got, once the client has closed the connection.
    async fn mute_server(mut s: DuplexStream) -> Vec<u8> {
        s.write_all(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        // The client preface, then frames.
        let mut at = 24;
        let mut types = Vec::new();
        while at + 9 <= buf.len() {
            let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
            types.push(buf[at + 3]);
            at += 9 + len;
        }
        types
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_keepalive_ping_gives_the_connection_up() {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(mute_server(s));
        let keepalive = (Duration::from_secs(10), Duration::from_secs(5));
        let mut conn = start(c, addr(), Some(keepalive)).await.unwrap();
        assert!(conn.is_open());
        tokio::time::sleep(Duration::from_secs(14)).await;
        assert!(conn.is_open(), "the first PING is not yet overdue");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!conn.is_open(), "no PING ack within 5 s of sending it");
        let types = server.await.unwrap();
        assert!(types.contains(&PING), "{types:?}");
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
