//! Flags for what the sidecar tells operators beyond its metrics: the access log and
//! distributed tracing.

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

/// Distributed tracing: spans for sampled requests, exported over OTLP/gRPC.
#[derive(Debug, Clone, Args)]
pub struct TraceConfig {
    /// The OpenTelemetry collector's OTLP/gRPC endpoint (`http://host:4317`, or `https://`
    /// verified with --trace-otlp-ca). Tracing is on when it is set; without it, trace headers
    /// pass through untouched.
    #[arg(
        long = "trace-otlp-endpoint",
        env = weft_core::contract::TRACE_OTLP_ENDPOINT,
        value_name = "URL"
    )]
    pub otlp_endpoint: Option<String>,

    /// PEM certificates that verify an `https://` collector [default: the system's, from
    /// SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt].
    #[arg(
        long = "trace-otlp-ca",
        env = "WEFT_TRACE_OTLP_CA",
        value_name = "FILE"
    )]
    pub otlp_ca: Option<PathBuf>,

    /// Percent of new traces sampled (a caller's decision, in `traceparent` or B3, is kept).
    #[arg(
        id = "trace_sampling",
        long = "trace-sampling",
        env = weft_core::contract::TRACE_SAMPLING,
        default_value_t = 1.0,
        value_parser = percent
    )]
    pub sampling: f64,

    /// Spans waiting for export at most; beyond, spans are dropped and counted in
    /// `weft_trace_spans_dropped_total{reason="queue_full"}`. Each holds at most about 6 KiB.
    #[arg(
        id = "trace_queue",
        long = "trace-queue",
        env = "WEFT_TRACE_QUEUE",
        default_value_t = 2048,
        value_parser = clap::value_parser!(u32).range(1..=100_000)
    )]
    pub queue: u32,

    /// Spans made per second at most, whoever asked for them (the rate, or callers whose
    /// `traceparent` says sampled); beyond, a request is not traced by this sidecar (its trace
    /// headers go on as they came) and is counted in
    /// `weft_trace_spans_dropped_total{reason="rate_limited"}`.
    #[arg(
        id = "trace_max_rate",
        long = "trace-max-rate",
        env = "WEFT_TRACE_MAX_RATE",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub max_rate: u32,

    /// Give a request without an `x-request-id` a generated one (a random UUID), which the
    /// application, the access log and the span then share.
    #[arg(
        long = "generate-request-id",
        env = weft_core::contract::GENERATE_REQUEST_ID,
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub generate_request_id: bool,
}

/// A percentage, 0 to 100.
fn percent(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=100.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("`{s}` is not a percentage from 0 to 100"))
    }
}
