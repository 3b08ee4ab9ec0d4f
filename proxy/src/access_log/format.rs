//! An entry as a line: JSON, or Apache's combined format with weft's fields after it. Written
//! byte by byte into one buffer the writer reuses (no allocation per line), the date and time
//! of day formatted once a second.

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use super::digits::{AddrText, digits, millis, number};
use super::{Entry, Flags, Format};

/// Formats lines; keeps the last second's date and time of day, and the last addresses it
/// wrote (a connection's requests share the client's, a service's the endpoint's).
#[derive(Default)]
pub(super) struct Formatter {
    /// Seconds since the epoch of `second`.
    at: u64,
    /// `YYYY-MM-DDTHH:MM:SS` of `at`.
    second: Vec<u8>,
    /// The upstream's and the client's addresses last written, as text.
    addrs: [Option<(SocketAddr, AddrText)>; 2],
}

impl Formatter {
    /// Appends `e` as one line (with its newline) in `format`.
    pub(super) fn line(&mut self, e: &Entry, format: Format, out: &mut Vec<u8>) {
        match format {
            Format::Off => {}
            Format::Json => self.json(e, out),
            Format::Apache => self.apache(e, out),
        }
    }

    /// `a` as `ip:port`, from the text kept in `addrs[i]` when it is the same address.
    fn addr(&mut self, a: SocketAddr, i: usize, out: &mut Vec<u8>) {
        AddrText::write(&mut self.addrs[i], a, out);
    }

    /// `t` (Unix nanoseconds) as RFC 3339, UTC, to the millisecond:
    /// `2026-12-05T19:29:43.123Z`.
    fn time(&mut self, t: u64, out: &mut Vec<u8>) {
        let d = Duration::from_nanos(t);
        let secs = d.as_secs();
        if self.second.is_empty() || secs != self.at {
            self.at = secs;
            self.second.clear();
            write_second(secs, &mut self.second);
        }
        out.extend_from_slice(&self.second);
        out.push(b'.');
        digits(u64::from(d.subsec_millis()), 3, out);
        out.push(b'Z');
    }

    /// One JSON object: field names follow Envoy's default JSON access log where one exists; a
    /// field that does not apply is left out.
    fn json(&mut self, e: &Entry, out: &mut Vec<u8>) {
        out.reserve(1024);
        out.extend_from_slice(b"{\"start_time\":\"");
        self.time(e.start, out);
        out.push(b'"');
        let mut j = Json(out);
        j.plain(b",\"direction\":", Some(e.direction));
        j.plain(b",\"protocol\":", Some(e.protocol));
        // A method is a token: no character in it is escaped.
        j.plain(b",\"method\":", e.method.as_ref().map(|m| m.as_str()));
        j.str(b",\"authority\":", e.authority());
        j.str(b",\"path\":", e.path());
        j.num(b",\"response_code\":", Some(u64::from(e.status)));
        j.num(b",\"grpc_status\":", e.grpc_status.map(u64::from));
        j.key(b",\"response_flags\":");
        j.0.push(b'"');
        flags(e.flags, j.0);
        j.0.push(b'"');
        j.num(b",\"bytes_received\":", Some(e.received()));
        j.num(b",\"bytes_sent\":", Some(e.bytes_out));
        j.ms(b",\"duration_ms\":", Some(e.duration));
        j.ms(b",\"upstream_service_time_ms\":", e.upstream_time);
        j.addr(b",\"upstream_host\":", e.upstream, &mut self.addrs[0]);
        j.str(b",\"service\":", e.service.as_deref());
        j.str(b",\"route_name\":", e.route.as_deref());
        j.str(b",\"upstream_cluster\":", e.backend.as_deref());
        j.num(b",\"attempts\":", Some(u64::from(e.attempts)));
        j.addr(
            b",\"downstream_remote_address\":",
            e.client,
            &mut self.addrs[1],
        );
        j.str(b",\"client_identity\":", e.client_identity.as_deref());
        j.str(b",\"upstream_identity\":", e.upstream_identity.as_deref());
        j.str(b",\"request_id\":", e.request_id());
        let trace = e.trace_hex();
        j.str(b",\"trace_id\":", trace.as_ref().map(hex_str));
        j.str(b",\"user_agent\":", e.user_agent());
        j.str(b",\"referer\":", e.referer());
        out.extend_from_slice(b"}\n");
    }

    /// `client ident - [time] "METHOD path PROTOCOL" status bytes "referer" "user-agent"`: the
    /// combined format with the caller's identity as the ident (as Linkerd writes it), then
    /// weft's fields as `key=value`, `-` for what is unknown.
    fn apache(&mut self, e: &Entry, out: &mut Vec<u8>) {
        match e.client {
            Some(a) => self.addr(a, 1, out),
            None => out.push(b'-'),
        }
        out.push(b' ');
        bare(e.client_identity.as_deref(), out);
        out.extend_from_slice(b" - [");
        self.time(e.start, out);
        out.extend_from_slice(b"] \"");
        if let Some(m) = &e.method {
            quoted(m.as_str(), out);
            out.push(b' ');
            quoted(e.path().unwrap_or("-"), out);
            out.push(b' ');
        }
        quoted(e.protocol, out);
        out.extend_from_slice(b"\" ");
        number(u64::from(e.status), out);
        out.push(b' ');
        number(e.bytes_out, out);
        out.extend_from_slice(b" \"");
        quoted(e.referer().unwrap_or("-"), out);
        out.extend_from_slice(b"\" \"");
        quoted(e.user_agent().unwrap_or("-"), out);
        out.push(b'"');
        let kv = |k: &str, out: &mut Vec<u8>| {
            out.push(b' ');
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
        };
        kv("direction", out);
        bare(Some(e.direction), out);
        kv("authority", out);
        bare(e.authority(), out);
        kv("grpc_status", out);
        match e.grpc_status {
            Some(g) => number(u64::from(g), out),
            None => out.push(b'-'),
        }
        kv("flags", out);
        flags(e.flags, out);
        kv("bytes_received", out);
        number(e.received(), out);
        kv("duration_ms", out);
        millis(e.duration, out);
        kv("upstream_ms", out);
        match e.upstream_time {
            Some(d) => millis(d, out),
            None => out.push(b'-'),
        }
        kv("upstream", out);
        match e.upstream {
            Some(a) => self.addr(a, 0, out),
            None => out.push(b'-'),
        }
        kv("service", out);
        bare(e.service.as_deref(), out);
        kv("route", out);
        bare(e.route.as_deref(), out);
        kv("backend", out);
        bare(e.backend.as_deref(), out);
        kv("attempts", out);
        number(u64::from(e.attempts), out);
        kv("upstream_id", out);
        bare(e.upstream_identity.as_deref(), out);
        kv("request_id", out);
        bare(e.request_id(), out);
        kv("trace_id", out);
        bare(e.trace_hex().as_ref().map(hex_str), out);
        out.push(b'\n');
    }
}

/// `,"key":value` pairs after the first.
struct Json<'a>(&'a mut Vec<u8>);

impl Json<'_> {
    /// `k` is the whole `,"key":`. Inline: a key's length is known where it is written.
    #[inline(always)]
    fn key(&mut self, k: &[u8]) {
        self.0.extend_from_slice(k);
    }

    // A field without a value is left out.

    #[inline(always)]
    fn str(&mut self, k: &[u8], v: Option<&str>) {
        if let Some(v) = v {
            self.key(k);
            json_string(v, self.0);
        }
    }

    /// A string known to need no escape (the proxy's own words, a token).
    #[inline(always)]
    fn plain(&mut self, k: &[u8], v: Option<&str>) {
        if let Some(v) = v {
            self.key(k);
            self.0.push(b'"');
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(b'"');
        }
    }

    #[inline(always)]
    fn num(&mut self, k: &[u8], v: Option<u64>) {
        if let Some(n) = v {
            self.key(k);
            number(n, self.0);
        }
    }

    #[inline(always)]
    fn ms(&mut self, k: &[u8], v: Option<Duration>) {
        if let Some(d) = v {
            self.key(k);
            millis(d, self.0);
        }
    }

    /// `last`: the address this field had last, as text (made again when it differs).
    #[inline(always)]
    fn addr(&mut self, k: &[u8], v: Option<SocketAddr>, last: &mut Option<(SocketAddr, AddrText)>) {
        if let Some(a) = v {
            self.key(k);
            self.0.push(b'"');
            AddrText::write(last, a, self.0);
            self.0.push(b'"');
        }
    }
}

/// `s` as a JSON string: `"` and `\` escaped, control characters as `\u00XX`.
fn json_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Most values need no escape: one pass, eight bytes at a time, says so.
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'"' || b == b'\\' || b < 0x20 {
            out.extend_from_slice(&bytes[from..i]);
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                _ => {
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0xf)]);
                }
            }
            from = i + 1;
        }
    }
    out.extend_from_slice(&bytes[from..]);
    out.push(b'"');
}

/// Whether `bytes` has a `"`, a `\\` or a control character, tested eight bytes at a time (the
/// classic bit tricks: a byte below `n`, a byte equal to `c`, without a branch per byte).
pub(super) fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let equal = |x: u64, c: u8| below(x ^ (ONES * u64::from(c)), 1);
    let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().expect("eight bytes"));
    let test = |x: u64| below(x, 0x20) | equal(x, b'"') | equal(x, b'\\');
    if bytes.len() < 8 {
        // Padded with a byte that is never escaped.
        let mut pad = [b'a'; 8];
        pad[..bytes.len()].copy_from_slice(bytes);
        return test(word(&pad)) != 0;
    }
    let mut chunks = bytes.chunks_exact(8);
    let mut any = 0;
    for chunk in &mut chunks {
        any |= test(word(chunk));
    }
    // The last bytes, as the last eight (some tested twice): no byte-by-byte tail.
    if !chunks.remainder().is_empty() {
        any |= test(word(&bytes[bytes.len() - 8..]));
    }
    any != 0
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Text inside a quoted field: `"` and `\` escaped, control bytes as `\xHH` (as Apache does).
fn quoted(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            0..=0x1f | 0x7f => escaped(b, out),
            _ => out.push(b),
        }
    }
}

/// A `key=value` value (or the ident): as [`quoted`], and spaces as `\x20`, so fields split on
/// spaces; `-` when there is none or it is empty.
fn bare(s: Option<&str>, out: &mut Vec<u8>) {
    match s {
        None | Some("") => out.push(b'-'),
        Some(s) => {
            for &b in s.as_bytes() {
                match b {
                    b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
                    0..=0x20 | 0x7f => escaped(b, out),
                    _ => out.push(b),
                }
            }
        }
    }
}

fn escaped(b: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(b"\\x");
    out.push(HEX[usize::from(b >> 4)]);
    out.push(HEX[usize::from(b & 0xf)]);
}

/// A trace id's hex digits as text.
fn hex_str(hex: &[u8; 32]) -> &str {
    std::str::from_utf8(hex).expect("hex digits")
}

/// As Envoy writes them: `UF,URX`; `-` for none.
pub(super) fn flags(f: Flags, out: &mut Vec<u8>) {
    if f == Flags::default() {
        out.push(b'-');
        return;
    }
    let mut any = false;
    for (flag, name) in Flags::NAMES {
        if f.contains(flag) {
            if any {
                out.push(b',');
            }
            out.extend_from_slice(name.as_bytes());
            any = true;
        }
    }
    if !any {
        out.push(b'-');
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` after the epoch (UTC).
fn write_second(secs: u64, out: &mut Vec<u8>) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(days as i64);
    digits(y.max(0) as u64, 4, out);
    out.push(b'-');
    digits(u64::from(m), 2, out);
    out.push(b'-');
    digits(u64::from(d), 2, out);
    out.push(b'T');
    digits(rem / 3600, 2, out);
    out.push(b':');
    digits(rem % 3600 / 60, 2, out);
    out.push(b':');
    digits(rem % 60, 2, out);
}

/// `t` in RFC 3339, UTC, to the millisecond: `2026-12-05T19:29:43.123Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Formatter::default().time(d.as_nanos() as u64, &mut out);
    String::from_utf8(out).expect("digits and punctuation")
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
