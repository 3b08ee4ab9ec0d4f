//! HTTP/2 upstream connections: one per endpoint, shared by every request to it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http::{Request, Response};
use hyper::{body::Incoming, client::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{Clock, Pools};
use crate::http::error::ProxyError;

#[derive(Debug)]
pub struct Pool {
    slots: Mutex<HashMap<SocketAddr, Arc<Slot>>>,
    clock: Clock,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            slots: Mutex::default(),
            clock: Clock::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    sender: Mutex<Option<http2::SendRequest<Incoming>>>,
    /// Held while connecting, so that concurrent requests share one new connection.
    connecting: tokio::sync::Mutex<()>,
    last_used_ms: AtomicU64,
}

impl Slot {
    fn live(&self) -> Option<http2::SendRequest<Incoming>> {
        let s = self.sender.lock().expect("h2 slot lock");
        s.as_ref().filter(|s| !s.is_closed()).cloned()
    }
}

impl Pool {
    fn slot(&self, addr: SocketAddr) -> Arc<Slot> {
        let mut slots = self.slots.lock().expect("h2 pool lock");
        slots.entry(addr).or_default().clone()
    }

    async fn checkout(
        &self,
        pools: &Pools,
        addr: SocketAddr,
    ) -> Result<(Arc<Slot>, http2::SendRequest<Incoming>), ProxyError> {
        let slot = self.slot(addr);
        slot.last_used_ms
            .store(self.clock.now_ms(), Ordering::Relaxed);
        if let Some(s) = slot.live() {
            return Ok((slot, s));
        }
        let sender = {
            let _connecting = slot.connecting.lock().await;
            match slot.live() {
                Some(s) => s,
                None => {
                    // Boxed: connecting is rare, and its large state would otherwise be part of every
                    // request's future.
                    let sender = Box::pin(connect(pools, addr)).await?;
                    *slot.sender.lock().expect("h2 slot lock") = Some(sender.clone());
                    sender
                }
            }
        };
        Ok((slot, sender))
    }

    pub async fn send(
        &self,
        pools: &Pools,
        addr: SocketAddr,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, ProxyError> {
        // A pooled connection may have gone away (GOAWAY, reset) since it was checked; a request
        // it never took is sent again once on a fresh connection.
        for attempt in 0..2 {
            let (slot, mut sender) = self.checkout(pools, addr).await?;
            match sender.try_send_request(req).await {
                Ok(rsp) => return Ok(rsp),
                Err(mut e) => match e.take_message() {
                    Some(r) if attempt == 0 => {
                        let mut s = slot.sender.lock().expect("h2 slot lock");
                        if s.as_ref().is_some_and(|s| s.is_closed()) {
                            *s = None;
                        }
                        req = r;
                    }
                    _ => {
                        return Err(ProxyError::Upstream {
                            addr,
                            source: e.into_error(),
                        });
                    }
                },
            }
        }
        unreachable!("the second attempt always returns")
    }

    /// Drops connections unused for `idle`; streams still open on them run to completion.
    pub fn sweep(&self, idle: Duration) {
        let cutoff = self.clock.now_ms().saturating_sub(idle.as_millis() as u64);
        let mut slots = self.slots.lock().expect("h2 pool lock");
        slots.retain(|_, slot| {
            let fresh = slot.last_used_ms.load(Ordering::Relaxed) >= cutoff;
            fresh || slot.connecting.try_lock().is_err()
        });
    }
}

async fn connect(
    pools: &Pools,
    addr: SocketAddr,
) -> Result<http2::SendRequest<Incoming>, ProxyError> {
    let tcp = pools.connect(addr).await?;
    let cfg = &pools.cfg;
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .initial_stream_window_size(super::super::http::STREAM_WINDOW)
        .initial_connection_window_size(super::super::http::CONN_WINDOW)
        .max_frame_size(super::super::http::MAX_FRAME)
        .max_concurrent_reset_streams(1024);
    if !cfg.http2_keepalive_interval.is_zero() {
        b.keep_alive_interval(cfg.http2_keepalive_interval)
            .keep_alive_timeout(cfg.http2_keepalive_timeout)
            .keep_alive_while_idle(true);
    }
    let (sender, conn) = b
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|source| ProxyError::Upstream { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "upstream h2 connection ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::testing;

    #[tokio::test(start_paused = true)]
    async fn shared_connection_expires_when_unused() {
        let pool = Pool::default();
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let (tx, _server) = testing::h2().await;
        let slot = pool.slot(addr);
        *slot.sender.lock().unwrap() = Some(tx);
        slot.last_used_ms
            .store(pool.clock.now_ms(), Ordering::Relaxed);
        assert!(pool.slot(addr).live().is_some());
        assert!(
            Arc::ptr_eq(&slot, &pool.slot(addr)),
            "one slot per endpoint"
        );

        tokio::time::advance(Duration::from_secs(30)).await;
        pool.sweep(Duration::from_secs(90));
        assert!(pool.slots.lock().unwrap().contains_key(&addr));
        tokio::time::advance(Duration::from_secs(61)).await;
        pool.sweep(Duration::from_secs(90));
        assert!(
            !pool.slots.lock().unwrap().contains_key(&addr),
            "unused for 91 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_connection_is_not_live() {
        let pool = Pool::default();
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let (tx, server) = testing::h2().await;
        let slot = pool.slot(addr);
        *slot.sender.lock().unwrap() = Some(tx);
        assert!(slot.live().is_some());
        server.abort();
        let _ = server.await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(slot.live().is_none());
    }
}
