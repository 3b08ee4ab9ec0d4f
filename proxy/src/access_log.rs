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

mod format;
#[cfg(test)]
mod tests;

use std::{
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError},
    },
    time::{Duration, SystemTime},
};

use http::{HeaderMap, Request, Version, header};
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

    const NAMES: [(Flags, &'static str); 14] = [
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

/// What a line says of one request or connection. Made when it arrives, filled as it is
/// routed and answered, and written once it has ended.
#[derive(Debug)]
pub struct Entry {
    log: &'static AccessLog,
    pub start: SystemTime,
    pub started: Instant,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// `HTTP/1.1`, `HTTP/2`, ... or `TCP`.
    pub protocol: &'static str,
    pub method: Option<http::Method>,
    pub client: Option<SocketAddr>,
    /// What the request said of itself, each cut to its bound, in one allocation.
    text: Texts,
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
    format: Format,
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
            .spawn(move || write_lines(rx, out, format))?;
        // It lives as long as the process: requests reach it without counting references.
        Ok(Some(Box::leak(Box::new(AccessLog {
            tx,
            format,
            query,
            dropped,
        }))))
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
        let h = req.headers();
        let uri = req.uri();
        let path = match (self.query, uri.path_and_query()) {
            (true, Some(pq)) => pq.as_str(),
            _ => uri.path(),
        };
        let authority = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| h.get(header::HOST).and_then(|v| v.to_str().ok()));
        let mut e = self.entry(direction, version_name(req.version()), client);
        e.method = Some(req.method().clone());
        // One pass over the headers (a request has few) rather than a lookup for each name.
        let (mut agent, mut referer, mut id) = (None, None, None);
        let mut traced = false;
        for (name, value) in h {
            let v = Some((value.as_bytes(), MAX_FIELD));
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
        let trace = traced.then(|| trace_id(h)).flatten();
        e.text = Texts::new([
            authority.map(|a| (a.as_bytes(), MAX_FIELD)),
            Some((path.as_bytes(), MAX_PATH)),
            agent,
            referer,
            id,
            trace.as_ref().map(|t| (&t[..], 32)),
        ]);
        e
    }

    /// The log's entry for an opaque TCP connection.
    pub fn connection(
        &'static self,
        direction: &'static str,
        client: Option<SocketAddr>,
    ) -> Box<Entry> {
        self.entry(direction, "TCP", client)
    }

    fn entry(
        &'static self,
        direction: &'static str,
        protocol: &'static str,
        client: Option<SocketAddr>,
    ) -> Box<Entry> {
        Box::new(Entry {
            log: self,
            start: SystemTime::now(),
            started: Instant::now(),
            direction,
            protocol,
            method: None,
            client,
            text: Texts::default(),
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

    /// Waits (up to `within`) until every line queued so far is written and flushed: at
    /// shutdown, so that the last requests' lines are not lost.
    pub fn flush(&self, within: Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(within);
        }
    }
}

impl Entry {
    /// Queues the line (its duration measured now); drops and counts it when the queue is full.
    pub fn finish(mut self: Box<Self>) {
        self.duration = self.started.elapsed();
        let log = self.log;
        match log.tx.try_send(Msg::Line(self)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => log.dropped.inc(),
        }
    }

    /// The counter the request body adds its bytes to.
    pub fn bytes_in(&mut self) -> Arc<AtomicU64> {
        self.bytes_in.get_or_insert_default().clone()
    }

    /// The format its line will be written in.
    pub fn format(&self) -> Format {
        self.log.format
    }

    fn received(&self) -> u64 {
        self.bytes_in
            .as_ref()
            .map_or(self.bytes_from_client, |n| n.load(Ordering::Relaxed))
    }
}

/// How long the writer rests after writing what was queued: lines are written in batches, and
/// a request seldom has to wake it.
const REST: Duration = Duration::from_millis(5);

/// The writer thread: formats each line, writes it, flushes once the queue is empty, and rests
/// [`REST`] before looking again.
fn write_lines(rx: Receiver<Msg>, out: Box<dyn Write + Send>, format: Format) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(1024);
    let mut formatter = format::Formatter::default();
    let mut failed = false;
    while let Ok(mut msg) = rx.recv() {
        loop {
            match msg {
                Msg::Line(e) => {
                    line.clear();
                    formatter.line(&e, format, &mut line);
                    if let Err(err) = out.write_all(&line)
                        && !failed
                    {
                        failed = true;
                        tracing::warn!(error = %err, "access log write failed; lines are being lost");
                    }
                }
                Msg::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            match rx.try_recv() {
                Ok(m) => msg = m,
                Err(_) => break,
            }
        }
        if out.flush().is_ok() {
            failed = false;
        }
        std::thread::sleep(REST);
    }
    let _ = out.flush();
}

/// The strings an entry takes from its request, in one buffer: a request's line costs one
/// allocation for them, however many there are.
#[derive(Debug, Default)]
struct Texts {
    buf: String,
    /// Where each of [`AUTHORITY`], [`PATH`], ... is in `buf`.
    spans: [Option<(u16, u16)>; 6],
}

const AUTHORITY: usize = 0;
const PATH: usize = 1;
const USER_AGENT: usize = 2;
const REFERER: usize = 3;
const REQUEST_ID: usize = 4;
const TRACE_ID: usize = 5;

impl Texts {
    /// Each value cut to its bound (on a character boundary; bytes that are not UTF-8 become
    /// U+FFFD). Bounds are at most [`MAX_PATH`], so every span fits in `u16`.
    fn new(values: [Option<(&[u8], usize)>; 6]) -> Texts {
        let len = values
            .iter()
            .flatten()
            .map(|(v, max)| v.len().min(*max))
            .sum();
        let mut t = Texts {
            buf: String::with_capacity(len),
            spans: [None; 6],
        };
        for (span, value) in t.spans.iter_mut().zip(values) {
            let Some((v, max)) = value else { continue };
            let from = t.buf.len();
            match std::str::from_utf8(&v[..v.len().min(max)]) {
                Ok(s) => t.buf.push_str(s),
                Err(_) => t.buf.push_str(&lossy(v, max)),
            }
            *span = Some((from as u16, t.buf.len() as u16));
        }
        t
    }

    fn get(&self, i: usize) -> Option<&str> {
        self.spans[i].map(|(a, b)| &self.buf[usize::from(a)..usize::from(b)])
    }
}

impl Entry {
    pub fn authority(&self) -> Option<&str> {
        self.text.get(AUTHORITY)
    }

    /// The path, with the query when the log keeps it.
    pub fn path(&self) -> Option<&str> {
        self.text.get(PATH)
    }

    pub fn user_agent(&self) -> Option<&str> {
        self.text.get(USER_AGENT)
    }

    pub fn referer(&self) -> Option<&str> {
        self.text.get(REFERER)
    }

    pub fn request_id(&self) -> Option<&str> {
        self.text.get(REQUEST_ID)
    }

    /// The W3C (or B3) trace id the request carried, as 32 lowercase hex digits.
    pub fn trace_id(&self) -> Option<&str> {
        self.text.get(TRACE_ID)
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

pub static X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");
static TRACEPARENT: header::HeaderName = header::HeaderName::from_static("traceparent");
static B3_TRACE_ID: header::HeaderName = header::HeaderName::from_static("x-b3-traceid");

/// `bytes` as text, cut to at most `max` bytes (on a character boundary); bytes that are not
/// UTF-8 become U+FFFD.
fn lossy(bytes: &[u8], max: usize) -> Box<str> {
    let bytes = &bytes[..bytes.len().min(max)];
    let s = String::from_utf8_lossy(bytes);
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].into()
}

/// The trace id of a valid W3C `traceparent` (version 00 and later), else of B3
/// (`x-b3-traceid`, 16 or 32 hex digits, the short form padded as B3 specifies): 32 lowercase
/// hex digits.
pub fn trace_id(h: &HeaderMap) -> Option<[u8; 32]> {
    if let Some(tp) = h.get(&TRACEPARENT).map(|v| v.as_bytes()) {
        // version "-" trace-id "-" parent-id "-" flags, lowercase hex; version 00 is exactly
        // that, a later version may add fields after another "-".
        let ok = tp.len() >= 55
            && tp[2] == b'-'
            && tp[35] == b'-'
            && tp[52] == b'-'
            && tp[..2] != *b"ff"
            && [&tp[..2], &tp[3..35], &tp[36..52], &tp[53..55]]
                .iter()
                .all(|part| hex_lower(part))
            && (tp.len() == 55 || (tp[..2] != *b"00" && tp[55] == b'-'));
        if !ok {
            return None;
        }
        let id = &tp[3..35];
        // An all-zero trace id or parent id is invalid.
        if id.iter().all(|&b| b == b'0') || tp[36..52].iter().all(|&b| b == b'0') {
            return None;
        }
        return id.try_into().ok();
    }
    let b3 = h.get(&B3_TRACE_ID)?.as_bytes();
    if !(b3.len() == 16 || b3.len() == 32) || !hex(b3) || b3.iter().all(|&b| b == b'0') {
        return None;
    }
    let mut id = [b'0'; 32];
    id[32 - b3.len()..].copy_from_slice(b3);
    id.make_ascii_lowercase();
    Some(id)
}

fn hex(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_hexdigit)
}

fn hex_lower(b: &[u8]) -> bool {
    b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}
