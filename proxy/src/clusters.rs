//! The live state of concrete backends (clusters), outside the routes: each cluster's endpoint
//! set and balancer (swapped whole on an EDS or DNS change, one store, no route compiled),
//! the balancer's state per endpoint address (kept across swaps), outlier detection and the
//! breaker. Routes name clusters; a table swap hands them on by name (`table/names.rs`).

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;

use weft_core::policy::LbPolicy;

use crate::{
    balance::{Balancer, EndpointState, Outcome, Outlier},
    metrics::TargetMetrics,
    resilience::{Breaker, Limit, OverLimit, Permit},
    route::WeightedSplit,
};

/// A concrete backend: a balanced set of endpoints.
///
/// Its endpoints and their balancer are an [`EndpointSet`] held in an `ArcSwap`: when the
/// cluster's endpoints change (EDS), the set is replaced whole with one store and no route is
/// compiled again; requests pick from whichever set they loaded.
#[derive(Debug)]
pub struct Cluster {
    /// `host:port` or `host:port/subset`.
    pub name: Arc<str>,
    endpoints: ArcSwap<EndpointSet>,
    policy: LbPolicy,
    pub outlier: Option<Box<Outlier>>,
    /// Percent of endpoints that must be in service for ejections to count.
    pub panic_threshold: f64,
    pub breaker: Breaker,
    /// The host names its endpoints were configured with (resolved by the proxy).
    pub dns: Box<[Box<str>]>,
    /// A cluster a route names that does not exist (a Gateway API backendRef the control plane
    /// could not resolve): requests sent to it are answered this status.
    pub absent: Option<u16>,
}

/// A cluster's endpoints and the balancer over them.
#[derive(Debug)]
pub struct EndpointSet {
    pub endpoints: WeightedSplit<Endpoint>,
    balancer: Balancer,
}

impl std::ops::Deref for EndpointSet {
    type Target = WeightedSplit<Endpoint>;

    fn deref(&self) -> &WeightedSplit<Endpoint> {
        &self.endpoints
    }
}

impl EndpointSet {
    fn new(endpoints: WeightedSplit<Endpoint>, policy: LbPolicy) -> Self {
        let balancer = Balancer::new(policy, &endpoints, |e| e.addr.to_string());
        EndpointSet {
            endpoints,
            balancer,
        }
    }
}

impl Cluster {
    pub fn new(name: Arc<str>, endpoints: WeightedSplit<Endpoint>, policy: LbPolicy) -> Self {
        Cluster {
            name,
            endpoints: ArcSwap::from_pointee(EndpointSet::new(endpoints, policy)),
            policy,
            outlier: None,
            panic_threshold: crate::balance::DEFAULT_PANIC_THRESHOLD,
            breaker: Breaker::new(&Default::default(), None),
            dns: Box::default(),
            absent: None,
        }
    }

    /// A stand-in for a cluster that does not exist: no endpoints, every request answered
    /// `status`.
    pub fn absent(name: Arc<str>, status: u16) -> Self {
        let mut c = Cluster::new(name, WeightedSplit::new([]), LbPolicy::default());
        c.absent = Some(status);
        c
    }

    pub fn lb_policy(&self) -> LbPolicy {
        self.policy
    }

    /// The endpoints in force (hold the guard briefly).
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.endpoints.load()
    }

    /// Replaces the endpoints (and their balancer) with one store. Endpoints that stay keep
    /// their balancer state when the caller passes their states on (see `Names`).
    pub fn set_endpoints(&self, endpoints: WeightedSplit<Endpoint>) {
        self.endpoints
            .store(Arc::new(EndpointSet::new(endpoints, self.policy)));
    }

    /// The endpoint for a request with hash key `hash` (see `HashOn`), skipping ejected
    /// ones unless too few are left in service (the panic threshold).
    pub fn pick(&self, hash: Option<u64>, metrics: &TargetMetrics) -> Option<Picked> {
        self.pick_in(&self.endpoints.load(), hash, metrics)
            .map(Picked::of)
    }

    fn pick_in<'s>(
        &self,
        set: &'s EndpointSet,
        hash: Option<u64>,
        metrics: &TargetMetrics,
    ) -> Option<&'s Endpoint> {
        let eps = &set.endpoints;
        let i = set.balancer.pick(eps, |e| &*e.state, hash)?;
        let ep = eps.get(i)?;
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
        let n = eps.len();
        let mut in_service = 0;
        let mut next = None;
        for k in 1..n {
            let j = (i + k) % n;
            let e = eps.get(j)?;
            if e.state.return_if_due(now) {
                metrics.returned();
            }
            if !e.state.ejected(now) {
                in_service += 1;
                next.get_or_insert(e);
            }
        }
        if self.panicking(in_service, n) {
            return Some(ep);
        }
        next
    }

    /// Whether so few of `n` endpoints are in service (below the panic threshold) that
    /// ejections are ignored.
    fn panicking(&self, in_service: usize, n: usize) -> bool {
        (in_service as f64) * 100.0 < self.panic_threshold * n as f64
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
    ) -> Option<Picked> {
        let set = self.endpoints.load();
        let eps = &set.endpoints;
        let first = self.pick_in(&set, hash, metrics)?;
        if first.addr != avoid || eps.len() < 2 {
            return Some(Picked::of(first));
        }
        // The balancer chose the endpoint that just failed (a fast failure looks cheap to it):
        // one of the others, drawn by weight; ejected ones only when too few are in service
        // (the panic threshold, as `pick` has it). Only when there is none, the same again.
        let now = crate::balance::now_ms();
        let n = eps.len();
        let in_service = eps.iter().filter(|e| !e.state.ejected(now)).count();
        let panicking = self.panicking(in_service, n);
        let candidate = |i: usize| {
            let e = eps.get(i)?;
            (e.addr != avoid && (panicking || !e.state.ejected(now))).then(|| (e, eps.weight_at(i)))
        };
        let total: u64 = (0..n).filter_map(candidate).map(|(_, w)| w).sum();
        if total == 0 {
            return Some(Picked::of(first));
        }
        let mut draw = fastrand::u64(..total);
        (0..n)
            .filter_map(candidate)
            .find_map(|(e, w)| {
                if draw < w {
                    Some(e)
                } else {
                    draw -= w;
                    None
                }
            })
            .map(Picked::of)
    }

    /// Feeds a request's outcome to outlier detection, ejecting the endpoint when it calls
    /// for it and the cluster's share of ejected endpoints allows (one always may be).
    pub fn observe(&self, ep: &EndpointState, outcome: Outcome, metrics: &TargetMetrics) {
        let Some(cfg) = &self.outlier else { return };
        let now = crate::balance::now_ms();
        if !ep.record(outcome, cfg, now) {
            return;
        }
        let set = self.endpoints.load();
        let n = set.len() as u64;
        let ejected = set.iter().filter(|e| e.state.ejected(now)).count() as u64;
        if ejected == 0 || (ejected + 1) * 100 <= u64::from(cfg.max_ejection_percent) * n {
            let time = ep.eject(cfg, now);
            metrics.ejection();
            tracing::info!(cluster = %self.name, endpoint = %ep.addr, ?time, "outlier detection ejected an endpoint");
        }
    }
}

/// What a request takes of the endpoint chosen for it (the set it came from may be replaced
/// while the request is under way).
#[derive(Debug)]
pub struct Picked {
    pub addr: SocketAddr,
    pub identity: Option<Arc<str>>,
    pub state: Arc<EndpointState>,
}

impl Picked {
    fn of(e: &Endpoint) -> Self {
        Picked {
            addr: e.addr,
            identity: e.identity.clone(),
            state: e.state.clone(),
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
