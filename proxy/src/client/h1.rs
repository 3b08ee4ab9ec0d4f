//! HTTP/1.1 upstream connections: one request at a time each, idle ones kept per endpoint.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, sync::Mutex, time::Duration};

use http::{Request, Response};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;

use super::{Clock, Pools, Received, RequestBody, Waiter};
use crate::http::error::ProxyError;

type Sender = http1::SendRequest<RequestBody>;

/// An endpoint, and the identity it must prove when the connection is mutual TLS: a connection
/// made for one is never handed to a request for the other.
type Key = (SocketAddr, Option<Arc<str>>);

#[derive(Debug)]
pub struct Pool {
    endpoints: Mutex<HashMap<Key, Endpoint>>,
    max_idle: usize,
    max_active: usize,
    clock: Clock,
}

/// One endpoint's HTTP/1.1 connections.
#[derive(Debug)]
struct Endpoint {
    /// Idle connections, most recently used last, with when they went idle.
    idle: Vec<(Sender, u64)>,
    /// One permit per connection carrying a request; requests beyond the limit wait.
    active: Arc<Semaphore>,
}

impl Pool {
    pub fn new(max_idle: usize, max_active: usize) -> Self {
        Pool {
            endpoints: Mutex::new(HashMap::new()),
            max_idle,
            max_active: max_active.max(1),
            clock: Clock::new(),
        }
    }

    fn permits(&self, key: &Key) -> Arc<Semaphore> {
        let mut eps = self.endpoints.lock().expect("h1 pool lock");
        let ep = eps.entry(key.clone()).or_insert_with(|| Endpoint {
            idle: Vec::new(),
            active: Arc::new(Semaphore::new(self.max_active)),
        });
        ep.active.clone()
    }

    fn checkout(&self, key: &Key) -> Option<Sender> {
        let mut eps = self.endpoints.lock().expect("h1 pool lock");
        let list = &mut eps.get_mut(key)?.idle;
        while let Some((s, _)) = list.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    fn checkin(&self, key: &Key, sender: Sender) {
        if self.max_idle == 0 {
            return;
        }
        let mut eps = self.endpoints.lock().expect("h1 pool lock");
        if let Some(ep) = eps.get_mut(key)
            && ep.idle.len() < self.max_idle
        {
            ep.idle.push((sender, self.clock.now_ms()));
        }
    }

    /// Sends `req` to `addr`, over mutual TLS when it must prove `identity`.
    pub async fn send(
        &self,
        pools: &Arc<Pools>,
        addr: SocketAddr,
        identity: Option<&Arc<str>>,
        mut req: Request<RequestBody>,
        wait: Waiter<'_>,
    ) -> Result<Response<Received>, ProxyError> {
        let key: Key = (addr, identity.cloned());
        // At the limit of connections in use, wait for one to come free, as a pending request
        // and for no longer than the pending timeout.
        let active = self.permits(&key);
        let permit = match active.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let _pending = wait.pending()?;
                let after = pools.cfg.pending_timeout;
                match tokio::time::timeout(after, active.acquire_owned()).await {
                    Ok(p) => p.expect("the semaphore is never closed"),
                    Err(_) => return Err(wait.timed_out(addr, after)),
                }
            }
        };
        // A pooled connection the server closed while idle hands the request back unsent; it is
        // then tried once on a new connection.
        let mut fresh = false;
        loop {
            let mut sender = match self.checkout(&key) {
                Some(s) => s,
                None => {
                    fresh = true;
                    // Waiting for a connection being made is pending too.
                    let _pending = wait.pending()?;
                    Box::pin(connect(pools, addr, identity, false)).await?
                }
            };
            match sender.try_send_request(req).await {
                Ok(rsp) => {
                    let rsp = rsp.map(Received::Hyper);
                    // The connection is reusable once this response's body has been read; until
                    // then it holds its permit.
                    let pools = pools.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        if sender.ready().await.is_ok() {
                            pools.h1.checkin(&key, sender);
                        }
                    });
                    return Ok(rsp);
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if !fresh => req = r,
                    _ => {
                        return Err(ProxyError::Upstream {
                            addr,
                            source: e.into_error().into(),
                        });
                    }
                },
            }
        }
    }

    /// Closes connections idle for longer than `idle`.
    pub fn sweep(&self, idle: Duration) {
        let cutoff = self.clock.now_ms().saturating_sub(idle.as_millis() as u64);
        let mut eps = self.endpoints.lock().expect("h1 pool lock");
        eps.retain(|_, ep| {
            ep.idle
                .retain(|(s, since)| *since >= cutoff && !s.is_closed());
            !ep.idle.is_empty() || ep.active.available_permits() < self.max_active
        });
    }
}

/// Opens a new HTTP/1.1 connection; `upgrades` lets it carry a protocol upgrade.
pub async fn connect(
    pools: &Pools,
    addr: SocketAddr,
    identity: Option<&std::sync::Arc<str>>,
    upgrades: bool,
) -> Result<Sender, ProxyError> {
    let io = pools
        .connect_upstream(addr, identity, crate::tls::Alpn::Http1)
        .await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ProxyError::Upstream {
            addr,
            source: e.into(),
        })?;
    tokio::spawn(async move {
        let res = if upgrades {
            conn.with_upgrades().await
        } else {
            conn.await
        };
        if let Err(e) = res {
            tracing::debug!(%addr, error = %e, "upstream http/1 connection ended");
        }
    });
    Ok(sender)
}

/// Sends one request on a connection of its own.
pub async fn send_once(
    mut sender: Sender,
    addr: SocketAddr,
    req: Request<RequestBody>,
) -> Result<Response<Received>, ProxyError> {
    sender
        .send_request(req)
        .await
        .map(|rsp| rsp.map(Received::Hyper))
        .map_err(|e| ProxyError::Upstream {
            addr,
            source: e.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::testing;

    fn addr() -> Key {
        ("10.0.0.1:80".parse().unwrap(), None)
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_at_most_max_idle() {
        let pool = Pool::new(2, 8);
        pool.permits(&addr());
        let mut servers = Vec::new();
        for _ in 0..3 {
            let (tx, server) = testing::h1().await;
            servers.push(server);
            pool.checkin(&addr(), tx);
        }
        assert!(pool.checkout(&addr()).is_some());
        assert!(pool.checkout(&addr()).is_some());
        assert!(pool.checkout(&addr()).is_none(), "only two were kept");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_expire_and_closed_ones_are_skipped() {
        let pool = Pool::new(8, 8);
        pool.permits(&addr());
        let (tx, _server) = testing::h1().await;
        pool.checkin(&addr(), tx);
        tokio::time::advance(Duration::from_secs(60)).await;
        pool.sweep(Duration::from_secs(90));
        assert!(
            pool.checkout(&addr()).is_some(),
            "60 s idle is within the 90 s timeout"
        );

        let (tx, _server) = testing::h1().await;
        pool.checkin(&addr(), tx);
        tokio::time::advance(Duration::from_secs(91)).await;
        pool.sweep(Duration::from_secs(90));
        assert!(pool.checkout(&addr()).is_none(), "swept after 91 s idle");

        let (tx, server) = testing::h1().await;
        pool.checkin(&addr(), tx);
        server.abort();
        let _ = server.await;
        // The client side notices the close once its connection task has run.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            pool.checkout(&addr()).is_none(),
            "a closed connection is not handed out"
        );
    }
}
