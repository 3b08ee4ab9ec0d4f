//! A finished request as a span record: the OpenTelemetry HTTP and RPC semantic conventions'
//! attributes, and weft's own (`weft.*`: route, backend, attempts, peer identity, response
//! flags). Keys are static; the entry's shared strings (service, route, backend, identities)
//! are shared, not copied. `wire` encodes records for export.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use weft_core::text::cut;

use super::Traced;
use crate::access_log::{Entry, Flags};
use crate::metrics::Direction;

/// OTLP's `SPAN_KIND_SERVER` and `SPAN_KIND_CLIENT`.
pub const KIND_SERVER: i32 = 2;
pub const KIND_CLIENT: i32 = 3;

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(Box<str>),
    Static(&'static str),
    Shared(Arc<str>),
    Int(i64),
    /// A list of one string (the conventions' `http.request.header.*` are lists).
    List(Box<str>),
}

/// One finished span, as `wire` encodes it.
#[derive(Debug, Clone)]
pub struct Record {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub state: Option<Box<str>>,
    pub name: Box<str>,
    pub kind: i32,
    /// Unix nanoseconds.
    pub start: u64,
    pub end: u64,
    pub attrs: Vec<(&'static str, Attr)>,
    /// Set when the request failed: the status is an error with this message.
    pub error: Option<Box<str>>,
    pub flags: u32,
}

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

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as u64
}

/// The methods HTTP defines (anything else is an extension method, named by the client).
const STANDARD_METHODS: [http::Method; 9] = [
    http::Method::GET,
    http::Method::HEAD,
    http::Method::POST,
    http::Method::PUT,
    http::Method::DELETE,
    http::Method::CONNECT,
    http::Method::OPTIONS,
    http::Method::TRACE,
    http::Method::PATCH,
];

/// The longest gRPC service or method name a span keeps (each; the path they come from may be
/// 2 KiB).
const MAX_RPC_NAME: usize = 128;

/// An address as text: IPv4 written digit by digit (the formatting machinery costs ten times
/// as much), IPv6 as the standard library writes it.
pub(super) fn ip_text(ip: std::net::IpAddr) -> Attr {
    let std::net::IpAddr::V4(v4) = ip else {
        return Attr::Str(ip.to_string().into());
    };
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    Attr::Str(std::str::from_utf8(&buf[..n]).unwrap_or_default().into())
}

/// gRPC's `/package.Service/Method` as (service, method).
fn grpc_method(path: &str) -> Option<(&str, &str)> {
    let (svc, method) = path.strip_prefix('/')?.split_once('/')?;
    (!svc.is_empty() && !method.is_empty() && !method.contains('/')).then_some((svc, method))
}

/// The span of the request `e` describes.
pub(super) fn build(t: &Traced, e: &Entry) -> Record {
    let end = e.start + e.duration;
    let path = e.path().map(|p| p.split('?').next().unwrap_or(p));
    // Only a gRPC request's entry has a gRPC status.
    let grpc = e.grpc_status.is_some();
    // A method outside HTTP's own is `_OTHER` (and the span `HTTP`), as the conventions say:
    // span names stay few whatever clients send.
    let method = e.method.as_ref();
    let known = method.filter(|m| STANDARD_METHODS.contains(m));
    let rpc = if grpc {
        path.and_then(grpc_method)
            .map(|(svc, m)| (cut(svc, MAX_RPC_NAME), cut(m, MAX_RPC_NAME)))
    } else {
        None
    };
    let name: Box<str> = match (rpc, known) {
        (Some((svc, m)), _) => format!("{svc}/{m}").into(),
        (None, Some(m)) => m.as_str().into(),
        (None, None) => "HTTP".into(),
    };
    let text = |s: &str| Attr::Str(s.into());
    let mut a: Vec<(&'static str, Attr)> = Vec::with_capacity(24);
    match (known, method) {
        (Some(m), _) => a.push(("http.request.method", text(m.as_str()))),
        (None, other) => {
            a.push(("http.request.method", Attr::Static("_OTHER")));
            if let Some(m) = other {
                a.push(("http.request.method_original", text(m.as_str())));
            }
        }
    }
    if let Some(p) = path {
        a.push(("url.path", text(p)));
    }
    if let Some(auth) = e
        .authority()
        .and_then(|a| a.parse::<http::uri::Authority>().ok())
    {
        a.push(("server.address", text(auth.host().trim_matches(['[', ']']))));
        if let Some(p) = auth.port_u16() {
            a.push(("server.port", Attr::Int(i64::from(p))));
        }
    }
    let version = e.protocol.strip_prefix("HTTP/").unwrap_or(e.protocol);
    a.push(("network.protocol.version", Attr::Static(version)));
    // 499 is the proxy's word for "the client left": no response was sent.
    let left = e.flags.contains(Flags::DC) && e.status == 499;
    if e.status != 0 && !left {
        a.push(("http.response.status_code", Attr::Int(i64::from(e.status))));
    }
    if let Some(ua) = e.user_agent() {
        a.push(("user_agent.original", text(ua)));
    }
    if let Some(id) = e.request_id() {
        a.push(("http.request.header.x-request-id", Attr::List(id.into())));
    }
    if let Some((svc, m)) = rpc {
        a.push(("rpc.system", Attr::Static("grpc")));
        a.push(("rpc.service", text(svc)));
        a.push(("rpc.method", text(m)));
    }
    if let Some(g) = e.grpc_status {
        a.push(("rpc.grpc.status_code", Attr::Int(i64::from(g))));
    }
    let (peer, peer_id) = match t.direction {
        Direction::Inbound => (e.client.map(|c| ("client.address", c)), &e.client_identity),
        Direction::Outbound => (
            e.upstream.map(|u| ("network.peer.address", u)),
            &e.upstream_identity,
        ),
    };
    if let Some((key, addr)) = peer {
        a.push((key, ip_text(addr.ip())));
        let port = match t.direction {
            Direction::Inbound => "client.port",
            Direction::Outbound => "network.peer.port",
        };
        a.push((port, Attr::Int(i64::from(addr.port()))));
    }
    a.push(("weft.direction", Attr::Static(t.direction.as_str())));
    let shared = |s: &Option<Arc<str>>| s.clone().map(Attr::Shared);
    for (key, v) in [
        ("weft.service", &e.service),
        ("weft.route", &e.route),
        ("weft.backend", &e.backend),
        ("weft.peer.identity", peer_id),
    ] {
        if let Some(v) = shared(v) {
            a.push((key, v));
        }
    }
    if e.attempts > 0 {
        a.push(("weft.attempts", Attr::Int(i64::from(e.attempts))));
    }
    if e.flags != Flags::default() {
        a.push(("weft.response_flags", Attr::Str(e.flags.render().into())));
    }
    let error = error(t.direction, e);
    if let Some(why) = &error {
        a.push(("error.type", Attr::Str(why.clone())));
    }
    Record {
        trace_id: t.trace_id,
        span_id: t.span_id,
        parent: t.parent,
        state: t.state.clone(),
        name,
        kind: match t.direction {
            Direction::Inbound => KIND_SERVER,
            Direction::Outbound => KIND_CLIENT,
        },
        start: nanos(e.start),
        end: nanos(end),
        attrs: a,
        error,
        flags: flags(t),
    }
}

/// Why the request failed, as `error.type` says it, or `None`: a gRPC status other than OK; an
/// HTTP status of 500 and up (server spans) or 400 and up (client spans); or the proxy's own
/// failure (a response flag) when there was no response.
fn error(direction: Direction, e: &Entry) -> Option<Box<str>> {
    if e.flags.contains(Flags::DC) && e.status == 499 {
        return Some("DC".into());
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
