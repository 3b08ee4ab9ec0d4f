use std::{
    io::Write,
    sync::{Arc, Barrier, Mutex},
    time::{Duration, SystemTime},
};

use http::HeaderMap;

use super::text::{AUTHORITY, PATH, REFERER, REQUEST_ID, Text, USER_AGENT};
use super::*;

/// The trace id of `h`, as text.
fn trace(h: &HeaderMap) -> Option<String> {
    trace_id(h).map(|t| t.iter().map(|b| format!("{b:02x}")).collect())
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
        .collect()
}

#[test]
fn times_are_rfc3339_in_utc_to_the_millisecond() {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    // The epoch, leap days, the turn of centuries (2000 is a leap year, 2100 is not), and a
    // sweep of one instant every 7.3 days for 200 years.
    let mut secs: Vec<u64> = vec![0, 951_782_400, 951_868_799, 4_107_542_400, 4_102_444_799];
    secs.extend((0..10_000u64).map(|i| i * 630_727 + 12_345));
    for s in secs {
        for ms in [0, 7, 999] {
            let t = SystemTime::UNIX_EPOCH + Duration::from_millis(s * 1000 + ms);
            let want = time::OffsetDateTime::from(t).format(&fmt).unwrap();
            assert_eq!(rfc3339_millis(t), want, "{s}.{ms}");
        }
    }
}

#[test]
fn trace_ids_come_from_a_valid_traceparent_or_b3() {
    let id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let ok = format!("00-{id}-00f067aa0ba902b7-01");
    assert_eq!(
        trace(&headers(&[("traceparent", &ok)])).as_deref(),
        Some(id)
    );
    // A later version may append fields; version 00 may not.
    let later = format!("01-{id}-00f067aa0ba902b7-01-extra");
    assert_eq!(
        trace(&headers(&[("traceparent", &later)])).as_deref(),
        Some(id)
    );
    for bad in [
        format!("00-{id}-00f067aa0ba902b7-01-extra"),
        format!("ff-{id}-00f067aa0ba902b7-01"),
        format!("00-{}-00f067aa0ba902b7-01", id.to_uppercase()),
        format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
        format!("00-{id}-0000000000000000-01"),
        format!("00-{id}-00f067aa0ba902b7"),
        "00".to_string(),
        String::new(),
    ] {
        // An invalid traceparent is ignored, B3 beside it too (W3C takes precedence).
        let h = headers(&[("traceparent", &bad), ("x-b3-traceid", id)]);
        assert_eq!(trace(&h), None, "{bad}");
    }
    let b3 = headers(&[("x-b3-traceid", "A3CE929D0E0E4736")]);
    assert_eq!(
        trace(&b3).as_deref(),
        Some("0000000000000000a3ce929d0e0e4736"),
        "a 64-bit B3 id is padded to 128 bits"
    );
    assert_eq!(trace(&headers(&[("x-b3-traceid", "xyz")])), None);
}

#[test]
fn flags_read_as_envoy_writes_them() {
    let mut f = Flags::default();
    assert_eq!(f.render(), "-");
    f.set(Flags::URX);
    f.set(Flags::UF);
    assert_eq!(f.render(), "UF,URX");
    assert!(f.contains(Flags::UF) && !f.contains(Flags::UH));
}

#[test]
fn fields_from_a_request_are_cut_to_their_bound() {
    let long = "é".repeat(MAX_FIELD);
    let odd = format!("x{long}");
    let t = Texts::new([
        Some((Text::Bytes(long.as_bytes()), MAX_FIELD)),
        Some((Text::Str(&odd), MAX_FIELD)),
        Some((Text::Bytes(b"\xffok"), 10)),
        None,
        Some((Text::Str("0123"), 2)),
    ]);
    let authority = t.get(AUTHORITY).unwrap();
    assert_eq!(authority.len(), MAX_FIELD);
    assert!(authority.chars().all(|c| c == 'é'));
    let path = t.get(PATH).unwrap();
    assert_eq!(path.len(), MAX_FIELD - 1, "cut on a character boundary");
    assert!(path.starts_with("xé"));
    assert_eq!(t.get(USER_AGENT), Some("\u{fffd}ok"));
    assert_eq!(t.get(REFERER), None);
    assert_eq!(t.get(REQUEST_ID), Some("01"));
}

/// A writer that blocks until the test lets it go, and keeps what it was given.
#[derive(Clone)]
struct Gate {
    open: Arc<Barrier>,
    written: Arc<Mutex<Vec<u8>>>,
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.open.wait();
        Ok(())
    }
}

#[test]
fn a_full_queue_drops_lines_and_counts_them() {
    let gate = Gate {
        open: Arc::new(Barrier::new(2)),
        written: Arc::default(),
    };
    let dropped = prometheus::IntCounter::new("d", "d").unwrap();
    let log = AccessLog::start(
        Format::Json,
        Sink::Writer(Box::new(gate.clone())),
        false,
        4,
        dropped.clone(),
    )
    .unwrap()
    .unwrap();
    // The first line is taken and written; its flush waits at the gate.
    log.connection("inbound", None).finish();
    while gate.written.lock().unwrap().is_empty() {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Four more fill the queue; the next six find it full.
    for _ in 0..10 {
        log.connection("inbound", None).finish();
    }
    assert_eq!(dropped.get(), 6);
    // A flush behind the full queue of a stuck writer gives up when its time is up (a send
    // that waited for room would wait for ever: the writer waits for this thread).
    log.flush(Duration::from_millis(50));
    // Opened, the writer writes the four queued and flushes (the gate again).
    gate.open.wait();
    gate.open.wait();
    let written = String::from_utf8(gate.written.lock().unwrap().clone()).unwrap();
    assert_eq!(written.lines().count(), 5, "{written}");
    for l in written.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["protocol"], "TCP");
    }
}

/// A log writing to memory, and what it wrote once every queued line is out.
fn memory_log(format: Format, query: bool) -> (&'static AccessLog, impl Fn() -> String) {
    let written: Arc<Mutex<Vec<u8>>> = Arc::default();
    struct W(Arc<Mutex<Vec<u8>>>);
    impl Write for W {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let dropped = prometheus::IntCounter::new("d", "d").unwrap();
    let sink = Sink::Writer(Box::new(W(written.clone())));
    let log = AccessLog::start(format, sink, query, 16, dropped)
        .unwrap()
        .unwrap();
    let l = log;
    (log, move || {
        l.flush(Duration::from_secs(5));
        String::from_utf8(written.lock().unwrap().clone()).unwrap()
    })
}

fn hostile_request() -> http::Request<()> {
    let agent = http::HeaderValue::from_bytes(b"a \"quoted\"\tback\\slash \xe9t\xe9").unwrap();
    http::Request::get("http://web:8080/p%20ath?token=s3cret")
        .header("user-agent", agent)
        .body(())
        .unwrap()
}

#[test]
fn json_lines_read_back_as_what_the_request_sent() {
    let (log, written) = memory_log(Format::Json, false);
    let mut e = log.request(&hostile_request(), "outbound", "10.1.2.3:4567".parse().ok());
    e.upstream = "[fd00::1]:80".parse().ok();
    e.upstream_time = Some(Duration::from_micros(50));
    e.duration = Duration::from_micros(1_234_567);
    e.flags.set(Flags::UT);
    e.finish();
    let text = written();
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(
        v["user_agent"],
        "a \"quoted\"\tback\\slash \u{fffd}t\u{fffd}"
    );
    assert_eq!(v["path"], "/p%20ath", "no query by default");
    assert_eq!(v["authority"], "web:8080");
    assert_eq!(v["downstream_remote_address"], "10.1.2.3:4567");
    assert_eq!(v["upstream_host"], "[fd00::1]:80");
    assert_eq!(v["upstream_service_time_ms"], 0.05);
    assert_eq!(v["response_flags"], "UT");
    assert!(
        v["duration_ms"].as_f64().unwrap() < 1.0,
        "measured at finish"
    );
    assert!(
        v.get("trace_id").is_none(),
        "a field without a value is left out: {v}"
    );
}

#[test]
fn an_extension_method_is_cut_to_the_field_bound() {
    let (log, written) = memory_log(Format::Json, false);
    let long = "X".repeat(10_000);
    let req = http::Request::builder()
        .method(long.as_str())
        .uri("/")
        .body(())
        .unwrap();
    let e = log.request(&req, "inbound", None);
    assert_eq!(e.method.as_ref().unwrap().as_str().len(), MAX_FIELD);
    e.finish();
    let v: serde_json::Value = serde_json::from_str(written().trim_end()).unwrap();
    assert_eq!(v["method"], long[..MAX_FIELD]);
}

#[test]
fn apache_lines_escape_what_could_split_a_field_and_keep_the_query_when_asked() {
    let (log, written) = memory_log(Format::Apache, true);
    let mut e = log.request(&hostile_request(), "inbound", None);
    e.client_identity = Some("spiffe://cluster.local/ns/a b/sa/c".into());
    e.status = 200;
    e.finish();
    let text = written();
    let line = text.strip_suffix('\n').unwrap();
    assert!(!line.contains('\n') && !line.contains('\t'), "{line}");
    assert!(
        line.starts_with("- spiffe://cluster.local/ns/a\\x20b/sa/c - ["),
        "{line}"
    );
    assert!(
        line.contains(
            r#"] "GET /p%20ath?token=s3cret HTTP/1.1" 200 0 "-" "a \"quoted\"\x09back\\slash "#
        ),
        "{line}"
    );
    assert!(line.ends_with(" trace_id=-"), "{line}");
}

#[test]
fn numbers_are_written_in_decimal() {
    for n in (0..=1100).chain([9_999, 10_000, 65_535, 1_234_567, u64::MAX]) {
        let mut out = Vec::new();
        super::digits::number(n, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
    }
}

#[test]
fn the_eight_bytes_at_a_time_escape_test_agrees_with_the_byte_by_byte_one() {
    let slow = |b: &[u8]| b.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
    for len in [1, 7, 8, 9, 16, 17, 40] {
        for at in 0..len {
            for c in 0u8..=127 {
                let mut s = vec![b'a'; len];
                s[at] = c;
                assert_eq!(
                    super::format::needs_escape(&s),
                    slow(&s),
                    "byte {c:#x} at {at} of {len}"
                );
            }
        }
    }
    for s in [
        "",
        "ééééé\"é",
        "ü\\",
        "héllo wörld, ünïcode",
        "日本語のテキスト",
        "\u{7f}\u{80}\u{ff}",
    ] {
        assert_eq!(
            super::format::needs_escape(s.as_bytes()),
            slow(s.as_bytes()),
            "{s}"
        );
    }
}

#[test]
fn durations_are_milliseconds_to_the_microsecond() {
    for (us, want) in [
        (0, "0.000"),
        (1, "0.001"),
        (10, "0.010"),
        (999, "0.999"),
        (1_204, "1.204"),
        (12_345_678, "12345.678"),
    ] {
        let mut out = Vec::new();
        super::digits::millis(Duration::from_micros(us), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
}

#[test]
fn each_line_has_its_own_addresses_when_they_change_from_line_to_line() {
    for format in [Format::Json, Format::Apache] {
        let (log, written) = memory_log(format, false);
        // The longest an address is written: eight groups of four, the largest scope id.
        let longest = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535";
        let clients = ["10.0.0.1:1000", "10.0.0.1:1000", longest, "10.0.0.1:1000"];
        let upstreams = [
            "10.9.0.1:80",
            "[fd00::2]:8080",
            "[fd00::2]:8080",
            "10.9.0.1:80",
        ];
        for (c, u) in clients.iter().zip(upstreams) {
            let mut e = log.request(&hostile_request(), "outbound", c.parse().ok());
            e.upstream = u.parse().ok();
            e.finish();
        }
        let text = written();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        for ((line, c), u) in lines.iter().zip(clients).zip(upstreams) {
            match format {
                Format::Json => {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    assert_eq!(v["downstream_remote_address"], c);
                    assert_eq!(v["upstream_host"], u);
                }
                _ => {
                    assert!(line.starts_with(&format!("{c} ")), "{line}");
                    assert!(line.contains(&format!(" upstream={u} ")), "{line}");
                }
            }
        }
    }
}
