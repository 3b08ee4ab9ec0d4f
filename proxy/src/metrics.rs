//! Prometheus metrics. Label values are resolved once per target (a service, the local
//! application) when the target is first seen; the request path only bumps counters it already
//! holds.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
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

/// A target's identity: its direction and its label (a service, the local application).
type TargetKey = (Direction, Arc<str>);

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
    table_info: IntGaugeVec,
    table_reloads: IntCounterVec,
    upstream_connect_errors: IntCounterVec,
    /// 1 while an ADS stream to the control plane is open.
    pub xds_connected: IntGauge,
    xds_updates: IntCounterVec,
    endpoint_dns: IntCounterVec,
    pub tls: TlsMetrics,
    traffic: Arc<TrafficFamilies>,
}

/// The traffic-management metric families (retries, limits, ejections, faults, mirroring).
#[derive(Debug)]
struct TrafficFamilies {
    retries: IntCounterVec,
    budget_exhausted: IntCounterVec,
    attempts: HistogramVec,
    overflow: IntCounterVec,
    pending_timeouts: IntCounterVec,
    ejections: IntCounterVec,
    ejected: IntGaugeVec,
    rate_limited: IntCounterVec,
    faults: IntCounterVec,
    mirrored: IntCounterVec,
}

/// Buckets of `weft_request_attempts`: tries per request.
const ATTEMPT_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 11.0];

/// A target's traffic-management handles, each made on first use (a service that never
/// retries shows no retry series).
#[derive(Default)]
struct TrafficHandles {
    retries: [OnceLock<IntCounter>; crate::traffic::REASON_COUNT],
    budget_exhausted: OnceLock<IntCounter>,
    attempts: OnceLock<Histogram>,
    overflow: [OnceLock<IntCounter>; crate::traffic::LIMITS.len()],
    pending_timeouts: OnceLock<IntCounter>,
    ejections: OnceLock<IntCounter>,
    ejected: OnceLock<IntGauge>,
    rate_limited: OnceLock<IntCounter>,
    faults: [OnceLock<IntCounter>; 2],
    mirrored: [OnceLock<IntCounter>; 2],
}

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
    handshakes: IntCounterVec,
    /// `weft_inbound_refused_total{reason}`: inbound connections turned away before any
    /// handshake (reasons are the code's own words, never the peer's).
    pub refused: IntCounterVec,
    /// `weft_outbound_refused_total`: connections to an outbound listener from outside the pod.
    pub outbound_refused: IntCounter,
    /// `weft_authz_total{protocol, result}`, by [`AuthzProtocol`] and then deny, allow.
    authz: [[IntCounter; 2]; 3],
    /// `weft_inbound_peer_requests_total{client_id, tls}`.
    peer_requests: IntCounterVec,
    /// Set from the identity when metrics are read.
    pub cert_expiry: IntGauge,
    renewals: IntCounter,
    renewal_failures: IntCounter,
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

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Per-target handles, created once per target and kept across table swaps.
pub struct TargetMetrics {
    direction: &'static str,
    target: Arc<str>,
    requests: IntCounter,
    latency: Histogram,
    responses: IntCounterVec,
    /// Indexed by status code - 100; filled the first time a code is seen.
    http: Box<[OnceLock<IntCounter>]>,
    /// gRPC responses by grpc-status: HTTP 200, then 499 (the client went away first).
    grpc: [[OnceLock<IntCounter>; GRPC_CODES]; 2],
    /// Any other combination (a status code outside 100-599, a gRPC status with another
    /// HTTP status), made once each. Bounded: HTTP status codes have three digits, and a
    /// grpc-status past the 17 defined codes is counted as `other` ([`GRPC_OTHER`]).
    other: Mutex<HashMap<(u16, Option<u32>), IntCounter>>,
    families: Arc<TrafficFamilies>,
    traffic: TrafficHandles,
}

impl std::fmt::Debug for TargetMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetMetrics")
            .field("direction", &self.direction)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// A service's handles, made the first time a request or connection uses the service: a table
/// of 10,000 services costs no metric memory, and `/metrics` shows no series, for the services
/// this pod never calls. Created once per target and kept across table swaps (see
/// [`Metrics::target`]).
pub struct LazyTarget {
    cell: OnceLock<Arc<TargetMetrics>>,
    metrics: Arc<Metrics>,
    direction: Direction,
    target: Arc<str>,
}

impl LazyTarget {
    pub fn new(metrics: &Arc<Metrics>, direction: Direction, target: Arc<str>) -> Self {
        LazyTarget {
            cell: OnceLock::new(),
            metrics: metrics.clone(),
            direction,
            target,
        }
    }
}

impl std::ops::Deref for LazyTarget {
    type Target = Arc<TargetMetrics>;

    fn deref(&self) -> &Arc<TargetMetrics> {
        self.cell
            .get_or_init(|| self.metrics.target(self.direction, &self.target))
    }
}

impl std::fmt::Debug for LazyTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyTarget")
            .field("target", &self.target)
            .field("made", &self.cell.get().is_some())
            .finish()
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
    detected: [IntCounter; 4],
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
    metrics: Arc<ConnMetrics>,
    /// Given back when the last holder is gone.
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
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
        let requests = IntCounterVec::new(
            opts("request_total", "HTTP requests received."),
            &["direction", "target"],
        )
        .unwrap();
        let responses = IntCounterVec::new(
            opts(
                "response_total",
                "HTTP responses sent, by status code and (for gRPC) grpc-status.",
            ),
            &["direction", "target", "status_code", "grpc_status"],
        )
        .unwrap();
        let latency = HistogramVec::new(
            HistogramOpts::from(opts(
                "response_latency_seconds",
                "Time from a request's headers to its response's headers.",
            ))
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["direction", "target"],
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
        reg(Box::new(table_info.clone()));
        reg(Box::new(table_reloads.clone()));
        reg(Box::new(upstream_connect_errors.clone()));
        reg(Box::new(xds_connected.clone()));
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
            table_info,
            table_reloads,
            upstream_connect_errors,
            xds_connected,
            xds_updates,
            endpoint_dns,
            tls,
            traffic: Arc::new(traffic),
        })
    }

    /// The handles for one target, created on first use and shared afterwards.
    pub fn target(&self, direction: Direction, target: &Arc<str>) -> Arc<TargetMetrics> {
        let mut targets = self.targets.lock().expect("metrics lock");
        targets
            .entry((direction, target.clone()))
            .or_insert_with(|| {
                let l = [direction.as_str(), &**target];
                Arc::new(TargetMetrics {
                    direction: direction.as_str(),
                    target: target.clone(),
                    requests: self.requests.with_label_values(&l),
                    latency: self.latency.with_label_values(&l),
                    responses: self.responses.clone(),
                    http: (100..600).map(|_| OnceLock::new()).collect(),
                    grpc: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
                    other: Mutex::new(HashMap::new()),
                    families: self.traffic.clone(),
                    traffic: TrafficHandles::default(),
                })
            })
            .clone()
    }

    pub fn conns(&self, direction: Direction) -> &Arc<ConnMetrics> {
        &self.conns[direction as usize]
    }

    pub fn connect_error(&self, direction: Direction, reason: &'static str) {
        self.upstream_connect_errors
            .with_label_values(&[direction.as_str(), reason])
            .inc();
    }

    /// Records a table now in force.
    pub fn table_loaded(&self, version: &str, generation: u64) {
        self.table_info.reset();
        self.table_info.with_label_values(&[version]).set(1);
        self.table_generation.set(generation as i64);
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

impl TargetMetrics {
    fn labels(&self) -> [&str; 2] {
        [self.direction, &self.target]
    }

    /// The target's labels and one more.
    fn labels_and<'a>(&'a self, extra: &'a str) -> [&'a str; 3] {
        [self.direction, &self.target, extra]
    }

    pub fn retry(&self, reason: crate::traffic::Reason) {
        self.traffic.retries[reason as usize]
            .get_or_init(|| {
                self.families
                    .retries
                    .with_label_values(&self.labels_and(reason.as_str()))
            })
            .inc();
    }

    pub fn budget_exhausted(&self) {
        self.traffic
            .budget_exhausted
            .get_or_init(|| {
                self.families
                    .budget_exhausted
                    .with_label_values(&self.labels())
            })
            .inc();
    }

    pub fn attempts(&self, n: u32) {
        self.traffic
            .attempts
            .get_or_init(|| self.families.attempts.with_label_values(&self.labels()))
            .observe(f64::from(n));
    }

    pub fn pending_timeout(&self) {
        self.traffic
            .pending_timeouts
            .get_or_init(|| {
                self.families
                    .pending_timeouts
                    .with_label_values(&self.labels())
            })
            .inc();
    }

    pub fn overflow(&self, limit: crate::traffic::Limit) {
        self.traffic.overflow[limit as usize]
            .get_or_init(|| {
                self.families
                    .overflow
                    .with_label_values(&self.labels_and(limit.as_str()))
            })
            .inc();
    }

    fn ejected_gauge(&self) -> &IntGauge {
        self.traffic
            .ejected
            .get_or_init(|| self.families.ejected.with_label_values(&self.labels()))
    }

    /// An endpoint was ejected.
    pub fn ejection(&self) {
        self.traffic
            .ejections
            .get_or_init(|| self.families.ejections.with_label_values(&self.labels()))
            .inc();
        self.ejected_gauge().inc();
    }

    /// An ejected endpoint is back in service.
    pub fn returned(&self) {
        self.ejected_gauge().dec();
    }

    pub fn rate_limited(&self) {
        self.traffic
            .rate_limited
            .get_or_init(|| self.families.rate_limited.with_label_values(&self.labels()))
            .inc();
    }

    /// `abort` false: a delay.
    pub fn fault(&self, abort: bool) {
        let (i, kind) = if abort { (1, "abort") } else { (0, "delay") };
        self.traffic.faults[i]
            .get_or_init(|| {
                self.families
                    .faults
                    .with_label_values(&self.labels_and(kind))
            })
            .inc();
    }

    pub fn mirrored(&self, answered: bool) {
        let (i, result) = if answered { (0, "sent") } else { (1, "failed") };
        self.traffic.mirrored[i]
            .get_or_init(|| {
                self.families
                    .mirrored
                    .with_label_values(&self.labels_and(result))
            })
            .inc();
    }

    pub fn request(&self) {
        self.requests.inc();
    }

    pub fn latency(&self, secs: f64) {
        self.latency.observe(secs);
    }

    /// Counts a finished response. `grpc` is the grpc-status of a gRPC response, if any.
    /// Label values are formatted once per target and combination, never per response.
    pub fn response(&self, status: u16, grpc: Option<u32>) {
        // The upstream chooses the number: one label value for every undefined code.
        let grpc = grpc.map(|g| {
            if (g as usize) < GRPC_CODES {
                g
            } else {
                GRPC_OTHER
            }
        });
        let row = match status {
            200 => Some(0),
            499 => Some(1),
            _ => None,
        };
        let slot = match (grpc, row) {
            (Some(g), Some(row)) => self.grpc[row].get(g as usize),
            (Some(_), None) => None,
            (None, _) => self.http.get(usize::from(status).wrapping_sub(100)),
        };
        match slot {
            Some(slot) => slot.get_or_init(|| self.counter(status, grpc)).inc(),
            None => self
                .other
                .lock()
                .expect("metrics lock")
                .entry((status, grpc))
                .or_insert_with(|| self.counter(status, grpc))
                .inc(),
        }
    }

    fn counter(&self, status: u16, grpc: Option<u32>) -> IntCounter {
        let grpc = match grpc {
            Some(GRPC_OTHER) => "other".to_string(),
            Some(g) => g.to_string(),
            None => String::new(),
        };
        self.responses.with_label_values(&[
            self.direction,
            &*self.target,
            &status.to_string(),
            &grpc,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_counted_by_code() {
        let m = Metrics::new();
        let t = m.target(Direction::Outbound, &Arc::from("echo:80"));
        assert!(Arc::ptr_eq(
            &t,
            &m.target(Direction::Outbound, &Arc::from("echo:80"))
        ));
        t.request();
        t.response(200, None);
        t.response(200, None);
        t.response(200, Some(14));
        t.response(503, None);
        t.response(499, Some(1));
        t.response(499, Some(1));
        t.response(502, Some(14));
        t.response(700, None);
        // Undefined gRPC codes share one series.
        t.response(200, Some(17));
        t.response(200, Some(4_000_000_000));
        t.response(503, Some(99));
        m.tls.authz(AuthzProtocol::Grpc, false);
        let text = m.render();
        assert!(
            text.contains(r#"weft_request_total{direction="outbound",target="echo:80"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"weft_response_total{direction="outbound",grpc_status="",status_code="200",target="echo:80"} 2"#), "{text}");
        assert!(
            text.contains(r#"grpc_status="14",status_code="200",target="echo:80"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"status_code="503",target="echo:80"} 1"#),
            "{text}"
        );
        for line in [
            r#"grpc_status="1",status_code="499",target="echo:80"} 2"#,
            r#"grpc_status="14",status_code="502",target="echo:80"} 1"#,
            r#"grpc_status="",status_code="700",target="echo:80"} 1"#,
            r#"grpc_status="other",status_code="200",target="echo:80"} 2"#,
            r#"grpc_status="other",status_code="503",target="echo:80"} 1"#,
            r#"weft_authz_total{protocol="grpc",result="deny"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
