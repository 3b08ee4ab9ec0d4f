//! Distributed tracing: each HTTP request the sidecar proxies continues the caller's trace
//! (W3C Trace Context; B3's multiple headers accepted) or starts one, and, when sampled, is a
//! span of its own: a client span outbound, a server span inbound. The request goes on with
//! this sidecar's span id in `traceparent`, so the application's spans and the sidecars' form
//! one tree. Spans are exported over OTLP/gRPC by a task on the control runtime.
//!
//! Sampling: a caller's decision is kept (an unsampled request passes through untouched and
//! costs nothing more than reading its headers); a new trace is sampled at
//! `--trace-sampling` percent. Tracing is on when `--trace-otlp-endpoint` names a collector;
//! without one the headers pass through as they came.
//!
//! Bounds: `--trace-max-rate` spans a second at most (1,000 by default), whether the rate or
//! callers asked for them; beyond, a request is not traced by this sidecar and is counted
//! (`weft_trace_spans_dropped_total{reason="rate_limited"}`). `--trace-queue` spans wait for
//! export at most, in the batches being filled, full or being sent (each at most about 6 KiB:
//! every string taken from a request is cut to the access log's bounds, gRPC names to 128
//! bytes, `tracestate` to 512), so about 12 MiB by default; beyond, spans are dropped and
//! counted (`weft_trace_spans_dropped_total{reason="queue_full"}`). A batch the collector
//! refuses or cannot take is retried with backoff, then dropped and counted.

mod export;
mod queue;
mod span;
#[cfg(test)]
mod tests;
mod wire;
use crate::trace_context as context;
pub use crate::trace_context::{Parent, parent};
pub use export::{ExportConfig, Exporter};

use http::HeaderMap;
use tokio::sync::{Notify, mpsc};

pub use wire::Batch;

use crate::access_log::{Entry, OnFinish};
use crate::config::{DiscoveryConfig, TraceConfig};
use crate::metrics::{Direction, ObserveMetrics};

/// The longest `tracestate` a span keeps: the 512 characters W3C Trace Context asks every
/// vendor to propagate at least.
pub const MAX_TRACESTATE: usize = 512;

/// The largest `--trace-queue`.
pub const MAX_QUEUE: u32 = 100_000;

pub use crate::trace_context::X_REQUEST_ID;

/// The tracer the listeners share: samples, starts spans, queues the finished ones.
#[derive(Debug)]
pub struct Tracer {
    /// New traces sampled, in millionths.
    sampling: u32,
    /// Spans waiting for export.
    pub(crate) queue: queue::Queue,
    /// Spans this sidecar makes per second at most, whoever asked for them.
    limit: crate::resilience::TokenBucket,
    queue_full: prometheus::IntCounter,
    rate_limited: prometheus::IntCounter,
    /// Asks the exporter to send the batches being filled at once (at shutdown).
    pub(crate) flush_now: Notify,
}

/// A sampled request's span, while the request is in flight.
#[derive(Debug)]
pub struct Traced {
    tracer: &'static Tracer,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's span; `None` for a trace this sidecar started.
    pub parent: Option<[u8; 8]>,
    /// The caller's `tracestate` (a copy, at most [`MAX_TRACESTATE`] bytes), kept on the span.
    state: Option<Box<str>>,
    direction: Direction,
}

impl Tracer {
    /// A tracer sampling `percent` of new traces, whose spans go through a queue of `queue`
    /// to the exporter (the full batches come out of the receiver returned).
    pub fn new(
        percent: f64,
        queue: u32,
        max_rate: u32,
        dropped: prometheus::IntCounterVec,
    ) -> (&'static Tracer, mpsc::UnboundedReceiver<Batch>) {
        let (queue, rx) = queue::Queue::new(queue.clamp(1, MAX_QUEUE) as usize);
        let sampling = (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
        // It lives as long as the process: requests reach it without counting references.
        let t = Box::leak(Box::new(Tracer {
            sampling,
            queue,
            limit: crate::resilience::TokenBucket::new(f64::from(max_rate), max_rate.max(1)),
            queue_full: dropped.with_label_values(&["queue_full"]),
            rate_limited: dropped.with_label_values(&["rate_limited"]),
            flush_now: Notify::new(),
        }));
        (t, rx)
    }

    /// A request arriving (before any of its headers is read for the access log): its span if
    /// it is sampled, with `traceparent` (and B3, when the caller spoke it) rewritten to name
    /// it; `None`, the headers untouched, if not.
    /// `now`: when the request came (the rate is counted at that time).
    pub fn start(
        &'static self,
        h: &mut HeaderMap,
        direction: Direction,
        now: tokio::time::Instant,
    ) -> Option<Traced> {
        let seen = context::seen(h);
        let parent = context::parent_seen(h, seen);
        let sampled = match parent.and_then(|p| p.sampled) {
            Some(s) => s,
            None if seen.b3 && context::b3_denied(h) => false,
            None => self.sampling > 0 && fastrand::u32(0..1_000_000) < self.sampling,
        };
        if !sampled {
            return None;
        }
        // Past the rate, a request is not traced here (its headers go on as they came: the
        // trace continues without this sidecar's span): no caller can make the sidecar spend
        // without bound by asking for every request to be traced.
        if !self.limit.take_at(now) {
            self.rate_limited.inc();
            return None;
        }
        let trace_id = parent.map_or_else(new_trace_id, |p| p.trace_id);
        let span_id = new_span_id();
        // Copied, so that a queued span never holds the request's header buffer; a longer one
        // than W3C asks vendors to propagate is left off the span (it still goes upstream).
        let state = parent
            .filter(|p| seen.tracestate && !p.b3)
            .and_then(|_| h.get(&context::TRACESTATE))
            .filter(|v| v.len() <= MAX_TRACESTATE)
            .and_then(|v| v.to_str().ok())
            .map(Box::from);
        context::propagate(h, seen, parent.as_ref(), &trace_id, &span_id);
        Some(Traced {
            tracer: self,
            trace_id,
            span_id,
            parent: parent.map(|p| p.span_id),
            state,
            direction,
        })
    }

    /// The span of the request `e` describes, queued for export (or dropped and counted when
    /// the queue is full).
    fn record(&self, t: &Traced, e: &Entry) {
        if !self.queue.push(|out| span::encode(t, e, out)) {
            self.queue_full.inc();
        }
    }

    /// Waits (up to `within`) until every span queued so far has been exported or given up on:
    /// at shutdown, so that the last requests' spans are not lost.
    pub async fn flush(&self, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.queue.waiting() > 0 && tokio::time::Instant::now() < deadline {
            // Again each time: spans of requests that end meanwhile go too.
            self.flush_now.notify_one();
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

impl OnFinish for Traced {
    /// The request is over: its span, made from its access log entry, is queued for export.
    fn finish(self: Box<Self>, e: &Entry) {
        self.tracer.record(&self, e);
    }
}

/// Sets a generated `x-request-id` (a random UUID, version 4) when the request has none.
pub fn ensure_request_id(h: &mut HeaderMap) {
    if h.contains_key(&X_REQUEST_ID) {
        return;
    }
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut v = [0u8; 36];
    let mut at = 0;
    for (i, chunk) in [&b[..4], &b[4..6], &b[6..8], &b[8..10], &b[10..]]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            v[at] = b'-';
            at += 1;
        }
        context::encode(chunk, &mut v[at..at + chunk.len() * 2]);
        at += chunk.len() * 2;
    }
    h.insert(X_REQUEST_ID.clone(), context::unique(&v));
}

fn new_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// Why tracing could not start: the flag at fault and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("--trace-otlp-endpoint: `{0}` is neither http:// nor https://")]
    Scheme(String),
    #[error("--trace-otlp-ca: {0}")]
    Ca(String),
}

/// Starts the tracer and its exporter (on the control runtime) when a collector is named;
/// `None` when tracing is off.
pub fn start(
    t: &TraceConfig,
    node: &DiscoveryConfig,
    metrics: &ObserveMetrics,
    control: &tokio::runtime::Handle,
) -> Result<Option<&'static Tracer>, TraceError> {
    let Some(url) = &t.otlp_endpoint else {
        return Ok(None);
    };
    let tls = match url.split_once("://") {
        Some(("https", _)) => Some(collector_tls(t.otlp_ca.as_deref()).map_err(TraceError::Ca)?),
        Some(("http", _)) => None,
        _ => return Err(TraceError::Scheme(url.clone())),
    };
    let mut resource = vec![
        ("service.name", "weft-proxy".to_string()),
        ("service.version", env!("CARGO_PKG_VERSION").to_string()),
        ("service.instance.id", node.node_id()),
        ("k8s.namespace.name", node.pod_namespace.clone()),
    ];
    if let Some(pod) = &node.pod_name {
        resource.push(("k8s.pod.name", pod.clone()));
    }
    let dropped = metrics.trace_dropped.clone();
    let (tracer, rx) = Tracer::new(t.sampling, t.queue, t.max_rate, dropped);
    let export = ExportConfig {
        endpoint: url.clone(),
        tls,
        resource,
    };
    let exporter = Exporter::new(
        tracer,
        rx,
        export,
        metrics.trace_exported.clone(),
        metrics.trace_dropped.clone(),
    );
    control.spawn(exporter.run());
    tracing::info!(endpoint = %url, sampling = t.sampling, "tracing on");
    Ok(Some(tracer))
}

/// The TLS client configuration that verifies an `https://` collector: with the PEM
/// certificates of `ca`, else the system's (`SSL_CERT_FILE`, else Debian's bundle).
fn collector_tls(
    ca: Option<&std::path::Path>,
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    let path = match ca {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("SSL_CERT_FILE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into()),
    };
    let certs = crate::tls::load_certs(&path).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{}: no usable CA certificate", path.display()));
    }
    Ok(std::sync::Arc::new(crate::tls::control_plane_config(
        std::sync::Arc::new(roots),
    )))
}

#[cfg(test)]
type OtelSpan = opentelemetry_proto::tonic::trace::v1::Span;

/// The spans of `b` as the collector reads them: in an export, decoded with the official types.
#[cfg(test)]
pub fn decoded(b: &Batch) -> Vec<OtelSpan> {
    use prost::Message;
    let bytes = wire::request(&[], ("t", "0"), "", b);
    let req = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
        &bytes[..],
    )
    .expect("what wire writes decodes");
    req.resource_spans[0].scope_spans[0].spans.clone()
}

/// The span whose fields `write` writes, as the collector reads it.
#[cfg(test)]
pub fn decoded_one(write: impl FnOnce(&mut Vec<u8>)) -> OtelSpan {
    let mut b = Batch::default();
    b.push(write);
    decoded(&b).remove(0)
}

/// A tracer's spans as they finish, for tests (in place of the exporter).
#[cfg(test)]
pub struct Spans {
    tracer: &'static Tracer,
    full: mpsc::UnboundedReceiver<Batch>,
    got: std::collections::VecDeque<OtelSpan>,
}

#[cfg(test)]
impl Spans {
    pub fn new(tracer: &'static Tracer, full: mpsc::UnboundedReceiver<Batch>) -> Spans {
        Spans {
            tracer,
            full,
            got: Default::default(),
        }
    }

    /// The next span to finish, waiting up to a second (of the test's time) for one.
    pub async fn next(&mut self) -> Option<OtelSpan> {
        for _ in 0..100 {
            while let Ok(b) = self.full.try_recv() {
                self.tracer.queue.done(b.spans());
                self.got.extend(decoded(&b));
            }
            if let Some(b) = self.tracer.queue.take_filling() {
                self.tracer.queue.done(b.spans());
                self.got.extend(decoded(&b));
            }
            if let Some(s) = self.got.pop_front() {
                return Some(s);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        None
    }
}
