//! What a policy must mean, beyond its shape. Every problem is reported with the field it is in,
//! all at once, so that an operator can fix a policy in one go.

use std::collections::BTreeSet;

use weft_core::policy::check::Problem;

use super::*;

/// One problem in one field (`spec.routes[1].backends[0].subset`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Collects errors under a field path (the Gateway API's routes' validation adds its own
/// checks to it).
#[derive(Default)]
pub(crate) struct Check {
    pub(crate) errors: Vec<FieldError>,
}

impl Check {
    pub(crate) fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn at_most_one(&mut self, field: &str, set: &[(&str, bool)], need_one: bool) {
        let given: Vec<&str> = set.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect();
        let names: Vec<String> = set.iter().map(|(n, _)| format!("`{n}`")).collect();
        let names = names.join(", ");
        if given.len() > 1 {
            self.fail(
                field,
                format!("set only one of {names} (found {})", given.join(", ")),
            );
        } else if need_one && given.is_empty() {
            self.fail(field, format!("set one of {names}"));
        }
    }

    fn percent(&mut self, field: String, value: f64) {
        if let Err(e) = weft_core::policy::check::percent(value) {
            self.fail(field, e);
        }
    }

    fn positive(&mut self, field: String, value: Option<u32>) {
        if value == Some(0) {
            self.fail(field, "must be at least 1");
        }
    }
}

/// A namespace or a name as policies use them: lower-case letters, digits, `-` and `.` (never
/// `_` or `/`, which weftctl's store relies on).
pub fn is_name(h: &str) -> bool {
    is_host(h)
}

fn is_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl TrafficPolicy {
    /// Every problem in the policy, or `Ok` when it may be put in force.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut c = Check { errors: Vec::new() };
        if self.api_version != API_VERSION {
            c.fail(
                "apiVersion",
                format!("`{}`: expected `{API_VERSION}`", self.api_version),
            );
        }
        if self.kind != KIND {
            c.fail("kind", format!("`{}`: expected `{KIND}`", self.kind));
        }
        if !is_host(&self.metadata.name) {
            c.fail(
                "metadata.name",
                format!(
                    "`{}` is not a name (lower-case letters, digits, `-` and `.`)",
                    self.metadata.name
                ),
            );
        }
        if let Some(ns) = &self.metadata.namespace
            && !is_host(ns)
        {
            c.fail(
                "metadata.namespace",
                format!("`{ns}` is not a namespace (lower-case letters, digits, `-` and `.`)"),
            );
        }
        self.spec.check(&mut c);
        if c.errors.is_empty() {
            Ok(())
        } else {
            Err(c.errors)
        }
    }
}

impl PolicySpec {
    fn check(&self, c: &mut Check) {
        match self.service.rsplit_once(':') {
            Some((host, port)) if is_host(host) && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => c.fail(
                "spec.service",
                format!(
                    "`{}` is not `host:port` (a lower-case host name and a port)",
                    self.service
                ),
            ),
        }
        let mut subsets = BTreeSet::new();
        for (i, s) in self.subsets.iter().enumerate() {
            if s.name.is_empty() {
                c.fail(format!("spec.subsets[{i}].name"), "must not be empty");
            } else if !subsets.insert(s.name.as_str()) {
                c.fail(
                    format!("spec.subsets[{i}].name"),
                    format!("subset `{}` is defined twice", s.name),
                );
            }
        }
        let mut names = BTreeSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("spec.routes[{i}]");
            if let Some(n) = &r.name
                && !names.insert(n.as_str())
            {
                c.fail(
                    format!("{at}.name"),
                    format!("route `{n}` is defined twice"),
                );
            }
            r.check(&at, &subsets, c);
        }
        if let Some(r) = &self.retry {
            r.check("spec.retry", c);
        }
        if let Some(lb) = &self.load_balancer {
            lb.check("spec.loadBalancer", c);
        }
        if let Some(cb) = &self.circuit_breaker {
            for (name, v) in [
                ("maxConnections", cb.max_connections),
                ("maxPendingRequests", cb.max_pending_requests),
                ("maxRequests", cb.max_requests),
                ("maxRetries", cb.max_retries),
            ] {
                c.positive(format!("spec.circuitBreaker.{name}"), v);
            }
        }
        if let Some(o) = &self.outlier_detection {
            o.check("spec.outlierDetection", c);
        }
        if let Some(f) = &self.fault {
            f.check("spec.fault", c);
        }
        if let Some(rl) = &self.rate_limit {
            rl.check("spec.rateLimit", c);
        }
        for (name, d) in [
            ("grpcTimeoutMax", self.grpc_timeout_max),
            ("idleTimeout", self.idle_timeout),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                c.fail(format!("spec.{name}"), "must be more than 0");
            }
        }
        if let Some(a) = &self.authorization {
            check_authorization(a, c);
        }
    }
}

impl RouteRule {
    fn check(&self, at: &str, subsets: &BTreeSet<&str>, c: &mut Check) {
        if let Some(m) = &self.matches {
            if let Some(p) = &m.path {
                let f = format!("{at}.match.path");
                check_string_match(&f, &p.exact, &p.prefix, &p.regex, true, c);
                if let Some(v) = p.exact.as_ref().or(p.prefix.as_ref())
                    && !v.starts_with('/')
                {
                    c.fail(f, format!("`{v}` does not start with `/`"));
                }
            }
            if let Some(method) = &m.method
                && http::Method::from_bytes(method.as_bytes()).is_err()
            {
                c.fail(
                    format!("{at}.match.method"),
                    format!("`{method}` is not an HTTP method"),
                );
            }
            for (i, h) in m.headers.iter().enumerate() {
                let f = format!("{at}.match.headers[{i}]");
                if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                    c.fail(
                        format!("{f}.name"),
                        format!("`{}` is not a header name", h.name),
                    );
                }
                check_string_match(&f, &h.exact, &h.prefix, &h.regex, false, c);
            }
            for (i, q) in m.query_params.iter().enumerate() {
                let f = format!("{at}.match.queryParams[{i}]");
                if q.name.is_empty() {
                    c.fail(format!("{f}.name"), "must not be empty");
                }
                check_string_match(&f, &q.exact, &q.prefix, &q.regex, false, c);
            }
        }
        let mut total = 0u64;
        for (i, b) in self.backends.iter().enumerate() {
            total += u64::from(b.weight);
            if let Some(s) = &b.subset
                && !subsets.contains(s.as_str())
            {
                let known: Vec<&str> = subsets.iter().copied().collect();
                c.fail(
                    format!("{at}.backends[{i}].subset"),
                    format!("unknown subset `{s}` (defined: {})", known.join(", ")),
                );
            }
        }
        if !self.backends.is_empty() && total == 0 {
            c.fail(
                format!("{at}.backends"),
                "every backend has weight 0: nothing could be routed",
            );
        }
        if let Some(r) = &self.retry {
            r.check(&format!("{at}.retry"), c);
        }
        if let Some(f) = &self.fault {
            f.check(&format!("{at}.fault"), c);
        }
        if let Some(rl) = &self.rate_limit {
            rl.check(&format!("{at}.rateLimit"), c);
        }
        if let Some(m) = &self.mirror {
            if let Some(p) = m.percent {
                c.percent(format!("{at}.mirror.percent"), p);
            }
            if let Some(s) = &m.subset
                && !subsets.contains(s.as_str())
            {
                let known: Vec<&str> = subsets.iter().copied().collect();
                c.fail(
                    format!("{at}.mirror.subset"),
                    format!("unknown subset `{s}` (defined: {})", known.join(", ")),
                );
            }
        }
        for (name, d) in [
            ("grpcTimeoutMax", self.grpc_timeout_max),
            ("idleTimeout", self.idle_timeout),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                c.fail(format!("{at}.{name}"), "must be more than 0");
            }
        }
    }
}

impl Validate for RateLimit {
    fn check(&self, at: &str, c: &mut Check) {
        c.positive(
            format!("{at}.requestsPerSecond"),
            Some(self.requests_per_second),
        );
        c.positive(format!("{at}.burst"), self.burst);
    }
}

fn check_string_match(
    at: &str,
    exact: &Option<String>,
    prefix: &Option<String>,
    regex: &Option<String>,
    need_one: bool,
    c: &mut Check,
) {
    c.at_most_one(
        at,
        &[
            ("exact", exact.is_some()),
            ("prefix", prefix.is_some()),
            ("regex", regex.is_some()),
        ],
        need_one,
    );
    // The proxy's own compile, bound included: what passes here, every proxy takes.
    if let Some(r) = regex
        && let Err(e) = weft_core::matching::whole_value_regex(r)
    {
        c.fail(format!("{at}.regex"), e.to_string());
    }
}

/// The checks of the traffic settings (their types live in `weft-core`).
trait Validate {
    fn check(&self, at: &str, c: &mut Check);
}

/// The proxy's own checks (`weft_core::policy::check`), each problem under `at`.
fn problems(at: &str, problems: Vec<Problem>, c: &mut Check) {
    for p in problems {
        let field = match p.field.as_str() {
            "" => at.to_string(),
            f => format!("{at}.{f}"),
        };
        c.fail(field, p.message);
    }
}

impl Validate for RetryPolicy {
    fn check(&self, at: &str, c: &mut Check) {
        problems(at, self.problems(), c);
    }
}

impl Validate for LoadBalancer {
    fn check(&self, _at: &str, c: &mut Check) {
        match (&self.hash, self.policy) {
            (None, LbPolicy::RingHash) => c.fail(
                "spec.loadBalancer.hash",
                "`ring-hash` needs a hash key (`header`, `cookie` or `sourceIp`)",
            ),
            (Some(h), _) => c.at_most_one(
                "spec.loadBalancer.hash",
                &[
                    ("header", h.header.is_some()),
                    ("cookie", h.cookie.is_some()),
                    ("sourceIp", h.source_ip == Some(true)),
                ],
                true,
            ),
            (None, _) => {}
        }
        if let Some(p) = self.panic_threshold {
            c.percent("spec.loadBalancer.panicThreshold".into(), p);
        }
    }
}

impl Validate for OutlierDetection {
    fn check(&self, _at: &str, c: &mut Check) {
        let at = "spec.outlierDetection";
        c.positive(format!("{at}.consecutive5xx"), self.consecutive_5xx);
        c.positive(
            format!("{at}.consecutiveGatewayErrors"),
            self.consecutive_gateway_errors,
        );
        if let Some(p) = self.max_ejection_percent {
            c.percent(format!("{at}.maxEjectionPercent"), f64::from(p));
        }
        if let Some(f) = &self.failure_rate {
            if f.threshold_percent == 0 {
                c.fail(
                    format!("{at}.failureRate.thresholdPercent"),
                    "must be at least 1",
                );
            }
            c.percent(
                format!("{at}.failureRate.thresholdPercent"),
                f64::from(f.threshold_percent),
            );
            c.positive(
                format!("{at}.failureRate.minimumRequests"),
                f.minimum_requests,
            );
            if f.window.is_some_and(|w| w.is_zero()) {
                c.fail(format!("{at}.failureRate.window"), "must be more than 0");
            }
        }
        if let (Some(base), Some(max)) = (self.base_ejection_time, self.max_ejection_time)
            && max < base
        {
            c.fail(
                format!("{at}.maxEjectionTime"),
                format!("{max:?} is less than baseEjectionTime {base:?}"),
            );
        }
        for (name, d) in [
            ("interval", self.interval),
            ("baseEjectionTime", self.base_ejection_time),
            ("maxEjectionTime", self.max_ejection_time),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                c.fail(format!("{at}.{name}"), "must be more than 0");
            }
        }
    }
}

impl Validate for Fault {
    fn check(&self, at: &str, c: &mut Check) {
        problems(at, self.problems(), c);
    }
}

/// (A free function: the type lives in weft-core, shared with the proxy.)
fn check_authorization(a: &Authorization, c: &mut Check) {
    // The proxy's own reading of a rule: what passes here, every proxy takes.
    for (i, r) in a.allow.iter().enumerate() {
        if let Err((field, why)) = r.rule() {
            let at = format!("spec.authorization.allow[{i}]");
            match field {
                "" => c.fail(at, why),
                f => c.fail(format!("{at}.{f}"), why),
            }
        }
    }
}
