//! Flags for what the sidecar tells operators beyond its metrics: the access log.

use std::path::PathBuf;

use clap::Args;

/// The access log's format (`--access-log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AccessLogFormat {
    /// No access log.
    #[default]
    Off,
    /// One JSON object per line.
    Json,
    /// Apache's combined log format, the caller's identity in the ident field (as Linkerd
    /// writes it), then weft's fields as `key=value`.
    Apache,
}

/// The access log: one line per HTTP request and per opaque TCP connection.
#[derive(Debug, Clone, Args)]
pub struct AccessLogConfig {
    /// Access log format: `off`, `json` or `apache`. What the injector sets from the pod's
    /// `weft.dev/access-log` annotation.
    #[arg(
        long = "access-log",
        env = weft_core::contract::ACCESS_LOG,
        value_enum,
        default_value = "off"
    )]
    pub format: AccessLogFormat,

    /// Where the access log goes (appended to) [default: stdout; the proxy's own log is on
    /// stderr].
    #[arg(
        long = "access-log-path",
        env = "WEFT_ACCESS_LOG_PATH",
        value_name = "FILE"
    )]
    pub path: Option<PathBuf>,

    /// Keep the query string in logged paths (off by default: queries often carry tokens).
    #[arg(long = "access-log-query", env = "WEFT_ACCESS_LOG_QUERY")]
    pub query: bool,

    /// Lines waiting for the writer at most; beyond, lines are dropped and counted in
    /// `weft_access_log_dropped_total`. Each line holds at most about 4 KiB.
    #[arg(
        long = "access-log-queue",
        env = "WEFT_ACCESS_LOG_QUEUE",
        default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub queue: u32,
}
