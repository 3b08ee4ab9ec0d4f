//! Listeners, upstream connects, protocol detection, the IO wrappers they share, and mutual TLS
//! between sidecars ([`tls`]).

pub mod detect;
pub mod io;
pub mod tls;

use std::{net::SocketAddr, time::Duration};

use tokio::net::{TcpListener, TcpStream};

/// Why an upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {addr}: timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    /// This request waited on another's attempt to connect, which failed.
    #[error("{reason} (an attempt shared with concurrent requests)")]
    Shared { addr: SocketAddr, reason: String },
}

impl ConnectError {
    /// The `reason` label of `weft_upstream_connect_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                "refused"
            }
            ConnectError::Io { .. } => "io",
            ConnectError::Timeout { .. } => "timeout",
            ConnectError::Shared { .. } => "shared",
        }
    }
}

/// Binds a listener with the options a proxy wants (address reuse, a deep backlog).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Opens a TCP connection to an upstream endpoint, with `TCP_NODELAY` and keepalive probes.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout { addr, timeout })?
        .map_err(|source| ConnectError::Io { addr, source })?;
    set_stream_options(&stream);
    Ok(stream)
}

/// `TCP_NODELAY` (we write whole frames) and keepalive probes (to notice dead peers).
pub fn set_stream_options(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}
