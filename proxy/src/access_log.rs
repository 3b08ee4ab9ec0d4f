//! The access log: one line per HTTP request and per opaque TCP connection, as JSON or in
//! Apache's combined format (with the fields Linkerd adds), written to stdout or a file.
//!
//! The request path only fills an [`Entry`] (a few small copies, each cut to a bound) and hands
//! it to a bounded queue with `try_send`; a thread of its own formats and writes the lines in
//! batches, flushing after each. When the queue is full the line is dropped and counted in
//! `weft_access_log_dropped_total`: a slow disk or pipe never holds a request back. With the log
//! off no entry is made, and the request path only checks an `Option` that is `None`.
//!
//! Bounds: `--access-log-queue` lines queued (4,096 by default), each at most about 4 KiB (every
//! field taken from a request is cut: see [`MAX_PATH`] and [`MAX_FIELD`]), so at most about
//! 16 MiB in the queue.

mod clock;
mod digits;
mod format;
#[cfg(test)]
mod tests;
mod text;
mod writer;

pub use text::trace_id;
use text::{Text, Texts};

use crate::trace_context::{B3_TRACE_ID, TRACEPARENT, X_REQUEST_ID};

use std::{
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{SyncSender, TrySendError},
    },
    time::Duration,
};

use http::{Request, Version, header};
use tokio::time::Instant;

use crate::config::AccessLogConfig;
pub use crate::config::AccessLogFormat as Format;

pub use format::rfc3339_millis;

/// The longest request path (and query) a line keeps, in bytes; a longer one is cut.
pub const MAX_PATH: usize = 2048;
/// The longest value of any other field taken from a request (authority, user agent,
/// referer, `x-request-id`), in bytes.
pub const MAX_FIELD: usize = 256;
/// Lines queued for the writer by default (`--access-log-queue`).
pub const DEFAULT_QUEUE: usize = 4096;

/// Why a request or connection ended as it did, in Envoy's response-flag vocabulary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(u16);

impl Flags {
    /// No healthy upstream endpoint.
    pub const UH: Flags = Flags(1);
    /// Upstream connection failure (TCP or mutual TLS).
    pub const UF: Flags = Flags(1 << 1);
    /// Upstream overflow: the circuit breaker's limits, or no room within the pending timeout.
    pub const UO: Flags = Flags(1 << 2);
    /// No route: no service for the request's authority.
    pub const NR: Flags = Flags(1 << 3);
    /// Retries exhausted: the last try still failed in a way the policy retries.
    pub const URX: Flags = Flags(1 << 4);
    /// Upstream request timeout (the route's timeout, a per-try timeout, the gRPC deadline).
    pub const UT: Flags = Flags(1 << 5);
    /// The upstream closed or reset the connection or stream.
    pub const UC: Flags = Flags(1 << 6);
    /// The downstream client closed or reset before the response ended.
    pub const DC: Flags = Flags(1 << 7);
    /// Rate limited.
    pub const RL: Flags = Flags(1 << 8);
    /// Fault injected: abort.
    pub const FI: Flags = Flags(1 << 9);
    /// Fault injected: delay.
    pub const DI: Flags = Flags(1 << 10);
    /// The stream was idle for its idle timeout.
    pub const SI: Flags = Flags(1 << 11);
    /// Upstream protocol error (an upgrade the request did not offer).
    pub const UPE: Flags = Flags(1 << 12);
    /// Downstream protocol error (a malformed request).
    pub const DPE: Flags = Flags(1 << 13);
    /// No such upstream cluster: a route's backend that could not be resolved.
    pub const NC: Flags = Flags(1 << 14);

    const NAMES: [(Flags, &'static str); 15] = [
        (Flags::UH, "UH"),
        (Flags::UF, "UF"),
        (Flags::UO, "UO"),
        (Flags::NR, "NR"),
        (Flags::URX, "URX"),
        (Flags::UT, "UT"),
        (Flags::UC, "UC"),
        (Flags::DC, "DC"),
        (Flags::RL, "RL"),
        (Flags::FI, "FI"),
        (Flags::DI, "DI"),
        (Flags::SI, "SI"),
        (Flags::UPE, "UPE"),
        (Flags::DPE, "DPE"),
        (Flags::NC, "NC"),
    ];

    pub fn set(&mut self, f: Flags) {
        self.0 |= f.0;
    }

    pub fn contains(self, f: Flags) -> bool {
        self.0 & f.0 == f.0 && f.0 != 0
    }

    /// As Envoy writes them: `UF,URX`; `-` for none.
    pub fn render(self) -> String {
        let mut out = Vec::new();
        format::flags(self, &mut out);
        String::from_utf8(out).expect("flag names are ASCII")
    }
}

/// What else ends with an entry: the request's span (`trace`), made from the entry.
pub trait OnFinish: Send + Sync + std::fmt::Debug {
    fn finish(self: Box<Self>, e: &Entry);
}

/// What a line says of one request or connection. Made when it arrives, filled as it is
/// routed and answered, and written once it has ended.
#[derive(Debug)]
pub struct Entry {
    /// Where the line goes; `None` when only the span is wanted (the log off, the request
    /// traced).
    log: Option<&'static AccessLog>,
    /// The request's span, when it is traced: it ends with the entry.
    pub traced: Option<Box<dyn OnFinish>>,
    /// Unix nanoseconds (from `started`: see `clock`).
    pub start: u64,
    pub started: Instant,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// `HTTP/1.1`, `HTTP/2`, ... or `TCP`.
    pub protocol: &'static str,
    pub method: Option<http::Method>,
    pub client: Option<SocketAddr>,
    /// What the request said of itself, each cut to its bound, in one allocation.
    text: Texts,
    /// The trace the request is in (W3C or B3), when it names one or the sidecar started one.
    trace_id: Option<[u8; 16]>,
    /// The service the request was routed to (outbound), or the application (inbound).
    pub service: Option<Arc<str>>,
    pub route: Option<Arc<str>>,
    /// The backend (cluster) the split chose.
    pub backend: Option<Arc<str>>,
    /// The endpoint the last try went to.
    pub upstream: Option<SocketAddr>,
    /// Inbound: the caller's SPIFFE id.
    pub client_identity: Option<Arc<str>>,
    /// Outbound: the SPIFFE id the endpoint had to prove.
    pub upstream_identity: Option<Arc<str>>,
    pub attempts: u32,
    /// HTTP status; 0 for TCP.
    pub status: u16,
    pub grpc_status: Option<u32>,
    pub flags: Flags,
    /// Request body bytes read from the client (shared with the body that counts them, made
    /// for a request that has a body), or bytes from the client (TCP).
    bytes_in: Option<Arc<AtomicU64>>,
    /// TCP: bytes from the client.
    pub bytes_from_client: u64,
    /// Response body bytes sent to the client (TCP: bytes to the client).
    pub bytes_out: u64,
    pub duration: Duration,
    /// From the last try's send to its response's headers.
    pub upstream_time: Option<Duration>,
}

/// The writer's side of the log, shared by every listener.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<Msg>,
    query: bool,
    dropped: prometheus::IntCounter,
}

enum Msg {
    Line(Box<Entry>),
    /// Answered once every line queued before it has been written and flushed.
    Flush(std::sync::mpsc::Sender<()>),
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Line(_) => "Line",
            Msg::Flush(_) => "Flush",
        })
    }
}

/// Where the lines go.
pub enum Sink {
    Stdout,
    File(std::fs::File),
    /// For tests: any writer.
    Writer(Box<dyn Write + Send>),
}

impl AccessLog {
    /// Starts the writer thread; `None` when the format is `off`. `query`: whether paths keep
    /// their query. `queue`: lines held for the writer, beyond which lines are dropped.
    pub fn start(
        format: Format,
        sink: Sink,
        query: bool,
        queue: usize,
        dropped: prometheus::IntCounter,
    ) -> std::io::Result<Option<&'static AccessLog>> {
        if format == Format::Off {
            return Ok(None);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(queue.max(1));
        let out: Box<dyn Write + Send> = match sink {
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::File(f) => Box::new(f),
            Sink::Writer(w) => w,
        };
        std::thread::Builder::new()
            .name("weft-access-log".into())
            .spawn(move || writer::write_lines(rx, out, format))?;
        // It lives as long as the process: requests reach it without counting references.
        Ok(Some(Box::leak(Box::new(AccessLog { tx, query, dropped }))))
    }

    /// The log `cfg` asks for: `None` when it is off. The error names the file that could not
    /// be opened.
    pub fn from_config(
        cfg: &AccessLogConfig,
        dropped: prometheus::IntCounter,
    ) -> Result<Option<&'static AccessLog>, (PathBuf, std::io::Error)> {
        if cfg.format == Format::Off {
            return Ok(None);
        }
        let sink = match &cfg.path {
            None => Sink::Stdout,
            Some(p) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(Sink::File)
                .map_err(|e| (p.clone(), e))?,
        };
        let queue = cfg.queue as usize;
        let here = || PathBuf::from(cfg.path.as_deref().unwrap_or("stdout".as_ref()));
        AccessLog::start(cfg.format, sink, cfg.query, queue, dropped).map_err(|e| (here(), e))
    }

    /// The log's entry for an HTTP request (before any of its headers is changed).
    pub fn request<B>(
        &'static self,
        req: &Request<B>,
        direction: &'static str,
        client: Option<SocketAddr>,
    ) -> Box<Entry> {
        Entry::request(Some(self), req, direction, client, None, Instant::now())
    }

    /// The log's entry for an opaque TCP connection.
    pub fn connection(
        &'static self,
        direction: &'static str,
        client: Option<SocketAddr>,
    ) -> Box<Entry> {
        Entry::new(Some(self), direction, "TCP", client, Instant::now())
    }

    /// Waits (up to `within`) until every line queued so far is written and flushed: at
    /// shutdown, so that the last requests' lines are not lost.
    pub fn flush(&self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        let (tx, rx) = std::sync::mpsc::channel();
        // Never blocks past `within`, not even behind a full queue whose writer is stuck.
        let mut msg = Msg::Flush(tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
        let _ = rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
    }
}

impl Entry {
    /// The entry for an HTTP request (before any of its headers is changed), for the log
    /// (`log`) and, when traced, its span. `known_trace`: the trace id when the sidecar has
    /// just written it (not parsed back from the headers). `started`: when the request came.
    pub fn request<B>(
        log: Option<&'static AccessLog>,
        req: &Request<B>,
        direction: &'static str,
        client: Option<SocketAddr>,
        known_trace: Option<[u8; 16]>,
        started: Instant,
    ) -> Box<Entry> {
        let h = req.headers();
        let uri = req.uri();
        let query = log.is_some_and(|l| l.query);
        let path = match (query, uri.path_and_query()) {
            (true, Some(pq)) => pq.as_str(),
            _ => uri.path(),
        };
        let authority = match uri.authority() {
            Some(a) => Some(Text::Str(a.as_str())),
            None => h.get(header::HOST).map(|v| Text::Bytes(v.as_bytes())),
        };
        let mut e = Entry::new(log, direction, version_name(req.version()), client, started);
        e.method = Some(bounded_method(req.method()));
        // One pass over the headers (a request has few) rather than a lookup for each name.
        let (mut agent, mut referer, mut id) = (None, None, None);
        let mut traced = false;
        for (name, value) in h {
            let v = Some((Text::Bytes(value.as_bytes()), MAX_FIELD));
            if name == header::USER_AGENT {
                agent = agent.or(v);
            } else if name == header::REFERER {
                referer = referer.or(v);
            } else if name == X_REQUEST_ID {
                id = id.or(v);
            } else if name == TRACEPARENT || name == B3_TRACE_ID {
                traced = true;
            }
        }
        e.trace_id = known_trace.or_else(|| traced.then(|| trace_id(h)).flatten());
        e.text = Texts::new([
            authority.map(|a| (a, MAX_FIELD)),
            Some((Text::Str(path), MAX_PATH)),
            agent,
            referer,
            id,
        ]);
        e
    }

    fn new(
        log: Option<&'static AccessLog>,
        direction: &'static str,
        protocol: &'static str,
        client: Option<SocketAddr>,
        started: Instant,
    ) -> Box<Entry> {
        Box::new(Entry {
            log,
            traced: None,
            start: clock::unix_nanos(started),
            started,
            direction,
            protocol,
            method: None,
            client,
            text: Texts::default(),
            trace_id: None,
            service: None,
            route: None,
            backend: None,
            upstream: None,
            client_identity: None,
            upstream_identity: None,
            attempts: 0,
            status: 0,
            grpc_status: None,
            flags: Flags::default(),
            bytes_in: None,
            bytes_from_client: 0,
            bytes_out: 0,
            duration: Duration::ZERO,
            upstream_time: None,
        })
    }

    /// Ends the request's span, if it is traced, and queues the line (its duration measured
    /// now); drops and counts it when the queue is full.
    pub fn finish(mut self: Box<Self>) {
        self.duration = self.started.elapsed();
        if let Some(t) = self.traced.take() {
            t.finish(&self);
        }
        let Some(log) = self.log else { return };
        match log.tx.try_send(Msg::Line(self)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => log.dropped.inc(),
        }
    }

    /// The counter the request body adds its bytes to.
    pub fn bytes_in(&mut self) -> Arc<AtomicU64> {
        self.bytes_in.get_or_insert_default().clone()
    }

    fn received(&self) -> u64 {
        self.bytes_in
            .as_ref()
            .map_or(self.bytes_from_client, |n| n.load(Ordering::Relaxed))
    }
}

/// The request's method, cut to [`MAX_FIELD`] bytes: an extension method is the client's
/// text, as long as its request line allows, and a queued line must not keep all of it.
fn bounded_method(m: &http::Method) -> http::Method {
    match m.as_str().as_bytes() {
        long if long.len() > MAX_FIELD => {
            // A method is a token (ASCII): any prefix of one is one.
            http::Method::from_bytes(&long[..MAX_FIELD]).unwrap_or_else(|_| m.clone())
        }
        _ => m.clone(),
    }
}

/// The protocol as a line names it.
fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}
