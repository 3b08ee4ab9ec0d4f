//! One downstream HTTP connection (HTTP/1.1 or HTTP/2), served: each request is routed
//! (`route`: to the local application inbound; by the table to a service's route, backend and
//! endpoint outbound), made ready to send (`call`: deadlines, the body kept for retries and a
//! mirror), sent and retried through the pools (`send`), and answered with the upstream's
//! response or the proxy's own error (`call` again).
//!
//! This file holds the connection loop, the request's pipeline, and the types one stage hands
//! the next.

mod call;
mod route;
mod send;

use call::{fail, failed};

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::{body::Incoming, server::conn, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::{
    access_log::{AccessLog, Entry, Flags},
    balance::{EndpointState, Outcome},
    client::{Pools, Received, Waiter},
    clusters::Cluster,
    config::UpstreamConfig,
    drain::Drain,
    grpc,
    http::{
        CONN_WINDOW, MAX_FRAME, STREAM_WINDOW,
        body::{Cancel, Observer, ProxyBody, RequestBody},
        error::ProxyError,
        headers,
        http2::idle::{Streams, Tracked},
        replay, request,
    },
    inbound::{ORIG_PROTO_HEADER, PEER_IDENTITY_HEADER, Peer},
    metrics::{AuthzProtocol, Direction, OpenConn, TargetMetrics},
    resilience::{self, Limit},
    retry,
    table::{Protocol, Route, Service, SharedTable},
    trace::{self, Tracer},
};

/// How long an HTTP/1 client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a listener's requests go.
#[derive(Debug)]
pub enum Router {
    /// By the routing table: the request's authority, or one fixed service.
    Outbound {
        table: SharedTable,
        /// A listener bound to one service (`--outbound-tcp`): every request goes there.
        fixed: Option<Arc<str>>,
        /// Metrics for requests that match no service.
        unknown: Arc<TargetMetrics>,
        /// Metrics for captured requests to destinations outside the mesh, passed through.
        passthrough: Arc<TargetMetrics>,
    },
    /// To the local application.
    Inbound {
        forward: SocketAddr,
        metrics: Arc<TargetMetrics>,
        /// For the authorization policies of the services this workload serves.
        table: SharedTable,
    },
}

/// What routing needs to know of one accepted connection.
#[derive(Debug, Default)]
pub struct ConnInfo {
    /// Inbound: the caller.
    pub peer: Option<Peer>,
    /// Outbound: the client's address (what `sourceIp` hashing uses).
    pub client: Option<SocketAddr>,
    /// Captured traffic: where the client sent the connection.
    pub orig_dst: Option<SocketAddr>,
    /// Inbound captured traffic: the application for this connection (the original port), and
    /// its metrics.
    pub app: Option<(SocketAddr, Arc<TargetMetrics>)>,
}

/// Everything a listener's HTTP connections share.
#[derive(Debug)]
pub struct HttpProxy {
    pub direction: Direction,
    pub router: Router,
    pub pools: Arc<Pools>,
    pub cfg: UpstreamConfig,
    pub drain: Drain,
    /// The access log, when it is on.
    pub log: Option<&'static AccessLog>,
    /// The tracer, when tracing is on.
    pub tracer: Option<&'static Tracer>,
    /// Whether a request without an `x-request-id` gets one.
    pub request_id: bool,
}

/// Where one request goes.
struct Dest {
    addr: SocketAddr,
    /// The SPIFFE id the endpoint must prove (it is meshed).
    identity: Option<Arc<str>>,
    protocol: Protocol,
    timeout: Option<Duration>,
    metrics: Arc<TargetMetrics>,
    /// The balancer's view of the endpoint, when it is one of a cluster's.
    state: Option<Arc<EndpointState>>,
    /// Outbound requests routed by the table: where their policies come from.
    routed: Option<Routed>,
}

/// The route and backend an outbound request took.
struct Routed {
    svc: Arc<Service>,
    /// Into `svc.routes`; past the end means the default route.
    route: usize,
    cluster: Arc<Cluster>,
    /// Into the route's backends (the split's choice).
    backend: usize,
    /// The request's hash key, kept for a retry's pick.
    hash: Option<u64>,
}

impl Routed {
    fn route(&self) -> &Route {
        self.svc.route(self.route)
    }
}

impl Dest {
    /// What the access log says of where the request goes (before any retry moves it).
    fn describe(&self, e: &mut Entry) {
        e.upstream = Some(self.addr);
        e.upstream_identity = self.identity.clone();
        if let Some(r) = &self.routed {
            e.service = Some(r.svc.name.clone());
            e.route = Some(r.route().name.clone());
            e.backend = Some(r.cluster.name.clone());
        }
    }
}

/// Where a routed request goes, and what every answer to it needs; handed from stage to stage.
struct Routing {
    dest: Dest,
    routed: Option<Routed>,
    obs: Observer,
    is_grpc: bool,
    version: Version,
    /// The cluster's request-limit permit, once through the gate.
    held: Option<resilience::Permit>,
}

impl Routing {
    /// The proxy's own answer, counted in metrics.
    fn fail(self, e: ProxyError) -> Response<ProxyBody> {
        fail(e, self.is_grpc, self.obs, self.version)
    }
}

/// A request routed and counted, at its route's gate.
struct Admitted {
    req: Request<Received>,
    to: Routing,
    /// It asks for a protocol upgrade (read before its hop-by-hop fields went).
    upgrade: bool,
}

/// A request ready to be sent, and what its response needs.
struct Call {
    /// The first try (taken when it is sent).
    req: Option<Request<RequestBody>>,
    /// The head again, for retries and a mirror.
    head: Option<Head>,
    replay: Replay,
    to: Routing,
    upgrade: bool,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// When the wait for the response's head ends, and the error it ends with.
    deadline: Option<(Instant, ProxyError)>,
    /// Cuts the request body off at the deadline.
    cancel: Option<Arc<Cancel>>,
    grpc_budget: Option<Duration>,
    idle: Option<Duration>,
}

impl Call {
    /// The route's retry policy (an upgrade is never retried).
    fn retry(&self) -> Option<&retry::Retry> {
        retry_of(self.to.routed.as_ref(), self.upgrade)
    }
}

/// The retry policy of a request routed by `routed` (an upgrade is never retried).
fn retry_of(routed: Option<&Routed>, upgrade: bool) -> Option<&retry::Retry> {
    let policy = &routed?.route().policy;
    policy.retry.as_ref().filter(|_| !upgrade)
}

/// What later tries of a request send as its body.
enum Replay {
    /// The body is not kept: there is no later try.
    None,
    /// The request has no body.
    Empty,
    Kept(Arc<replay::Shared>),
}

/// How much of a request body is kept so that the request can be retried or mirrored.
pub const REPLAY_CAP: usize = 64 * 1024;
/// How long a mirrored request may take before it is given up.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);
/// Mirrored requests in flight at once, in the whole proxy: beyond, a request is not copied
/// (counted as a failed mirror), so a slow mirror never holds more bodies than this.
pub const MAX_MIRRORS_IN_FLIGHT: usize = 64;
static MIRRORS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_MIRRORS_IN_FLIGHT);

/// A request's method, target, version and headers, to send again.
#[derive(Clone)]
struct Head {
    method: http::Method,
    uri: http::Uri,
    version: Version,
    headers: http::HeaderMap,
}

impl HttpProxy {
    /// Serves one downstream connection until it closes, or until draining ends it gracefully
    /// (GOAWAY for HTTP/2, `Connection: close` after the current request for HTTP/1).
    /// `open` stands for the accepted connection in metrics; protocol upgrades keep it.
    /// `conn` is what is known of the connection (its caller, where it was sent).
    pub async fn serve<I>(
        self: Arc<Self>,
        io: I,
        http2: bool,
        open: Arc<OpenConn>,
        conn: Arc<ConnInfo>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        // HTTP/2: the connection's open streams, for its idle timeout. (An idle HTTP/1.1
        // connection is closed by its header read timeout.)
        let streams = http2.then(Streams::new);
        let idle = streams.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let stream = streams.as_ref().map(Streams::open);
            // A malformed HTTP/2 request is refused with a stream error and never forwarded.
            let refused = http2
                && request::malformed_h2(&req).is_some_and(|why| {
                    tracing::debug!(why, "malformed HTTP/2 request refused (PROTOCOL_ERROR)");
                    true
                });
            // Boxed: the request's state machine is several KiB, and hyper moves the future it
            // is given into a task of its own per HTTP/2 stream; one small allocation is
            // cheaper than the copies.
            let fut = (!refused).then(|| {
                Box::pin(
                    this.clone()
                        .handle(req.map(Received::Hyper), open.clone(), conn.clone()),
                )
            });
            async move {
                match fut {
                    Some(fut) => Ok(fut.await.map(|b| Tracked::new(b, stream))),
                    // hyper resets the stream with the reason it finds in the error.
                    None => Err(h2::Error::from(h2::Reason::PROTOCOL_ERROR)),
                }
            }
        });
        let io = TokioIo::new(io);
        let res = if http2 {
            let mut b = conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_concurrent_streams(self.cfg.http2_max_concurrent_streams)
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONN_WINDOW)
                .max_frame_size(MAX_FRAME)
                .max_send_buf_size(self.cfg.http2_stream_send_buffer as usize)
                .max_pending_accept_reset_streams(1024);
            if !self.cfg.http2_keepalive_interval.is_zero() {
                b.keep_alive_interval(self.cfg.http2_keepalive_interval)
                    .keep_alive_timeout(self.cfg.http2_keepalive_timeout);
            }
            let c = b.serve_connection(io, svc);
            let after = self.cfg.http2_idle_timeout;
            let idle = async {
                match idle {
                    Some(s) if !after.is_zero() => s.idle(after).await,
                    _ => std::future::pending().await,
                }
            };
            until_drained(c, |c| c.graceful_shutdown(), &self.drain, idle).await
        } else {
            let c = conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(io, svc)
                .with_upgrades();
            let idle = std::future::pending();
            until_drained(c, |c| c.graceful_shutdown(), &self.drain, idle).await
        };
        if let Err(e) = res {
            tracing::debug!(direction = self.direction.as_str(), error = %e, "downstream connection ended with an error");
        }
    }

    /// Serves one request: routed and counted, through its route's gate, sent (and retried),
    /// and answered with the upstream's response relayed or the proxy's own error.
    ///
    /// The stages between the two awaits are plain functions, and what one stage hands the
    /// next is moved inside a block: an async function's state machine keeps room for every
    /// local that is alive (even moved out of) across an await, and this future is made for
    /// every request.
    async fn handle(
        self: Arc<Self>,
        req: Request<Received>,
        open: Arc<OpenConn>,
        conn: Arc<ConnInfo>,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let mut call = {
            let mut admitted = match self.route(req, &conn, start) {
                Ok(a) => a,
                Err(rsp) => return *rsp,
            };
            // The route's gate: rate limits, then injected faults, then the cluster's request
            // limit (held until the response has ended).
            let to = &mut admitted.to;
            if let Some(r) = &to.routed {
                match self.admit(r, &to.dest.metrics, &mut to.obs).await {
                    Ok(permit) => to.held = permit,
                    Err(e) => return admitted.to.fail(e),
                }
            }
            match self.prepare(admitted, start) {
                Ok(call) => call,
                Err(rsp) => return *rsp,
            }
        };
        let tries = {
            let at = call.deadline.as_ref().map(|d| d.0);
            let req = call.req.take().expect("a call is sent once");
            let head = call.head.take();
            let retry = retry_of(call.to.routed.as_ref(), call.upgrade);
            let tries = self.send_with_retries(
                &call.to.dest,
                call.to.routed.as_ref(),
                call.to.is_grpc,
                retry,
                req,
                head,
                &call.replay,
                call.upgrade,
                at,
                call.to.obs.entry(),
            );
            Within::new(tries, at)
        };
        let res = tries.await;
        self.respond(call, res, open, start)
    }
}

/// Serves a downstream connection to its end; once the drain begins or `idle` resolves, it is
/// asked to finish gracefully (HTTP/2: GOAWAY; HTTP/1.1: close after the response in flight).
async fn until_drained<C: Future>(
    c: C,
    graceful_shutdown: impl FnOnce(Pin<&mut C>),
    drain: &Drain,
    idle: impl Future<Output = ()>,
) -> C::Output {
    tokio::pin!(c);
    tokio::select! {
        r = c.as_mut() => r,
        _ = drain.signaled() => {
            graceful_shutdown(c.as_mut());
            c.await
        }
        _ = idle => {
            tracing::debug!("idle downstream connection shut down");
            graceful_shutdown(c.as_mut());
            c.await
        }
    }
}

pin_project_lite::pin_project! {
    /// A future cut off at an optional deadline: `None` once the deadline has passed. One
    /// future for both cases, where `match` over `timeout_at(at, fut).await` and `fut.await`
    /// would hold the (large) request future twice in the enclosing state machine.
    struct Within<F> {
        #[pin]
        fut: F,
        // Polled outside the task's budget (as tokio's `Timeout` does): a future that spends
        // the budget must not hold its deadline back.
        #[pin]
        sleep: Option<tokio::task::Unconstrained<tokio::time::Sleep>>,
    }
}

impl<F: Future> Within<F> {
    fn new(fut: F, deadline: Option<Instant>) -> Self {
        Within {
            fut,
            sleep: deadline.map(|at| tokio::task::unconstrained(tokio::time::sleep_until(at))),
        }
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Some(v));
        }
        match this.sleep.as_pin_mut().map(|s| s.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::Within;

    #[tokio::test(start_paused = true)]
    async fn within_cuts_a_future_off_at_its_deadline_and_only_then() {
        let slow = tokio::time::sleep(Duration::from_secs(5));
        let at = Instant::now() + Duration::from_secs(2);
        assert_eq!(Within::new(slow, Some(at)).await, None);
        assert_eq!(
            Instant::now(),
            at,
            "cut off at the deadline, not before or after"
        );

        let quick = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            7
        };
        let at = Instant::now() + Duration::from_secs(2);
        assert_eq!(Within::new(quick, Some(at)).await, Some(7));

        // No deadline: the future runs to its end, however long.
        let long = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            8
        };
        assert_eq!(Within::new(long, None).await, Some(8));
    }
}
