//! The table's indexes, kept up to date one service at a time.
//!
//! Every service (or, for a Listener held back, only its authorization guard) is an [`Entry`]
//! under its name. [`Index::put`] replaces one entry and changes only what it touches: the
//! claims on its authorities, bare host names and VIPs, and the entries of its endpoint
//! addresses. All of it lives in [`ShardMap`]s, so a table changed in one service shares
//! almost everything with the one in force: a change costs what it touches, not the mesh.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use super::{Cluster, Guard, Service, canonical, shards::ShardMap};
use crate::balance::EndpointState;

/// Service names, sorted; the first kept inline.
pub(crate) type Names = smallvec::SmallVec<[Arc<str>; 1]>;

/// An endpoint of an entry: its canonical address, identity and balancer state.
type Member = (SocketAddr, Option<Arc<str>>, Arc<EndpointState>);

/// What the table holds under one service name.
#[derive(Debug)]
pub(crate) struct Entry {
    /// `None` for a Listener held back before it ever compiled: only its guard applies.
    pub service: Option<Arc<Service>>,
    pub guard: Option<Arc<Guard>>,
    /// The distinct clusters the service's routes send to, and those its mirrors copy to.
    clusters: Box<[Arc<Cluster>]>,
    /// Every endpoint the routes send to (mirrors aside) by canonical address (sorted, one per
    /// address, one that proves an identity first): its identity and balancer state.
    endpoints: Box<[Member]>,
    /// The endpoint host names its clusters and guard use (sorted, once each).
    dns: Box<[Box<str>]>,
}

impl Entry {
    /// `guard_dns`: the host names the guard's addresses came from.
    pub fn new(
        service: Option<Arc<Service>>,
        guard: Option<Guard>,
        guard_dns: Box<[Box<str>]>,
    ) -> Self {
        let mut clusters: Vec<Arc<Cluster>> = Vec::new();
        let mut endpoints = Vec::new();
        if let Some(svc) = &service {
            let routes = || std::iter::once(&svc.default_route).chain(svc.routes.iter());
            for c in routes().flat_map(|r| r.backends.iter()) {
                if clusters.iter().any(|k| Arc::ptr_eq(k, c)) {
                    continue;
                }
                clusters.push(c.clone());
                for e in c.endpoints().iter() {
                    endpoints.push((canonical(e.addr), e.identity.clone(), e.state.clone()));
                }
            }
            for m in routes().filter_map(|r| r.policy.mirror.as_ref()) {
                if !clusters.iter().any(|k| Arc::ptr_eq(k, &m.cluster)) {
                    clusters.push(m.cluster.clone());
                }
            }
        }
        // An address two clusters list: the identity one of them names wins.
        endpoints.sort_by_key(|e| (e.0, e.1.is_none()));
        endpoints.dedup_by_key(|e| e.0);
        let mut dns: Vec<Box<str>> = clusters
            .iter()
            .flat_map(|c| c.dns.iter().cloned())
            .chain(guard_dns)
            .collect();
        dns.sort_unstable();
        dns.dedup();
        Entry {
            service,
            guard: guard.map(Arc::new),
            clusters: clusters.into(),
            endpoints: endpoints.into(),
            dns: dns.into(),
        }
    }

    /// The host names its endpoints (and its guard's) are known by.
    pub fn dns_names(&self) -> &[Box<str>] {
        &self.dns
    }

    fn endpoint(&self, addr: SocketAddr) -> Option<&Member> {
        let i = self.endpoints.binary_search_by_key(&addr, |e| e.0).ok()?;
        self.endpoints.get(i)
    }

    fn domains(&self) -> &[Arc<str>] {
        self.service.as_ref().map_or(&[], |s| &s.domains)
    }

    fn guarded(&self) -> &[SocketAddr] {
        self.guard.as_ref().map_or(&[], |g| &g.endpoints)
    }
}

/// The services that declare one authority, bare host or VIP, and the one it reaches.
#[derive(Debug, Clone, Default)]
pub(crate) struct Claim {
    /// Sorted; one, nearly always (inline).
    names: Names,
    pub service: Option<Arc<Service>>,
    /// Bare hosts: the VIP every claiming service that has one agrees on.
    pub vip: Option<std::net::IpAddr>,
}

/// Who has an endpoint at one address, and what guards it.
#[derive(Debug, Clone, Default)]
pub(crate) struct AddrEntry {
    /// Services routing to the address (sorted; one, nearly always).
    pub services: Names,
    /// Guards covering the address, by service name.
    pub guards: Vec<Arc<Guard>>,
    pub identity: Option<Arc<str>>,
    /// One balancer state per address, shared by every cluster that has it.
    pub state: Option<Arc<EndpointState>>,
}

/// Which index a service's domain belongs in.
enum Domain {
    Authority,
    Host,
    Vip(SocketAddr),
}

fn domain(d: &str) -> Domain {
    if let Ok(vip) = d.parse::<SocketAddr>() {
        Domain::Vip(vip)
    } else if d.contains(':') {
        Domain::Authority
    } else {
        Domain::Host
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Index {
    entries: ShardMap<Arc<str>, Arc<Entry>>,
    /// `host:port`: the first claiming service by name.
    /// A key is the domain of the service that claimed it first (no copy of its own).
    authorities: ShardMap<Arc<str>, Claim>,
    /// Bare host names: the service when exactly one claims it.
    hosts: ShardMap<Arc<str>, Claim>,
    /// `vip:port`: the last claiming service by name.
    vips: ShardMap<SocketAddr, Claim>,
    addrs: ShardMap<SocketAddr, AddrEntry>,
    /// Clusters by name, with how many entries use each.
    clusters: ShardMap<Arc<str>, (Arc<Cluster>, u32)>,
    /// Endpoint host names the entries use, with how many entries use each.
    dns: Arc<BTreeMap<Box<str>, u32>>,
    /// Entries that have a service.
    services: usize,
}

impl Index {
    pub fn entry(&self, name: &str) -> Option<&Arc<Entry>> {
        self.entries.get(name)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.entries.values()
    }

    pub fn service_count(&self) -> usize {
        self.services
    }

    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.entry(name)?.service.as_ref()
    }

    pub fn authority(&self, a: &str) -> Option<&Arc<Service>> {
        self.authorities.get(a)?.service.as_ref()
    }

    pub fn host(&self, h: &str) -> Option<&Claim> {
        self.hosts.get(h)
    }

    pub fn vip(&self, addr: &SocketAddr) -> Option<&Arc<Service>> {
        self.vips.get(addr)?.service.as_ref()
    }

    pub fn addr(&self, addr: &SocketAddr) -> Option<&AddrEntry> {
        self.addrs.get(addr)
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name).map(|(c, _)| c)
    }

    pub fn dns_names(&self) -> impl Iterator<Item = &Box<str>> {
        self.dns.keys()
    }

    /// Replaces the entry under `name` (`None` removes it), and every index entry it touches.
    pub fn put(&mut self, name: &Arc<str>, new: Option<Entry>) {
        let new = new.map(Arc::new);
        let old = match &new {
            Some(e) => self.entries.insert(name.clone(), e.clone()),
            None => self.entries.remove(&**name),
        };
        let (old, new) = (old.as_deref(), new.as_deref());
        let has = |e: Option<&Entry>| usize::from(e.is_some_and(|e| e.service.is_some()));
        self.services = self.services + has(new) - has(old);
        let mut domains: Vec<(&Arc<str>, bool)> = Vec::new();
        for (e, present) in [(old, false), (new, true)] {
            for d in e.map_or(&[][..], Entry::domains) {
                domains.retain(|(x, _)| **x != *d);
                domains.push((d, present));
            }
        }
        for (d, present) in domains {
            self.claim(d, name, present);
        }
        let mut addrs: Vec<SocketAddr> = [old, new]
            .into_iter()
            .flatten()
            .flat_map(|e| {
                e.endpoints
                    .iter()
                    .map(|x| x.0)
                    .chain(e.guarded().iter().copied())
            })
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        for a in addrs {
            self.address(a, name);
        }
        self.use_clusters(old, -1);
        self.use_clusters(new, 1);
    }

    /// Adds or removes `name`'s claim on domain `d` and settles who it reaches.
    fn claim(&mut self, d: &Arc<str>, name: &Arc<str>, present: bool) {
        let kind = domain(d);
        let mut c = match &kind {
            Domain::Authority => self.authorities.get(d),
            Domain::Host => self.hosts.get(d),
            Domain::Vip(v) => self.vips.get(v),
        }
        .cloned()
        .unwrap_or_default();
        match (c.names.binary_search(name), present) {
            (Err(i), true) => c.names.insert(i, name.clone()),
            (Ok(i), false) => {
                c.names.remove(i);
            }
            _ => {}
        }
        let service = |n: Option<&Arc<str>>| n.and_then(|n| self.service(n)).cloned();
        c.service = match &kind {
            Domain::Authority => service(c.names.first()),
            Domain::Host if c.names.len() == 1 => service(c.names.first()),
            Domain::Host => None,
            Domain::Vip(_) => service(c.names.last()),
        };
        if let Domain::Host = kind {
            let mut vips = c.names.iter().filter_map(|n| {
                self.service(n)?
                    .domains
                    .iter()
                    .find_map(|d| d.parse::<SocketAddr>().ok())
                    .map(|a| a.ip())
            });
            let first = vips.next();
            c.vip = first.filter(|v| vips.all(|o| o == *v));
        }
        let keep = (!c.names.is_empty()).then_some(c);
        match kind {
            Domain::Authority => self.authorities.update(d.clone(), |_| keep),
            Domain::Host => self.hosts.update(d.clone(), |_| keep),
            Domain::Vip(v) => self.vips.update(v, |_| keep),
        }
    }

    /// Settles the entry of address `a` after `name`'s entry changed.
    fn address(&mut self, a: SocketAddr, name: &Arc<str>) {
        let mut x = self.addrs.get(&a).cloned().unwrap_or_default();
        let entry = self.entries.get(&**name);
        let routed = entry.is_some_and(|e| e.endpoint(a).is_some());
        match (x.services.binary_search(name), routed) {
            (Err(i), true) => x.services.insert(i, name.clone()),
            (Ok(i), false) => {
                x.services.remove(i);
            }
            _ => {}
        }
        x.guards.retain(|g| g.service != *name);
        if let Some(g) = entry.and_then(|e| e.guard.as_ref())
            && g.endpoints.contains(&a)
        {
            let i = x.guards.partition_point(|o| o.service < g.service);
            x.guards.insert(i, g.clone());
        }
        let members = || {
            x.services
                .iter()
                .filter_map(|n| self.entries.get(&**n)?.endpoint(a))
        };
        x.identity = members().find_map(|e| e.1.clone());
        x.state = members().next().map(|e| e.2.clone());
        let keep = (!x.services.is_empty() || !x.guards.is_empty()).then_some(x);
        self.addrs.update(a, |_| keep);
    }

    fn use_clusters(&mut self, e: Option<&Entry>, by: i32) {
        let Some(e) = e else { return };
        for c in e.clusters.iter() {
            self.clusters.update(c.name.clone(), |old| {
                let n = old.map_or(0, |(_, n)| *n).saturating_add_signed(by);
                // The newest cluster under a name is the one the next table counts on from.
                let cluster = match old {
                    Some((o, _)) if by < 0 => o.clone(),
                    _ => c.clone(),
                };
                (n > 0).then_some((cluster, n))
            });
        }
        if e.dns.is_empty() {
            return;
        }
        let dns = Arc::make_mut(&mut self.dns);
        for h in e.dns.iter() {
            match dns.get(h).copied().unwrap_or(0).saturating_add_signed(by) {
                0 => dns.remove(h),
                n => dns.insert(h.clone(), n),
            };
        }
    }
}
