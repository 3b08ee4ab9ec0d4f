//! `weftctl check`: what the control plane finds wrong with the mesh it serves, each problem
//! with what to do about it (`GET /api/v1/check`, `docs/weftctl.md`): the registry's documents
//! it could not read, policies that name an unknown service, subsets that select no endpoint,
//! routes no request can reach, proxies that rejected or have not taken the configuration in
//! force, and the CA's own expiry.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::{
    ads::TypeStatus,
    gateway::{HttpRoute, HttpRouteRule},
    policy::{HeaderMatch, RouteMatch, TrafficPolicy},
    registry::Snapshot,
    snapshot::XdsSnapshot,
};

/// A CA certificate that expires sooner than this is a problem: time to rotate it.
pub const CA_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// One thing checked: what, whether it is fine, what was found, and what to do if not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, detail: String) -> Self {
        Finding {
            check,
            ok: true,
            detail,
            fix: None,
        }
    }

    fn problem(check: &'static str, detail: String, fix: impl Into<String>) -> Self {
        Finding {
            check,
            ok: false,
            detail,
            fix: Some(fix.into()),
        }
    }
}

/// What the control plane knows, as the checks read it.
pub struct Inputs<'a> {
    pub registry: &'a Snapshot,
    /// The registry's current errors (documents it could not read).
    pub registry_errors: &'a [String],
    /// Every node that opened an ADS stream.
    pub proxies: Vec<Proxy<'a>>,
    pub serving: &'a XdsSnapshot,
    /// When the CA certificate expires; `None` when the control plane is no CA.
    pub ca_not_after: Option<SystemTime>,
    pub now: SystemTime,
}

/// A node as the checks see it.
pub struct Proxy<'a> {
    pub node: &'a str,
    pub connected: bool,
    /// A delta stream: it is sent only what changed among the resources it subscribed to, so
    /// it is current when it has acknowledged what it was sent.
    pub delta: bool,
    /// By type URL.
    pub types: &'a BTreeMap<String, TypeStatus>,
    /// The namespace it says it is in: which consumer routes it is served.
    pub namespace: &'a str,
}

/// Every check, problems first within each.
pub fn report(i: &Inputs) -> Vec<Finding> {
    let mut out = Vec::new();
    registry(i, &mut out);
    policies(i, &mut out);
    http_routes(i, &mut out);
    ca(i, &mut out);
    proxies(i, &mut out);
    out
}

fn registry(i: &Inputs, out: &mut Vec<Finding>) {
    for e in i.registry_errors {
        out.push(Finding::problem(
            "registry",
            e.clone(),
            "fix or remove the document it names: until then it is left out, and what it declared is not served",
        ));
    }
    if i.registry_errors.is_empty() {
        out.push(Finding::ok(
            "registry",
            format!(
                "{} services, {} policies, every document read",
                i.registry.services.len(),
                i.registry.policies.len()
            ),
        ));
    }
}

fn policies(i: &Inputs, out: &mut Vec<Finding>) {
    let before = out.len();
    for (key, p) in &i.registry.policies {
        policy(i.registry, key, p, out);
    }
    if out.len() == before {
        out.push(Finding::ok(
            "policies",
            format!(
                "{} policies name known services and subsets; every route can match",
                i.registry.policies.len()
            ),
        ));
    }
}

fn policy(registry: &Snapshot, key: &str, p: &TrafficPolicy, out: &mut Vec<Finding>) {
    let spec = &p.spec;
    let Some(svc) = registry.services.get(&spec.service) else {
        out.push(Finding::problem(
            "policies",
            format!(
                "policy {key} governs {}, which no registration declares",
                spec.service
            ),
            "register the service, or correct `spec.service` (host:port, as `weftctl get services` lists it)",
        ));
        return;
    };
    let grpc = registry
        .grpc_routes
        .values()
        .map(|r| ("GRPCRoute", r.as_http()));
    let attached: Vec<(&str, HttpRoute)> = registry
        .http_routes
        .values()
        .map(|r| ("HTTPRoute", r.clone()))
        .chain(grpc)
        .filter(|(_, r)| r.attaches_to(&svc.key, svc.spec.port))
        .collect();
    // Consumer routes (in another namespace) decide only for their own namespace's callers:
    // the policy's routes still serve the others.
    let svc_ns = svc.key.split_once('/').map(|(ns, _)| ns);
    let routed: Vec<String> = (attached.iter())
        .filter(|(_, r)| svc_ns == Some(r.namespace()))
        .map(|(kind, r)| format!("{kind} {}", r.key()))
        .collect();
    // A setting both the policy and a route's rule make (a consumer route's too): the rule's
    // is used there.
    let both = |field: &str, set_in_rule: &dyn Fn(&HttpRouteRule) -> bool| {
        (attached.iter())
            .flat_map(|(kind, r)| r.spec.rules.iter().map(move |rule| (kind, r, rule)))
            .filter(|(_, _, rule)| set_in_rule(rule))
            .map(|(kind, r, _)| format!("{kind} {}", r.key()))
            .map(move |route| (field.to_string(), route))
            .collect::<Vec<_>>()
    };
    let mut conflicts = Vec::new();
    if spec.retry.is_some() {
        conflicts.extend(both("retry", &|rule| rule.retry.is_some()));
    }
    if spec.timeout.is_some() {
        let sets =
            |rule: &HttpRouteRule| rule.timeouts.as_ref().is_some_and(|t| t.request.is_some());
        conflicts.extend(both("timeout", &sets));
    }
    if !spec.routes.is_empty() && !routed.is_empty() {
        out.push(Finding::problem(
            "policies",
            format!(
                "policy {key}: its routes are not used: {} decides how {} is routed",
                routed.join(", "),
                spec.service
            ),
            "put the matches and splits in the HTTPRoute and remove `spec.routes` (the policy's other settings apply to the HTTPRoute's rules)",
        ));
    }
    conflicts.dedup();
    for (field, route) in conflicts {
        out.push(Finding::problem(
            "policies",
            format!(
                "policy {key}: `spec.{field}` is also set by {route}, whose rules use their own"
            ),
            "set it in one place: the route's rule (Gateway API) or the policy, not both",
        ));
    }
    for s in &spec.subsets {
        // A subset no route sends to is harmless, whatever it selects.
        let used = spec.routes.iter().any(|r| {
            r.backends
                .iter()
                .any(|b| b.subset.as_deref() == Some(s.name.as_str()))
        });
        let selects = svc.spec.endpoints.iter().any(|e| {
            s.labels
                .iter()
                .all(|(k, v)| e.labels.get(k).is_some_and(|l| l == v))
        });
        if used && !selects {
            out.push(Finding::problem(
                "policies",
                format!(
                    "policy {key}: subset `{}` selects no endpoint of {}: its share of the traffic gets 503",
                    s.name, spec.service
                ),
                "label the endpoints it should select, or change the subset's labels",
            ));
        }
    }
    // A route that matches every request (no match, an empty one, or only the path prefix
    // `/`) takes them all: the routes after it are never reached; so is a route whose match an
    // earlier route has already (compared as the proxy reads them: header names and the
    // method without case, headers and query parameters in any order).
    let route_name = |n: usize| {
        spec.routes[n]
            .name
            .clone()
            .unwrap_or_else(|| format!("routes[{n}]"))
    };
    let normal: Vec<Option<RouteMatch>> = spec
        .routes
        .iter()
        .map(|r| normal_match(r.matches.as_ref()))
        .collect();
    for n in 0..spec.routes.len() {
        let earlier = normal[..n]
            .iter()
            .position(|e| e.is_none() || *e == normal[n]);
        if let Some(e) = earlier {
            let why = if normal[e].is_none() {
                "matches every request"
            } else {
                "has the same match"
            };
            out.push(Finding::problem(
                "policies",
                format!(
                    "policy {key}: route `{}` can never match: `{}` before it {why}",
                    route_name(n),
                    route_name(e)
                ),
                "move the catch-all route last, or give the routes different matches",
            ));
        }
    }
}

/// HTTPRoutes and GRPCRoutes that attach to nothing registered, and backendRefs naming no registered Service
/// port (their share of the rule's requests is answered 500).
fn http_routes(i: &Inputs, out: &mut Vec<Finding>) {
    let reg = i.registry;
    let before = out.len();
    // GRPCRoutes as the HTTPRoutes they amount to.
    let grpc: Vec<(String, crate::gateway::HttpRoute)> = reg
        .grpc_routes
        .iter()
        .map(|(k, r)| (k.clone(), r.as_http()))
        .collect();
    let all = reg
        .http_routes
        .iter()
        .map(|(k, r)| ("HTTPRoute", k, r))
        .chain(grpc.iter().map(|(k, r)| ("GRPCRoute", k, r)));
    let registered = crate::gateway::Registered::new(reg);
    for (kind, key, r) in all {
        let ns = r.namespace();
        let parents = r.service_parents().map(|p| p.service(ns));
        if !parents.clone().any(|p| p.registered(&registered)) {
            out.push(Finding::problem(
                "routes",
                format!("{kind} {key} attaches to no registered Service (or port)"),
                "correct `spec.parentRefs` (name, namespace, port), or register the Service",
            ));
        }
        for (n, rule) in r.spec.rules.iter().enumerate() {
            for b in rule.backend_refs.iter().filter(|b| b.weight > 0) {
                let s = b.service(ns);
                if !s.registered(&registered) {
                    out.push(Finding::problem(
                        "routes",
                        format!(
                            "{kind} {key}: rules[{n}] sends to {}:{}, which is not registered: its share gets 500",
                            s.key,
                            s.port.unwrap_or(0)
                        ),
                        "register the Service, or correct the backendRef",
                    ));
                }
            }
        }
    }
    let n = reg.http_routes.len() + reg.grpc_routes.len();
    if out.len() == before && n > 0 {
        out.push(Finding::ok(
            "routes",
            format!("{n} routes attach to registered Services and send to registered ones"),
        ));
    }
}

/// A route's match in one form for comparing, `None` when it matches every request.
fn normal_match(m: Option<&RouteMatch>) -> Option<RouteMatch> {
    let m = m?;
    let mut m = m.clone();
    let every_path = m
        .path
        .as_ref()
        .is_none_or(|p| p.prefix.as_deref() == Some("/") && p.exact.is_none() && p.regex.is_none());
    if every_path {
        m.path = None;
    }
    if m.path.is_none() && m.method.is_none() && m.headers.is_empty() && m.query_params.is_empty() {
        return None;
    }
    if let Some(method) = &mut m.method {
        method.make_ascii_uppercase();
    }
    for h in &mut m.headers {
        h.name.make_ascii_lowercase();
    }
    let key = |h: &HeaderMatch| {
        (
            h.name.clone(),
            h.exact.clone(),
            h.prefix.clone(),
            h.regex.clone(),
        )
    };
    m.headers.sort_by_key(key);
    m.query_params.sort_by_key(key);
    Some(m)
}

fn ca(i: &Inputs, out: &mut Vec<Finding>) {
    let Some(not_after) = i.ca_not_after else {
        out.push(Finding::ok(
            "ca",
            "the control plane is no CA (plaintext xDS, no mutual TLS)".into(),
        ));
        return;
    };
    let when = day_and_time(not_after);
    match not_after.duration_since(i.now) {
        Err(_) => out.push(Finding::problem(
            "ca",
            format!("the CA certificate expired at {when}: no workload certificate can be issued"),
            "rotate the CA (docs/security.md, Rotating the root)",
        )),
        Ok(left) if left < CA_EXPIRY_WARNING => out.push(Finding::problem(
            "ca",
            format!(
                "the CA certificate expires at {when}, in {} days",
                left.as_secs() / 86_400
            ),
            "rotate the CA before then (docs/security.md, Rotating the root)",
        )),
        Ok(left) => out.push(Finding::ok(
            "ca",
            format!(
                "the CA certificate is valid until {when} ({} days)",
                left.as_secs() / 86_400
            ),
        )),
    }
}

/// `text` with its control characters (newlines, escape sequences) escaped, for a terminal.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `2027-01-04 12:00 UTC`.
fn day_and_time(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!("{} {:02}:{:02} UTC", t.date(), t.hour(), t.minute())
}

/// The short name of a type URL, as `proxy-status` shows it.
fn type_name(url: &str) -> &str {
    use weft_xds_proto::type_url;
    match url {
        type_url::CLUSTER => "CDS",
        type_url::ENDPOINT => "EDS",
        type_url::LISTENER => "LDS",
        type_url::ROUTE => "RDS",
        other => other,
    }
}

fn proxies(i: &Inputs, out: &mut Vec<Finding>) {
    let connected: Vec<&Proxy> = i.proxies.iter().filter(|p| p.connected).collect();
    let before = out.len();
    for p in &connected {
        let node = p.node;
        for (url, t) in p.types {
            if !i.serving.types.contains_key(url.as_str()) {
                continue;
            }
            // What it is served: the snapshot, with its namespace's variants.
            let serving = i.serving.view(url, p.namespace).version();
            let name = type_name(url);
            let current = if p.delta {
                t.sent_version.as_deref()
            } else {
                Some(serving.as_str())
            };
            let Some(current) = current else { continue };
            if t.acked_version.as_deref() == Some(current) {
                continue;
            }
            if let Some((version, error)) = &t.last_nack {
                out.push(Finding::problem(
                    "proxies",
                    format!("proxy {node} rejected {name} version {version}: {error}"),
                    "fix what the error names (a policy or registration); the proxy keeps its last good configuration until then",
                ));
            } else {
                out.push(Finding::problem(
                    "proxies",
                    format!(
                        "proxy {node} has not taken {name} version {current} (acknowledged: {})",
                        t.acked_version.as_deref().unwrap_or("none")
                    ),
                    "if it stays behind, see the proxy's log and `weftctl config-dump` for it",
                ));
            }
        }
    }
    if out.len() == before {
        out.push(Finding::ok(
            "proxies",
            format!(
                "{} connected proxies acknowledged the configuration in force",
                connected.len()
            ),
        ));
    }
}

#[cfg(test)]
mod tests;
