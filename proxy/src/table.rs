//! The compiled routing table and the `ArcSwap` that publishes it.
//!
//! A [`Table`] is immutable. A new one is compiled off to the side (from the static file, or
//! from xDS resources by [`xds`]) and published with one atomic store; readers `load()` it once per request or
//! connection and never lock. State that must outlive a swap (connection pools, metrics) is kept
//! outside the table, keyed by service, cluster or endpoint, so a swap never resets it.

pub mod file;
pub mod watch;
pub mod xds;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use http::{HeaderName, Method};

use weft_core::{
    address::EndpointAddress,
    policy::{LbPolicy, LoadBalancer},
};

use crate::{
    balance::{Balancer, EndpointState, Outcome, Outlier},
    inbound::Authz,
    metrics::{Direction, LazyTarget, Metrics, TargetMetrics},
    resolve::Resolved,
    route::{HeaderMatch, QueryMatch, RouteMatch, StringMatch, WeightedSplit},
    traffic::{Breaker, Budget, Fault, Limit, OverLimit, Permit, Retry, TokenBucket},
};
pub use file::{LoadError, Protocol, TableFile};

/// The table every listener reads; swapped whole.
pub type SharedTable = Arc<ArcSwap<Table>>;

#[derive(Debug)]
pub struct Table {
    /// The file's `version`, or a digest of its content.
    pub version: Arc<str>,
    /// Counts successful loads in this process, starting at 1 (0 is the empty startup table).
    pub generation: u64,
    services: Vec<Arc<Service>>,
    /// `host:port` for the name and every alias.
    by_authority: HashMap<Box<str>, usize>,
    /// Bare host names that belong to exactly one service port.
    by_host: HashMap<Box<str>, usize>,
    by_vip: HashMap<SocketAddr, usize>,
    /// The services each endpoint address belongs to (what an inbound connection reached).
    by_endpoint: HashMap<SocketAddr, Vec<usize>>,
    /// Every service's authorization, with the addresses it guards; kept apart from routing.
    guards: Vec<Guard>,
    /// Into `guards`, by endpoint address.
    guarded: HashMap<SocketAddr, Vec<usize>>,
    /// The identity each meshed endpoint proves, by address.
    identities: HashMap<SocketAddr, Arc<str>>,
    /// Host names (lower case) and the VIP the DNS proxy answers for them; a host two services
    /// give different VIPs is left out.
    vips: HashMap<Box<str>, std::net::IpAddr>,
    /// The endpoint host names the table uses (resolved or not), sorted.
    dns_names: Box<[Box<str>]>,
    /// Every endpoint's balancer state, by address: the next table starts from these.
    states: HashMap<SocketAddr, Arc<EndpointState>>,
    /// Services by name, and clusters' breakers by cluster name: what the next table's
    /// budgets, buckets and breaker counts carry on from.
    by_name: HashMap<Arc<str>, usize>,
    breakers: HashMap<Arc<str>, Breaker>,
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
    /// Taken when no route matches: every endpoint of the service.
    pub default_route: Route,
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
}

impl Route {
    /// The backend and endpoint for a request with hash key `hash`: a key keeps a caller on
    /// one backend of the split (sticky canary) and, on a ring-hash cluster, on one endpoint.
    pub fn target(
        &self,
        hash: Option<u64>,
        metrics: &TargetMetrics,
    ) -> Option<(&Arc<Cluster>, &Endpoint)> {
        let cluster = match hash {
            Some(h) => self.backends.pick_with(h),
            None => self.backends.pick(),
        }?;
        Some((cluster, cluster.pick(hash, metrics)?))
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

/// A concrete backend: a balanced set of endpoints.
#[derive(Debug)]
pub struct Cluster {
    /// `host:port` or `host:port/subset`.
    pub name: Arc<str>,
    pub endpoints: WeightedSplit<Endpoint>,
    pub balancer: Balancer,
    pub outlier: Option<Outlier>,
    /// Percent of endpoints that must be in service for ejections to count.
    pub panic_threshold: f64,
    pub breaker: Breaker,
}

impl Cluster {
    pub fn new(name: Arc<str>, endpoints: WeightedSplit<Endpoint>, policy: LbPolicy) -> Self {
        let balancer = Balancer::new(policy, &endpoints, |e| e.addr.to_string());
        Cluster {
            name,
            endpoints,
            balancer,
            outlier: None,
            panic_threshold: crate::balance::DEFAULT_PANIC_THRESHOLD,
            breaker: Breaker::new(&Default::default(), None),
        }
    }

    /// The endpoint for a request with hash key `hash` (see [`HashOn`]), skipping ejected
    /// ones unless too few are left in service (the panic threshold).
    pub fn pick(&self, hash: Option<u64>, metrics: &TargetMetrics) -> Option<&Endpoint> {
        let i = self.balancer.pick(&self.endpoints, |e| &*e.state, hash)?;
        let ep = self.endpoints.get(i)?;
        if self.outlier.is_none() {
            return Some(ep);
        }
        let now = crate::balance::now_ms();
        if ep.state.return_if_due(now) {
            metrics.returned();
        }
        if !ep.state.ejected(now) {
            return Some(ep);
        }
        // The balancer chose an ejected endpoint: the next one in service after it.
        let n = self.endpoints.len();
        let mut in_service = 0;
        let mut next = None;
        for k in 1..n {
            let j = (i + k) % n;
            let e = self.endpoints.get(j)?;
            if e.state.return_if_due(now) {
                metrics.returned();
            }
            if !e.state.ejected(now) {
                in_service += 1;
                next.get_or_insert(e);
            }
        }
        if self.panicking(in_service) {
            return Some(ep);
        }
        next
    }

    /// Whether so few endpoints are in service (below the panic threshold) that ejections are
    /// ignored.
    fn panicking(&self, in_service: usize) -> bool {
        (in_service as f64) * 100.0 < self.panic_threshold * self.endpoints.len() as f64
    }

    /// One unit of the cluster's `limit` (none to take for a limit it does not set); at the
    /// limit, the refusal is counted and the error for it returned.
    pub fn permit(
        &self,
        limit: Limit,
        metrics: &TargetMetrics,
    ) -> Result<Option<Permit>, OverLimit> {
        let b = &self.breaker;
        if !b.limits(limit) {
            return Ok(None);
        }
        match b.acquire(limit) {
            Some(p) => Ok(Some(p)),
            None => {
                metrics.overflow(limit);
                Err(OverLimit {
                    cluster: self.name.clone(),
                    limit,
                })
            }
        }
    }

    /// An endpoint for a retry: another than `avoid` if the cluster has one.
    pub fn pick_other(
        &self,
        hash: Option<u64>,
        avoid: SocketAddr,
        metrics: &TargetMetrics,
    ) -> Option<&Endpoint> {
        let first = self.pick(hash, metrics)?;
        if first.addr != avoid || self.endpoints.len() < 2 {
            return Some(first);
        }
        // The balancer chose the endpoint that just failed (a fast failure looks cheap to it):
        // one of the others, drawn by weight; ejected ones only when too few are in service
        // (the panic threshold, as `pick` has it). Only when there is none, the same again.
        let now = crate::balance::now_ms();
        let n = self.endpoints.len();
        let in_service = (0..n)
            .filter_map(|i| self.endpoints.get(i))
            .filter(|e| !e.state.ejected(now))
            .count();
        let panicking = self.panicking(in_service);
        let candidate = |i: usize| {
            let e = self.endpoints.get(i)?;
            (e.addr != avoid && (panicking || !e.state.ejected(now)))
                .then(|| (e, self.endpoints.weight_at(i)))
        };
        let total: u64 = (0..n).filter_map(candidate).map(|(_, w)| w).sum();
        if total == 0 {
            return Some(first);
        }
        let mut draw = fastrand::u64(..total);
        (0..n).filter_map(candidate).find_map(|(e, w)| {
            if draw < w {
                Some(e)
            } else {
                draw -= w;
                None
            }
        })
    }

    /// Feeds a request's outcome to outlier detection, ejecting the endpoint when it calls
    /// for it and the cluster's share of ejected endpoints allows (one always may be).
    pub fn observe(&self, ep: &EndpointState, outcome: Outcome, metrics: &TargetMetrics) {
        let Some(cfg) = &self.outlier else { return };
        let now = crate::balance::now_ms();
        if !ep.record(outcome, cfg, now) {
            return;
        }
        let n = self.endpoints.len() as u64;
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.state.ejected(now))
            .count() as u64;
        if ejected == 0 || (ejected + 1) * 100 <= u64::from(cfg.max_ejection_percent) * n {
            let time = ep.eject(cfg, now);
            metrics.ejection();
            tracing::info!(cluster = %self.name, endpoint = %ep.addr, ?time, "outlier detection ejected an endpoint");
        }
    }
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub labels: Arc<BTreeMap<String, String>>,
    /// The SPIFFE id the endpoint must prove; `Some` means it is meshed (mutual TLS).
    pub identity: Option<Arc<str>>,
    /// What the balancer knows of it; carried over from the table in force.
    pub state: Arc<EndpointState>,
}

impl Table {
    /// The table in force before any file is loaded: no services.
    pub fn empty() -> Self {
        Table {
            version: "empty".into(),
            generation: 0,
            services: Vec::new(),
            by_authority: HashMap::new(),
            by_host: HashMap::new(),
            by_vip: HashMap::new(),
            by_endpoint: HashMap::new(),
            guards: Vec::new(),
            guarded: HashMap::new(),
            identities: HashMap::new(),
            vips: HashMap::new(),
            dns_names: Box::default(),
            states: HashMap::new(),
            by_name: HashMap::new(),
            breakers: HashMap::new(),
            source: TableFile::default(),
        }
    }

    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// The host names the table's endpoints were configured with, which the resolver keeps
    /// fresh.
    pub fn dns_names(&self) -> &[Box<str>] {
        &self.dns_names
    }

    /// The service a request's authority (`host[:port]`) names. Allocates only when the
    /// authority has upper-case letters.
    pub fn by_authority(&self, authority: &str) -> Option<&Arc<Service>> {
        let find = |a: &str| {
            let i = if a.contains(':') {
                self.by_authority.get(a)
            } else {
                self.by_host.get(a)
            };
            i.map(|i| &self.services[*i])
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
                    "endpoints": c.endpoints.weighted()
                        .map(|(w, e)| format!("{} (weight {w})", e.addr))
                        .collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        };
        self.services
            .iter()
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
        self.by_vip.get(&addr).map(|i| &self.services[*i])
    }

    /// Whether every service whose policy guards `addr` lets `peer` call it: `None` when no
    /// policy guards it; else the verdict and the denying service.
    pub fn authorize(
        &self,
        addr: SocketAddr,
        peer: Option<&str>,
        namespace: Option<&str>,
    ) -> Option<Result<(), &str>> {
        let mut verdict = None;
        for i in self.guarded.get(&canonical(addr))? {
            let g = &self.guards[*i];
            if !g.authz.allows(peer, namespace) {
                return Some(Err(&g.service));
            }
            verdict = Some(Ok(()));
        }
        verdict
    }

    /// The policy guarding `service`, if it has one.
    pub fn guard(&self, service: &str) -> Option<&Guard> {
        self.guards.iter().find(|g| &*g.service == service)
    }

    /// The identity the endpoint at `addr` proves, if it is a meshed endpoint of some service
    /// (a client that dials a pod's address directly still gets mutual TLS).
    pub fn endpoint_identity(&self, addr: SocketAddr) -> Option<&Arc<str>> {
        self.identities.get(&canonical(addr))
    }

    /// The VIP of the service a host name (lower case, no trailing dot) belongs to.
    pub fn vip_for_host(&self, host: &str) -> Option<std::net::IpAddr> {
        self.vips.get(host).copied()
    }

    /// The services that have an endpoint at `addr`.
    pub fn services_at(&self, addr: SocketAddr) -> impl Iterator<Item = &Arc<Service>> {
        self.by_endpoint
            .get(&canonical(addr))
            .into_iter()
            .flatten()
            .map(|i| &self.services[*i])
    }

    /// Indexes services by their endpoints' addresses, and `guards` by theirs; the last step of
    /// every compile.
    fn index_endpoints(&mut self, guards: Vec<Guard>) {
        let mut guarded: HashMap<SocketAddr, Vec<usize>> = HashMap::new();
        for (i, g) in guards.iter().enumerate() {
            for a in g.endpoints.iter() {
                let v = guarded.entry(*a).or_default();
                if v.last() != Some(&i) {
                    v.push(i);
                }
            }
        }
        self.guards = guards;
        self.guarded = guarded;
        let mut by_endpoint: HashMap<SocketAddr, Vec<usize>> = HashMap::new();
        let mut identities = HashMap::new();
        let mut states = HashMap::new();
        let mut breakers = HashMap::new();
        let mut by_name = HashMap::new();
        for (i, svc) in self.services.iter().enumerate() {
            by_name.entry(svc.name.clone()).or_insert(i);
            let clusters = std::iter::once(&svc.default_route)
                .chain(svc.routes.iter())
                .flat_map(|r| r.backends.iter());
            for c in clusters {
                breakers
                    .entry(c.name.clone())
                    .or_insert_with(|| c.breaker.clone());
                for e in c.endpoints.iter() {
                    states.insert(e.addr, e.state.clone());
                    if let Some(id) = &e.identity {
                        identities.insert(canonical(e.addr), id.clone());
                    }
                    let v = by_endpoint.entry(canonical(e.addr)).or_default();
                    if v.last() != Some(&i) {
                        v.push(i);
                    }
                }
            }
        }
        for v in by_endpoint.values_mut() {
            v.sort_unstable();
            v.dedup();
        }
        self.by_endpoint = by_endpoint;
        self.identities = identities;
        self.states = states;
        self.breakers = breakers;
        self.by_name = by_name;
        let mut vips: HashMap<Box<str>, Option<std::net::IpAddr>> = HashMap::new();
        for svc in &self.services {
            let Some(vip) = svc
                .domains
                .iter()
                .find_map(|d| d.parse::<SocketAddr>().ok())
                .map(|a| a.ip())
            else {
                continue;
            };
            for host in svc.domains.iter().filter(|d| !d.contains(':')) {
                let e = vips.entry(host.clone()).or_insert(Some(vip));
                if *e != Some(vip) {
                    *e = None;
                }
            }
        }
        self.vips = vips
            .into_iter()
            .filter_map(|(h, v)| Some((h, v?)))
            .collect();
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

    /// Compiles and validates a table file. Errors name the field (`services[1].port`).
    pub fn compile(
        source: TableFile,
        version: Arc<str>,
        generation: u64,
        metrics: &Arc<Metrics>,
        dns: &Resolved,
        previous: &Table,
    ) -> Result<Table, (String, String)> {
        let names = Names::new(dns, previous);
        let mut t = Table {
            version,
            generation,
            ..Table::empty()
        };
        let mut host_ports: HashMap<String, Vec<usize>> = HashMap::new();
        let mut drafts = Vec::with_capacity(source.services.len());
        let mut guards = Vec::new();
        for (i, spec) in source.services.iter().enumerate() {
            let at = format!("services[{i}]");
            let mut svc = compile_service(spec, &at, &names)?;
            if let Some(authz) = &svc.authz {
                guards.push(Guard {
                    service: svc.name.clone(),
                    authz: authz.clone(),
                    endpoints: spec
                        .endpoints
                        .iter()
                        .flat_map(|e| names.addrs(&e.address))
                        .map(canonical)
                        .collect(),
                });
            }
            let idx = drafts.len();
            for (j, host) in std::iter::once(&spec.name).chain(&spec.aliases).enumerate() {
                let field = if j == 0 {
                    format!("{at}.name")
                } else {
                    format!("{at}.aliases[{}]", j - 1)
                };
                let host = validate_host(host).map_err(|m| (field.clone(), m))?;
                let authority = format!("{host}:{}", spec.port);
                if let Some(other) = t.by_authority.insert(authority.clone().into(), idx) {
                    return Err((
                        field,
                        format!("`{authority}` is already taken by services[{other}]"),
                    ));
                }
                svc.domains.push(authority.into());
                svc.domains.push(host.as_str().into());
                host_ports.entry(host).or_default().push(idx);
            }
            if let Some(ip) = spec.vip {
                let vip = SocketAddr::new(ip, spec.port);
                if let Some(other) = t.by_vip.insert(vip, idx) {
                    return Err((
                        format!("{at}.vip"),
                        format!("`{vip}` is already taken by services[{other}]"),
                    ));
                }
                svc.domains.push(vip.to_string().into());
            }
            drafts.push(svc);
        }
        for (host, idxs) in host_ports {
            if let [only] = idxs[..] {
                t.by_host.insert(host.into(), only);
            }
        }
        // Only a table that compiled whole gets metrics series: a rejected one leaves none.
        t.services = drafts
            .into_iter()
            .map(|svc| Arc::new(svc.finish(metrics)))
            .collect();
        t.source = source;
        t.dns_names = names.into_used();
        t.index_endpoints(guards);
        Ok(t)
    }
}

/// Endpoint addresses as the table compiles them: a host name stands for every address it
/// resolved to. Records the names it was asked about, resolved or not.
/// Endpoints get the balancer state of the same address in `previous` (the table in force),
/// so a swap does not reset it.
pub(crate) struct Names<'a> {
    resolved: &'a Resolved,
    previous: &'a Table,
    used: std::cell::RefCell<std::collections::BTreeSet<Box<str>>>,
    /// States made during this compile (an address in several clusters shares one).
    fresh: std::cell::RefCell<HashMap<SocketAddr, Arc<EndpointState>>>,
}

impl<'a> Names<'a> {
    pub(crate) fn new(resolved: &'a Resolved, previous: &'a Table) -> Self {
        Names {
            resolved,
            previous,
            used: Default::default(),
            fresh: Default::default(),
        }
    }

    /// The addresses `addr` stands for: itself, or every address its host name resolved to.
    pub(crate) fn addrs(&self, addr: &EndpointAddress) -> Vec<SocketAddr> {
        match addr {
            EndpointAddress::Ip(a) => vec![*a],
            EndpointAddress::Host { host, port } => {
                self.used.borrow_mut().insert(host.clone());
                self.resolved
                    .get(host)
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, *port))
                    .collect()
            }
        }
    }

    /// The endpoints `addr` stands for, each with `labels` and `identity`.
    pub(crate) fn endpoints(
        &self,
        addr: &EndpointAddress,
        labels: &Arc<BTreeMap<String, String>>,
        identity: &Option<Arc<str>>,
    ) -> Vec<Endpoint> {
        self.addrs(addr)
            .into_iter()
            .map(|addr| Endpoint {
                addr,
                labels: labels.clone(),
                identity: identity.clone(),
                state: self.state(addr),
            })
            .collect()
    }

    fn previous_service(&self, name: &str) -> Option<&'a Arc<Service>> {
        let i = *self.previous.by_name.get(name)?;
        self.previous.services.get(i)
    }

    /// The service's retry budget: the one in force if its settings are the same.
    pub(crate) fn budget(&self, service: &str, new: Budget) -> Arc<Budget> {
        match self.previous_service(service) {
            Some(s) if s.budget.same(&new) => s.budget.clone(),
            _ => Arc::new(new),
        }
    }

    /// A token bucket, the one in force if its settings are the same: the service's
    /// (`route` `None`) or a route's.
    pub(crate) fn bucket(
        &self,
        service: &str,
        route: Option<&str>,
        new: TokenBucket,
    ) -> Arc<TokenBucket> {
        let old = self.previous_service(service).and_then(|s| match route {
            None => s.rate_limit.clone(),
            Some(r) => s
                .routes
                .iter()
                .find(|x| &*x.name == r)
                .and_then(|x| x.policy.rate_limit.clone()),
        });
        match old {
            Some(b) if b.same(&new) => b,
            _ => Arc::new(new),
        }
    }

    /// A cluster's breaker (`p`, else the default limits), counting on from the one in force
    /// by the cluster's name.
    pub(crate) fn breaker(
        &self,
        cluster: &str,
        p: Option<&weft_core::policy::CircuitBreaker>,
    ) -> Breaker {
        let default = weft_core::policy::CircuitBreaker::default();
        Breaker::new(p.unwrap_or(&default), self.previous.breakers.get(cluster))
    }

    fn state(&self, addr: SocketAddr) -> Arc<EndpointState> {
        if let Some(s) = self.previous.states.get(&addr) {
            return s.clone();
        }
        self.fresh
            .borrow_mut()
            .entry(addr)
            .or_insert_with(|| Arc::new(EndpointState::new(addr)))
            .clone()
    }

    pub(crate) fn into_used(self) -> Box<[Box<str>]> {
        self.used.into_inner().into_iter().collect()
    }
}

/// An IPv4 address in IPv6 clothing (`[::ffff:10.0.0.1]:80`, as a dual-stack listener reports
/// IPv4 callers) as the IPv4 address it is.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

fn validate_host(host: &str) -> Result<String, String> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(host.to_ascii_lowercase())
    } else {
        Err(format!(
            "`{host}` is not a host name (letters, digits, `-` and `.` only)"
        ))
    }
}

/// A compiled service still waiting for its metrics handles, which it gets once the whole table
/// is known to be valid.
struct ServiceDraft {
    name: Arc<str>,
    protocol: Protocol,
    routes: Box<[Route]>,
    default_route: Route,
    domains: Vec<Box<str>>,
    authz: Option<Arc<Authz>>,
    budget: Arc<Budget>,
    rate_limit: Option<Arc<TokenBucket>>,
}

impl ServiceDraft {
    fn finish(self, metrics: &Arc<Metrics>) -> Service {
        Service {
            metrics: LazyTarget::new(metrics, Direction::Outbound, self.name.clone()),
            name: self.name,
            protocol: self.protocol,
            routes: self.routes,
            default_route: self.default_route,
            domains: self.domains.into(),
            authz: self.authz,
            budget: self.budget,
            rate_limit: self.rate_limit,
        }
    }
}

fn compile_service(
    spec: &file::ServiceSpec,
    at: &str,
    names: &Names,
) -> Result<ServiceDraft, (String, String)> {
    if spec.port == 0 {
        return Err((format!("{at}.port"), "must be between 1 and 65535".into()));
    }
    let name: Arc<str> = format!("{}:{}", spec.name.to_ascii_lowercase(), spec.port).into();
    for (i, e) in spec.endpoints.iter().enumerate() {
        if let Some(id) = &e.identity
            && !id.starts_with("spiffe://")
        {
            return Err((
                format!("{at}.endpoints[{i}].identity"),
                format!("`{id}` is not a SPIFFE id"),
            ));
        }
    }
    let authz = spec
        .authorization
        .as_ref()
        .map(Authz::compile)
        .transpose()
        .map_err(|e| {
            let (field, msg) = e.split_once(": ").unwrap_or(("", &e));
            (format!("{at}.authorization.{field}"), msg.to_string())
        })?
        .map(Arc::new);
    let lb = spec.load_balancer.clone().unwrap_or_default();
    let hash = compile_hash(&lb, &format!("{at}.loadBalancer"))?;
    let endpoints = |e: &file::EndpointSpec| -> Vec<(u32, Endpoint)> {
        let labels = Arc::new(e.labels.clone());
        let identity: Option<Arc<str>> = e.identity.as_deref().map(Arc::from);
        names
            .endpoints(&e.address, &labels, &identity)
            .into_iter()
            .map(|ep| (e.weight, ep))
            .collect()
    };
    let outlier = spec.outlier_detection.as_ref().map(Outlier::compile);
    let panic_threshold = crate::traffic::check_percent(
        lb.panic_threshold
            .unwrap_or(crate::balance::DEFAULT_PANIC_THRESHOLD),
    )
    .map_err(|e| (format!("{at}.loadBalancer.panicThreshold"), e))?;
    let cluster = |name: Arc<str>, members: WeightedSplit<Endpoint>| {
        let mut c = Cluster::new(name.clone(), members, lb.policy);
        c.outlier = outlier.clone();
        c.panic_threshold = panic_threshold;
        c.breaker = names.breaker(&name, spec.circuit_breaker.as_ref());
        Arc::new(c)
    };
    let all = cluster(
        name.clone(),
        WeightedSplit::new(spec.endpoints.iter().flat_map(endpoints)),
    );
    let mut subsets: HashMap<&str, Arc<Cluster>> = HashMap::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        if s.name.is_empty() {
            return Err((
                format!("{at}.subsets[{i}].name"),
                "must not be empty".into(),
            ));
        }
        let members = spec
            .endpoints
            .iter()
            .filter(|e| s.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)));
        let c = cluster(
            format!("{name}/{}", s.name).into(),
            WeightedSplit::new(members.flat_map(endpoints)),
        );
        if subsets.insert(&s.name, c).is_some() {
            return Err((
                format!("{at}.subsets[{i}].name"),
                format!("subset `{}` is defined twice", s.name),
            ));
        }
    }
    let subset = |s: &Option<String>, field: String| -> Result<Arc<Cluster>, (String, String)> {
        match s {
            None => Ok(all.clone()),
            Some(s) => subsets.get(s.as_str()).cloned().ok_or_else(|| {
                let mut known: Vec<&str> = subsets.keys().copied().collect();
                known.sort_unstable();
                (
                    field,
                    format!("unknown subset `{s}` (defined: {})", known.join(", ")),
                )
            }),
        }
    };
    let mut routes = Vec::with_capacity(spec.routes.len());
    for (i, r) in spec.routes.iter().enumerate() {
        let rat = format!("{at}.routes[{i}]");
        let mut backends = Vec::with_capacity(r.backends.len());
        for (j, b) in r.backends.iter().enumerate() {
            backends.push((
                b.weight,
                subset(&b.subset, format!("{rat}.backends[{j}].subset"))?,
            ));
        }
        let backends = if backends.is_empty() {
            WeightedSplit::new([(1, all.clone())])
        } else {
            WeightedSplit::new(backends)
        };
        if backends.is_empty() {
            return Err((
                format!("{rat}.backends"),
                "every backend has weight 0: nothing could be routed".into(),
            ));
        }
        let route_name: Arc<str> = r
            .name
            .clone()
            .unwrap_or_else(|| format!("route-{i}"))
            .into();
        let mirror = match &r.mirror {
            Some(m) => {
                let percent = crate::traffic::check_percent(m.percent.unwrap_or(100.0))
                    .map_err(|e| (format!("{rat}.mirror.percent"), e))?;
                Some(Mirror {
                    cluster: subset(&m.subset, format!("{rat}.mirror.subset"))?,
                    percent,
                })
            }
            None => None,
        };
        let policy = RoutePolicy {
            retry: compile_retry(r.retry.as_ref().or(spec.retry.as_ref()), &rat)?,
            fault: r
                .fault
                .as_ref()
                .or(spec.fault.as_ref())
                .map(Fault::compile)
                .transpose()
                .map_err(|e| (format!("{rat}.fault"), e))?,
            rate_limit: r
                .rate_limit
                .as_ref()
                .map(|rl| {
                    check_rate_limit(rl, &format!("{rat}.rateLimit"))?;
                    Ok::<_, (String, String)>(names.bucket(
                        &name,
                        Some(&route_name),
                        TokenBucket::from_policy(rl),
                    ))
                })
                .transpose()?,
            mirror,
            grpc_timeout_max: r.grpc_timeout_max,
            idle_timeout: r.idle_timeout,
        };
        routes.push(Route {
            name: route_name,
            matches: compile_match(&r.matches, &format!("{rat}.match"))?,
            backends,
            timeout: r.timeout,
            hash: hash.clone(),
            policy,
        });
    }
    let default_policy = RoutePolicy {
        retry: compile_retry(spec.retry.as_ref(), at)?,
        fault: spec
            .fault
            .as_ref()
            .map(Fault::compile)
            .transpose()
            .map_err(|e| (format!("{at}.fault"), e))?,
        ..RoutePolicy::default()
    };
    let budget = Budget::from_policy(spec.retry.as_ref().and_then(|r| r.budget.as_ref()));
    if !(0.0..=1.0).contains(&budget.ratio) {
        return Err((
            format!("{at}.retry.budget.ratio"),
            format!(
                "{} is not a ratio between 0 and 1 (0.2 means 20%)",
                budget.ratio
            ),
        ));
    }
    let rate_limit = spec
        .rate_limit
        .as_ref()
        .map(|rl| {
            check_rate_limit(rl, &format!("{at}.rateLimit"))?;
            Ok::<_, (String, String)>(names.bucket(&name, None, TokenBucket::from_policy(rl)))
        })
        .transpose()?;
    Ok(ServiceDraft {
        budget: names.budget(&name, budget),
        rate_limit,
        name,
        protocol: spec.protocol,
        routes: routes.into(),
        default_route: Route {
            name: "default".into(),
            matches: RouteMatch::default(),
            backends: WeightedSplit::new([(1, all)]),
            timeout: None,
            hash,
            policy: default_policy,
        },
        domains: Vec::new(),
        authz,
    })
}

/// A retry policy, compiled; `at` is where it applies (its `retry` field is named in errors).
fn compile_retry(
    p: Option<&weft_core::policy::RetryPolicy>,
    at: &str,
) -> Result<Option<Retry>, (String, String)> {
    p.map(Retry::compile)
        .transpose()
        .map_err(|e| (format!("{at}.retry"), e))
}

fn check_rate_limit(rl: &weft_core::policy::RateLimit, at: &str) -> Result<(), (String, String)> {
    if rl.requests_per_second == 0 {
        return Err((
            format!("{at}.requestsPerSecond"),
            "must be at least 1".into(),
        ));
    }
    if rl.burst == Some(0) {
        return Err((format!("{at}.burst"), "must be at least 1".into()));
    }
    Ok(())
}

/// What a service's load balancer hashes, checked: `ring-hash` needs a key; a key with any
/// other policy keeps callers on one backend of a split (sticky canary) only.
fn compile_hash(lb: &LoadBalancer, at: &str) -> Result<Option<HashOn>, (String, String)> {
    let Some(h) = &lb.hash else {
        if lb.policy == LbPolicy::RingHash {
            return Err((
                format!("{at}.hash"),
                "`ring-hash` needs a hash key (`header`, `cookie` or `sourceIp`)".into(),
            ));
        }
        return Ok(None);
    };
    let at = format!("{at}.hash");
    match (&h.header, &h.cookie, h.source_ip == Some(true)) {
        (Some(name), None, false) => HeaderName::from_bytes(name.as_bytes())
            .map(|n| Some(HashOn::Header(n)))
            .map_err(|_| {
                (
                    format!("{at}.header"),
                    format!("`{name}` is not a header name"),
                )
            }),
        (None, Some(c), false) if !c.is_empty() => Ok(Some(HashOn::Cookie(c.as_str().into()))),
        (None, None, true) => Ok(Some(HashOn::SourceIp)),
        _ => Err((
            at,
            "set exactly one of `header`, `cookie` or `sourceIp: true`".into(),
        )),
    }
}

fn compile_match(m: &file::MatchSpec, at: &str) -> Result<RouteMatch, (String, String)> {
    let path = m
        .path
        .as_ref()
        .map(|p| compile_string_match(p, &format!("{at}.path"), false))
        .transpose()?;
    let method = m
        .method
        .as_ref()
        .map(|s| {
            Method::from_bytes(s.to_ascii_uppercase().as_bytes()).map_err(|_| {
                (
                    format!("{at}.method"),
                    format!("`{s}` is not an HTTP method"),
                )
            })
        })
        .transpose()?;
    let mut headers = Vec::with_capacity(m.headers.len());
    for (i, h) in m.headers.iter().enumerate() {
        let hat = format!("{at}.headers[{i}]");
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            (
                format!("{hat}.name"),
                format!("`{}` is not a header name", h.name),
            )
        })?;
        let value = compile_string_match(&h.value(), &hat, true)?;
        headers.push(HeaderMatch { name, value });
    }
    let mut query = Vec::with_capacity(m.query_params.len());
    for (i, q) in m.query_params.iter().enumerate() {
        let qat = format!("{at}.queryParams[{i}]");
        if q.name.is_empty() {
            return Err((format!("{qat}.name"), "must not be empty".into()));
        }
        query.push(QueryMatch {
            name: q.name.as_str().into(),
            value: compile_string_match(&q.value(), &qat, true)?,
        });
    }
    Ok(RouteMatch {
        path,
        method,
        headers,
        query,
    })
}

fn compile_string_match(
    m: &file::StringMatchSpec,
    at: &str,
    none_ok: bool,
) -> Result<StringMatch, (String, String)> {
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), None, None) => Ok(StringMatch::Exact(e.as_str().into())),
        (None, Some(p), None) => Ok(StringMatch::Prefix(p.as_str().into())),
        (None, None, Some(r)) => StringMatch::regex(r).map_err(|e| (format!("{at}.regex"), e)),
        (None, None, None) if none_ok => Ok(StringMatch::Any),
        _ => Err((
            at.to_string(),
            "set exactly one of `exact`, `prefix` or `regex`".into(),
        )),
    }
}

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
