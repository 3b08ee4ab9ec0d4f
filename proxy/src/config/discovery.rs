//! Flags for the control plane (xDS), how this proxy names itself to it, and self-registration
//! in etcd.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

use super::*;

/// The control plane and how this proxy introduces itself to it.
#[derive(Debug, Clone, Args)]
pub struct DiscoveryConfig {
    /// The control plane's xDS address (`http://HOST:PORT`, or `HOST:PORT`). The routing table
    /// then comes over ADS instead of from --config. Several replicas: comma-separated (or
    /// repeated); a lost stream reconnects to the next.
    #[arg(
        long,
        env = weft_core::contract::CONTROL_PLANE,
        value_name = "URL",
        value_delimiter = ',',
        conflicts_with = "config"
    )]
    pub control_plane: Vec<String>,

    /// ADS variant: delta (incremental) or sotw (state of the world).
    #[arg(long, env = "WEFT_XDS_PROTOCOL", value_enum, default_value = "delta")]
    pub xds_protocol: XdsProtocol,

    /// Node id reported to the control plane [default: POD_NAME.NAMESPACE, else the host name].
    #[arg(long, env = "WEFT_NODE_ID")]
    pub node_id: Option<String>,

    /// The pod (or host) this sidecar serves; the Kubernetes injector sets it from the
    /// downward API.
    #[arg(long, env = weft_core::contract::POD_NAME)]
    pub pod_name: Option<String>,

    #[arg(long, env = weft_core::contract::POD_NAMESPACE, default_value = "default")]
    pub pod_namespace: String,

    #[arg(long, env = weft_core::contract::SERVICE_ACCOUNT, default_value = "default")]
    pub service_account: String,

    /// The workload's labels, `KEY=VALUE`, sent in the node metadata. Repeatable; in the
    /// environment, comma-separated.
    #[arg(long = "node-label", env = "WEFT_NODE_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub node_labels: Vec<(String, String)>,

    /// More labels, from a file in the Kubernetes downward API's format (`key="value"` lines,
    /// Go-quoted): what the injector mounts from the pod's `metadata.labels`. Read at start.
    #[arg(long, env = weft_core::contract::NODE_LABELS_FILE, value_name = "FILE")]
    pub node_labels_file: Option<PathBuf>,

    /// With a control plane: /ready answers 503 until the first configuration (every resource
    /// type) has arrived, so the application starts with routes in place.
    #[arg(long, env = "WEFT_READY_REQUIRES_CONFIG", default_value_t = true, action = clap::ArgAction::Set)]
    pub ready_requires_config: bool,

    /// First reconnect delay after the control plane is lost; doubles per failed attempt, with
    /// full jitter.
    #[arg(long, env = "WEFT_XDS_BACKOFF_BASE", value_parser = parse_duration, default_value = "250ms")]
    pub xds_backoff_base: Duration,

    /// The longest reconnect delay.
    #[arg(long, env = "WEFT_XDS_BACKOFF_MAX", value_parser = parse_duration, default_value = "10s")]
    pub xds_backoff_max: Duration,

    /// The largest xDS response accepted, in bytes; a larger one ends the stream (and the
    /// table in force stays). A response carries a whole resource type: a mesh of 10,000
    /// services sends a few MiB.
    #[arg(long, env = "WEFT_XDS_MAX_MESSAGE_SIZE", default_value_t = 16 << 20)]
    pub xds_max_message_size: usize,
}

/// Self-registration in etcd, for workloads outside Kubernetes.
#[derive(Debug, Clone, Args)]
pub struct RegisterConfig {
    /// Register this workload in etcd as an endpoint of `SERVICE:PORT` (namespace from
    /// --pod-namespace, labels from --node-label), with a lease kept alive while the proxy
    /// runs and removed when it drains.
    #[arg(long, env = "WEFT_REGISTER", value_name = "SERVICE:PORT", value_parser = parse_register, requires = "register_address")]
    pub register: Option<RegisterTarget>,

    /// The address other workloads reach this one at (usually this host's IP and the inbound
    /// port).
    #[arg(long, env = "WEFT_REGISTER_ADDRESS", value_name = "IP:PORT")]
    pub register_address: Option<SocketAddr>,

    /// The registered service's protocol: http, http1, http2 or tcp.
    #[arg(long, env = "WEFT_REGISTER_PROTOCOL", default_value = "http", value_parser = ["http", "http1", "http2", "tcp"])]
    pub register_protocol: String,

    /// The registration's lease: it disappears this long after the proxy stops renewing it.
    #[arg(long, env = "WEFT_REGISTER_TTL", value_parser = parse_duration, default_value = "10s")]
    pub register_ttl: Duration,

    /// etcd client endpoints (`host:port`). Repeatable; in the environment, comma-separated.
    #[arg(
        long,
        env = "WEFT_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,

    /// The etcd key prefix the control plane watches.
    #[arg(long, env = "WEFT_ETCD_PREFIX", default_value = "/weft/")]
    pub etcd_prefix: String,
}

/// What `--register` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterTarget {
    pub service: String,
    pub port: u16,
}

pub(super) fn parse_register(s: &str) -> Result<RegisterTarget, String> {
    let bad = || format!("`{s}`: expected SERVICE:PORT, e.g. web:8080");
    let (service, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
    let ok = !service.is_empty()
        && service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(format!(
            "`{service}`: a service name is lower-case letters, digits and `-`"
        ));
    }
    Ok(RegisterTarget {
        service: service.into(),
        port,
    })
}

/// The two ADS variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdsProtocol {
    Delta,
    Sotw,
}

impl DiscoveryConfig {
    /// The node id: the flag, else `POD_NAME.NAMESPACE`, else the host name.
    pub fn node_id(&self) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        if let Some(pod) = &self.pod_name {
            return format!("{pod}.{}", self.pod_namespace);
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "weft-proxy".into())
    }
}
