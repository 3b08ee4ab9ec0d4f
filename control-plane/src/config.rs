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

    /// The largest xDS request a client may send, in bytes (a request names types and
    /// resources: a few KiB); a larger one ends its stream.
    #[arg(long, env = "WEFT_XDS_MAX_MESSAGE_SIZE", default_value_t = 4 << 20)]
    pub xds_max_message_size: usize,

    /// xDS and the CA over TLS: what proxies use. Served when the CA is configured
    /// (--ca-dir); its certificate comes from the mesh CA and names --tls-san.
    #[arg(long, env = "WEFT_TLS_ADDR", default_value = "0.0.0.0:15012")]
    pub tls_addr: SocketAddr,

    /// The names proxies reach the control plane by (DNS names or IP addresses), put in the
    /// certificate of the TLS port. Repeatable; in the environment, comma-separated.
    #[arg(
        long,
        env = "WEFT_TLS_SAN",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1,weft-control-plane,weft-control-plane.weft-system,weft-control-plane.weft-system.svc"
    )]
    pub tls_san: Vec<String>,

    /// The mesh CA's directory: `ca.key` and `ca.crt` (a root, or an intermediate whose chain
    /// follows it in `ca.crt`). Without it (or --ca-secret) the control plane is no CA and
    /// serves no TLS port.
    #[arg(long, env = "WEFT_CA_DIR", value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,

    /// Kubernetes: the mesh CA's key and certificate in this Secret (keys `ca.key`, `ca.crt`,
    /// optionally `bundle.crt`) of --namespace, shared by every replica. Instead of --ca-dir.
    #[arg(
        long,
        env = "WEFT_CA_SECRET",
        value_name = "NAME",
        conflicts_with = "ca_dir"
    )]
    pub ca_secret: Option<String>,

    /// Create the CA's key and certificate on first start when there is none (in --ca-dir, or
    /// as the --ca-secret Secret).
    #[arg(long, env = "WEFT_CA_CREATE")]
    pub ca_create: bool,

    /// The namespace the control plane runs in (its CA Secret lives there).
    #[arg(long, env = "WEFT_NAMESPACE", default_value = "weft-system")]
    pub namespace: String,

    /// The mesh configuration (YAML: the chart's ConfigMap) of the sidecar injector. Given, the
    /// control plane serves the injector webhook on --webhook-addr; it needs the CA.
    #[arg(long, env = "WEFT_MESH_CONFIG", value_name = "FILE")]
    pub mesh_config: Option<PathBuf>,

    /// The injector webhook (HTTPS, `POST /inject`).
    #[arg(long, env = "WEFT_WEBHOOK_ADDR", default_value = "0.0.0.0:15017")]
    pub webhook_addr: SocketAddr,

    /// The webhook's certificate and key as `tls.crt` and `tls.key` in this directory
    /// (cert-manager's Secret), reloaded when they change. Without it the mesh CA issues one
    /// for the --tls-san names.
    #[arg(long, env = "WEFT_WEBHOOK_CERT_DIR", value_name = "DIR")]
    pub webhook_cert_dir: Option<PathBuf>,

    /// With a certificate from the mesh CA: the MutatingWebhookConfiguration whose caBundle the
    /// control plane keeps set to the mesh CA.
    #[arg(long, env = "WEFT_WEBHOOK_CONFIG_NAME", value_name = "NAME")]
    pub webhook_config_name: Option<String>,

    /// Bootstrap tokens for workloads outside Kubernetes: lines of
    /// `TOKEN NAMESPACE SERVICE_ACCOUNT`; each token proves that one identity to the CA.
    #[arg(long, env = "WEFT_BOOTSTRAP_TOKENS", value_name = "FILE")]
    pub bootstrap_tokens: Option<PathBuf>,

    /// Kubernetes: accept projected service-account tokens, checked with the API server
    /// (TokenReview); an authenticated `system:serviceaccount:NS:SA` gets that identity.
    #[arg(long, env = "WEFT_TOKEN_REVIEW")]
    pub token_review: bool,

    /// The audience a projected token must be meant for.
    #[arg(long, env = "WEFT_TOKEN_AUDIENCE", default_value = "weft-ca")]
    pub token_audience: String,

    /// TokenReviews the CA asks the API server for on behalf of one caller address, per second
    /// (in bursts of twice that); more get RESOURCE_EXHAUSTED without a review. 0: no limit.
    #[arg(long, env = "WEFT_TOKEN_REVIEW_RATE", default_value_t = 5)]
    pub token_review_rate: u32,

    /// Lifetime of a workload certificate when the workload asks for none.
    #[arg(long, env = "WEFT_CERT_TTL", value_parser = parse_duration, default_value = "24h")]
    pub cert_ttl: Duration,

    /// The longest lifetime the CA grants.
    #[arg(long, env = "WEFT_CERT_MAX_TTL", value_parser = parse_duration, default_value = "168h")]
    pub cert_max_ttl: Duration,

    /// The API weftctl talks to (HTTP/JSON). It can change policies: keep it on loopback or
    /// behind an authenticating proxy.
    #[arg(long, env = "WEFT_API_ADDR", default_value = "127.0.0.1:15015")]
    pub api_addr: SocketAddr,

    /// Health and metrics: /live, /ready, /metrics, and /prometheus/targets (the connected
    /// proxies' metrics addresses); reachable from the network: no policy, no registry.
    #[arg(long, env = "WEFT_METRICS_ADDR", default_value = "0.0.0.0:15014")]
    pub metrics_addr: SocketAddr,

    /// Log filter, `tracing` syntax.
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log_level: String,

    /// Log format: plain text or one JSON object per line.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
}
