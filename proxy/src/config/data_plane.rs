//! Flags for the data plane: workload identity and mutual TLS, protocol detection, and
//! connections to upstream endpoints.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

use super::*;

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

pub(super) fn parse_port_mode(s: &str) -> Result<(u16, InboundMode), String> {
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

pub(super) fn parse_tcp_mapping(s: &str) -> Result<TcpMapping, String> {
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

pub(super) fn parse_upgrade(s: &str) -> Result<String, String> {
    let p = s.trim().to_ascii_lowercase();
    match p.as_str() {
        "" => Err("an empty protocol name".into()),
        "h2c" => Err("`h2c` is never tunnelled: an HTTP/2 connection inside it would skip the proxy's checks".into()),
        _ => Ok(p),
    }
}
