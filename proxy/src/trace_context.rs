//! Trace context on the wire: W3C `traceparent` (and `tracestate`, passed on untouched), B3's
//! multiple headers as input, and the `traceparent` the sidecar sends on with its own span id.
//! Header parsing only, with no state: the tracer (`trace`) and the access log's trace id both
//! read headers through it.

use http::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub static B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub static B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
/// The request id header: generated when a request arrives without one (`--generate-request-id`).
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The span a request arrived in: its trace, the caller's span, and the caller's sampling
/// decision (`None`: B3 without one, deferred to this sidecar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: Option<bool>,
    /// It came in B3 headers (which are then kept in step with `traceparent`).
    pub b3: bool,
    /// The caller's W3C trace flags (0 for B3): those other than "sampled" (such as Level 2's
    /// "random") go on as they came.
    pub flags: u8,
}

/// The caller's span: from one valid `traceparent` (version 00, or a later version's first
/// four fields; two `traceparent` fields are none), else from B3 (`x-b3-traceid` of 16 or 32
/// hex digits, `x-b3-spanid` of 16, `x-b3-sampled` `1`/`0`/`true`/`false`, `x-b3-flags: 1`
/// meaning sampled). Invalid input is no parent: the request starts a trace of its own.
pub fn parent(h: &HeaderMap) -> Option<Parent> {
    parent_seen(h, seen(h))
}

/// [`parent`], knowing what else the request carries.
pub fn parent_seen(h: &HeaderMap, seen: Seen) -> Option<Parent> {
    let mut all = h.get_all(&TRACEPARENT).iter();
    if let (Some(tp), None) = (all.next(), all.next())
        && let Some(p) = traceparent(tp.as_bytes())
    {
        return Some(p);
    }
    if seen.b3 { b3(h) } else { None }
}

/// Which of the trace context's other headers a request carries: any of B3's, `tracestate`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub b3: bool,
    pub tracestate: bool,
}

/// What [`Seen`] says, in one pass over the request's header names (cheaper than looking up
/// each of B3's five names, which hashes each).
pub fn seen(h: &HeaderMap) -> Seen {
    let mut s = Seen::default();
    for k in h.keys() {
        let k = k.as_str();
        if k.starts_with("x-b3-") {
            s.b3 = true;
        } else if k == "tracestate" {
            s.tracestate = true;
        }
    }
    s
}

/// Whether the caller said "do not sample" in B3 without naming a span (`x-b3-sampled: 0`
/// alone, as B3 allows).
pub fn b3_denied(h: &HeaderMap) -> bool {
    h.get(&B3_SAMPLED)
        .is_some_and(|v| matches!(v.as_bytes(), b"0" | b"false"))
}

fn b3(h: &HeaderMap) -> Option<Parent> {
    let trace_id = b3_trace_id(h.get(&B3_TRACE_ID)?.as_bytes())?;
    let span = h.get(&B3_SPAN_ID)?.as_bytes();
    let mut span_id = [0u8; 8];
    if span.len() != 16 {
        return None;
    }
    decode(span, &mut span_id)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    let debug = h.get(&B3_FLAGS).is_some_and(|v| v.as_bytes() == b"1");
    let sampled = match h.get(&B3_SAMPLED).map(|v| v.as_bytes()) {
        _ if debug => Some(true),
        Some(b"1" | b"true") => Some(true),
        Some(b"0" | b"false") => Some(false),
        _ => None,
    };
    Some(Parent {
        trace_id,
        span_id,
        sampled,
        b3: true,
        flags: 0,
    })
}

/// A B3 trace id: 32 hex digits, or 16 (the low half of the 128-bit id).
pub fn b3_trace_id(trace: &[u8]) -> Option<[u8; 16]> {
    let mut trace_id = [0u8; 16];
    match trace.len() {
        32 => decode(trace, &mut trace_id)?,
        16 => decode(trace, &mut trace_id[8..])?,
        _ => return None,
    }
    Some(trace_id)
}

/// `version "-" trace-id "-" parent-id "-" flags`, lowercase hex; version `ff` is invalid,
/// version 00 has exactly these fields, a later one may add more after another `-`.
pub fn traceparent(tp: &[u8]) -> Option<Parent> {
    let shaped = tp.len() >= 55
        && tp[2] == b'-'
        && tp[35] == b'-'
        && tp[52] == b'-'
        && tp[..2] != *b"ff"
        && (tp.len() == 55 || (tp[..2] != *b"00" && tp[55] == b'-'));
    if !shaped {
        return None;
    }
    let mut version = [0u8; 1];
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    let mut flags = [0u8; 1];
    decode_lower(&tp[..2], &mut version)?;
    decode_lower(&tp[3..35], &mut trace_id)?;
    decode_lower(&tp[36..52], &mut span_id)?;
    decode_lower(&tp[53..55], &mut flags)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: Some(flags[0] & 1 == 1),
        b3: false,
        flags: flags[0],
    })
}

/// The `traceparent` naming `span_id` of `trace_id`, sampled, with the caller's other `flags`.
pub fn traceparent_value(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> HeaderValue {
    let mut v = [0u8; 55];
    v[..3].copy_from_slice(b"00-");
    encode(trace_id, &mut v[3..35]);
    v[35] = b'-';
    encode(span_id, &mut v[36..52]);
    v[52] = b'-';
    encode(&[flags | 1], &mut v[53..55]);
    unique(&v)
}

/// `id` as lowercase hex digits.
pub fn hex_value(id: &[u8]) -> HeaderValue {
    let mut v = [0u8; 32];
    let out = &mut v[..id.len() * 2];
    encode(id, out);
    unique(out)
}

/// Sets the headers that carry the context on: `traceparent` with this sidecar's span; B3's,
/// when the caller sent any, rewritten to say the same (whichever the application reads, its
/// parent is this sidecar's span); `tracestate` passes untouched when it came with the W3C
/// parent, and is dropped otherwise (W3C: without its `traceparent` it means nothing).
/// `seen` is what [`seen`] said of `h`.
pub fn propagate(
    h: &mut HeaderMap,
    seen: Seen,
    parent: Option<&Parent>,
    trace_id: &[u8; 16],
    span: &[u8; 8],
) {
    let flags = parent.map_or(0, |p| p.flags);
    h.insert(
        TRACEPARENT.clone(),
        traceparent_value(trace_id, span, flags),
    );
    if seen.tracestate && parent.is_none_or(|p| p.b3) {
        h.remove(&TRACESTATE);
    }
    if seen.b3 {
        // The caller's own spelling (16 or 32 digits) is kept when it names this trace.
        let same = h
            .get(&B3_TRACE_ID)
            .is_some_and(|v| b3_trace_id(v.as_bytes()) == Some(*trace_id));
        if !same {
            h.insert(B3_TRACE_ID.clone(), hex_value(trace_id));
        }
        h.insert(B3_SPAN_ID.clone(), hex_value(span));
        match parent {
            Some(p) => h.insert(B3_PARENT_SPAN_ID.clone(), hex_value(&p.span_id)),
            None => h.remove(&B3_PARENT_SPAN_ID),
        };
        h.insert(B3_SAMPLED.clone(), HeaderValue::from_static("1"));
        h.remove(&B3_FLAGS);
    }
}

/// A header value sent once (an id): marked so that HPACK sends it as a literal never indexed,
/// instead of adding it to the connection's dynamic table, where it would only push out the
/// values that repeat (authority, user agent, ...).
pub fn unique(v: &[u8]) -> HeaderValue {
    let mut v = HeaderValue::from_bytes(v).expect("hex digits and dashes");
    v.set_sensitive(true);
    v
}

/// What each byte is as a hex digit: its value; `UPPER` added for `A`-`F`; `NOT_HEX` for
/// anything else. Built when the proxy is compiled: decoding is one lookup a digit.
const HEX: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = (10 + i as u8) | UPPER;
        i += 1;
    }
    t
};
const UPPER: u8 = 0x10;
const NOT_HEX: u8 = 0xff;

/// Hex digits into bytes, rejecting any byte `reject` shares a bit with (`UPPER`: uppercase
/// digits, as W3C asks; 0: either case). `None` on anything that is not a digit.
fn decode_with(hex: &[u8], out: &mut [u8], reject: u8) -> Option<()> {
    if hex.len() != out.len() * 2 {
        return None;
    }
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let (hi, lo) = (HEX[usize::from(pair[0])], HEX[usize::from(pair[1])]);
        // NOT_HEX has every bit set, so any bad digit sets `bad` whatever `reject` is.
        bad |= (hi | lo) & (reject | 0xe0);
        *o = (hi & 15) << 4 | (lo & 15);
    }
    (bad == 0).then_some(())
}

/// Hex digits (either case) into bytes; `None` on anything else.
fn decode(hex: &[u8], out: &mut [u8]) -> Option<()> {
    decode_with(hex, out, 0)
}

/// Lowercase hex digits into bytes; `None` on anything else (uppercase included).
fn decode_lower(hex: &[u8], out: &mut [u8]) -> Option<()> {
    decode_with(hex, out, UPPER)
}

/// Every byte as its two lowercase hex digits, built when the proxy is compiled.
const PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [DIGITS[i >> 4], DIGITS[i & 15]];
        i += 1;
    }
    t
};

/// Bytes as lowercase hex digits into `out` (twice their length).
pub fn encode(bytes: &[u8], out: &mut [u8]) {
    for (b, o) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        o.copy_from_slice(&PAIRS[usize::from(*b)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_decodes_as_a_hex_digit_exactly_when_it_is_one() {
        for b in 0..=255u8 {
            let want = (b as char).to_digit(16).map(|d| d as u8);
            let mut out = [0u8; 1];
            let got = decode(&[b, b'0'], &mut out).map(|()| out[0] >> 4);
            assert_eq!(got, want, "{b:#04x}");
            let lower = decode_lower(&[b'0', b], &mut out).map(|()| out[0]);
            let want_lower = want.filter(|_| !b.is_ascii_uppercase());
            assert_eq!(lower, want_lower, "{b:#04x}");
        }
    }

    #[test]
    fn encoding_writes_lowercase_pairs_that_decode_back() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut hex = vec![0u8; 512];
        encode(&bytes, &mut hex);
        let want: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, want.as_bytes());
        let mut back = vec![0u8; 256];
        assert_eq!(decode_lower(&hex, &mut back), Some(()));
        assert_eq!(back, bytes);
    }
}
