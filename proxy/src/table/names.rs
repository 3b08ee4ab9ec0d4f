//! Endpoint addresses as a compile sees them, and the state it carries on from the table in
//! force (balancer state, breakers, budgets, buckets, clusters).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
};

use weft_core::address::EndpointAddress;

use super::{Cluster, Endpoint, Service, Table, canonical};
use crate::{
    balance::EndpointState,
    resilience::{Breaker, TokenBucket},
    resolve::Resolved,
    retry::Budget,
};

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
    /// Clusters made during this compile, one per name, shared by every route naming it
    /// (xDS).
    built: std::cell::RefCell<HashMap<Arc<str>, Arc<Cluster>>>,
    /// Clusters built from the resources as they are now, which may be used again.
    reuse: Option<&'a HashMap<Arc<str>, Arc<Cluster>>>,
}

impl<'a> Names<'a> {
    pub(crate) fn new(resolved: &'a Resolved, previous: &'a Table) -> Self {
        Names {
            resolved,
            previous,
            used: Default::default(),
            fresh: Default::default(),
            built: Default::default(),
            reuse: None,
        }
    }

    /// Lets the clusters of `current` (built from the resources as they are now) be used
    /// again as they are.
    pub(crate) fn reusing(mut self, current: &'a HashMap<Arc<str>, Arc<Cluster>>) -> Self {
        self.reuse = Some(current);
        self
    }

    /// The cluster named `name` if this compile made it already, or one that may be used
    /// again.
    pub(crate) fn cluster(&self, name: &str) -> Option<Arc<Cluster>> {
        if let Some(c) = self.built.borrow().get(name) {
            return Some(c.clone());
        }
        self.reuse?.get(name).cloned()
    }

    /// Records a cluster this compile made, for the other routes naming it.
    pub(crate) fn built(&self, c: &Arc<Cluster>) {
        self.built.borrow_mut().insert(c.name.clone(), c.clone());
    }

    /// The clusters this compile made.
    pub(crate) fn take_built(&self) -> HashMap<Arc<str>, Arc<Cluster>> {
        std::mem::take(&mut *self.built.borrow_mut())
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
        self.previous.index.service(name)
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
        Breaker::new(
            p.unwrap_or(&default),
            self.previous.index.cluster(cluster).map(|c| &c.breaker),
        )
    }

    fn state(&self, addr: SocketAddr) -> Arc<EndpointState> {
        if let Some(s) = self
            .previous
            .index
            .addr(&canonical(addr))
            .and_then(|a| a.state.as_ref())
        {
            return s.clone();
        }
        self.fresh
            .borrow_mut()
            .entry(addr)
            .or_insert_with(|| Arc::new(EndpointState::new(addr)))
            .clone()
    }

    /// The host names asked about since the last call: those of the cluster just built.
    pub(crate) fn take_used(&self) -> Box<[Box<str>]> {
        std::mem::take(&mut *self.used.borrow_mut())
            .into_iter()
            .collect()
    }
}
