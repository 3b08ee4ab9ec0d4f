//! The control plane's Prometheus metrics.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Streams open now.
    pub connected_proxies: IntGauge,
    /// Responses sent, by type URL.
    pub pushes: IntCounterVec,
    /// Rejections received, by type URL.
    pub nacks: IntCounterVec,
    /// xDS snapshots published (each a change some proxy may need).
    pub snapshots: IntCounter,
    /// Registry problems in force now (bad files, duplicates).
    pub registry_errors: IntGauge,
    /// Registry changes seen (a burst the watch coalesced counts once).
    pub registry_events: IntCounter,
    /// From a registry change to the response carrying it being handed to a proxy's stream.
    pub push_latency: Histogram,
    /// Handshakes on the TLS port that failed or timed out.
    pub tls_handshake_failures: IntCounter,
    /// Certificate requests to the CA, by result (issued, unauthenticated, denied, invalid,
    /// error).
    pub ca_requests: IntCounterVec,
    /// AdmissionReviews answered by the sidecar injector, by result (injected, skipped,
    /// denied, invalid).
    pub injections: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let o = |n: &str, h: &str| Opts::new(n, h).namespace("weft_cp");
        let m = Metrics {
            registry: Registry::new(),
            connected_proxies: IntGauge::with_opts(o("connected_proxies", "ADS streams open now."))
                .unwrap(),
            pushes: IntCounterVec::new(
                o("pushes_total", "xDS responses sent, by resource type."),
                &["type_url"],
            )
            .unwrap(),
            nacks: IntCounterVec::new(
                o(
                    "nacks_total",
                    "xDS responses rejected by a client, by resource type.",
                ),
                &["type_url"],
            )
            .unwrap(),
            snapshots: IntCounter::with_opts(o(
                "snapshots_total",
                "Resource snapshots published after registry changes.",
            ))
            .unwrap(),
            registry_errors: IntGauge::with_opts(o(
                "registry_errors",
                "Registry problems in force now (invalid files, duplicate definitions).",
            ))
            .unwrap(),
            registry_events: IntCounter::with_opts(o(
                "registry_events_total",
                "Registry changes seen (services, endpoints, policies).",
            ))
            .unwrap(),
            push_latency: Histogram::with_opts(
                HistogramOpts::from(o(
                    "push_latency_seconds",
                    "Time from a registry change to the response carrying it being sent on a proxy's stream (includes the push debounce).",
                ))
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )
            .unwrap(),
            tls_handshake_failures: IntCounter::with_opts(o(
                "tls_handshake_failures_total",
                "TLS handshakes on the xDS/CA and webhook ports that failed or timed out.",
            ))
            .unwrap(),
            ca_requests: IntCounterVec::new(
                o(
                    "ca_requests_total",
                    "Certificate requests to the mesh CA, by result.",
                ),
                &["result"],
            )
            .unwrap(),
            injections: IntCounterVec::new(
                o(
                    "injections_total",
                    "Admission reviews answered by the sidecar injector, by result.",
                ),
                &["result"],
            )
            .unwrap(),
        };
        for c in [
            Box::new(m.connected_proxies.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.pushes.clone()),
            Box::new(m.nacks.clone()),
            Box::new(m.snapshots.clone()),
            Box::new(m.registry_errors.clone()),
            Box::new(m.registry_events.clone()),
            Box::new(m.push_latency.clone()),
            Box::new(m.tls_handshake_failures.clone()),
            Box::new(m.ca_requests.clone()),
            Box::new(m.injections.clone()),
        ] {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}
