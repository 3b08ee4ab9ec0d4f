//! What an entry takes from its request: its strings, each cut to its bound, in one buffer,
//! and the trace id of its W3C or B3 headers.

use http::{HeaderMap, header};

use super::Entry;

/// The strings an entry takes from its request, in one buffer: a request's line costs one
/// allocation for them, however many there are.
#[derive(Debug, Default)]
pub(super) struct Texts {
    buf: String,
    /// Where each of [`AUTHORITY`], [`PATH`], ... is in `buf`.
    spans: [Option<(u16, u16)>; 6],
}

pub(super) const AUTHORITY: usize = 0;
pub(super) const PATH: usize = 1;
pub(super) const USER_AGENT: usize = 2;
pub(super) const REFERER: usize = 3;
pub(super) const REQUEST_ID: usize = 4;
pub(super) const TRACE_ID: usize = 5;

impl Texts {
    /// Each value cut to its bound (on a character boundary; bytes that are not UTF-8 become
    /// U+FFFD). Bounds are at most [`super::MAX_PATH`], so every span fits in `u16`.
    pub(super) fn new(values: [Option<(&[u8], usize)>; 6]) -> Texts {
        let len = values
            .iter()
            .flatten()
            .map(|(v, max)| v.len().min(*max))
            .sum();
        let mut t = Texts {
            buf: String::with_capacity(len),
            spans: [None; 6],
        };
        for (span, value) in t.spans.iter_mut().zip(values) {
            let Some((v, max)) = value else { continue };
            let from = t.buf.len();
            match std::str::from_utf8(&v[..v.len().min(max)]) {
                Ok(s) => t.buf.push_str(s),
                Err(_) => t.buf.push_str(&lossy(v, max)),
            }
            *span = Some((from as u16, t.buf.len() as u16));
        }
        t
    }

    pub(super) fn get(&self, i: usize) -> Option<&str> {
        self.spans[i].map(|(a, b)| &self.buf[usize::from(a)..usize::from(b)])
    }
}

impl Entry {
    pub fn authority(&self) -> Option<&str> {
        self.text.get(AUTHORITY)
    }

    /// The path, with the query when the log keeps it.
    pub fn path(&self) -> Option<&str> {
        self.text.get(PATH)
    }

    pub fn user_agent(&self) -> Option<&str> {
        self.text.get(USER_AGENT)
    }

    pub fn referer(&self) -> Option<&str> {
        self.text.get(REFERER)
    }

    pub fn request_id(&self) -> Option<&str> {
        self.text.get(REQUEST_ID)
    }

    /// The W3C (or B3) trace id the request carried, as 32 lowercase hex digits.
    pub fn trace_id(&self) -> Option<&str> {
        self.text.get(TRACE_ID)
    }
}

pub static X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");
pub(super) static TRACEPARENT: header::HeaderName = header::HeaderName::from_static("traceparent");
pub(super) static B3_TRACE_ID: header::HeaderName = header::HeaderName::from_static("x-b3-traceid");

/// `bytes` as text, cut to at most `max` bytes (on a character boundary); bytes that are not
/// UTF-8 become U+FFFD.
fn lossy(bytes: &[u8], max: usize) -> Box<str> {
    let bytes = &bytes[..bytes.len().min(max)];
    let s = String::from_utf8_lossy(bytes);
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].into()
}

/// The trace id of a valid W3C `traceparent` (version 00 and later), else of B3
/// (`x-b3-traceid`, 16 or 32 hex digits, the short form padded as B3 specifies): 32 lowercase
/// hex digits.
pub fn trace_id(h: &HeaderMap) -> Option<[u8; 32]> {
    if let Some(tp) = h.get(&TRACEPARENT).map(|v| v.as_bytes()) {
        // version "-" trace-id "-" parent-id "-" flags, lowercase hex; version 00 is exactly
        // that, a later version may add fields after another "-".
        let ok = tp.len() >= 55
            && tp[2] == b'-'
            && tp[35] == b'-'
            && tp[52] == b'-'
            && tp[..2] != *b"ff"
            && [&tp[..2], &tp[3..35], &tp[36..52], &tp[53..55]]
                .iter()
                .all(|part| hex_lower(part))
            && (tp.len() == 55 || (tp[..2] != *b"00" && tp[55] == b'-'));
        if !ok {
            return None;
        }
        let id = &tp[3..35];
        // An all-zero trace id or parent id is invalid.
        if id.iter().all(|&b| b == b'0') || tp[36..52].iter().all(|&b| b == b'0') {
            return None;
        }
        return id.try_into().ok();
    }
    let b3 = h.get(&B3_TRACE_ID)?.as_bytes();
    if !(b3.len() == 16 || b3.len() == 32) || !hex(b3) || b3.iter().all(|&b| b == b'0') {
        return None;
    }
    let mut id = [b'0'; 32];
    id[32 - b3.len()..].copy_from_slice(b3);
    id.make_ascii_lowercase();
    Some(id)
}

fn hex(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_hexdigit)
}

fn hex_lower(b: &[u8]) -> bool {
    b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}
