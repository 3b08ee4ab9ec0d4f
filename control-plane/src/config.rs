//! The control plane's flags, each with a `WEFT_*` environment equivalent.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use weft_core::{duration::parse as parse_duration, log::LogFormat};

/// `weft-control-plane`: service registrations and traffic policies in, xDS out.
#[derive(Debug, Clone, Parser)]
#[command(name = "weft-control-plane", version, about)]
pub struct Config {
    /// The file registry: a directory of `Service` and `TrafficPolicy` YAML/JSON files.
    #[arg(long, env = "WEFT_REGISTRY_DIR", value_name = "DIR")]
    pub registry_dir: PathBuf,

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
