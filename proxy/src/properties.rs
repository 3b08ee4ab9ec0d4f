//! Invariants that hold for any input, one function each; a function panics when its invariant
//! fails. The unit tests check them on generated inputs (`proptest`, on every CI run) and the
//! targets in `fuzz/` on fuzzed ones (cargo-fuzz, `tests/fuzz`). Built for tests and with the
//! `properties` feature only.

use std::{path::Path, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};

mod xds_updates;

pub use xds_updates::{XdsBody, XdsResource, XdsStep, xds_updates};

use crate::{
    balance::Balancer,
    grpc,
    http::{headers, request},
    metrics::Metrics,
    resolve::Resolved,
    route::WeightedSplit,
    table::{Protocol, Table},
    tls,
    transport::detect,
};

/// Protocol detection on every prefix of `data` (each a read boundary the network could
/// make): a verdict agrees with the bytes it was made on, and none is put off past the
/// detection limit. The ClientHello reader takes any bytes.
pub fn detection(data: &[u8]) {
    use detect::Detected;
    let end = data.len().min(detect::MAX_DETECT_BYTES + 64);
    for n in 0..=end {
        let prefix = &data[..n];
        match detect::classify(prefix) {
            Some(Detected::Http2) => assert!(prefix.starts_with(detect::H2_PREFACE)),
            Some(Detected::Tls) => assert_eq!(&prefix[..2], &[0x16, 3]),
            Some(Detected::Http1) => {
                let mut none = [];
                let mut req = httparse::Request::new(&mut none);
                let _ = req.parse(prefix);
                assert!(req.method.is_some(), "HTTP/1 without a request line");
            }
            Some(Detected::Opaque(_)) => {}
            None => assert!(n < detect::MAX_DETECT_BYTES, "no verdict after {n} bytes"),
        }
    }
    // A sidecar is recognised only by the ALPN protocol it offers, so the bytes carry it.
    if tls::client_hello(data) == tls::Hello::Mesh {
        let offered = data
            .windows(tls::ALPN_MESH.len())
            .any(|w| w == tls::ALPN_MESH);
        assert!(offered, "a sidecar's ClientHello without `weft/1`");
    }
}

/// A routing-table file: it loads or is refused with an error that names the file; what loads
/// loads again the same (compiling is deterministic), also over itself as the table in force
/// (what carries over from the previous table never changes the routing).
pub fn table_file(text: &str) {
    let load = |previous: &Table| {
        crate::table::load_text(
            Path::new("mesh.yaml"),
            text,
            2,
            &Metrics::new(),
            &Resolved::none(),
            previous,
        )
    };
    let good = Table::empty();
    match load(&good) {
        Ok(t) => {
            let names = |t: &Table| -> Vec<String> {
                t.services().iter().map(|s| s.name.to_string()).collect()
            };
            let again = load(&good).expect("the same text loads twice");
            assert_eq!(t.version, again.version);
            assert_eq!(names(&t), names(&again));
            let over = load(&t).expect("the same text loads over itself");
            assert_eq!(names(&t), names(&over));
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("mesh.yaml"),
                "the error names the file: {msg}"
            );
        }
    }
}

/// Balancers over endpoints of any weights: built in bounded size (a ring of at most 65,536
/// points and a schedule of at most 4,096 slots, or four an endpoint, plus one an endpoint),
/// and every pick is an endpoint of the split. (Their time is bounded with their size; the
/// fuzzer's per-input timeout catches a slow one.)
pub fn balancer(weights: &[u32]) {
    use weft_core::policy::LbPolicy;
    let state = std::sync::Arc::new(crate::balance::EndpointState::new(
        "127.0.0.1:1".parse().unwrap(),
    ));
    let split = WeightedSplit::new(
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| (*w, (i, state.clone()))),
    );
    let n = split.len();
    for policy in [LbPolicy::RoundRobin, LbPolicy::RingHash] {
        let b = Balancer::new(policy, &split, |e| e.0.to_string());
        match &b {
            Balancer::RoundRobin { schedule, .. } => {
                let cap = crate::balance::SCHEDULE_MAX.max(4 * n as u64) as usize + n;
                assert!(schedule.len() <= cap, "a schedule of {}", schedule.len());
                let mut seen = vec![false; n];
                schedule.iter().for_each(|i| seen[*i as usize] = true);
                assert!(
                    seen.iter().all(|s| *s),
                    "an endpoint with weight has no slot"
                );
            }
            Balancer::RingHash { ring } => {
                let cap = crate::balance::RING_MAX_POINTS as usize + n;
                assert!(ring.len() <= cap, "a ring of {} points", ring.len());
                assert!(
                    ring.windows(2).all(|w| w[0].0 <= w[1].0),
                    "the ring is unsorted"
                );
            }
            _ => unreachable!(),
        }
        for h in [0, 1, u64::MAX / 3, u64::MAX] {
            if let Some(i) = b.pick(&split, |e| &*e.1, Some(h)) {
                assert!(i < n);
            }
        }
    }
}

/// A request as it could arrive: the proxy's hop-by-hop and reserved-header handling, then its
/// preparation for an upstream of each protocol.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "properties", derive(arbitrary::Arbitrary))]
pub struct RawRequest {
    pub http2: bool,
    pub method: String,
    pub uri: String,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub upgrade: bool,
}

/// Fields HTTP/2 forbids in a message (RFC 9113 §8.2.2); `te` only as `trailers`.
const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// After the proxy's handling no hop-by-hop field (but an upgrade's own) and no header weft
/// reserves is left, in any spelling; a request for HTTP/2 carries nothing HTTP/2 forbids,
/// one for HTTP/1.1 the `Host` it was routed by; and doing it all again changes nothing.
pub fn request_preparation(raw: &RawRequest) {
    let Some(mut req) = build(raw) else { return };
    // As `HttpProxy::route` does.
    let upgrade = raw.upgrade && !raw.http2 && headers::wants_upgrade(req.headers());
    if !raw.http2 {
        headers::strip_hop_by_hop(req.headers_mut(), upgrade);
    }
    headers::strip_reserved(req.headers_mut());
    if request::has_duplicate_host(&req) {
        return;
    }
    let had_authority =
        req.uri().authority().is_some() || req.headers().contains_key(http::header::HOST);
    for protocol in [Protocol::Http, Protocol::Http1, Protocol::Http2] {
        let mut r = clone(&req);
        if request::prepare(&mut r, protocol, upgrade).is_err() {
            continue;
        }
        let h = r.headers();
        // Stated here on its own, not by the proxy's `is_reserved`: `x-weft-` in any case,
        // `_` read as `-`.
        let reserved = |n: &HeaderName| n.as_str().replace('_', "-").starts_with("x-weft-");
        assert!(!h.keys().any(reserved), "a reserved header: {h:?}");
        for name in ["keep-alive", "proxy-connection"] {
            assert!(!h.contains_key(name), "{name} survived: {h:?}");
        }
        if !upgrade {
            assert!(!h.contains_key("upgrade"), "upgrade survived: {h:?}");
        }
        if r.version() == Version::HTTP_2 {
            for name in CONNECTION_SPECIFIC {
                assert!(!h.contains_key(name), "{name} in an HTTP/2 request: {h:?}");
            }
            if let Some(te) = h.get("te") {
                assert_eq!(te, "trailers");
            }
            let named = r.uri().authority().is_some() || h.contains_key(http::header::HOST);
            assert!(named || !had_authority, "the authority was lost");
        } else if let Some(a) = r.uri().authority() {
            panic!("an HTTP/1.1 request line with authority {a}");
        }
        // Again: nothing changes.
        let mut again = clone(&r);
        if !raw.http2 && again.version() != Version::HTTP_2 {
            headers::strip_hop_by_hop(again.headers_mut(), upgrade);
        }
        headers::strip_reserved(again.headers_mut());
        request::prepare(&mut again, protocol, upgrade).expect("a prepared request prepares");
        assert_eq!(again.headers(), r.headers(), "not idempotent");
        assert_eq!(again.uri(), r.uri());
        assert_eq!(again.version(), r.version());
    }
}

/// The request `raw` describes, if hyper (HTTP/1.1) or h2 would have handed it on at all.
fn build(raw: &RawRequest) -> Option<Request<()>> {
    let method = Method::from_bytes(raw.method.as_bytes()).ok()?;
    let uri: Uri = raw.uri.parse().ok()?;
    // What h2 hands on: a CONNECT names an authority; any other request a path, with or
    // without `:authority` (then a `Host` may say it).
    let h2_form = if method == Method::CONNECT {
        uri.authority().is_some()
    } else {
        uri.path().starts_with('/')
    };
    if raw.http2 && !h2_form {
        return None;
    }
    let mut headers = HeaderMap::new();
    for (n, v) in &raw.headers {
        let name = HeaderName::from_bytes(n).ok()?;
        let value = HeaderValue::from_bytes(v).ok()?;
        if raw.http2 {
            // h2 refuses a message with any of these (or with `te` other than `trailers`).
            let forbidden = CONNECTION_SPECIFIC.contains(&name.as_str())
                || (name == "te" && value != "trailers");
            if forbidden {
                return None;
            }
        }
        headers.append(name, value);
    }
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    *req.version_mut() = if raw.http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    Some(req)
}

fn clone(r: &Request<()>) -> Request<()> {
    let mut c = Request::new(());
    *c.method_mut() = r.method().clone();
    *c.uri_mut() = r.uri().clone();
    *c.headers_mut() = r.headers().clone();
    *c.version_mut() = r.version();
    c
}

/// `grpc-timeout`: any value parses to a duration or to none; what the proxy encodes parses
/// back to at most the duration it came from (never longer), and fits the header's grammar.
pub fn grpc_timeout(value: &[u8], nanos: u64) {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(value) {
        h.insert(grpc::TIMEOUT, v);
        let _ = grpc::timeout(&h);
    }
    let d = Duration::from_nanos(nanos);
    let encoded = grpc::encode_timeout(d);
    assert!(encoded.len() >= 2 && encoded.len() <= 9, "{encoded:?}");
    h.insert(grpc::TIMEOUT, encoded.clone());
    let back = grpc::timeout(&h).expect("an encoded timeout parses");
    assert!(
        back <= d,
        "{d:?} encoded as {encoded:?} reads back as {back:?}"
    );
}

/// The DNS proxy takes any query: no answer or a well-formed response to it, of bounded size.
/// Its table has one service with a VIP, `echo.test`.
pub fn dns_answer(query: &[u8]) {
    use hickory_proto::op::{Message, MessageType};
    let mesh = "services:\n  - {name: echo.test, port: 80, vip: 10.96.0.10, endpoints: [{address: '10.0.0.1:80'}]}\n";
    let t = crate::table::load_text(
        Path::new("mesh.yaml"),
        mesh,
        1,
        &Metrics::new(),
        &Resolved::none(),
        &Table::empty(),
    )
    .expect("the DNS property's table");
    let table = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(t));
    let dns = crate::dns::DnsProxy {
        table,
        upstream: None,
        relays: tokio::sync::Semaphore::new(1),
    };
    if let Some(a) = dns.answer(query) {
        let m = Message::from_vec(&a).expect("the answer decodes");
        assert_eq!(m.message_type(), MessageType::Response);
        let q = Message::from_vec(query).expect("answered queries decode");
        assert_eq!(m.id(), q.id());
        assert!(a.len() <= 512, "an answer of {} bytes", a.len());
    }
}

/// Endpoint addresses, durations and the labels file: any text is parsed or refused with a
/// message; a parsed duration is within the clamp, and an address prints as it parses.
pub fn small_parsers(text: &str) {
    use weft_core::address::EndpointAddress;
    if let Ok(a) = text.parse::<EndpointAddress>() {
        let again: EndpointAddress = a.to_string().parse().expect("a printed address parses");
        assert_eq!(again, a);
    }
    match weft_core::duration::parse(text) {
        Ok(d) => assert!(d <= weft_core::duration::MAX),
        Err(e) => assert!(!e.is_empty()),
    }
    if let Ok(labels) = crate::config::parse_labels_file(text) {
        assert!(labels.len() <= text.lines().count());
    }
}

#[cfg(test)]
mod tests;
