//! HTTP/2 upstream connections: one per endpoint, shared by every request to it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http::{Request, Response};
use hyper::{body::Incoming, client::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{Clock, Pools, RequestBody};
use crate::{http::error::ProxyError, transport::ConnectError};

/// An endpoint, and the identity it must prove when the connection is mutual TLS.
type Key = (SocketAddr, Option<Arc<str>>);

#[derive(Debug)]
pub struct Pool {
    /// Read on every request, written only when an endpoint is first used or swept.
    slots: RwLock<HashMap<Key, Arc<Slot>>>,
    clock: Clock,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            slots: RwLock::default(),
            clock: Clock::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    sender: Mutex<Option<http2::SendRequest<RequestBody>>>,
    /// Held while connecting, so that concurrent requests share one new connection.
    connecting: tokio::sync::Mutex<()>,
    last_used_ms: AtomicU64,
    /// The last failed connect: when (pool clock) and why. Requests that were waiting while it
    /// ran fail with it instead of each trying again in turn (which would stack their waits).
    failed: Mutex<Option<(u64, Failure)>>,
}

/// Why a shared connect failed, kept so that its waiters fail the same way.
#[derive(Debug, Clone)]
enum Failure {
    Connect(String),
    Tls {
        reason: &'static str,
        message: String,
    },
}

impl Failure {
    fn of(e: &ProxyError) -> Failure {
        match e {
            ProxyError::Tls {
                reason, message, ..
            } => Failure::Tls {
                reason,
                message: message.clone(),
            },
            e => Failure::Connect(e.to_string()),
        }
    }

    fn error(self, addr: SocketAddr) -> ProxyError {
        match self {
            Failure::Connect(reason) => ConnectError::Shared { addr, reason }.into(),
            Failure::Tls { reason, message } => ProxyError::Tls {
                addr,
                reason,
                message: format!("{message} (an attempt shared with concurrent requests)"),
            },
        }
    }
}

impl Slot {
    fn live(&self) -> Option<http2::SendRequest<RequestBody>> {
        let s = self.sender.lock().expect("h2 slot lock");
        s.as_ref().filter(|s| !s.is_closed()).cloned()
    }
}

impl Pool {
    fn slot(&self, addr: SocketAddr, identity: Option<&Arc<str>>) -> Arc<Slot> {
        let key = (addr, identity.cloned());
        if let Some(s) = self.slots.read().expect("h2 pool lock").get(&key) {
            return s.clone();
        }
        let mut slots = self.slots.write().expect("h2 pool lock");
        slots.entry(key).or_default().clone()
    }

    async fn checkout(
        &self,
        pools: &Pools,
        addr: SocketAddr,
        identity: Option<&Arc<str>>,
    ) -> Result<(Arc<Slot>, http2::SendRequest<RequestBody>), ProxyError> {
        let slot = self.slot(addr, identity);
        slot.last_used_ms
            .store(self.clock.now_ms(), Ordering::Relaxed);
        if let Some(s) = slot.live() {
            return Ok((slot, s));
        }
        let waiting_since = self.clock.now_ms();
        let sender = {
            let _connecting = slot.connecting.lock().await;
            if let Some(s) = slot.live() {
                s
            } else {
                let failed = slot.failed.lock().expect("h2 slot lock").clone();
                if let Some((_, failure)) = failed.filter(|(at, _)| *at >= waiting_since) {
                    return Err(failure.error(addr));
                }
                // Boxed: connecting is rare, and its large state would otherwise be part of
                // every request's future.
                match Box::pin(connect(pools, addr, identity)).await {
                    Ok(sender) => {
                        *slot.sender.lock().expect("h2 slot lock") = Some(sender.clone());
                        *slot.failed.lock().expect("h2 slot lock") = None;
                        sender
                    }
                    Err(e) => {
                        let failure = (self.clock.now_ms(), Failure::of(&e));
                        *slot.failed.lock().expect("h2 slot lock") = Some(failure);
                        return Err(e);
                    }
                }
            }
        };
        Ok((slot, sender))
    }

    pub async fn send(
        &self,
        pools: &Pools,
        addr: SocketAddr,
        identity: Option<&Arc<str>>,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        // A pooled connection may have gone away (GOAWAY, reset) since it was checked; a request
        // it never took is sent again once on a fresh connection.
        for attempt in 0..2 {
            let (slot, mut sender) = self.checkout(pools, addr, identity).await?;
            // No longer waiting for a connection.
            req.extensions_mut().remove::<super::Pending>();
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
        let mut slots = self.slots.write().expect("h2 pool lock");
        slots.retain(|_, slot| {
            let fresh = slot.last_used_ms.load(Ordering::Relaxed) >= cutoff;
            fresh || slot.connecting.try_lock().is_err()
        });
    }
}

async fn connect(
    pools: &Pools,
    addr: SocketAddr,
    identity: Option<&Arc<str>>,
) -> Result<http2::SendRequest<RequestBody>, ProxyError> {
    let io = pools
        .connect_upstream(addr, identity, crate::transport::tls::Alpn::H2)
        .await?;
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
        .handshake(TokioIo::new(io))
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
    use clap::Parser;

    #[tokio::test(start_paused = true)]
    async fn shared_connection_expires_when_unused() {
        let pool = Pool::default();
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let (tx, _server) = testing::h2().await;
        let slot = pool.slot(addr, None);
        *slot.sender.lock().unwrap() = Some(tx);
        slot.last_used_ms
            .store(pool.clock.now_ms(), Ordering::Relaxed);
        assert!(pool.slot(addr, None).live().is_some());
        assert!(
            Arc::ptr_eq(&slot, &pool.slot(addr, None)),
            "one slot per endpoint"
        );

        tokio::time::advance(Duration::from_secs(30)).await;
        pool.sweep(Duration::from_secs(90));
        assert!(pool.slots.read().unwrap().contains_key(&(addr, None)));
        tokio::time::advance(Duration::from_secs(61)).await;
        pool.sweep(Duration::from_secs(90));
        assert!(
            !pool.slots.read().unwrap().contains_key(&(addr, None)),
            "unused for 91 s"
        );
    }

    #[tokio::test]
    async fn waiting_requests_share_a_failed_connect() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let metrics = crate::metrics::Metrics::new();
        let cfg = crate::config::Cli::parse_from(["weft-proxy"]).run.upstream;
        let pools = Pools::new(cfg, metrics.clone(), crate::metrics::Direction::Outbound);
        let attempts = (0..5).map(|_| pools.h2.checkout(&pools, addr, None));
        let results = futures_util::future::join_all(attempts).await;
        let errors: Vec<String> = results
            .into_iter()
            .map(|r| r.expect_err("nothing listens there").to_string())
            .collect();
        assert_eq!(
            errors.iter().filter(|e| e.contains("shared with")).count(),
            4,
            "{errors:?}"
        );
        let text = metrics.render();
        assert!(
            text.contains(
                r#"weft_upstream_connect_errors_total{direction="outbound",reason="refused"} 1"#
            ),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_connection_is_not_live() {
        let pool = Pool::default();
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let (tx, server) = testing::h2().await;
        let slot = pool.slot(addr, None);
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
