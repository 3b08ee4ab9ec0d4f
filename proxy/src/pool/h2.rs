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
    http::{body::BoxError, error::ProxyError},
    http2::{RecvBody, Sender, body::Held},
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
mod tests {
    use super::*;
    use crate::pool::{RequestBody, testing};
    use clap::Parser;

    /// Outbound pools with the default upstream settings.
    fn pools() -> Arc<Pools> {
        let cfg = crate::config::Cli::parse_from(["weft-proxy"]).run.upstream;
        let metrics = crate::metrics::Metrics::new();
        Pools::new(cfg, metrics, crate::metrics::Direction::Outbound)
    }

    fn test_target(pools: &Pools) -> Arc<crate::metrics::TargetMetrics> {
        let name: Arc<str> = "echo:80".into();
        pools
            .metrics()
            .target(crate::metrics::Direction::Outbound, &name)
    }

    /// No cluster limit: waits bounded only by the pending timeout.
    fn waiter(target: &crate::metrics::TargetMetrics) -> Waiter<'_> {
        Waiter {
            metrics: target,
            cluster: None,
        }
    }

    /// An HTTP/2 GET with no body.
    fn get() -> Request<RequestBody> {
        Request::get("http://echo:80/")
            .version(http::Version::HTTP_2)
            .body(RequestBody::empty())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn shared_connection_expires_when_unused() {
        let pool = Pool::default();
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let (tx, _server) = testing::h2().await;
        let slot = pool.slot(addr, None);
        *slot.conn.lock().unwrap() = Some(tx);
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
        let pools = pools();
        let target = test_target(&pools);
        let attempts = (0..5).map(|_| pools.h2.checkout(&pools, addr, None, waiter(&target)));
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
        let text = pools.metrics().render();
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
        *slot.conn.lock().unwrap() = Some(tx);
        assert!(slot.live().is_some());
        server.abort();
        let _ = server.await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(slot.live().is_none());
    }

    /// An HTTP/2 server on `127.0.0.1:0` that reads the client's first frames and then answers
    /// with SETTINGS and `frame`, and closes.
    async fn answering_with(frame: &'static [u8]) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            // The preface, then frames up to the request's HEADERS (type 1).
            let (mut buf, mut chunk, mut at) = (Vec::new(), [0u8; 4096], 24);
            'headers: loop {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the client closed before sending its request");
                buf.extend_from_slice(&chunk[..n]);
                while at + 9 <= buf.len() {
                    if buf[at + 3] == 1 {
                        break 'headers;
                    }
                    at += 9 + u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
                }
            }
            s.write_all(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                .await
                .unwrap();
            s.write_all(frame).await.unwrap();
            let _ = s.read(&mut chunk).await;
        });
        addr
    }

    async fn refused_as(frame: &'static [u8]) -> Option<crate::traffic::Reason> {
        let addr = answering_with(frame).await;
        let pools = pools();
        let req = get();
        let e = pools
            .h2
            .send(&pools, addr, None, req, waiter(&test_target(&pools)))
            .await
            .expect_err("the server answers nothing");
        let on = weft_core::policy::RetryPolicy {
            on: vec!["refused-stream".into()],
            ..Default::default()
        };
        let why = e.unanswered()?;
        crate::traffic::Retry::compile(&on).unwrap().failure(why)
    }

    #[tokio::test]
    async fn streams_the_upstream_did_not_process_can_be_retried() {
        use crate::traffic::Reason::RefusedStream;
        // RST_STREAM(REFUSED_STREAM) on stream 1.
        let refused = b"\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x07";
        assert_eq!(refused_as(refused).await, Some(RefusedStream));
        // GOAWAY(last stream 0, NO_ERROR): stream 1 was never processed.
        let go_away = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
        assert_eq!(refused_as(go_away).await, Some(RefusedStream));
        // RST_STREAM(INTERNAL_ERROR): maybe processed; not a refusal.
        let reset = b"\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x02";
        assert_eq!(refused_as(reset).await, None);
    }

    #[tokio::test]
    async fn a_response_cut_short_by_a_reset_is_an_error() {
        use http_body_util::BodyExt;
        // HEADERS `:status: 200` (no END_STREAM), DATA "hi", then RST_STREAM(NO_ERROR).
        let frames = b"\x00\x00\x01\x01\x04\x00\x00\x00\x01\x88\
            \x00\x00\x02\x00\x00\x00\x00\x00\x01hi\
            \x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x00";
        let addr = answering_with(frames).await;
        let pools = pools();
        let req = get();
        let target = test_target(&pools);
        let rsp = pools
            .h2
            .send(&pools, addr, None, req, waiter(&target))
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
        let mut body = rsp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "hi");
        let end = body.frame().await.expect("not a clean end");
        assert!(end.is_err(), "{end:?}");
    }

    #[tokio::test]
    async fn dropping_an_unfinished_response_resets_a_request_still_uploading() {
        // An upstream that answers at once, then waits on the request body.
        let (c, s) = tokio::io::duplex(64 * 1024);
        let (upload_end, ended) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(s).await.unwrap();
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            tokio::spawn(async move {
                let _stream = respond
                    .send_response(http::Response::new(()), false)
                    .unwrap();
                let mut body = req.into_body();
                // The body's end: Some(reason) if it was reset, None if it ended cleanly.
                let mut end = None;
                while let Some(r) = body.data().await {
                    if let Err(e) = r {
                        end = e.reason();
                        break;
                    }
                }
                let _ = upload_end.send(end);
            });
            while conn.accept().await.is_some() {}
        });
        let pool = Pool::default();
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        *pool.slot(addr, None).conn.lock().unwrap() =
            Some(conn::start(c, addr, None).await.unwrap());
        let pools = pools();
        // A client upload that has sent one chunk and goes on (the sender stays open).
        let (chunks, rx) =
            tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, BoxError>>(1);
        chunks
            .send(Ok(http_body::Frame::data(bytes::Bytes::from_static(b"x"))))
            .await
            .unwrap();
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let req = Request::post("http://echo:80/upload")
            .version(http::Version::HTTP_2)
            .body(body)
            .unwrap();
        let target = test_target(&pools);
        let rsp = pool
            .send(&pools, addr, None, req, waiter(&target))
            .await
            .unwrap();
        drop(rsp);
        let reason = tokio::time::timeout(Duration::from_secs(10), ended)
            .await
            .expect("the upstream stream is reset, not left open")
            .unwrap();
        assert_eq!(reason, Some(h2::Reason::CANCEL));
        drop(chunks);
    }

    #[tokio::test]
    async fn a_connection_told_to_go_away_is_not_handed_out_again() {
        let (c, s) = tokio::io::duplex(64 * 1024);
        // An upstream that holds its first request unanswered (so the connection stays up),
        // answers the second, and then shuts down gracefully (GOAWAY).
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(s).await.unwrap();
            let _held = conn.accept().await.unwrap().unwrap();
            let (_req, mut respond) = conn.accept().await.unwrap().unwrap();
            respond
                .send_response(http::Response::new(()), true)
                .unwrap();
            conn.graceful_shutdown();
            while conn.accept().await.is_some() {}
        });
        let pool = Pool::default();
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let slot = pool.slot(addr, None);
        let mut up = conn::start(c, addr, None).await.unwrap();
        let held = Request::get("http://echo:80/held").body(()).unwrap();
        let _held = up.sender().send_request(held, true).unwrap();
        *slot.conn.lock().unwrap() = Some(up);
        let pools = pools();
        let req = get();
        let target = test_target(&pools);
        let rsp = pool
            .send(&pools, addr, None, req, waiter(&target))
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while slot.live().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the connection is still handed out after GOAWAY"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
