//! A finished request as a span, encoded for export straight from its access log record: the
//! OpenTelemetry HTTP and RPC semantic conventions' attributes, and weft's own (`weft.*`:
//! route, backend, attempts, peer identity, response flags). Nothing is built in between: the
//! entry's strings are written into the span's one buffer.

use std::borrow::Cow;

use weft_core::text::cut;

use super::Traced;
use super::wire::{self, fixed_attr};
use crate::access_log::{Entry, Flags};
use crate::metrics::Direction;

/// OTLP's `SPAN_KIND_SERVER` and `SPAN_KIND_CLIENT`.
pub const KIND_SERVER: i32 = 2;
pub const KIND_CLIENT: i32 = 3;

/// A span's attributes are its field 9.
const ATTR: u32 = 9;

/// The span's flags: sampled (the W3C flag, low byte), and whether the parent is known and
/// remote (bits 8 and 9, as OTLP defines them).
fn flags(t: &Traced) -> u32 {
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    match t.parent {
        Some(_) => 1 | HAS_IS_REMOTE | IS_REMOTE,
        None => 1 | HAS_IS_REMOTE,
    }
}

/// The methods HTTP defines (anything else is an extension method, named by the client), each
/// with its attribute, encoded when the proxy is built.
const STANDARD_METHODS: [(http::Method, &[u8]); 9] = [
    (http::Method::GET, fixed_attr!("http.request.method", "GET")),
    (
        http::Method::HEAD,
        fixed_attr!("http.request.method", "HEAD"),
    ),
    (
        http::Method::POST,
        fixed_attr!("http.request.method", "POST"),
    ),
    (http::Method::PUT, fixed_attr!("http.request.method", "PUT")),
    (
        http::Method::DELETE,
        fixed_attr!("http.request.method", "DELETE"),
    ),
    (
        http::Method::CONNECT,
        fixed_attr!("http.request.method", "CONNECT"),
    ),
    (
        http::Method::OPTIONS,
        fixed_attr!("http.request.method", "OPTIONS"),
    ),
    (
        http::Method::TRACE,
        fixed_attr!("http.request.method", "TRACE"),
    ),
    (
        http::Method::PATCH,
        fixed_attr!("http.request.method", "PATCH"),
    ),
];

/// `network.protocol.version` for the protocols an entry names.
fn protocol_attr(protocol: &str) -> Option<&'static [u8]> {
    Some(match protocol {
        "HTTP/1.1" => fixed_attr!("network.protocol.version", "1.1"),
        "HTTP/2" => fixed_attr!("network.protocol.version", "2"),
        "HTTP/1.0" => fixed_attr!("network.protocol.version", "1.0"),
        "HTTP/3" => fixed_attr!("network.protocol.version", "3"),
        _ => return None,
    })
}

/// The longest gRPC service or method name a span keeps (each; the path they come from may be
/// 2 KiB).
const MAX_RPC_NAME: usize = 128;

/// An address as text, on the stack: IPv4 written digit by digit (the formatting machinery
/// costs ten times as much), IPv6 as the standard library writes it.
pub(super) struct IpText {
    buf: [u8; 45],
    len: usize,
}

impl IpText {
    pub(super) fn new(ip: std::net::IpAddr) -> IpText {
        let mut t = IpText {
            buf: [0; 45],
            len: 0,
        };
        match ip {
            std::net::IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if octet >= 100 {
                        t.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        t.push(b'0' + octet / 10 % 10);
                    }
                    t.push(b'0' + octet % 10);
                }
            }
            std::net::IpAddr::V6(v6) => {
                use std::io::Write;
                let mut w = &mut t.buf[..];
                // 45 bytes hold the longest IPv6 text (an IPv4-mapped address).
                let _ = write!(w, "{v6}");
                let left = w.len();
                t.len = 45 - left;
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    /// ASCII: the digits, dots and colons of an address.
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// An authority's host (without brackets) and port, as `http::uri::Authority` reads them,
/// without parsing it into one (which copies it).
pub(super) fn host_port(auth: &str) -> (&str, Option<u16>) {
    // Searched byte by byte: an authority is short, and the general search costs more to
    // set up than it saves.
    let last = |b: u8, s: &str| s.bytes().rposition(|c| c == b);
    let auth = last(b'@', auth).map_or(auth, |at| &auth[at + 1..]);
    if let Some(rest) = auth.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (rest, None),
        };
    }
    match last(b':', auth) {
        Some(at) => (&auth[..at], auth[at + 1..].parse().ok()),
        None => (auth, None),
    }
}

/// gRPC's `/package.Service/Method` as (service, method).
fn grpc_method(path: &str) -> Option<(&str, &str)> {
    let (svc, method) = path.strip_prefix('/')?.split_once('/')?;
    (!svc.is_empty() && !method.is_empty() && !method.contains('/')).then_some((svc, method))
}

/// The span of the request `e` describes: its fields, encoded, appended to `out`.
pub(super) fn encode(t: &Traced, e: &Entry, out: &mut Vec<u8>) {
    let end = e.start + e.duration.as_nanos() as u64;
    let path = e
        .path()
        .map(|p| p.bytes().position(|c| c == b'?').map_or(p, |q| &p[..q]));
    // Only a gRPC request's entry has a gRPC status.
    let grpc = e.grpc_status.is_some();
    // A method outside HTTP's own is `_OTHER` (and the span `HTTP`), as the conventions say:
    // span names stay few whatever clients send.
    let method = e.method.as_ref();
    let known = method.and_then(|m| STANDARD_METHODS.iter().find(|(s, _)| s == m));
    let rpc = if grpc {
        path.and_then(grpc_method)
            .map(|(svc, m)| (cut(svc, MAX_RPC_NAME), cut(m, MAX_RPC_NAME)))
    } else {
        None
    };
    let authority = e.authority();
    let (ua, request_id) = (e.user_agent(), e.request_id());
    let peer_id = match t.direction {
        Direction::Inbound => &e.client_identity,
        Direction::Outbound => &e.upstream_identity,
    };
    let shared = [
        ("weft.service", &e.service),
        ("weft.route", &e.route),
        ("weft.backend", &e.backend),
        ("weft.peer.identity", peer_id),
    ];
    let error = error(t.direction, e);
    // The variable parts, and room for the rest (keys, ids, numbers): room made once.
    let text = |s: Option<&str>| s.map_or(0, str::len);
    let size = 640
        + 3 * text(path)
        + text(authority)
        + text(ua)
        + text(request_id)
        + t.state.as_deref().map_or(0, str::len)
        + shared
            .iter()
            .map(|(_, v)| text(v.as_deref()))
            .sum::<usize>()
        + 2 * error.as_deref().map_or(0, str::len);
    out.reserve(size);
    let name: &[&str] = match (rpc, known) {
        (Some((svc, m)), _) => &[svc, "/", m],
        (None, Some((m, _))) => &[m.as_str()],
        (None, None) => &["HTTP"],
    };
    wire::head(
        &wire::Head {
            trace_id: &t.trace_id,
            span_id: &t.span_id,
            state: t.state.as_deref(),
            parent: t.parent.as_ref(),
            name,
            kind: match t.direction {
                Direction::Inbound => KIND_SERVER,
                Direction::Outbound => KIND_CLIENT,
            },
            start: e.start,
            end,
        },
        out,
    );
    let attr = |k: &str, v: &str, out: &mut Vec<u8>| wire::str_attr(ATTR, k, v, out);
    let int = |k: &str, v: i64, out: &mut Vec<u8>| wire::int_attr(ATTR, k, v, out);
    match (known, method) {
        (Some((_, encoded)), _) => out.extend_from_slice(encoded),
        (None, other) => {
            attr("http.request.method", "_OTHER", out);
            if let Some(m) = other {
                attr("http.request.method_original", m.as_str(), out);
            }
        }
    }
    if let Some(p) = path {
        attr("url.path", p, out);
    }
    if let Some(auth) = authority {
        let (host, port) = host_port(auth);
        attr("server.address", host, out);
        if let Some(p) = port {
            int("server.port", i64::from(p), out);
        }
    }
    match protocol_attr(e.protocol) {
        Some(encoded) => out.extend_from_slice(encoded),
        None => {
            let version = e.protocol.strip_prefix("HTTP/").unwrap_or(e.protocol);
            attr("network.protocol.version", version, out);
        }
    }
    // 499 is the proxy's word for "the client left": no response was sent.
    let left = e.flags.contains(Flags::DC) && e.status == 499;
    if e.status != 0 && !left {
        int("http.response.status_code", i64::from(e.status), out);
    }
    if let Some(ua) = ua {
        attr("user_agent.original", ua, out);
    }
    if let Some(id) = request_id {
        wire::list_attr(ATTR, "http.request.header.x-request-id", id, out);
    }
    if let Some((svc, m)) = rpc {
        out.extend_from_slice(fixed_attr!("rpc.system", "grpc"));
        attr("rpc.service", svc, out);
        attr("rpc.method", m, out);
    }
    if let Some(g) = e.grpc_status {
        int("rpc.grpc.status_code", i64::from(g), out);
    }
    let (peer, port_key) = match t.direction {
        Direction::Inbound => (e.client.map(|c| ("client.address", c)), "client.port"),
        Direction::Outbound => (
            e.upstream.map(|u| ("network.peer.address", u)),
            "network.peer.port",
        ),
    };
    if let Some((key, addr)) = peer {
        wire::bytes_attr(ATTR, key, IpText::new(addr.ip()).as_bytes(), out);
        int(port_key, i64::from(addr.port()), out);
    }
    out.extend_from_slice(match t.direction {
        Direction::Inbound => fixed_attr!("weft.direction", "inbound"),
        Direction::Outbound => fixed_attr!("weft.direction", "outbound"),
    });
    for (key, v) in shared {
        if let Some(v) = v {
            attr(key, v, out);
        }
    }
    if e.attempts > 0 {
        int("weft.attempts", i64::from(e.attempts), out);
    }
    if e.flags != Flags::default() {
        attr("weft.response_flags", &e.flags.render(), out);
    }
    if let Some(why) = &error {
        attr("error.type", why, out);
    }
    wire::tail(error.as_deref(), flags(t), out);
}

/// Why the request failed, as `error.type` says it, or `None`: a gRPC status other than OK; an
/// HTTP status of 500 and up (server spans) or 400 and up (client spans); or the proxy's own
/// failure (a response flag) when there was no response.
fn error(direction: Direction, e: &Entry) -> Option<Cow<'static, str>> {
    if e.flags.contains(Flags::DC) && e.status == 499 {
        return Some(Cow::Borrowed("DC"));
    }
    if let Some(g) = e.grpc_status.filter(|g| *g != 0) {
        return Some(g.to_string().into());
    }
    let floor = match direction {
        Direction::Inbound => 500,
        Direction::Outbound => 400,
    };
    if e.status >= floor {
        return Some(e.status.to_string().into());
    }
    (e.flags != Flags::default() && e.status == 0).then(|| e.flags.render().into())
}
