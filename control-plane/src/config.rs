//! The control plane's flags, each with a `WEFT_*` environment equivalent.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use weft_core::{duration::parse as parse_duration, log::LogFormat};

/// The registries the control plane can watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistryKind {
    /// A directory of YAML/JSON files (the embedded default).
    File,
    /// etcd v3: documents and leased endpoint registrations under a key prefix.
    Etcd,
    /// Kubernetes: Services, EndpointSlices, Pods and TrafficPolicy objects, from the
    /// in-cluster service account or KUBECONFIG.
    Kubernetes,
}

/// `weft-control-plane`: service registrations and traffic policies in, xDS out.
#[derive(Debug, Clone, Parser)]
#[command(name = "weft-control-plane", version, about)]
pub struct Config {
    /// Where services, endpoints and policies are registered.
    #[arg(long, env = "WEFT_REGISTRY", value_enum, default_value = "file")]
    pub registry: RegistryKind,

    /// The file registry: a directory of `Service` and `TrafficPolicy` YAML/JSON files.
    #[arg(
        long,
        env = "WEFT_REGISTRY_DIR",
        value_name = "DIR",
        required_if_eq("registry", "file")
    )]
    pub registry_dir: Option<PathBuf>,

    /// etcd client endpoints (`host:port`), tried in order. Repeatable; in the environment,
    /// comma-separated.
    #[arg(
        long,
        env = "WEFT_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,

    /// The trust domain of workload identities (`spiffe://<trust-domain>/ns/..../sa/...`).
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// The etcd key prefix weft's keys live under.
    #[arg(long, env = "WEFT_ETCD_PREFIX", default_value = "/weft/")]
    pub etcd_prefix: String,

    /// How often the registry directory is checked for changes.
    #[arg(long, env = "WEFT_REGISTRY_POLL_INTERVAL", value_parser = parse_duration, default_value = "1s")]
    pub registry_poll_interval: Duration,

    /// After a registry change, how long to wait for more before pushing (bursts become one
    /// push).
    #[arg(long, env = "WEFT_PUSH_DEBOUNCE", value_parser = parse_duration, default_value = "100ms")]
    pub push_debounce: Duration,

    /// xDS (ADS) over plaintext gRPC: local development and tests only.
    #[arg(long, env = "WEFT_XDS_ADDR", default_value = "127.0.0.1:15010")]
    pub xds_addr: SocketAddr,

    /// The API weftctl talks to (HTTP/JSON). It can change policies: keep it on loopback or
    /// behind an authenticating proxy.
    #[arg(long, env = "WEFT_API_ADDR", default_value = "127.0.0.1:15015")]
    pub api_addr: SocketAddr,

    /// Health and metrics: /live, /ready, /metrics, /proxy_status, /registry.
    #[arg(long, env = "WEFT_METRICS_ADDR", default_value = "0.0.0.0:15014")]
    pub metrics_addr: SocketAddr,

    /// Log filter, `tracing` syntax.
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log_level: String,

    /// Log format: plain text or one JSON object per line.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
}
