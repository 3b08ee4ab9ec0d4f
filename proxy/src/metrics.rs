//! Prometheus metrics. Label values are resolved once per target (a service, the local
//! application) when the target is first seen; the request path only bumps counters it already
//! holds.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

mod conn;
mod observe;
mod target;

pub use conn::{AuthzProtocol, ConnMetrics, OpenConn, PROTOCOLS, TlsMetrics};
pub use observe::ObserveMetrics;
use target::{ATTEMPT_BUCKETS, TrafficFamilies};
pub use target::{LazyTarget, TargetMetrics};

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Which way traffic flows through the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the local application to the mesh.
    Outbound,
    /// From the mesh to the local application.
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Latency buckets in seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// gRPC status codes 0 (OK) to 16 (UNAUTHENTICATED) get precomputed counters.
const GRPC_CODES: usize = 17;
/// The `grpc_status` of a gRPC status past the defined codes (a label value any upstream could
/// otherwise choose).
const GRPC_OTHER: u32 = u32::MAX;

/// A target's identity: its direction, its label (a service, the local application), and the
/// route and backend of its request and response series (empty for the target's own).
type TargetKey = (Direction, Arc<str>, Arc<str>, Arc<str>);

pub struct Metrics {
    registry: Registry,
    /// The name of every family registered, whether it has series yet or not.
    families: Vec<String>,
    requests: IntCounterVec,
    responses: IntCounterVec,
    latency: HistogramVec,
    targets: Mutex<HashMap<TargetKey, Arc<TargetMetrics>>>,
    conns: [Arc<ConnMetrics>; 2],
    pub table_generation: IntGauge,
    table_services: IntGauge,
    table_info: IntGaugeVec,
    table_reloads: IntCounterVec,
    upstream_connect_errors: IntCounterVec,
    /// 1 while an ADS stream to the control plane is open.
    pub xds_connected: IntGauge,
    /// The access log's and the tracer's series.
    pub observe: ObserveMetrics,
    xds_updates: IntCounterVec,
    endpoint_dns: IntCounterVec,
    pub tls: TlsMetrics,
    traffic: Arc<TrafficFamilies>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("weft")
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let names = std::cell::RefCell::new(Vec::new());
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            names
                .borrow_mut()
                .extend(c.desc().iter().map(|d| d.fq_name.clone()));
            registry.register(c).expect("metric names are unique");
        };
        // Outbound requests routed by the table are counted per route and backend (a canary's
        // backends apart); every other request has both empty.
        let requests = IntCounterVec::new(
            opts("request_total", "HTTP requests received."),
            &["direction", "target", "route", "backend"],
        )
        .unwrap();
        let responses = IntCounterVec::new(
            opts(
                "response_total",
                "HTTP responses sent, by status code and (for gRPC) grpc-status.",
            ),
            &[
                "direction",
                "target",
                "route",
                "backend",
                "status_code",
                "grpc_status",
            ],
        )
        .unwrap();
        let latency = HistogramVec::new(
            HistogramOpts::from(opts(
                "response_latency_seconds",
                "Time from a request's headers to its response's headers.",
            ))
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["direction", "target", "route", "backend"],
        )
        .unwrap();
        let open = IntGaugeVec::new(
            opts("tcp_open_connections", "Accepted TCP connections now open."),
            &["direction"],
        )
        .unwrap();
        let accepted = IntCounterVec::new(
            opts("tcp_accepted_total", "TCP connections accepted."),
            &["direction"],
        )
        .unwrap();
        let refused = IntCounterVec::new(
            opts(
                "tcp_refused_total",
                "TCP connections closed at once: the listener held --max-connections.",
            ),
            &["direction"],
        )
        .unwrap();
        let read = IntCounterVec::new(
            opts(
                "tcp_read_bytes_total",
                "Bytes read from accepted connections.",
            ),
            &["direction"],
        )
        .unwrap();
        let write = IntCounterVec::new(
            opts(
                "tcp_write_bytes_total",
                "Bytes written to accepted connections.",
            ),
            &["direction"],
        )
        .unwrap();
        let detected = IntCounterVec::new(
            opts(
                "protocol_detect_total",
                "Accepted connections by the protocol detected (http1, http2, tls, opaque).",
            ),
            &["direction", "protocol"],
        )
        .unwrap();
        let table_generation = IntGauge::with_opts(opts(
            "table_generation",
            "Routing tables loaded since start; 0 means none yet.",
        ))
        .unwrap();
        let table_services = IntGauge::with_opts(opts(
            "table_services",
            "Services in the routing table in force.",
        ))
        .unwrap();
        let table_info = IntGaugeVec::new(
            opts(
                "table_info",
                "The routing table in force (value is always 1).",
            ),
            &["version"],
        )
        .unwrap();
        let table_reloads = IntCounterVec::new(
            opts(
                "table_reloads_total",
                "Routing-table reloads by result; a failed reload keeps the table in force.",
            ),
            &["result"],
        )
        .unwrap();
        let upstream_connect_errors = IntCounterVec::new(
            opts(
                "upstream_connect_errors_total",
                "Failed connection attempts to upstream endpoints, by reason.",
            ),
            &["direction", "reason"],
        )
        .unwrap();
        let xds_connected = IntGauge::with_opts(opts(
            "xds_connected",
            "1 while the ADS stream to the control plane is open.",
        ))
        .unwrap();
        let xds_updates = IntCounterVec::new(
            opts(
                "xds_updates_total",
                "xDS responses received, by resource type and result (ack, nack).",
            ),
            &["type", "result"],
        )
        .unwrap();
        let endpoint_dns = IntCounterVec::new(
            opts(
                "endpoint_dns_resolutions_total",
                "Resolutions of endpoints configured by host name, by result (ok, no_records, error).",
            ),
            &["result"],
        )
        .unwrap();
        let authz = IntCounterVec::new(
            opts(
                "authz_total",
                "Inbound authorization decisions, by protocol (http, grpc, tcp) and result (allow, deny).",
            ),
            &["protocol", "result"],
        )
        .unwrap();
        let tls = TlsMetrics {
            handshakes: IntCounterVec::new(
                opts(
                    "tls_handshakes_total",
                    "Mutual TLS handshakes between sidecars, by direction and result (ok, or why it failed).",
                ),
                &["direction", "result"],
            )
            .unwrap(),
            refused: IntCounterVec::new(
                opts(
                    "inbound_refused_total",
                    "Inbound connections refused before any handshake, by reason (proxy_port, not_local, not_redirected, plaintext, foreign_tls, opaque_to_http).",
                ),
                &["reason"],
            )
            .unwrap(),
            outbound_refused: IntCounter::with_opts(opts(
                "outbound_refused_total",
                "Connections to an outbound listener from a peer outside the pod, refused.",
            ))
            .unwrap(),
            authz: ["http", "grpc", "tcp"]
                .map(|p| ["deny", "allow"].map(|r| authz.with_label_values(&[p, r]))),
            peer_requests: IntCounterVec::new(
                opts(
                    "inbound_peer_requests_total",
                    "Inbound HTTP requests by the caller's SPIFFE id (empty for plaintext) and whether it came over mutual TLS.",
                ),
                &["client_id", "tls"],
            )
            .unwrap(),
            cert_expiry: IntGauge::with_opts(opts(
                "identity_cert_expiry_timestamp_seconds",
                "When the workload certificate in hand expires (Unix seconds); 0 without one.",
            ))
            .unwrap(),
            renewals: IntCounter::with_opts(opts(
                "identity_renewals_total",
                "Workload certificates obtained (first one and renewals, or identity file reloads).",
            ))
            .unwrap(),
            renewal_failures: IntCounter::with_opts(opts(
                "identity_renewal_failures_total",
                "Failed attempts to obtain or reload the workload certificate.",
            ))
            .unwrap(),
        };
        for c in [&tls.handshakes, &tls.refused, &authz, &tls.peer_requests] {
            reg(Box::new(c.clone()));
        }
        reg(Box::new(tls.outbound_refused.clone()));
        reg(Box::new(tls.cert_expiry.clone()));
        reg(Box::new(tls.renewals.clone()));
        reg(Box::new(tls.renewal_failures.clone()));
        for c in [
            &requests, &responses, &accepted, &refused, &read, &write, &detected,
        ] {
            reg(Box::new(c.clone()));
        }
        reg(Box::new(latency.clone()));
        reg(Box::new(open.clone()));
        reg(Box::new(table_generation.clone()));
        reg(Box::new(table_services.clone()));
        reg(Box::new(table_info.clone()));
        reg(Box::new(table_reloads.clone()));
        reg(Box::new(upstream_connect_errors.clone()));
        reg(Box::new(xds_connected.clone()));
        let observe = ObserveMetrics::new(&reg);
        reg(Box::new(xds_updates.clone()));
        reg(Box::new(endpoint_dns.clone()));
        let dt = ["direction", "target"];
        let traffic = TrafficFamilies {
            retries: IntCounterVec::new(
                opts("retries_total", "Retries, by reason (the retry condition, or per-try-timeout)."),
                &["direction", "target", "reason"],
            )
            .unwrap(),
            budget_exhausted: IntCounterVec::new(
                opts(
                    "retry_budget_exhausted_total",
                    "Retries not made because the retry budget was spent.",
                ),
                &dt,
            )
            .unwrap(),
            attempts: HistogramVec::new(
                HistogramOpts::from(opts(
                    "request_attempts",
                    "Tries per request on routes that retry (1 means no retry).",
                ))
                .buckets(ATTEMPT_BUCKETS.to_vec()),
                &dt,
            )
            .unwrap(),
            overflow: IntCounterVec::new(
                opts(
                    "circuit_breaker_overflow_total",
                    "Requests failed fast (or retries not made) at a cluster limit, by limit (connections, pending, requests, retries).",
                ),
                &["direction", "target", "limit"],
            )
            .unwrap(),
            pending_timeouts: IntCounterVec::new(
                opts(
                    "pending_timeouts_total",
                    "Requests failed because no connection or stream to the endpoint came free within --pending-timeout.",
                ),
                &dt,
            )
            .unwrap(),
            ejections: IntCounterVec::new(
                opts("outlier_ejections_total", "Endpoints ejected by outlier detection."),
                &dt,
            )
            .unwrap(),
            ejected: IntGaugeVec::new(
                opts("outlier_ejected_endpoints", "Endpoints now ejected by outlier detection."),
                &dt,
            )
            .unwrap(),
            rate_limited: IntCounterVec::new(
                opts(
                    "rate_limited_total",
                    "Requests refused by a local rate limit (429, RESOURCE_EXHAUSTED).",
                ),
                &dt,
            )
            .unwrap(),
            faults: IntCounterVec::new(
                opts("faults_injected_total", "Faults injected, by kind (delay, abort)."),
                &["direction", "target", "fault"],
            )
            .unwrap(),
            mirrored: IntCounterVec::new(
                opts(
                    "mirrored_requests_total",
                    "Requests copied to a mirror, by result (sent: it answered; failed: it did not).",
                ),
                &["direction", "target", "result"],
            )
            .unwrap(),
        };
        for c in [
            &traffic.retries,
            &traffic.budget_exhausted,
            &traffic.overflow,
            &traffic.pending_timeouts,
            &traffic.ejections,
            &traffic.rate_limited,
            &traffic.faults,
            &traffic.mirrored,
        ] {
            reg(Box::new(c.clone()));
        }
        reg(Box::new(traffic.attempts.clone()));
        reg(Box::new(traffic.ejected.clone()));
        for r in ["ok", "error"] {
            table_reloads.with_label_values(&[r]);
        }
        let conns = [Direction::Outbound, Direction::Inbound].map(|d| {
            let l = [d.as_str()];
            Arc::new(ConnMetrics {
                open: open.with_label_values(&l),
                accepted: accepted.with_label_values(&l),
                refused: refused.with_label_values(&l),
                read_bytes: read.with_label_values(&l),
                write_bytes: write.with_label_values(&l),
                detected: PROTOCOLS.map(|p| detected.with_label_values(&[d.as_str(), p])),
            })
        });
        Arc::new(Metrics {
            registry,
            families: names.into_inner(),
            requests,
            responses,
            latency,
            targets: Mutex::new(HashMap::new()),
            conns,
            table_generation,
            table_services,
            table_info,
            table_reloads,
            upstream_connect_errors,
            xds_connected,
            observe,
            xds_updates,
            endpoint_dns,
            tls,
            traffic: Arc::new(traffic),
        })
    }

    pub fn conns(&self, direction: Direction) -> &Arc<ConnMetrics> {
        &self.conns[direction as usize]
    }

    pub fn connect_error(&self, direction: Direction, reason: &'static str) {
        self.upstream_connect_errors
            .with_label_values(&[direction.as_str(), reason])
            .inc();
    }

    /// Records a table now in force, of `services` services.
    pub fn table_loaded(&self, version: &str, generation: u64, services: usize) {
        self.table_info.reset();
        self.table_info.with_label_values(&[version]).set(1);
        self.table_generation.set(generation as i64);
        self.table_services.set(services as i64);
        if generation > 1 {
            self.table_reloads.with_label_values(&["ok"]).inc();
        }
    }

    /// Counts an xDS response of `kind` (listener, route, cluster, endpoint), acknowledged or
    /// rejected.
    pub fn xds_update(&self, kind: &str, ack: bool) {
        self.xds_updates
            .with_label_values(&[kind, if ack { "ack" } else { "nack" }])
            .inc();
    }

    /// Counts one resolution of an endpoint host name: `ok`, `no_records` or `error`.
    pub fn endpoint_dns(&self, result: &'static str) {
        self.endpoint_dns.with_label_values(&[result]).inc();
    }

    pub fn table_reload_failed(&self) {
        self.table_reloads.with_label_values(&["error"]).inc();
    }

    /// The names of every metric family this proxy can export (a family is exported once it
    /// has a series).
    pub fn families(&self) -> &[String] {
        &self.families
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

#[cfg(test)]
mod tests;
