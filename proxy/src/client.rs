//! Upstream connection pools, keyed by endpoint address and kept outside the routing table so a
//! table swap never drops a connection that is still wanted.
//!
//! HTTP/2: one multiplexed connection per endpoint. HTTP/1.1: idle connections kept per endpoint
//! up to a limit. Both close connections left unused for the idle timeout.

mod h1;
mod h2;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::{Request, Response, Version};

pub use crate::http::body::{Received, RequestBody};

use crate::{
    clusters::Cluster,
    config::UpstreamConfig,
    http::error::ProxyError,
    identity::Mtls,
    metrics::{Direction, Metrics, TargetMetrics},
    resilience::{Limit, Permit},
    tls::{self, Alpn},
    transport::{
        connect::{Conn, Connect, Tcp},
        io::Upstream,
    },
};

/// A request that may have to wait for room at an endpoint: the target its waits are counted
/// under, and the cluster whose `maxPendingRequests` bounds how many wait at once. A unit of
/// that limit is taken only once the request has to wait (for a connection being made, a
/// connection of a full HTTP/1.1 pool, or a stream of a full HTTP/2 connection), so a request
/// that finds room at once costs nothing here.
#[derive(Debug, Clone, Copy)]
pub struct Waiter<'a> {
    pub metrics: &'a TargetMetrics,
    pub cluster: Option<&'a Cluster>,
}

impl Waiter<'_> {
    /// A unit of the cluster's pending-request limit, held while the request waits; at the
    /// limit, the refusal (counted).
    fn pending(self) -> Result<Option<Permit>, ProxyError> {
        match self.cluster {
            Some(c) => Ok(c.permit(Limit::Pending, self.metrics)?),
            None => Ok(None),
        }
    }

    /// The request waited `after` for room at `addr` in vain (counted).
    fn timed_out(self, addr: SocketAddr, after: Duration) -> ProxyError {
        self.metrics.pending_timeout();
        ProxyError::PendingTimeout { addr, after }
    }
}

#[derive(Debug)]
pub struct Pools {
    h1: h1::Pool,
    h2: h2::Pool,
    /// With a workload identity: connections to endpoints that carry one are mutual TLS.
    pub mtls: Option<Arc<Mtls>>,
    cfg: UpstreamConfig,
    metrics: Arc<Metrics>,
    direction: Direction,
    /// How connections are opened: TCP in the proxy, in-memory upstreams in tests.
    connector: Arc<dyn Connect>,
}

impl Pools {
    pub fn new(cfg: UpstreamConfig, metrics: Arc<Metrics>, direction: Direction) -> Arc<Self> {
        Self::with_mtls(cfg, metrics, direction, None)
    }

    pub fn with_mtls(
        cfg: UpstreamConfig,
        metrics: Arc<Metrics>,
        direction: Direction,
        mtls: Option<Arc<Mtls>>,
    ) -> Arc<Self> {
        Self::with_connector(cfg, metrics, direction, mtls, Arc::new(Tcp))
    }

    pub fn with_connector(
        cfg: UpstreamConfig,
        metrics: Arc<Metrics>,
        direction: Direction,
        mtls: Option<Arc<Mtls>>,
        connector: Arc<dyn Connect>,
    ) -> Arc<Self> {
        let pools = Arc::new(Pools {
            mtls,
            connector,
            h1: h1::Pool::new(
                cfg.http1_max_idle_per_endpoint,
                cfg.http1_max_connections_per_endpoint,
            ),
            h2: h2::Pool::default(),
            cfg,
            metrics,
            direction,
        });
        // Sweep idle connections out now and then; the task ends with the pools.
        let weak = Arc::downgrade(&pools);
        let every = (pools.cfg.idle_timeout / 2).max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(p) = weak.upgrade() else { return };
                p.h1.sweep(p.cfg.idle_timeout);
                p.h2.sweep(p.cfg.idle_timeout);
            }
        });
        pools
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether a connection to an endpoint with `identity` is mutual TLS.
    pub fn meshed(&self, identity: Option<&Arc<str>>) -> bool {
        identity.is_some() && self.mtls.is_some()
    }

    /// Sends `req` to the endpoint at `addr` (which must prove `identity`, if it has one), in
    /// the request's HTTP version, waiting for room there as `wait` allows. An `upgrade`
    /// request gets a connection of its own that is never pooled.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        identity: Option<&Arc<str>>,
        req: Request<RequestBody>,
        upgrade: bool,
        wait: Waiter<'_>,
    ) -> Result<Response<Received>, ProxyError> {
        let identity = identity.filter(|_| self.mtls.is_some());
        if req.version() == Version::HTTP_2 {
            self.h2.send(self, addr, identity, req, wait).await
        } else if upgrade {
            // Boxed: rare, and kept out of every other request's future.
            Box::pin(async {
                let sender = h1::connect(self, addr, identity, true).await?;
                h1::send_once(sender, addr, req).await
            })
            .await
        } else {
            self.h1.send(self, addr, identity, req, wait).await
        }
    }

    /// Connects to an endpoint: mutual TLS when it carries an identity (and this proxy has
    /// one), offering `alpn`; plain TCP otherwise.
    pub(crate) async fn connect_upstream(
        &self,
        addr: SocketAddr,
        identity: Option<&Arc<str>>,
        alpn: Alpn,
    ) -> Result<Upstream, ProxyError> {
        let tcp = self.connect(addr).await?;
        let (Some(mtls), Some(expected)) = (&self.mtls, identity) else {
            return Ok(Upstream::Plain(tcp));
        };
        let fail = |reason: &'static str, message: String| {
            self.metrics.tls.handshake(self.direction, reason);
            ProxyError::Tls {
                addr,
                reason,
                message,
            }
        };
        let Some(cfg) = mtls.client(expected, alpn) else {
            return Err(fail(
                "no_certificate",
                "this proxy holds no workload certificate yet".into(),
            ));
        };
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let handshake = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp);
        match tokio::time::timeout(self.cfg.connect_timeout, handshake).await {
            Ok(Ok(s)) => {
                self.metrics.tls.handshake(self.direction, "ok");
                Ok(Upstream::Tls(Box::new(s)))
            }
            Ok(Err(e)) => Err(fail(tls::failure_reason(&e), tls::describe(&e))),
            Err(_) => Err(fail(
                "timeout",
                format!("no handshake within {:?}", self.cfg.connect_timeout),
            )),
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, ProxyError> {
        self.connector
            .connect(addr, self.cfg.connect_timeout)
            .await
            .map_err(|e| {
                self.metrics.connect_error(self.direction, e.reason());
                ProxyError::Connect(e)
            })
    }
}

/// A pool's clock: milliseconds since the pool was made, cheap to store atomically. Tokio's
/// clock, so tests can run it in paused time.
#[derive(Debug, Clone, Copy)]
struct Clock(tokio::time::Instant);

impl Clock {
    fn new() -> Self {
        Clock(tokio::time::Instant::now())
    }

    fn now_ms(self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod testing {
    //! In-memory upstreams: a hyper server on the far end of a `duplex` pipe.

    use std::convert::Infallible;

    use hyper::{body::Incoming, client::conn, server, service::service_fn};

    use super::RequestBody;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    async fn ok(_req: http::Request<Incoming>) -> Result<http::Response<String>, Infallible> {
        Ok(http::Response::new(String::from("ok")))
    }

    /// An HTTP/1.1 connection to an in-memory server, and the server's task (abort it to close).
    pub async fn h1() -> (
        conn::http1::SendRequest<RequestBody>,
        tokio::task::JoinHandle<()>,
    ) {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let _ = server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), service_fn(ok))
                .await;
        });
        let (mut tx, conn) = conn::http1::handshake(TokioIo::new(c)).await.unwrap();
        tokio::spawn(conn);
        // As the pool sees them: checked in once ready for the next request.
        tx.ready().await.unwrap();
        (tx, server)
    }

    /// An HTTP/2 connection to an in-memory server, and the server's task.
    pub async fn h2() -> (super::h2::Conn, tokio::task::JoinHandle<()>) {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let _ = server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), service_fn(ok))
                .await;
        });
        let addr = "10.0.0.1:80".parse().unwrap();
        let conn = super::h2::conn::start(c, addr, None).await.unwrap();
        (conn, server)
    }
}
