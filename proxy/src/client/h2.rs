//! HTTP/2 upstream connections: one per endpoint, shared by every request to it.
//!
//! Requests go to the `h2` crate directly rather than through hyper's client: hyper hands each
//! request to its connection task over a channel and spawns a task per request for the response
//! (and another for the body), which the HTTP/2 benchmark showed as a large part of the proxy's
//! CPU. Here the request's own task opens the stream and awaits the response; only a request
//! body still being sent when the response arrives gets a task of its own.

pub(super) mod conn;

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http::{Request, Response};

pub use self::conn::Conn;
use super::{Clock, Pools, Received, Waiter};
use crate::{
    http::http2::{RecvBody, Sender, body::Held},
    http::{body::BoxError, error::ProxyError},
    transport::ConnectError,
};

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
    conn: Mutex<Option<Conn>>,
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
    fn live(&self) -> Option<Conn> {
        let mut c = self.conn.lock().expect("h2 slot lock");
        let open = c.as_mut().is_some_and(Conn::is_open);
        if !open {
            *c = None;
        }
        c.clone()
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
        wait: Waiter<'_>,
    ) -> Result<Conn, ProxyError> {
        let slot = self.slot(addr, identity);
        slot.last_used_ms
            .store(self.clock.now_ms(), Ordering::Relaxed);
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        // Waiting for the connection to be made (by this request or another) is pending.
        let _pending = wait.pending()?;
        let waiting_since = self.clock.now_ms();
        let _connecting = slot.connecting.lock().await;
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        let failed = slot.failed.lock().expect("h2 slot lock").clone();
        if let Some((_, failure)) = failed.filter(|(at, _)| *at >= waiting_since) {
            return Err(failure.error(addr));
        }
        // Boxed: connecting is rare, and its large state would otherwise be part of every
        // request's future.
        match Box::pin(conn::connect(pools, addr, identity)).await {
            Ok(c) => {
                *slot.conn.lock().expect("h2 slot lock") = Some(c.clone());
                *slot.failed.lock().expect("h2 slot lock") = None;
                Ok(c)
            }
            Err(e) => {
                let failure = (self.clock.now_ms(), Failure::of(&e));
                *slot.failed.lock().expect("h2 slot lock") = Some(failure);
                Err(e)
            }
        }
    }

    /// Sends `req` on the endpoint's connection (made first if there is none) and waits for
    /// the response's head. The request body is sent alongside; what is left of it when the
    /// response arrives goes on in a task of its own (a streaming call's later messages).
    pub async fn send<B>(
        &self,
        pools: &Pools,
        addr: SocketAddr,
        identity: Option<&Arc<str>>,
        req: Request<B>,
        wait: Waiter<'_>,
    ) -> Result<Response<Received>, ProxyError>
    where
        B: http_body::Body<Data = bytes::Bytes, Error = BoxError> + Send + Unpin + 'static,
    {
        let upstream = |e: h2::Error| ProxyError::Upstream {
            addr,
            source: e.into(),
        };
        // The pooled connection may have gone away (GOAWAY, reset) since it was last used:
        // `checkout` only hands out one that can still open a stream, making a new one if not.
        let mut conn = self.checkout(pools, addr, identity, wait).await?;
        let (mut parts, mut body) = req.into_parts();
        let eos = http_body::Body::is_end_stream(&body);
        if let Some(len) = http_body::Body::size_hint(&body).exact()
            && (len != 0 || has_payload_semantics(&parts.method))
            && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
        {
            parts
                .headers
                .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        }
        // At the server's SETTINGS_MAX_CONCURRENT_STREAMS, wait for a stream to end before
        // making this one: as a pending request, for at most the pending timeout. The stream
        // is made only with a place, so one given up on is never sent.
        let slot = match conn.try_slot() {
            Some(s) => s,
            None => {
                let _pending = wait.pending()?;
                let after = pools.cfg.pending_timeout;
                match tokio::time::timeout(after, conn.slot()).await {
                    Ok(s) => s,
                    Err(_) => return Err(wait.timed_out(addr, after)),
                }
            }
        };
        let (mut response, tx) = conn
            .sender()
            .send_request(Request::from_parts(parts, ()), eos)
            .map_err(upstream)?;
        let (head, held, abandoned) = if eos {
            drop(tx);
            (response.await, Held::Alone(slot), None)
        } else {
            // The body is sent from this task while the response is awaited: most bodies
            // (unary calls, small POSTs) are done before the response comes.
            let mut sender = Sender::new(tx);
            let mut sending = true;
            let head = std::future::poll_fn(|cx| {
                if sending && sender.poll_send(Pin::new(&mut body), None, cx).is_ready() {
                    sending = false;
                }
                Pin::new(&mut response).poll(cx)
            })
            .await;
            if sending && head.is_ok() {
                // The rest goes on in a task of its own, until the body ends or the response
                // is dropped unfinished; the stream keeps its place until both are done.
                let abandon = Arc::new(crate::http::body::Cancel::default());
                let (shared, cancel) = (Arc::new(slot), abandon.clone());
                let place = shared.clone();
                tokio::spawn(std::future::poll_fn(move |cx| {
                    let _place = &place;
                    sender.poll_send(Pin::new(&mut body), Some(&cancel), cx)
                }));
                (head, Held::Shared(shared), Some(abandon))
            } else {
                (head, Held::Alone(slot), None)
            }
        };
        let rsp = head.map_err(upstream)?;
        let (parts, recv) = rsp.into_parts();
        let body = Received::H2(RecvBody::new(recv, &parts.headers, abandoned, held));
        Ok(Response::from_parts(parts, body))
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

/// Methods whose requests carry a body by definition: an empty one is sent as
/// `content-length: 0` (as hyper does).
fn has_payload_semantics(m: &http::Method) -> bool {
    !matches!(
        *m,
        http::Method::GET | http::Method::HEAD | http::Method::DELETE | http::Method::CONNECT
    )
}

#[cfg(test)]
mod tests;
