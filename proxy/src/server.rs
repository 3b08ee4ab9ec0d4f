//! One listener's accept loop and the life of each accepted connection:
//! accept -> count -> detect -> HTTP proxy or opaque TCP.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::{TcpListener, TcpStream};

use crate::{
    config::DetectConfig,
    http::HttpProxy,
    metrics::{Metrics, OpenConn},
    table::{Protocol, SharedTable},
    tcp,
    transport::{
        self,
        detect::{self, Detected},
        io::{CountedIo, PrefixedIo},
    },
};

/// Where opaque TCP from a listener goes.
#[derive(Debug, Clone)]
pub enum TcpTarget {
    /// A fixed address (inbound: the local application).
    Addr(SocketAddr),
    /// An endpoint of a service in the table (an `--outbound-tcp` listener).
    Service(Arc<str>),
    /// Nowhere: such connections are closed (the plain outbound listener has no destination for
    /// non-HTTP traffic until transparent capture supplies the original one).
    None,
}

#[derive(Debug)]
pub struct Listener {
    pub http: Arc<HttpProxy>,
    pub tcp: TcpTarget,
    pub detect: DetectConfig,
    pub metrics: Arc<Metrics>,
    pub table: SharedTable,
}

impl Listener {
    /// Accepts until draining begins; then the listening socket is closed, so new connections
    /// are refused while accepted ones finish.
    pub async fn run(self: Arc<Self>, listener: TcpListener) {
        let drain = self.http.drain.clone();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = drain.signaled() => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let this = self.clone();
                    drain.spawn(async move { this.serve(stream, peer).await });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        drop(listener);
    }

    async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let direction = self.http.direction;
        let conns = self.metrics.conns(direction).clone();
        conns.accepted.inc();
        // Held by the connection and by any tunnel it upgrades into; the gauge drops when the
        // last of them ends.
        let open = Arc::new(OpenConn::new(conns.clone()));
        transport::set_stream_options(&stream);
        let mut io = CountedIo::new(stream, conns);
        let skip_detect = match &self.tcp {
            TcpTarget::Service(name) => self
                .table
                .load()
                .by_authority(name)
                .is_some_and(|s| s.protocol == Protocol::Tcp),
            _ => false,
        };
        let (detected, prefix) = if skip_detect {
            (
                Detected::Opaque(detect::OpaqueReason::NotHttp),
                Default::default(),
            )
        } else {
            match detect::detect(&mut io, &self.detect).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "connection failed during detection");
                    return;
                }
            }
        };
        self.metrics.conns(direction).detected(detected.label());
        tracing::trace!(%peer, ?detected, "protocol detected");
        let io = PrefixedIo::new(prefix, io);
        match detected {
            Detected::Http1 => self.http.clone().serve(io, false, open).await,
            Detected::Http2 => self.http.clone().serve(io, true, open).await,
            Detected::Tls | Detected::Opaque(_) => {
                let addr = match &self.tcp {
                    TcpTarget::Addr(a) => Some(*a),
                    TcpTarget::Service(name) => {
                        let table = self.table.load();
                        table
                            .by_authority(name)
                            .and_then(|s| s.default_route.backends.pick())
                            .and_then(|c| c.endpoints.pick())
                            .map(|e| e.addr)
                    }
                    TcpTarget::None => None,
                };
                match addr {
                    Some(addr) => tcp::forward(io, addr, &self.http.pools, direction).await,
                    None => tracing::debug!(%peer, "no destination for opaque connection; closing"),
                }
            }
        }
    }
}
