//! The routing [`Table`] from Envoy v3 xDS resources, as weft's control plane emits them: a
//! Listener per service (`host:port`, with an HttpConnectionManager that takes its routes over
//! RDS), its RouteConfiguration, and the Clusters and ClusterLoadAssignments its routes name.
//! weft's own settings are read from filter metadata under the `weft` key.
//!
//! Two phases, as ztunnel applies xDS: each resource is converted once, when it arrives
//! ([`convert`]: checked, into weft's types; a bad one is rejected on its own), and the
//! converted resources are linked into services here: a Listener's RouteConfiguration, the
//! clusters its routes name and their endpoints. [`Incremental`] links only what an update
//! touches.

use std::{collections::BTreeMap, sync::Arc};

use weft_xds_proto::envoy::config::{
    cluster::v3::Cluster as XdsCluster, endpoint::v3::ClusterLoadAssignment,
    listener::v3::Listener, route::v3::RouteConfiguration,
};

pub mod convert;
mod edits;
mod incremental;
mod policy;
mod refused;
mod spec;

pub use incremental::{Changed, Incremental};
pub use refused::{Reason, Refused};
pub use spec::{ClusterSpec, EndpointSpec, Endpoints, ListenerSpec, RouteConfigSpec, RouteSpec};

use super::{
    Cluster, Endpoint, Guard, Mirror, Names, Route, RoutePolicy, ServiceDraft, Table, canonical,
    index::Entry,
};
use crate::{
    metrics::Metrics,
    resilience::TokenBucket,
    resolve::Resolved,
    retry::Budget,
    route::{RouteMatch, WeightedSplit},
};

/// The resources a proxy holds, converted, by name. A name is allocated once, when its
/// resource arrives; the client's versions and the compiler's dependencies share it.
#[derive(Debug, Default)]
pub struct Resources {
    pub listeners: BTreeMap<Arc<str>, ListenerSpec>,
    pub routes: BTreeMap<Arc<str>, RouteConfigSpec>,
    pub clusters: BTreeMap<Arc<str>, ClusterSpec>,
    pub endpoints: BTreeMap<Arc<str>, Endpoints>,
}

/// Decoded resources by name, as a control plane sends them: what tests and benchmarks build
/// and change; the proxy itself keeps only [`Resources`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Protos {
    pub listeners: BTreeMap<String, Listener>,
    pub routes: BTreeMap<String, RouteConfiguration>,
    pub clusters: BTreeMap<String, XdsCluster>,
    pub endpoints: BTreeMap<String, ClusterLoadAssignment>,
}

impl Protos {
    /// Each resource converted; one that does not convert is left out, as the client leaves
    /// out a resource it rejects.
    pub fn convert(&self) -> Resources {
        fn each<P, S>(
            m: &BTreeMap<String, P>,
            f: impl Fn(&P) -> Result<S, Refused>,
        ) -> BTreeMap<Arc<str>, S> {
            m.iter()
                .filter_map(|(k, v)| Some((Arc::from(k.as_str()), f(v).ok()?)))
                .collect()
        }
        Resources {
            listeners: each(&self.listeners, convert::listener),
            routes: each(&self.routes, convert::route_config),
            clusters: each(&self.clusters, convert::cluster),
            endpoints: each(&self.endpoints, convert::load_assignment),
        }
    }
}

/// Checks a Listener on its own: what a proxy NACKs when it arrives.
pub fn check_listener(l: &Listener) -> Result<(), Refused> {
    convert::listener(l).map(drop)
}

/// Checks a RouteConfiguration on its own (matches, regexes, actions); the clusters it names
/// may arrive later.
pub fn check_route_config(rc: &RouteConfiguration) -> Result<(), Refused> {
    convert::route_config(rc).map(drop)
}

/// Checks a Cluster on its own (and the endpoints it lists itself).
pub fn check_cluster(c: &XdsCluster) -> Result<(), Refused> {
    convert::cluster(c).map(drop)
}

/// Checks a ClusterLoadAssignment on its own (addresses and ports).
pub fn check_load_assignment(cla: &ClusterLoadAssignment) -> Result<(), Refused> {
    convert::load_assignment(cla).map(drop)
}

/// A table compiled from xDS resources, and the listeners it could not compile yet.
#[derive(Debug)]
pub struct Compiled {
    pub table: Table,
    /// `Listener `name`: what it waits for`, one per listener that kept its previous service
    /// (or, new, is left out) because something it references has not arrived.
    pub held_back: Vec<String>,
}

/// Compiles a whole set of decoded resources into a table (tests and benchmarks; the client
/// converts each resource as it arrives and compiles with [`Incremental`]).
///
/// xDS delivers one type at a time, and a control plane may drop a cluster before the route that
/// names it: a listener whose RouteConfiguration, clusters or load assignments are not all
/// there keeps its service from `previous` (the table in force), so requests never see a
/// half-updated service; a new one is left out until it is complete.
pub fn compile(
    res: &Protos,
    version: Arc<str>,
    generation: u64,
    metrics: &Arc<Metrics>,
    previous: &Table,
    dns: &Resolved,
) -> Compiled {
    Incremental::default().update(
        &res.convert(),
        &Changed::default(),
        version,
        generation,
        metrics,
        previous,
        dns,
    )
}

/// The endpoints a load assignment lists, as the table holds them: a host name stands for
/// every address it resolved to, and each address gets its balancer state from the table in
/// force.
fn endpoints(specs: &[EndpointSpec], names: &Names) -> Vec<(u32, Endpoint)> {
    let mut eps = Vec::with_capacity(specs.len());
    for e in specs {
        eps.extend(
            names
                .endpoints(&e.addr, &e.labels, &e.identity)
                .into_iter()
                .map(|ep| (e.weight, ep)),
        );
    }
    eps
}

/// The endpoints of cluster `name`: its own (STATIC, DNS) or its load assignment's (EDS);
/// `None` while they have not arrived.
fn cluster_endpoints<'r>(name: &str, res: &'r Resources) -> Option<&'r [EndpointSpec]> {
    match &res.clusters.get(name)?.inline {
        Some(eps) => Some(eps),
        None => res.endpoints.get(name).map(|e| &e[..]),
    }
}

/// A cluster with its endpoints, if both have arrived: the one made for another route of
/// this compile, or the one built from the resources as they are now (see
/// `Names::reusing`), else made now.
fn cluster(name: &str, res: &Resources, names: &Names) -> Result<Arc<Cluster>, String> {
    let Some((key, c)) = res.clusters.get_key_value(name) else {
        return Err(format!("cluster `{name}` has not been received"));
    };
    let Some(specs) = cluster_endpoints(name, res) else {
        return Err(format!(
            "cluster `{name}`: its ClusterLoadAssignment has not been received"
        ));
    };
    if let Some(c) = names.cluster(name) {
        return Ok(c);
    }
    let eps = endpoints(specs, names);
    // Named by the resource's own name: one allocation.
    let mut cluster = Cluster::new(key.clone(), WeightedSplit::new(eps), c.lb);
    cluster.dns = names.take_used();
    cluster.outlier = c.outlier.clone();
    cluster.panic_threshold = c.panic_threshold;
    cluster.breaker = names.breaker(name, c.breaker.as_deref());
    let cluster = Arc::new(cluster);
    names.built(&cluster);
    Ok(cluster)
}

/// Replaces the endpoints of `cluster` (the EDS cluster built from the resources as they are
/// now) with its newest ClusterLoadAssignment, in place: no route is compiled again. `false`
/// when there is no assignment to take (the services using it are then compiled again).
fn swap_endpoints(cluster: &Cluster, res: &Resources, names: &Names) -> bool {
    let name = &*cluster.name;
    let (Some(c), Some(cla)) = (res.clusters.get(name), res.endpoints.get(name)) else {
        return false;
    };
    if c.inline.is_some() {
        return false;
    }
    cluster.set_endpoints(WeightedSplit::new(endpoints(cla, names)));
    // Its host names (none: EDS has addresses) are the cluster's, counted there.
    names.take_used();
    true
}

fn route(spec: &RouteSpec, service: &str, res: &Resources, names: &Names) -> Result<Route, String> {
    let name = &spec.name;
    let at = |e: String| format!("route `{name}`: {e}");
    let mut backends = Vec::with_capacity(spec.backends.len());
    let mut backend_headers = Vec::new();
    for (i, (weight, c)) in spec.backends.iter().enumerate() {
        // Only the backends that get traffic are in the split: their header changes with them.
        if *weight == 0 {
            continue;
        }
        if let Some(h) = spec.backend_headers.get(i) {
            backend_headers.push(h.clone());
        }
        let to = match (spec.missing_status, res.clusters.contains_key(&**c)) {
            // A backend the control plane could not resolve: its share is answered `status`.
            (Some(status), false) => Arc::new(Cluster::absent(c.clone(), status)),
            _ => cluster(c, res, names).map_err(at)?,
        };
        backends.push((*weight, to));
    }
    let mirror = match &spec.mirror {
        Some((c, percent)) => Some(Mirror {
            cluster: cluster(c, res, names).map_err(at)?,
            percent: *percent,
        }),
        None => None,
    };
    let rate_limit = (spec.rate_limit.as_ref())
        .map(|b| names.bucket(service, Some(name), TokenBucket::new(b.rate, b.burst)));
    // The conversion's policy, shared, unless the compile resolved a part of it.
    let policy = if rate_limit.is_none() && mirror.is_none() {
        spec.policy.clone()
    } else {
        Arc::new(RoutePolicy {
            rate_limit,
            mirror,
            ..RoutePolicy::clone(&spec.policy)
        })
    };
    Ok(Route {
        name: name.clone(),
        matches: spec.matches.clone(),
        backends: WeightedSplit::new(backends),
        policy,
        metrics: Box::default(),
        backend_headers: if backend_headers.iter().any(Option::is_some) {
            backend_headers.into()
        } else {
            Box::default()
        },
    })
}

/// One listener's service (without metrics handles yet).
fn service(
    name: &Arc<str>,
    l: &ListenerSpec,
    res: &Resources,
    names: &Names,
) -> Result<ServiceDraft, String> {
    let rds = &l.rds;
    let rc = res
        .routes
        .get(&**rds)
        .ok_or_else(|| format!("RouteConfiguration `{rds}` has not been received"))?;
    let routes = rc
        .routes
        .iter()
        .map(|r| route(r, name, res, names))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("RouteConfiguration `{rds}`: {e}"))?;
    let all = res
        .clusters
        .contains_key(&**name)
        .then(|| cluster(name, res, names))
        .transpose()?;
    let default_backends = match all {
        Some(c) => WeightedSplit::new([(1, c)]),
        None => WeightedSplit::new([]),
    };
    let mut domains = rc.domains.to_vec();
    domains.extend(l.vip.clone());
    let rate_limit = rc
        .rate_limit
        .as_ref()
        .map(|b| names.bucket(name, None, TokenBucket::new(b.rate, b.burst)));
    let (ratio, min) = res.clusters.get(&**name).map_or_else(
        || {
            let d = Budget::from_policy(None);
            (d.ratio, d.min_per_second)
        },
        |c| c.budget,
    );
    Ok(ServiceDraft {
        budget: names.budget(name, Budget::new(ratio, min)),
        rate_limit,
        name: name.clone(),
        protocol: l.protocol,
        routes: routes.into(),
        default_route: Route {
            name: Route::default_name(),
            matches: RouteMatch::any(),
            backends: default_backends,
            policy: RoutePolicy::none(),
            metrics: Box::default(),
            backend_headers: Box::default(),
        },
        strict: true,
        domains,
        authz: l.authz.clone(),
    })
}

/// One Listener's entry in the table, and why it was held back if it was: a listener whose
/// RouteConfiguration, clusters or load assignments are not all there keeps its service from
/// `previous`, and a new one is left out (only its authorization guard applies).
fn listener(
    name: &Arc<str>,
    l: &ListenerSpec,
    res: &Resources,
    names: &Names,
    metrics: &Arc<Metrics>,
    previous: &Table,
) -> (Option<Entry>, Option<String>) {
    let built = service(name, l, res, names);
    // Who may call the service does not wait for its routes: the newest Listener's policy.
    let guard = l
        .authz
        .clone()
        .and_then(|a| guard(name, a, res, names, previous));
    let guard_dns = names.take_used();
    let (service, held) = match built {
        Ok(draft) => (Some(Arc::new(draft.finish(metrics))), None),
        Err(e) => (
            previous.service(name).cloned(),
            Some(format!("Listener `{name}`: {e}")),
        ),
    };
    let entry =
        (service.is_some() || guard.is_some()).then(|| Entry::new(service, guard, guard_dns));
    (entry, held)
}

/// A Listener's entry again after the endpoints of its clusters changed in place (see
/// [`swap_endpoints`]): the same service, no route compiled; its endpoint index and guard
/// brought up to date.
fn refreshed(name: &Arc<str>, res: &Resources, names: &Names, previous: &Table) -> Option<Entry> {
    let old = previous.index.entry(name)?;
    let guard = old
        .guard
        .as_ref()
        .and_then(|g| guard(name, g.authz.clone(), res, names, previous));
    Some(Entry::new(old.service.clone(), guard, names.take_used()))
}

/// A service's policy over every address of the cluster of all its endpoints (named as the
/// Listener), healthy or not; while that cluster or its endpoints are missing, over the
/// addresses the table in force guarded for it. `None` when neither is known.
fn guard(
    name: &Arc<str>,
    authz: Arc<crate::authz::Authz>,
    res: &Resources,
    names: &Names,
    previous: &Table,
) -> Option<Guard> {
    let endpoints = match cluster_endpoints(name, res) {
        Some(specs) => endpoints(specs, names)
            .into_iter()
            .map(|(_, e)| canonical(e.addr))
            .collect(),
        None => previous.guard(name)?.endpoints.clone(),
    };
    Some(Guard {
        service: name.clone(),
        authz,
        endpoints,
    })
}
