//! Counting a response once it is over, in metrics and the access log.

use std::sync::Arc;

use http::HeaderMap;

use crate::access_log::{Entry, Flags};
use crate::grpc;
use crate::metrics::TargetMetrics;

/// Counts a request's response in metrics once it is over: at its end of stream, at its
/// trailers, or when it is dropped unfinished (a reset or cancelled stream). Made as soon as a
/// request is routed, so a request the client abandons before any response counts too: as
/// status 499 (nginx's "client closed request"), gRPC status 1 CANCELLED. With the access log
/// on it also carries the request's line, written when it is counted.
#[derive(Debug)]
pub struct Observer {
    metrics: Arc<TargetMetrics>,
    status: u16,
    /// Whether the request was gRPC.
    pub(super) grpc: bool,
    /// grpc-status from the response headers (trailers-only responses).
    header_status: Option<u32>,
    done: bool,
    /// The upstream's body is being relayed: dropped before its end, the client went away.
    pub(super) relaying: bool,
    pub(super) log: Option<Box<Entry>>,
}

impl Observer {
    pub fn new(metrics: Arc<TargetMetrics>, grpc: bool) -> Self {
        Observer {
            metrics,
            status: 499,
            grpc,
            header_status: grpc.then_some(grpc::CANCELLED),
            done: false,
            relaying: false,
            log: None,
        }
    }

    /// Carries the request's access log line (when the log is on).
    pub fn logged(mut self, entry: Option<Box<Entry>>) -> Self {
        self.log = entry;
        self
    }

    /// The request's access log line, if the log is on.
    pub fn entry(&mut self) -> Option<&mut Entry> {
        self.log.as_deref_mut()
    }

    /// Marks the line with a response flag.
    pub fn flag(&mut self, f: Flags) {
        if let Some(e) = &mut self.log {
            e.flags.set(f);
        }
    }

    /// The response's head has been sent downstream.
    pub fn response_head(&mut self, status: u16, headers: &HeaderMap) {
        self.status = status;
        self.header_status = if self.grpc {
            grpc::status(headers)
        } else {
            None
        };
    }

    pub(super) fn finish(&mut self, trailer_status: Option<u32>) {
        if !self.done {
            self.done = true;
            let g = trailer_status.or(self.header_status);
            let g = if self.grpc { g } else { None };
            self.metrics.response(self.status, g);
            if let Some(mut e) = self.log.take() {
                e.status = self.status;
                e.grpc_status = g;
                e.finish();
            }
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        // Dropped before the end: the client went away (reset, cancelled, disconnected).
        if !self.done && (self.relaying || self.status == 499) {
            self.flag(Flags::DC);
        }
        self.finish(None);
    }
}
