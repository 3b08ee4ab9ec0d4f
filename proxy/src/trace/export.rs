//! The span exporter: sends each batch of spans (full, or what is filling, taken
//! [`BATCH_DELAY`] after a batch got its first span) to the collector with OTLP/gRPC
//! (`TraceService/Export`), retrying what the collector could not take (the status codes the
//! OTLP specification calls retryable) with the one backoff, then dropping and counting. It
//! runs on the control runtime; a collector that is down or slow only costs spans.

use std::{sync::Arc, time::Duration};

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tokio::sync::mpsc;
use tonic::{
    Code,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

use super::queue::BATCH_DELAY;
use super::{Batch, wire};

/// One export's time limit.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries of one batch before it is dropped.
const TRIES: u32 = 5;
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The semantic conventions the attributes follow.
const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.26.0";

/// Where spans go and what the sidecar says of itself.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// `http://host:port` (plaintext) or `https://host:port`.
    pub endpoint: String,
    /// Verifies an `https://` collector.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The resource's attributes: `service.name` and the pod's names.
    pub resource: Vec<(&'static str, String)>,
}

/// Sends the tracer's spans; [`Exporter::run`] for as long as the process runs.
#[derive(Debug)]
pub struct Exporter {
    /// Full batches.
    rx: mpsc::UnboundedReceiver<Batch>,
    cfg: ExportConfig,
    exported: prometheus::IntCounter,
    dropped: prometheus::IntCounterVec,
    client: Option<tonic::client::Grpc<Channel>>,
    /// Whether the last failure has been logged (one warning per outage).
    warned: bool,
    /// The tracer whose spans these are: its batches still filling, told when spans are done.
    tracer: &'static super::Tracer,
}

impl Exporter {
    /// Sends `tracer`'s spans, from `rx` (which [`super::Tracer::new`] returned with it).
    pub fn new(
        tracer: &'static super::Tracer,
        rx: mpsc::UnboundedReceiver<Batch>,
        cfg: ExportConfig,
        exported: prometheus::IntCounter,
        dropped: prometheus::IntCounterVec,
    ) -> Self {
        Exporter {
            rx,
            cfg,
            exported,
            dropped,
            client: None,
            warned: false,
            tracer,
        }
    }

    /// Exports full batches as they come, and what is filling [`BATCH_DELAY`] after a batch
    /// got its first span (or at once when asked to flush); with no span anywhere, it waits.
    pub async fn run(mut self) {
        let queue = &self.tracer.queue;
        // When to take what is filling; `None`: nothing is.
        let mut take_at = None;
        loop {
            let take = tokio::select! {
                full = self.rx.recv() => match full {
                    Some(b) => {
                        self.export(b).await;
                        false
                    }
                    None => return,
                },
                () = queue.filled.notified(), if take_at.is_none() => {
                    take_at = Some(tokio::time::Instant::now() + BATCH_DELAY);
                    false
                }
                () = sleep_until(take_at) => true,
                () = self.tracer.flush_now.notified() => true,
            };
            if take {
                take_at = None;
                if let Some(b) = queue.take_filling() {
                    self.export(b).await;
                }
            }
        }
    }

    async fn export(&mut self, spans: Batch) {
        let n = spans.spans();
        self.send(spans).await;
        self.tracer.queue.done(n);
    }

    async fn send(&mut self, spans: Batch) {
        let n = spans.spans() as u64;
        // Encoded once; every try sends the same bytes.
        let scope = ("weft-proxy", env!("CARGO_PKG_VERSION"));
        let (head, tail) = wire::around(&self.cfg.resource, scope, SCHEMA_URL, &spans);
        let req = [head, spans.into_bytes(), tail].map(Bytes::from);
        for attempt in 0..TRIES {
            if attempt > 0 {
                let wait = weft_core::backoff::full_jitter(
                    BACKOFF_BASE,
                    BACKOFF_MAX,
                    attempt - 1,
                    fastrand::f64(),
                );
                tokio::time::sleep(wait).await;
            }
            let client = match &mut self.client {
                Some(c) => c,
                None => {
                    match crate::transport::grpc_channel(&self.cfg.endpoint, self.cfg.tls.clone())
                        .await
                    {
                        Ok(ch) => self.client.insert(tonic::client::Grpc::new(ch)),
                        Err(e) => {
                            self.warn(&e);
                            continue;
                        }
                    }
                }
            };
            let call = async {
                client
                    .ready()
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
                client
                    .unary(tonic::Request::new(req.clone()), path, RawCodec)
                    .await
            };
            match tokio::time::timeout(EXPORT_TIMEOUT, call).await {
                Ok(Ok(rsp)) => {
                    let rejected = rsp
                        .into_inner()
                        .partial_success
                        .map_or(0, |p| p.rejected_spans.clamp(0, n as i64) as u64);
                    self.exported.inc_by(n - rejected);
                    if rejected > 0 {
                        self.dropped
                            .with_label_values(&["rejected"])
                            .inc_by(rejected);
                    }
                    if self.warned {
                        tracing::info!(endpoint = %self.cfg.endpoint, "trace export recovered");
                    }
                    self.warned = false;
                    return;
                }
                Ok(Err(status)) if retryable(status.code()) => {
                    self.warn(&format!("{}: {}", status.code(), status.message()));
                }
                Ok(Err(status)) => {
                    self.warn(&format!(
                        "{}: {} (not retried)",
                        status.code(),
                        status.message()
                    ));
                    self.dropped.with_label_values(&["export_failed"]).inc_by(n);
                    return;
                }
                Err(_) => {
                    // A collector this slow may be gone: connect again.
                    self.client = None;
                    self.warn(&format!("no answer within {EXPORT_TIMEOUT:?}"));
                }
            }
        }
        self.dropped.with_label_values(&["export_failed"]).inc_by(n);
    }

    fn warn(&mut self, why: &str) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(endpoint = %self.cfg.endpoint, error = %why, "trace export failed; spans are retried, then dropped");
        }
    }
}

/// The method spans are sent to.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Sends a request already encoded (by [`wire`]), in its parts (what comes before the spans,
/// the spans, what comes after), each written once into the message tonic frames; decodes the
/// answer with the official types.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = [Bytes; 3];
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = [Bytes; 3];
    type Error = tonic::Status;

    fn encode(&mut self, item: [Bytes; 3], dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        // Room made once: the buffer is not grown (and moved) part by part.
        dst.reserve(item.iter().map(Bytes::len).sum());
        for part in item {
            dst.put_slice(&part);
        }
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        use prost::Message;
        let bytes = src.copy_to_bytes(src.remaining());
        ExportTraceServiceResponse::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

/// What OTLP/gRPC says a client retries (the rest are final). `RESOURCE_EXHAUSTED` is
/// retryable only with the server's `RetryInfo`, which is not read here: it is final.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// Sleeps until `at`; for ever when there is none.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
