//! What an entry takes from its request: its strings, each cut to its bound, in one buffer,
//! and the trace id of its W3C or B3 headers (kept as bytes: the writer writes it as hex).

use http::HeaderMap;

use super::Entry;
use crate::trace_context::{self, B3_TRACE_ID, TRACEPARENT};

/// The strings an entry takes from its request, in one buffer: a request's line costs one
/// allocation for them, however many there are.
#[derive(Debug, Default)]
pub(super) struct Texts {
    buf: String,
    /// Where each of [`AUTHORITY`], [`PATH`], ... is in `buf`.
    spans: [Option<(u16, u16)>; 5],
}

pub(super) const AUTHORITY: usize = 0;
pub(super) const PATH: usize = 1;
pub(super) const USER_AGENT: usize = 2;
pub(super) const REFERER: usize = 3;
pub(super) const REQUEST_ID: usize = 4;

/// A value an entry takes: text already known to be UTF-8 (the URI's parts, ids the sidecar
/// wrote), or a header's bytes, which may not be.
#[derive(Debug, Clone, Copy)]
pub(super) enum Text<'a> {
    Str(&'a str),
    Bytes(&'a [u8]),
}

impl Text<'_> {
    fn len(&self) -> usize {
        match self {
            Text::Str(s) => s.len(),
            Text::Bytes(b) => b.len(),
        }
    }
}

impl Texts {
    /// Each value cut to its bound (on a character boundary; bytes that are not UTF-8 become
    /// U+FFFD). Bounds are at most [`super::MAX_PATH`], so every span fits in `u16`.
    pub(super) fn new(values: [Option<(Text<'_>, usize)>; 5]) -> Texts {
        let len = values
            .iter()
            .flatten()
            .map(|(v, max)| v.len().min(*max))
            .sum();
        let mut t = Texts {
            buf: String::with_capacity(len),
            spans: [None; 5],
        };
        for (span, value) in t.spans.iter_mut().zip(values) {
            let Some((v, max)) = value else { continue };
            let from = t.buf.len();
            match v {
                Text::Str(s) => t.buf.push_str(weft_core::text::cut(s, max)),
                Text::Bytes(v) => match std::str::from_utf8(&v[..v.len().min(max)]) {
                    Ok(s) => t.buf.push_str(s),
                    Err(_) => t.buf.push_str(&lossy(v, max)),
                },
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

    /// The W3C (or B3) trace id the request carried (or the sidecar started), as 32 lowercase
    /// hex digits.
    pub fn trace_hex(&self) -> Option<[u8; 32]> {
        self.trace_id.map(|id| {
            let mut hex = [0u8; 32];
            trace_context::encode(&id, &mut hex);
            hex
        })
    }
}

/// `bytes` as text, cut to at most `max` bytes (on a character boundary); bytes that are not
/// UTF-8 become U+FFFD.
fn lossy(bytes: &[u8], max: usize) -> Box<str> {
    let bytes = &bytes[..bytes.len().min(max)];
    let s = String::from_utf8_lossy(bytes);
    weft_core::text::cut(&s, max).into()
}

/// The trace id of a valid W3C `traceparent` (version 00 and later; an invalid one hides B3
/// beside it: W3C takes precedence), else of B3 (`x-b3-traceid`, 16 or 32 hex digits, the short
/// form padded as B3 specifies). Parsed by `trace_context`, as the tracer parses them.
pub fn trace_id(h: &HeaderMap) -> Option<[u8; 16]> {
    match h.get(&TRACEPARENT) {
        Some(tp) => Some(trace_context::traceparent(tp.as_bytes())?.trace_id),
        None => {
            trace_context::b3_trace_id(h.get(&B3_TRACE_ID)?.as_bytes()).filter(|id| *id != [0; 16])
        }
    }
}
