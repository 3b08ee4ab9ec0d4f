//! Upstream connection pools, keyed by endpoint address and kept outside the routing table so a
//! table swap never drops a connection that is still wanted.
//!
//! HTTP/2: one multiplexed connection per endpoint. HTTP/1.1: idle connections kept per endpoint
//! up to a limit. Both close connections left unused for the idle timeout.

mod h1;
mod h2;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::{Request, Response, Version};
use hyper::body::Incoming;

pub use crate::http::body::RequestBody;

use crate::{
    config::UpstreamConfig,
    http::error::ProxyError,
    metrics::{Direction, Metrics},
    transport,
};

#[derive(Debug)]
pub struct Pools {
    h1: h1::Pool,
    h2: h2::Pool,
    cfg: UpstreamConfig,
    metrics: Arc<Metrics>,
    direction: Direction,
}

impl Pools {
    pub fn new(cfg: UpstreamConfig, metrics: Arc<Metrics>, direction: Direction) -> Arc<Self> {
        let pools = Arc::new(Pools {
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

    /// Sends `req` to the endpoint at `addr`, in the request's HTTP version. An `upgrade`
    /// request gets a connection of its own that is never pooled.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<RequestBody>,
        upgrade: bool,
    ) -> Result<Response<Incoming>, ProxyError> {
        if req.version() == Version::HTTP_2 {
            self.h2.send(self, addr, req).await
        } else if upgrade {
            // Boxed: rare, and kept out of every other request's future.
            Box::pin(async {
                let sender = h1::connect(self, addr, true).await?;
                h1::send_once(sender, addr, req).await
            })
            .await
        } else {
            self.h1.send(self, addr, req).await
        }
    }

    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpStream, ProxyError> {
        transport::connect(addr, self.cfg.connect_timeout)
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
    pub async fn h2() -> (
        conn::http2::SendRequest<RequestBody>,
        tokio::task::JoinHandle<()>,
    ) {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let _ = server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), service_fn(ok))
                .await;
        });
        let (tx, conn) = conn::http2::handshake(TokioExecutor::new(), TokioIo::new(c))
            .await
            .unwrap();
        tokio::spawn(conn);
        (tx, server)
    }
}
