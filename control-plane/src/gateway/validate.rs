//! What an `HTTPRoute` must mean, beyond its shape: the standard channel's limits and patterns
//! (the CRD's schema and its CEL rules), and what weft does not support yet. Every problem is
//! reported with its field, all at once.

use super::*;

mod filters;
mod grpc;
use crate::policy::{Check, FieldError, is_name};
use filters::filter;

/// The CRD's limits.
const MAX_PARENT_REFS: usize = 32;
const MAX_HOSTNAMES: usize = 16;
const MAX_RULES: usize = 16;
const MAX_MATCHES: usize = 64;
/// Across all rules (a CEL rule of the CRD: fewer than 128).
const MAX_ALL_MATCHES: usize = 127;
const MAX_NAME_MATCHES: usize = 16;
const MAX_BACKEND_REFS: usize = 16;
const MAX_PATH: usize = 1024;
const MAX_HEADER_NAME: usize = 256;
const MAX_HEADER_VALUE: usize = 4096;
const MAX_QUERY_VALUE: usize = 1024;
const MAX_WEIGHT: u32 = 1_000_000;
const MAX_FILTERS: usize = 16;

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl Check {
    fn at_most(&mut self, field: &str, len: usize, max: usize) {
        if len > max {
            self.fail(field, format!("{len} items: at most {max}"));
        }
    }

    fn regex(&mut self, field: String, pattern: &str) {
        // The proxy's own compile, bound included: what passes here, every proxy takes.
        if let Err(e) = weft_core::matching::whole_value_regex(pattern) {
            self.fail(field, e.to_string());
        }
    }
}

/// A header name as HTTP defines a token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An Exact or PathPrefix value: absolute, without `//`, `/./`, `/../`, `%2f`, `#`, and in the
/// characters the CRD allows.
fn path_problem(p: &str) -> Option<&'static str> {
    if !p.starts_with('/') {
        return Some("must start with `/`");
    }
    let bad = ["//", "/./", "/../", "%2f", "%2F", "#"];
    if bad.iter().any(|b| p.contains(b)) || p.ends_with("/..") || p.ends_with("/.") {
        return Some("must not contain `//`, `/./`, `/../`, `%2f`, `#` or end in `/.` or `/..`");
    }
    let ok = p
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-/._~!$&'()*+,;=:@%".contains(&b));
    (!ok).then_some("has a character a path may not hold unescaped")
}

impl HttpRoute {
    /// Every problem in the route, or `Ok` when it may be put in force.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut c = Check::default();
        let spec = &self.spec;
        let kind = (&self.kind[..], HTTP_ROUTE);
        let versions = [API_VERSION, API_VERSION_BETA];
        object(&mut c, (&self.api_version, &versions), kind, &self.metadata);
        parents(&spec.parent_refs, &mut c);
        c.at_most("spec.hostnames", spec.hostnames.len(), MAX_HOSTNAMES);
        if spec.rules.is_empty() {
            c.fail("spec.rules", "at least one rule");
        }
        let all = spec.rules.iter().map(|r| r.matches.len()).sum();
        counts(&mut c, spec.rules.len(), all);
        for (i, r) in spec.rules.iter().enumerate() {
            rule(&format!("spec.rules[{i}]"), r, &mut c);
        }
        if c.errors.is_empty() {
            Ok(())
        } else {
            Err(c.errors)
        }
    }
}

/// What an object of either route kind must be: of an `apiVersion` in `versions` (the first
/// named when it is not), of its `kind` (the one expected), and named and namespaced.
fn object(
    c: &mut Check,
    (api_version, versions): (&str, &[&str]),
    (kind, expected): (&str, &str),
    metadata: &RouteMetadata,
) {
    if !versions.contains(&api_version) {
        c.fail(
            "apiVersion",
            format!("`{api_version}`: expected `{}`", versions[0]),
        );
    }
    if kind != expected {
        c.fail("kind", format!("`{kind}`: expected `{expected}`"));
    }
    if !is_name(&metadata.name) {
        c.fail(
            "metadata.name",
            format!("`{}` is not a name", metadata.name),
        );
    }
    let ns = metadata.namespace.as_deref().unwrap_or("default");
    if !is_name(ns) {
        c.fail("metadata.namespace", format!("`{ns}` is not a name"));
    }
}

/// How many rules, and matches in all, a route may have (the CRD's limits).
fn counts(c: &mut Check, rules: usize, matches: usize) {
    c.at_most("spec.rules", rules, MAX_RULES);
    if matches > MAX_ALL_MATCHES {
        c.fail(
            "spec.rules",
            format!("{matches} matches in all: fewer than 128"),
        );
    }
}

/// A route's parentRefs: those of a Service are weft's (checked); others (a Gateway) belong to
/// other controllers and are left to them, but one of a Service there must be.
fn parents(refs: &[ParentRef], c: &mut Check) {
    if !refs.iter().any(ParentRef::is_service) {
        c.fail(
            "spec.parentRefs",
            "a mesh route names the Service it is for: set `group: \"\"` and `kind: Service` \
             (the API's defaults name a Gateway)",
        );
    }
    c.at_most("spec.parentRefs", refs.len(), MAX_PARENT_REFS);
    for (i, p) in refs.iter().enumerate() {
        if p.is_service() {
            parent(&format!("spec.parentRefs[{i}]"), p, c);
        }
    }
}

fn parent(at: &str, p: &ParentRef, c: &mut Check) {
    if !is_name(&p.name) {
        c.fail(format!("{at}.name"), format!("`{}` is not a name", p.name));
    }
    if let Some(ns) = &p.namespace
        && !is_name(ns)
    {
        c.fail(format!("{at}.namespace"), format!("`{ns}` is not a name"));
    }
    if p.section_name.is_some() {
        c.fail(
            format!("{at}.sectionName"),
            "not supported: name the Service's port with `port`",
        );
    }
    if p.port == Some(0) {
        c.fail(format!("{at}.port"), "must be between 1 and 65535");
    }
}

fn rule(at: &str, r: &HttpRouteRule, c: &mut Check) {
    if let Some(name) = &r.name
        && !is_name(name)
    {
        c.fail(format!("{at}.name"), format!("`{name}` is not a name"));
    }
    c.at_most(&format!("{at}.matches"), r.matches.len(), MAX_MATCHES);
    for (i, m) in r.matches.iter().enumerate() {
        route_match(&format!("{at}.matches[{i}]"), m, c);
    }
    for (i, f) in r.filters.iter().enumerate() {
        filter(&format!("{at}.filters[{i}]"), f, c);
    }
    for kind in [REQUEST_HEADER_MODIFIER, RESPONSE_HEADER_MODIFIER] {
        if r.filters.iter().filter(|f| f.kind == kind).count() > 1 {
            c.fail(format!("{at}.filters"), format!("`{kind}` at most once"));
        }
    }
    if r.filters.iter().filter(|f| f.kind == URL_REWRITE).count() > 1 {
        c.fail(
            format!("{at}.filters"),
            format!("`{URL_REWRITE}` at most once"),
        );
    }
    // ReplacePrefixMatch replaces what one PathPrefix matched (a CEL rule of the CRD).
    let prefix_rewrite = r.filters.iter().any(|f| {
        f.url_rewrite
            .as_ref()
            .and_then(|u| u.path.as_ref())
            .or(f.request_redirect.as_ref().and_then(|d| d.path.as_ref()))
            .is_some_and(|p| p.kind == "ReplacePrefixMatch")
    });
    let one_prefix = matches!(
        &r.matches[..],
        [m] if m.path.as_ref().is_none_or(|p| p.kind == PathMatchType::PathPrefix)
    );
    if prefix_rewrite && !one_prefix {
        c.fail(
            format!("{at}.matches"),
            "`ReplacePrefixMatch` needs exactly one match, with a PathPrefix path",
        );
    }
    if r.filters
        .iter()
        .filter(|f| f.kind == REQUEST_MIRROR)
        .count()
        > 1
    {
        c.fail(
            format!("{at}.filters"),
            format!("more than one `{REQUEST_MIRROR}` is not supported yet"),
        );
    }
    c.at_most(&format!("{at}.filters"), r.filters.len(), MAX_FILTERS);
    let redirects = r.filters.iter().any(|f| f.kind == REQUEST_REDIRECT);
    if redirects && !r.backend_refs.is_empty() {
        c.fail(
            format!("{at}.backendRefs"),
            format!("a rule with `{REQUEST_REDIRECT}` answers itself: no backendRefs"),
        );
    }
    if !redirects && r.backend_refs.is_empty() {
        c.fail(
            format!("{at}.backendRefs"),
            "at least one: a rule sends its requests to Services (or redirects them)",
        );
    }
    if redirects && r.retry.is_some() {
        c.fail(
            format!("{at}.retry"),
            "a rule that redirects sends nothing to a backend to retry",
        );
    }
    if redirects && r.filters.iter().any(|f| f.kind == URL_REWRITE) {
        c.fail(
            format!("{at}.filters"),
            format!("`{REQUEST_REDIRECT}` and `{URL_REWRITE}` may not be combined"),
        );
    }
    if r.filters
        .iter()
        .filter(|f| f.kind == REQUEST_REDIRECT)
        .count()
        > 1
    {
        c.fail(
            format!("{at}.filters"),
            format!("`{REQUEST_REDIRECT}` at most once"),
        );
    }
    c.at_most(
        &format!("{at}.backendRefs"),
        r.backend_refs.len(),
        MAX_BACKEND_REFS,
    );
    for (i, b) in r.backend_refs.iter().enumerate() {
        backend(&format!("{at}.backendRefs[{i}]"), b, c);
    }
    if let Some(r) = &r.retry {
        retry(&format!("{at}.retry"), r, c);
    }
    if let Some(t) = &r.timeouts {
        if let Some(req) = &t.request
            && duration(req).is_none()
        {
            c.fail(
                format!("{at}.timeouts.request"),
                format!("`{req}` is not a duration such as `10s`, `1m30s` or `500ms`"),
            );
        }
        if let Some(b) = &t.backend_request {
            match duration(b) {
                None => c.fail(
                    format!("{at}.timeouts.backendRequest"),
                    format!("`{b}` is not a duration such as `10s`, `1m30s` or `500ms`"),
                ),
                // At most the request's timeout, unless that is none (`0s`): a CEL rule of
                // the CRD.
                Some(d) => {
                    if let Some(r) = t.request.as_deref().and_then(duration)
                        && !r.is_zero()
                        && (d > r || d.is_zero())
                    {
                        c.fail(
                            format!("{at}.timeouts.backendRequest"),
                            format!(
                                "`{b}`: at most `timeouts.request` ({})",
                                t.request.as_deref().unwrap_or("")
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// GEP-1731's limits, and weft's (at most 10 retries; some wait between tries).
fn retry(at: &str, r: &HttpRouteRetry, c: &mut Check) {
    for (i, code) in r.codes.iter().enumerate() {
        if !(400..=599).contains(code) {
            c.fail(
                format!("{at}.codes[{i}]"),
                format!("{code}: a status from 400 to 599"),
            );
        } else if r.codes[..i].contains(code) {
            c.fail(
                format!("{at}.codes[{i}]"),
                format!("{code} is listed twice"),
            );
        }
    }
    if r.attempts == Some(0) {
        c.fail(format!("{at}.attempts"), "at least 1");
    }
    if let Some(b) = &r.backoff
        && duration(b).is_none()
    {
        c.fail(
            format!("{at}.backoff"),
            format!("`{b}` is not a duration such as `100ms` or `1s`"),
        );
    }
    // What weft's retries allow beyond the API (the number of retries).
    for p in r.policy().problems() {
        if p.field == "attempts" {
            c.fail(format!("{at}.attempts"), p.message);
        }
    }
}

fn route_match(at: &str, m: &HttpRouteMatch, c: &mut Check) {
    if let Some(p) = &m.path {
        let field = format!("{at}.path.value");
        if p.value.len() > MAX_PATH {
            c.fail(&field, format!("at most {MAX_PATH} characters"));
        }
        match p.kind {
            PathMatchType::Exact | PathMatchType::PathPrefix => {
                if let Some(why) = path_problem(&p.value) {
                    c.fail(field, format!("`{}` {why}", p.value));
                }
            }
            PathMatchType::RegularExpression => c.regex(field, &p.value),
        }
    }
    for (list, items, max_value) in [
        ("headers", &m.headers, MAX_HEADER_VALUE),
        ("queryParams", &m.query_params, MAX_QUERY_VALUE),
    ] {
        c.at_most(&format!("{at}.{list}"), items.len(), MAX_NAME_MATCHES);
        for (i, h) in items.iter().enumerate() {
            let at = format!("{at}.{list}[{i}]");
            if !is_token(&h.name) || h.name.len() > MAX_HEADER_NAME {
                c.fail(
                    format!("{at}.name"),
                    format!("`{}` is not a header or parameter name", h.name),
                );
            }
            if h.value.is_empty() || h.value.len() > max_value {
                c.fail(
                    format!("{at}.value"),
                    format!("1 to {max_value} characters"),
                );
            }
            if h.kind == ValueMatchType::RegularExpression {
                c.regex(format!("{at}.value"), &h.value);
            }
        }
    }
    if let Some(method) = &m.method
        && !METHODS.contains(&method.as_str())
    {
        c.fail(
            format!("{at}.method"),
            format!("`{method}`: one of {}", METHODS.join(", ")),
        );
    }
}

fn backend(at: &str, b: &HttpBackendRef, c: &mut Check) {
    if b.group.as_deref().is_some_and(|g| !g.is_empty())
        || b.kind.as_deref().is_some_and(|k| k != "Service")
    {
        c.fail(
            at,
            "a backend is a Service (`group: \"\"`, `kind: Service`)",
        );
    }
    if !is_name(&b.name) {
        c.fail(format!("{at}.name"), format!("`{}` is not a name", b.name));
    }
    if let Some(ns) = &b.namespace
        && !is_name(ns)
    {
        c.fail(format!("{at}.namespace"), format!("`{ns}` is not a name"));
    }
    match b.port {
        None => c.fail(format!("{at}.port"), "a Service backend needs its port"),
        Some(0) => c.fail(format!("{at}.port"), "must be between 1 and 65535"),
        Some(_) => {}
    }
    if b.weight > MAX_WEIGHT {
        c.fail(
            format!("{at}.weight"),
            format!("{}: at most {MAX_WEIGHT}", b.weight),
        );
    }
    // A backend's own filters: the header modifiers (applied when the split chooses it).
    for (i, f) in b.filters.iter().enumerate() {
        let fat = format!("{at}.filters[{i}]");
        if f.kind == REQUEST_HEADER_MODIFIER || f.kind == RESPONSE_HEADER_MODIFIER {
            filter(&fat, f, c);
        } else {
            c.fail(
                format!("{fat}.type"),
                format!(
                    "`{}` on a backendRef is not supported yet (supported there: {REQUEST_HEADER_MODIFIER}, {RESPONSE_HEADER_MODIFIER})",
                    f.kind
                ),
            );
        }
    }
    for kind in [REQUEST_HEADER_MODIFIER, RESPONSE_HEADER_MODIFIER] {
        if b.filters.iter().filter(|f| f.kind == kind).count() > 1 {
            c.fail(format!("{at}.filters"), format!("`{kind}` at most once"));
        }
    }
}
