//! The access log's and the tracer's own series: what they lost, and what the collector took.

use prometheus::{IntCounter, IntCounterVec};

use super::opts;

/// `weft_access_log_dropped_total`, `weft_trace_spans_exported_total`,
/// `weft_trace_spans_dropped_total{reason}`.
#[derive(Debug)]
pub struct ObserveMetrics {
    /// Access log lines dropped because the writer's queue was full.
    pub access_log_dropped: IntCounter,
    pub trace_exported: IntCounter,
    pub trace_dropped: IntCounterVec,
}

impl ObserveMetrics {
    pub(super) fn new(reg: &dyn Fn(Box<dyn prometheus::core::Collector>)) -> Self {
        let access_log_dropped = IntCounter::with_opts(opts(
            "access_log_dropped_total",
            "Access log lines dropped: the writer's queue (--access-log-queue) was full.",
        ))
        .unwrap();
        let trace_exported = IntCounter::with_opts(opts(
            "trace_spans_exported_total",
            "Spans the collector accepted.",
        ))
        .unwrap();
        let trace_dropped = IntCounterVec::new(
            opts(
                "trace_spans_dropped_total",
                "Spans lost, by reason: queue_full (--trace-queue), rate_limited (--trace-max-rate: the request was not traced here), export_failed (the collector down or refusing past the retries), rejected (the collector took the batch but not these spans).",
            ),
            &["reason"],
        )
        .unwrap();
        for reason in ["queue_full", "rate_limited", "export_failed", "rejected"] {
            trace_dropped.with_label_values(&[reason]);
        }
        reg(Box::new(access_log_dropped.clone()));
        reg(Box::new(trace_exported.clone()));
        reg(Box::new(trace_dropped.clone()));
        ObserveMetrics {
            access_log_dropped,
            trace_exported,
            trace_dropped,
        }
    }
}
