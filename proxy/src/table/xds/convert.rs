//! Each xDS resource converted, once, when it arrives, into weft's own types: what a
//! Listener, RouteConfiguration, Cluster or ClusterLoadAssignment says that the proxy uses,
//! checked. A resource that does not convert is rejected on its own (the client NACKs it
//! naming it); the decoded protobuf is not kept.

use std::{sync::Arc, time::Duration};

use http::{HeaderName, Method};
use prost::Message;
use weft_core::{address::EndpointAddress, contract::xds as names, policy::LbPolicy};
use weft_xds_proto::envoy::{
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
};

use super::{
    policy,
    refused::{Refused, invalid, missing, unsupported},
    spec::{ClusterSpec, EndpointSpec, Endpoints, ListenerSpec, RouteConfigSpec, RouteSpec},
};
use crate::{
    authz::Authz,
    route::{HeaderMatch, QueryMatch, RouteMatch, StringMatch},
    table::{HashOn, RoutePolicy},
};

/// Converts a Listener.
pub fn listener(l: &Listener) -> Result<ListenerSpec, Refused> {
    let meta: names::ListenerMetadata = weft(&l.metadata)?;
    let authz = match &meta.authorization {
        Some(a) => {
            Some(Arc::new(Authz::compile(a).map_err(|e| {
                Refused::from(e).at("metadata `weft.authorization`")
            })?))
        }
        None => None,
    };
    Ok(ListenerSpec {
        rds: rds_name(l)?.into(),
        protocol: meta.protocol,
        vip: meta.vip.map(Arc::from),
        authz,
    })
}

/// Converts a RouteConfiguration (matches, regexes, actions, policies); the clusters it names
/// may arrive later.
pub fn route_config(rc: &RouteConfiguration) -> Result<RouteConfigSpec, Refused> {
    let vh = rc
        .virtual_hosts
        .first()
        .ok_or_else(|| missing("no virtual host"))?;
    let mut routes = Vec::with_capacity(vh.routes.len());
    for (i, r) in vh.routes.iter().enumerate() {
        let name = route_name(r, i);
        let at = |e: Refused| e.at(format!("route `{name}`"));
        let matches = route_match(r).map_err(at)?;
        if let Some(Action::Redirect(rd)) = &r.action {
            // Answered here: no backend, none of the sending's policies.
            let policy = RoutePolicy {
                redirect: Some(super::edits::redirect(rd, &matches).map_err(at)?),
                headers: super::edits::route_headers(r).map_err(at)?,
                ..RoutePolicy::default()
            };
            routes.push(RouteSpec {
                matches: matches.shared(),
                backends: Box::new([]),
                policy: policy.shared(),
                missing_status: None,
                backend_headers: Box::default(),
                rate_limit: None,
                mirror: None,
                name,
            });
            continue;
        }
        let (action, backends) = route_action(r).map_err(at)?;
        let hash = hash_on(action).map_err(at)?;
        let (grpc_timeout_max, idle_timeout) = policy::timeouts(action);
        let meta: names::RouteMetadata = weft(&r.metadata).map_err(at)?;
        let retry = policy::retry(action, meta.retry_backoff_min).map_err(at)?;
        let headers = super::edits::route_headers(r).map_err(at)?;
        let rewrite = super::edits::rewrite(action, &matches).map_err(at)?;
        let fault =
            policy::fault(r.typed_per_filter_config.get(policy::FAULT_FILTER)).map_err(at)?;
        let rate_limit =
            policy::rate_limit(r.typed_per_filter_config.get(policy::RATE_LIMIT_FILTER))
                .map_err(at)?;
        let mirror = action.request_mirror_policies.first().map(|m| {
            let percent = m
                .runtime_fraction
                .as_ref()
                .and_then(|f| f.default_value.as_ref())
                .map_or(100.0, policy::percent);
            (Arc::from(m.cluster.as_str()), percent)
        });
        let policy = RoutePolicy {
            timeout: action
                .timeout
                .as_ref()
                .map(duration)
                .filter(|d| !d.is_zero()),
            hash,
            retry,
            fault,
            grpc_timeout_max,
            idle_timeout,
            headers,
            rewrite,
            ..RoutePolicy::default()
        };
        routes.push(RouteSpec {
            matches: matches.shared(),
            policy: policy.shared(),
            backend_headers: if backends.iter().any(|b| b.2.is_some()) {
                backends.iter().map(|b| b.2.clone()).collect()
            } else {
                Box::default()
            },
            backends: backends
                .into_iter()
                .map(|(w, c, _)| (w, Arc::from(c)))
                .collect(),
            missing_status: missing_status(action),
            rate_limit: rate_limit.map(Box::new),
            mirror,
            name,
        });
    }
    let rate_limit = policy::rate_limit(vh.typed_per_filter_config.get(policy::RATE_LIMIT_FILTER))?
        .map(Box::new);
    Ok(RouteConfigSpec {
        domains: vh
            .domains
            .iter()
            .map(|d| d.to_ascii_lowercase().into())
            .collect(),
        routes: routes.into(),
        rate_limit,
    })
}

/// Converts a Cluster (and the endpoints it lists itself).
pub fn cluster(c: &XdsCluster) -> Result<ClusterSpec, Refused> {
    if c.name.is_empty() {
        return Err(missing("the cluster has no name"));
    }
    let meta: names::ClusterMetadata = weft(&c.metadata)?;
    let lb = meta.lb_policy.unwrap_or_else(|| lb_policy(c));
    let inline = match inline_assignment(c) {
        Some(cla) => Some(endpoint_specs(cla?, true)?),
        None => None,
    };
    let budget = policy::budget(Some(c), &meta);
    Ok(ClusterSpec {
        lb,
        outlier: policy::outlier(c, &meta).map(Box::new),
        panic_threshold: policy::panic_threshold(c),
        breaker: policy::circuit_breaker(c).map(Box::new),
        budget: (budget.ratio, budget.min_per_second),
        inline,
    })
}

/// Converts a ClusterLoadAssignment (addresses and ports; no host names over EDS).
pub fn load_assignment(cla: &ClusterLoadAssignment) -> Result<Endpoints, Refused> {
    endpoint_specs(cla, false)
}

/// weft's settings in a resource's `weft` filter metadata (their defaults when it has none).
pub(super) fn weft<T: serde::de::DeserializeOwned + Default>(
    m: &Option<Metadata>,
) -> Result<T, Refused> {
    weft_xds_proto::metadata::read(names::METADATA, m.as_ref()).map_err(invalid)
}

/// A protobuf duration (negative parts as 0), at most ten years (`weft_core::duration::MAX`):
/// no deadline computed from it can overflow (`i64::MAX` seconds panicked a request's timer).
pub(super) fn duration(d: &weft_xds_proto::google::protobuf::Duration) -> Duration {
    let nanos = (d.nanos.max(0) as u32).min(999_999_999);
    weft_core::duration::clamp(Duration::new(d.seconds.max(0) as u64, nanos))
}

fn string_match(m: &StringMatcher) -> Result<StringMatch, Refused> {
    match &m.match_pattern {
        Some(MatchPattern::Exact(e)) => Ok(StringMatch::Exact(e.as_str().into())),
        Some(MatchPattern::Prefix(p)) => Ok(StringMatch::Prefix(p.as_str().into())),
        Some(MatchPattern::SafeRegex(r)) => Ok(StringMatch::regex(&r.regex)?),
        other => Err(unsupported(format!("unsupported string match {other:?}"))),
    }
}

fn route_match(r: &XdsRoute) -> Result<RouteMatch, Refused> {
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| missing("route has no match"))?;
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) if p == "/" || p.is_empty() => None,
        Some(PathSpecifier::Prefix(p)) => Some(StringMatch::Prefix(p.as_str().into())),
        Some(PathSpecifier::Path(p)) => Some(StringMatch::Exact(p.as_str().into())),
        Some(PathSpecifier::PathSeparatedPrefix(p)) => {
            // As Envoy requires: a path, without `?`, `#` or a trailing `/`.
            if !p.starts_with('/') || p.ends_with('/') || p.contains(['?', '#']) {
                return Err(invalid(format!(
                    "path_separated_prefix `{p}`: must start with `/`, not end with it, and hold no `?` or `#`"
                ))
                .at("path"));
            }
            Some(StringMatch::Segments(p.as_str().into()))
        }
        Some(PathSpecifier::SafeRegex(re)) => {
            Some(StringMatch::regex(&re.regex).map_err(|e| Refused::from(e).at("path"))?)
        }
        other => return Err(unsupported(format!("unsupported path match {other:?}"))),
    };
    let mut method = None;
    let mut headers = Vec::new();
    for h in &m.headers {
        let value = header_value_match(h)?;
        if h.name == ":method" {
            let StringMatch::Exact(v) = &value else {
                return Err(unsupported(":method must be matched exactly"));
            };
            method = Some(
                Method::from_bytes(v.as_bytes())
                    .map_err(|_| invalid(format!("`{v}` is not a method")))?,
            );
            continue;
        }
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| invalid(format!("`{}` is not a header name", h.name)))?;
        headers.push(HeaderMatch { name, value });
    }
    let mut query = Vec::with_capacity(m.query_parameters.len());
    for q in &m.query_parameters {
        let value = match &q.query_parameter_match_specifier {
            Some(QueryParameterMatchSpecifier::StringMatch(sm)) => {
                string_match(sm).map_err(|e| e.at(format!("query parameter {}", q.name)))?
            }
            Some(QueryParameterMatchSpecifier::PresentMatch(true)) | None => StringMatch::Any,
            Some(QueryParameterMatchSpecifier::PresentMatch(false)) => {
                return Err(unsupported("absence matches are not supported")
                    .at(format!("query parameter {}", q.name)));
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
fn header_value_match(h: &HeaderMatcher) -> Result<StringMatch, Refused> {
    if h.invert_match {
        return Err(
            unsupported("inverted matches are not supported").at(format!("header {}", h.name))
        );
    }
    match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(m)) => string_match(m),
        Some(HeaderMatchSpecifier::ExactMatch(e)) => Ok(StringMatch::Exact(e.as_str().into())),
        Some(HeaderMatchSpecifier::PrefixMatch(p)) => Ok(StringMatch::Prefix(p.as_str().into())),
        Some(HeaderMatchSpecifier::PresentMatch(true)) | None => Ok(StringMatch::Any),
        other => {
            Err(unsupported(format!("unsupported match {other:?}"))
                .at(format!("header {}", h.name)))
        }
    }
}

/// A load assignment's endpoints with their weights. Endpoints not healthy (or unknown) get
/// weight 0: no traffic, as the table's weighted choice leaves them out. Host names are allowed
/// only where `hosts` (a DNS cluster's own load assignment); the proxy resolves them.
fn endpoint_specs(cla: &ClusterLoadAssignment, hosts: bool) -> Result<Endpoints, Refused> {
    let mut eps = Vec::new();
    for e in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
        let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
            return Err(missing("an endpoint without an address"));
        };
        let Some(address::Address::SocketAddress(sa)) =
            ep.address.as_ref().and_then(|a| a.address.as_ref())
        else {
            return Err(unsupported("only socket addresses are supported"));
        };
        let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
            return Err(invalid(format!("endpoint {} has no port", sa.address)));
        };
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                invalid(format!("port {port} is out of range"))
                    .at(format!("endpoint {}", sa.address))
            })?;
        let addr = EndpointAddress::from_parts(&sa.address, port).map_err(invalid)?;
        if !hosts && addr.ip().is_none() {
            return Err(invalid(format!(
                "`{}` is not an IP address (endpoints known by host name belong in a STRICT_DNS cluster's load_assignment)",
                sa.address
            )));
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
        let meta: names::EndpointMetadata = weft(&e.metadata)?;
        eps.push(EndpointSpec {
            weight,
            addr,
            labels: Arc::new(meta.labels),
            identity: meta.identity.map(Arc::from),
        });
    }
    Ok(eps.into())
}

/// Whether a cluster lists its endpoints itself, by host name (STRICT_DNS, LOGICAL_DNS) or
/// address (STATIC), rather than over EDS.
fn inline_assignment(c: &XdsCluster) -> Option<Result<&ClusterLoadAssignment, Refused>> {
    let kind = match c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t).ok(),
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return Some(Err(unsupported("custom cluster types are not supported")));
        }
        None => Some(DiscoveryType::Static),
    };
    match kind {
        Some(DiscoveryType::Eds) => None,
        Some(DiscoveryType::StrictDns | DiscoveryType::LogicalDns | DiscoveryType::Static) => Some(
            c.load_assignment
                .as_ref()
                .ok_or_else(|| missing("a STATIC or DNS cluster without a load_assignment")),
        ),
        Some(DiscoveryType::OriginalDst) | None => Some(Err(unsupported(
            "only EDS, STATIC, STRICT_DNS and LOGICAL_DNS clusters are supported",
        ))),
    }
}

/// The cluster's balancer from the standard `lb_policy` (Envoy's default, ROUND_ROBIN, when
/// unset), for a cluster whose metadata does not choose one of weft's.
fn lb_policy(c: &XdsCluster) -> LbPolicy {
    match EnvoyLb::try_from(c.lb_policy) {
        Ok(EnvoyLb::LeastRequest) => LbPolicy::LeastRequest,
        Ok(EnvoyLb::RingHash | EnvoyLb::Maglev) => LbPolicy::RingHash,
        Ok(EnvoyLb::Random) => LbPolicy::Random,
        _ => LbPolicy::RoundRobin,
    }
}

/// The first hash policy of a route the proxy supports (header, cookie, source IP).
fn hash_on(action: &RouteAction) -> Result<Option<HashOn>, Refused> {
    for h in &action.hash_policy {
        match &h.policy_specifier {
            Some(PolicySpecifier::Header(hd)) => {
                let name = HeaderName::from_bytes(hd.header_name.as_bytes()).map_err(|_| {
                    invalid(format!("`{}` is not a header name", hd.header_name)).at("hash policy")
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

/// The status a backend whose cluster does not exist answers, when the route names one: NOT_FOUND
/// (1) or INTERNAL_SERVER_ERROR (2). SERVICE_UNAVAILABLE (0) is also proto3's "unset", and a
/// route naming a cluster that is not there stays refused then (most often the cluster has not
/// arrived yet, and refusing keeps the route configuration in force).
fn missing_status(action: &RouteAction) -> Option<u16> {
    match action.cluster_not_found_response_code {
        1 => Some(404),
        2 => Some(500),
        _ => None,
    }
}

/// The clusters a route sends to, with their weights and their own header changes.
type Backends<'a> = Vec<(u32, &'a str, Option<Arc<crate::table::RouteHeaders>>)>;

/// A route's action and the clusters it sends to.
fn route_action(r: &XdsRoute) -> Result<(&RouteAction, Backends<'_>), Refused> {
    let Some(Action::Route(action)) = &r.action else {
        return Err(unsupported("only route actions are supported"));
    };
    let clusters = match &action.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => vec![(1, c.as_str(), None)],
        Some(ClusterSpecifier::WeightedClusters(w)) => w
            .clusters
            .iter()
            .map(|c| {
                let headers = super::edits::weight_headers(c)
                    .map_err(|e| e.at(format!("cluster `{}`", c.name)))?;
                Ok((
                    c.weight.as_ref().map_or(0, |w| w.value),
                    c.name.as_str(),
                    headers,
                ))
            })
            .collect::<Result<_, Refused>>()?,
        other => {
            return Err(unsupported(format!(
                "unsupported cluster specifier {other:?}"
            )));
        }
    };
    Ok((action, clusters))
}

fn route_name(r: &XdsRoute, index: usize) -> Arc<str> {
    match r.name.as_str() {
        "" => format!("route-{index}").into(),
        // The control plane's last route of every service: one allocation for all.
        "default" => crate::table::Route::default_name(),
        name => name.into(),
    }
}

/// The RouteConfiguration a listener takes its routes from.
fn rds_name(l: &Listener) -> Result<String, Refused> {
    let any = l
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .ok_or_else(|| missing("no api_listener"))?;
    let hcm = HttpConnectionManager::decode(&*any.value)
        .map_err(|e| invalid(format!("api_listener is not an HttpConnectionManager: {e}")))?;
    match hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => Ok(rds.route_config_name),
        _ => Err(unsupported("routes must come over RDS")),
    }
}
