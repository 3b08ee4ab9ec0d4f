use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use super::context::parent;
use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
        .collect()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

#[test]
fn traceparent_is_read_as_w3c_trace_context_defines_it() {
    let p = parent(&headers(&[(
        "traceparent",
        &format!("00-{TRACE}-{SPAN}-01"),
    )]))
    .unwrap();
    assert_eq!(p.sampled, Some(true));
    assert_eq!(p.trace_id[0], 0x4b);
    assert_eq!(p.span_id[7], 0xb7);
    assert!(!p.b3);
    let unsampled = parent(&headers(&[(
        "traceparent",
        &format!("00-{TRACE}-{SPAN}-02"),
    )]));
    assert_eq!(
        unsampled.unwrap().sampled,
        Some(false),
        "only bit 0 samples"
    );
    // A later version may carry more fields.
    assert!(
        parent(&headers(&[(
            "traceparent",
            &format!("01-{TRACE}-{SPAN}-01-more")
        )]))
        .is_some()
    );
    for bad in [
        format!("00-{TRACE}-{SPAN}-01-more"),
        format!("ff-{TRACE}-{SPAN}-01"),
        format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
        format!("00-{}-{SPAN}-01", "0".repeat(32)),
        format!("00-{TRACE}-{}-01", "0".repeat(16)),
        format!("00-{TRACE}-{SPAN}-0"),
        format!("00_{TRACE}-{SPAN}-01"),
        format!("00-{TRACE}-{SPAN}-zz"),
        String::new(),
    ] {
        assert_eq!(parent(&headers(&[("traceparent", &bad)])), None, "{bad:?}");
    }
}

#[test]
fn b3_is_read_with_its_sampling_decision_or_none() {
    let p = |pairs: &[(&str, &str)]| parent(&headers(pairs));
    let long = p(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "1"),
    ])
    .unwrap();
    assert_eq!(long.sampled, Some(true));
    assert!(long.b3);
    let short = p(&[("x-b3-traceid", &TRACE[16..]), ("x-b3-spanid", SPAN)]).unwrap();
    assert_eq!(short.trace_id[..8], [0; 8], "a 64-bit id is the low half");
    assert_eq!(short.sampled, None, "no decision: the sidecar's to make");
    let denied = p(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "0"),
    ]);
    assert_eq!(denied.unwrap().sampled, Some(false));
    let debug = p(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-flags", "1"),
    ]);
    assert_eq!(debug.unwrap().sampled, Some(true));
    // traceparent wins over B3.
    let both = p(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-00")),
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "1"),
    ]);
    assert_eq!(both.unwrap().sampled, Some(false));
    for bad in [
        vec![("x-b3-traceid", TRACE)],
        vec![("x-b3-traceid", "abc"), ("x-b3-spanid", SPAN)],
        vec![("x-b3-traceid", TRACE), ("x-b3-spanid", "00f067aa")],
        vec![("x-b3-traceid", &"0".repeat(32)[..]), ("x-b3-spanid", SPAN)],
        vec![("x-b3-traceid", TRACE), ("x-b3-spanid", "00f067aa0ba902bz")],
    ] {
        assert_eq!(p(&bad), None, "{bad:?}");
    }
}

fn tracer(percent: f64) -> &'static Tracer {
    let dropped =
        prometheus::IntCounterVec::new(prometheus::Opts::new("d", "d"), &["reason"]).unwrap();
    Tracer::new(percent, 4, 1_000_000, dropped).0
}

#[test]
fn a_sampled_parent_is_continued_with_a_span_of_this_sidecar() {
    let t = tracer(0.0);
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let mut h = headers(&[("traceparent", &tp), ("tracestate", "a=1")]);
    let traced = t
        .start(&mut h, Direction::Outbound, Instant::now())
        .expect("sampled by its parent");
    assert_eq!(
        traced.parent,
        Some(parent(&headers(&[("traceparent", &tp)])).unwrap().span_id)
    );
    let mine: String = traced.span_id.iter().map(|b| format!("{b:02x}")).collect();
    assert_ne!(mine, SPAN);
    assert_eq!(h["traceparent"], format!("00-{TRACE}-{mine}-01"));
    assert_eq!(h["tracestate"], "a=1");
    assert_eq!(traced.state.as_deref(), Some("a=1"));
    // A tracestate longer than W3C's 512 goes on upstream but is not kept on the span.
    let long = format!("a={}", "x".repeat(600));
    let mut h = headers(&[("traceparent", &tp), ("tracestate", &long)]);
    let traced = t
        .start(&mut h, Direction::Outbound, Instant::now())
        .unwrap();
    assert_eq!(traced.state, None);
    assert_eq!(h["tracestate"], *long);
}

#[test]
fn unsampled_requests_are_left_as_they_came() {
    let never = tracer(0.0);
    let tp = format!("00-{TRACE}-{SPAN}-00");
    let mut h = headers(&[("traceparent", &tp)]);
    assert!(
        tracer(100.0)
            .start(&mut h, Direction::Inbound, Instant::now())
            .is_none()
    );
    assert_eq!(h["traceparent"], *tp);
    let mut h = HeaderMap::new();
    assert!(
        never
            .start(&mut h, Direction::Inbound, Instant::now())
            .is_none()
    );
    assert!(h.is_empty());
}

#[test]
fn new_traces_are_sampled_near_the_rate() {
    let t = tracer(10.0);
    let n = 20_000;
    let sampled = (0..n)
        .filter(|_| {
            t.start(&mut HeaderMap::new(), Direction::Outbound, Instant::now())
                .is_some()
        })
        .count();
    // 10 % of 20,000: 2,000, with a standard deviation of about 42.
    assert!((1_750..=2_250).contains(&sampled), "{sampled}");
}

#[test]
fn a_missing_request_id_is_a_random_uuid_and_a_present_one_is_kept() {
    let mut h = HeaderMap::new();
    ensure_request_id(&mut h);
    let id = h["x-request-id"].to_str().unwrap().to_string();
    let parts: Vec<&str> = id.split('-').collect();
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12],
        "{id}"
    );
    assert!(parts[2].starts_with('4'), "version 4: {id}");
    assert!(
        matches!(&parts[3][..1], "8" | "9" | "a" | "b"),
        "variant: {id}"
    );
    let mut again = HeaderMap::new();
    ensure_request_id(&mut again);
    assert_ne!(again["x-request-id"], id);
    let mut kept = HeaderMap::new();
    kept.insert("x-request-id", HeaderValue::from_static("mine"));
    ensure_request_id(&mut kept);
    assert_eq!(kept["x-request-id"], "mine");
}

#[test]
fn a_full_queue_drops_spans_and_counts_them() {
    let dropped =
        prometheus::IntCounterVec::new(prometheus::Opts::new("d", "d"), &["reason"]).unwrap();
    let (t, _rx) = Tracer::new(100.0, 2, 1_000_000, dropped.clone());
    let tp = format!("00-{TRACE}-{SPAN}-01");
    for _ in 0..5 {
        let traced = t.start(
            &mut headers(&[("traceparent", &tp)]),
            Direction::Inbound,
            Instant::now(),
        );
        let e = crate::access_log::Entry::request(
            None,
            &http::Request::get("/").body(()).unwrap(),
            "inbound",
            None,
            None,
            Instant::now(),
        );
        t.record(&traced.unwrap(), &e);
    }
    assert_eq!(dropped.with_label_values(&["queue_full"]).get(), 3);
}

#[test]
fn what_wire_writes_is_what_the_official_types_read() {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, any_value::Value};
    let long = "p".repeat(20_000);
    let (start, end) = (1_700_000_000_000_000_000, 1_700_000_000_000_500_000);
    let mut out = Vec::new();
    wire::head(
        &wire::Head {
            trace_id: &[1; 16],
            span_id: &[2; 8],
            state: Some("a=1"),
            parent: Some(&[3; 8]),
            name: &["pkg.Svc", "/", "Get"],
            kind: span::KIND_SERVER,
            start,
            end,
        },
        &mut out,
    );
    wire::str_attr(9, "url.path", &long, &mut out);
    wire::int_attr(9, "rpc.grpc.status_code", 14, &mut out);
    wire::str_attr(9, "weft.route", "api", &mut out);
    out.extend_from_slice(wire::fixed_attr!("weft.direction", "inbound"));
    wire::int_attr(9, "negative", -1, &mut out);
    wire::list_attr(9, "http.request.header.x-request-id", "r-1", &mut out);
    wire::tail(Some("14"), 0x301, &mut out);
    let s = decoded_one(|o| o.extend_from_slice(&out));
    assert_eq!(s.trace_id, [1; 16]);
    assert_eq!(s.span_id, [2; 8]);
    assert_eq!(s.parent_span_id, [3; 8]);
    assert_eq!(s.trace_state, "a=1");
    assert_eq!(s.name, "pkg.Svc/Get");
    assert_eq!(s.kind, span::KIND_SERVER);
    assert_eq!(s.start_time_unix_nano, start);
    assert_eq!(s.end_time_unix_nano, end);
    assert_eq!(s.flags, 0x301);
    let values: Vec<(String, Value)> = s
        .attributes
        .iter()
        .map(|a| (a.key.clone(), a.value.clone().unwrap().value.unwrap()))
        .collect();
    assert_eq!(
        values,
        [
            ("url.path".to_string(), Value::StringValue(long)),
            ("rpc.grpc.status_code".into(), Value::IntValue(14)),
            ("weft.route".into(), Value::StringValue("api".into())),
            (
                "weft.direction".into(),
                Value::StringValue("inbound".into())
            ),
            ("negative".into(), Value::IntValue(-1)),
            (
                "http.request.header.x-request-id".into(),
                Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(Value::StringValue("r-1".into())),
                    }],
                }),
            ),
        ]
    );
    let status = s.status.unwrap();
    assert_eq!((status.code, status.message.as_str()), (2, "14"));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn b3_beside_traceparent_is_rewritten_to_say_the_same() {
    let t = tracer(0.0);
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let mut h = headers(&[
        ("traceparent", &tp),
        ("x-b3-traceid", "1111111111111111"),
        ("x-b3-spanid", "2222222222222222"),
        ("x-b3-sampled", "1"),
        ("x-b3-flags", "1"),
    ]);
    let traced = t
        .start(&mut h, Direction::Outbound, Instant::now())
        .unwrap();
    let mine = hex(&traced.span_id);
    assert_eq!(h["x-b3-traceid"], TRACE, "the W3C trace, in B3 too");
    assert_eq!(h["x-b3-spanid"], *mine);
    assert_eq!(h["x-b3-parentspanid"], SPAN);
    assert_eq!(h["x-b3-sampled"], "1");
    assert!(!h.contains_key("x-b3-flags"));
}

#[test]
fn an_invalid_or_doubled_traceparent_falls_back_to_b3_or_a_new_trace() {
    let t = tracer(100.0);
    let mut h = headers(&[
        ("traceparent", "00-not-a-trace"),
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "1"),
    ]);
    let traced = t
        .start(&mut h, Direction::Outbound, Instant::now())
        .unwrap();
    assert_eq!(hex(&traced.trace_id), TRACE, "B3's trace");
    assert_eq!(traced.parent.map(|p| hex(&p)).as_deref(), Some(SPAN));
    assert!(h["traceparent"].to_str().unwrap().contains(TRACE));
    // Two traceparent fields: neither is trusted; a new trace (sampled at 100 %).
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let mut h = HeaderMap::new();
    h.append("traceparent", tp.parse().unwrap());
    h.append("traceparent", tp.parse().unwrap());
    h.insert("tracestate", "a=1".parse().unwrap());
    let traced = t
        .start(&mut h, Direction::Outbound, Instant::now())
        .unwrap();
    assert_eq!(traced.parent, None);
    assert_ne!(hex(&traced.trace_id), TRACE);
    assert_eq!(h.get_all("traceparent").iter().count(), 1);
    assert!(
        !h.contains_key("tracestate"),
        "a tracestate without its traceparent is dropped"
    );
    assert_eq!(traced.state, None);
}

#[test]
fn a_bare_b3_deny_is_kept() {
    let mut h = headers(&[("x-b3-sampled", "0")]);
    assert!(
        tracer(100.0)
            .start(&mut h, Direction::Inbound, Instant::now())
            .is_none()
    );
    assert_eq!(h.len(), 1);
}

#[test]
fn extension_methods_and_clients_that_left_are_named_as_the_conventions_say() {
    let t = tracer(100.0);
    let mut h = HeaderMap::new();
    let traced = t
        .start(&mut h, Direction::Outbound, Instant::now())
        .unwrap();
    let req = http::Request::builder()
        .method("PURGE-EVERYTHING")
        .uri("/x")
        .body(())
        .unwrap();
    let mut e =
        crate::access_log::Entry::request(None, &req, "outbound", None, None, Instant::now());
    e.status = 499;
    e.flags.set(crate::access_log::Flags::DC);
    let s = decoded_one(|o| span::encode(&traced, &e, o));
    assert_eq!(s.name, "HTTP");
    let attr = |k: &str| {
        s.attributes
            .iter()
            .find(|a| a.key == k)
            .map(|a| format!("{:?}", a.value.as_ref().unwrap().value.as_ref().unwrap()))
    };
    assert_eq!(
        attr("http.request.method").unwrap(),
        r#"StringValue("_OTHER")"#
    );
    assert_eq!(
        attr("http.request.method_original").unwrap(),
        r#"StringValue("PURGE-EVERYTHING")"#
    );
    assert_eq!(
        attr("http.response.status_code"),
        None,
        "no response was sent"
    );
    assert_eq!(attr("error.type").unwrap(), r#"StringValue("DC")"#);
}

#[test]
fn callers_cannot_have_more_spans_made_than_the_rate() {
    let dropped =
        prometheus::IntCounterVec::new(prometheus::Opts::new("d", "d"), &["reason"]).unwrap();
    let (t, _rx) = Tracer::new(0.0, 64, 5, dropped.clone());
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let mut traced = 0;
    for _ in 0..20 {
        let mut h = headers(&[("traceparent", &tp)]);
        match t.start(&mut h, Direction::Inbound, Instant::now()) {
            Some(_) => traced += 1,
            // Not traced here: the caller's context goes on untouched.
            None => assert_eq!(h["traceparent"], *tp),
        }
    }
    assert_eq!(traced, 5, "the burst: one second's worth");
    assert_eq!(dropped.with_label_values(&["rate_limited"]).get(), 15);
}

#[test]
fn addresses_are_written_as_the_standard_library_writes_them() {
    let mut ips: Vec<std::net::IpAddr> = [
        "0.0.0.0",
        "10.0.0.1",
        "255.255.255.255",
        "1.20.100.0",
        "::1",
        "fd00::7",
        "::ffff:255.255.255.255",
        "1111:2222:3333:4444:5555:6666:7777:8888",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    ips.extend((0..=255u8).map(|o| std::net::IpAddr::from([o, 255 - o, o / 3, 9])));
    for ip in ips {
        assert_eq!(
            span::IpText::new(ip).as_bytes(),
            ip.to_string().as_bytes(),
            "{ip}"
        );
    }
}

#[test]
fn the_callers_other_trace_flags_go_on() {
    let t = tracer(0.0);
    // Level 2's "random" (0x02) with "sampled".
    let tp = format!("00-{TRACE}-{SPAN}-03");
    let mut h = headers(&[("traceparent", &tp)]);
    let traced = t
        .start(&mut h, Direction::Outbound, Instant::now())
        .unwrap();
    assert_eq!(
        h["traceparent"],
        format!("00-{TRACE}-{}-03", hex(&traced.span_id))
    );
}

#[test]
fn authorities_are_split_as_http_reads_them() {
    for auth in [
        "web.demo:8080",
        "web.demo",
        "10.0.0.1:80",
        "[fd00::1]:443",
        "[fd00::1]",
        "user@web.demo:81",
        "web.demo:",
    ] {
        let a: http::uri::Authority = auth.parse().unwrap();
        assert_eq!(
            span::host_port(auth),
            (a.host().trim_matches(['[', ']']), a.port_u16()),
            "{auth}"
        );
    }
}

#[test]
fn attributes_encoded_at_build_time_are_what_str_attr_writes() {
    let mut out = Vec::new();
    wire::str_attr(9, "http.request.method", "OPTIONS", &mut out);
    assert_eq!(
        wire::fixed_attr!("http.request.method", "OPTIONS"),
        &out[..]
    );
    // Lengths of two bytes.
    let fixed: &[u8] = {
        const K: &str = "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk";
        const B: [u8; wire::fixed_len(K, "v")] = wire::fixed(9, K, "v");
        &B
    };
    out.clear();
    let long = "k".repeat(130);
    wire::str_attr(9, &long, "v", &mut out);
    assert_eq!(fixed, &out[..]);
}
