//! Errors the proxy itself answers with, and the one place that maps them to responses:
//! no route -> 404, no endpoint / connect failure -> 503 / 502, timeout -> 504. A gRPC request
//! gets a gRPC-shaped answer instead: HTTP 200, `content-type: application/grpc` and a
//! `grpc-status` (trailers-only response).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header::CONTENT_TYPE};

use super::body::ProxyBody;
use crate::{access_log::Flags, grpc, retry::Reason, transport::ConnectError};

/// The header on every response the proxy generated itself, carrying the reason.
pub const PROXY_ERROR_HEADER: &str = "weft-proxy-error";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no service for authority `{0}`")]
    NoRoute(String),
    /// Not an error: the route answers with a redirect.
    #[error("redirected to {}", String::from_utf8_lossy(location.as_bytes()))]
    Redirect {
        status: StatusCode,
        location: HeaderValue,
    },
    #[error("no route of service {0} matches the request")]
    NoMatch(std::sync::Arc<str>),
    #[error("backend {cluster} does not exist")]
    BackendNotFound {
        cluster: std::sync::Arc<str>,
        status: u16,
    },
    #[error("request has no authority or Host header")]
    NoAuthority,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("service {0} has no endpoints")]
    NoEndpoints(std::sync::Arc<str>),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("upstream {addr}: {source}")]
    Upstream {
        addr: std::net::SocketAddr,
        source: super::body::BoxError,
    },
    #[error("mutual TLS to {addr} failed ({reason}): {message}")]
    Tls {
        addr: std::net::SocketAddr,
        reason: &'static str,
        message: String,
    },
    #[error("{peer} may not call {service}")]
    Forbidden {
        peer: String,
        service: crate::inbound::Denied,
    },
    #[error("upstream {0} switched to a protocol the request did not offer (or may not tunnel)")]
    UnexpectedUpgrade(std::net::SocketAddr),
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    #[error("gRPC deadline of {0:?} exceeded")]
    GrpcDeadline(Duration),
    #[error("no response within the per-try timeout of {0:?}")]
    PerTryTimeout(Duration),
    #[error("{0}: rate limit exceeded")]
    RateLimited(std::sync::Arc<str>),
    #[error("fault injected by policy")]
    Fault(crate::resilience::Abort),
    #[error(transparent)]
    Overflow(#[from] crate::resilience::OverLimit),
    #[error(
        "no room at {addr} (a connection or stream to it) within the pending timeout of {after:?}"
    )]
    PendingTimeout {
        addr: std::net::SocketAddr,
        after: Duration,
    },
}

/// The HTTP/2 error somewhere in `e`'s chain of sources (hyper wraps h2's), if there is one.
pub fn find_h2<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a h2::Error> {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = s.source();
    }
    None
}

/// Whether the upstream did not process the stream: it refused it (REFUSED_STREAM), or it was
/// past the last stream a graceful GOAWAY (NO_ERROR) kept (RFC 9113 §8.7: either way the request
/// can be sent again safely).
fn refused_stream(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    find_h2(e).is_some_and(|h2| match h2.reason() {
        Some(h2::Reason::REFUSED_STREAM) => true,
        Some(h2::Reason::NO_ERROR) => h2.is_go_away() && h2.is_remote(),
        _ => false,
    })
}

impl ProxyError {
    /// Why a try that ended in this error got no response, as a retry reason; `None` for the
    /// proxy's own refusals, which no retry changes.
    pub fn unanswered(&self) -> Option<Reason> {
        Some(match self {
            ProxyError::Connect(_) | ProxyError::Tls { .. } => Reason::ConnectFailure,
            ProxyError::Upstream { source, .. } if refused_stream(&**source) => {
                Reason::RefusedStream
            }
            ProxyError::Upstream { .. } => Reason::Reset,
            ProxyError::PerTryTimeout(_) => Reason::PerTryTimeout,
            _ => return None,
        })
    }

    /// The HTTP status and the gRPC status code that stand for this error.
    pub fn statuses(&self) -> (StatusCode, u32) {
        match self {
            ProxyError::NoRoute(_) | ProxyError::NoMatch(_) => {
                (StatusCode::NOT_FOUND, grpc::UNIMPLEMENTED)
            }
            ProxyError::Redirect { status, .. } => (*status, grpc::UNIMPLEMENTED),
            ProxyError::BackendNotFound { status, .. } => (
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                grpc::UNAVAILABLE,
            ),
            ProxyError::NoAuthority | ProxyError::BadRequest(_) => {
                (StatusCode::BAD_REQUEST, grpc::INTERNAL)
            }
            ProxyError::NoEndpoints(_) => (StatusCode::SERVICE_UNAVAILABLE, grpc::UNAVAILABLE),
            ProxyError::Connect(_) => (StatusCode::SERVICE_UNAVAILABLE, grpc::UNAVAILABLE),
            ProxyError::Upstream { .. }
            | ProxyError::Tls { .. }
            | ProxyError::UnexpectedUpgrade(_) => (StatusCode::BAD_GATEWAY, grpc::UNAVAILABLE),
            ProxyError::Forbidden { .. } => (StatusCode::FORBIDDEN, grpc::PERMISSION_DENIED),
            ProxyError::Timeout(_) | ProxyError::GrpcDeadline(_) | ProxyError::PerTryTimeout(_) => {
                (StatusCode::GATEWAY_TIMEOUT, grpc::DEADLINE_EXCEEDED)
            }
            ProxyError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, grpc::RESOURCE_EXHAUSTED),
            ProxyError::Fault(crate::resilience::Abort::Http(s)) => (*s, grpc::UNAVAILABLE),
            ProxyError::Fault(crate::resilience::Abort::Grpc(g)) => {
                (StatusCode::SERVICE_UNAVAILABLE, *g)
            }
            ProxyError::Overflow(_) | ProxyError::PendingTimeout { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, grpc::UNAVAILABLE)
            }
        }
    }

    /// The access log's response flag for this error (Envoy's vocabulary); `None` where no
    /// flag applies (a request authorization refused is its 403 alone).
    pub fn flag(&self) -> Option<Flags> {
        Some(match self {
            ProxyError::NoRoute(_) | ProxyError::NoMatch(_) | ProxyError::NoAuthority => Flags::NR,
            ProxyError::BackendNotFound { .. } => Flags::NC,
            ProxyError::BadRequest(_) => Flags::DPE,
            ProxyError::NoEndpoints(_) => Flags::UH,
            ProxyError::Connect(_) | ProxyError::Tls { .. } => Flags::UF,
            ProxyError::Upstream { .. } => Flags::UC,
            ProxyError::UnexpectedUpgrade(_) => Flags::UPE,
            ProxyError::Timeout(_) | ProxyError::GrpcDeadline(_) | ProxyError::PerTryTimeout(_) => {
                Flags::UT
            }
            ProxyError::RateLimited(_) => Flags::RL,
            ProxyError::Fault(_) => Flags::FI,
            ProxyError::Overflow(_) | ProxyError::PendingTimeout { .. } => Flags::UO,
            ProxyError::Forbidden { .. } | ProxyError::Redirect { .. } => return None,
        })
    }

    /// The response for a request that failed with this error.
    pub fn to_response(&self, is_grpc: bool) -> Response<ProxyBody> {
        if let ProxyError::Redirect { status, location } = self {
            let mut rsp = Response::new(ProxyBody::empty());
            *rsp.status_mut() = *status;
            rsp.headers_mut()
                .insert(http::header::LOCATION, location.clone());
            return rsp;
        }
        let (status, code) = self.statuses();
        let msg = self.to_string();
        let reason =
            HeaderValue::from_str(&msg).unwrap_or_else(|_| HeaderValue::from_static("proxy error"));
        let mut rsp = Response::new(if is_grpc {
            ProxyBody::empty()
        } else {
            ProxyBody::full(Bytes::from(msg.clone() + "\n"))
        });
        if !is_grpc {
            *rsp.status_mut() = status;
        }
        let h = rsp.headers_mut();
        if is_grpc {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert(grpc::STATUS, HeaderValue::from(code));
            h.insert(grpc::MESSAGE, grpc::encode_message(&msg));
        } else {
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
        }
        h.insert(PROXY_ERROR_HEADER, reason);
        rsp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_errors_are_grpc_shaped() {
        let e = ProxyError::NoEndpoints("echo:80".into());
        let rsp = e.to_response(true);
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["content-type"], "application/grpc");
        assert_eq!(rsp.headers()["grpc-status"], "14");
        assert_eq!(
            rsp.headers()["grpc-message"],
            "service echo:80 has no endpoints"
        );
        let rsp = ProxyError::Timeout(Duration::from_secs(1)).to_response(false);
        assert_eq!(rsp.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(rsp.headers().get("grpc-status").is_none());
        assert_eq!(
            rsp.headers()[PROXY_ERROR_HEADER],
            "request timed out after 1s"
        );
    }

    fn retry(on: &[&str]) -> crate::retry::Retry {
        let p = weft_core::policy::RetryPolicy {
            on: on.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        crate::retry::Retry::compile(&p).unwrap()
    }

    #[test]
    fn failures_without_a_response_are_classified() {
        let connect = ProxyError::Connect(ConnectError::Shared {
            addr: "127.0.0.1:1".parse().unwrap(),
            reason: "refused".into(),
        });
        let timeout = ProxyError::PerTryTimeout(Duration::from_millis(5));
        let r = retry(&["connect-failure"]);
        assert_eq!(
            connect.unanswered().and_then(|w| r.failure(w)),
            Some(Reason::ConnectFailure)
        );
        assert_eq!(timeout.unanswered().and_then(|w| r.failure(w)), None);
        // `5xx` covers every failure to get a response.
        let r = retry(&["5xx"]);
        assert_eq!(
            connect.unanswered().and_then(|w| r.failure(w)),
            Some(Reason::ConnectFailure)
        );
        assert_eq!(
            timeout.unanswered().and_then(|w| r.failure(w)),
            Some(Reason::PerTryTimeout)
        );
        // Errors of the proxy's own making are never retried.
        assert_eq!(ProxyError::NoEndpoints("a:1".into()).unanswered(), None);
        assert_eq!(
            ProxyError::Timeout(Duration::from_secs(1)).unanswered(),
            None
        );
        let r = retry(&["unavailable"]);
        assert_eq!(connect.unanswered().and_then(|w| r.failure(w)), None);
    }
}
