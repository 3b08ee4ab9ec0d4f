//! The span exporter: batches the queued spans and sends them to the collector with OTLP/gRPC
//! (`TraceService/Export`), retrying what the collector could not take (the status codes the
//! OTLP specification calls retryable) with the one backoff, then dropping and counting. It
//! runs on the control runtime; a collector that is down or slow only costs spans.

use std::{sync::Arc, time::Duration};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use tokio::sync::mpsc;
use tonic::{Code, transport::Channel};

/// Spans sent in one export at most.
pub const MAX_BATCH: usize = 512;
/// How long a span waits for its batch to fill at most.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
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

/// Sends the tracer's spans; [`Exporter::run`] until the tracer is gone.
#[derive(Debug)]
pub struct Exporter {
    rx: mpsc::Receiver<Span>,
    cfg: ExportConfig,
    exported: prometheus::IntCounter,
    dropped: prometheus::IntCounterVec,
    client: Option<TraceServiceClient<Channel>>,
    /// Whether the last failure has been logged (one warning per outage).
    warned: bool,
}

impl Exporter {
    pub fn new(
        rx: mpsc::Receiver<Span>,
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
        }
    }

    pub async fn run(mut self) {
        while let Some(first) = self.rx.recv().await {
            let mut batch = Vec::with_capacity(64);
            batch.push(first);
            let until = tokio::time::Instant::now() + BATCH_DELAY;
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(until, self.rx.recv()).await {
                    Ok(Some(s)) => batch.push(s),
                    Ok(None) | Err(_) => break,
                }
            }
            self.export(batch).await;
        }
    }

    fn request(&self, spans: Vec<Span>) -> ExportTraceServiceRequest {
        let attributes = self
            .cfg
            .resource
            .iter()
            .map(|(k, v)| KeyValue {
                key: (*k).into(),
                value: Some(AnyValue {
                    value: Some(Value::StringValue(v.clone())),
                }),
                ..KeyValue::default()
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes,
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "weft-proxy".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..InstrumentationScope::default()
                    }),
                    spans,
                    schema_url: SCHEMA_URL.into(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    async fn export(&mut self, spans: Vec<Span>) {
        let n = spans.len() as u64;
        let req = self.request(spans);
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
                        Ok(ch) => self.client.insert(TraceServiceClient::new(ch)),
                        Err(e) => {
                            self.warn(&e);
                            continue;
                        }
                    }
                }
            };
            match tokio::time::timeout(EXPORT_TIMEOUT, client.export(req.clone())).await {
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

/// What OTLP/gRPC says a client retries (the rest are final).
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
            | Code::ResourceExhausted
    )
}
