//! Spans in OTLP's protobuf encoding, written by hand: each span straight from the request's
//! record into its batch's buffer (its attributes' lengths counted before they are written, so
//! nothing is moved), no message structs to build, clone and drop. The export's bytes are made
//! once per batch from the batch's bytes and sent (and resent) as they are. Field numbers are those of the official
//! definitions (`opentelemetry/proto/trace/v1/trace.proto`, `common/v1`, `resource/v1`,
//! `collector/trace/v1`); the tests decode what is written here with the `opentelemetry-proto`
//! types.

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// Spans encoded one after another, each as a `spans` field (2) of a `ScopeSpans`: what one
/// export sends.
#[derive(Debug, Default)]
pub struct Batch {
    /// The spans, and after them what a push that never finished (it panicked) left, which
    /// the next push cuts off.
    bytes: Vec<u8>,
    /// The bytes of whole spans.
    whole: usize,
    spans: usize,
}

impl Batch {
    /// Makes room for `bytes` more.
    pub fn reserve(&mut self, bytes: usize) {
        self.bytes.reserve(bytes);
    }

    /// Spans in the batch.
    pub fn spans(&self) -> usize {
        self.spans
    }

    /// The spans' bytes.
    pub fn into_bytes(mut self) -> Vec<u8> {
        self.bytes.truncate(self.whole);
        self.bytes
    }

    /// Gives back room the batch does not use, past a quarter of what it holds: a batch
    /// waiting for export holds little more than its spans.
    pub fn trim(&mut self) {
        self.bytes.truncate(self.whole);
        if self.bytes.capacity() > self.whole + self.whole / 4 {
            self.bytes.shrink_to_fit();
        }
    }

    /// Adds `other`'s spans after this batch's.
    pub fn append(&mut self, other: Batch) {
        self.bytes.truncate(self.whole);
        self.bytes.extend_from_slice(&other.bytes[..other.whole]);
        self.whole = self.bytes.len();
        self.spans += other.spans;
    }

    /// Appends one span, whose fields `write` writes.
    pub fn push(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let out = &mut self.bytes;
        out.truncate(self.whole);
        out.push(2 << 3 | LEN);
        // Room for the length as two bytes (128 bytes to 16 KiB: every span the proxy makes),
        // filled in once the span is written; any other length is moved into place.
        let at = out.len();
        out.extend_from_slice(&[0, 0]);
        write(out);
        let len = out.len() - at - 2;
        if (0x80..0x4000).contains(&len) {
            out[at] = (len as u8) | 0x80;
            out[at + 1] = (len >> 7) as u8;
        } else {
            let mut head = Vec::with_capacity(3);
            varint(len as u64, &mut head);
            out.splice(at..at + 2, head);
        }
        self.whole = out.len();
        self.spans += 1;
    }
}

#[inline(always)]
fn varint(mut v: u64, out: &mut Vec<u8>) {
    if v < 0x80 {
        out.push(v as u8);
        return;
    }
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline(always)]
fn tag(field: u32, wire: u8, out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | u32::from(wire)), out);
}

#[inline(always)]
fn bytes(field: u32, b: &[u8], out: &mut Vec<u8>) {
    tag(field, LEN, out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// The bytes `varint` writes for `v`.
#[inline]
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The bytes of a length-delimited field (tag of one byte) holding `len` bytes.
#[inline]
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// `KeyValue { key, value: AnyValue { .. } }` (field `field`), the `AnyValue` of `any` bytes
/// written by `value`.
#[inline(always)]
fn key_value(field: u32, key: &str, any: usize, out: &mut Vec<u8>) {
    let kv = field_len(key.len()) + field_len(any);
    tag(field, LEN, out);
    varint(kv as u64, out);
    bytes(1, key.as_bytes(), out);
    out.push(2 << 3 | LEN);
    varint(any as u64, out);
}

/// A string attribute (a span's are field 9, a resource's field 1).
pub fn str_attr(field: u32, key: &str, v: &str, out: &mut Vec<u8>) {
    bytes_attr(field, key, v.as_bytes(), out);
}

/// A string attribute from bytes the caller knows are UTF-8.
pub fn bytes_attr(field: u32, key: &str, v: &[u8], out: &mut Vec<u8>) {
    key_value(field, key, field_len(v.len()), out);
    bytes(1, v, out);
}

/// An integer attribute.
pub fn int_attr(field: u32, key: &str, v: i64, out: &mut Vec<u8>) {
    key_value(field, key, 1 + varint_len(v as u64), out);
    tag(3, VARINT, out);
    varint(v as u64, out);
}

/// An attribute whose value is a list of one string (the conventions' `http.request.header.*`):
/// `array_value` (5): `ArrayValue { values (1): [AnyValue { string_value (1) }] }`.
pub fn list_attr(field: u32, key: &str, v: &str, out: &mut Vec<u8>) {
    let inner = field_len(v.len());
    let array = field_len(inner);
    key_value(field, key, field_len(array), out);
    tag(5, LEN, out);
    varint(array as u64, out);
    tag(1, LEN, out);
    varint(inner as u64, out);
    bytes(1, v.as_bytes(), out);
}

/// A string attribute known when the proxy is built (a fixed key and value: the method, the
/// protocol version, ...), encoded at compile time: written with one copy.
macro_rules! fixed_attr {
    ($key:literal, $value:literal) => {{
        const BYTES: [u8; $crate::trace::wire::fixed_len($key, $value)] =
            $crate::trace::wire::fixed(9, $key, $value);
        &BYTES as &'static [u8]
    }};
}
pub(crate) use fixed_attr;

const fn varint_len_const(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

const fn field_len_const(len: usize) -> usize {
    1 + varint_len_const(len) + len
}

/// The bytes of a span's string attribute (field 9): what [`str_attr`] writes.
pub const fn fixed_len(key: &str, value: &str) -> usize {
    field_len_const(field_len_const(key.len()) + field_len_const(field_len_const(value.len())))
}

const fn put_varint(out: &mut [u8], at: &mut usize, mut v: usize) {
    while v >= 0x80 {
        out[*at] = (v as u8) | 0x80;
        *at += 1;
        v >>= 7;
    }
    out[*at] = v as u8;
    *at += 1;
}

const fn put_bytes(out: &mut [u8], at: &mut usize, b: &[u8]) {
    let mut i = 0;
    while i < b.len() {
        out[*at] = b[i];
        *at += 1;
        i += 1;
    }
}

/// What [`str_attr`] writes for `key` and `value` (field `field`), at compile time.
pub const fn fixed<const N: usize>(field: u32, key: &str, value: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let at = &mut 0;
    let any = field_len_const(value.len());
    put_varint(&mut out, at, (field << 3 | LEN as u32) as usize);
    put_varint(
        &mut out,
        at,
        field_len_const(key.len()) + field_len_const(any),
    );
    put_varint(&mut out, at, 1 << 3 | LEN as usize);
    put_varint(&mut out, at, key.len());
    put_bytes(&mut out, at, key.as_bytes());
    put_varint(&mut out, at, 2 << 3 | LEN as usize);
    put_varint(&mut out, at, any);
    put_varint(&mut out, at, 1 << 3 | LEN as usize);
    put_varint(&mut out, at, value.len());
    put_bytes(&mut out, at, value.as_bytes());
    assert!(*at == N);
    out
}

/// What a span says before its attributes.
#[derive(Debug)]
pub struct Head<'a> {
    pub trace_id: &'a [u8; 16],
    pub span_id: &'a [u8; 8],
    pub state: Option<&'a str>,
    pub parent: Option<&'a [u8; 8]>,
    /// The span's name, in parts written one after another (no string made to join them).
    pub name: &'a [&'a str],
    pub kind: i32,
    /// Unix nanoseconds.
    pub start: u64,
    pub end: u64,
}

/// A span's fields up to its attributes.
pub fn head(h: &Head<'_>, out: &mut Vec<u8>) {
    bytes(1, h.trace_id, out);
    bytes(2, h.span_id, out);
    if let Some(s) = h.state {
        bytes(3, s.as_bytes(), out);
    }
    if let Some(p) = h.parent {
        bytes(4, p, out);
    }
    tag(5, LEN, out);
    varint(h.name.iter().map(|p| p.len()).sum::<usize>() as u64, out);
    for part in h.name {
        out.extend_from_slice(part.as_bytes());
    }
    tag(6, VARINT, out);
    varint(h.kind as u64, out);
    tag(7, FIXED64, out);
    out.extend_from_slice(&h.start.to_le_bytes());
    tag(8, FIXED64, out);
    out.extend_from_slice(&h.end.to_le_bytes());
}

/// A span's fields after its attributes: its status (an error with `error` as the message,
/// when set) and its flags.
pub fn tail(error: Option<&str>, flags: u32, out: &mut Vec<u8>) {
    if let Some(why) = error {
        // Status { message (2), code (3): STATUS_CODE_ERROR }
        tag(15, LEN, out);
        varint((field_len(why.len()) + 2) as u64, out);
        bytes(2, why.as_bytes(), out);
        tag(3, VARINT, out);
        varint(2, out);
    }
    tag(16, FIXED32, out);
    out.extend_from_slice(&flags.to_le_bytes());
}

/// An `ExportTraceServiceRequest`: one resource (its attributes), one instrumentation scope
/// (`name`, `version`, the semantic conventions' `schema_url`), the batch's spans.
#[cfg(test)]
pub fn request(
    resource: &[(&'static str, String)],
    scope: (&str, &str),
    schema_url: &str,
    spans: &Batch,
) -> Vec<u8> {
    let (mut out, tail) = around(resource, scope, schema_url, spans);
    out.extend_from_slice(&spans.bytes[..spans.whole]);
    out.extend_from_slice(&tail);
    out
}

/// What an `ExportTraceServiceRequest` (as [`request`] describes it) has before the batch's
/// spans and after them: the spans' bytes are sent as they are, never copied into one buffer.
/// Every length is counted before anything is written.
pub fn around(
    resource: &[(&'static str, String)],
    scope: (&str, &str),
    schema_url: &str,
    spans: &Batch,
) -> (Vec<u8>, Vec<u8>) {
    let str_attr_len =
        |k: &str, v: &str| field_len(field_len(k.len()) + field_len(field_len(v.len())));
    let resource_len: usize = resource.iter().map(|(k, v)| str_attr_len(k, v)).sum();
    let scope_len = field_len(scope.0.len()) + field_len(scope.1.len());
    let scope_spans_len = field_len(scope_len) + spans.whole + field_len(schema_url.len());
    let resource_spans_len = field_len(resource_len) + field_len(scope_spans_len);
    let mut tail = Vec::with_capacity(field_len(schema_url.len()));
    bytes(3, schema_url.as_bytes(), &mut tail);
    let mut out = Vec::with_capacity(field_len(resource_spans_len) - spans.whole - tail.len());
    // ExportTraceServiceRequest { resource_spans (1): ResourceSpans {
    //   resource (1): Resource { attributes (1) },
    //   scope_spans (2): ScopeSpans { scope (1), spans (2), schema_url (3) } } }
    tag(1, LEN, &mut out);
    varint(resource_spans_len as u64, &mut out);
    tag(1, LEN, &mut out);
    varint(resource_len as u64, &mut out);
    for (k, v) in resource {
        str_attr(1, k, v, &mut out);
    }
    tag(2, LEN, &mut out);
    varint(scope_spans_len as u64, &mut out);
    tag(1, LEN, &mut out);
    varint(scope_len as u64, &mut out);
    bytes(1, scope.0.as_bytes(), &mut out);
    bytes(2, scope.1.as_bytes(), &mut out);
    debug_assert_eq!(
        out.len() + spans.whole + tail.len(),
        field_len(resource_spans_len)
    );
    (out, tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_of_every_length_are_framed_as_the_official_types_read() {
        let mut b = Batch::default();
        // Under 128 bytes, 128 to 16 KiB (room left for its length), and over.
        for name_len in [3, 600, 20_000] {
            b.push(|out| bytes(5, "n".repeat(name_len).as_bytes(), out));
        }
        let names: Vec<usize> = crate::trace::decoded(&b)
            .iter()
            .map(|s| s.name.len())
            .collect();
        assert_eq!(names, [3, 600, 20_000]);
        assert_eq!(b.spans(), 3);
    }

    #[test]
    fn what_a_push_that_panicked_left_is_cut_off() {
        let mut b = Batch::default();
        b.push(|out| bytes(5, b"one", out));
        let broken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            b.push(|out| {
                out.extend_from_slice(b"half a span");
                panic!("encoding failed");
            })
        }));
        assert!(broken.is_err());
        b.push(|out| bytes(5, b"two", out));
        let names: Vec<String> = crate::trace::decoded(&b)
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["one", "two"]);
        let mut other = Batch::default();
        other.push(|out| bytes(5, b"three", out));
        b.append(other);
        b.trim();
        let names: Vec<String> = crate::trace::decoded(&b)
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["one", "two", "three"]);
    }
}
