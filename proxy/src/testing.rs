//! In-process tests of the request path: the proxy's own HTTP engine, pools, retries, timeouts,
//! budgets, breakers and outlier detection, in front of in-memory upstreams put behind the
//! [`Connect`] seam, driven by a hyper client over an in-memory connection. Nothing listens on
//! a socket, so the tests run in tokio's paused time: a 10 s timeout takes no 10 s, and when
//! it fires is exact.
//!
//! [`Upstreams`] is the connector: a map from endpoint address to a handler, each connection
//! served by hyper (HTTP/1.1 or HTTP/2, as the pool speaks). A connect to an address it does
//! not know is refused and recorded, and [`Mesh`] fails the test for it when dropped.

mod access;
mod golden;
mod resilience;
mod retry;
mod tracing;

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::{
    access_log,
    client::Pools,
    config::DetectConfig,
    drain::Drain,
    metrics::{Direction, Metrics, OpenConn},
    relay::{ConnInfo, HttpProxy, Router},
    resolve::Resolved,
    table::{self, Table},
    transport::{
        ConnectError,
        connect::{Conn, Connect, Connecting},
        detect::{Detected, detect},
        io::PrefixedIo,
    },
};

/// An upstream's answer to its `n`th request (from 1, counted per address).
pub type Reply = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;
type Handler = Arc<dyn Fn(u32, Request<Incoming>) -> Reply + Send + Sync>;

/// In-memory upstreams by address; the connector the proxy under test uses.
#[derive(Default, Clone)]
pub struct Upstreams {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    handlers: HashMap<SocketAddr, Handler>,
    requests: HashMap<SocketAddr, u32>,
    connects: HashMap<SocketAddr, u32>,
    unexpected: Vec<SocketAddr>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upstreams")
    }
}

impl Upstreams {
    /// Serves `addr` with `f`, given the request's number at this address and the request.
    pub fn serve<F, Fut>(&self, addr: &str, f: F)
    where
        F: Fn(u32, Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |n, req| Box::pin(f(n, req)));
        self.lock().handlers.insert(sock(addr), handler);
    }

    /// Requests `addr` has received.
    pub fn requests(&self, addr: &str) -> u32 {
        self.lock().requests.get(&sock(addr)).copied().unwrap_or(0)
    }

    /// Connections made to `addr`.
    pub fn connects(&self, addr: &str) -> u32 {
        self.lock().connects.get(&sock(addr)).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("upstreams lock")
    }

    fn request(&self, addr: SocketAddr) -> (u32, Handler) {
        let mut inner = self.lock();
        let n = inner.requests.entry(addr).or_default();
        *n += 1;
        let n = *n;
        (n, inner.handlers[&addr].clone())
    }
}

fn sock(addr: &str) -> SocketAddr {
    addr.parse().expect("an upstream address")
}

impl Connect for Upstreams {
    fn connect(&self, addr: SocketAddr, _timeout: Duration) -> Connecting<'_> {
        let mut inner = self.lock();
        if !inner.handlers.contains_key(&addr) {
            inner.unexpected.push(addr);
            let source = std::io::ErrorKind::ConnectionRefused.into();
            return Box::pin(async move { Err(ConnectError::Io { addr, source }) });
        }
        *inner.connects.entry(addr).or_default() += 1;
        drop(inner);
        let (client, server) = tokio::io::duplex(64 * 1024);
        let upstreams = self.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (n, handler) = upstreams.request(addr);
                async move { Ok::<_, Infallible>(handler(n, req).await) }
            });
            serve(server, svc).await;
        });
        Box::pin(async move { Ok(Conn::Memory(client)) })
    }
}

/// Serves one connection in the HTTP version its first bytes show, as the proxy's own
/// detection reads them (no timeout cuts it short here: the test's clock may jump).
async fn serve<S>(mut io: tokio::io::DuplexStream, svc: S)
where
    S: hyper::service::HttpService<Incoming, ResBody = Full<Bytes>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let patient = DetectConfig {
        detect_timeout: Duration::from_secs(86_400),
        server_first_timeout: Duration::from_secs(86_400),
    };
    let Ok((detected, first)) = detect(&mut io, &patient).await else {
        return;
    };
    let io = TokioIo::new(PrefixedIo::new(first, io));
    if detected == Detected::Http2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await;
    }
}

/// Two versions' endpoints (labels `version: v1` and `v2`).
pub const V1: &str = "10.0.0.1:80";
pub const V2: &str = "10.0.0.2:80";

/// `web:80` with endpoints [`V1`] and [`V2`], subsets `v1` and `v2` selecting them, and
/// `routes` (YAML list items, each line indented by six spaces).
pub fn two_versions(routes: &str) -> String {
    format!(
        "services:
  - name: web
    port: 80
    endpoints:
      - {{address: {V1}, labels: {{version: v1}}}}
      - {{address: {V2}, labels: {{version: v2}}}}
    subsets:
      - {{name: v1, labels: {{version: v1}}}}
      - {{name: v2, labels: {{version: v2}}}}
    routes:
{routes}"
    )
}

/// A response with `status` and `body`.
pub fn reply(status: u16, body: &'static str) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *rsp.status_mut() = StatusCode::from_u16(status).expect("a status");
    rsp
}

/// A trailers-only gRPC response with `grpc-status: code`.
pub fn grpc_reply(code: u32) -> Response<Full<Bytes>> {
    let mut rsp = reply(200, "");
    let h = rsp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        "application/grpc".parse().unwrap(),
    );
    h.insert("grpc-status", code.into());
    rsp
}

/// A response that comes after `after` (in the test's clock).
pub async fn slow(after: Duration, status: u16) -> Response<Full<Bytes>> {
    tokio::time::sleep(after).await;
    reply(status, "slow")
}

/// The proxy's outbound side on a routing table, in front of [`Upstreams`].
pub struct Mesh {
    pub proxy: Arc<HttpProxy>,
    pub upstreams: Upstreams,
    pub metrics: Arc<Metrics>,
}

impl Mesh {
    /// An outbound proxy on the table file `yaml`, its endpoints served by `upstreams`.
    pub fn outbound(yaml: &str, upstreams: Upstreams) -> Mesh {
        let metrics = Metrics::new();
        let table = table::load_text(
            Path::new("mesh.yaml"),
            yaml,
            1,
            &metrics,
            &Resolved::none(),
            &Table::empty(),
        )
        .expect("a valid table");
        let cfg = crate::config::Cli::parse_from(["weft-proxy"]).run.upstream;
        let connector: Arc<dyn Connect> = Arc::new(upstreams.clone());
        let pools = Pools::with_connector(
            cfg.clone(),
            metrics.clone(),
            Direction::Outbound,
            None,
            connector,
        );
        let proxy = Arc::new(HttpProxy {
            direction: Direction::Outbound,
            router: Router::Outbound {
                table: Arc::new(arc_swap::ArcSwap::from_pointee(table)),
                fixed: None,
                unknown: metrics.target(Direction::Outbound, &Arc::from("unknown")),
                passthrough: metrics.target(Direction::Outbound, &Arc::from("passthrough")),
            },
            pools,
            cfg,
            drain: Drain::new(),
            log: None,
            tracer: None,
            request_id: true,
        });
        Mesh {
            proxy,
            upstreams,
            metrics,
        }
    }

    /// Sends `req` through the proxy on a new client connection of the request's version
    /// (HTTP/1.1 or HTTP/2); the response with its whole body, and its trailers (if any) added
    /// to its headers.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Response<Bytes> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let open = Arc::new(OpenConn::new(
            self.metrics.conns(Direction::Outbound).clone(),
        ));
        let h2 = req.version() == http::Version::HTTP_2;
        tokio::spawn(
            self.proxy
                .clone()
                .serve(server, h2, open, Arc::new(ConnInfo::default())),
        );
        let io = TokioIo::new(client);
        let rsp = if h2 {
            let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("a client connection to the proxy");
            tokio::spawn(conn);
            tx.send_request(req).await
        } else {
            let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("a client connection to the proxy");
            tokio::spawn(conn);
            tx.send_request(req).await
        };
        let (mut head, body) = rsp.expect("a response from the proxy").into_parts();
        let body = body.collect().await.expect("the response body");
        if let Some(t) = body.trailers() {
            head.headers.extend(t.clone());
        }
        Response::from_parts(head, body.to_bytes())
    }

    /// A unary gRPC call (an empty message) to `http://{authority}{path}`, over HTTP/2.
    pub async fn grpc(&self, authority: &str, path: &str) -> Response<Bytes> {
        let req = Request::post(format!("http://{authority}{path}"))
            .version(http::Version::HTTP_2)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .expect("a request");
        self.send(req).await
    }

    /// `GET http://{authority}{path}`.
    pub async fn get(&self, authority: &str, path: &str) -> Response<Bytes> {
        let req = Request::get(path)
            .header(http::header::HOST, authority)
            .body(Full::default())
            .expect("a request");
        self.send(req).await
    }

    /// Turns the access log on, in `format`, with room for `queue` lines; its lines are written
    /// to memory.
    pub fn access_log(&mut self, format: access_log::Format, queue: usize) -> Lines {
        let lines = Lines::default();
        let sink = access_log::Sink::Writer(Box::new(lines.clone()));
        let dropped = self.metrics.observe.access_log_dropped.clone();
        let log = access_log::AccessLog::start(format, sink, false, queue, dropped)
            .expect("the writer thread starts");
        Arc::get_mut(&mut self.proxy)
            .expect("the proxy is not shared yet")
            .log = log;
        lines
    }

    /// Turns tracing on, sampling `percent` of new traces; the spans come out of what is
    /// returned (no exporter).
    pub fn trace(&mut self, percent: f64) -> crate::trace::Spans {
        let dropped = self.metrics.observe.trace_dropped.clone();
        let (tracer, rx) = crate::trace::Tracer::new(percent, 64, 1_000_000, dropped);
        Arc::get_mut(&mut self.proxy)
            .expect("the proxy is not shared yet")
            .tracer = Some(tracer);
        crate::trace::Spans::new(tracer, rx)
    }

    /// The access log's lines written so far, once every line queued is written.
    pub fn log_lines(&self, lines: &Lines) -> Vec<String> {
        if let Some(l) = &self.proxy.log {
            l.flush(Duration::from_secs(5));
        }
        let text = lines.0.lock().unwrap().clone();
        String::from_utf8(text)
            .expect("lines are UTF-8")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The value of one series of the proxy's metrics (`name{labels}` as rendered), 0 when
    /// it is not there.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

/// Where a test's access log writes: memory.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Mesh {
    /// Fails the test when the proxy connected anywhere the test did not put an upstream.
    fn drop(&mut self) {
        let unexpected = std::mem::take(&mut self.upstreams.lock().unexpected);
        if !unexpected.is_empty() && !std::thread::panicking() {
            panic!("the proxy connected to unexpected addresses: {unexpected:?}");
        }
    }
}
