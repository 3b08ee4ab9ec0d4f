//! The inbound side's own decisions: who may call (authorization), and the header that tells
//! the application who did.
//!
//! A connection's destination (its local address, or the original destination once traffic is
//! captured) is an endpoint of one or more services in the table; each of those services'
//! authorization policy must allow the caller. The caller is the SPIFFE id its mesh TLS
//! certificate proved, or nobody (plaintext, in PERMISSIVE mode).

use crate::config::DefaultAuthz;
use std::{collections::HashSet, net::SocketAddr, sync::Arc};

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
            .and_then(namespace_of)
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
    pub fn authorize(&self, table: &Table) -> Option<Result<(), String>> {
        match table.authorize(self.local, self.id.as_deref(), self.namespace.as_deref()) {
            Some(Ok(())) => Some(Ok(())),
            Some(Err(service)) => Some(Err(service.to_string())),
            None if self.default == DefaultAuthz::Deny => Some(Err(format!(
                "{} (no policy guards it; --default-authz deny)",
                self.local
            ))),
            None => None,
        }
    }
}

/// A service's authorization policy, as written (the `authorization` of a TrafficPolicy, or
/// of a service in the table file).
pub use weft_core::authz::{
    AllowRule, Authorization as AuthorizationSpec, AuthzDefault as DefaultAction, Rule,
};

/// A compiled policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authz {
    deny_by_default: bool,
    identities: HashSet<Box<str>>,
    namespaces: HashSet<Box<str>>,
    authenticated: bool,
}

impl Authz {
    /// Compiles a policy; the error names the rule.
    pub fn compile(spec: &AuthorizationSpec) -> Result<Authz, String> {
        let mut a = Authz {
            deny_by_default: spec.default == DefaultAction::Deny,
            identities: HashSet::new(),
            namespaces: HashSet::new(),
            authenticated: false,
        };
        for (i, r) in spec.allow.iter().enumerate() {
            match r.rule() {
                Ok(Rule::Identity(id)) => {
                    a.identities.insert(id.into());
                }
                Ok(Rule::Namespace(ns)) => {
                    a.namespaces.insert(ns.into());
                }
                Ok(Rule::Authenticated) => a.authenticated = true,
                Err(("", why)) => return Err(format!("allow[{i}]: {why}")),
                Err((field, why)) => return Err(format!("allow[{i}].{field}: {why}")),
            }
        }
        Ok(a)
    }

    /// Whether `peer` (a SPIFFE id, or `None` for a plaintext caller) may call; `namespace` is
    /// its namespace if it belongs to this proxy's trust domain.
    pub fn allows(&self, peer: Option<&str>, namespace: Option<&str>) -> bool {
        let ruled = peer.is_some_and(|id| {
            self.authenticated
                || self.identities.contains(id)
                || namespace.is_some_and(|ns| self.namespaces.contains(ns))
        });
        ruled || !self.deny_by_default
    }
}

/// The trust domain and namespace of `spiffe://<trust-domain>/ns/<namespace>/sa/<sa>`.
fn namespace_of(id: &str) -> Option<(&str, &str)> {
    let (td, path) = id.strip_prefix("spiffe://")?.split_once('/')?;
    let mut parts = path.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("ns"), Some(ns), Some("sa"), Some(_)) if !ns.is_empty() => Some((td, ns)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

    fn policy(yaml: &str) -> Authz {
        Authz::compile(&serde_yaml_ng::from_str(yaml).unwrap()).unwrap()
    }

    #[test]
    fn rules_allow_and_the_default_decides_the_rest() {
        let p = policy(
            "default: deny\nallow: [{identity: spiffe://cluster.local/ns/shop/sa/frontend}, {namespace: ops}]",
        );
        let allows = |id: &str| {
            let ns = namespace_of(id)
                .filter(|(td, _)| *td == "cluster.local")
                .map(|(_, ns)| ns);
            p.allows(Some(id), ns)
        };
        assert!(allows(FRONTEND));
        assert!(allows("spiffe://cluster.local/ns/ops/sa/anything"));
        assert!(
            !allows("spiffe://elsewhere.example/ns/ops/sa/anything"),
            "another trust domain's namespace"
        );
        assert!(!allows("spiffe://cluster.local/ns/shop/sa/payments"));
        assert!(!allows("spiffe://cluster.local/ns/shopping/sa/x"));
        assert!(!p.allows(None, None), "plaintext is nobody");

        let p = policy("default: deny\nallow: [{authenticated: true}]");
        assert!(p.allows(Some(FRONTEND), Some("shop")));
        assert!(!p.allows(None, None));

        let p = policy("allow: [{identity: spiffe://cluster.local/ns/shop/sa/frontend}]");
        assert!(
            p.allows(None, None),
            "default allow: the rules only add to everyone"
        );
    }

    #[test]
    fn bad_rules_are_named() {
        let spec: AuthorizationSpec =
            serde_yaml_ng::from_str("allow: [{identity: frontend}]").unwrap();
        assert_eq!(
            Authz::compile(&spec).unwrap_err(),
            "allow[0].identity: `frontend` is not a SPIFFE id (spiffe://<trust-domain>/ns/<ns>/sa/<sa>)"
        );
        let spec: AuthorizationSpec =
            serde_yaml_ng::from_str("allow: [{namespace: a, authenticated: true}]").unwrap();
        assert!(
            Authz::compile(&spec)
                .unwrap_err()
                .starts_with("allow[0]: set exactly one")
        );
    }

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

    #[test]
    fn namespaces_come_from_the_spiffe_path() {
        assert_eq!(namespace_of(FRONTEND), Some(("cluster.local", "shop")));
        assert_eq!(namespace_of("spiffe://td/ns//sa/x"), None);
        assert_eq!(namespace_of("spiffe://td/other/shop"), None);
    }
}
