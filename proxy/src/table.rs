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
mod routes;
mod shards;
pub mod watch;
pub mod xds;

use std::{net::SocketAddr, path::Path, sync::Arc};

use arc_swap::ArcSwap;

pub use crate::clusters::{Cluster, Endpoint, EndpointSet, Picked};
use crate::{
    authz::Authz,
    metrics::{LazyTarget, Metrics},
    resilience::TokenBucket,
    resolve::Resolved,
    retry::Budget,
};
pub(crate) use compile::ServiceDraft;
pub use file::{LoadError, Protocol, TableFile};
use index::Index;
pub(crate) use names::Names;
pub use routes::{HashOn, Mirror, Route, RouteHeaders, RoutePolicy, Target};

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
    pub domains: Box<[Arc<str>]>,
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
                "timeout": r.policy.timeout.map(|t| format!("{t:?}")),
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
                    "domains": s.domains.iter().map(|d| &**d).collect::<Vec<_>>(),
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
