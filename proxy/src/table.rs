//! The compiled routing table and the `ArcSwap` that publishes it.
//!
//! A [`Table`] is immutable. A new one is made off to the side (from the static file by
//! `compile`, or from xDS resources by [`xds`]) and published with one atomic store; readers
//! `load()` it once per request or connection and never lock. Its indexes (`index`) are kept
//! in shards a new table shares with the one before it, so a table changed in one service
//! costs what that service touches. State that must outlive a swap (connection pools,
//! metrics, balancer state, breakers, budgets) is kept outside the routes, keyed by service,
//! cluster or endpoint, so a swap never resets it.

mod compile;
pub mod file;
pub(crate) mod index;
mod names;
mod shards;
pub mod watch;
pub mod xds;

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use http::HeaderName;

pub use crate::clusters::{Cluster, Endpoint, EndpointSet, Picked};
use crate::{
    authz::Authz,
    metrics::{Direction, LazyTarget, Metrics, TargetMetrics},
    resilience::{Fault, TokenBucket},
    resolve::Resolved,
    retry::{Budget, Retry},
    route::{RouteMatch, WeightedSplit},
};
pub(crate) use compile::ServiceDraft;
pub use file::{LoadError, Protocol, TableFile};
use index::Index;
pub(crate) use names::Names;

/// The table every listener reads; swapped whole.
pub type SharedTable = Arc<ArcSwap<Table>>;

#[derive(Debug, Clone)]
pub struct Table {
    /// The file's `version`, or a digest of its content.
    pub version: Arc<str>,
    /// Counts successful loads in this process, starting at 1 (0 is the empty startup table).
    pub generation: u64,
    /// Services, authorities, VIPs, endpoint addresses, clusters: see [`index`].
    index: Index,
    /// What the table was compiled from, for `/config_dump`.
    pub source: TableFile,
}

/// Who may call a service, and every address of it that policy guards (healthy or not: an
/// endpoint out of rotation still takes connections). Kept apart from the service's routing,
/// so that routing trouble (a Listener held back, a rejected RouteConfiguration) never lifts
/// it: the newest valid policy stays in force until the service is deleted.
#[derive(Debug)]
pub struct Guard {
    /// The service's name (its Listener's).
    pub service: Arc<str>,
    pub authz: Arc<Authz>,
    /// Canonical addresses (no IPv4-mapped IPv6).
    pub endpoints: Box<[SocketAddr]>,
}

/// A logical destination: a host and port that clients address.
#[derive(Debug)]
pub struct Service {
    /// `host:port`; also the `target` metrics label.
    pub name: Arc<str>,
    pub protocol: Protocol,
    /// Tried in order; the first that matches takes the request.
    pub routes: Box<[Route]>,
    /// Taken when no route matches (the table file's services, and opaque TCP): every endpoint
    /// of the service.
    pub default_route: Route,
    /// A request no route matches is answered 404, as Envoy answers it (xDS services: the
    /// routes are the control plane's, a Gateway API route's included, which replaces the
    /// service's default); `false`: the default route takes it.
    pub strict: bool,
    /// Made on first use.
    pub metrics: LazyTarget,
    /// Every `host:port`, bare host and `vip:port` the service was declared with (lower case;
    /// a bare host two services share reaches neither).
    pub domains: Box<[Box<str>]>,
    /// Who may call the service's endpoints; `None` allows everyone.
    pub authz: Option<Arc<Authz>>,
    /// What retries on the service's routes may add (on by default).
    pub budget: Arc<Budget>,
    /// The service's own token bucket, shared by its routes.
    pub rate_limit: Option<Arc<TokenBucket>>,
}

impl Service {
    /// Route `i`, or the default route for any index past the routes.
    pub fn route(&self, i: usize) -> &Route {
        self.routes.get(i).unwrap_or(&self.default_route)
    }
}

/// A route's traffic policies beyond where it sends requests.
#[derive(Debug, Default)]
pub struct RoutePolicy {
    pub retry: Option<Retry>,
    pub fault: Option<Fault>,
    pub rate_limit: Option<Arc<TokenBucket>>,
    pub mirror: Option<Mirror>,
    /// The longest `grpc-timeout` honoured; a longer one is cut to this.
    pub grpc_timeout_max: Option<Duration>,
    /// A response stream that carries nothing for this long is ended.
    pub idle_timeout: Option<Duration>,
    /// Headers the route changes in requests and responses (`None`: none).
    pub headers: Option<Arc<RouteHeaders>>,
    /// The request's path and authority, rewritten before it is sent.
    pub rewrite: Option<Arc<crate::route::Rewrite>>,
    /// The route answers with this redirect instead of sending the request anywhere.
    pub redirect: Option<Arc<crate::route::Redirect>>,
}

/// A route's header changes: the request's before it is sent, the response's before it is
/// relayed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteHeaders {
    pub request: crate::route::HeaderMutation,
    pub response: crate::route::HeaderMutation,
}

impl RoutePolicy {
    /// What `/config_dump` shows of it (only what is set).
    pub fn describe(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        let d = |t: Duration| serde_json::Value::from(format!("{t:?}"));
        if let Some(r) = &self.retry {
            m.insert("retry".into(), serde_json::Value::from(format!("{r:?}")));
        }
        if let Some(f) = &self.fault {
            m.insert("fault".into(), serde_json::Value::from(format!("{f:?}")));
        }
        if let Some(b) = &self.rate_limit {
            m.insert(
                "rateLimit".into(),
                serde_json::json!({"perSecond": b.rate, "burst": b.burst}),
            );
        }
        if let Some(mi) = &self.mirror {
            m.insert(
                "mirror".into(),
                serde_json::json!({"cluster": &*mi.cluster.name, "percent": mi.percent}),
            );
        }
        if let Some(t) = self.grpc_timeout_max {
            m.insert("grpcTimeoutMax".into(), d(t));
        }
        if let Some(t) = self.idle_timeout {
            m.insert("idleTimeout".into(), d(t));
        }
        if let Some(r) = &self.redirect {
            m.insert("redirect".into(), serde_json::Value::from(format!("{r:?}")));
        }
        if let Some(r) = &self.rewrite {
            m.insert("rewrite".into(), serde_json::Value::from(format!("{r:?}")));
        }
        if let Some(h) = &self.headers {
            m.insert(
                "headers".into(),
                serde_json::json!({"request": h.request.describe(), "response": h.response.describe()}),
            );
        }
        m.into()
    }
}

/// Copies of a share of a route's requests go to `cluster`.
#[derive(Debug)]
pub struct Mirror {
    pub cluster: Arc<Cluster>,
    pub percent: f64,
}

#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub matches: RouteMatch,
    /// Concrete backends with their weights (canary splits).
    pub backends: WeightedSplit<Arc<Cluster>>,
    pub timeout: Option<Duration>,
    /// What a request is hashed on: for a ring-hash cluster's endpoint, and to keep a caller
    /// on one backend of the split (sticky canary).
    pub hash: Option<HashOn>,
    pub policy: RoutePolicy,
    /// Each backend's request and response series (in `backends`' order), made on first use;
    /// filled when the service is finished.
    pub metrics: Box<[LazyTarget]>,
    /// Each backend's own header changes (a Gateway API backendRef's filters), in `backends`'
    /// order; empty when no backend has any.
    pub backend_headers: Box<[Option<Arc<RouteHeaders>>]>,
}

impl Route {
    /// The backend (with its series) and an endpoint of it for a request with hash key
    /// `hash`: a key keeps a caller on one backend of the split (sticky canary) and, on a
    /// ring-hash cluster, on one endpoint. `None` only for a route without backends; no
    /// endpoint when the backend has none in service.
    pub fn target(&self, hash: Option<u64>, metrics: &TargetMetrics) -> Option<Target<'_>> {
        let r = hash.unwrap_or_else(|| fastrand::u64(..));
        let i = self.backends.pick_index(r)?;
        let cluster = self.backends.get(i)?;
        Some(Target {
            cluster,
            index: i,
            metrics: &self.metrics[i],
            endpoint: cluster.pick(hash, metrics),
        })
    }

    /// Makes each backend's series handles (on first use) for the route of `service`.
    pub(crate) fn count(&mut self, metrics: &Arc<Metrics>, service: &Arc<str>) {
        self.metrics = self
            .backends
            .iter()
            .map(|c| {
                let (route, backend) = (self.name.clone(), c.name.clone());
                LazyTarget::backend(
                    metrics,
                    Direction::Outbound,
                    service.clone(),
                    route,
                    backend,
                )
            })
            .collect();
    }
}

/// Where a route sends one request: the backend, its series, and an endpoint if it has one.
pub struct Target<'a> {
    pub cluster: &'a Arc<Cluster>,
    /// Into the route's backends.
    pub index: usize,
    pub metrics: &'a LazyTarget,
    pub endpoint: Option<Picked>,
}

impl Route {
    /// Backend `i`'s own header changes.
    pub fn backend_headers(&self, i: usize) -> Option<&RouteHeaders> {
        self.backend_headers.get(i).and_then(|h| h.as_deref())
    }
}

/// The part of a request a route hashes.
#[derive(Debug, Clone)]
pub enum HashOn {
    Header(HeaderName),
    Cookie(Box<str>),
    SourceIp,
}

impl HashOn {
    /// The request's key, when it carries one. No allocation.
    pub fn key(&self, headers: &http::HeaderMap, client: Option<SocketAddr>) -> Option<u64> {
        match self {
            HashOn::Header(name) => headers
                .get(name)
                .map(|v| crate::balance::hash64(v.as_bytes())),
            HashOn::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| {
                    let (k, v) = c.trim().split_once('=')?;
                    (k == &**name).then(|| crate::balance::hash64(v.as_bytes()))
                }),
            HashOn::SourceIp => client.map(|c| match canonical(c).ip() {
                std::net::IpAddr::V4(ip) => crate::balance::hash64(&ip.octets()),
                std::net::IpAddr::V6(ip) => crate::balance::hash64(&ip.octets()),
            }),
        }
    }
}

impl Table {
    /// The table in force before any file is loaded: no services.
    pub fn empty() -> Self {
        Table {
            version: "empty".into(),
            generation: 0,
            index: Index::default(),
            source: TableFile::default(),
        }
    }

    /// Every service, by name (for `/config_dump` and tests; the request path looks services
    /// up).
    pub fn services(&self) -> Vec<&Arc<Service>> {
        let mut all: Vec<_> = self
            .index
            .entries()
            .filter_map(|e| e.service.as_ref())
            .collect();
        all.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn service_count(&self) -> usize {
        self.index.service_count()
    }

    /// The service (Listener) named `name`.
    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.index.service(name)
    }

    /// The host names the table's endpoints were configured with, which the resolver keeps
    /// fresh (sorted).
    pub fn dns_names(&self) -> Vec<Box<str>> {
        self.index.dns_names().cloned().collect()
    }

    /// The service a request's authority (`host[:port]`) names. Allocates only when the
    /// authority has upper-case letters.
    pub fn by_authority(&self, authority: &str) -> Option<&Arc<Service>> {
        let find = |a: &str| {
            if a.contains(':') {
                self.index.authority(a)
            } else {
                self.index.host(a)?.service.as_ref()
            }
        };
        match find(authority) {
            Some(s) => Some(s),
            None if authority.bytes().any(|b| b.is_ascii_uppercase()) => {
                find(&authority.to_ascii_lowercase())
            }
            None => None,
        }
    }

    /// The compiled services, routes, backends and endpoints, for `/config_dump`.
    pub fn describe(&self) -> serde_json::Value {
        use serde_json::json;
        let route = |r: &Route| {
            json!({
                "name": &*r.name,
                "match": format!("{:?}", r.matches),
                "timeout": r.timeout.map(|t| format!("{t:?}")),
                "policy": r.policy.describe(),
                "backends": r.backends.weighted().map(|(w, c)| json!({
                    "cluster": &*c.name,
                    "weight": w,
                    "lbPolicy": c.lb_policy(),
                    "endpoints": c.endpoints().weighted()
                        .map(|(w, e)| format!("{} (weight {w})", e.addr))
                        .collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        };
        self.services()
            .into_iter()
            .map(|s| {
                json!({
                    "name": &*s.name,
                    "protocol": format!("{:?}", s.protocol).to_ascii_lowercase(),
                    "domains": &s.domains,
                    "routes": s.routes.iter().chain([&s.default_route]).map(route).collect::<Vec<_>>(),
                })
            })
            .collect()
    }

    pub fn by_vip(&self, addr: SocketAddr) -> Option<&Arc<Service>> {
        self.index.vip(&addr)
    }

    /// Whether every service whose policy guards `addr` lets `peer` call it: `None` when no
    /// policy guards it; else the verdict and the denying service.
    pub fn authorize(
        &self,
        addr: SocketAddr,
        peer: Option<&str>,
        namespace: Option<&str>,
    ) -> Option<Result<(), &Arc<str>>> {
        let mut verdict = None;
        for g in &self.index.addr(&canonical(addr))?.guards {
            if !g.authz.allows(peer, namespace) {
                return Some(Err(&g.service));
            }
            verdict = Some(Ok(()));
        }
        verdict
    }

    /// The policy guarding `service`, if it has one.
    pub fn guard(&self, service: &str) -> Option<&Guard> {
        self.index.entry(service)?.guard.as_deref()
    }

    /// The identity the endpoint at `addr` proves, if it is a meshed endpoint of some service
    /// (a client that dials a pod's address directly still gets mutual TLS).
    pub fn endpoint_identity(&self, addr: SocketAddr) -> Option<&Arc<str>> {
        self.index.addr(&canonical(addr))?.identity.as_ref()
    }

    /// The VIP of the service a host name (lower case, no trailing dot) belongs to.
    pub fn vip_for_host(&self, host: &str) -> Option<std::net::IpAddr> {
        self.index.host(host)?.vip
    }

    /// The services that have an endpoint at `addr`.
    pub fn services_at(&self, addr: SocketAddr) -> impl Iterator<Item = &Arc<Service>> {
        self.index
            .addr(&canonical(addr))
            .into_iter()
            .flat_map(|a| &a.services)
            .filter_map(|n| self.index.service(n))
    }

    /// This table compiled again from its file as it was loaded (same version), against new
    /// answers for its endpoint host names. The source compiled once, so an error is a bug.
    pub fn recompile(
        &self,
        generation: u64,
        metrics: &Arc<Metrics>,
        dns: &Resolved,
    ) -> Result<Table, (String, String)> {
        Table::compile(
            self.source.clone(),
            self.version.clone(),
            generation,
            metrics,
            dns,
            self,
        )
    }
}

pub use crate::transport::canonical;

/// Reads, parses and compiles a table file.
pub fn load(
    path: &Path,
    generation: u64,
    metrics: &Arc<Metrics>,
    dns: &Resolved,
    previous: &Table,
) -> Result<Table, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        file: path.display().to_string(),
        source,
    })?;
    load_text(path, &text, generation, metrics, dns, previous)
}

/// Parses and compiles a table file's text; `path` names it in errors.
pub fn load_text(
    path: &Path,
    text: &str,
    generation: u64,
    metrics: &Arc<Metrics>,
    dns: &Resolved,
    previous: &Table,
) -> Result<Table, LoadError> {
    let parsed = file::parse(path, text)?;
    let version: Arc<str> = match &parsed.version {
        Some(v) => v.as_str().into(),
        None => digest(text).into(),
    };
    Table::compile(parsed, version, generation, metrics, dns, previous).map_err(
        |(field, message)| LoadError::Invalid {
            file: path.display().to_string(),
            field,
            message,
        },
    )
}

/// A short, stable digest of a file's content (FNV-1a, 64 bits).
pub(crate) fn digest(text: &str) -> String {
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("fnv-{h:016x}")
}

#[cfg(test)]
mod tests;
