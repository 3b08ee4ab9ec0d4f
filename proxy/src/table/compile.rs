//! Compiling a table file ([`TableFile`]) into a [`Table`]: every field checked, errors
//! naming the field (`services[1].routes[0].timeout`).

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use http::{HeaderName, Method};
use weft_core::policy::{LbPolicy, LoadBalancer};

use super::{
    Cluster, Endpoint, Guard, HashOn, Mirror, Protocol, Route, RoutePolicy, Service, Table,
    TableFile, canonical, file,
    index::{Entry, Index},
    names::Names,
};
use crate::{
    authz::Authz,
    balance::Outlier,
    metrics::{Direction, LazyTarget, Metrics},
    resilience::{Fault, TokenBucket},
    resolve::Resolved,
    retry::{Budget, Retry},
    route::{HeaderMatch, QueryMatch, RouteMatch, StringMatch, WeightedSplit},
};

impl Table {
    /// Compiles and validates a table file. Errors name the field (`services[1].port`).
    pub fn compile(
        source: TableFile,
        version: Arc<str>,
        generation: u64,
        metrics: &Arc<Metrics>,
        dns: &Resolved,
        previous: &Table,
    ) -> Result<Table, (String, String)> {
        let names = Names::new(dns, previous);
        let mut authorities: HashMap<String, usize> = HashMap::new();
        let mut vips: HashMap<SocketAddr, usize> = HashMap::new();
        let mut drafts = Vec::with_capacity(source.services.len());
        for (i, spec) in source.services.iter().enumerate() {
            let at = format!("services[{i}]");
            let mut svc = compile_service(spec, &at, &names)?;
            let guard = svc.authz.as_ref().map(|authz| Guard {
                service: svc.name.clone(),
                authz: authz.clone(),
                endpoints: spec
                    .endpoints
                    .iter()
                    .flat_map(|e| names.addrs(&e.address))
                    .map(canonical)
                    .collect(),
            });
            // The guard's host names are its cluster's, counted there.
            names.take_used();
            for (j, host) in std::iter::once(&spec.name).chain(&spec.aliases).enumerate() {
                let field = if j == 0 {
                    format!("{at}.name")
                } else {
                    format!("{at}.aliases[{}]", j - 1)
                };
                let host = validate_host(host).map_err(|m| (field.clone(), m))?;
                let authority = format!("{host}:{}", spec.port);
                if let Some(other) = authorities.insert(authority.clone(), i) {
                    return Err((
                        field,
                        format!("`{authority}` is already taken by services[{other}]"),
                    ));
                }
                svc.domains.push(authority.into());
                svc.domains.push(host.as_str().into());
            }
            if let Some(ip) = spec.vip {
                let vip = SocketAddr::new(ip, spec.port);
                if let Some(other) = vips.insert(vip, i) {
                    return Err((
                        format!("{at}.vip"),
                        format!("`{vip}` is already taken by services[{other}]"),
                    ));
                }
                svc.domains.push(vip.to_string().into());
            }
            drafts.push((svc, guard));
        }
        // Only a table that compiled whole gets to make metrics handles.
        let mut index = Index::default();
        for (svc, guard) in drafts {
            let svc = Arc::new(svc.finish(metrics));
            index.put(
                &svc.name.clone(),
                Some(Entry::new(Some(svc), guard, Box::default())),
            );
        }
        Ok(Table {
            version,
            generation,
            index,
            source,
        })
    }
}

fn validate_host(host: &str) -> Result<String, String> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(host.to_ascii_lowercase())
    } else {
        Err(format!(
            "`{host}` is not a host name (letters, digits, `-` and `.` only)"
        ))
    }
}

/// A compiled service still waiting for its metrics handles, which it gets once the whole table
/// is known to be valid.
pub(crate) struct ServiceDraft {
    pub(crate) name: Arc<str>,
    pub(crate) protocol: Protocol,
    pub(crate) routes: Box<[Route]>,
    pub(crate) default_route: Route,
    pub(crate) strict: bool,
    pub(crate) domains: Vec<Arc<str>>,
    pub(crate) authz: Option<Arc<Authz>>,
    pub(crate) budget: Arc<Budget>,
    pub(crate) rate_limit: Option<Arc<TokenBucket>>,
}

impl ServiceDraft {
    pub(crate) fn finish(mut self, metrics: &Arc<Metrics>) -> Service {
        for r in self.routes.iter_mut() {
            r.count(metrics, &self.name);
        }
        self.default_route.count(metrics, &self.name);
        Service {
            metrics: LazyTarget::new(metrics, Direction::Outbound, self.name.clone()),
            name: self.name,
            protocol: self.protocol,
            routes: self.routes,
            default_route: self.default_route,
            strict: self.strict,
            domains: self.domains.into(),
            authz: self.authz,
            budget: self.budget,
            rate_limit: self.rate_limit,
        }
    }
}

fn compile_service(
    spec: &file::ServiceSpec,
    at: &str,
    names: &Names,
) -> Result<ServiceDraft, (String, String)> {
    if spec.port == 0 {
        return Err((format!("{at}.port"), "must be between 1 and 65535".into()));
    }
    let name: Arc<str> = format!("{}:{}", spec.name.to_ascii_lowercase(), spec.port).into();
    for (i, e) in spec.endpoints.iter().enumerate() {
        if let Some(id) = &e.identity
            && !id.starts_with("spiffe://")
        {
            return Err((
                format!("{at}.endpoints[{i}].identity"),
                format!("`{id}` is not a SPIFFE id"),
            ));
        }
    }
    let authz = spec
        .authorization
        .as_ref()
        .map(Authz::compile)
        .transpose()
        .map_err(|e| (format!("{at}.authorization.{}", e.field), e.message))?
        .map(Arc::new);
    let lb = spec.load_balancer.clone().unwrap_or_default();
    let hash = compile_hash(&lb, &format!("{at}.loadBalancer"))?;
    let endpoints = |e: &file::EndpointSpec| -> Vec<(u32, Endpoint)> {
        let labels = Arc::new(e.labels.clone());
        let identity: Option<Arc<str>> = e.identity.as_deref().map(Arc::from);
        names
            .endpoints(&e.address, &labels, &identity)
            .into_iter()
            .map(|ep| (e.weight, ep))
            .collect()
    };
    let outlier = spec.outlier_detection.as_ref().map(Outlier::compile);
    let panic_threshold = crate::resilience::check_percent(
        lb.panic_threshold
            .unwrap_or(crate::balance::DEFAULT_PANIC_THRESHOLD),
    )
    .map_err(|e| (format!("{at}.loadBalancer.panicThreshold"), e))?;
    let cluster = |name: Arc<str>, members: WeightedSplit<Endpoint>| {
        let mut c = Cluster::new(name.clone(), members, lb.policy);
        c.dns = names.take_used();
        c.outlier = outlier.clone().map(Box::new);
        c.panic_threshold = panic_threshold;
        c.breaker = names.breaker(&name, spec.circuit_breaker.as_ref());
        Arc::new(c)
    };
    let all = cluster(
        name.clone(),
        WeightedSplit::new(spec.endpoints.iter().flat_map(endpoints)),
    );
    let mut subsets: HashMap<&str, Arc<Cluster>> = HashMap::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        if s.name.is_empty() {
            return Err((
                format!("{at}.subsets[{i}].name"),
                "must not be empty".into(),
            ));
        }
        let members = spec
            .endpoints
            .iter()
            .filter(|e| s.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)));
        let c = cluster(
            format!("{name}/{}", s.name).into(),
            WeightedSplit::new(members.flat_map(endpoints)),
        );
        if subsets.insert(&s.name, c).is_some() {
            return Err((
                format!("{at}.subsets[{i}].name"),
                format!("subset `{}` is defined twice", s.name),
            ));
        }
    }
    let subset = |s: &Option<String>, field: String| -> Result<Arc<Cluster>, (String, String)> {
        match s {
            None => Ok(all.clone()),
            Some(s) => subsets.get(s.as_str()).cloned().ok_or_else(|| {
                let mut known: Vec<&str> = subsets.keys().copied().collect();
                known.sort_unstable();
                (
                    field,
                    format!("unknown subset `{s}` (defined: {})", known.join(", ")),
                )
            }),
        }
    };
    let mut routes = Vec::with_capacity(spec.routes.len());
    for (i, r) in spec.routes.iter().enumerate() {
        let rat = format!("{at}.routes[{i}]");
        let mut backends = Vec::with_capacity(r.backends.len());
        for (j, b) in r.backends.iter().enumerate() {
            backends.push((
                b.weight,
                subset(&b.subset, format!("{rat}.backends[{j}].subset"))?,
            ));
        }
        let backends = if backends.is_empty() {
            WeightedSplit::new([(1, all.clone())])
        } else {
            WeightedSplit::new(backends)
        };
        if backends.is_empty() {
            return Err((
                format!("{rat}.backends"),
                "every backend has weight 0: nothing could be routed".into(),
            ));
        }
        let route_name: Arc<str> = r
            .name
            .clone()
            .unwrap_or_else(|| format!("route-{i}"))
            .into();
        let mirror = match &r.mirror {
            Some(m) => {
                let percent = crate::resilience::check_percent(m.percent.unwrap_or(100.0))
                    .map_err(|e| (format!("{rat}.mirror.percent"), e))?;
                Some(Mirror {
                    cluster: subset(&m.subset, format!("{rat}.mirror.subset"))?,
                    percent,
                })
            }
            None => None,
        };
        let policy = RoutePolicy {
            timeout: r.timeout,
            hash: hash.clone(),
            retry: compile_retry(r.retry.as_ref().or(spec.retry.as_ref()), &rat)?,
            fault: r
                .fault
                .as_ref()
                .or(spec.fault.as_ref())
                .map(Fault::compile)
                .transpose()
                .map_err(|e| (format!("{rat}.fault"), e.to_string()))?,
            rate_limit: r
                .rate_limit
                .as_ref()
                .map(|rl| {
                    check_rate_limit(rl, &format!("{rat}.rateLimit"))?;
                    Ok::<_, (String, String)>(names.bucket(
                        &name,
                        Some(&route_name),
                        TokenBucket::from_policy(rl),
                    ))
                })
                .transpose()?,
            mirror,
            grpc_timeout_max: r.grpc_timeout_max,
            idle_timeout: r.idle_timeout,
            headers: None,
            rewrite: None,
            redirect: None,
        };
        routes.push(Route {
            name: route_name,
            matches: compile_match(&r.matches, &format!("{rat}.match"))?.shared(),
            backends,
            policy: policy.shared(),
            metrics: Box::default(),
            backend_headers: Box::default(),
        });
    }
    let default_policy = RoutePolicy {
        hash,
        retry: compile_retry(spec.retry.as_ref(), at)?,
        fault: spec
            .fault
            .as_ref()
            .map(Fault::compile)
            .transpose()
            .map_err(|e| (format!("{at}.fault"), e.to_string()))?,
        ..RoutePolicy::default()
    };
    let budget = Budget::from_policy(spec.retry.as_ref().and_then(|r| r.budget.as_ref()));
    if !(0.0..=1.0).contains(&budget.ratio) {
        return Err((
            format!("{at}.retry.budget.ratio"),
            format!(
                "{} is not a ratio between 0 and 1 (0.2 means 20%)",
                budget.ratio
            ),
        ));
    }
    let rate_limit = spec
        .rate_limit
        .as_ref()
        .map(|rl| {
            check_rate_limit(rl, &format!("{at}.rateLimit"))?;
            Ok::<_, (String, String)>(names.bucket(&name, None, TokenBucket::from_policy(rl)))
        })
        .transpose()?;
    Ok(ServiceDraft {
        budget: names.budget(&name, budget),
        rate_limit,
        name,
        protocol: spec.protocol,
        routes: routes.into(),
        default_route: Route {
            name: Route::default_name(),
            matches: RouteMatch::any(),
            backends: WeightedSplit::new([(1, all)]),
            policy: default_policy.shared(),
            metrics: Box::default(),
            backend_headers: Box::default(),
        },
        strict: false,
        domains: Vec::new(),
        authz,
    })
}

/// A retry policy, compiled; `at` is where it applies (its `retry` field is named in errors).
fn compile_retry(
    p: Option<&weft_core::policy::RetryPolicy>,
    at: &str,
) -> Result<Option<Retry>, (String, String)> {
    p.map(Retry::compile)
        .transpose()
        .map_err(|e| (format!("{at}.retry"), e.to_string()))
}

fn check_rate_limit(rl: &weft_core::policy::RateLimit, at: &str) -> Result<(), (String, String)> {
    if rl.requests_per_second == 0 {
        return Err((
            format!("{at}.requestsPerSecond"),
            "must be at least 1".into(),
        ));
    }
    if rl.burst == Some(0) {
        return Err((format!("{at}.burst"), "must be at least 1".into()));
    }
    Ok(())
}

/// What a service's load balancer hashes, checked: `ring-hash` needs a key; a key with any
/// other policy keeps callers on one backend of a split (sticky canary) only.
fn compile_hash(lb: &LoadBalancer, at: &str) -> Result<Option<HashOn>, (String, String)> {
    let Some(h) = &lb.hash else {
        if lb.policy == LbPolicy::RingHash {
            return Err((
                format!("{at}.hash"),
                "`ring-hash` needs a hash key (`header`, `cookie` or `sourceIp`)".into(),
            ));
        }
        return Ok(None);
    };
    let at = format!("{at}.hash");
    match (&h.header, &h.cookie, h.source_ip == Some(true)) {
        (Some(name), None, false) => HeaderName::from_bytes(name.as_bytes())
            .map(|n| Some(HashOn::Header(n)))
            .map_err(|_| {
                (
                    format!("{at}.header"),
                    format!("`{name}` is not a header name"),
                )
            }),
        (None, Some(c), false) if !c.is_empty() => Ok(Some(HashOn::Cookie(c.as_str().into()))),
        (None, None, true) => Ok(Some(HashOn::SourceIp)),
        _ => Err((
            at,
            "set exactly one of `header`, `cookie` or `sourceIp: true`".into(),
        )),
    }
}

fn compile_match(m: &file::MatchSpec, at: &str) -> Result<RouteMatch, (String, String)> {
    let path = m
        .path
        .as_ref()
        .map(|p| compile_string_match(p, &format!("{at}.path"), false))
        .transpose()?;
    let method = m
        .method
        .as_ref()
        .map(|s| {
            Method::from_bytes(s.to_ascii_uppercase().as_bytes()).map_err(|_| {
                (
                    format!("{at}.method"),
                    format!("`{s}` is not an HTTP method"),
                )
            })
        })
        .transpose()?;
    let mut headers = Vec::with_capacity(m.headers.len());
    for (i, h) in m.headers.iter().enumerate() {
        let hat = format!("{at}.headers[{i}]");
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            (
                format!("{hat}.name"),
                format!("`{}` is not a header name", h.name),
            )
        })?;
        let value = compile_string_match(&h.value(), &hat, true)?;
        headers.push(HeaderMatch { name, value });
    }
    let mut query = Vec::with_capacity(m.query_params.len());
    for (i, q) in m.query_params.iter().enumerate() {
        let qat = format!("{at}.queryParams[{i}]");
        if q.name.is_empty() {
            return Err((format!("{qat}.name"), "must not be empty".into()));
        }
        query.push(QueryMatch {
            name: q.name.as_str().into(),
            value: compile_string_match(&q.value(), &qat, true)?,
        });
    }
    Ok(RouteMatch {
        path,
        method,
        headers,
        query,
    })
}

fn compile_string_match(
    m: &file::StringMatchSpec,
    at: &str,
    none_ok: bool,
) -> Result<StringMatch, (String, String)> {
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), None, None) => Ok(StringMatch::Exact(e.as_str().into())),
        (None, Some(p), None) => Ok(StringMatch::Prefix(p.as_str().into())),
        (None, None, Some(r)) => {
            StringMatch::regex(r).map_err(|e| (format!("{at}.regex"), e.to_string()))
        }
        (None, None, None) if none_ok => Ok(StringMatch::Any),
        _ => Err((
            at.to_string(),
            "set exactly one of `exact`, `prefix` or `regex`".into(),
        )),
    }
}
