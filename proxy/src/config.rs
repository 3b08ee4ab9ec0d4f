//! Static settings: command-line flags, each with a `WEFT_*` environment equivalent.
//!
//! Everything here is fixed for the life of the process; what changes at run time (services,
//! routes, endpoints) lives in the routing [`table`](crate::table).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser};

mod data_plane;
mod discovery;
mod observe;

pub use data_plane::*;
pub use discovery::*;
pub use observe::*;

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

    #[command(flatten)]
    pub access_log: AccessLogConfig,

    #[command(flatten)]
    pub trace: TraceConfig,

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

/// Parses durations such as `250ms`, `10s`, `2m`, `1h` (a bare number is seconds).
pub use weft_core::duration::parse as parse_duration;

#[cfg(test)]
mod tests;

/// `--default-authz`: what a destination no policy guards does with a caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DefaultAuthz {
    #[default]
    Allow,
    Deny,
}
