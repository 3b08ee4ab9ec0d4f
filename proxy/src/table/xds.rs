//! Compiling a routing [`Table`] from Envoy v3 xDS resources, as weft's control plane emits
//! them: a Listener per service (`host:port`, with an HttpConnectionManager that takes its routes
//! over RDS), its RouteConfiguration, and the Clusters and ClusterLoadAssignments its routes
//! name. weft's own settings are read from filter metadata under the `weft` key.
//!
//! Conversion happens outside any lock and rejects the whole set when a resource is bad; each
//! error names the resource, so the caller can NACK with it and keep the table in force.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use http::{HeaderName, Method};
use prost::Message;
use weft_xds_proto::{
    envoy::{
        config::{
            cluster::v3::Cluster as XdsCluster,
            core::v3::{HealthStatus, Metadata, address, socket_address::PortSpecifier},
            endpoint::v3::{ClusterLoadAssignment, lb_endpoint::HostIdentifier},
            listener::v3::Listener,
            route::v3::{
                HeaderMatcher, Route as XdsRoute, RouteConfiguration,
                header_matcher::HeaderMatchSpecifier, route::Action,
                route_action::ClusterSpecifier, route_match::PathSpecifier,
            },
        },
        extensions::filters::network::http_connection_manager::v3::{
            HttpConnectionManager, http_connection_manager::RouteSpecifier,
        },
        r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern},
    },
    google::protobuf::{Struct, value::Kind},
};

use super::{Cluster, Endpoint, Protocol, Route, ServiceDraft, Table};
use crate::{
    metrics::Metrics,
    route::{HeaderMatch, RouteMatch, StringMatch, WeightedSplit},
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

fn duration(d: &weft_xds_proto::google::protobuf::Duration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

fn string_match(m: &StringMatcher) -> Result<StringMatch, String> {
    match &m.match_pattern {
        Some(MatchPattern::Exact(e)) => Ok(StringMatch::Exact(e.as_str().into())),
        Some(MatchPattern::Prefix(p)) => Ok(StringMatch::Prefix(p.as_str().into())),
        Some(MatchPattern::SafeRegex(r)) => {
            StringMatch::regex(&r.regex).map_err(|e| format!("invalid regex: {e}"))
        }
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
            Some(StringMatch::regex(&re.regex).map_err(|e| format!("path regex: {e}"))?)
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
    Ok(RouteMatch {
        path,
        method,
        headers,
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

/// A cluster's endpoints from its load assignment. Endpoints not healthy (or unknown) get
/// weight 0: no traffic, as the table's weighted choice leaves them out.
fn cluster(name: &str, res: &Resources) -> Result<Arc<Cluster>, String> {
    if !res.clusters.contains_key(name) {
        return Err(format!(
            "route names cluster `{name}`, which was not received"
        ));
    }
    let Some(cla) = res.endpoints.get(name) else {
        return Err(format!(
            "cluster `{name}`: no ClusterLoadAssignment received"
        ));
    };
    let mut eps = Vec::new();
    for e in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
        let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
            return Err(format!("cluster `{name}`: an endpoint without an address"));
        };
        let Some(address::Address::SocketAddress(sa)) =
            ep.address.as_ref().and_then(|a| a.address.as_ref())
        else {
            return Err(format!(
                "cluster `{name}`: only socket addresses are supported"
            ));
        };
        let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
            return Err(format!(
                "cluster `{name}`: endpoint {} has no port",
                sa.address
            ));
        };
        let ip = sa
            .address
            .parse()
            .map_err(|_| format!("cluster `{name}`: `{}` is not an IP address", sa.address))?;
        let port = u16::try_from(port).map_err(|_| format!("cluster `{name}`: port {port}"))?;
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
        eps.push((
            weight,
            Endpoint {
                addr: SocketAddr::new(ip, port),
                labels: Arc::new(labels),
            },
        ));
    }
    Ok(Arc::new(Cluster {
        name: name.into(),
        endpoints: WeightedSplit::new(eps),
    }))
}

fn route(r: &XdsRoute, index: usize, res: &Resources) -> Result<Route, String> {
    let name: Arc<str> = if r.name.is_empty() {
        format!("route-{index}").into()
    } else {
        r.name.as_str().into()
    };
    let at = |e: String| format!("route `{name}`: {e}");
    let Some(Action::Route(action)) = &r.action else {
        return Err(at("only route actions are supported".into()));
    };
    let backends = match &action.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => {
            WeightedSplit::new([(1, cluster(c, res).map_err(at)?)])
        }
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let mut split = Vec::new();
            for c in &w.clusters {
                let weight = c.weight.as_ref().map_or(0, |w| w.value);
                split.push((weight, cluster(&c.name, res).map_err(at)?));
            }
            WeightedSplit::new(split)
        }
        other => return Err(at(format!("unsupported cluster specifier {other:?}"))),
    };
    Ok(Route {
        matches: route_match(r).map_err(at)?,
        backends,
        timeout: action
            .timeout
            .as_ref()
            .map(duration)
            .filter(|d| !d.is_zero()),
        name,
    })
}

/// One listener's service (without metrics handles yet) and the domains that reach it.
struct Compiled {
    service: ServiceDraft,
    domains: Vec<String>,
}

fn service(l: &Listener, res: &Resources) -> Result<Compiled, String> {
    let any = l
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .ok_or("no api_listener")?;
    let hcm = HttpConnectionManager::decode(&*any.value)
        .map_err(|e| format!("api_listener is not an HttpConnectionManager: {e}"))?;
    let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
        return Err("routes must come over RDS".into());
    };
    let rc = res.routes.get(&rds.route_config_name).ok_or_else(|| {
        format!(
            "RouteConfiguration `{}` was not received",
            rds.route_config_name
        )
    })?;
    let vh = rc
        .virtual_hosts
        .first()
        .ok_or_else(|| format!("RouteConfiguration `{}` has no virtual host", rc.name))?;
    let routes = vh
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(r, i, res))
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
        .then(|| cluster(&l.name, res))
        .transpose()?;
    let default_backends = match all {
        Some(c) => WeightedSplit::new([(1, c)]),
        None => WeightedSplit::new([]),
    };
    let mut domains = vh.domains.clone();
    if let Some(vip) = string_field(weft(&l.metadata), "vip") {
        domains.push(vip.to_string());
    }
    Ok(Compiled {
        service: ServiceDraft {
            name,
            protocol,
            routes: routes.into(),
            default_route: Route {
                name: "default".into(),
                matches: RouteMatch::default(),
                backends: default_backends,
                timeout: None,
            },
        },
        domains,
    })
}

/// Compiles the resources into a table, or says which resources are wrong.
pub fn compile(
    res: &Resources,
    version: Arc<str>,
    generation: u64,
    metrics: &Metrics,
) -> Result<Table, Vec<String>> {
    let mut errors = Vec::new();
    let mut compiled = Vec::new();
    for l in res.listeners.values() {
        match service(l, res) {
            Ok(c) => compiled.push(c),
            Err(e) => errors.push(format!("Listener `{}`: {e}", l.name)),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut t = Table {
        version,
        generation,
        ..Table::empty()
    };
    let mut hosts: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, c) in compiled.iter().enumerate() {
        for d in &c.domains {
            let d = d.to_ascii_lowercase();
            if let Ok(vip) = d.parse::<SocketAddr>() {
                t.by_vip.insert(vip, i);
            } else if d.contains(':') {
                t.by_authority.entry(d.into()).or_insert(i);
            } else {
                hosts.entry(d).or_default().push(i);
            }
        }
    }
    for (host, idxs) in hosts {
        if let [only] = idxs[..] {
            t.by_host.insert(host.into(), only);
        }
    }
    // Only a table that compiled whole gets metrics series: a rejected one leaves none.
    t.services = compiled
        .into_iter()
        .map(|c| Arc::new(c.service.finish(metrics)))
        .collect();
    Ok(t)
}
