//! The bits of gRPC's HTTP/2 mapping the proxy reads or writes.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};

pub const STATUS: &str = "grpc-status";
pub const MESSAGE: &str = "grpc-message";
pub const TIMEOUT: &str = "grpc-timeout";

pub const CANCELLED: u32 = 1;
pub const UNIMPLEMENTED: u32 = 12;
pub const INTERNAL: u32 = 13;
pub const UNAVAILABLE: u32 = 14;
pub const DEADLINE_EXCEEDED: u32 = 4;
pub const RESOURCE_EXHAUSTED: u32 = 8;
pub const PERMISSION_DENIED: u32 = 7;

/// A request is gRPC if its content type is `application/grpc` or `application/grpc+<codec>`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"application/grpc") && matches!(v.get(16), None | Some(b'+') | Some(b';'))
    })
}

/// Parses `grpc-timeout` (`TimeoutValue TimeoutUnit`: up to 8 digits, then H M S m u n).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(TIMEOUT)?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A `grpc-timeout` value for `d`, in the finest unit that fits eight digits.
pub fn encode_timeout(d: Duration) -> HeaderValue {
    let n = d.as_nanos();
    let (v, unit) = [
        (n, "n"),
        (n / 1_000, "u"),
        (n / 1_000_000, "m"),
        (n / 1_000_000_000, "S"),
        (n / 60_000_000_000, "M"),
        (n / 3_600_000_000_000, "H"),
    ]
    .into_iter()
    .find(|(v, _)| *v < 100_000_000)
    .unwrap_or((99_999_999, "H"));
    HeaderValue::from_str(&format!("{v}{unit}")).expect("digits and a unit letter")
}

/// The `grpc-status` of a header or trailer block, if it has one.
pub fn status(headers: &HeaderMap) -> Option<u32> {
    headers.get(STATUS)?.to_str().ok()?.parse().ok()
}

/// Percent-encodes a message for `grpc-message` (printable ASCII except `%` stays as is).
pub fn encode_message(msg: &str) -> HeaderValue {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).expect("percent-encoded text is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(k: &'static str, v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(k, v.parse().unwrap());
        m
    }

    #[test]
    fn detects_grpc_content_types() {
        assert!(is_grpc(&h("content-type", "application/grpc")));
        assert!(is_grpc(&h("content-type", "application/grpc+proto")));
        assert!(!is_grpc(&h("content-type", "application/grpc-web")));
        assert!(!is_grpc(&h("content-type", "application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(
            timeout(&h(TIMEOUT, "100m")),
            Some(Duration::from_millis(100))
        );
        assert_eq!(timeout(&h(TIMEOUT, "2S")), Some(Duration::from_secs(2)));
        assert_eq!(timeout(&h(TIMEOUT, "1H")), Some(Duration::from_secs(3600)));
        assert_eq!(
            timeout(&h(TIMEOUT, "5000u")),
            Some(Duration::from_millis(5))
        );
        assert_eq!(timeout(&h(TIMEOUT, "123456789S")), None, "at most 8 digits");
        assert_eq!(timeout(&h(TIMEOUT, "10x")), None);
        assert_eq!(timeout(&h(TIMEOUT, "S")), None);
    }

    #[test]
    fn encodes_messages() {
        assert_eq!(encode_message("a b"), "a b");
        assert_eq!(encode_message("100% é"), "100%25 %C3%A9");
    }
}
