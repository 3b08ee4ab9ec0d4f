//! The soak benchmark (`tests/bench/soak`, issue 19): mixed load through a two-sidecar mutual
//! TLS chain for `--duration` seconds (600 by default) while the control plane pushes
//! `--pushes` changes (1,000), backend endpoints are killed and restarted, and every sidecar's
//! certificate rotates about every `--rotate-every` seconds (30).
//!
//! The mesh, all on 127.0.0.1:
//!
//! - the control plane: a file registry in a scratch directory, the mesh CA (created at start,
//!   one bootstrap token per service account), xDS and the CA over TLS;
//! - proxy A, the client's sidecar (`demo/frontend`): its outbound listener takes HTTP/1.1,
//!   HTTP/2 and gRPC, an `--outbound-tcp` listener takes the TCP load; its routes come over
//!   xDS;
//! - one inbound sidecar B per endpoint (a "pod"), STRICT mutual TLS, in front of one
//!   application. A proxy's inbound side delivers to one address (`--inbound-forward`; only
//!   captured traffic keeps its original port), so several endpoints take several B sidecars,
//!   as in `tests/e2e/mesh.rs`. The registry gives each endpoint the address of its B.
//!
//! Every sidecar gets its certificate from the CA and asks for a lifetime of `--rotate-every`
//! / 0.7, since it renews at 70 % of the lifetime.
//!
//! Services and endpoints (ten pods):
//!
//! - `web` (`protocol: http`, the hyper test peer, answering `/id` with its name): v1 =
//!   `web-v1a`, `web-v1b` (killed in turn); v2 = `web-v2` and `web-v2-spare`, which pushes add
//!   and remove;
//! - `echo` (`protocol: http2`, the tonic test peer): the same shape, `echo-v1a`, `echo-v1b`,
//!   `echo-v2`, `echo-v2-spare`;
//! - `tcp` (`protocol: tcp`, an echo server): `tcp-a`, `tcp-b`, both killed in turn.
//!
//! `web` and `echo` each have a policy: a weighted split between v1 and v2, a timeout, retries
//! on `connect-failure`, `refused-stream`, `reset`, `gateway-error` and `unavailable` with a
//! budget, outlier detection on gateway errors, authorization for `frontend` only, and with
//! `--load-balancer`, that balancer (otherwise the proxy's default, P2C over EWMA latency).
//! Only endpoints whose subset has another endpoint are killed, because a retry picks again
//! within the same subset. A killed application shows to proxy A as its B's answer: 502/503
//! for HTTP, and a trailers-only `UNAVAILABLE` (HTTP 200) for gRPC; outlier detection and the
//! balancer count both as gateway errors, and a retry never goes back to the endpoint that
//! just failed. Opaque TCP has no retries: a TCP connection that lands on a killed
//! endpoint fails, and the client reconnects after 100 ms.
//!
//! What runs during the soak:
//!
//! - load, paced at `--rate` requests per second per protocol (0: as fast as it goes):
//!   `--h1-workers` keep-alive HTTP/1.1 connections, `--h2-connections` HTTP/2 connections with
//!   `--h2-streams` concurrent streams each, `--grpc-workers` clients alternating a
//!   server-streaming call (5 messages) and a lock-step bidi call (3 echoes), `--tcp-workers`
//!   connections doing 50 echo round trips each before a new connection. A gRPC call counts as
//!   one request, and so does a TCP round trip;
//! - pushes, spread evenly: in turn the weights of `web`, the weights of `echo`, the spare of
//!   `web` added or removed, the spare of `echo`, then the timeout and retry values of `web`'s
//!   policy, then `echo`'s. Each is one registry file rewritten; the pusher then waits (at
//!   most 5 s) until proxy A has a new table and times it;
//! - kills, every `--kill-every` seconds: one application (its own tokio runtime, shut down)
//!   stops, and after `--down-for` seconds starts again on the same port. Its B sidecar stays.
//!
//! Every minute it prints the requests so far per protocol, the minute's failures by cause and
//! by explanation, the pushes, rotations and kills so far, and the RSS of the control plane,
//! proxy A and every B. A failure is put down to a kill when an endpoint of its service was
//! down at the time or had come back less than 3 s before: the client cannot tell which
//! endpoint a failed request went to, since the answer comes from a proxy. Separately, a
//! failure is counted as near a push when it came at most 2 s after one, and near a rotation
//! when it came at most 2 s after a certificate rotation of A or of a B of its service (the
//! rotations are read from `weft_identity_renewals_total` every 500 ms, so the window starts
//! 500 ms early). With 1,000 pushes in 10 minutes those windows cover most of the run, and the
//! summary says how much: the figure to hold to is the unexplained failures.
//!
//! The summary: totals, failures by cause, unexplained failures, RSS of minute 2 against the
//! last minute for each process (flat: within 10 %), pushes written and taken, rotations,
//! retries and ejections by proxy A, and requests served per endpoint. The exit status is 0
//! when the run completed, whether or not the targets were met; 130 when interrupted.
//!
//! Not a test: the figures depend on the machine.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, timeout},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint as GrpcEndpoint};
use weft_tests::{
    chain::TempDir,
    eventually,
    grpc::{self, EchoClient, Msg, ServerState, StreamReq},
    http_peer::{self, ClientBody, PeerState},
    mesh,
    proxy::{Proxy, rss_of},
    tcp_peer,
};

const WEB: &str = "web.demo.svc.cluster.local:8080";
const ECHO: &str = "echo.demo.svc.cluster.local:9090";
const TCP: &str = "tcp.demo.svc.cluster.local:7000";
const TRUST_DOMAIN: &str = "spiffe://cluster.local";

/// A failure up to this long after its service's killed endpoint came back is put down to the
/// kill.
const AFTER_RESTART: Duration = Duration::from_secs(3);
/// A failure up to this long after a push or a rotation is counted as near it.
const NEAR: Duration = Duration::from_secs(2);
/// How often the sidecars' renewal counters are read; a rotation is dated this much early.
const ROTATION_POLL: Duration = Duration::from_millis(500);
/// The longest a request, call or round trip may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the pusher waits for proxy A to take one change.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// A client pauses this long after a failure before it goes on (a client's reconnect delay).
const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(100);
/// Requests one worker makes at most, whatever the duration.
const MAX_PER_WORKER: u64 = 100_000_000;
/// Failures kept with their time for classification; more are counted by cause only.
const MAX_RECORDS: usize = 200_000;
/// Echo round trips on one TCP connection before the next connection.
const TCP_ROUND_TRIPS: u32 = 50;
/// The main loop's step.
const TICK: Duration = Duration::from_millis(100);

const USAGE: &str = "usage: weft-soak [--duration SECONDS] [--pushes N] [--kill-every SECONDS] \
[--down-for SECONDS] [--rotate-every SECONDS] [--rate N] [--h1-workers N] [--h2-connections N] \
[--h2-streams N] [--grpc-workers N] [--tcp-workers N] [--load-balancer POLICY]";

/// The flags.
#[derive(Debug, Clone)]
struct Options {
    duration: Duration,
    pushes: usize,
    /// 0: no kills.
    kill_every: Duration,
    down_for: Duration,
    rotate_every: Duration,
    /// Requests per second per protocol; 0: unpaced.
    rate: f64,
    h1_workers: usize,
    h2_connections: usize,
    h2_streams: usize,
    grpc_workers: usize,
    tcp_workers: usize,
    /// `loadBalancer.policy` of both policies; `None`: not written (the proxy's default).
    load_balancer: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            duration: Duration::from_secs(600),
            pushes: 1000,
            kill_every: Duration::from_secs(20),
            down_for: Duration::from_secs(3),
            rotate_every: Duration::from_secs(30),
            rate: 250.0,
            h1_workers: 4,
            h2_connections: 2,
            h2_streams: 4,
            grpc_workers: 8,
            tcp_workers: 2,
            load_balancer: None,
        }
    }
}

impl Options {
    /// The options from the command line; `Err("")` for `--help`.
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if flag == "--help" || flag == "-h" {
                return Err(String::new());
            }
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            if flag == "--load-balancer" {
                // ring-hash needs a hash key, which the load does not send.
                let known = ["p2c-ewma", "round-robin", "least-request", "random"];
                if !known.contains(&value.as_str()) {
                    return Err(format!(
                        "--load-balancer: `{value}` is not one of {}",
                        known.join(", ")
                    ));
                }
                o.load_balancer = Some(value.clone());
                continue;
            }
            let num = value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0 && *v <= 1e9)
                .ok_or_else(|| format!("{flag}: `{value}` is not a number"))?;
            let secs = Duration::from_secs_f64(num);
            match flag.as_str() {
                "--duration" => o.duration = secs,
                "--pushes" => o.pushes = num as usize,
                "--kill-every" => o.kill_every = secs,
                "--down-for" => o.down_for = secs,
                "--rotate-every" => o.rotate_every = secs,
                "--rate" => o.rate = num,
                "--h1-workers" => o.h1_workers = num as usize,
                "--h2-connections" => o.h2_connections = num as usize,
                "--h2-streams" => o.h2_streams = num as usize,
                "--grpc-workers" => o.grpc_workers = num as usize,
                "--tcp-workers" => o.tcp_workers = num as usize,
                _ => return Err(format!("unknown argument {flag}")),
            }
        }
        if o.duration < Duration::from_secs(10) {
            return Err("--duration: at least 10 seconds".into());
        }
        if o.rotate_every < Duration::from_secs(2) {
            return Err("--rotate-every: at least 2 seconds".into());
        }
        if !o.kill_every.is_zero() && o.kill_every < o.down_for + Duration::from_secs(1) {
            return Err("--kill-every: at least --down-for plus a second (or 0: no kills)".into());
        }
        if o.down_for.is_zero() {
            return Err("--down-for: more than 0".into());
        }
        Ok(o)
    }
}

/// A service of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Web,
    Echo,
    Tcp,
}

impl Service {
    /// Name, port and registry protocol.
    fn registration(self) -> (&'static str, u16, &'static str) {
        match self {
            Service::Web => ("web", 8080, "http"),
            Service::Echo => ("echo", 9090, "http2"),
            Service::Tcp => ("tcp", 7000, "tcp"),
        }
    }

    fn name(self) -> &'static str {
        self.registration().0
    }
}

/// A kind of load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    H1 = 0,
    H2 = 1,
    Grpc = 2,
    Tcp = 3,
}

const KINDS: [Kind; 4] = [Kind::H1, Kind::H2, Kind::Grpc, Kind::Tcp];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::H1 => "h1",
            Kind::H2 => "h2",
            Kind::Grpc => "grpc",
            Kind::Tcp => "tcp",
        }
    }

    fn service(self) -> Service {
        match self {
            Kind::H1 | Kind::H2 => Service::Web,
            Kind::Grpc => Service::Echo,
            Kind::Tcp => Service::Tcp,
        }
    }
}

/// What happens to an endpoint during the soak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Always up, always registered.
    Steady,
    /// Killed and restarted in turn with the others.
    Killed,
    /// Always up; pushes add it to the registry and remove it.
    Spare,
}

/// One endpoint: its pod name, service, `version` label and role.
struct Spec {
    name: &'static str,
    service: Service,
    version: &'static str,
    role: Role,
}

const ENDPOINTS: [Spec; 10] = [
    spec("web-v1a", Service::Web, "v1", Role::Killed),
    spec("web-v1b", Service::Web, "v1", Role::Killed),
    spec("web-v2", Service::Web, "v2", Role::Steady),
    spec("web-v2-spare", Service::Web, "v2", Role::Spare),
    spec("echo-v1a", Service::Echo, "v1", Role::Killed),
    spec("echo-v1b", Service::Echo, "v1", Role::Killed),
    spec("echo-v2", Service::Echo, "v2", Role::Steady),
    spec("echo-v2-spare", Service::Echo, "v2", Role::Spare),
    spec("tcp-a", Service::Tcp, "v1", Role::Killed),
    spec("tcp-b", Service::Tcp, "v1", Role::Killed),
];

/// The order kills go in: one service after another.
const KILL_ORDER: [&str; 6] = [
    "web-v1a", "echo-v1a", "tcp-a", "web-v1b", "echo-v1b", "tcp-b",
];

const fn spec(name: &'static str, service: Service, version: &'static str, role: Role) -> Spec {
    Spec {
        name,
        service,
        version,
        role,
    }
}

/// What a running application counts.
enum Served {
    Http(Arc<PeerState>),
    Grpc(Arc<ServerState>),
    Tcp,
}

impl Served {
    /// Requests (web) or calls (echo) handled; TCP connections are not counted.
    fn count(&self) -> u64 {
        match self {
            Served::Http(s) => s.requests.load(Ordering::Relaxed) as u64,
            Served::Grpc(s) => s.started.load(Ordering::Relaxed) as u64,
            Served::Tcp => 0,
        }
    }
}

/// An application server in a runtime of its own: shutting the runtime down stops the server
/// and drops every connection it holds, as a crash would.
struct App {
    rt: Option<tokio::runtime::Runtime>,
    served: Served,
}

impl App {
    /// Starts `spec`'s application on `addr` (port 0: any); returns it and its address.
    async fn start(spec: &Spec, addr: SocketAddr) -> Result<(App, SocketAddr), String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("app-{}", spec.name))
            .enable_all()
            .build()
            .map_err(|e| format!("runtime for {}: {e}", spec.name))?;
        let (service, name) = (spec.service, spec.name.to_string());
        let started = rt.spawn(async move {
            match service {
                Service::Web => {
                    let peer = http_peer::server_on(&name, addr).await;
                    (peer.addr, Served::Http(peer.state))
                }
                Service::Echo => {
                    let (addr, state) = grpc::server_on(addr).await;
                    (addr, Served::Grpc(state))
                }
                Service::Tcp => (tcp_peer::echo_server_on(addr, false).await, Served::Tcp),
            }
        });
        match started.await {
            Ok((addr, served)) => Ok((
                App {
                    rt: Some(rt),
                    served,
                },
                addr,
            )),
            Err(e) => {
                rt.shutdown_background();
                Err(format!("{} did not start on {addr}: {e}", spec.name))
            }
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// An endpoint: its application (absent while killed) and its B sidecar.
struct Endpoint {
    spec: &'static Spec,
    app_addr: SocketAddr,
    app: Option<App>,
    /// What earlier runs of the application served.
    served_before: u64,
    sidecar: Proxy,
}

impl Endpoint {
    fn served(&self) -> u64 {
        self.served_before + self.app.as_ref().map_or(0, |a| a.served.count())
    }

    fn inbound(&self) -> SocketAddr {
        self.sidecar.addr("inbound")
    }

    /// Stops the application; the outage is recorded from just before.
    fn kill(&mut self, soak: &Soak) {
        let down = Instant::now();
        if let Some(app) = self.app.take() {
            self.served_before += app.served.count();
        }
        soak.events.lock().unwrap().outages.push(Outage {
            endpoint: self.spec.name,
            service: self.spec.service,
            down,
            up: None,
        });
    }

    /// Starts the application again on its port, once the port is free (at most 5 s).
    async fn restart(&mut self, soak: &Soak) -> Result<(), String> {
        let mut free = false;
        for _ in 0..50 {
            if std::net::TcpListener::bind(self.app_addr).is_ok() {
                free = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !free {
            return Err(format!(
                "{}: port {} still taken",
                self.spec.name, self.app_addr
            ));
        }
        let (app, _) = App::start(self.spec, self.app_addr).await?;
        self.app = Some(app);
        let now = Instant::now();
        let mut events = soak.events.lock().unwrap();
        if let Some(o) = events
            .outages
            .iter_mut()
            .rev()
            .find(|o| o.endpoint == self.spec.name && o.up.is_none())
        {
            o.up = Some(now);
        }
        Ok(())
    }
}

/// An endpoint's application was down from `down` to `up`.
struct Outage {
    endpoint: &'static str,
    service: Service,
    down: Instant,
    up: Option<Instant>,
}

/// A certificate rotation seen at `at` on a sidecar of `service` (`None`: proxy A, on every
/// path).
struct Rotation {
    at: Instant,
    service: Option<Service>,
}

/// What happened to the mesh, in time order.
#[derive(Default)]
struct Events {
    /// When each change was written.
    pushes: Vec<Instant>,
    rotations: Vec<Rotation>,
    outages: Vec<Outage>,
}

/// One failed request, call or round trip.
struct Failure {
    at: Instant,
    service: Service,
    cause: String,
}

#[derive(Default)]
struct Failures {
    /// In time order, at most [`MAX_RECORDS`].
    records: Vec<Failure>,
    /// Every failure by cause.
    causes: BTreeMap<String, u64>,
    /// Failures past [`MAX_RECORDS`], counted by cause only.
    unrecorded: u64,
}

/// The state the load, the pusher, the rotation watcher and the main loop share.
struct Soak {
    stop: AtomicBool,
    ok: [AtomicU64; 4],
    failed: [AtomicU64; 4],
    failures: Mutex<Failures>,
    events: Mutex<Events>,
}

impl Soak {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn record(&self, kind: Kind, r: &Result<(), String>) {
        match r {
            Ok(()) => {
                self.ok[kind as usize].fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.fail(kind, e),
        }
    }

    fn fail(&self, kind: Kind, what: &str) {
        self.failed[kind as usize].fetch_add(1, Ordering::Relaxed);
        let cause = format!("{} {}", kind.name(), normalize(what));
        let mut f = self.failures.lock().unwrap();
        *f.causes.entry(cause.clone()).or_default() += 1;
        if f.records.len() < MAX_RECORDS {
            f.records.push(Failure {
                at: Instant::now(),
                service: kind.service(),
                cause,
            });
        } else {
            f.unrecorded += 1;
        }
    }

    fn counts(&self, of: &[AtomicU64; 4]) -> [u64; 4] {
        KINDS.map(|k| of[k as usize].load(Ordering::Relaxed))
    }
}

/// A failure's text with the parts that vary from one to the next (ports, stream ids) made
/// equal, so that failures group by cause; at most 120 characters.
fn normalize(what: &str) -> String {
    fn flush(out: &mut String, run: &mut String) {
        if run.len() >= 4 {
            out.push('N');
        } else {
            out.push_str(run);
        }
        run.clear();
    }
    let (mut out, mut run) = (String::new(), String::new());
    for c in what.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            flush(&mut out, &mut run);
            out.push(if c.is_control() { ' ' } else { c });
        }
    }
    flush(&mut out, &mut run);
    match out.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &out[..i]),
        None => out,
    }
}

/// Paces one worker: `rate` per second shared by `workers`, this one starting at its share of
/// the period so that the workers do not go in step.
struct Pacer(Option<tokio::time::Interval>);

impl Pacer {
    fn new(rate: f64, workers: usize, index: usize) -> Pacer {
        if rate <= 0.0 || workers == 0 {
            return Pacer(None);
        }
        let every = Duration::from_secs_f64(workers as f64 / rate);
        let first = tokio::time::Instant::now() + every.mul_f64(index as f64 / workers as f64);
        let mut i = tokio::time::interval_at(first, every);
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Pacer(Some(i))
    }

    async fn tick(&mut self) {
        if let Some(i) = &mut self.0 {
            i.tick().await;
        }
    }
}

/// `f` within [`REQUEST_TIMEOUT`].
async fn bounded<F: std::future::Future<Output = Result<(), String>>>(
    what: &str,
    f: F,
) -> Result<(), String> {
    timeout(REQUEST_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(format!("{what}: no answer within {REQUEST_TIMEOUT:?}")))
}

/// Checks a `web` answer: 200 and the name of a web endpoint.
async fn check_web<B>(rsp: http::Response<B>) -> Result<(), String>
where
    B: hyper::body::Body,
    B::Error: std::fmt::Display,
{
    let status = rsp.status();
    let reason = rsp
        .headers()
        .get("weft-proxy-error")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?
        .to_bytes();
    if status != 200 {
        let why = reason
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned());
        return Err(format!("status {} ({why})", status.as_u16()));
    }
    if !body.starts_with(b"web-") {
        return Err("status 200 with an unexpected body".into());
    }
    Ok(())
}

async fn h1_connect(addr: SocketAddr) -> Result<http1::SendRequest<Empty<Bytes>>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (tx, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tokio::spawn(conn);
    Ok(tx)
}

async fn h1_get(tx: &mut http1::SendRequest<Empty<Bytes>>) -> Result<(), String> {
    tx.ready().await.map_err(|e| format!("connection: {e}"))?;
    let req = Request::get("/id")
        .header("host", WEB)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let rsp = tx
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    check_web(rsp).await
}

/// A keep-alive HTTP/1.1 connection sending GETs one after another; a new connection after a
/// failure.
async fn h1_worker(soak: Arc<Soak>, addr: SocketAddr, mut pacer: Pacer) {
    let mut conn: Option<http1::SendRequest<Empty<Bytes>>> = None;
    for _ in 0..MAX_PER_WORKER {
        if soak.stopped() {
            break;
        }
        pacer.tick().await;
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            match timeout(REQUEST_TIMEOUT, h1_connect(addr)).await {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) => {
                    soak.fail(Kind::H1, &e);
                    tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
                    continue;
                }
                Err(_) => {
                    soak.fail(Kind::H1, "connect: timed out");
                    continue;
                }
            }
        }
        let Some(tx) = conn.as_mut() else { continue };
        let r = bounded("request", h1_get(tx)).await;
        soak.record(Kind::H1, &r);
        if r.is_err() {
            conn = None;
            tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
        }
    }
}

/// One HTTP/2 connection shared by several streams, made again when it closes.
struct H2Conn {
    addr: SocketAddr,
    tx: tokio::sync::Mutex<Option<http2::SendRequest<ClientBody>>>,
}

impl H2Conn {
    fn new(addr: SocketAddr) -> H2Conn {
        H2Conn {
            addr,
            tx: tokio::sync::Mutex::new(None),
        }
    }

    async fn sender(&self) -> Result<http2::SendRequest<ClientBody>, String> {
        let mut held = self.tx.lock().await;
        if let Some(tx) = held.as_ref().filter(|t| !t.is_closed()) {
            return Ok(tx.clone());
        }
        *held = None;
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (tx, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tokio::spawn(conn);
        *held = Some(tx.clone());
        Ok(tx)
    }

    async fn get(&self) -> Result<(), String> {
        let mut tx = self.sender().await?;
        tx.ready().await.map_err(|e| format!("connection: {e}"))?;
        let req = Request::get(format!("http://{WEB}/id"))
            .body(http_peer::body(""))
            .map_err(|e| e.to_string())?;
        let rsp = tx
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        check_web(rsp).await
    }
}

/// One stream's worth of load on a shared HTTP/2 connection: GETs one after another.
async fn h2_worker(soak: Arc<Soak>, conn: Arc<H2Conn>, mut pacer: Pacer) {
    for _ in 0..MAX_PER_WORKER {
        if soak.stopped() {
            break;
        }
        pacer.tick().await;
        let r = bounded("request", conn.get()).await;
        soak.record(Kind::H2, &r);
        if r.is_err() {
            tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
        }
    }
}

fn grpc_error(phase: &str, s: &tonic::Status) -> String {
    format!("{phase}: {:?} {}", s.code(), s.message())
}

/// A server-streaming call: 5 messages of 64 bytes, 2 ms apart.
async fn server_stream(c: &mut EchoClient<Channel>) -> Result<(), String> {
    let req = StreamReq {
        count: 5,
        size: 64,
        interval_ms: 2,
        fail_after: 0,
    };
    let mut s = c
        .server_stream(req)
        .await
        .map_err(|s| grpc_error("server stream, opening", &s))?
        .into_inner();
    let mut n = 0;
    while s
        .message()
        .await
        .map_err(|s| grpc_error("server stream, reading", &s))?
        .is_some()
    {
        n += 1;
    }
    if n != 5 {
        return Err(format!("server stream: {n} messages of 5"));
    }
    Ok(())
}

/// A bidi call in lock step: each of 3 messages is echoed before the next is sent.
async fn bidi(c: &mut EchoClient<Channel>) -> Result<(), String> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut out = c
        .bidi(ReceiverStream::new(rx))
        .await
        .map_err(|s| grpc_error("bidi, opening", &s))?
        .into_inner();
    for i in 0..3u64 {
        let text = format!("m{i}");
        let msg = Msg {
            payload: vec![7; 64],
            text: text.clone(),
            count: i,
        };
        tx.send(msg)
            .await
            .map_err(|_| "bidi: the request stream closed".to_string())?;
        let m = out
            .message()
            .await
            .map_err(|s| grpc_error("bidi, echo", &s))?
            .ok_or("bidi: ended before the echo")?;
        if m.text != text {
            return Err("bidi: a wrong echo".into());
        }
    }
    drop(tx);
    match out.message().await {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err("bidi: more than was sent".into()),
        Err(s) => Err(grpc_error("bidi, end", &s)),
    }
}

fn grpc_client(addr: SocketAddr) -> Result<EchoClient<Channel>, String> {
    let origin: http::Uri = format!("http://{ECHO}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let ch = GrpcEndpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .origin(origin)
        .connect_lazy();
    Ok(EchoClient::new(ch))
}

/// One gRPC client alternating a server-streaming call and a bidi call.
async fn grpc_worker(soak: Arc<Soak>, addr: SocketAddr, mut pacer: Pacer) {
    let mut client = match grpc_client(addr) {
        Ok(c) => c,
        Err(e) => {
            soak.fail(Kind::Grpc, &format!("client: {e}"));
            return;
        }
    };
    for n in 0..MAX_PER_WORKER {
        if soak.stopped() {
            break;
        }
        pacer.tick().await;
        let r = if n % 2 == 0 {
            bounded("server stream", server_stream(&mut client)).await
        } else {
            bounded("bidi", bidi(&mut client)).await
        };
        soak.record(Kind::Grpc, &r);
        if r.is_err() {
            tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
        }
    }
}

/// One echo round trip of a 32-byte line.
async fn round_trip(s: &mut TcpStream, worker: usize, n: u64) -> Result<(), String> {
    let line = format!("{worker:>8} {n:>22}\n");
    s.write_all(line.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut got = [0u8; 32];
    s.read_exact(&mut got)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if got[..] != *line.as_bytes() {
        return Err("a wrong echo".into());
    }
    Ok(())
}

/// TCP connections through proxy A's TCP listener, each doing [`TCP_ROUND_TRIPS`] echo round
/// trips and then closing (half-close, then the server's end); a new connection after a
/// failure.
async fn tcp_worker(soak: Arc<Soak>, addr: SocketAddr, worker: usize, mut pacer: Pacer) {
    let mut conn: Option<(TcpStream, u32)> = None;
    for n in 0..MAX_PER_WORKER {
        if soak.stopped() {
            break;
        }
        pacer.tick().await;
        if conn.is_none() {
            match timeout(REQUEST_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    conn = Some((s, 0));
                }
                Ok(Err(e)) => {
                    soak.fail(Kind::Tcp, &format!("connect: {e}"));
                    tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
                    continue;
                }
                Err(_) => {
                    soak.fail(Kind::Tcp, "connect: timed out");
                    continue;
                }
            }
        }
        let Some((s, trips)) = conn.as_mut() else {
            continue;
        };
        let phase = if *trips == 0 {
            "first round trip"
        } else {
            "later round trip"
        };
        match bounded(phase, round_trip(s, worker, n)).await {
            Ok(()) => {
                soak.record(Kind::Tcp, &Ok(()));
                *trips += 1;
                if *trips >= TCP_ROUND_TRIPS {
                    // The end of a connection is not a request: how it goes is not counted.
                    let _ = s.shutdown().await;
                    let mut rest = [0u8; 64];
                    let _ = timeout(Duration::from_secs(5), s.read(&mut rest)).await;
                    conn = None;
                }
            }
            Err(e) => {
                soak.fail(Kind::Tcp, &format!("{phase}: {e}"));
                conn = None;
                tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
            }
        }
    }
}

/// GET /metrics on `addr`, or `None` (no answer within 2 s, not 200).
async fn scrape(addr: SocketAddr) -> Option<String> {
    let fetch = async {
        let req = Request::get("/metrics").header("host", addr.to_string());
        let rsp = http_peer::request_h1(addr, req, String::new()).await.ok()?;
        if rsp.status() != 200 {
            return None;
        }
        let body = rsp.into_body().collect().await.ok()?.to_bytes();
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    timeout(Duration::from_secs(2), fetch).await.ok().flatten()
}

/// The value of `series` (`name{labels}` exactly as exposed) in a Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Every series named `name`: its labels (`{...}`, or empty) and value.
fn series_of<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((&series[name.len()..], value.parse().ok()?))
        })
        .collect()
}

/// The sum of every series named `name`, whatever its labels.
fn sum_of(text: &str, name: &str) -> f64 {
    series_of(text, name)
        .iter()
        .fold(0.0, |sum, (_, v)| sum + v)
}

/// The series of `name` that are not 0, as `labels value` lines under a heading.
fn nonzero_series(text: &str, name: &str) -> String {
    let mut out = String::new();
    for (labels, v) in series_of(text, name) {
        if v != 0.0 {
            let _ = writeln!(out, "    {name}{labels} {v}");
        }
    }
    out
}

/// The weights a split goes through, one step per push: never 0 for either subset.
const WEIGHTS: [(u32, u32); 6] = [(90, 10), (70, 30), (50, 50), (30, 70), (10, 90), (50, 50)];

/// A policy's state: which weights, and which of two sets of timeout and retry values.
#[derive(Default, Clone, Copy)]
struct PolicyState {
    weights: usize,
    alternate: bool,
}

/// The `TrafficPolicy` of `service` (web or echo) in state `p`, with `balancer` as its
/// `loadBalancer.policy` when given.
fn policy(service: Service, p: PolicyState, balancer: Option<&str>) -> String {
    let (name, port, _) = service.registration();
    let (v1, v2) = WEIGHTS[p.weights];
    let (timeout, attempts, base) = if p.alternate {
        ("15s", 4, "20ms")
    } else {
        ("10s", 3, "10ms")
    };
    let balancer = balancer
        .map(|b| format!("  loadBalancer: {{policy: {b}}}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: {name}, namespace: demo}}
spec:
  service: {name}.demo.svc.cluster.local:{port}
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
  routes:
    - name: split
      backends: [{{subset: v1, weight: {v1}}}, {{subset: v2, weight: {v2}}}]
  timeout: {timeout}
  retry:
    attempts: {attempts}
    backoff: {{base: {base}, max: 200ms}}
    \"on\": [connect-failure, refused-stream, reset, gateway-error, unavailable]
    budget: {{ratio: 0.2, minPerSecond: 20}}
  outlierDetection: {{consecutiveGatewayErrors: 2, baseEjectionTime: 1s, maxEjectionTime: 5s, maxEjectionPercent: 50}}
  authorization: {{default: deny, allow: [{{identity: {TRUST_DOMAIN}/ns/demo/sa/frontend}}]}}
{balancer}"
    )
}

/// What a push changed.
#[derive(Debug, Clone, Copy)]
enum PushKind {
    Weights = 0,
    Endpoints = 1,
    Policy = 2,
}

/// The registry directory and what its files say now.
struct Registry {
    dir: Arc<TempDir>,
    /// Per endpoint: service, B's inbound address, version label, whether it is a spare.
    endpoints: Vec<(Service, SocketAddr, &'static str, bool)>,
    web_spare: bool,
    echo_spare: bool,
    web: PolicyState,
    echo: PolicyState,
    balancer: Option<String>,
}

impl Registry {
    fn write_service(&self, service: Service) {
        let (name, port, protocol) = service.registration();
        let spare = match service {
            Service::Web => self.web_spare,
            Service::Echo => self.echo_spare,
            Service::Tcp => false,
        };
        let identity = format!("{TRUST_DOMAIN}/ns/demo/sa/{name}");
        let eps: Vec<(SocketAddr, &str, Option<&str>)> = self
            .endpoints
            .iter()
            .filter(|(s, _, _, is_spare)| *s == service && (!is_spare || spare))
            .map(|(_, addr, version, _)| (*addr, *version, Some(identity.as_str())))
            .collect();
        self.dir.write(
            &format!("{name}.yaml"),
            &mesh::meshed_service(name, port, protocol, &eps),
        );
    }

    fn write_policy(&self, service: Service) {
        let state = match service {
            Service::Web => self.web,
            _ => self.echo,
        };
        self.dir.write(
            &format!("{}-policy.yaml", service.name()),
            &policy(service, state, self.balancer.as_deref()),
        );
    }

    fn write_all(&self) {
        for s in [Service::Web, Service::Echo, Service::Tcp] {
            self.write_service(s);
        }
        self.write_policy(Service::Web);
        self.write_policy(Service::Echo);
    }

    /// Makes change number `i`: one file rewritten with one thing different.
    fn change(&mut self, i: usize) -> PushKind {
        match i % 6 {
            0 => {
                self.web.weights = (self.web.weights + 1) % WEIGHTS.len();
                self.write_policy(Service::Web);
                PushKind::Weights
            }
            1 => {
                self.echo.weights = (self.echo.weights + 1) % WEIGHTS.len();
                self.write_policy(Service::Echo);
                PushKind::Weights
            }
            2 => {
                self.web_spare = !self.web_spare;
                self.write_service(Service::Web);
                PushKind::Endpoints
            }
            3 => {
                self.echo_spare = !self.echo_spare;
                self.write_service(Service::Echo);
                PushKind::Endpoints
            }
            4 => {
                self.web.alternate = !self.web.alternate;
                self.write_policy(Service::Web);
                PushKind::Policy
            }
            _ => {
                self.echo.alternate = !self.echo.alternate;
                self.write_policy(Service::Echo);
                PushKind::Policy
            }
        }
    }
}

/// What the pusher did.
#[derive(Default)]
struct PushStats {
    /// Changes written, by [`PushKind`].
    written: [u64; 3],
    /// Changes proxy A took (a new table) within [`PUSH_TIMEOUT`].
    taken: u64,
    /// From the write to proxy A's new table, for each change taken.
    latencies: Vec<Duration>,
}

async fn generation(probe: SocketAddr) -> Option<f64> {
    sample(&scrape(probe).await?, "weft_table_generation")
}

/// Writes `count` changes spread evenly over `span` from `start`, each followed by a wait for
/// proxy A (probe address `probe`) to take it.
async fn pusher(
    soak: Arc<Soak>,
    mut registry: Registry,
    count: usize,
    start: Instant,
    span: Duration,
    probe: SocketAddr,
) -> PushStats {
    let mut stats = PushStats::default();
    for i in 0..count {
        let due = start + span.mul_f64((i + 1) as f64 / (count + 1) as f64);
        // Sleep until it is due, in steps, so that a stop is seen.
        for _ in 0..10_000 {
            let now = Instant::now();
            if now >= due || soak.stopped() {
                break;
            }
            tokio::time::sleep((due - now).min(Duration::from_millis(200))).await;
        }
        if soak.stopped() {
            break;
        }
        let before = generation(probe).await;
        let kind = registry.change(i);
        let written = Instant::now();
        soak.events.lock().unwrap().pushes.push(written);
        stats.written[kind as usize] += 1;
        let Some(before) = before else { continue };
        let deadline = written + PUSH_TIMEOUT;
        while Instant::now() < deadline {
            if generation(probe).await.is_some_and(|g| g > before) {
                stats.taken += 1;
                stats.latencies.push(written.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    stats
}

/// Reads every sidecar's renewal counter every [`ROTATION_POLL`] until the stop, recording each
/// rotation; returns the rotations seen per sidecar. `probes`: the probe address and the
/// service (none for proxy A) of each sidecar.
async fn watch_rotations(soak: Arc<Soak>, probes: Vec<(SocketAddr, Option<Service>)>) -> Vec<u64> {
    let mut last: Vec<Option<f64>> = vec![None; probes.len()];
    let mut seen = vec![0u64; probes.len()];
    for _ in 0..10_000_000u64 {
        if soak.stopped() {
            break;
        }
        tokio::time::sleep(ROTATION_POLL).await;
        for (i, (addr, service)) in probes.iter().enumerate() {
            let Some(text) = scrape(*addr).await else {
                continue;
            };
            let Some(v) = sample(&text, "weft_identity_renewals_total") else {
                continue;
            };
            if let Some(before) = last[i]
                && v > before
            {
                seen[i] += (v - before) as u64;
                soak.events.lock().unwrap().rotations.push(Rotation {
                    at: Instant::now(),
                    service: *service,
                });
            }
            last[i] = Some(v);
        }
    }
    seen
}

/// How a set of failures divides up.
#[derive(Default)]
struct Tally {
    failed: u64,
    /// An endpoint of its service was down, or back less than [`AFTER_RESTART`] before.
    killed: u64,
    unexplained: u64,
    near_push: u64,
    near_rotation: u64,
    unexplained_near_push: u64,
    unexplained_near_rotation: u64,
    causes: BTreeMap<String, u64>,
}

fn tally(records: &[Failure], ev: &Events) -> Tally {
    let mut t = Tally::default();
    for f in records {
        t.failed += 1;
        *t.causes.entry(f.cause.clone()).or_default() += 1;
        let killed = ev.outages.iter().any(|o| {
            o.service == f.service
                && o.down <= f.at
                && o.up.is_none_or(|up| f.at <= up + AFTER_RESTART)
        });
        let pushes_before = ev.pushes.partition_point(|p| *p <= f.at);
        let near_push = pushes_before > 0 && f.at - ev.pushes[pushes_before - 1] <= NEAR;
        let near_rotation = ev.rotations.iter().any(|r| {
            r.service.is_none_or(|s| s == f.service)
                && r.at <= f.at + ROTATION_POLL
                && f.at <= r.at + NEAR
        });
        if killed {
            t.killed += 1;
        } else {
            t.unexplained += 1;
            t.unexplained_near_push += near_push as u64;
            t.unexplained_near_rotation += near_rotation as u64;
        }
        t.near_push += near_push as u64;
        t.near_rotation += near_rotation as u64;
    }
    t
}

/// The share of `[from, to]` that lies in the windows `[start, start + len]`.
fn coverage(mut windows: Vec<(Instant, Instant)>, from: Instant, to: Instant) -> f64 {
    windows.sort();
    let (mut covered, mut reach) = (Duration::ZERO, from);
    for (start, end) in windows {
        let (start, end) = (start.max(reach), end.min(to));
        if end > start {
            covered += end - start;
            reach = end;
        }
    }
    let whole = to.saturating_duration_since(from);
    if whole.is_zero() {
        return 0.0;
    }
    covered.as_secs_f64() / whole.as_secs_f64() * 100.0
}

/// The processes whose RSS is followed: name and PID.
struct Watched(Vec<(String, u32)>);

impl Watched {
    /// VmRSS of each, kB.
    fn rss(&self) -> Vec<u64> {
        self.0.iter().map(|(_, pid)| rss_of(*pid) / 1024).collect()
    }
}

fn per_kind(counts: [u64; 4]) -> String {
    KINDS
        .iter()
        .map(|k| format!("{} {}", k.name(), counts[*k as usize]))
        .collect::<Vec<_>>()
        .join(", ")
}

fn causes_lines(causes: &BTreeMap<String, u64>, indent: &str) -> String {
    let mut by_count: Vec<(&String, &u64)> = causes.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut out = String::new();
    for (cause, n) in by_count {
        let _ = writeln!(out, "{indent}{n:>7}  {cause}");
    }
    out
}

/// The line printed every minute (and for the last, partial one), and the failures of the
/// period below it by cause.
fn minute_report(
    soak: &Soak,
    label: &str,
    records_from: &mut usize,
    watched: &Watched,
    rss: &[u64],
) -> String {
    let failures = soak.failures.lock().unwrap();
    let ev = soak.events.lock().unwrap();
    let t = tally(&failures.records[*records_from..], &ev);
    *records_from = failures.records.len();
    let rss_text: Vec<String> = watched
        .0
        .iter()
        .zip(rss)
        .map(|((name, _), kb)| format!("{name} {kb}"))
        .collect();
    let mut line = format!(
        "{label}: requests so far {}; failed so far {} ({}); this period {} failed: {} at a killed endpoint, {} unexplained, {} within {} s after a push, {} after a rotation; pushes {}, rotations {}, kills {}; RSS kB {}\n",
        per_kind(soak.counts(&soak.ok)),
        soak.counts(&soak.failed).iter().sum::<u64>(),
        per_kind(soak.counts(&soak.failed)),
        t.failed,
        t.killed,
        t.unexplained,
        t.near_push,
        NEAR.as_secs(),
        t.near_rotation,
        ev.pushes.len(),
        ev.rotations.len(),
        ev.outages.len(),
        rss_text.join(", "),
    );
    line += &causes_lines(&t.causes, "    ");
    line
}

fn token(sa: &str) -> String {
    format!("{sa}-soak-bootstrap-token-0123456789")
}

/// Starts sidecars for service accounts of namespace `demo`, each getting its identity from the
/// control plane's CA with a token, and its configuration over xDS on TLS.
struct Sidecars<'a> {
    work: &'a TempDir,
    xds: String,
    bundle: PathBuf,
    lifetime: String,
}

impl Sidecars<'_> {
    fn start(&self, sa: &str, pod: &str, extra: &[&str]) -> Proxy {
        let token = self.work.write(&format!("{sa}.token"), &token(sa));
        let (token, bundle) = (
            token.to_str().unwrap().to_string(),
            self.bundle.to_str().unwrap().to_string(),
        );
        let mut args = vec![
            "--control-plane",
            &self.xds,
            "--trust-bundle",
            &bundle,
            "--identity",
            "ca",
            "--identity-token-file",
            &token,
            "--cert-lifetime",
            &self.lifetime,
            "--pod-namespace",
            "demo",
            "--service-account",
            sa,
            "--pod-name",
            pod,
        ];
        args.extend_from_slice(extra);
        Proxy::start(&args)
    }
}

/// One request of each kind through proxy A, until all four succeed (at most 30 s).
async fn warm_up(outbound: SocketAddr, tcp: SocketAddr) {
    eventually(
        Duration::from_secs(30),
        "one request of each kind through the mesh",
        move || async move {
            let h1 = async {
                let mut tx = h1_connect(outbound).await?;
                h1_get(&mut tx).await
            };
            let conn = H2Conn::new(outbound);
            let h2 = conn.get();
            let grpc = async { server_stream(&mut grpc_client(outbound)?).await };
            let tcp = async {
                let mut s = TcpStream::connect(tcp).await.map_err(|e| e.to_string())?;
                round_trip(&mut s, 0, 0).await
            };
            let all = async { Ok::<_, String>((h1.await?, h2.await?, grpc.await?, tcp.await?)) };
            timeout(Duration::from_secs(5), all)
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(drop)
        },
    )
    .await
}

/// RSS of minute 2 (or the first, in a shorter run) against the last: the line per process
/// and whether every one is within 10 %.
fn rss_verdict(watched: &Watched, samples: &[Vec<u64>]) -> (String, bool) {
    let (Some(first), Some(last)) = (
        samples
            .get(1)
            .filter(|_| samples.len() >= 3)
            .or(samples.first()),
        samples.last(),
    ) else {
        return ("RSS: no sample taken\n".into(), false);
    };
    let which = if samples.len() >= 3 {
        "minute 2"
    } else {
        "minute 1 (the run is shorter than 3 minutes)"
    };
    let mut out = format!("RSS kB, {which} -> the last sample:\n");
    let mut flat = true;
    for (((name, _), a), b) in watched.0.iter().zip(first).zip(last) {
        let change = if *a == 0 {
            0.0
        } else {
            (*b as f64 - *a as f64) / *a as f64 * 100.0
        };
        let within = change.abs() <= 10.0;
        flat &= within;
        let _ = writeln!(
            out,
            "  {name:<16} {a:>8} -> {b:>8}  {change:+6.1} %  {}",
            if within {
                "within 10 %"
            } else {
                "NOT within 10 %"
            }
        );
    }
    (out, flat)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match Options::parse(&args) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let code = run(o).await;
    std::process::exit(code);
}

/// The whole soak; returns the exit status. Every process and scratch directory it made is
/// gone when it returns (or unwinds).
async fn run(o: Options) -> i32 {
    let mut interrupt = signal(SignalKind::interrupt()).expect("a SIGINT handler");
    let mut terminate = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let lifetime_ms = (o.rotate_every.as_secs_f64() / 0.7 * 1000.0).round() as u64;

    // The control plane: file registry, the CA, xDS and the CA over TLS.
    let work = TempDir::new("soak");
    let registry_dir = Arc::new(TempDir::new("soak-registry"));
    let tokens: String = ["frontend", "web", "echo", "tcp"]
        .iter()
        .map(|sa| format!("{} demo {sa}\n", token(sa)))
        .collect();
    let tokens = work.write("tokens", &tokens);
    let ca_dir = work.0.join("ca");
    let cp = mesh::control_plane(
        &registry_dir,
        &[
            "--ca-dir",
            ca_dir.to_str().unwrap(),
            "--ca-create",
            "--bootstrap-tokens",
            tokens.to_str().unwrap(),
            "--tls-addr",
            "127.0.0.1:0",
        ],
    );
    let sidecars = Sidecars {
        work: &work,
        xds: format!("https://{}", cp.addr("xds-tls")),
        bundle: ca_dir.join("ca.crt"),
        lifetime: format!("{lifetime_ms}ms"),
    };

    // The pods: an application and its B sidecar each.
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for spec in &ENDPOINTS {
        let (app, app_addr) = match App::start(spec, "127.0.0.1:0".parse().unwrap()).await {
            Ok(started) => started,
            Err(e) => {
                eprintln!("{e}");
                return 1;
            }
        };
        let forward = app_addr.to_string();
        let sidecar = sidecars.start(
            spec.service.name(),
            spec.name,
            &["--inbound-forward", &forward, "--inbound-mtls", "strict"],
        );
        endpoints.push(Endpoint {
            spec,
            app_addr,
            app: Some(app),
            served_before: 0,
            sidecar,
        });
    }
    let registry = Registry {
        dir: registry_dir.clone(),
        endpoints: endpoints
            .iter()
            .map(|e| {
                (
                    e.spec.service,
                    e.inbound(),
                    e.spec.version,
                    e.spec.role == Role::Spare,
                )
            })
            .collect(),
        web_spare: false,
        echo_spare: false,
        web: PolicyState::default(),
        echo: PolicyState::default(),
        balancer: o.load_balancer.clone(),
    };
    registry.write_all();

    // Proxy A, the client's sidecar.
    let tcp_listener = format!("127.0.0.1:0={TCP}");
    let a = sidecars.start("frontend", "frontend", &["--outbound-tcp", &tcp_listener]);
    let outbound = a.addr("outbound");
    let tcp_addr = a.addr(&format!("outbound-tcp {TCP}"));
    for p in endpoints.iter().map(|e| &e.sidecar).chain([&a]) {
        eventually(
            Duration::from_secs(30),
            "every sidecar ready (configuration and certificate)",
            || async { (p.get("probe", "/ready").await.0 == 200).then_some(()) },
        )
        .await;
    }
    eventually(
        Duration::from_secs(30),
        "the three services in proxy A's table",
        || async {
            let dump = a.config_dump().await;
            (dump["services"].as_array().map_or(0, Vec::len) == 3).then_some(())
        },
    )
    .await;
    warm_up(outbound, tcp_addr).await;

    let mut watched = Watched(vec![
        ("control-plane".into(), cp.pid()),
        ("A".into(), a.pid()),
    ]);
    for e in &endpoints {
        watched
            .0
            .push((format!("B {}", e.spec.name), e.sidecar.pid()));
    }
    println!(
        "weft-soak: {} s, {} pushes, a kill every {} s for {} s, certificates of {} ms (renewed about every {} s); load at {} per protocol per second: {} HTTP/1.1 connections, {} HTTP/2 connections x {} streams, {} gRPC clients, {} TCP clients; {} B sidecars; load balancer {}",
        o.duration.as_secs_f64(),
        o.pushes,
        o.kill_every.as_secs_f64(),
        o.down_for.as_secs_f64(),
        lifetime_ms,
        o.rotate_every.as_secs_f64(),
        if o.rate > 0.0 {
            format!("{}", o.rate)
        } else {
            "as many as go".into()
        },
        o.h1_workers,
        o.h2_connections,
        o.h2_streams,
        o.grpc_workers,
        o.tcp_workers,
        endpoints.len(),
        o.load_balancer
            .as_deref()
            .unwrap_or("the default (p2c-ewma)"),
    );

    // Load, pushes and the rotation watcher.
    let soak = Arc::new(Soak {
        stop: AtomicBool::new(false),
        ok: Default::default(),
        failed: Default::default(),
        failures: Mutex::new(Failures::default()),
        events: Mutex::new(Events::default()),
    });
    let start = Instant::now();
    let end = start + o.duration;
    let mut load = Vec::new();
    for i in 0..o.h1_workers {
        let pacer = Pacer::new(o.rate, o.h1_workers, i);
        load.push(tokio::spawn(h1_worker(soak.clone(), outbound, pacer)));
    }
    let h2_workers = o.h2_connections * o.h2_streams;
    for c in 0..o.h2_connections {
        let conn = Arc::new(H2Conn::new(outbound));
        for s in 0..o.h2_streams {
            let pacer = Pacer::new(o.rate, h2_workers, c * o.h2_streams + s);
            load.push(tokio::spawn(h2_worker(soak.clone(), conn.clone(), pacer)));
        }
    }
    for i in 0..o.grpc_workers {
        let pacer = Pacer::new(o.rate, o.grpc_workers, i);
        load.push(tokio::spawn(grpc_worker(soak.clone(), outbound, pacer)));
    }
    for i in 0..o.tcp_workers {
        let pacer = Pacer::new(o.rate, o.tcp_workers, i);
        load.push(tokio::spawn(tcp_worker(soak.clone(), tcp_addr, i, pacer)));
    }
    let pushes = tokio::spawn(pusher(
        soak.clone(),
        registry,
        o.pushes,
        start,
        o.duration,
        a.addr("probe"),
    ));
    let mut probes = vec![(a.addr("probe"), None)];
    probes.extend(
        endpoints
            .iter()
            .map(|e| (e.sidecar.addr("probe"), Some(e.spec.service))),
    );
    let rotations = tokio::spawn(watch_rotations(soak.clone(), probes));

    // The timeline: kills and restarts, and a report every minute.
    let kill_order: Vec<usize> = KILL_ORDER
        .iter()
        .filter_map(|n| endpoints.iter().position(|e| e.spec.name == *n))
        .collect();
    let mut next_kill = (!o.kill_every.is_zero()).then(|| start + o.kill_every);
    let mut kills = 0usize;
    let mut down: Option<(usize, Instant)> = None;
    let mut restart_failures = 0u32;
    let mut samples: Vec<Vec<u64>> = Vec::new();
    let mut records_from = 0usize;
    let mut next_report = start + Duration::from_secs(60);
    let mut interrupted = false;
    let steps = (o.duration.as_millis() / TICK.as_millis()) as u64 + 100;
    for _ in 0..steps {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = interrupt.recv() => interrupted = true,
            _ = terminate.recv() => interrupted = true,
        }
        if interrupted {
            println!("interrupted: stopping");
            break;
        }
        let now = Instant::now();
        if let Some((i, at)) = down
            && now >= at
        {
            match endpoints[i].restart(&soak).await {
                Ok(()) => down = None,
                Err(e) => {
                    restart_failures += 1;
                    println!("restart of {} failed: {e}", endpoints[i].spec.name);
                    down = Some((i, now + Duration::from_secs(1)));
                }
            }
        }
        if let Some(at) = next_kill
            && now >= at
        {
            // No kill that would still be down at the end, nor while another is down.
            if down.is_none() && !kill_order.is_empty() && now + o.down_for + AFTER_RESTART < end {
                let i = kill_order[kills % kill_order.len()];
                endpoints[i].kill(&soak);
                kills += 1;
                down = Some((i, Instant::now() + o.down_for));
            }
            next_kill = Some(at + o.kill_every);
        }
        if now >= next_report {
            let rss = watched.rss();
            let minute = samples.len() + 1;
            print!(
                "{}",
                minute_report(
                    &soak,
                    &format!("minute {minute}"),
                    &mut records_from,
                    &watched,
                    &rss
                )
            );
            samples.push(rss);
            next_report += Duration::from_secs(60);
        }
        if now >= end {
            break;
        }
    }

    // The end: the last application back, the load stopped, a last report.
    if let Some((i, _)) = down.take()
        && let Err(e) = endpoints[i].restart(&soak).await
    {
        println!("restart of {} failed: {e}", endpoints[i].spec.name);
    }
    soak.stop.store(true, Ordering::Relaxed);
    let ran = start.elapsed();
    let mut stuck = 0;
    for t in load {
        if timeout(REQUEST_TIMEOUT + Duration::from_secs(5), t)
            .await
            .is_err()
        {
            stuck += 1;
        }
    }
    let push_stats = timeout(PUSH_TIMEOUT * 2, pushes)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    let rotation_counts = timeout(Duration::from_secs(30), rotations)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    let since_report = ran.saturating_sub(Duration::from_secs(60 * samples.len() as u64));
    if since_report >= Duration::from_secs(5) || samples.is_empty() {
        let rss = watched.rss();
        let label = format!(
            "minute {} ({:.0} s)",
            samples.len() + 1,
            since_report.as_secs_f64()
        );
        print!(
            "{}",
            minute_report(&soak, &label, &mut records_from, &watched, &rss)
        );
        samples.push(rss);
    }

    // The summary.
    let a_metrics = scrape(a.addr("probe")).await.unwrap_or_default();
    let cp_metrics = scrape(cp.addr("metrics")).await.unwrap_or_default();
    let failures = soak.failures.lock().unwrap();
    let ev = soak.events.lock().unwrap();
    let t = tally(&failures.records, &ev);
    let ok = soak.counts(&soak.ok);
    let failed = soak.counts(&soak.failed);
    let (total_ok, total_failed) = (ok.iter().sum::<u64>(), failed.iter().sum::<u64>());
    let run_end = start + ran;
    let push_cover = coverage(
        ev.pushes.iter().map(|p| (*p, *p + NEAR)).collect(),
        start,
        run_end,
    );
    let rotation_cover = coverage(
        ev.rotations
            .iter()
            .map(|r| (r.at - ROTATION_POLL, r.at + NEAR))
            .collect(),
        start,
        run_end,
    );
    let mut s = String::new();
    let _ = writeln!(
        s,
        "summary: {:.0} s{}; requests {} ok, {} failed ({:.4} %)",
        ran.as_secs_f64(),
        if interrupted { " (interrupted)" } else { "" },
        total_ok,
        total_failed,
        total_failed as f64 * 100.0 / (total_ok + total_failed).max(1) as f64
    );
    for k in KINDS {
        let _ = writeln!(
            s,
            "  {:<5} {:>10} ok {:>7} failed ({:.0}/s)",
            k.name(),
            ok[k as usize],
            failed[k as usize],
            ok[k as usize] as f64 / ran.as_secs_f64()
        );
    }
    let _ = writeln!(s, "failures by cause:");
    s += &causes_lines(&failures.causes, "  ");
    if failures.unrecorded > 0 {
        let _ = writeln!(
            s,
            "  ({} failures past the first {MAX_RECORDS} were not classified)",
            failures.unrecorded
        );
    }
    let _ = writeln!(
        s,
        "failures at a killed endpoint (down, or back less than {} s before): {}; unexplained: {} ({} within {} s after a push, {} after a rotation)",
        AFTER_RESTART.as_secs(),
        t.killed,
        t.unexplained,
        t.unexplained_near_push,
        NEAR.as_secs(),
        t.unexplained_near_rotation
    );
    let _ = writeln!(
        s,
        "failures within {} s after a push: {} (those windows cover {:.0} % of the run); after a rotation: {} ({:.0} %)",
        NEAR.as_secs(),
        t.near_push,
        push_cover,
        t.near_rotation,
        rotation_cover
    );
    let mut lat = push_stats.latencies.clone();
    lat.sort();
    let _ = writeln!(
        s,
        "pushes: {} written ({} weights, {} endpoints, {} policy values), {} taken by proxy A (write to new table p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms); proxy A table generation {}; control plane: {} registry changes, {} pushes to streams",
        push_stats.written.iter().sum::<u64>(),
        push_stats.written[PushKind::Weights as usize],
        push_stats.written[PushKind::Endpoints as usize],
        push_stats.written[PushKind::Policy as usize],
        push_stats.taken,
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        sample(&a_metrics, "weft_table_generation").unwrap_or(0.0),
        sample(&cp_metrics, "weft_cp_registry_events_total").unwrap_or(0.0),
        sample(&cp_metrics, "weft_cp_push_latency_seconds_count").unwrap_or(0.0),
    );
    let b_rotations: Vec<u64> = rotation_counts.iter().skip(1).copied().collect();
    let _ = writeln!(
        s,
        "rotations: {} (proxy A {}, B sidecars {} in all, {} to {} each); certificates the CA issued: {}",
        rotation_counts.iter().sum::<u64>(),
        rotation_counts.first().copied().unwrap_or(0),
        b_rotations.iter().sum::<u64>(),
        b_rotations.iter().min().copied().unwrap_or(0),
        b_rotations.iter().max().copied().unwrap_or(0),
        sample(&cp_metrics, r#"weft_cp_ca_requests_total{result="issued"}"#).unwrap_or(0.0),
    );
    let killed_names: Vec<&str> = ev.outages.iter().map(|o| o.endpoint).collect();
    let _ = writeln!(
        s,
        "kills: {} ({}), restart failures {}",
        ev.outages.len(),
        killed_names.join(" "),
        restart_failures
    );
    let _ = writeln!(
        s,
        "proxy A: {} retries, {} refused by the budget, {} outlier ejections",
        sum_of(&a_metrics, "weft_retries_total"),
        sum_of(&a_metrics, "weft_retry_budget_exhausted_total"),
        sum_of(&a_metrics, "weft_outlier_ejections_total"),
    );
    for name in [
        "weft_retries_total",
        "weft_retry_budget_exhausted_total",
        "weft_outlier_ejections_total",
    ] {
        s += &nonzero_series(&a_metrics, name);
    }
    let served: Vec<String> = endpoints
        .iter()
        .filter(|e| e.spec.service != Service::Tcp)
        .map(|e| format!("{} {}", e.spec.name, e.served()))
        .collect();
    let _ = writeln!(s, "served per endpoint: {}", served.join(", "));
    if stuck > 0 {
        let _ = writeln!(s, "{stuck} load tasks did not stop within 20 s");
    }
    let (rss_text, flat) = rss_verdict(&watched, &samples);
    s += &rss_text;
    let _ = writeln!(
        s,
        "targets: every failure at a killed endpoint, none from a push or a rotation: {}; RSS flat: {}",
        if t.unexplained == 0 && failures.unrecorded == 0 {
            "met"
        } else {
            "NOT met"
        },
        if flat { "met" } else { "NOT met" }
    );
    print!("{s}");
    drop(ev);
    drop(failures);
    // The sidecars, the control plane and the applications stop as they drop.
    drop(endpoints);
    drop(a);
    drop(cp);
    if interrupted { 130 } else { 0 }
}
