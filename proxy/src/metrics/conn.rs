//! Connection handles (per direction), and workload identity, mutual TLS and authorization.

use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, IntGauge};

use super::Direction;

/// What an authorization decision was about, for `weft_authz_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzProtocol {
    Http,
    Grpc,
    Tcp,
}

/// Workload identity, mutual TLS and authorization.
#[derive(Debug)]
pub struct TlsMetrics {
    /// `weft_tls_handshakes_total{direction, result}`: `ok` or why it failed.
    pub(super) handshakes: IntCounterVec,
    /// `weft_inbound_refused_total{reason}`: inbound connections turned away before any
    /// handshake (reasons are the code's own words, never the peer's).
    pub refused: IntCounterVec,
    /// `weft_outbound_refused_total`: connections to an outbound listener from outside the pod.
    pub outbound_refused: IntCounter,
    /// `weft_authz_total{protocol, result}`, by [`AuthzProtocol`] and then deny, allow.
    pub(super) authz: [[IntCounter; 2]; 3],
    /// `weft_inbound_peer_requests_total{client_id, tls}`.
    pub(super) peer_requests: IntCounterVec,
    /// Set from the identity when metrics are read.
    pub cert_expiry: IntGauge,
    pub(super) renewals: IntCounter,
    pub(super) renewal_failures: IntCounter,
}

impl TlsMetrics {
    pub fn handshake(&self, direction: Direction, result: &str) {
        self.handshakes
            .with_label_values(&[direction.as_str(), result])
            .inc();
    }

    /// Counts an authorization decision.
    pub fn authz(&self, protocol: AuthzProtocol, allowed: bool) {
        self.authz[protocol as usize][usize::from(allowed)].inc();
    }

    /// Brings the identity's figures up to date (called before metrics are rendered).
    pub fn identity(&self, expires: Option<std::time::SystemTime>, renewals: u64, failures: u64) {
        let secs = expires
            .and_then(|e| e.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        self.cert_expiry.set(secs);
        self.renewals
            .inc_by(renewals.saturating_sub(self.renewals.get()));
        self.renewal_failures
            .inc_by(failures.saturating_sub(self.renewal_failures.get()));
    }

    /// The counter of requests from one caller; resolved once per connection.
    pub fn peer_requests(&self, client_id: Option<&str>) -> IntCounter {
        let tls = if client_id.is_some() { "true" } else { "false" };
        self.peer_requests
            .with_label_values(&[client_id.unwrap_or(""), tls])
    }
}

/// Per-direction connection handles.
#[derive(Debug)]
pub struct ConnMetrics {
    pub open: IntGauge,
    pub accepted: IntCounter,
    /// `weft_tcp_refused_total`: closed at once, the listener holding `--max-connections`.
    pub refused: IntCounter,
    pub read_bytes: IntCounter,
    pub write_bytes: IntCounter,
    /// `weft_protocol_detect_total`, one handle per entry of [`PROTOCOLS`].
    pub(super) detected: [IntCounter; 4],
}

/// The `protocol` label values of `weft_protocol_detect_total`.
pub const PROTOCOLS: [&str; 4] = ["http1", "http2", "tls", "opaque"];

impl ConnMetrics {
    /// Counts a connection by its detected protocol (one of [`PROTOCOLS`]).
    pub fn detected(&self, protocol: &str) {
        if let Some(i) = PROTOCOLS.iter().position(|p| *p == protocol) {
            self.detected[i].inc();
        }
    }
}

/// One open accepted connection in `weft_tcp_open_connections`: counted while this lives, and
/// holding its listener's slot (`--max-connections`), tunnels it upgraded into included.
#[derive(Debug)]
pub struct OpenConn {
    pub(super) metrics: Arc<ConnMetrics>,
    /// Given back when the last holder is gone.
    pub(super) _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl OpenConn {
    pub fn new(m: Arc<ConnMetrics>) -> Self {
        Self::holding(m, None)
    }

    pub fn holding(m: Arc<ConnMetrics>, slot: Option<tokio::sync::OwnedSemaphorePermit>) -> Self {
        m.open.inc();
        OpenConn {
            metrics: m,
            _slot: slot,
        }
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.metrics.open.dec();
    }
}
