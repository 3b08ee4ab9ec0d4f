//! Compiling a routing [`Table`] from Envoy v3 xDS resources, as weft's control plane emits
//! them: a Listener per service (`host:port`, with an HttpConnectionManager that takes its routes
//! over RDS), its RouteConfiguration, and the Clusters and ClusterLoadAssignments its routes
//! name. weft's own settings are read from filter metadata under the `weft` key.
//!
//! Conversion happens outside any lock and rejects the whole set when a resource is bad; each
//! error names the resource, so the caller can NACK with it and keep the table in force.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use http::{HeaderName, Method};
use prost::Message;
use weft_xds_proto::{
    envoy::{
        config::{
            cluster::v3::{
                Cluster as XdsCluster,
                cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy as EnvoyLb},
            },
            core::v3::{HealthStatus, Metadata, address, socket_address::PortSpecifier},
            endpoint::v3::{ClusterLoadAssignment, lb_endpoint::HostIdentifier},
            listener::v3::Listener,
            route::v3::{
                HeaderMatcher, Route as XdsRoute, RouteAction, RouteConfiguration,
                header_matcher::HeaderMatchSpecifier,
                query_parameter_matcher::QueryParameterMatchSpecifier,
                route::Action,
                route_action::{ClusterSpecifier, hash_policy::PolicySpecifier},
                route_match::PathSpecifier,
            },
        },
        extensions::filters::network::http_connection_manager::v3::{
            HttpConnectionManager, http_connection_manager::RouteSpecifier,
        },
        r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern},
    },
    google::protobuf::{Struct, value::Kind},
};

use weft_core::{address::EndpointAddress, policy::LbPolicy};

mod incremental;
mod policy;

pub use incremental::{Changed, Incremental};

use super::{
    Cluster, Endpoint, Guard, HashOn, Mirror, Names, Protocol, Route, RoutePolicy, ServiceDraft,
    Table, canonical, index::Entry,
};
use crate::{
    inbound::{AuthorizationSpec, Authz},
    metrics::Metrics,
    resolve::Resolved,
    route::{HeaderMatch, QueryMatch, RouteMatch, StringMatch, WeightedSplit},
    traffic::TokenBucket,
};

/// The resources a proxy holds, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub listeners: BTreeMap<String, Listener>,
    pub routes: BTreeMap<String, RouteConfiguration>,
    pub clusters: BTreeMap<String, XdsCluster>,
    pub endpoints: BTreeMap<String, ClusterLoadAssignment>,
}

/// The `weft` filter metadata, if any.
fn weft(m: &Option<Metadata>) -> Option<&Struct> {
    m.as_ref()?.filter_metadata.get("weft")
}

fn string_field<'a>(s: Option<&'a Struct>, key: &str) -> Option<&'a str> {
    match s?.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(v) => Some(v),
        _ => None,
    }
}

/// A protobuf duration (negative parts as 0), at most ten years (`weft_core::duration::MAX`):
/// no deadline computed from it can overflow (`i64::MAX` seconds panicked a request's timer).
fn duration(d: &weft_xds_proto::google::protobuf::Duration) -> Duration {
    let nanos = (d.nanos.max(0) as u32).min(999_999_999);
    weft_core::duration::clamp(Duration::new(d.seconds.max(0) as u64, nanos))
}

fn string_match(m: &StringMatcher) -> Result<StringMatch, String> {
    match &m.match_pattern {
        Some(MatchPattern::Exact(e)) => Ok(StringMatch::Exact(e.as_str().into())),
        Some(MatchPattern::Prefix(p)) => Ok(StringMatch::Prefix(p.as_str().into())),
        Some(MatchPattern::SafeRegex(r)) => StringMatch::regex(&r.regex),
        other => Err(format!("unsupported string match {other:?}")),
    }
}

fn route_match(r: &XdsRoute) -> Result<RouteMatch, String> {
    let m = r.r#match.as_ref().ok_or("route has no match")?;
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) if p == "/" || p.is_empty() => None,
        Some(PathSpecifier::Prefix(p)) => Some(StringMatch::Prefix(p.as_str().into())),
        Some(PathSpecifier::Path(p)) => Some(StringMatch::Exact(p.as_str().into())),
        Some(PathSpecifier::SafeRegex(re)) => {
            Some(StringMatch::regex(&re.regex).map_err(|e| format!("path: {e}"))?)
        }
        other => return Err(format!("unsupported path match {other:?}")),
    };
    let mut method = None;
    let mut headers = Vec::new();
    for h in &m.headers {
        let value = header_value_match(h)?;
        if h.name == ":method" {
            let StringMatch::Exact(v) = &value else {
                return Err(":method must be matched exactly".into());
            };
            method = Some(
                Method::from_bytes(v.as_bytes()).map_err(|_| format!("`{v}` is not a method"))?,
            );
            continue;
        }
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("`{}` is not a header name", h.name))?;
        headers.push(HeaderMatch { name, value });
    }
    let mut query = Vec::with_capacity(m.query_parameters.len());
    for q in &m.query_parameters {
        let value = match &q.query_parameter_match_specifier {
            Some(QueryParameterMatchSpecifier::StringMatch(sm)) => {
                string_match(sm).map_err(|e| format!("query parameter {}: {e}", q.name))?
            }
            Some(QueryParameterMatchSpecifier::PresentMatch(true)) | None => StringMatch::Any,
            Some(QueryParameterMatchSpecifier::PresentMatch(false)) => {
                return Err(format!(
                    "query parameter {}: absence matches are not supported",
                    q.name
                ));
            }
        };
        query.push(QueryMatch {
            name: q.name.as_str().into(),
            value,
        });
    }
    Ok(RouteMatch {
        path,
        method,
        headers,
        query,
    })
}

// The deprecated exact/prefix forms are still sent by older control planes.
#[allow(deprecated)]
fn header_value_match(h: &HeaderMatcher) -> Result<StringMatch, String> {
    if h.invert_match {
        return Err(format!(
            "header {}: inverted matches are not supported",
            h.name
        ));
    }
    match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(m)) => string_match(m),
        Some(HeaderMatchSpecifier::ExactMatch(e)) => Ok(StringMatch::Exact(e.as_str().into())),
        Some(HeaderMatchSpecifier::PrefixMatch(p)) => Ok(StringMatch::Prefix(p.as_str().into())),
        Some(HeaderMatchSpecifier::PresentMatch(true)) | None => Ok(StringMatch::Any),
        other => Err(format!("header {}: unsupported match {other:?}", h.name)),
    }
}

/// A load assignment's endpoints with their weights. Endpoints not healthy (or unknown) get
/// weight 0: no traffic, as the table's weighted choice leaves them out. Host names are allowed
/// only where `names` resolves them (a DNS cluster's own load assignment); each stands for every
/// address it resolved to.
fn endpoints(
    cla: &ClusterLoadAssignment,
    names: &Names,
    hosts: bool,
) -> Result<Vec<(u32, Endpoint)>, String> {
    let mut eps = Vec::new();
    for e in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
        let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
            return Err("an endpoint without an address".into());
        };
        let Some(address::Address::SocketAddress(sa)) =
            ep.address.as_ref().and_then(|a| a.address.as_ref())
        else {
            return Err("only socket addresses are supported".into());
        };
        let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
            return Err(format!("endpoint {} has no port", sa.address));
        };
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("endpoint {}: port {port} is out of range", sa.address))?;
        let addr = EndpointAddress::from_parts(&sa.address, port)?;
        if !hosts && addr.ip().is_none() {
            return Err(format!(
                "`{}` is not an IP address (endpoints known by host name belong in a STRICT_DNS cluster's load_assignment)",
                sa.address
            ));
        }
        let healthy = matches!(
            HealthStatus::try_from(e.health_status),
            Ok(HealthStatus::Healthy | HealthStatus::Unknown)
        );
        let weight = if healthy {
            e.load_balancing_weight.as_ref().map_or(1, |w| w.value)
        } else {
            0
        };
        let labels = match weft(&e.metadata).and_then(|w| w.fields.get("labels")?.kind.as_ref()) {
            Some(Kind::StructValue(s)) => s
                .fields
                .iter()
                .filter_map(|(k, v)| match &v.kind {
                    Some(Kind::StringValue(v)) => Some((k.clone(), v.clone())),
                    _ => None,
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        let labels = Arc::new(labels);
        let identity: Option<Arc<str>> = string_field(weft(&e.metadata), "identity").map(Arc::from);
        eps.extend(
            names
                .endpoints(&addr, &labels, &identity)
                .into_iter()
                .map(|ep| (weight, ep)),
        );
    }
    Ok(eps)
}

/// Whether a cluster lists its endpoints itself, by host name (STRICT_DNS, LOGICAL_DNS) or
/// address (STATIC), rather than over EDS.
fn inline_assignment(c: &XdsCluster) -> Option<Result<&ClusterLoadAssignment, String>> {
    let kind = match c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t).ok(),
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return Some(Err("custom cluster types are not supported".into()));
        }
        None => Some(DiscoveryType::Static),
    };
    match kind {
        Some(DiscoveryType::Eds) => None,
        Some(DiscoveryType::StrictDns | DiscoveryType::LogicalDns | DiscoveryType::Static) => Some(
            c.load_assignment
                .as_ref()
                .ok_or_else(|| "a STATIC or DNS cluster without a load_assignment".into()),
        ),
        Some(DiscoveryType::OriginalDst) | None => Some(Err(
            "only EDS, STATIC, STRICT_DNS and LOGICAL_DNS clusters are supported".into(),
        )),
    }
}

/// A cluster with its endpoints, if both have arrived: the one made for another route of
/// this compile, or the one in force when it may be used again (see `Names::keeping`), else
/// made now.
fn cluster(name: &str, res: &Resources, names: &Names) -> Result<Arc<Cluster>, String> {
    let Some(c) = res.clusters.get(name) else {
        return Err(format!("cluster `{name}` has not been received"));
    };
    let inline = inline_assignment(c);
    if inline.is_none() && !res.endpoints.contains_key(name) {
        return Err(format!(
            "cluster `{name}`: its ClusterLoadAssignment has not been received"
        ));
    }
    if let Some(c) = names.cluster(name) {
        return Ok(c);
    }
    let endpoints = match inline {
        Some(cla) => endpoints(cla?, names, true),
        None => endpoints(&res.endpoints[name], names, false),
    };
    let endpoints = endpoints.map_err(|e| format!("cluster `{name}`: {e}"))?;
    let mut cluster = Cluster::new(name.into(), WeightedSplit::new(endpoints), lb_policy(c)?);
    cluster.dns = names.take_used();
    cluster.outlier = policy::outlier(c);
    cluster.panic_threshold = policy::panic_threshold(c);
    cluster.breaker = names.breaker(name, policy::circuit_breaker(c).as_ref());
    let cluster = Arc::new(cluster);
    names.built(&cluster);
    Ok(cluster)
}

/// Replaces the endpoints of the EDS cluster in force under `name` with its newest
/// ClusterLoadAssignment, in place: no route is compiled again. `false` when there is no
/// such cluster or no assignment to take (the services using it are then compiled again).
fn swap_endpoints(name: &str, res: &Resources, names: &Names) -> bool {
    let (Some(c), Some(cla), Some(cluster)) = (
        res.clusters.get(name),
        res.endpoints.get(name),
        names.in_force(name),
    ) else {
        return false;
    };
    if inline_assignment(c).is_some() {
        return false;
    }
    match endpoints(cla, names, false) {
        Ok(eps) => {
            cluster.set_endpoints(WeightedSplit::new(eps));
            true
        }
        Err(_) => false,
    }
}

/// The cluster's balancer: weft's own choice from its metadata (`lbPolicy`), else the
/// standard `lb_policy` (Envoy's default, ROUND_ROBIN, when unset).
fn lb_policy(c: &XdsCluster) -> Result<LbPolicy, String> {
    if let Some(p) = string_field(weft(&c.metadata), "lbPolicy") {
        return serde_json::from_value(serde_json::Value::String(p.to_string()))
            .map_err(|_| format!("cluster `{}`: unknown lbPolicy `{p}`", c.name));
    }
    Ok(match EnvoyLb::try_from(c.lb_policy) {
        Ok(EnvoyLb::LeastRequest) => LbPolicy::LeastRequest,
        Ok(EnvoyLb::RingHash | EnvoyLb::Maglev) => LbPolicy::RingHash,
        Ok(EnvoyLb::Random) => LbPolicy::Random,
        _ => LbPolicy::RoundRobin,
    })
}

/// The first hash policy of a route the proxy supports (header, cookie, source IP).
fn hash_on(action: &RouteAction) -> Result<Option<HashOn>, String> {
    for h in &action.hash_policy {
        match &h.policy_specifier {
            Some(PolicySpecifier::Header(hd)) => {
                let name = HeaderName::from_bytes(hd.header_name.as_bytes()).map_err(|_| {
                    format!("hash policy: `{}` is not a header name", hd.header_name)
                })?;
                return Ok(Some(HashOn::Header(name)));
            }
            Some(PolicySpecifier::Cookie(c)) if !c.name.is_empty() => {
                return Ok(Some(HashOn::Cookie(c.name.as_str().into())));
            }
            Some(PolicySpecifier::ConnectionProperties(p)) if p.source_ip => {
                return Ok(Some(HashOn::SourceIp));
            }
            _ => {}
        }
    }
    Ok(None)
}

/// The clusters a route sends to, with their weights.
type Backends<'a> = Vec<(u32, &'a str)>;

/// A route's action and the clusters it sends to.
fn route_action(r: &XdsRoute) -> Result<(&RouteAction, Backends<'_>), String> {
    let Some(Action::Route(action)) = &r.action else {
        return Err("only route actions are supported".into());
    };
    let clusters = match &action.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => vec![(1, c.as_str())],
        Some(ClusterSpecifier::WeightedClusters(w)) => w
            .clusters
            .iter()
            .map(|c| (c.weight.as_ref().map_or(0, |w| w.value), c.name.as_str()))
            .collect(),
        other => return Err(format!("unsupported cluster specifier {other:?}")),
    };
    Ok((action, clusters))
}

fn route_name(r: &XdsRoute, index: usize) -> Arc<str> {
    if r.name.is_empty() {
        format!("route-{index}").into()
    } else {
        r.name.as_str().into()
    }
}

/// A route's policies that stand on their own (no cluster, no state), and its rate limit's
/// bucket (not yet shared with the table in force): what a RouteConfiguration is checked for
/// when it arrives.
fn route_policy(
    r: &XdsRoute,
    action: &RouteAction,
) -> Result<(RoutePolicy, Option<TokenBucket>), String> {
    let (grpc_timeout_max, idle_timeout) = policy::timeouts(action);
    let policy = RoutePolicy {
        retry: policy::retry(action)?,
        fault: policy::fault(r.typed_per_filter_config.get(policy::FAULT_FILTER))?,
        rate_limit: None,
        mirror: None,
        grpc_timeout_max,
        idle_timeout,
    };
    let bucket = policy::rate_limit(r.typed_per_filter_config.get(policy::RATE_LIMIT_FILTER))?;
    Ok((policy, bucket))
}

fn route(
    r: &XdsRoute,
    index: usize,
    service: &str,
    res: &Resources,
    names: &Names,
) -> Result<Route, String> {
    let name = route_name(r, index);
    let at = |e: String| format!("route `{name}`: {e}");
    let (action, clusters) = route_action(r).map_err(at)?;
    let mut backends = Vec::new();
    for (weight, c) in clusters {
        backends.push((weight, cluster(c, res, names).map_err(at)?));
    }
    let backends = WeightedSplit::new(backends);
    let (mut policy, bucket) = route_policy(r, action).map_err(at)?;
    policy.rate_limit = bucket.map(|b| names.bucket(service, Some(&name), b));
    if let Some(m) = action.request_mirror_policies.first() {
        policy.mirror = Some(Mirror {
            cluster: cluster(&m.cluster, res, names).map_err(at)?,
            percent: m
                .runtime_fraction
                .as_ref()
                .and_then(|f| f.default_value.as_ref())
                .map_or(100.0, policy::percent),
        });
    }
    Ok(Route {
        matches: route_match(r).map_err(at)?,
        backends,
        timeout: action
            .timeout
            .as_ref()
            .map(duration)
            .filter(|d| !d.is_zero()),
        hash: hash_on(action).map_err(at)?,
        policy,
        name,
    })
}

/// The RouteConfiguration a listener takes its routes from.
fn rds_name(l: &Listener) -> Result<String, String> {
    let any = l
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .ok_or("no api_listener")?;
    let hcm = HttpConnectionManager::decode(&*any.value)
        .map_err(|e| format!("api_listener is not an HttpConnectionManager: {e}"))?;
    match hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => Ok(rds.route_config_name),
        _ => Err("routes must come over RDS".into()),
    }
}

/// Checks a Listener on its own: what a proxy NACKs when it arrives.
pub fn check_listener(l: &Listener) -> Result<(), String> {
    rds_name(l)?;
    authorization(l).map(drop)
}

/// Checks a RouteConfiguration on its own (matches, regexes, actions); the clusters it names
/// may arrive later.
pub fn check_route_config(rc: &RouteConfiguration) -> Result<(), String> {
    let vh = rc.virtual_hosts.first().ok_or("no virtual host")?;
    for (i, r) in vh.routes.iter().enumerate() {
        let at = |e: String| format!("route `{}`: {e}", route_name(r, i));
        let action = route_action(r).map_err(at)?.0;
        hash_on(action).map_err(at)?;
        route_match(r).map_err(at)?;
        route_policy(r, action).map_err(at)?;
    }
    policy::rate_limit(vh.typed_per_filter_config.get(policy::RATE_LIMIT_FILTER))?;
    Ok(())
}

/// Checks a Cluster on its own (and the endpoints it lists itself).
pub fn check_cluster(c: &XdsCluster) -> Result<(), String> {
    if c.name.is_empty() {
        return Err("the cluster has no name".into());
    }
    lb_policy(c)?;
    match inline_assignment(c) {
        Some(cla) => {
            endpoints(cla?, &Names::new(&Resolved::none(), &Table::empty()), true).map(drop)
        }
        None => Ok(()),
    }
}

/// Checks a ClusterLoadAssignment on its own (addresses and ports).
pub fn check_load_assignment(cla: &ClusterLoadAssignment) -> Result<(), String> {
    endpoints(cla, &Names::new(&Resolved::none(), &Table::empty()), false).map(drop)
}

/// One listener's service (without metrics handles yet).
fn service(l: &Listener, res: &Resources, names: &Names) -> Result<ServiceDraft, String> {
    let rds = rds_name(l)?;
    let rc = res
        .routes
        .get(&rds)
        .ok_or_else(|| format!("RouteConfiguration `{rds}` has not been received"))?;
    let vh = rc
        .virtual_hosts
        .first()
        .ok_or_else(|| format!("RouteConfiguration `{}` has no virtual host", rc.name))?;
    let routes = vh
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(r, i, &l.name, res, names))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("RouteConfiguration `{}`: {e}", rc.name))?;
    let protocol = match string_field(weft(&l.metadata), "protocol") {
        Some("http1") => Protocol::Http1,
        Some("http2") => Protocol::Http2,
        Some("tcp") => Protocol::Tcp,
        _ => Protocol::Http,
    };
    let name: Arc<str> = l.name.as_str().into();
    let all = res
        .clusters
        .contains_key(&l.name)
        .then(|| cluster(&l.name, res, names))
        .transpose()?;
    let default_backends = match all {
        Some(c) => WeightedSplit::new([(1, c)]),
        None => WeightedSplit::new([]),
    };
    let mut domains: Vec<Box<str>> = vh
        .domains
        .iter()
        .map(|d| d.to_ascii_lowercase().into())
        .collect();
    if let Some(vip) = string_field(weft(&l.metadata), "vip") {
        domains.push(vip.into());
    }
    let authz = authorization(l)?.map(Arc::new);
    let rate_limit = policy::rate_limit(vh.typed_per_filter_config.get(policy::RATE_LIMIT_FILTER))
        .map_err(|e| format!("RouteConfiguration `{}`: {e}", rc.name))?
        .map(|b| names.bucket(&name, None, b));
    let budget = names.budget(&name, policy::budget(res.clusters.get(&l.name)));
    Ok(ServiceDraft {
        budget,
        rate_limit,
        name,
        protocol,
        routes: routes.into(),
        default_route: Route {
            name: "default".into(),
            matches: RouteMatch::default(),
            backends: default_backends,
            timeout: None,
            hash: None,
            policy: RoutePolicy::default(),
        },
        domains,
        authz,
    })
}

/// A Listener's entry again after the endpoints of its clusters changed in place (see
/// [`swap_endpoints`]): the same service, no route compiled; its endpoint index and guard
/// brought up to date.
fn refreshed(l: &Listener, res: &Resources, names: &Names, previous: &Table) -> Option<Entry> {
    let old = previous.index.entry(&l.name)?;
    let guard = old
        .guard
        .as_ref()
        .and_then(|g| guard(l, g.authz.clone(), res, names, previous));
    names.take_used();
    Some(Entry::new(old.service.clone(), guard))
}

/// A service's policy over every address of the cluster of all its endpoints (named as the
/// Listener), healthy or not; while that cluster or its endpoints are missing, over the
/// addresses the table in force guarded for it. `None` when neither is known.
fn guard(
    l: &Listener,
    authz: Arc<Authz>,
    res: &Resources,
    names: &Names,
    previous: &Table,
) -> Option<Guard> {
    let all = res.clusters.get(&l.name).and_then(|c| {
        let (cla, hosts) = match inline_assignment(c) {
            Some(cla) => (cla.ok()?, true),
            None => (res.endpoints.get(&l.name)?, false),
        };
        endpoints(cla, names, hosts).ok()
    });
    let endpoints = match all {
        Some(eps) => eps.into_iter().map(|(_, e)| canonical(e.addr)).collect(),
        None => previous.guard(&l.name)?.endpoints.clone(),
    };
    Some(Guard {
        service: l.name.as_str().into(),
        authz,
        endpoints,
    })
}

/// The listener's `authorization` (weft metadata), compiled.
fn authorization(l: &Listener) -> Result<Option<Authz>, String> {
    let Some(v) = weft(&l.metadata).and_then(|w| w.fields.get("authorization")) else {
        return Ok(None);
    };
    let spec: AuthorizationSpec =
        serde_json::from_value(json(v)).map_err(|e| format!("metadata `authorization`: {e}"))?;
    Authz::compile(&spec)
        .map(Some)
        .map_err(|e| format!("metadata `authorization`: {e}"))
}

/// A protobuf `Value` as JSON.
fn json(v: &weft_xds_proto::google::protobuf::Value) -> serde_json::Value {
    match &v.kind {
        Some(Kind::NullValue(_)) | None => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::json!(n),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::StructValue(s)) => s
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        Some(Kind::ListValue(l)) => l.values.iter().map(json).collect(),
    }
}

/// A table compiled from xDS resources, and the listeners it could not compile yet.
#[derive(Debug)]
pub struct Compiled {
    pub table: Table,
    /// `Listener `name`: what it waits for`, one per listener that kept its previous service
    /// (or, new, is left out) because something it references has not arrived.
    pub held_back: Vec<String>,
}

/// Compiles the resources (each already checked on its own) into a table.
///
/// xDS delivers one type at a time, and a control plane may drop a cluster before the route that
/// names it: a listener whose RouteConfiguration, clusters or load assignments are not all
/// there keeps its service from `previous` (the table in force), so requests never see a
/// half-updated service; a new one is left out until it is complete.
pub fn compile(
    res: &Resources,
    version: Arc<str>,
    generation: u64,
    metrics: &Arc<Metrics>,
    previous: &Table,
    dns: &Resolved,
) -> Compiled {
    Incremental::default().update(
        res,
        &Changed::default(),
        version,
        generation,
        metrics,
        previous,
        dns,
    )
}

/// One Listener's entry in the table, and why it was held back if it was: a listener whose
/// RouteConfiguration, clusters or load assignments are not all there keeps its service from
/// `previous`, and a new one is left out (only its authorization guard applies).
fn listener(
    l: &Listener,
    res: &Resources,
    names: &Names,
    metrics: &Arc<Metrics>,
    previous: &Table,
) -> (Option<Entry>, Option<String>) {
    let built = service(l, res, names);
    // Who may call the service does not wait for its routes: the newest Listener's policy.
    let authz = match &built {
        Ok(draft) => draft.authz.clone(),
        Err(_) => authorization(l).ok().flatten().map(Arc::new),
    };
    let guard = authz.and_then(|a| guard(l, a, res, names, previous));
    // The guard's host names are its cluster's, counted there.
    names.take_used();
    let (service, held) = match built {
        Ok(draft) => (Some(Arc::new(draft.finish(metrics))), None),
        Err(e) => (
            previous.service(&l.name).cloned(),
            Some(format!("Listener `{}`: {e}", l.name)),
        ),
    };
    let entry = (service.is_some() || guard.is_some()).then(|| Entry::new(service, guard));
    (entry, held)
}
