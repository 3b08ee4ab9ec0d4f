use std::{
    io::Write,
    sync::{Arc, Barrier, Mutex},
    time::{Duration, SystemTime},
};

use http::HeaderMap;

use super::*;

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
        trace_id(&headers(&[("traceparent", &ok)])).as_deref(),
        Some(id)
    );
    // A later version may append fields; version 00 may not.
    let later = format!("01-{id}-00f067aa0ba902b7-01-extra");
    assert_eq!(
        trace_id(&headers(&[("traceparent", &later)])).as_deref(),
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
        assert_eq!(trace_id(&h), None, "{bad}");
    }
    let b3 = headers(&[("x-b3-traceid", "A3CE929D0E0E4736")]);
    assert_eq!(
        trace_id(&b3).as_deref(),
        Some("0000000000000000a3ce929d0e0e4736"),
        "a 64-bit B3 id is padded to 128 bits"
    );
    assert_eq!(trace_id(&headers(&[("x-b3-traceid", "xyz")])), None);
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
    let cut_value = cut(long.as_bytes(), MAX_FIELD);
    assert!(cut_value.len() <= MAX_FIELD);
    assert!(
        cut_value.chars().all(|c| c == 'é'),
        "cut on a character boundary"
    );
    assert_eq!(&*cut(b"\xffok", 10), "\u{fffd}ok");
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
