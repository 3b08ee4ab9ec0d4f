//! Listeners, upstream connects, protocol detection, and the IO wrappers they share. (Mutual
//! TLS between sidecars is [`crate::tls`].)

pub mod connect;
pub mod detect;
pub mod io;
pub mod local;
pub mod orig_dst;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::{Channel, Endpoint, Uri};

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

/// An IPv4 address in IPv6 clothing (`[::ffff:10.0.0.1]:80`, as a dual-stack listener reports
/// IPv4 callers) as the IPv4 address it is.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// `TCP_NODELAY` (we write whole frames) and keepalive probes (to notice dead peers).
pub fn set_stream_options(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// A gRPC channel to the control plane (xDS or the CA). `https://` URLs are TLS, verified with
/// `tls` (the mesh trust bundle and the host name dialled); `http://` (or no scheme) is
/// plaintext, for local development.
pub async fn grpc_channel(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Channel, String> {
    let (secure, rest) = match url.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        Some((other, _)) => return Err(format!("`{url}`: unknown scheme `{other}`")),
        None => (false, url),
    };
    // tonic is given the plaintext form; TLS is done here, by the connector.
    let endpoint = Endpoint::from_shared(format!("http://{rest}"))
        .map_err(|e| format!("`{url}`: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    if !secure {
        return endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {url}: {}", error_chain(&e)));
    }
    let tls =
        tls.ok_or_else(|| format!("`{url}` is TLS: give the mesh trust bundle (--trust-bundle)"))?;
    let connector = tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        async move {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("cannot connect to {url}: {}", error_chain(&e)))
}

/// An error and its sources, `: `-separated (tonic's transport errors say little on their own).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener on loopback whose accept queue is full, so that the kernel drops further
    /// SYNs and a connection attempt gets no answer; the held connections come back with it.
    /// In real time: an attempt counts as unanswered only after 100 ms without one.
    async fn unanswering() -> (std::net::TcpListener, Vec<TcpStream>) {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        socket.listen(0).expect("listen");
        let listener: std::net::TcpListener = socket.into();
        let addr = listener.local_addr().expect("address");
        let mut held = Vec::new();
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await {
                Ok(s) => held.push(s.expect("connect while the queue has room")),
                Err(_) => {
                    assert!(!held.is_empty(), "the first attempt went unanswered");
                    return (listener, held);
                }
            }
        }
        panic!("the accept queue never filled");
    }

    #[tokio::test]
    async fn a_connect_that_gets_no_answer_times_out() {
        let (listener, _held) = unanswering().await;
        let addr = listener.local_addr().unwrap();
        // The queue is known full; the timeout itself runs in paused time.
        tokio::time::pause();
        let start = tokio::time::Instant::now();
        let err = connect(addr, Duration::from_millis(750)).await.unwrap_err();
        // (The timer wheel rounds a deadline up to its next millisecond.)
        let waited = start.elapsed().as_millis();
        assert!((750..=751).contains(&waited), "{waited} ms");
        assert_eq!(err.reason(), "timeout");
        assert_eq!(
            err.to_string(),
            format!("connect to {addr}: timed out after 750ms")
        );
    }
}
