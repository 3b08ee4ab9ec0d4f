//! An entry as a line: JSON, or Apache's combined format with weft's fields after it.

use std::{io::Write, time::SystemTime};

use serde::Serialize;

use super::{Entry, Format};

/// A line as JSON: field names follow Envoy's default JSON access log where one exists.
#[derive(Serialize)]
struct Json<'a> {
    start_time: &'a str,
    direction: &'static str,
    protocol: &'static str,
    method: Option<&'a str>,
    authority: Option<&'a str>,
    path: Option<&'a str>,
    response_code: u16,
    grpc_status: Option<u32>,
    response_flags: &'a str,
    bytes_received: u64,
    bytes_sent: u64,
    duration_ms: f64,
    upstream_service_time_ms: Option<f64>,
    upstream_host: Option<String>,
    service: Option<&'a str>,
    route_name: Option<&'a str>,
    upstream_cluster: Option<&'a str>,
    attempts: u32,
    downstream_remote_address: Option<String>,
    client_identity: Option<&'a str>,
    upstream_identity: Option<&'a str>,
    request_id: Option<&'a str>,
    trace_id: Option<&'a str>,
    user_agent: Option<&'a str>,
    referer: Option<&'a str>,
}

/// Milliseconds, to the microsecond.
fn millis(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// Appends `e` as one line (with its newline) in `format`.
pub(super) fn line(e: &Entry, format: Format, out: &mut Vec<u8>) {
    let start = rfc3339_millis(e.start);
    let flags = e.flags.render();
    match format {
        Format::Off => {}
        Format::Json => {
            let j = Json {
                start_time: &start,
                direction: e.direction,
                protocol: e.protocol,
                method: e.method.as_ref().map(|m| m.as_str()),
                authority: e.authority.as_deref(),
                path: e.path.as_deref(),
                response_code: e.status,
                grpc_status: e.grpc_status,
                response_flags: &flags,
                bytes_received: e.received(),
                bytes_sent: e.bytes_out,
                duration_ms: millis(e.duration),
                upstream_service_time_ms: e.upstream_time.map(millis),
                upstream_host: e.upstream.map(|a| a.to_string()),
                service: e.service.as_deref(),
                route_name: e.route.as_deref(),
                upstream_cluster: e.backend.as_deref(),
                attempts: e.attempts,
                downstream_remote_address: e.client.map(|a| a.to_string()),
                client_identity: e.client_identity.as_deref(),
                upstream_identity: e.upstream_identity.as_deref(),
                request_id: e.request_id.as_deref(),
                trace_id: e.trace_id.as_deref(),
                user_agent: e.user_agent.as_deref(),
                referer: e.referer.as_deref(),
            };
            serde_json::to_writer(&mut *out, &j).expect("a Vec takes any write");
            out.push(b'\n');
        }
        Format::Apache => apache(e, &start, &flags, out),
    }
}

/// `client ident - [time] "METHOD path PROTOCOL" status bytes "referer" "user-agent"`, the
/// combined format with the caller's identity as the ident (as Linkerd writes it), then weft's
/// fields as `key=value`, `-` for what is unknown.
fn apache(e: &Entry, start: &str, flags: &str, out: &mut Vec<u8>) {
    let dash = |o: Option<&str>| o.unwrap_or("-").to_string();
    let client = e.client.map(|a| a.to_string());
    let _ = write!(
        out,
        "{} {} - [{start}] \"",
        dash(client.as_deref()),
        dash(e.client_identity.as_deref()),
    );
    match &e.method {
        Some(m) => {
            quoted(m.as_str(), out);
            out.push(b' ');
            quoted(e.path.as_deref().unwrap_or("-"), out);
            out.push(b' ');
            quoted(e.protocol, out);
        }
        None => quoted(e.protocol, out),
    }
    let _ = write!(out, "\" {} {} \"", e.status, e.bytes_out);
    quoted(e.referer.as_deref().unwrap_or("-"), out);
    out.extend_from_slice(b"\" \"");
    quoted(e.user_agent.as_deref().unwrap_or("-"), out);
    out.push(b'"');
    let mut kv = |k: &str, v: &str| {
        let _ = write!(out, " {k}=");
        if v.is_empty() {
            out.push(b'-');
        } else {
            bare(v, out);
        }
    };
    kv("direction", e.direction);
    kv("authority", e.authority.as_deref().unwrap_or("-"));
    kv(
        "grpc_status",
        &dash(e.grpc_status.map(|g| g.to_string()).as_deref()),
    );
    kv("flags", flags);
    kv("bytes_received", &e.received().to_string());
    kv("duration_ms", &millis(e.duration).to_string());
    kv(
        "upstream_ms",
        &dash(e.upstream_time.map(|d| millis(d).to_string()).as_deref()),
    );
    kv(
        "upstream",
        &dash(e.upstream.map(|a| a.to_string()).as_deref()),
    );
    kv("service", e.service.as_deref().unwrap_or("-"));
    kv("route", e.route.as_deref().unwrap_or("-"));
    kv("backend", e.backend.as_deref().unwrap_or("-"));
    kv("attempts", &e.attempts.to_string());
    kv("upstream_id", e.upstream_identity.as_deref().unwrap_or("-"));
    kv("request_id", e.request_id.as_deref().unwrap_or("-"));
    kv("trace_id", e.trace_id.as_deref().unwrap_or("-"));
    out.push(b'\n');
}

/// Text inside a quoted field: `"` and `\` escaped, control bytes as `\xHH` (as Apache does).
fn quoted(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            0..=0x1f | 0x7f => {
                let _ = write!(out, "\\x{b:02x}");
            }
            _ => out.push(b),
        }
    }
}

/// A `key=value` value: as [`quoted`], with spaces also escaped, so fields split on spaces.
fn bare(s: &str, out: &mut Vec<u8>) {
    for part in s.split(' ') {
        quoted(part, out);
        out.extend_from_slice(b"\\x20");
    }
    out.truncate(out.len() - 4);
}

/// `t` in RFC 3339, UTC, to the millisecond: `2026-12-05T19:29:43.123Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
