//! The contract between the control plane and the sidecar: the environment variables the
//! injector writes into the proxy and init containers, each read by one of `weft-proxy`'s
//! flags; (in [`annotation`]) the `weft.dev/` annotations and labels the injector reads and
//! writes on a pod; and (in [`xds`]) the names weft's own settings travel under in xDS. Every
//! side names them from here, so a rename on one side cannot leave another behind.

pub const ACCESS_LOG: &str = "WEFT_ACCESS_LOG";
pub const APP_PROBES: &str = "WEFT_APP_PROBES";
pub const CAPTURE: &str = "WEFT_CAPTURE";
pub const CONTROL_PLANE: &str = "WEFT_CONTROL_PLANE";
pub const DEFAULT_AUTHZ: &str = "WEFT_DEFAULT_AUTHZ";
pub const DNS_ADDR: &str = "WEFT_DNS_ADDR";
pub const EXCLUDE_INBOUND_PORTS: &str = "WEFT_EXCLUDE_INBOUND_PORTS";
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "WEFT_EXCLUDE_OUTBOUND_CIDRS";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "WEFT_EXCLUDE_OUTBOUND_PORTS";
pub const GENERATE_REQUEST_ID: &str = "WEFT_GENERATE_REQUEST_ID";
pub const IDENTITY: &str = "WEFT_IDENTITY";
pub const IDENTITY_TOKEN_FILE: &str = "WEFT_IDENTITY_TOKEN_FILE";
pub const INBOUND_MTLS: &str = "WEFT_INBOUND_MTLS";
pub const INBOUND_MTLS_PORTS: &str = "WEFT_INBOUND_MTLS_PORTS";
pub const INCLUDE_OUTBOUND_CIDRS: &str = "WEFT_INCLUDE_OUTBOUND_CIDRS";
pub const LOG: &str = "WEFT_LOG";
pub const NODE_LABELS_FILE: &str = "WEFT_NODE_LABELS_FILE";
pub const POD_NAME: &str = "WEFT_POD_NAME";
pub const POD_NAMESPACE: &str = "WEFT_POD_NAMESPACE";
pub const PROXY_UID: &str = "WEFT_PROXY_UID";
pub const REDIRECT_DNS: &str = "WEFT_REDIRECT_DNS";
pub const SERVICE_ACCOUNT: &str = "WEFT_SERVICE_ACCOUNT";
pub const TRUST_BUNDLE_PEM: &str = "WEFT_TRUST_BUNDLE_PEM";
pub const TRACE_OTLP_ENDPOINT: &str = "WEFT_TRACE_OTLP_ENDPOINT";
pub const TRACE_SAMPLING: &str = "WEFT_TRACE_SAMPLING";
pub const TRUST_DOMAIN: &str = "WEFT_TRUST_DOMAIN";

/// Every name above.
pub const ALL: &[&str] = &[
    ACCESS_LOG,
    APP_PROBES,
    CAPTURE,
    CONTROL_PLANE,
    DEFAULT_AUTHZ,
    DNS_ADDR,
    EXCLUDE_INBOUND_PORTS,
    EXCLUDE_OUTBOUND_CIDRS,
    EXCLUDE_OUTBOUND_PORTS,
    GENERATE_REQUEST_ID,
    IDENTITY,
    IDENTITY_TOKEN_FILE,
    INBOUND_MTLS,
    INBOUND_MTLS_PORTS,
    INCLUDE_OUTBOUND_CIDRS,
    LOG,
    NODE_LABELS_FILE,
    POD_NAME,
    POD_NAMESPACE,
    PROXY_UID,
    REDIRECT_DNS,
    SERVICE_ACCOUNT,
    TRACE_OTLP_ENDPOINT,
    TRACE_SAMPLING,
    TRUST_BUNDLE_PEM,
    TRUST_DOMAIN,
];

/// The `weft.dev/` annotations and labels of a pod. The injector reads the settings below from
/// a pod's annotations and marks the pods it injected ([`STATUS`] = [`INJECTED`], and the
/// [`INJECTED_LABEL`] label); the Kubernetes registry reads that mark to tell a meshed pod
/// (mutual TLS) from one reached in plaintext.
pub mod annotation {
    pub const INJECT: &str = "weft.dev/inject";
    pub const STATUS: &str = "weft.dev/status";
    /// [`STATUS`] on a pod the injector gave a sidecar.
    pub const INJECTED: &str = "injected";
    pub const CONTROL_PLANE_LABEL: &str = "weft.dev/control-plane";
    pub const INJECTED_LABEL: &str = "weft.dev/injected";
    pub const EXCLUDE_INBOUND_PORTS: &str = "weft.dev/exclude-inbound-ports";
    pub const EXCLUDE_OUTBOUND_PORTS: &str = "weft.dev/exclude-outbound-ports";
    pub const EXCLUDE_OUTBOUND_CIDRS: &str = "weft.dev/exclude-outbound-cidrs";
    pub const INCLUDE_OUTBOUND_CIDRS: &str = "weft.dev/include-outbound-cidrs";
    pub const PROXY_CPU: &str = "weft.dev/proxy-cpu";
    pub const PROXY_MEMORY: &str = "weft.dev/proxy-memory";
    pub const PROXY_CPU_LIMIT: &str = "weft.dev/proxy-cpu-limit";
    pub const PROXY_MEMORY_LIMIT: &str = "weft.dev/proxy-memory-limit";
    pub const LOG_LEVEL: &str = "weft.dev/log-level";
    pub const MTLS_MODE: &str = "weft.dev/mtls-mode";
    pub const DEFAULT_AUTHZ: &str = "weft.dev/default-authz";
    pub const ACCESS_LOG: &str = "weft.dev/access-log";
    pub const TRACE_SAMPLING: &str = "weft.dev/trace-sampling";
}

/// weft's settings in standard xDS resources: filter metadata under [`xds::METADATA`], and
/// the HTTP filters whose per-route configuration carries faults and rate limits. The control
/// plane's translator writes them; the proxy's conversion reads them.
pub mod xds {
    use std::{collections::BTreeMap, time::Duration};

    use serde::{Deserialize, Serialize};

    use crate::{authz::Authorization, policy::LbPolicy};

    /// The filter metadata namespace of weft's own settings.
    pub const METADATA: &str = "weft";
    /// Node metadata: the port of the proxy's `/metrics` (its probe server), on the address
    /// its ADS stream comes from.
    pub const NODE_METRICS_PORT: &str = "metrics_port";
    /// The HTTP filter whose per-route configuration injects faults.
    pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
    /// The HTTP filter whose per-route (and per-virtual-host) configuration rate-limits.
    pub const RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";

    /// How proxies talk to a service's endpoints.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Protocol {
        /// HTTP in the version the client used.
        #[default]
        Http,
        /// Always HTTP/1.1 upstream.
        Http1,
        /// Always HTTP/2 (prior knowledge) upstream; gRPC services.
        Http2,
        /// Opaque TCP.
        Tcp,
    }

    /// weft's settings on a Listener (one per service).
    #[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ListenerMetadata {
        #[serde(default)]
        pub protocol: Protocol,
        /// The service's `vip:port`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub vip: Option<String>,
        /// Who may call the service: enforced by the inbound sidecars of its endpoints.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub authorization: Option<Authorization>,
    }

    /// weft's settings on a Route, beside the standard fields that carry the rest.
    #[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct RouteMetadata {
        /// The least wait before a retry: the retry policy's backoff is added to it (a Gateway
        /// API route's `retry.backoff`, a minimum, where Envoy's `base_interval` is the
        /// ceiling of a full-jitter draw).
        #[serde(
            default,
            with = "crate::duration::opt",
            skip_serializing_if = "Option::is_none"
        )]
        pub retry_backoff_min: Option<Duration>,
    }

    /// weft's settings on a Cluster, beside the standard fields that carry the rest.
    #[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ClusterMetadata {
        /// weft's balancer, over the standard `lb_policy` (which cannot name all of them).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub lb_policy: Option<LbPolicy>,
        /// The retry budget's minimum retries per second.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub retry_budget_min_per_second: Option<u32>,
        /// Outlier detection's failure-rate window.
        #[serde(
            default,
            with = "crate::duration::opt",
            skip_serializing_if = "Option::is_none"
        )]
        pub failure_rate_window: Option<Duration>,
    }

    /// weft's settings on one endpoint of a ClusterLoadAssignment.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct EndpointMetadata {
        /// Its labels (subsets).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub labels: BTreeMap<String, String>,
        /// The SPIFFE id it proves: it is meshed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub identity: Option<String>,
    }
}
