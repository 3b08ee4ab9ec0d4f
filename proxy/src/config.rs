//! Static settings: command-line flags, each with a `WEFT_*` environment equivalent.
//!
//! Everything here is fixed for the life of the process; what changes at run time (services,
//! routes, endpoints) lives in the routing [`table`](crate::table).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser};

/// `weft-proxy`: the weft service-mesh sidecar.
#[derive(Debug, Parser)]
#[command(name = "weft-proxy", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub run: Config,
}

/// Settings of a running sidecar.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Routing table file (YAML). Re-read on SIGHUP and when its content changes.
    #[arg(long, env = "WEFT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// How often the table file is checked for changes (0 turns polling off; SIGHUP still works).
    #[arg(long, env = "WEFT_CONFIG_POLL_INTERVAL", value_parser = parse_duration, default_value = "2s")]
    pub config_poll_interval: Duration,

    /// Outbound listener: the application's outgoing traffic (redirect target).
    #[arg(long, env = "WEFT_OUTBOUND_ADDR", default_value = "127.0.0.1:15001")]
    pub outbound_addr: SocketAddr,

    /// Inbound listener: traffic from other workloads to this one (redirect target).
    #[arg(long, env = "WEFT_INBOUND_ADDR", default_value = "0.0.0.0:15006")]
    pub inbound_addr: SocketAddr,

    /// Where inbound traffic is delivered: the local application.
    #[arg(long, env = "WEFT_INBOUND_FORWARD", default_value = "127.0.0.1:8080")]
    pub inbound_forward: SocketAddr,

    /// Extra outbound TCP listener bound to one service: `LISTEN_ADDR=SERVICE[:PORT]`.
    /// Repeatable; in the environment, comma-separated.
    #[arg(long = "outbound-tcp", env = "WEFT_OUTBOUND_TCP", value_delimiter = ',', value_parser = parse_tcp_mapping)]
    pub outbound_tcp: Vec<TcpMapping>,

    /// Admin server (/config_dump, /shutdown, /log_level). Keep it on loopback.
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,

    /// Probe and metrics server (/live, /ready, /metrics).
    #[arg(long, env = "WEFT_PROBE_ADDR", default_value = "0.0.0.0:15020")]
    pub probe_addr: SocketAddr,

    #[command(flatten)]
    pub detect: DetectConfig,

    #[command(flatten)]
    pub upstream: UpstreamConfig,

    /// How long in-flight requests and streams may run once draining has begun.
    #[arg(long, env = "WEFT_SHUTDOWN_GRACE_PERIOD", value_parser = parse_duration, default_value = "30s")]
    pub shutdown_grace_period: Duration,

    /// Data-plane worker threads (0: one per CPU). 1 runs a single-threaded runtime.
    #[arg(long, env = "WEFT_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Log filter, `tracing` syntax (e.g. `info`, `weft_proxy=debug,hyper=info`).
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log_level: String,

    /// Log format.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
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
        default_value_t = 4096
    )]
    pub http2_max_concurrent_streams: u32,
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

/// Parses durations such as `250ms`, `10s`, `2m`, `1h` (a bare number is seconds).
pub use weft_core::duration::parse as parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn defaults_match_the_documented_ports() {
        let cfg = Cli::parse_from(["weft-proxy"]).run;
        assert_eq!(cfg.outbound_addr.port(), 15001);
        assert_eq!(cfg.inbound_addr.port(), 15006);
        assert_eq!(cfg.admin_addr, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(cfg.probe_addr.port(), 15020);
        assert_eq!(cfg.detect.detect_timeout, Duration::from_secs(10));
    }
}
