//! The contract between the sidecar injector (control plane) and the sidecar it injects: the
//! environment variables the injector writes into the proxy and init containers, each read by
//! one of `weft-proxy`'s flags. Both sides name them from here, so a rename on one side cannot
//! leave the other behind.

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
