//! A finished request as an OTLP span: the OpenTelemetry HTTP and RPC semantic conventions'
//! attributes, and weft's own (`weft.*`: route, backend, attempts, peer identity, response
//! flags).

use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, Status, span::SpanKind, status::StatusCode},
};

use super::Traced;
use crate::access_log::{Entry, Flags};
use crate::metrics::Direction;

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

fn kv(key: &'static str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..KeyValue::default()
    }
}

fn text(key: &'static str, v: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(v.into()))
}

fn int(key: &'static str, v: i64) -> KeyValue {
    kv(key, Value::IntValue(v))
}

/// gRPC's `/package.Service/Method` as (service, method).
fn grpc_method(path: &str) -> Option<(&str, &str)> {
    let (svc, method) = path.strip_prefix('/')?.split_once('/')?;
    (!svc.is_empty() && !method.is_empty() && !method.contains('/')).then_some((svc, method))
}

/// The span of the request `e` describes.
pub(super) fn build(t: &Traced, e: &Entry) -> Span {
    let end = e.start + e.duration;
    let path = e.path().map(|p| p.split('?').next().unwrap_or(p));
    // Only a gRPC request's entry has a gRPC status.
    let grpc = e.grpc_status.is_some();
    let method = e.method.as_ref().map_or("_OTHER", |m| m.as_str());
    let rpc = if grpc {
        path.and_then(grpc_method)
    } else {
        None
    };
    let name = match rpc {
        Some((svc, m)) => format!("{svc}/{m}"),
        None => method.to_string(),
    };
    let mut a = Vec::with_capacity(20);
    a.push(text("http.request.method", method));
    if let Some(p) = path {
        a.push(text("url.path", p));
    }
    a.push(text("url.scheme", "http"));
    if let Some(auth) = e
        .authority()
        .and_then(|a| a.parse::<http::uri::Authority>().ok())
    {
        a.push(text("server.address", auth.host().trim_matches(['[', ']'])));
        if let Some(p) = auth.port_u16() {
            a.push(int("server.port", i64::from(p)));
        }
    }
    a.push(text("network.protocol.name", "http"));
    let version = e.protocol.strip_prefix("HTTP/").unwrap_or(e.protocol);
    a.push(text("network.protocol.version", version));
    if e.status != 0 {
        a.push(int("http.response.status_code", i64::from(e.status)));
    }
    if let Some(ua) = e.user_agent() {
        a.push(text("user_agent.original", ua));
    }
    if let Some(id) = e.request_id() {
        a.push(text("http.request.header.x-request-id", id));
    }
    if let Some((svc, m)) = rpc {
        a.push(text("rpc.system", "grpc"));
        a.push(text("rpc.service", svc));
        a.push(text("rpc.method", m));
    }
    if let Some(g) = e.grpc_status {
        a.push(int("rpc.grpc.status_code", i64::from(g)));
    }
    match t.direction {
        Direction::Inbound => {
            if let Some(c) = e.client {
                a.push(text("client.address", c.ip().to_string()));
                a.push(int("client.port", i64::from(c.port())));
            }
        }
        Direction::Outbound => {
            if let Some(u) = e.upstream {
                a.push(text("network.peer.address", u.ip().to_string()));
                a.push(int("network.peer.port", i64::from(u.port())));
            }
        }
    }
    a.push(text("weft.direction", t.direction.as_str()));
    if let Some(s) = &e.service {
        a.push(text("weft.service", &**s));
    }
    if let Some(r) = &e.route {
        a.push(text("weft.route", &**r));
    }
    if let Some(b) = &e.backend {
        a.push(text("weft.backend", &**b));
    }
    if e.attempts > 0 {
        a.push(int("weft.attempts", i64::from(e.attempts)));
    }
    let peer = match t.direction {
        Direction::Inbound => &e.client_identity,
        Direction::Outbound => &e.upstream_identity,
    };
    if let Some(id) = peer {
        a.push(text("weft.peer.identity", &**id));
    }
    if e.flags != Flags::default() {
        a.push(text("weft.response_flags", e.flags.render()));
    }
    let failed = error(t.direction, e);
    if let Some(why) = &failed {
        a.push(text("error.type", why.clone()));
    }
    Span {
        trace_id: t.trace_id.to_vec(),
        span_id: t.span_id.to_vec(),
        trace_state: t.state.as_deref().unwrap_or_default().to_string(),
        parent_span_id: t.parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags: flags(t),
        name,
        kind: match t.direction {
            Direction::Inbound => SpanKind::Server,
            Direction::Outbound => SpanKind::Client,
        } as i32,
        start_time_unix_nano: nanos(e.start),
        end_time_unix_nano: nanos(end),
        attributes: a,
        status: Some(match failed {
            Some(why) => Status {
                message: why,
                code: StatusCode::Error as i32,
            },
            None => Status::default(),
        }),
        ..Span::default()
    }
}

/// Why the request failed, as `error.type` says it, or `None`: a gRPC status other than OK; an
/// HTTP status of 500 and up (server spans) or 400 and up (client spans); or the proxy's own
/// failure (a response flag) when there was no response.
fn error(direction: Direction, e: &Entry) -> Option<String> {
    if let Some(g) = e.grpc_status.filter(|g| *g != 0) {
        return Some(g.to_string());
    }
    let floor = match direction {
        Direction::Inbound => 500,
        Direction::Outbound => 400,
    };
    if e.status >= floor {
        return Some(e.status.to_string());
    }
    (e.flags != Flags::default() && e.status == 0).then(|| e.flags.render())
}
