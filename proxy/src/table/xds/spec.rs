//! What the proxy keeps of each xDS resource: weft's own types, converted once when the
//! resource arrives (see [`super::convert`]).

use std::{collections::BTreeMap, sync::Arc};

use weft_core::{
    address::EndpointAddress,
    policy::{CircuitBreaker, LbPolicy},
};

use crate::{
    authz::Authz,
    balance::Outlier,
    resilience::TokenBucket,
    route::RouteMatch,
    table::{Protocol, RoutePolicy},
};

/// A Listener: the service it stands for.
#[derive(Debug)]
pub struct ListenerSpec {
    /// The RouteConfiguration its routes come from (RDS).
    pub rds: Arc<str>,
    pub protocol: Protocol,
    /// `vip:port`, when the service has a VIP.
    pub vip: Option<Arc<str>>,
    /// Who may call the service (`None`: everyone).
    pub authz: Option<Arc<Authz>>,
}

/// A RouteConfiguration: its first virtual host.
#[derive(Debug)]
pub struct RouteConfigSpec {
    /// Lower case.
    pub domains: Box<[Arc<str>]>,
    pub routes: Box<[RouteSpec]>,
    /// The service's own rate limit (settings; the bucket in force is kept when they stay).
    pub rate_limit: Option<Box<TokenBucket>>,
}

/// One route of a RouteConfiguration, with the clusters it names (not yet resolved). Its match
/// and policy are shared with the routes compiled from it.
#[derive(Debug)]
pub struct RouteSpec {
    pub name: Arc<str>,
    pub matches: Arc<RouteMatch>,
    /// Cluster names with their weights.
    pub backends: Box<[(u32, Arc<str>)]>,
    /// Everything but the rate limit and the mirror (which the compile resolves: a bucket,
    /// a cluster); [`RoutePolicy::none`] when the route sets nothing.
    pub policy: Arc<RoutePolicy>,
    pub rate_limit: Option<Box<TokenBucket>>,
    /// The cluster copies go to, and the percent of requests copied.
    pub mirror: Option<(Arc<str>, f64)>,
    /// What a backend whose cluster does not exist answers (`cluster_not_found_response_code`,
    /// when the route sets it: 404 or 500); `None`: such a route is refused, as before.
    pub missing_status: Option<u16>,
    /// Each backend's own header changes, in `backends`' order (empty: none has any).
    pub backend_headers: Box<[Option<Arc<crate::table::RouteHeaders>>]>,
}

/// A Cluster: how it balances and protects its endpoints, and the endpoints it lists itself.
#[derive(Debug)]
pub struct ClusterSpec {
    pub lb: LbPolicy,
    pub outlier: Option<Box<Outlier>>,
    pub panic_threshold: f64,
    pub breaker: Option<Box<CircuitBreaker>>,
    /// The retry budget of the service named as the cluster: ratio and minimum per second.
    pub budget: (f64, u32),
    /// STATIC and DNS clusters: their own endpoints; EDS clusters: `None`.
    pub inline: Option<Endpoints>,
}

/// A load assignment's endpoints.
pub type Endpoints = Box<[EndpointSpec]>;

/// One endpoint of a load assignment.
#[derive(Debug)]
pub struct EndpointSpec {
    /// 0 for an endpoint not healthy.
    pub weight: u32,
    /// An address, or (DNS clusters only) a host name and port.
    pub addr: EndpointAddress,
    pub labels: Arc<BTreeMap<String, String>>,
    /// The SPIFFE id it proves, when it is meshed.
    pub identity: Option<Arc<str>>,
}
