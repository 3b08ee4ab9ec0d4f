//! The contract between the control plane and the sidecar: the environment variables the
//! injector writes into the proxy and init containers, each read by one of `weft-proxy`'s
//! flags; (in [`annotation`]) the `weft.dev/` annotations and labels the injector reads and
//! writes on a pod; and (in [`xds`]) the names weft's own settings travel under in xDS. Every
//! side names them from here, so a rename on one side cannot leave another behind.

pub const APP_PROBES: &str = "WEFT_APP_PROBES";
pub const CAPTURE: &str = "WEFT_CAPTURE";
pub const CONTROL_PLANE: &str = "WEFT_CONTROL_PLANE";
pub const DEFAULT_AUTHZ: &str = "WEFT_DEFAULT_AUTHZ";
pub const DNS_ADDR: &str = "WEFT_DNS_ADDR";
pub const EXCLUDE_INBOUND_PORTS: &str = "WEFT_EXCLUDE_INBOUND_PORTS";
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "WEFT_EXCLUDE_OUTBOUND_CIDRS";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "WEFT_EXCLUDE_OUTBOUND_PORTS";
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
pub const TRUST_DOMAIN: &str = "WEFT_TRUST_DOMAIN";

/// Every name above.
pub const ALL: &[&str] = &[
    APP_PROBES,
    CAPTURE,
    CONTROL_PLANE,
    DEFAULT_AUTHZ,
    DNS_ADDR,
    EXCLUDE_INBOUND_PORTS,
    EXCLUDE_OUTBOUND_CIDRS,
    EXCLUDE_OUTBOUND_PORTS,
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
}

/// weft's settings in standard xDS resources: filter metadata under [`xds::METADATA`], and
/// the HTTP filters whose per-route configuration carries faults and rate limits. The control
/// plane's translator writes them; the proxy's conversion reads them.
pub mod xds {
    /// The filter metadata namespace of weft's own settings.
    pub const METADATA: &str = "weft";
    /// Listener: `http`, `http1`, `http2` or `tcp`.
    pub const PROTOCOL: &str = "protocol";
    /// Listener: the service's `vip:port`.
    pub const VIP: &str = "vip";
    /// Listener: who may call the service (weft's authorization policy, as JSON).
    pub const AUTHORIZATION: &str = "authorization";
    /// Cluster: weft's balancer (`p2c-ewma`, `round-robin`, ...), over the standard field.
    pub const LB_POLICY: &str = "lbPolicy";
    /// Cluster: the retry budget's minimum retries per second.
    pub const RETRY_BUDGET_MIN_PER_SECOND: &str = "retryBudgetMinPerSecond";
    /// Endpoint: its labels (subsets).
    pub const LABELS: &str = "labels";
    /// Endpoint: the SPIFFE id it proves (it is meshed).
    pub const IDENTITY: &str = "identity";
    /// Cluster: outlier detection's failure-rate window (a weft duration).
    pub const FAILURE_RATE_WINDOW: &str = "failureRateWindow";
    /// The HTTP filter whose per-route configuration injects faults.
    pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
    /// The HTTP filter whose per-route (and per-virtual-host) configuration rate-limits.
    pub const RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
}
