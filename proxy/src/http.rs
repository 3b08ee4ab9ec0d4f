//! The HTTP proxy: serves one downstream connection (HTTP/1.1 or HTTP/2), routes each request,
//! and relays it to an upstream endpoint through the pools.

pub mod body;
pub mod error;
pub mod headers;
pub mod replay;
pub(crate) mod request;

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

use self::{
    body::{Cancel, Observer, ProxyBody, RequestBody},
    error::ProxyError,
};
use crate::http2::idle::{Streams, Tracked};
use crate::{
    balance::{EndpointState, Outcome},
    config::UpstreamConfig,
    drain::Drain,
    grpc,
    inbound::{ORIG_PROTO_HEADER, PEER_IDENTITY_HEADER, Peer},
    metrics::{AuthzProtocol, Direction, OpenConn, TargetMetrics},
    pool::{Pools, Received, Waiter},
    table::{Cluster, Protocol, Route, Service, SharedTable},
    traffic::{self, Limit},
};

/// HTTP/2 flow-control windows: what one stream / one connection may have in flight before the
/// reader consumes it. They bound what the proxy buffers for a slow reader.
pub const STREAM_WINDOW: u32 = 1 << 20;
pub const CONN_WINDOW: u32 = 4 << 20;
pub const MAX_FRAME: u32 = 64 * 1024;
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
    /// The request's hash key, kept for a retry's pick.
    hash: Option<u64>,
}

impl Routed {
    fn route(&self) -> &Route {
        self.svc.route(self.route)
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
    held: Option<traffic::Permit>,
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
    fn retry(&self) -> Option<&traffic::Retry> {
        let policy = &self.to.routed.as_ref()?.route().policy;
        policy.retry.as_ref().filter(|_| !self.upgrade)
    }
}

/// What later tries of a request send as its body.
enum Replay {
    /// The body is not kept: there is no later try.
    None,
    /// The request has no body.
    Empty,
    Kept(Arc<replay::Shared>),
}

impl Replay {
    /// A later try's body, if the request can still be sent again.
    fn next(&self) -> Option<RequestBody> {
        match self {
            Replay::None => None,
            Replay::Empty => Some(RequestBody::empty()),
            Replay::Kept(s) => s.next().map(RequestBody::replay),
        }
    }
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

impl Head {
    fn of(parts: &http::request::Parts) -> Self {
        Head {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        }
    }

    fn request(self, body: RequestBody) -> Request<RequestBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }

    /// As Envoy marks a mirrored request: `-shadow` after the host, in the Host header and the
    /// authority.
    fn shadow(mut self) -> Self {
        if let Some(v) = self
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok()?.parse().ok())
            .and_then(|a| HeaderValue::from_str(shadow(&a).as_str()).ok())
        {
            self.headers.insert(http::header::HOST, v);
        }
        if let Some(a) = self.uri.authority() {
            let mut parts = self.uri.clone().into_parts();
            parts.authority = Some(shadow(a));
            if let Ok(u) = http::Uri::from_parts(parts) {
                self.uri = u;
            }
        }
        self
    }
}

/// `host[:port]` as `host-shadow[:port]`.
fn shadow(a: &http::uri::Authority) -> http::uri::Authority {
    let shadowed = match a.port() {
        Some(p) => format!("{}-shadow:{p}", a.host()),
        None => format!("{}-shadow", a.host()),
    };
    shadowed.parse().unwrap_or_else(|_| a.clone())
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

    /// Where requests that fail before routing are counted.
    fn fallback_metrics(&self) -> &Arc<TargetMetrics> {
        match &self.router {
            Router::Outbound { unknown, .. } => unknown,
            Router::Inbound { metrics, .. } => metrics,
        }
    }

    /// The inbound side's part of a request (whose reserved headers are gone already): the
    /// caller's identity header, authorization, and the HTTP version the application gets back
    /// when an HTTP/1 request crossed the mesh over HTTP/2 (`orig`, which only a caller that
    /// proved an identity can say). Returns that version's protocol.
    fn inbound<B>(
        &self,
        req: &mut Request<B>,
        peer: Option<&Peer>,
        is_grpc: bool,
        orig: Option<HeaderValue>,
    ) -> Result<Protocol, ProxyError> {
        let headers = req.headers_mut();
        let Router::Inbound { table, .. } = &self.router else {
            return Ok(Protocol::Http);
        };
        let orig = orig.filter(|_| peer.is_some_and(|p| p.id.is_some()));
        if let Some(peer) = peer {
            peer.requests.inc();
            if let Some(v) = &peer.header {
                headers.insert(PEER_IDENTITY_HEADER.clone(), v.clone());
            }
            if let Some(verdict) = peer.authorize(&table.load()) {
                self.pools.metrics().tls.authz(
                    if is_grpc {
                        AuthzProtocol::Grpc
                    } else {
                        AuthzProtocol::Http
                    },
                    verdict.is_ok(),
                );
                if let Err(service) = verdict {
                    return Err(ProxyError::Forbidden {
                        peer: peer
                            .id
                            .as_deref()
                            .unwrap_or("a plaintext caller")
                            .to_string(),
                        service,
                    });
                }
            }
        }
        Ok(match orig {
            Some(v) if v.as_bytes().starts_with(b"HTTP/1") => Protocol::Http1,
            _ => Protocol::Http,
        })
    }

    fn resolve(
        &self,
        req: &Request<Received>,
        conn: &ConnInfo,
    ) -> Result<Dest, (ProxyError, Arc<TargetMetrics>)> {
        match &self.router {
            Router::Inbound {
                forward, metrics, ..
            } => {
                let (addr, metrics) = conn
                    .app
                    .clone()
                    .unwrap_or_else(|| (*forward, metrics.clone()));
                Ok(Dest {
                    addr,
                    identity: None,
                    protocol: Protocol::Http,
                    timeout: None,
                    metrics,
                    state: None,
                    routed: None,
                })
            }
            Router::Outbound {
                table,
                fixed,
                unknown,
                passthrough,
            } => {
                let table = table.load();
                // Captured traffic: the service whose VIP the client dialled, else by authority.
                let by_vip = conn.orig_dst.and_then(|o| table.by_vip(o));
                let svc = match (fixed, by_vip) {
                    (Some(name), _) => table.by_authority(name),
                    (None, Some(svc)) => Some(svc),
                    (None, None) => match (request::authority(req), conn.orig_dst) {
                        (Some(authority), _) => table.by_authority(authority),
                        (None, Some(_)) => None,
                        (None, None) => return Err((ProxyError::NoAuthority, unknown.clone())),
                    },
                };
                // A captured request for a destination outside the mesh goes where it was sent.
                if let (None, Some(orig)) = (svc, conn.orig_dst) {
                    return Ok(Dest {
                        addr: orig,
                        identity: table.endpoint_identity(orig).cloned(),
                        protocol: Protocol::Http,
                        timeout: None,
                        metrics: passthrough.clone(),
                        state: None,
                        routed: None,
                    });
                }
                let Some(svc) = svc else {
                    let name = fixed
                        .as_deref()
                        .or_else(|| request::authority(req))
                        .unwrap_or("");
                    return Err((ProxyError::NoRoute(name.to_string()), unknown.clone()));
                };
                let (method, path, headers) = (req.method(), req.uri().path(), req.headers());
                let query = req.uri().query();
                let index = svc
                    .routes
                    .iter()
                    .position(|r| r.matches.matches(method, path, query, headers))
                    .unwrap_or(usize::MAX);
                let route = svc.route(index);
                let hash = route
                    .hash
                    .as_ref()
                    .and_then(|h| h.key(headers, conn.client));
                match route.target(hash, &svc.metrics) {
                    Some((cluster, ep)) => Ok(Dest {
                        addr: ep.addr,
                        identity: ep.identity,
                        protocol: svc.protocol,
                        timeout: route.timeout,
                        metrics: svc.metrics.clone(),
                        state: Some(ep.state),
                        routed: Some(Routed {
                            svc: svc.clone(),
                            route: index,
                            cluster: cluster.clone(),
                            hash,
                        }),
                    }),
                    None => Err((
                        ProxyError::NoEndpoints(svc.name.clone()),
                        svc.metrics.clone(),
                    )),
                }
            }
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
            let mut admitted = match self.route(req, &conn) {
                Ok(a) => a,
                Err(rsp) => return *rsp,
            };
            // The route's gate: rate limits, then injected faults, then the cluster's request
            // limit (held until the response has ended).
            let to = &mut admitted.to;
            if let Some(r) = &to.routed {
                match self.admit(r, &to.dest.metrics).await {
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
            let tries = self.send_with_retries(
                &call.to.dest,
                call.to.routed.as_ref(),
                call.to.is_grpc,
                call.retry(),
                req,
                head,
                &call.replay,
                call.upgrade,
                at,
            );
            Within::new(tries, at)
        };
        let res = tries.await;
        self.respond(call, res, open, start)
    }

    /// Routes a request and counts it; answers it at once when it cannot be routed or the
    /// inbound side refuses it.
    fn route(
        &self,
        mut req: Request<Received>,
        conn: &ConnInfo,
    ) -> Result<Admitted, Box<Response<ProxyBody>>> {
        let version = req.version();
        let is_grpc = grpc::is_grpc(req.headers());
        // Only allow-listed upgrades are tunnelled; any other offer is removed with the
        // hop-by-hop fields, and the request served as a plain one (the upgrade declined).
        let upgrade = version < Version::HTTP_2
            && headers::wants_upgrade(req.headers())
            && headers::upgrade_allowed(req.headers(), &self.cfg.http_upgrades);
        // Hop-by-hop fields go first, so that `Connection` can never name a header the sidecar
        // sets below (a message received over HTTP/2 has none).
        if version != Version::HTTP_2 {
            headers::strip_hop_by_hop(req.headers_mut(), upgrade);
        }
        // What a sending sidecar said of the application's protocol; then no header weft
        // reserves is left, in any spelling: the caller can neither forge nor remove one.
        let orig_proto = req.headers_mut().remove(&ORIG_PROTO_HEADER);
        headers::strip_reserved(req.headers_mut());
        if request::has_duplicate_host(&req) {
            let metrics = self.fallback_metrics();
            metrics.request();
            let e = ProxyError::BadRequest("more than one Host header");
            return Err(failed(
                e,
                is_grpc,
                Observer::new(metrics.clone(), is_grpc),
                version,
            ));
        }
        let mut dest = match self.resolve(&req, conn) {
            Ok(d) => d,
            Err((e, metrics)) => {
                metrics.request();
                return Err(failed(e, is_grpc, Observer::new(metrics, is_grpc), version));
            }
        };
        if self.direction == Direction::Inbound {
            match self.inbound(&mut req, conn.peer.as_ref(), is_grpc, orig_proto) {
                Ok(p) => dest.protocol = p,
                Err(e) => {
                    dest.metrics.request();
                    let obs = Observer::new(dest.metrics, is_grpc);
                    return Err(failed(e, is_grpc, obs, version));
                }
            }
        }
        dest.metrics.request();
        let obs = Observer::new(dest.metrics.clone(), is_grpc);
        let routed = dest.routed.take();
        Ok(Admitted {
            req,
            to: Routing {
                dest,
                routed,
                obs,
                is_grpc,
                version,
                held: None,
            },
            upgrade,
        })
    }

    /// Everything between the route's gate and sending: the upgrade, gRPC's deadline, the
    /// request's timeouts, keeping the body for retries and a mirror, and the cluster's
    /// pending-request limit. (What depends on the endpoint is decided per try.)
    fn prepare(&self, a: Admitted, start: Instant) -> Result<Call, Box<Response<ProxyBody>>> {
        let Admitted {
            mut req,
            to,
            upgrade,
        } = a;
        let dest = &to.dest;
        let route = to.routed.as_ref().map(Routed::route);
        let policy = route.map(|r| &r.policy);
        let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        // gRPC's own deadline bounds the whole call (cut to the route's maximum, and the
        // upstream told the shorter one); the route timeout bounds the wait for response
        // headers, retries included.
        let mut grpc_budget = to.is_grpc.then(|| grpc::timeout(req.headers())).flatten();
        if let (Some(g), Some(max)) = (grpc_budget, policy.and_then(|p| p.grpc_timeout_max))
            && g > max
        {
            grpc_budget = Some(max);
            req.headers_mut()
                .insert(grpc::TIMEOUT, grpc::encode_timeout(max));
        }
        // A stream idle timeout also bounds the wait for the response's headers.
        let idle = policy.and_then(|p| p.idle_timeout);
        let head_timeout = match (dest.timeout, idle) {
            (Some(t), Some(i)) => Some(t.min(i)),
            (t, i) => t.or(i),
        };
        // A deadline too far away to represent is no deadline.
        let deadline = match (head_timeout, grpc_budget) {
            (Some(t), Some(g)) if g < t => start
                .checked_add(g)
                .map(|at| (at, ProxyError::GrpcDeadline(g))),
            (Some(t), _) => start.checked_add(t).map(|at| (at, ProxyError::Timeout(t))),
            (None, Some(g)) => start
                .checked_add(g)
                .map(|at| (at, ProxyError::GrpcDeadline(g))),
            (None, None) => None,
        };
        // With a deadline, the request body can be cut off when it passes, which resets the
        // upstream stream even if the client is still sending.
        let cancel = deadline.is_some().then(|| Arc::new(Cancel::default()));
        let retry = policy.and_then(|p| p.retry.as_ref()).filter(|_| !upgrade);
        let mirror = policy
            .and_then(|p| p.mirror.as_ref())
            .filter(|m| !upgrade && traffic::chance(m.percent));
        let (parts, body) = req.into_parts();
        let direct = RequestBody::direct(body, cancel.clone());
        let keep = retry.is_some() || mirror.is_some();
        let (first, replay) = if !keep {
            (RequestBody::from(direct), Replay::None)
        } else if http_body::Body::is_end_stream(&direct) {
            (RequestBody::empty(), Replay::Empty)
        } else {
            let shared = replay::Shared::new(direct, REPLAY_CAP);
            (RequestBody::replay(shared.first()), Replay::Kept(shared))
        };
        let head = keep.then(|| Head::of(&parts));
        let req = Request::from_parts(parts, first);
        if let (Some(m), Some(head), Some(r)) = (mirror, &head, &to.routed) {
            self.mirror(m, head, &replay, dest.protocol, &r.svc.metrics);
        }
        if let Some(r) = &to.routed
            && retry.is_some()
        {
            r.svc.budget.deposit();
        }
        Ok(Call {
            req: Some(req),
            head,
            replay,
            to,
            upgrade,
            on_upgrade,
            deadline,
            cancel,
            grpc_budget,
            idle,
        })
    }

    /// The response to a call: the upstream's, relayed (with a protocol upgrade's tunnel set
    /// up), or the proxy's own error.
    fn respond(
        &self,
        call: Call,
        res: Option<(Result<Response<Received>, ProxyError>, u32)>,
        open: Arc<OpenConn>,
        start: Instant,
    ) -> Response<ProxyBody> {
        let retried = call.retry().is_some();
        let Call {
            to,
            on_upgrade,
            deadline,
            cancel,
            grpc_budget,
            idle,
            ..
        } = call;
        let (res, attempts) = match res {
            Some(res) => res,
            None => {
                if let Some(c) = &cancel {
                    c.fire();
                }
                let err = deadline
                    .map(|d| d.1)
                    .expect("only a deadline cuts the tries off");
                (Err(err), 0)
            }
        };
        to.dest.metrics.latency(start.elapsed().as_secs_f64());
        if retried && attempts > 0 {
            to.dest.metrics.attempts(attempts);
        }
        let mut rsp = match res {
            Ok(rsp) => rsp,
            Err(e) => {
                tracing::debug!(direction = self.direction.as_str(), addr = %to.dest.addr, error = %e, "request failed");
                return to.fail(e);
            }
        };
        let Routing {
            obs, version, held, ..
        } = to;
        let switching = rsp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching && on_upgrade.is_none() {
            // Switching to a protocol this request did not offer (or may not tunnel).
            return fail(
                ProxyError::UnexpectedUpgrade(to.dest.addr),
                to.is_grpc,
                obs,
                version,
            );
        }
        if let (Some(down), true) = (on_upgrade, switching) {
            let up = hyper::upgrade::on(&mut rsp);
            // The tunnel outlives this connection's HTTP serving: drain waits for it, and the
            // connection stays counted as open while it runs.
            self.drain.spawn(async move {
                let _open = open;
                match tokio::try_join!(down, up) {
                    Ok((down, up)) => {
                        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
        }
        // A response that arrived over HTTP/2 has none: h2 refuses a message carrying them.
        if rsp.version() != Version::HTTP_2 {
            headers::strip_hop_by_hop(rsp.headers_mut(), switching);
        }
        *rsp.version_mut() = version;
        let mut obs = obs;
        obs.response_head(rsp.status().as_u16(), rsp.headers());
        // After the headers only gRPC's deadline still runs (the route timeout is over).
        let body_deadline =
            grpc_budget.and_then(|b| Some((tokio::time::sleep_until(start.checked_add(b)?), b)));
        let cancel = if body_deadline.is_some() {
            cancel
        } else {
            None
        };
        rsp.map(|b| {
            ProxyBody::upstream(b, obs, body_deadline, cancel)
                .idle(idle)
                .hold(held)
        })
    }

    /// The route's gate, before anything is sent: the service's and the route's rate limits,
    /// injected faults, and the cluster's limit of concurrent requests (whose permit the
    /// response holds until it ends).
    async fn admit(
        &self,
        r: &Routed,
        metrics: &TargetMetrics,
    ) -> Result<Option<traffic::Permit>, ProxyError> {
        let route = r.route();
        let limited = |b: &Option<Arc<traffic::TokenBucket>>| b.as_ref().is_some_and(|b| !b.take());
        if limited(&r.svc.rate_limit) || limited(&route.policy.rate_limit) {
            metrics.rate_limited();
            return Err(ProxyError::RateLimited(r.svc.name.clone()));
        }
        if let Some(f) = &route.policy.fault {
            if let Some((percent, delay)) = f.delay
                && traffic::chance(percent)
            {
                metrics.fault(false);
                tokio::time::sleep(delay).await;
            }
            if let Some((percent, abort)) = f.abort
                && traffic::chance(percent)
            {
                metrics.fault(true);
                return Err(ProxyError::Fault(abort));
            }
        }
        Ok(r.cluster.permit(Limit::Requests, metrics)?)
    }

    /// Readies one try's request for the endpoint it goes to (the first try, a retry and a
    /// mirror alike; `req` is as it arrived, its hop-by-hop fields gone): to a meshed endpoint
    /// HTTP/2 over mutual TLS, saying so when the application speaks HTTP/1, for the far
    /// sidecar to restore; to any other, the service's protocol, and nothing meant for a
    /// sidecar.
    fn for_endpoint<B: http_body::Body>(
        &self,
        req: &mut Request<B>,
        identity: Option<&Arc<str>>,
        protocol: Protocol,
        upgrade: bool,
    ) -> Result<(), ProxyError> {
        let mut protocol = protocol;
        if !upgrade && self.pools.meshed(identity) {
            let app_http2 = match protocol {
                Protocol::Http1 => false,
                Protocol::Http2 => true,
                _ => req.version() == Version::HTTP_2,
            };
            if !app_http2 {
                req.headers_mut().insert(
                    ORIG_PROTO_HEADER.clone(),
                    HeaderValue::from_static("HTTP/1.1"),
                );
            }
            protocol = Protocol::Http2;
        }
        request::prepare(req, protocol, upgrade)?;
        request::keep_body(req);
        Ok(())
    }

    /// Sends a copy of the request to the mirror's cluster, in the background; its response is
    /// read and dropped.
    fn mirror(
        &self,
        m: &crate::table::Mirror,
        head: &Head,
        replay: &Replay,
        protocol: Protocol,
        metrics: &Arc<TargetMetrics>,
    ) {
        if matches!(replay, Replay::None) {
            return;
        }
        let Ok(permit) = MIRRORS.try_acquire() else {
            metrics.mirrored(false);
            return;
        };
        let body = match replay {
            Replay::Kept(s) => RequestBody::replay(s.mirror()),
            Replay::Empty => RequestBody::empty(),
            Replay::None => return,
        };
        let Some(ep) = m.cluster.pick(None, metrics) else {
            metrics.mirrored(false);
            return;
        };
        let (addr, identity, cluster) = (ep.addr, ep.identity, m.cluster.clone());
        let mut req = head.clone().shadow().request(body);
        if self
            .for_endpoint(&mut req, identity.as_ref(), protocol, false)
            .is_err()
        {
            metrics.mirrored(false);
            return;
        }
        let pools = self.pools.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let sent = async {
                let wait = Waiter {
                    metrics: &metrics,
                    cluster: Some(&cluster),
                };
                let rsp = pools
                    .send(addr, identity.as_ref(), req, false, wait)
                    .await
                    .ok()?;
                http_body_util::BodyExt::collect(rsp.into_body()).await.ok()
            };
            let answered = matches!(
                tokio::time::timeout(MIRROR_TIMEOUT, sent).await,
                Ok(Some(_))
            );
            metrics.mirrored(answered);
        });
    }

    /// Sends the request, and again while the route's retry policy, the body's replay buffer,
    /// the budget, the cluster's retry limit and the deadline allow. Returns the last try's
    /// result and how many tries were made.
    #[allow(clippy::too_many_arguments)]
    async fn send_with_retries(
        &self,
        dest: &Dest,
        routed: Option<&Routed>,
        is_grpc: bool,
        retry: Option<&traffic::Retry>,
        first: Request<RequestBody>,
        head: Option<Head>,
        replay: &Replay,
        upgrade: bool,
        deadline: Option<Instant>,
    ) -> (Result<Response<Received>, ProxyError>, u32) {
        let mut ep = (dest.addr, dest.identity.clone(), dest.state.clone());
        let mut req = first;
        let mut tries = 1;
        let mut _retry_permit = None;
        loop {
            // A request that cannot be put in this endpoint's form (an HTTP/1 request without
            // a host, for HTTP/2) fails as it is: nothing was sent, the endpoint is not to blame.
            if let Err(e) = self.for_endpoint(&mut req, ep.1.as_ref(), dest.protocol, upgrade) {
                return (Err(e), tries);
            }
            let in_flight = ep.2.as_ref().map(|s| s.start());
            let per_try = retry.and_then(|r| r.per_try_timeout);
            let res = {
                let wait = Waiter {
                    metrics: &dest.metrics,
                    cluster: routed.map(|r| &*r.cluster),
                };
                let sent = self.pools.send(ep.0, ep.1.as_ref(), req, upgrade, wait);
                // A timeout too long to represent is none.
                Within::new(sent, per_try.and_then(|t| Instant::now().checked_add(t)))
                    .await
                    .unwrap_or_else(|| Err(ProxyError::PerTryTimeout(per_try.unwrap_or_default())))
            };
            let outcome = match &res {
                Ok(rsp) if is_grpc => {
                    Outcome::of_grpc(rsp.status().as_u16(), grpc::status(rsp.headers()))
                }
                Ok(rsp) => Outcome::of_status(rsp.status().as_u16()),
                Err(_) => Outcome::GatewayError,
            };
            // A gateway error teaches the balancer the endpoint is slow, however fast it came.
            if let Some(f) = in_flight {
                match outcome {
                    Outcome::GatewayError => f.failed(),
                    _ => f.responded(),
                }
            }
            // A request that found no room at the endpoint was never sent: outlier detection
            // learns nothing of the endpoint from it (the balancer does: it was slow to take it).
            let unsent = matches!(
                &res,
                Err(ProxyError::PendingTimeout { .. } | ProxyError::Overflow(_))
            );
            if let (Some(r), Some(state), false) = (routed, &ep.2, unsent) {
                r.cluster.observe(state, outcome, &dest.metrics);
            }
            let (Some(policy), Some(r), Some(head)) = (retry, routed, &head) else {
                return (res, tries);
            };
            let reason = match &res {
                Ok(rsp) => policy.response(rsp.status(), rsp.headers()),
                Err(e) => e.unanswered().and_then(|why| policy.failure(why)),
            };
            let Some(reason) = reason else {
                return (res, tries);
            };
            if tries > policy.retries {
                return (res, tries);
            }
            let wait = match res
                .as_ref()
                .ok()
                .and_then(|rsp| traffic::pushback(rsp.headers()))
            {
                Some(Some(d)) if d <= traffic::MAX_PUSHBACK => d,
                // The upstream asked not to be tried again (or not for a long while).
                Some(_) => return (res, tries),
                None => policy.backoff(tries - 1, fastrand::f64()),
            };
            let wake = Instant::now().checked_add(wait);
            if deadline.is_some_and(|at| wake.is_none_or(|w| w >= at)) {
                return (res, tries);
            }
            let Some(body) = replay.next() else {
                return (res, tries);
            };
            if !r.svc.budget.withdraw() {
                dest.metrics.budget_exhausted();
                return (res, tries);
            }
            match r.cluster.permit(Limit::Retries, &dest.metrics) {
                Ok(p) => _retry_permit = p,
                Err(_) => return (res, tries),
            }
            dest.metrics.retry(reason);
            tracing::debug!(addr = %ep.0, reason = reason.as_str(), try_no = tries, "retrying");
            // Dropping a response we will not relay resets its stream.
            drop(res);
            tokio::time::sleep(wait).await;
            if let Some(e) = r.cluster.pick_other(r.hash, ep.0, &dest.metrics) {
                ep = (e.addr, e.identity, Some(e.state));
            }
            req = head.clone().request(body);
            tries += 1;
        }
    }
}

/// [`fail`], boxed (the error side of a stage that otherwise hands on a request).
fn failed(
    e: ProxyError,
    is_grpc: bool,
    obs: Observer,
    version: Version,
) -> Box<Response<ProxyBody>> {
    Box::new(fail(e, is_grpc, obs, version))
}

/// The proxy's own answer to a failed request, counted in metrics.
fn fail(e: ProxyError, is_grpc: bool, mut obs: Observer, version: Version) -> Response<ProxyBody> {
    let mut rsp = e.to_response(is_grpc);
    *rsp.version_mut() = version;
    obs.response_head(rsp.status().as_u16(), rsp.headers());
    rsp
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
