//! Static settings: command-line flags, each with a `WEFT_*` environment equivalent.
//!
//! Everything here is fixed for the life of the process; what changes at run time (services,
//! routes, endpoints) lives in the routing [`table`](crate::table).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser};

/// `weft-proxy`: the weft service-mesh sidecar.
#[derive(Debug, Parser)]
#[command(
    name = "weft-proxy",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: Config,
}

/// What else the binary does besides running the sidecar.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Programs the pod's network namespace (iptables nat table) to send its TCP traffic
    /// through the sidecar; what an init container runs before the application starts.
    Init(crate::init::InitConfig),
    /// Waits until a sidecar on this host answers its readiness probe: what a classic sidecar's
    /// postStart hook runs, so the application's containers start once the proxy is ready.
    Wait(WaitConfig),
}

/// `weft-proxy wait`.
#[derive(Debug, Clone, Args)]
pub struct WaitConfig {
    /// The sidecar's probe server.
    #[arg(long, env = "WEFT_PROBE_ADDR", default_value = "127.0.0.1:15020")]
    pub probe_addr: SocketAddr,

    /// Give up (exit 1) after this long.
    #[arg(long, env = "WEFT_WAIT_TIMEOUT", value_parser = parse_duration, default_value = "120s")]
    pub timeout: Duration,

    /// How often to ask.
    #[arg(long, env = "WEFT_WAIT_INTERVAL", value_parser = parse_duration, default_value = "200ms")]
    pub interval: Duration,
}

/// Settings of a running sidecar.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Routing table file (YAML). Re-read on SIGHUP and when its content changes. Without it
    /// and without --control-plane the proxy starts with an empty table.
    #[arg(long, env = "WEFT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// How often the table file is checked for changes (0 turns polling off; SIGHUP still works).
    #[arg(long, env = "WEFT_CONFIG_POLL_INTERVAL", value_parser = parse_duration, default_value = "2s")]
    pub config_poll_interval: Duration,

    /// Outbound listener: the application's outgoing traffic (redirect target).
    #[arg(long, env = "WEFT_OUTBOUND_ADDR", default_value = "127.0.0.1:15001")]
    pub outbound_addr: SocketAddr,

    /// A second outbound listener, for a pod with IPv6: ip6tables redirects to `[::1]:15001`.
    #[arg(long, env = "WEFT_OUTBOUND_ADDR_V6", value_name = "ADDR")]
    pub outbound_addr_v6: Option<SocketAddr>,

    /// Inbound listener: traffic from other workloads to this one (redirect target).
    #[arg(long, env = "WEFT_INBOUND_ADDR", default_value = "0.0.0.0:15006")]
    pub inbound_addr: SocketAddr,

    /// Where inbound traffic is delivered: the local application.
    #[arg(long, env = "WEFT_INBOUND_FORWARD", default_value = "127.0.0.1:8080")]
    pub inbound_forward: SocketAddr,

    /// The DNS proxy's address (UDP and TCP): mesh names are answered with their VIPs, other
    /// queries relayed upstream. Off unless given (`weft-proxy init --redirect-dns` sends the
    /// pod's DNS to 127.0.0.1:15053).
    #[arg(long, env = weft_core::contract::DNS_ADDR)]
    pub dns_addr: Option<SocketAddr>,

    /// The DNS server both the DNS proxy relays to and endpoints configured by host name are
    /// resolved with [default: the nameservers of /etc/resolv.conf, port 53].
    #[arg(long, env = "WEFT_DNS_UPSTREAM")]
    pub dns_upstream: Option<SocketAddr>,

    /// Endpoints configured by host name are re-resolved when their answer's TTL runs out,
    /// but no sooner than this after the last answer.
    #[arg(long, env = "WEFT_ENDPOINT_DNS_MIN_TTL", value_parser = parse_duration, default_value = "1s")]
    pub endpoint_dns_min_ttl: Duration,

    /// ... and no later than this, whatever the TTL.
    #[arg(long, env = "WEFT_ENDPOINT_DNS_MAX_TTL", value_parser = parse_duration, default_value = "5m")]
    pub endpoint_dns_max_ttl: Duration,

    /// The time constant of the peak-EWMA latency estimate `p2c-ewma` balances on: a sample's
    /// weight falls to 1/e after this long.
    #[arg(long, env = "WEFT_LB_EWMA_DECAY", value_parser = parse_duration, default_value = "10s")]
    pub lb_ewma_decay: Duration,

    /// The latency estimate of an endpoint nothing is known about yet.
    #[arg(long, env = "WEFT_LB_DEFAULT_RTT", value_parser = parse_duration, default_value = "30ms")]
    pub lb_default_rtt: Duration,

    /// A lookup of an endpoint host name that has no answer after this has failed (its last
    /// addresses stay in use; it is retried with backoff).
    #[arg(long, env = "WEFT_ENDPOINT_DNS_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub endpoint_dns_timeout: Duration,

    /// Traffic arrives redirected by `weft-proxy init`: an inbound connection that was not
    /// redirected (one addressed to the proxy's own port) is refused.
    #[arg(long, env = weft_core::contract::CAPTURE)]
    pub capture: bool,

    /// Redirected inbound connections go where the client sent them (the pod's own address):
    /// an application bound to loopback only is private to its pod. Connections to these
    /// original ports go to loopback instead (comma-separated), for an application that
    /// listens on loopback only and should still serve the mesh on that port.
    #[arg(
        long,
        env = "WEFT_INBOUND_LOOPBACK_PORTS",
        value_delimiter = ',',
        value_name = "PORTS"
    )]
    pub inbound_loopback_ports: Vec<u16>,

    /// Extra outbound TCP listener bound to one service: `LISTEN_ADDR=SERVICE[:PORT]`.
    /// Repeatable; in the environment, comma-separated.
    #[arg(long = "outbound-tcp", env = "WEFT_OUTBOUND_TCP", value_delimiter = ',', value_parser = parse_tcp_mapping)]
    pub outbound_tcp: Vec<TcpMapping>,

    /// Admin server (/config_dump, /shutdown, /log_level): a loopback address (any other is
    /// refused at start), answering only requests whose Host is a loopback name.
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,

    /// The application's HTTP and TCP probes the probe server asks on the kubelet's behalf, at
    /// `/app-health/...` (JSON; the Kubernetes injector writes it when it points the pod's
    /// probes at the sidecar).
    #[arg(long, env = weft_core::contract::APP_PROBES, value_name = "JSON")]
    pub app_probes: Option<String>,

    /// Probe and metrics server (/live, /ready, /metrics).
    #[arg(long, env = "WEFT_PROBE_ADDR", default_value = "0.0.0.0:15020")]
    pub probe_addr: SocketAddr,

    #[command(flatten)]
    pub discovery: DiscoveryConfig,

    #[command(flatten)]
    pub register: RegisterConfig,

    #[command(flatten)]
    pub mtls: MtlsConfig,

    #[command(flatten)]
    pub detect: DetectConfig,

    #[command(flatten)]
    pub upstream: UpstreamConfig,

    /// Connections each listener (outbound, inbound, `--outbound-tcp`) holds at once, tunnels
    /// included; beyond, a new one is closed at once (`weft_tcp_refused_total`).
    #[arg(long, env = "WEFT_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// How long in-flight requests and streams may run once draining has begun.
    #[arg(long, env = "WEFT_SHUTDOWN_GRACE_PERIOD", value_parser = parse_duration, default_value = "30s")]
    pub shutdown_grace_period: Duration,

    /// Data-plane worker threads (0: one per CPU). 1 runs a single-threaded runtime.
    #[arg(long, env = "WEFT_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Log filter, `tracing` syntax (e.g. `info`, `weft_proxy=debug,hyper=info`).
    #[arg(long, env = weft_core::contract::LOG, default_value = "info")]
    pub log_level: String,

    /// Log format.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
}

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

fn parse_register(s: &str) -> Result<RegisterTarget, String> {
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

impl Config {
    /// With capture on a pod that has a global IPv6 address (what `weft-proxy init --ipv6 auto`
    /// checks too), ip6tables redirects IPv6 as well: listen at `[::1]` on the outbound port
    /// and on `[::]` (both families) inbound, where the flags left the IPv4 defaults.
    pub fn listen_for_ipv6(&mut self, pod_has_ipv6: bool) {
        if !self.capture || !pod_has_ipv6 {
            return;
        }
        if self.outbound_addr_v6.is_none() {
            self.outbound_addr_v6 = Some(SocketAddr::new(
                std::net::Ipv6Addr::LOCALHOST.into(),
                self.outbound_addr.port(),
            ));
        }
        if self.inbound_addr.ip() == std::net::Ipv4Addr::UNSPECIFIED {
            self.inbound_addr
                .set_ip(std::net::Ipv6Addr::UNSPECIFIED.into());
        }
    }
}

/// The downward API's labels file: one `key="value"` per line, the value quoted as Go's `%q`
/// quotes (backslash escapes `\\`, `\"`, `\n`, `\t`, `\r`, `\xNN`, `\uNNNN`).
pub fn parse_labels_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |why: &str| format!("line {}: `{line}`: {why}", n + 1);
        let (key, quoted) = line
            .split_once('=')
            .ok_or_else(|| bad("expected key=\"value\""))?;
        let inner = quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .ok_or_else(|| bad("the value is not in double quotes"))?;
        let mut value = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                value.push(c);
                continue;
            }
            let hex = |chars: &mut std::str::Chars, n: usize| -> Option<char> {
                let digits: String = chars.take(n).collect();
                u32::from_str_radix(&digits, 16)
                    .ok()
                    .and_then(char::from_u32)
            };
            let unescaped = match chars.next() {
                Some('n') => Some('\n'),
                Some('t') => Some('\t'),
                Some('r') => Some('\r'),
                Some(c @ ('\\' | '"')) => Some(c),
                Some('x') => hex(&mut chars, 2),
                Some('u') => hex(&mut chars, 4),
                Some('U') => hex(&mut chars, 8),
                _ => None,
            };
            value.push(unescaped.ok_or_else(|| bad("a malformed escape"))?);
        }
        out.push((key.trim().to_string(), value));
    }
    Ok(out)
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}`: expected KEY=VALUE, e.g. version=v2")),
    }
}

/// Where this workload's certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IdentitySource {
    /// No identity: no mutual TLS, in or out.
    None,
    /// A CSR to the mesh CA (--ca-address), proving the identity with --identity-token-file.
    Ca,
    /// Certificate, key and bundle files written by something else (cert-manager, SPIRE),
    /// reloaded when they change.
    Files,
}

/// What the inbound side accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InboundMode {
    /// Mutual TLS from the mesh only; plaintext and foreign TLS are refused.
    Strict,
    /// Mutual TLS from the mesh or plaintext, decided per connection.
    Permissive,
    /// No TLS termination: everything is passed to the application as it came.
    Disable,
}

/// Workload identity and mutual TLS between sidecars.
#[derive(Debug, Clone, Args)]
pub struct MtlsConfig {
    /// Where this workload's certificate comes from. With one, connections to endpoints that
    /// carry an identity are mutual TLS, and the inbound side terminates mesh TLS.
    #[arg(long, env = weft_core::contract::IDENTITY, value_enum, default_value = "none")]
    pub identity: IdentitySource,

    /// The mesh trust bundle (PEM CA certificates): verifies an `https://` control plane and
    /// CA. Peers are verified against the bundle that comes with the workload certificate.
    #[arg(long, env = "WEFT_TRUST_BUNDLE", value_name = "FILE")]
    pub trust_bundle: Option<PathBuf>,

    /// The mesh trust bundle itself (PEM text) instead of a file: what the Kubernetes injector
    /// sets, as the CA's certificate is not in the workload's namespace.
    #[arg(
        long,
        env = weft_core::contract::TRUST_BUNDLE_PEM,
        value_name = "PEM",
        conflicts_with = "trust_bundle",
        hide_env_values = true
    )]
    pub trust_bundle_pem: Option<String>,

    /// The CA's gRPC address [default: the first --control-plane].
    #[arg(long, env = "WEFT_CA_ADDRESS", value_name = "URL")]
    pub ca_address: Option<String>,

    /// The credential that proves this workload's identity to the CA: a bootstrap token, or in
    /// Kubernetes the projected service-account token. Read again before every request.
    #[arg(
        long,
        env = weft_core::contract::IDENTITY_TOKEN_FILE,
        value_name = "FILE",
        required_if_eq("identity", "ca")
    )]
    pub identity_token_file: Option<PathBuf>,

    /// The trust domain of the SPIFFE id asked for (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`).
    #[arg(long, env = weft_core::contract::TRUST_DOMAIN, default_value = "cluster.local")]
    pub trust_domain: String,

    /// The certificate lifetime asked of the CA (it may grant less); renewal is at 70 %.
    #[arg(long, env = "WEFT_CERT_LIFETIME", value_parser = parse_duration, default_value = "24h")]
    pub cert_lifetime: Duration,

    /// --identity files: the certificate chain (PEM, leaf first).
    #[arg(
        long,
        env = "WEFT_IDENTITY_CERT",
        value_name = "FILE",
        required_if_eq("identity", "files")
    )]
    pub identity_cert: Option<PathBuf>,

    /// --identity files: the private key (PEM, PKCS#8 or SEC1).
    #[arg(
        long,
        env = "WEFT_IDENTITY_KEY",
        value_name = "FILE",
        required_if_eq("identity", "files")
    )]
    pub identity_key: Option<PathBuf>,

    /// --identity files: the trust bundle peers must chain to (PEM).
    #[arg(
        long,
        env = "WEFT_IDENTITY_BUNDLE",
        value_name = "FILE",
        required_if_eq("identity", "files")
    )]
    pub identity_bundle: Option<PathBuf>,

    /// How often identity files are checked for changes.
    #[arg(long, env = "WEFT_IDENTITY_POLL_INTERVAL", value_parser = parse_duration, default_value = "5s")]
    pub identity_poll_interval: Duration,

    /// What the inbound side accepts (with an identity; without one it is always `disable`).
    #[arg(
        long,
        env = weft_core::contract::INBOUND_MTLS,
        value_enum,
        default_value = "permissive"
    )]
    pub inbound_mtls: InboundMode,

    /// A mode for one destination port, overriding --inbound-mtls: `PORT=MODE`. Repeatable; in
    /// the environment, comma-separated.
    #[arg(long = "inbound-mtls-port", env = weft_core::contract::INBOUND_MTLS_PORTS, value_delimiter = ',', value_parser = parse_port_mode)]
    pub inbound_mtls_ports: Vec<(u16, InboundMode)>,

    /// /ready answers 503 while mutual TLS is on and no valid certificate is held.
    #[arg(long, env = "WEFT_READY_REQUIRES_IDENTITY", default_value_t = true, action = clap::ArgAction::Set)]
    pub ready_requires_identity: bool,

    /// What the inbound side does with a caller when no authorization policy guards the
    /// destination (no service with a policy has an endpoint there): `allow` (compatible with
    /// earlier weft) or `deny` (only what a policy allows gets in).
    #[arg(long, env = weft_core::contract::DEFAULT_AUTHZ, value_enum, default_value = "allow")]
    pub default_authz: DefaultAuthz,
}

fn parse_port_mode(s: &str) -> Result<(u16, InboundMode), String> {
    use clap::ValueEnum;
    let (port, mode) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected PORT=MODE, e.g. 9090=strict"))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("`{s}`: `{port}` is not a port"))?;
    let mode = InboundMode::from_str(mode, true)
        .map_err(|_| format!("`{s}`: `{mode}` is not strict, permissive or disable"))?;
    Ok((port, mode))
}

impl MtlsConfig {
    /// The mode for connections to destination `port`.
    pub fn mode_for(&self, port: u16) -> InboundMode {
        if self.identity == IdentitySource::None {
            return InboundMode::Disable;
        }
        self.inbound_mtls_ports
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(self.inbound_mtls, |(_, m)| *m)
    }
}

/// Protocol detection on accepted connections.
#[derive(Debug, Clone, Args)]
pub struct DetectConfig {
    /// The longest a connection may take to show which protocol it speaks; past it the bytes seen
    /// so far are forwarded as opaque TCP.
    #[arg(long, env = "WEFT_DETECT_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub detect_timeout: Duration,

    /// A client that sends nothing for this long is taken for a server-speaks-first protocol
    /// (SMTP, MySQL, ...) and forwarded as opaque TCP.
    #[arg(long, env = "WEFT_SERVER_FIRST_TIMEOUT", value_parser = parse_duration, default_value = "500ms")]
    pub server_first_timeout: Duration,
}

/// Connections to upstream endpoints.
#[derive(Debug, Clone, Args)]
pub struct UpstreamConfig {
    /// TCP connect timeout for upstream endpoints.
    #[arg(long, env = "WEFT_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "1s")]
    pub connect_timeout: Duration,

    /// The HTTP/1.1 upgrades tunnelled (the `Upgrade` protocols, comma-separated, any case);
    /// a request offering any other has its offer removed and is served as a plain request.
    /// `h2c` is never tunnelled.
    #[arg(long, env = "WEFT_HTTP_UPGRADES", value_delimiter = ',', default_value = "websocket", value_parser = parse_upgrade)]
    pub http_upgrades: Vec<String>,

    /// The longest a request waits for room at an endpoint: an HTTP/1.1 connection to come
    /// free (all `--http1-max-connections-per-endpoint` in use) or a stream on its HTTP/2
    /// connection (at the server's `SETTINGS_MAX_CONCURRENT_STREAMS`). Past it the request
    /// fails with 503 (`weft_pending_timeouts_total`).
    #[arg(long, env = "WEFT_PENDING_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub pending_timeout: Duration,

    /// An upstream connection unused for this long is closed.
    #[arg(long = "upstream-idle-timeout", env = "WEFT_UPSTREAM_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "90s")]
    pub idle_timeout: Duration,

    /// Idle HTTP/1.1 connections kept per endpoint.
    #[arg(long, env = "WEFT_HTTP1_MAX_IDLE_PER_ENDPOINT", default_value_t = 64)]
    pub http1_max_idle_per_endpoint: usize,

    /// HTTP/1.1 connections carrying a request at once, per endpoint; further requests wait
    /// for one to come free.
    #[arg(
        long,
        env = "WEFT_HTTP1_MAX_CONNECTIONS_PER_ENDPOINT",
        default_value_t = 1024
    )]
    pub http1_max_connections_per_endpoint: usize,

    /// HTTP/2 PING interval on idle-looking connections, both directions (0 turns it off).
    #[arg(long, env = "WEFT_HTTP2_KEEPALIVE_INTERVAL", value_parser = parse_duration, default_value = "10s")]
    pub http2_keepalive_interval: Duration,

    /// How long a PING may go unanswered before the connection is closed.
    #[arg(long, env = "WEFT_HTTP2_KEEPALIVE_TIMEOUT", value_parser = parse_duration, default_value = "20s")]
    pub http2_keepalive_timeout: Duration,

    /// Concurrent streams a downstream HTTP/2 client may open on one connection.
    #[arg(
        long,
        env = "WEFT_HTTP2_MAX_CONCURRENT_STREAMS",
        default_value_t = 1024
    )]
    pub http2_max_concurrent_streams: u32,

    /// Response bytes buffered per downstream HTTP/2 stream for a client that reads slower
    /// than its upstream answers; past it the upstream is held back by flow control. Times
    /// --http2-max-concurrent-streams, what one connection can make the proxy hold.
    #[arg(
        long,
        env = "WEFT_HTTP2_STREAM_SEND_BUFFER",
        default_value_t = 128 * 1024,
        value_parser = clap::value_parser!(u32).range(16 * 1024..=16 * 1024 * 1024)
    )]
    pub http2_stream_send_buffer: u32,

    /// A downstream HTTP/2 connection with no open stream for this long is shut down
    /// gracefully (GOAWAY); 0 keeps it. (An idle HTTP/1.1 connection is closed 30 s after its
    /// last response, by the header read timeout.)
    #[arg(long, env = "WEFT_HTTP2_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "10m")]
    pub http2_idle_timeout: Duration,
}

pub use weft_core::log::LogFormat;

/// An extra outbound listener whose connections all go to one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpMapping {
    pub listen: SocketAddr,
    /// A service authority as the table knows it (`name:port`).
    pub service: String,
}

fn parse_tcp_mapping(s: &str) -> Result<TcpMapping, String> {
    let (listen, service) = s.split_once('=').ok_or_else(|| {
        format!("`{s}`: expected LISTEN_ADDR=SERVICE, e.g. 127.0.0.1:16000=db:5432")
    })?;
    let listen = listen
        .parse()
        .map_err(|e| format!("`{listen}`: not a socket address: {e}"))?;
    if service.is_empty() {
        return Err(format!("`{s}`: the service name is empty"));
    }
    Ok(TcpMapping {
        listen,
        service: service.to_ascii_lowercase(),
    })
}

fn parse_upgrade(s: &str) -> Result<String, String> {
    let p = s.trim().to_ascii_lowercase();
    match p.as_str() {
        "" => Err("an empty protocol name".into()),
        "h2c" => Err("`h2c` is never tunnelled: an HTTP/2 connection inside it would skip the proxy's checks".into()),
        _ => Ok(p),
    }
}

/// Parses durations such as `250ms`, `10s`, `2m`, `1h` (a bare number is seconds).
pub use weft_core::duration::parse as parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downward_api_labels_file() {
        // As the kubelet writes it: sorted keys, Go-quoted values.
        let text =
            "app=\"web\"\npod-template-hash=\"5d8f7c9b4\"\nteam=\"a \\\"b\\\" \\u00e9\\\\\"\n";
        let got = parse_labels_file(text).unwrap();
        assert_eq!(
            got,
            vec![
                ("app".to_string(), "web".to_string()),
                ("pod-template-hash".to_string(), "5d8f7c9b4".to_string()),
                ("team".to_string(), "a \"b\" é\\".to_string()),
            ]
        );
        let err = parse_labels_file("app=web\n").unwrap_err();
        assert!(
            err.contains("line 1") && err.contains("double quotes"),
            "{err}"
        );
        let err = parse_labels_file("ok=\"1\"\nx=\"\\q\"").unwrap_err();
        assert!(err.contains("line 2") && err.contains("escape"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        let err = parse_duration("10 parsecs").unwrap_err();
        assert!(err.contains("unknown unit"), "{err}");
        assert!(
            parse_duration("fast")
                .unwrap_err()
                .contains("expected a duration")
        );
    }

    #[test]
    fn inbound_modes_per_port_override_the_proxy_default() {
        let cli = Cli::parse_from([
            "weft-proxy",
            "--identity",
            "files",
            "--identity-cert",
            "c",
            "--identity-key",
            "k",
            "--identity-bundle",
            "b",
            "--inbound-mtls",
            "strict",
            "--inbound-mtls-port",
            "9090=permissive",
            "--inbound-mtls-port",
            "8443=DISABLE",
        ]);
        let m = &cli.run.mtls;
        assert_eq!(m.mode_for(8080), InboundMode::Strict);
        assert_eq!(m.mode_for(9090), InboundMode::Permissive);
        assert_eq!(m.mode_for(8443), InboundMode::Disable);
        let none = Cli::parse_from(["weft-proxy", "--inbound-mtls", "strict"]);
        assert_eq!(
            none.run.mtls.mode_for(8080),
            InboundMode::Disable,
            "no identity, no mutual TLS"
        );
        assert!(parse_port_mode("9090").unwrap_err().contains("PORT=MODE"));
        assert!(
            parse_port_mode("0=strict")
                .unwrap_err()
                .contains("not a port")
        );
        assert!(
            parse_port_mode("9090=lax")
                .unwrap_err()
                .contains("not strict, permissive or disable")
        );
        let err = Cli::try_parse_from(["weft-proxy", "--identity", "ca"]).unwrap_err();
        assert!(err.to_string().contains("--identity-token-file"), "{err}");
    }

    #[test]
    fn tcp_mappings() {
        let m = parse_tcp_mapping("127.0.0.1:16000=DB.default:5432").unwrap();
        assert_eq!(m.listen, "127.0.0.1:16000".parse().unwrap());
        assert_eq!(m.service, "db.default:5432");
        assert!(
            parse_tcp_mapping("db:5432")
                .unwrap_err()
                .contains("LISTEN_ADDR=SERVICE")
        );
        assert!(
            parse_tcp_mapping("nowhere=db")
                .unwrap_err()
                .contains("not a socket address")
        );
    }

    /// The variables the injector writes (`weft_core::contract`) are each read by a flag.
    #[test]
    fn every_variable_the_injector_writes_is_read_by_a_flag() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let envs: Vec<String> = std::iter::once(&cli)
            .chain(cli.get_subcommands())
            .flat_map(|c| c.get_arguments())
            .filter_map(|a| a.get_env()?.to_str().map(String::from))
            .collect();
        for name in weft_core::contract::ALL {
            assert!(
                envs.iter().any(|e| e == name),
                "the injector writes {name}, which no flag reads"
            );
        }
    }

    /// Every flag of every subcommand has a `WEFT_*` variable, and the configuration reference
    /// has a row for it, in its command's section, naming the variable and the default.
    #[test]
    fn every_flag_has_an_env_variable_and_is_documented() {
        use clap::CommandFactory;
        let doc = include_str!("../../docs/configuration.md");
        let section = |heading: &str| {
            let start = doc.find(heading).expect(heading) + heading.len();
            let len = doc[start..].find("\n## ").unwrap_or(doc.len() - start);
            &doc[start..start + len]
        };
        let cli = Cli::command();
        let mut commands = vec![(section("\n## Flags\n"), cli.clone())];
        for sub in cli.get_subcommands() {
            let heading = format!("\n## `weft-proxy {}`\n", sub.get_name());
            commands.push((section(&heading), sub.clone()));
        }
        let mut missing = Vec::new();
        for (text, cmd) in commands {
            for arg in cmd.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if matches!(long, "help" | "version") {
                    continue;
                }
                let flag = format!("{} --{long}", cmd.get_name());
                let row = text.lines().find(|l| {
                    l.starts_with(&format!("| `--{long}`"))
                        || l.starts_with(&format!("| `--{long} "))
                });
                let Some(row) = row else {
                    missing.push(format!("{flag}: no row in its section of configuration.md"));
                    continue;
                };
                match arg.get_env().and_then(|e| e.to_str()) {
                    Some(env) if env.starts_with("WEFT_") => {
                        if !row.contains(&format!("`{env}`")) {
                            missing.push(format!("{flag}: its row does not name {env}"));
                        }
                    }
                    _ => missing.push(format!("{flag}: no WEFT_* variable")),
                }
                // Switches default to off; every other default is written as it is given.
                let default_column = row.split(" | ").nth(2).unwrap_or("");
                if arg.get_action().takes_values() {
                    for d in arg.get_default_values() {
                        let d = d.to_string_lossy();
                        if !default_column.contains(&format!("`{d}`")) {
                            missing
                                .push(format!("{flag}: default `{d}` not in `{default_column}`"));
                        }
                    }
                }
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    #[test]
    fn defaults_match_the_documented_ports() {
        let cfg = Cli::parse_from(["weft-proxy"]).run;
        assert_eq!(cfg.outbound_addr.port(), 15001);
        assert_eq!(cfg.inbound_addr.port(), 15006);
        assert_eq!(cfg.admin_addr, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(cfg.probe_addr.port(), 15020);
        assert_eq!(cfg.detect.detect_timeout, Duration::from_secs(10));
        assert_eq!(cfg.discovery.xds_protocol, XdsProtocol::Delta);
        assert!(cfg.discovery.ready_requires_config);
    }

    #[test]
    fn a_captured_pod_with_ipv6_listens_for_both_families() {
        let parse = |args: &[&str]| {
            let mut cfg = Cli::parse_from([&["weft-proxy"], args].concat()).run;
            cfg.listen_for_ipv6(true);
            (cfg.outbound_addr_v6, cfg.inbound_addr)
        };
        assert_eq!(
            parse(&["--capture"]),
            (
                Some("[::1]:15001".parse().unwrap()),
                "[::]:15006".parse().unwrap()
            )
        );
        // Without capture, or with addresses given, nothing changes.
        assert_eq!(parse(&[]), (None, "0.0.0.0:15006".parse().unwrap()));
        assert_eq!(
            parse(&["--capture", "--inbound-addr", "10.0.0.5:15006"]),
            (
                Some("[::1]:15001".parse().unwrap()),
                "10.0.0.5:15006".parse().unwrap()
            )
        );
        let mut cfg = Cli::parse_from(["weft-proxy", "--capture"]).run;
        cfg.listen_for_ipv6(false);
        assert_eq!(cfg.outbound_addr_v6, None);
        assert_eq!(cfg.inbound_addr, "0.0.0.0:15006".parse().unwrap());
    }

    #[test]
    fn node_identity_and_conflicts() {
        let cfg = Cli::parse_from([
            "weft-proxy",
            "--control-plane=127.0.0.1:15010",
            "--pod-name=web-0",
            "--pod-namespace=shop",
            "--node-label=version=v2,app=web",
        ])
        .run;
        assert_eq!(cfg.discovery.node_id(), "web-0.shop");
        assert_eq!(
            cfg.discovery.node_labels,
            [
                ("version".into(), "v2".into()),
                ("app".into(), "web".into())
            ]
        );
        let err = Cli::try_parse_from(["weft-proxy", "--config=t.yaml", "--control-plane=x:1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be used with"), "{err}");
        let cfg = Cli::parse_from([
            "weft-proxy",
            "--register=web:8080",
            "--register-address=10.0.0.5:15006",
        ])
        .run;
        assert_eq!(
            cfg.register.register,
            Some(RegisterTarget {
                service: "web".into(),
                port: 8080
            })
        );
        let err = Cli::try_parse_from(["weft-proxy", "--register=web:8080"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--register-address"), "{err}");
        let err = Cli::try_parse_from([
            "weft-proxy",
            "--register=Web.x:80",
            "--register-address=10.0.0.5:1",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("a service name is"), "{err}");
        let err = Cli::try_parse_from(["weft-proxy", "--node-label=v2"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected KEY=VALUE"), "{err}");
    }
}

/// `--default-authz`: what a destination no policy guards does with a caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DefaultAuthz {
    #[default]
    Allow,
    Deny,
}
