//! Gateway API routes (GAMMA) -> a service's xDS routes. The rules of every `HTTPRoute`
//! attached to a service (through a `parentRef` naming it, and its port if one is given)
//! replace the service's default route: each of a rule's matches is one xDS route (a rule's
//! matches are ORed), all ordered by the Gateway API's precedence, and a request none matches
//! is answered 404 (the route configuration has no catch-all).
//!
//! Precedence, across the routes attached to the service, as `HTTPRouteRule.matches` orders
//! it: an Exact path; then a RegularExpression path (longer patterns first; where a regex goes
//! is left to implementations); then a PathPrefix, longer first; then a match with a method;
//! then more header matches; then more query parameter matches; then the older route
//! (`creationTimestamp`), then `namespace/name`; then the rule's and the match's order.
//!
//! A backendRef names a Service port: its cluster is that service's (`host:port`). One that
//! names no registered service gets its share of the rule's requests answered 500, as the
//! specification requires: the weighted cluster names a cluster that does not exist
//! (`unresolved/<namespace>/<name>:<port>`) and the route says so
//! (`cluster_not_found_response_code: INTERNAL_SERVER_ERROR`).

use std::collections::BTreeMap;

use weft_xds_proto::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use weft_xds_proto::envoy::config::route::v3::{
    RedirectAction, RetryPolicy as EnvoyRetry, Route, RouteAction, WeightedCluster,
    redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
    route::Action,
    route_action::{
        ClusterNotFoundResponseCode, ClusterSpecifier, HostRewriteSpecifier, RequestMirrorPolicy,
    },
    route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
};

use super::convert::{duration, metadata, retry_policy, route_match, runtime_percent, u32v};
use crate::gateway::{self, HttpRoute, HttpRouteMatch, PathMatchType, ValueMatchType};
use crate::policy::{HeaderMatch, RouteMatch, StringMatch};
use crate::registry::{Service, Snapshot};
use weft_core::contract::xds::RouteMetadata;
use weft_xds_proto::envoy::r#type::matcher::v3::{RegexMatchAndSubstitute, RegexMatcher};

/// The registered services by `namespace/name` (a Service with several ports is several).
pub(super) struct ByKey<'a>(BTreeMap<&'a str, Vec<&'a Service>>);

impl<'a> ByKey<'a> {
    pub(super) fn new(snap: &'a Snapshot) -> Self {
        let mut m: BTreeMap<&str, Vec<&Service>> = BTreeMap::new();
        for s in snap.services.values() {
            m.entry(s.key.as_str()).or_default().push(s);
        }
        ByKey(m)
    }

    fn find(&self, r: &gateway::ServiceRef) -> Vec<&'a Service> {
        self.0
            .get(r.key.as_str())
            .into_iter()
            .flatten()
            .copied()
            .filter(|s| r.port.is_none_or(|p| p == s.spec.port))
            .collect()
    }
}

/// The routes attached to the services: each a route group (GEP-1426) whose routes are merged.
#[derive(Debug, Default)]
pub(super) struct Attached<'a> {
    /// Producer routes (in their Service's namespace) by the service's `host:port`: they apply
    /// to every caller.
    pub producer: BTreeMap<String, Vec<&'a HttpRoute>>,
    /// Consumer routes (in another namespace than their Service's), by the callers' namespace
    /// (the route's) and the service's `host:port`: they apply to callers in that namespace
    /// only, and replace the producer routes for them.
    pub consumer: BTreeMap<(String, String), Vec<&'a HttpRoute>>,
}

/// The routes attached to each service. GRPCRoutes are taken as the HTTPRoutes they amount to
/// (held in `grpc`); where both kinds attach to a service in one group, the GRPCRoutes win,
/// as the Gateway API orders route kinds (GEP-1294).
pub(super) fn attached<'a>(
    snap: &'a Snapshot,
    grpc: &'a [HttpRoute],
    services: &ByKey<'a>,
) -> Attached<'a> {
    let attach = |routes: &mut dyn Iterator<Item = &'a HttpRoute>| {
        let mut out = Attached::default();
        for route in routes {
            let ns = route.namespace();
            let mut seen = Vec::new();
            for p in route.service_parents() {
                let parent = p.service(ns);
                for svc in services.find(&parent) {
                    let authority = svc.authority();
                    // Attached once, however many of its parentRefs name the service.
                    if seen.contains(&authority) {
                        continue;
                    }
                    seen.push(authority.clone());
                    if parent.namespace() == ns {
                        out.producer.entry(authority).or_default().push(route);
                    } else {
                        let key = (ns.to_string(), authority);
                        out.consumer.entry(key).or_default().push(route);
                    }
                }
            }
        }
        out
    };
    let mut out = attach(&mut snap.http_routes.values());
    let grpc = attach(&mut grpc.iter());
    out.producer.extend(grpc.producer);
    out.consumer.extend(grpc.consumer);
    out
}

/// The order of one match among all the service's (smaller first).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Precedence<'a> {
    /// 0 Exact, 1 RegularExpression, 2 PathPrefix.
    path_kind: u8,
    /// Longer first.
    path_len: std::cmp::Reverse<usize>,
    /// With a method first.
    no_method: bool,
    headers: std::cmp::Reverse<usize>,
    query: std::cmp::Reverse<usize>,
    /// Routes without a timestamp (outside Kubernetes) come after those with one.
    created: (bool, &'a str),
    key: String,
    rule: usize,
    index: usize,
}

fn precedence<'a>(
    route: &'a HttpRoute,
    rule: usize,
    index: usize,
    m: &HttpRouteMatch,
) -> Precedence<'a> {
    let (path_kind, path_len) = match &m.path {
        Some(p) if p.kind == PathMatchType::Exact => (0, p.value.len()),
        Some(p) if p.kind == PathMatchType::RegularExpression => (1, p.value.len()),
        Some(p) => (2, p.value.trim_end_matches('/').len()),
        None => (2, 0),
    };
    let created = route.metadata.creation_timestamp.as_deref();
    Precedence {
        path_kind,
        path_len: std::cmp::Reverse(path_len),
        no_method: m.method.is_none(),
        headers: std::cmp::Reverse(m.headers.len()),
        query: std::cmp::Reverse(m.query_params.len()),
        created: (created.is_none(), created.unwrap_or("")),
        key: route.key(),
        rule,
        index,
    }
}

/// The xDS routes of the routes attached to one service, in precedence order. `base` makes a
/// route with the service's policy's settings (its name, and the rule's timeout if any): the
/// rule's match and backends are put in it.
pub(super) fn routes(
    attached: &[&HttpRoute],
    services: &ByKey<'_>,
    base: impl Fn(String, Option<std::time::Duration>) -> Route,
) -> Vec<Route> {
    let all_paths = [HttpRouteMatch::default()];
    let mut out: Vec<(Precedence<'_>, Route)> = Vec::new();
    for route in attached {
        let ns = route.namespace();
        for (i, rule) in route.spec.rules.iter().enumerate() {
            let name = match &rule.name {
                Some(n) => format!("{}/{n}", route.key()),
                None => format!("{}/rule-{i}", route.key()),
            };
            let timeout = rule
                .timeouts
                .as_ref()
                .and_then(|t| t.request.as_deref())
                .and_then(gateway::duration);
            let mut route_base = base(name, timeout.filter(|d| !d.is_zero()));
            for f in &rule.filters {
                if let Some(m) = &f.request_header_modifier {
                    route_base.request_headers_to_add = headers_to_add(m);
                    route_base.request_headers_to_remove = headers_to_remove(m);
                }
                if let Some(m) = &f.response_header_modifier {
                    route_base.response_headers_to_add = headers_to_add(m);
                    route_base.response_headers_to_remove = headers_to_remove(m);
                }
            }
            let redirect = rule
                .filters
                .iter()
                .find_map(|f| f.request_redirect.as_ref());
            if let Some(d) = redirect {
                route_base.action = Some(Action::Redirect(redirect_action(d)));
            }
            if let Some(Action::Route(a)) = &mut route_base.action {
                backends(a, rule, ns, services);
                // A mirror to a Service that is not registered copies nothing (its route's
                // status says so); the rule's own traffic goes on.
                let mirror = rule.filters.iter().find_map(|f| f.request_mirror.as_ref());
                for u in rule.filters.iter().filter_map(|f| f.url_rewrite.as_ref()) {
                    url_rewrite(a, u);
                }
                if let Some((m, svc)) = mirror
                    .and_then(|m| Some((m, *services.find(&m.backend_ref.service(ns)).first()?)))
                {
                    a.request_mirror_policies = vec![RequestMirrorPolicy {
                        cluster: svc.authority(),
                        runtime_fraction: Some(runtime_percent(m.percent())),
                        ..Default::default()
                    }];
                }
                // The rule's retries replace the policy's (the budget stays the backends'
                // clusters'). Its backoff is a minimum, which weft's route metadata carries:
                // the standard field's base is the ceiling of a full-jitter draw.
                if let Some(r) = &rule.retry {
                    a.retry_policy = Some(retry_policy(&r.policy()));
                    let floor = r.minimum();
                    if floor.is_some() {
                        route_base.metadata = Some(metadata(&RouteMetadata {
                            retry_backoff_min: floor,
                        }));
                    }
                }
                // `0s` is no timeout, whatever the policy says.
                if timeout.is_some_and(|d| d.is_zero()) {
                    a.timeout = None;
                }
                // One try's time limit: the policy's retries (if any) each get it; without
                // them, the one try does (no retry is added).
                let backend = rule
                    .timeouts
                    .as_ref()
                    .and_then(|t| t.backend_request.as_deref())
                    .and_then(gateway::duration)
                    .filter(|d| !d.is_zero());
                if let Some(d) = backend {
                    let rp = a.retry_policy.get_or_insert_with(|| EnvoyRetry {
                        num_retries: Some(u32v(0)),
                        ..Default::default()
                    });
                    rp.per_try_timeout = Some(duration(d));
                }
            }
            let matches = if rule.matches.is_empty() {
                &all_paths[..]
            } else {
                &rule.matches[..]
            };
            for (j, m) in matches.iter().enumerate() {
                let r = Route {
                    r#match: Some(xds_match(m)),
                    ..route_base.clone()
                };
                out.push((precedence(route, i, j, m), r));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(_, r)| r).collect()
}

/// A RequestRedirect as xDS's redirect action.
fn redirect_action(d: &gateway::RequestRedirect) -> RedirectAction {
    let response_code = match d.status_code.unwrap_or(302) {
        301 => RedirectResponseCode::MovedPermanently,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        _ => RedirectResponseCode::Found,
    };
    let path_rewrite_specifier = d.path.as_ref().and_then(|p| {
        match (
            p.replace_prefix_match.as_deref(),
            p.replace_full_path.as_deref(),
        ) {
            (Some(prefix), _) if p.kind == "ReplacePrefixMatch" => {
                Some(PathRewriteSpecifier::PrefixRewrite(
                    if prefix.is_empty() { "/" } else { prefix }.to_string(),
                ))
            }
            (_, Some(full)) => Some(PathRewriteSpecifier::PathRedirect(full.to_string())),
            _ => None,
        }
    });
    RedirectAction {
        scheme_rewrite_specifier: d.scheme.clone().map(SchemeRewriteSpecifier::SchemeRedirect),
        host_redirect: d.hostname.clone().unwrap_or_default(),
        port_redirect: d.port.map_or(0, u32::from),
        path_rewrite_specifier,
        response_code: response_code as i32,
        strip_query: false,
    }
}

/// A URLRewrite as the action's rewrites: `prefix_rewrite` (the proxy replaces the matched
/// prefix on a segment boundary), `regex_rewrite` of the whole path for ReplaceFullPath,
/// `host_rewrite_literal`.
fn url_rewrite(a: &mut RouteAction, u: &gateway::UrlRewrite) {
    if let Some(p) = &u.path {
        match (
            p.replace_prefix_match.as_deref(),
            p.replace_full_path.as_deref(),
        ) {
            (Some(prefix), _) if p.kind == "ReplacePrefixMatch" => {
                // Envoy's empty prefix_rewrite is none: `/` takes the prefix out.
                a.prefix_rewrite = if prefix.is_empty() { "/" } else { prefix }.to_string();
            }
            (_, Some(full)) => {
                a.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(RegexMatcher {
                        regex: "^.*$".into(),
                        ..Default::default()
                    }),
                    substitution: full.to_string(),
                });
            }
            _ => {}
        }
    }
    if let Some(h) = &u.hostname {
        a.host_rewrite_specifier = Some(HostRewriteSpecifier::HostRewriteLiteral(h.clone()));
    }
}

/// A header modifier's `set` (overwrite) and `add` (append) as xDS header options.
fn headers_to_add(m: &gateway::HeaderModifier) -> Vec<HeaderValueOption> {
    let option = |h: &gateway::HttpHeader, action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: h.name.to_ascii_lowercase(),
            value: h.value.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    let set = m
        .set
        .iter()
        .map(|h| option(h, HeaderAppendAction::OverwriteIfExistsOrAdd));
    let add = m
        .add
        .iter()
        .map(|h| option(h, HeaderAppendAction::AppendIfExistsOrAdd));
    set.chain(add).collect()
}

fn headers_to_remove(m: &gateway::HeaderModifier) -> Vec<String> {
    m.remove.iter().map(|n| n.to_ascii_lowercase()).collect()
}

/// Sets `a`'s clusters to the rule's backendRefs.
fn backends(a: &mut RouteAction, rule: &gateway::HttpRouteRule, ns: &str, services: &ByKey<'_>) {
    let mut unresolved = false;
    let clusters: Vec<ClusterWeight> = rule
        .backend_refs
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| {
            let r = b.service(ns);
            let name = match services.find(&r).first() {
                Some(svc) => svc.authority(),
                None => {
                    unresolved = true;
                    format!("unresolved/{}:{}", r.key, r.port.unwrap_or(0))
                }
            };
            ClusterWeight {
                name,
                weight: Some(u32v(b.weight)),
                ..Default::default()
            }
        })
        .collect();
    // A backend's own header changes ride on its weighted cluster (so a backend with filters
    // is a weighted cluster even alone).
    let with_filters = rule.backend_refs.iter().any(|b| !b.filters.is_empty());
    let mut clusters = clusters;
    for (c, b) in clusters
        .iter_mut()
        .zip(rule.backend_refs.iter().filter(|b| b.weight > 0))
    {
        for f in &b.filters {
            if let Some(m) = &f.request_header_modifier {
                c.request_headers_to_add = headers_to_add(m);
                c.request_headers_to_remove = headers_to_remove(m);
            }
            if let Some(m) = &f.response_header_modifier {
                c.response_headers_to_add = headers_to_add(m);
                c.response_headers_to_remove = headers_to_remove(m);
            }
        }
    }
    let cluster_specifier = match &clusters[..] {
        // Every weight 0: nowhere to send (500, as for a backend that cannot be resolved).
        [] => {
            unresolved = true;
            ClusterSpecifier::Cluster("unresolved/no-backend".into())
        }
        [one] if !with_filters => ClusterSpecifier::Cluster(one.name.clone()),
        _ => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters,
            ..Default::default()
        }),
    };
    a.cluster_specifier = Some(cluster_specifier);
    if unresolved {
        a.cluster_not_found_response_code = ClusterNotFoundResponseCode::InternalServerError as i32;
    }
}

/// A Gateway API match as xDS's: PathPrefix as `path_separated_prefix` (whole segments; `/`
/// as the plain prefix `/`), header names lower-cased, the method as `:method`.
fn xds_match(m: &HttpRouteMatch) -> weft_xds_proto::envoy::config::route::v3::RouteMatch {
    let named = |n: &gateway::NameMatch| {
        let (exact, regex) = match n.kind {
            ValueMatchType::Exact => (Some(n.value.clone()), None),
            ValueMatchType::RegularExpression => (None, Some(n.value.clone())),
        };
        HeaderMatch {
            name: n.name.clone(),
            exact,
            prefix: None,
            regex,
        }
    };
    // The first match of a header name wins (the API's rule); the rest are left out.
    let mut headers: Vec<HeaderMatch> = Vec::new();
    for h in &m.headers {
        if !headers.iter().any(|x| x.name.eq_ignore_ascii_case(&h.name)) {
            headers.push(named(h));
        }
    }
    let mut query_params: Vec<HeaderMatch> = Vec::new();
    for q in &m.query_params {
        if !query_params.iter().any(|x| x.name == q.name) {
            query_params.push(named(q));
        }
    }
    let policy_match = RouteMatch {
        path: None,
        method: m.method.clone(),
        headers,
        query_params,
    };
    let mut out = route_match(Some(&policy_match));
    out.path_specifier = Some(match &m.path {
        None => PathSpecifier::Prefix("/".into()),
        Some(p) => match p.kind {
            PathMatchType::Exact => PathSpecifier::Path(p.value.clone()),
            PathMatchType::RegularExpression => {
                let regex = StringMatch {
                    regex: Some(p.value.clone()),
                    ..Default::default()
                };
                match route_match(Some(&RouteMatch {
                    path: Some(regex),
                    ..Default::default()
                }))
                .path_specifier
                {
                    Some(s) => s,
                    None => PathSpecifier::Prefix("/".into()),
                }
            }
            PathMatchType::PathPrefix => match p.value.trim_end_matches('/') {
                "" => PathSpecifier::Prefix("/".into()),
                prefix => PathSpecifier::PathSeparatedPrefix(prefix.into()),
            },
        },
    });
    out
}

#[cfg(test)]
mod tests;
