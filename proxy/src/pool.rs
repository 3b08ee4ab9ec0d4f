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
            h1: h1::Pool::new(cfg.http1_max_idle_per_endpoint),
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
        req: Request<Incoming>,
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

/// Milliseconds since the process's first use of the pool clock: cheap to store atomically.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}
