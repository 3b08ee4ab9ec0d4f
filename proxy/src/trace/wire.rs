//! Spans in OTLP's protobuf encoding, written by hand: one pass over each span into one buffer,
//! no message structs to build, clone and drop. The export's bytes are made once per batch and
//! sent (and resent) as they are. Field numbers are those of the official definitions
//! (`opentelemetry/proto/trace/v1/trace.proto`, `common/v1`, `resource/v1`, `collector/trace/v1`);
//! the tests decode what is written here with the `opentelemetry-proto` types.

use super::span::{Attr, Record};

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(field: u32, wire: u8, out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | u32::from(wire)), out);
}

fn bytes(field: u32, b: &[u8], out: &mut Vec<u8>) {
    tag(field, LEN, out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// A nested message: written into `out` by `body`, then its length put before it (the length
/// is written after the fact, and the body moved up by the few bytes the length took).
fn message(field: u32, out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    tag(field, LEN, out);
    let at = out.len();
    body(out);
    let len = out.len() - at;
    let mut prefix = [0u8; 10];
    let mut n = 0;
    let mut v = len as u64;
    while v >= 0x80 {
        prefix[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    prefix[n] = v as u8;
    n += 1;
    out.splice(at..at, prefix[..n].iter().copied());
}

/// The bytes `varint` writes for `v`.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// `KeyValue { key, value: AnyValue { string_value | int_value } }`, its lengths counted
/// before it is written (the most frequent message: no moving of bytes).
fn attribute(field: u32, key: &str, value: &Attr, out: &mut Vec<u8>) {
    let text = match value {
        Attr::Int(_) | Attr::List(_) => None,
        Attr::Str(s) => Some(&**s),
        Attr::Static(s) => Some(*s),
        Attr::Shared(s) => Some(&**s),
    };
    let any = match (text, value) {
        (Some(t), _) => 1 + varint_len(t.len() as u64) + t.len(),
        (None, Attr::Int(i)) => 1 + varint_len(*i as u64),
        (None, Attr::List(one)) => {
            let array = list_len(one);
            1 + varint_len(array as u64) + array
        }
        (None, _) => 0,
    };
    let kv = 1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(any as u64) + any;
    tag(field, LEN, out);
    varint(kv as u64, out);
    bytes(1, key.as_bytes(), out);
    tag(2, LEN, out);
    varint(any as u64, out);
    match (text, value) {
        (Some(t), _) => bytes(1, t.as_bytes(), out),
        (None, Attr::Int(i)) => {
            tag(3, VARINT, out);
            varint(*i as u64, out);
        }
        (None, Attr::List(one)) => {
            // array_value (5): ArrayValue { values (1): [AnyValue { string_value (1) }] }
            tag(5, LEN, out);
            varint(list_len(one) as u64, out);
            let inner = 1 + varint_len(one.len() as u64) + one.len();
            tag(1, LEN, out);
            varint(inner as u64, out);
            bytes(1, one.as_bytes(), out);
        }
        (None, _) => {}
    }
}

/// The length of an `ArrayValue` holding the one string `s`.
fn list_len(s: &str) -> usize {
    let inner = 1 + varint_len(s.len() as u64) + s.len();
    1 + varint_len(inner as u64) + inner
}

fn span(r: &Record, out: &mut Vec<u8>) {
    bytes(1, &r.trace_id, out);
    bytes(2, &r.span_id, out);
    if let Some(s) = &r.state {
        bytes(3, s.as_bytes(), out);
    }
    if let Some(p) = &r.parent {
        bytes(4, p, out);
    }
    bytes(5, r.name.as_bytes(), out);
    tag(6, VARINT, out);
    varint(r.kind as u64, out);
    tag(7, FIXED64, out);
    out.extend_from_slice(&r.start.to_le_bytes());
    tag(8, FIXED64, out);
    out.extend_from_slice(&r.end.to_le_bytes());
    for (k, v) in &r.attrs {
        attribute(9, k, v, out);
    }
    if let Some(why) = &r.error {
        message(15, out, |out| {
            bytes(2, why.as_bytes(), out);
            tag(3, VARINT, out);
            varint(2, out); // STATUS_CODE_ERROR
        });
    }
    tag(16, FIXED32, out);
    out.extend_from_slice(&r.flags.to_le_bytes());
}

/// An `ExportTraceServiceRequest`: one resource (its attributes), one instrumentation scope
/// (`name`, `version`, the semantic conventions' `schema_url`), the spans.
pub fn request(
    resource: &[(&'static str, String)],
    scope: (&str, &str),
    schema_url: &str,
    spans: &[Record],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + spans.len() * 900);
    message(1, &mut out, |out| {
        message(1, out, |out| {
            for (k, v) in resource {
                attribute(1, k, &Attr::Str(v.as_str().into()), out);
            }
        });
        message(2, out, |out| {
            message(1, out, |out| {
                bytes(1, scope.0.as_bytes(), out);
                bytes(2, scope.1.as_bytes(), out);
            });
            // Each span into one reused buffer, then after its length: one copy, no moving.
            let mut one = Vec::with_capacity(1024);
            for r in spans {
                one.clear();
                span(r, &mut one);
                bytes(2, &one, out);
            }
            bytes(3, schema_url.as_bytes(), out);
        });
    });
    out
}
