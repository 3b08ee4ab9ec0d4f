//! How the proxy opens a connection to an endpoint: the seam between the pools and the network.
//!
//! In the proxy it is [`Tcp`]. Tests put in-memory upstreams behind it (a [`Conn::Memory`]
//! end of a `tokio::io::duplex`), so the pools, retries, timeouts and breakers above it run
//! in-process and in paused time. Everything above the connector (mutual TLS included) is the
//! code the proxy runs.

use std::{future::Future, net::SocketAddr, pin::Pin, time::Duration};

use tokio::{io::DuplexStream, net::TcpStream};

use super::ConnectError;

/// Opens connections to endpoints. A trait object shared by all of a direction's pools: a
/// connect is made once per connection, never per request, so its boxed future costs nothing
/// on the request path.
pub trait Connect: Send + Sync + std::fmt::Debug + 'static {
    /// A connection to `addr`, or why there is none within `timeout`.
    fn connect(&self, addr: SocketAddr, timeout: Duration) -> Connecting<'_>;
}

/// The future of one connect.
pub type Connecting<'a> = Pin<Box<dyn Future<Output = Result<Conn, ConnectError>> + Send + 'a>>;

/// The proxy's connector: TCP, with the options of [`super::connect()`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Tcp;

impl Connect for Tcp {
    fn connect(&self, addr: SocketAddr, timeout: Duration) -> Connecting<'_> {
        Box::pin(async move { super::connect(addr, timeout).await.map(Conn::Tcp) })
    }
}

/// A connection a connector made.
#[derive(Debug)]
pub enum Conn {
    Tcp(TcpStream),
    /// An in-memory upstream (tests).
    Memory(DuplexStream),
}

super::io::delegate_io!(Conn { Tcp, Memory });
