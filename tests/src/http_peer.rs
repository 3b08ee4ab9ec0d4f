//! The hyper test peer (HTTP/1.1 and HTTP/2 on one port) and small client helpers.
//!
//! Paths: `/echo` streams the request body back and reports what it saw in `x-seen-*` headers;
//! `/id` answers the server's name; `/delay?ms=N` answers it after N ms; `/trailers` ends with a trailer; `/big?bytes=N` streams N
//! bytes; `/upgrade` switches protocols and echoes raw bytes; `/hang` never answers;
//! `/grpc-partial` sends gRPC headers and one message and then nothing; `/reset` sends a
//! chunk and resets the stream once the test calls [`PeerState::reset_now`]; `/sink` reads its
//! request body only once the test calls [`PeerState::open_sink`], and answers its length;
//! `/status/<code>`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::{body::Frame, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, Default)]
pub struct PeerState {
    pub name: String,
    /// Connections accepted.
    pub connections: AtomicUsize,
    pub requests: AtomicUsize,
    /// Bytes of `/big` bodies handed to the transport (flow control holds this back).
    pub big_sent: AtomicU64,
    /// `/hang` requests whose handler was dropped (the client or proxy cancelled).
    pub cancelled: AtomicUsize,
    /// `/big` bodies dropped before their end (the client or proxy reset the stream).
    pub big_dropped: AtomicUsize,
    /// Releases a `/reset` response's reset.
    reset: tokio::sync::Notify,
    /// Lets a `/sink` request read its body.
    sink: tokio::sync::Notify,
    /// Added before every answer, in milliseconds (a slow endpoint).
    pub delay_ms: AtomicU64,
    /// When not 0, `/id` answers with this status (a failing endpoint).
    pub status: std::sync::atomic::AtomicU16,
    /// When not 0, every this-many-th request is answered 503 (an intermittently failing app).
    pub fail_every: AtomicUsize,
    /// The Host (or authority) of the last request.
    pub last_host: std::sync::Mutex<String>,
}

impl PeerState {
    /// Lets a `/reset` response reset its stream. The test calls this once its client holds the
    /// first chunk: a reset while the response head is still queued would drop the head too.
    pub fn reset_now(&self) {
        self.reset.notify_one();
    }

    /// Lets the (next) `/sink` request read its body.
    pub fn open_sink(&self) {
        self.sink.notify_one();
    }
}

pub struct Peer {
    pub addr: SocketAddr,
    pub state: Arc<PeerState>,
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// Starts a peer named `name` on `127.0.0.1:0`.
pub async fn server(name: &str) -> Peer {
    server_on(name, "127.0.0.1:0".parse().unwrap()).await
}

/// Starts a peer named `name` on `addr`.
pub async fn server_on(name: &str, addr: SocketAddr) -> Peer {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = l.local_addr().unwrap();
    let state = Arc::new(PeerState {
        name: name.to_string(),
        ..Default::default()
    });
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            st.connections.fetch_add(1, Ordering::SeqCst);
            let st = st.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let st = st.clone();
                    async move { Ok::<_, Infallible>(handle(st, req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Peer { addr, state }
}

struct CancelGuard(Arc<PeerState>);
impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.0.cancelled.fetch_add(1, Ordering::SeqCst);
    }
}

async fn handle(st: Arc<PeerState>, mut req: Request<Incoming>) -> Response<Body> {
    let n = st.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let every = st.fail_every.load(Ordering::Relaxed);
    if every > 0 && n % every == 0 {
        let mut rsp = Response::new(full("failing on purpose\n"));
        *rsp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        return rsp;
    }
    let delay = st.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if let Some(h) = req.uri().authority().map(|a| a.to_string()).or_else(|| {
        req.headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .map(String::from)
    }) {
        *st.last_host.lock().unwrap() = h;
    }
    match path.as_str() {
        "/echo" => {
            let mut seen = HeaderMap::new();
            let names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
            // The values of the `x-header-*` headers (the Gateway API conformance tests'
            // names), as `x-seen-x-header-*`, several joined with `,`.
            for name in names.iter().filter(|n| n.starts_with("x-header-")) {
                let values: Vec<&str> = req
                    .headers()
                    .get_all(*name)
                    .iter()
                    .map(|v| v.to_str().unwrap_or("?"))
                    .collect();
                seen.insert(
                    HeaderName::from_bytes(format!("x-seen-{name}").as_bytes()).unwrap(),
                    HeaderValue::from_str(&values.join(",")).unwrap(),
                );
            }
            seen.insert(
                "x-seen-headers",
                HeaderValue::from_str(&names.join(",")).unwrap(),
            );
            seen.insert(
                "x-seen-version",
                HeaderValue::from_str(&format!("{:?}", req.version())).unwrap(),
            );
            seen.insert(
                "x-seen-method",
                HeaderValue::from_str(req.method().as_str()).unwrap(),
            );
            let host = req.uri().authority().map(|a| a.to_string()).or_else(|| {
                req.headers()
                    .get("host")
                    .map(|h| h.to_str().unwrap().to_string())
            });
            seen.insert(
                "x-seen-host",
                HeaderValue::from_str(&host.unwrap_or_default()).unwrap(),
            );
            seen.insert("x-served-by", HeaderValue::from_str(&st.name).unwrap());
            if let Some(id) = req.headers().get("x-weft-peer-identity") {
                seen.insert("x-seen-peer-identity", id.clone());
            }
            let mut rsp = Response::new(req.into_body().map_err(Into::into).boxed());
            rsp.headers_mut().extend(seen);
            rsp
        }
        "/sink" => {
            // Reads nothing until the test says so, then the whole body; answers its length.
            st.sink.notified().await;
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(f) = body.frame().await {
                match f.map(Frame::into_data) {
                    Ok(Ok(d)) => n += d.len() as u64,
                    Ok(Err(_)) => {}
                    Err(e) => return Response::new(full(format!("body failed: {e}"))),
                }
            }
            Response::new(full(n.to_string()))
        }
        "/delay" => {
            // Answers after `ms` milliseconds: a slow upstream.
            let ms: u64 = query
                .strip_prefix("ms=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            Response::new(full(st.name.clone()))
        }
        "/id" => {
            let _ = req.into_body().collect().await;
            let mut rsp = Response::new(full(st.name.clone()));
            rsp.headers_mut()
                .insert("x-served-by", HeaderValue::from_str(&st.name).unwrap());
            let status = st.status.load(Ordering::Relaxed);
            if status != 0 {
                *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap();
            }
            rsp
        }
        "/seen-trailers" => {
            // Reads the whole request; answers the names of its trailers, in a header.
            let trailers = match req.into_body().collect().await {
                Ok(c) => c.trailers().cloned().unwrap_or_default(),
                Err(e) => return Response::new(full(format!("body failed: {e}"))),
            };
            let names: Vec<&str> = trailers.keys().map(|k| k.as_str()).collect();
            let mut rsp = Response::new(full("ok"));
            rsp.headers_mut().insert(
                "x-seen-trailers",
                HeaderValue::from_str(&names.join(",")).unwrap(),
            );
            rsp
        }
        "/hop-headers" => {
            // A response carrying hop-by-hop headers, named in `connection` and by RFC 9110.
            Response::builder()
                .header("connection", "keep-alive, x-hop-rsp")
                .header("x-hop-rsp", "must not pass")
                .header("keep-alive", "timeout=5")
                .header("proxy-connection", "keep-alive")
                .header("x-end-to-end-rsp", "kept")
                .body(full("hop"))
                .unwrap()
        }
        "/trailers" => {
            let mut t = HeaderMap::new();
            t.insert("x-trailer", HeaderValue::from_static("yes"));
            let frames = futures_util::stream::iter([
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"body"))),
                Ok(Frame::trailers(t)),
            ]);
            Response::new(StreamBody::new(frames).map_err(|e| match e {}).boxed())
        }
        "/big" => {
            let total: u64 = query
                .strip_prefix("bytes=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1 << 20);
            let (tx, rx) =
                mpsc::channel::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(1);
            let st2 = st.clone();
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'b'; 64 * 1024]);
                let mut sent = 0u64;
                while sent < total {
                    let n = (total - sent).min(chunk.len() as u64) as usize;
                    if tx.send(Ok(Frame::data(chunk.slice(..n)))).await.is_err() {
                        st2.big_dropped.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    sent += n as u64;
                    st2.big_sent.fetch_add(n as u64, Ordering::SeqCst);
                }
            });
            Response::new(StreamBody::new(ReceiverStream::new(rx)).boxed())
        }
        "/upgrade" => {
            // Switches to the protocol offered (an echo, whatever its name).
            let offered = req.headers().get("upgrade").cloned();
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header(
                    "upgrade",
                    offered.unwrap_or_else(|| HeaderValue::from_static("weft-echo")),
                )
                .body(Empty::new().map_err(|e| match e {}).boxed())
                .unwrap()
        }
        "/hang" => {
            let _g = CancelGuard(st.clone());
            std::future::pending::<()>().await;
            unreachable!()
        }
        "/grpc-partial" => {
            let (tx, rx) =
                mpsc::channel::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(1);
            tokio::spawn(async move {
                // One length-prefixed message, then silence until the client goes away.
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))))
                    .await;
                tx.closed().await;
            });
            Response::builder()
                .header("content-type", "application/grpc")
                .body(StreamBody::new(ReceiverStream::new(rx)).boxed())
                .unwrap()
        }
        "/reset" => {
            // One chunk; once the test says its client has it, a body error: the server resets
            // the stream.
            let (tx, rx) =
                mpsc::channel::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(1);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"partial"))))
                    .await;
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(10), st.reset.notified())
                        .await;
                let _ = tx.send(Err("boom".into())).await;
            });
            Response::new(StreamBody::new(ReceiverStream::new(rx)).boxed())
        }
        p if p.starts_with("/status/") => {
            let code: u16 = p[8..].parse().unwrap_or(500);
            Response::builder()
                .status(code)
                .body(full(format!("status {code}")))
                .unwrap()
        }
        "/" => {
            // Reads the whole request first (as a server that needs it would), then answers.
            let mut rsp = match req.into_body().collect().await {
                Ok(_) => Response::new(full("the whole request was read\n")),
                Err(e) => Response::new(full(format!("body failed: {e}"))),
            };
            rsp.headers_mut()
                .insert("x-served-by", HeaderValue::from_str(&st.name).unwrap());
            rsp.headers_mut()
                .insert("x-seen-path", HeaderValue::from_static("/"));
            rsp
        }
        // Named, so that a test routing by path knows which peer answered.
        _ => Response::builder()
            .status(404)
            .header("x-served-by", &st.name)
            .header("x-seen-path", &path)
            .header("x-seen-query", &query)
            .body(full("no such path"))
            .unwrap(),
    }
}

/// One HTTP/1.1 request on a new connection; returns status and body text.
pub async fn simple_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    exchange(
        addr,
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string()),
        body.to_string(),
    )
    .await
}

/// Sends one HTTP/1.1 request on a new connection; returns status and body text.
pub async fn exchange(
    addr: SocketAddr,
    req: http::request::Builder,
    body: String,
) -> (u16, String) {
    let what = format!(
        "{} {} on {addr}",
        req.method_ref().unwrap(),
        req.uri_ref().unwrap()
    );
    let rsp = request_h1(addr, req, body)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = rsp.status().as_u16();
    let text = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&text).into_owned())
}

/// Sends one HTTP/1.1 request on a new connection.
pub async fn request_h1(
    addr: SocketAddr,
    req: http::request::Builder,
    body: String,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(tx.send_request(req.body(body)?).await?)
}

/// An HTTP/2 (prior knowledge) connection to `addr`.
pub async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Body> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

/// A request body from a string.
pub fn body(s: &str) -> Body {
    full(s.to_string())
}

pub type ClientBody = Body;

/// One response of [`keepalive_load`]: status, body, and the time from sending the request to
/// the end of its body.
pub type Answer = (u16, String, std::time::Duration);

/// `workers` keep-alive HTTP/1.1 connections to `addr`, each sending `per_worker` GETs of
/// `path` for `host` (with `headers`) one after another.
pub async fn keepalive_load(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    workers: usize,
    per_worker: usize,
) -> Vec<Answer> {
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let mut req = Request::get(path).header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let template = req.body(()).unwrap();
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut out = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                let mut req = Request::new(Empty::<Bytes>::new());
                *req.uri_mut() = template.uri().clone();
                *req.headers_mut() = template.headers().clone();
                let start = std::time::Instant::now();
                tx.ready().await.unwrap();
                let rsp = tx.send_request(req).await.unwrap();
                let status = rsp.status().as_u16();
                let body = rsp.into_body().collect().await.unwrap().to_bytes();
                out.push((
                    status,
                    String::from_utf8_lossy(&body).into_owned(),
                    start.elapsed(),
                ));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}
