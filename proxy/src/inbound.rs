//! The inbound side's own decisions: where a captured connection is delivered, whether its
//! caller may reach it (each policy, compiled, is [`crate::authz`]'s), and the header that
//! tells the application who called.
//!
//! A connection's destination (its local address, or the original destination once traffic is
//! captured) is an endpoint of one or more services in the table; each of those services'
//! authorization policy must allow the caller. The caller is the SPIFFE id its mesh TLS
//! certificate proved, or nobody (plaintext, in PERMISSIVE mode).

use crate::config::DefaultAuthz;
use std::{net::SocketAddr, sync::Arc};

use http::{HeaderName, HeaderValue};

use crate::table::Table;

/// The header the application reads the caller's identity from. Set by the inbound proxy on
/// every request from a mesh peer; like every `x-weft-*` name, removed from every request in
/// every spelling first (`http::headers::strip_reserved`), so no caller can forge it.
pub static PEER_IDENTITY_HEADER: HeaderName = HeaderName::from_static("x-weft-peer-identity");

/// Carried from the outbound to the inbound sidecar when an HTTP/1 request rides the HTTP/2
/// connection between them: the version to restore for the application.
pub static ORIG_PROTO_HEADER: HeaderName = HeaderName::from_static("x-weft-orig-proto");

/// Where captured inbound connections are delivered, and which are refused.
///
/// A captured connection goes to the address its client dialled (the pod's own IP and the
/// original port), as if there were no sidecar: an application bound only to loopback stays
/// private to its pod. A connection whose original port is one of the sidecar's own (every
/// listener it bound) is refused, whatever the mode, so no other pod reaches the admin,
/// outbound or DNS listeners through the inbound side.
#[derive(Debug, Default)]
pub struct Delivery {
    /// The ports of every listener the sidecar bound, sorted.
    own_ports: Box<[u16]>,
    /// Original ports delivered on loopback instead (`--inbound-loopback-ports`), sorted: an
    /// escape hatch for an application that listens on loopback only and should still take
    /// mesh traffic on that port.
    loopback_ports: Box<[u16]>,
}

impl Delivery {
    /// `bound`: the addresses of the listeners the sidecar actually bound.
    pub fn new(bound: impl IntoIterator<Item = SocketAddr>, loopback_ports: &[u16]) -> Self {
        let sorted = |ports: Vec<u16>| {
            let mut ports = ports;
            ports.sort_unstable();
            ports.dedup();
            ports.into_boxed_slice()
        };
        Delivery {
            own_ports: sorted(bound.into_iter().map(|a| a.port()).collect()),
            loopback_ports: sorted(loopback_ports.to_vec()),
        }
    }

    /// Whether `port` is one of the sidecar's own.
    pub fn is_own(&self, port: u16) -> bool {
        self.own_ports.binary_search(&port).is_ok()
    }

    /// Where a captured connection sent to `orig` goes: `orig` itself, or loopback (of the
    /// same family) on an escape-hatch port.
    pub fn app(&self, orig: SocketAddr) -> SocketAddr {
        if self.loopback_ports.binary_search(&orig.port()).is_err() {
            return orig;
        }
        let ip: std::net::IpAddr = match orig {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        SocketAddr::new(ip, orig.port())
    }
}

/// What refused a caller.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Denied {
    /// The authorization policy of this service.
    #[error("{0}")]
    Policy(Arc<str>),
    /// No policy guards this destination, and `--default-authz deny`.
    #[error("{0} (no policy guards it; --default-authz deny)")]
    Default(SocketAddr),
}

/// Who is on the other end of an inbound connection, and where it was sent.
#[derive(Debug)]
pub struct Peer {
    /// The SPIFFE id its certificate proved; `None` for plaintext.
    pub id: Option<Arc<str>>,
    /// `id` as the header value given to the application.
    pub header: Option<HeaderValue>,
    /// The connection's destination: which endpoint (and so which services) it reached.
    pub local: SocketAddr,
    /// `weft_inbound_peer_requests_total` for this caller.
    pub requests: prometheus::IntCounter,
    /// The caller's namespace, when its identity is of this proxy's trust domain (namespace
    /// rules match only there: another trust domain's `ns/ops` is not this mesh's).
    pub namespace: Option<Box<str>>,
    /// Where no policy guards `local`.
    pub default: DefaultAuthz,
}

impl Peer {
    /// `trust_domain`: this proxy's.
    pub fn new(
        id: Option<String>,
        local: SocketAddr,
        metrics: &crate::metrics::Metrics,
        trust_domain: &str,
        default: DefaultAuthz,
    ) -> Self {
        let requests = metrics.tls.peer_requests(id.as_deref());
        let namespace = id
            .as_deref()
            .and_then(crate::authz::namespace_of)
            .filter(|(td, _)| *td == trust_domain)
            .map(|(_, ns)| ns.into());
        Peer {
            header: id.as_deref().and_then(|v| HeaderValue::from_str(v).ok()),
            id: id.map(Arc::from),
            local,
            requests,
            namespace,
            default,
        }
    }

    /// Whether this caller may reach its destination: every policy guarding it must allow;
    /// where none does, `--default-authz`. `None`: nothing was decided (no policy, default
    /// allow). The error names what refused.
    pub fn authorize(&self, table: &Table) -> Option<Result<(), Denied>> {
        match table.authorize(self.local, self.id.as_deref(), self.namespace.as_deref()) {
            Some(Ok(())) => Some(Ok(())),
            Some(Err(service)) => Some(Err(Denied::Policy(service.clone()))),
            None if self.default == DefaultAuthz::Deny => Some(Err(Denied::Default(self.local))),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_connections_go_where_they_were_sent_but_never_to_the_sidecar() {
        let bound: Vec<SocketAddr> = ["127.0.0.1:15000", "0.0.0.0:15006", "127.0.0.1:15001"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let d = Delivery::new(bound, &[9090]);
        assert!(d.is_own(15000) && d.is_own(15001) && d.is_own(15006));
        assert!(!d.is_own(8080));
        let at = |a: &str| d.app(a.parse().unwrap()).to_string();
        assert_eq!(
            at("10.0.0.7:8080"),
            "10.0.0.7:8080",
            "the pod's own address"
        );
        assert_eq!(at("[fd00::7]:8080"), "[fd00::7]:8080");
        assert_eq!(at("10.0.0.7:9090"), "127.0.0.1:9090", "the escape hatch");
        assert_eq!(at("[fd00::7]:9090"), "[::1]:9090");
    }
}
