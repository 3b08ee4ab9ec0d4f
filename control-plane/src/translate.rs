//! Registry snapshot + traffic policies -> Envoy v3 resources, in the shape gRPC's proxyless
//! xDS clients consume, so that any standard xDS client can use weft's control plane:
//!
//! - a Listener per service, named `host:port`, whose `api_listener` is an
//!   HttpConnectionManager that takes its routes over RDS (same name) and ends in the router;
//! - a RouteConfiguration per service: one virtual host whose domains are the host, its aliases,
//!   with and without the port, and `vip:port`; the policy's routes in order, then a default
//!   route to every endpoint (or the rules of the Gateway API routes attached to it); a
//!   namespace with consumer routes for the service gets a variant of the same name, with
//!   those routes' rules, which the ADS server sends to nodes in that namespace;
//! - a Cluster per service (`host:port`) and per subset (`host:port/subset`), of type EDS over
//!   ADS, with the load-balancing policy, circuit breakers (with the retry budget) and outlier
//!   detection;
//! - a ClusterLoadAssignment per cluster, with weights, health, and the endpoint's labels and
//!   identity in its metadata.
//!
//! Standard fields carry what they can: weighted clusters, retry policies, hash policies,
//! mirror policies, timeouts, circuit breakers, outlier detection, and the fault and local
//! rate-limit filters' per-route (and, for the service's rate limit, per-virtual-host)
//! configs. Settings that no standard field carries (the retry budget's minimum per second,
//! the failure-rate window, authorization, weft-specific load balancing) travel in metadata
//! under the `weft` key, never in non-standard fields. Authorization is the Listener's (it is per service, and enforced by
//! the inbound sidecars of the service's endpoints).

mod cluster;
mod convert;
mod gamma;
mod vips;

use cluster::cluster;

pub use vips::Vips;
use vips::allocate_vips;

use std::collections::BTreeMap;

use prost::{Message, Name};
use weft_xds_proto::{
    envoy::{
        config::{
            cluster::v3::{
                Cluster,
                cluster::{ClusterDiscoveryType, DiscoveryType},
            },
            core::v3::{
                AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Locality,
                config_source::ConfigSourceSpecifier,
            },
            endpoint::v3::{
                ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
            },
            listener::v3::{ApiListener, Listener},
            route::v3::{
                Route, RouteAction, RouteConfiguration, VirtualHost, WeightedCluster,
                route::Action,
                route_action::{ClusterSpecifier, MaxStreamDuration, RequestMirrorPolicy},
                weighted_cluster::ClusterWeight,
            },
        },
        extensions::filters::{
            http::{fault::v3::HttpFault, local_ratelimit::v3::LocalRateLimit, router::v3::Router},
            network::http_connection_manager::v3::{
                HttpConnectionManager, HttpFilter, Rds, http_connection_manager::RouteSpecifier,
                http_filter::ConfigType,
            },
        },
    },
    google::protobuf::Any,
};

use crate::{
    gateway,
    policy::{PolicySpec, RouteRule, TrafficPolicy},
    registry::{Service, Snapshot},
};
use convert::{duration, metadata, retry_policy, route_match, socket_address, u32v};

use weft_core::contract::xds as names;
/// The names weft's settings travel under in xDS, shared with the proxy.
pub use weft_core::contract::xds::{FAULT_FILTER, METADATA as METADATA_KEY, RATE_LIMIT_FILTER};

/// Every resource for one snapshot, each list sorted by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// Route configurations that callers in one namespace get instead of the same-named one in
    /// `routes` (consumer routes), by that namespace; each list sorted by name.
    pub consumer_routes: BTreeMap<String, Vec<RouteConfiguration>>,
}

/// Packs a message into `Any` under its own type URL.
pub fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// Translates a snapshot, allocating VIPs afresh (as a control plane does at start). A
/// service's policy is the first (by `namespace/name`) whose `spec.service` names it;
/// policies naming no registered service produce nothing.
pub fn translate(snap: &Snapshot) -> Resources {
    translate_with(snap, &mut Vips::default())
}

/// Translates a snapshot; a host keeps the VIP `vips` holds for it (`vips` then holds this
/// snapshot's).
pub fn translate_with(snap: &Snapshot, vips: &mut Vips) -> Resources {
    let mut by_service: BTreeMap<&str, &TrafficPolicy> = BTreeMap::new();
    for p in snap.policies.values() {
        by_service.entry(p.spec.service.as_str()).or_insert(p);
    }
    let allocated = allocate_vips(snap, vips);
    *vips = Vips(
        allocated
            .iter()
            .map(|(h, ip)| (h.to_string(), *ip))
            .collect(),
    );
    let vips = allocated;
    let services = gamma::ByKey::new(snap);
    let grpc: Vec<_> = snap.grpc_routes.values().map(|r| r.as_http()).collect();
    let attached = gamma::attached(snap, &grpc, &services);
    let mut out = Resources::default();
    for (authority, svc) in &snap.services {
        let policy = by_service.get(authority.as_str()).map(|p| &p.spec);
        let vip = vips.get(svc.host.as_str()).copied();
        out.listeners.push(listener(authority, svc, vip, policy));
        let mut rc = route_config(authority, svc, vip, policy);
        if let Some(routes) = attached.producer.get(authority) {
            rc.virtual_hosts[0].routes = gamma_routes(authority, routes, policy, &services);
        }
        out.routes.push(rc);
        let subsets = policy.map_or(&[][..], |p| &p.subsets[..]);
        let all = std::iter::once((authority.clone(), None));
        let named = subsets
            .iter()
            .map(|s| (format!("{authority}/{}", s.name), Some(&s.labels)));
        // Endpoints registered by host name are resolved by the proxies: their clusters are
        // STRICT_DNS and carry the load assignment themselves (EDS is for addresses).
        let by_name = svc.spec.endpoints.iter().any(|e| e.address.ip().is_none());
        for (name, labels) in all.chain(named) {
            let mut c = cluster(&name, policy);
            let cla = load_assignment(&name, svc, labels);
            if by_name {
                c.cluster_discovery_type =
                    Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
                c.eds_cluster_config = None;
                c.load_assignment = Some(cla);
            } else {
                out.endpoints.push(cla);
            }
            out.clusters.push(c);
        }
    }
    // The consumer routes' variants of route configurations: each replaces the producer's
    // for the callers in its namespace.
    for ((ns, authority), routes) in &attached.consumer {
        let svc = &snap.services[authority];
        let policy = by_service.get(authority.as_str()).map(|p| &p.spec);
        let vip = vips.get(svc.host.as_str()).copied();
        let mut rc = route_config(authority, svc, vip, policy);
        rc.virtual_hosts[0].routes = gamma_routes(authority, routes, policy, &services);
        out.consumer_routes.entry(ns.clone()).or_default().push(rc);
    }
    out.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    out.endpoints
        .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    out
}

/// The xDS routes of the Gateway API routes attached to a service: they replace the service's
/// own (a policy's routes, the default), and each takes the policy's other settings (retries,
/// hashing, faults, idle and gRPC timeouts, and its timeout unless the rule has one).
fn gamma_routes(
    authority: &str,
    attached: &[&gateway::HttpRoute],
    policy: Option<&PolicySpec>,
    services: &gamma::ByKey<'_>,
) -> Vec<Route> {
    let empty = PolicySpec::default();
    let p = policy.unwrap_or(&empty);
    let base = |name: String, timeout: Option<std::time::Duration>| {
        let rule = RouteRule {
            name: Some(name),
            timeout,
            ..Default::default()
        };
        route(authority, 0, &rule, p)
    };
    gamma::routes(attached, services, base)
}

fn listener(
    authority: &str,
    svc: &Service,
    vip: Option<std::net::IpAddr>,
    policy: Option<&PolicySpec>,
) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: authority.to_string(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: authority.to_string(),
        })),
        // The filters whose per-route configs the routes carry, then the router. Clients
        // without a local rate limiter may skip it.
        http_filters: vec![
            HttpFilter {
                name: FAULT_FILTER.into(),
                config_type: Some(ConfigType::TypedConfig(any(&HttpFault::default()))),
                ..Default::default()
            },
            HttpFilter {
                name: RATE_LIMIT_FILTER.into(),
                config_type: Some(ConfigType::TypedConfig(any(&LocalRateLimit {
                    stat_prefix: "local_rate_limit".into(),
                    ..Default::default()
                }))),
                is_optional: true,
                ..Default::default()
            },
            HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(ConfigType::TypedConfig(any(&Router::default()))),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let weft = names::ListenerMetadata {
        protocol: svc.spec.protocol,
        vip: vip.map(|vip| format!("{vip}:{}", svc.spec.port)),
        authorization: policy.and_then(|p| p.authorization.clone()),
    };
    Listener {
        name: authority.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(&hcm)),
        }),
        metadata: Some(metadata(&weft)),
        ..Default::default()
    }
}

fn route_config(
    authority: &str,
    svc: &Service,
    vip: Option<std::net::IpAddr>,
    policy: Option<&PolicySpec>,
) -> RouteConfiguration {
    let port = svc.spec.port;
    let mut domains = Vec::new();
    for host in std::iter::once(&svc.host).chain(&svc.spec.aliases) {
        domains.push(format!("{host}:{port}"));
        domains.push(host.clone());
    }
    if let Some(vip) = vip {
        domains.push(format!("{vip}:{port}"));
    }
    let mut routes: Vec<Route> = policy
        .map(|p| {
            p.routes
                .iter()
                .enumerate()
                .map(|(i, r)| route(authority, i, r, p))
                .collect()
        })
        .unwrap_or_default();
    let default = RouteRule {
        name: Some("default".into()),
        ..Default::default()
    };
    let empty = PolicySpec::default();
    routes.push(route(
        authority,
        routes.len(),
        &default,
        policy.unwrap_or(&empty),
    ));
    RouteConfiguration {
        name: authority.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: authority.to_string(),
            domains,
            routes,
            // The service's own bucket, shared by all its routes.
            typed_per_filter_config: policy
                .and_then(|p| p.rate_limit.as_ref())
                .map(|rl| (RATE_LIMIT_FILTER.to_string(), any(&convert::rate_limit(rl))))
                .into_iter()
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn route(authority: &str, index: usize, r: &RouteRule, p: &PolicySpec) -> Route {
    let cluster_of = |subset: &Option<String>| match subset {
        Some(s) => format!("{authority}/{s}"),
        None => authority.to_string(),
    };
    let cluster_specifier = match &r.backends[..] {
        [] => ClusterSpecifier::Cluster(authority.to_string()),
        [one] => ClusterSpecifier::Cluster(cluster_of(&one.subset)),
        many => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|b| ClusterWeight {
                    name: cluster_of(&b.subset),
                    weight: Some(u32v(b.weight)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    let hash_policy = p
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.hash.as_ref())
        .map(convert::hash_policy)
        .into_iter()
        .collect();
    let mirror = r.mirror.as_ref().map(|m| RequestMirrorPolicy {
        cluster: cluster_of(&m.subset),
        runtime_fraction: Some(convert::runtime_percent(m.percent.unwrap_or(100.0))),
        ..Default::default()
    });
    let grpc_timeout_max = r.grpc_timeout_max.or(p.grpc_timeout_max);
    let action = RouteAction {
        cluster_specifier: Some(cluster_specifier),
        timeout: r.timeout.or(p.timeout).map(duration),
        idle_timeout: r.idle_timeout.or(p.idle_timeout).map(duration),
        retry_policy: r.retry.as_ref().or(p.retry.as_ref()).map(retry_policy),
        hash_policy,
        request_mirror_policies: mirror.into_iter().collect(),
        max_stream_duration: grpc_timeout_max.map(|d| MaxStreamDuration {
            grpc_timeout_header_max: Some(duration(d)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut per_filter = std::collections::HashMap::new();
    if let Some(f) = r.fault.as_ref().or(p.fault.as_ref()) {
        per_filter.insert(FAULT_FILTER.to_string(), any(&convert::fault(f)));
    }
    if let Some(rl) = &r.rate_limit {
        per_filter.insert(RATE_LIMIT_FILTER.to_string(), any(&convert::rate_limit(rl)));
    }
    Route {
        name: r.name.clone().unwrap_or_else(|| format!("route-{index}")),
        r#match: Some(route_match(r.matches.as_ref())),
        action: Some(Action::Route(action)),
        typed_per_filter_config: per_filter,
        ..Default::default()
    }
}

fn load_assignment(
    name: &str,
    svc: &Service,
    subset: Option<&BTreeMap<String, String>>,
) -> ClusterLoadAssignment {
    let lb_endpoints = svc
        .spec
        .endpoints
        .iter()
        .filter(|e| subset.is_none_or(|l| l.iter().all(|(k, v)| e.labels.get(k) == Some(v))))
        .map(|e| {
            let weft = names::EndpointMetadata {
                labels: e.labels.clone(),
                identity: e.identity.clone(),
            };
            LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(
                    weft_xds_proto::envoy::config::endpoint::v3::Endpoint {
                        address: Some(socket_address(&e.address)),
                        ..Default::default()
                    },
                )),
                // Weight 0 drains the endpoint (xDS weights start at 1).
                health_status: match (e.healthy, e.weight) {
                    (false, _) => HealthStatus::Unhealthy,
                    (true, 0) => HealthStatus::Draining,
                    (true, _) => HealthStatus::Healthy,
                } as i32,
                load_balancing_weight: Some(u32v(e.weight.max(1))),
                metadata: Some(metadata(&weft)),
            }
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        // One locality, named (empty) and weighted: gRPC's clients drop localities without a
        // weight and reject weighted ones without a name (Envoy ignores locality weights unless
        // told to use them).
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            locality: Some(Locality::default()),
            load_balancing_weight: Some(u32v(1)),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
