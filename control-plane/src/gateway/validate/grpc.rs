//! What a `GRPCRoute` must mean: its parents, matches (a gRPC service and method, exactly or by
//! regular expression; headers), filters and backends, with the HTTPRoute's checks where they
//! are the same.

use super::*;
use crate::gateway::{GRPC_ROUTE, GrpcRoute, GrpcRouteMatch};

impl GrpcRoute {
    /// Every problem in the route, or `Ok` when it may be put in force.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut c = Check::default();
        let spec = &self.spec;
        let kind = (&self.kind[..], GRPC_ROUTE);
        object(
            &mut c,
            (&self.api_version, &[API_VERSION]),
            kind,
            &self.metadata,
        );
        parents(&spec.parent_refs, &mut c);
        c.at_most("spec.hostnames", spec.hostnames.len(), MAX_HOSTNAMES);
        let all = spec.rules.iter().map(|r| r.matches.len()).sum();
        counts(&mut c, spec.rules.len(), all);
        for (i, r) in spec.rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            if let Some(name) = &r.name
                && !is_name(name)
            {
                c.fail(format!("{at}.name"), format!("`{name}` is not a name"));
            }
            c.at_most(&format!("{at}.matches"), r.matches.len(), MAX_MATCHES);
            for (j, m) in r.matches.iter().enumerate() {
                grpc_match(&format!("{at}.matches[{j}]"), m, &mut c);
            }
            for (j, f) in r.filters.iter().enumerate() {
                let fat = format!("{at}.filters[{j}]");
                if f.kind == URL_REWRITE || f.kind == REQUEST_REDIRECT {
                    c.fail(
                        format!("{fat}.type"),
                        format!("`{}` is not a GRPCRoute filter", f.kind),
                    );
                } else {
                    filter(&fat, f, &mut c);
                }
            }
            if r.backend_refs.is_empty() {
                c.fail(
                    format!("{at}.backendRefs"),
                    "at least one: a rule sends its calls to Services",
                );
            }
            c.at_most(
                &format!("{at}.backendRefs"),
                r.backend_refs.len(),
                MAX_BACKEND_REFS,
            );
            for (j, b) in r.backend_refs.iter().enumerate() {
                backend(&format!("{at}.backendRefs[{j}]"), b, &mut c);
            }
        }
        if c.errors.is_empty() {
            Ok(())
        } else {
            Err(c.errors)
        }
    }
}

/// A gRPC service name (`pkg.Service`) and a method name, as the CRD's patterns say.
fn grpc_name(s: &str, service: bool) -> bool {
    let ident = |p: &str| {
        let mut b = p.bytes();
        b.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == b'_')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
    };
    if service {
        let s = s.strip_prefix('.').unwrap_or(s);
        !s.is_empty() && s.split('.').all(ident)
    } else {
        ident(s)
    }
}

fn grpc_match(at: &str, m: &GrpcRouteMatch, c: &mut Check) {
    if let Some(mm) = &m.method {
        if mm.service.is_none() && mm.method.is_none() {
            c.fail(format!("{at}.method"), "set `service`, `method` or both");
        }
        for (field, value, service) in [
            ("service", &mm.service, true),
            ("method", &mm.method, false),
        ] {
            let Some(v) = value else { continue };
            let at = format!("{at}.method.{field}");
            if v.len() > MAX_PATH {
                c.fail(&at, format!("at most {MAX_PATH} characters"));
            }
            match mm.kind {
                ValueMatchType::Exact if !grpc_name(v, service) => {
                    c.fail(at, format!("`{v}` is not a gRPC {field} name"));
                }
                ValueMatchType::Exact => {}
                ValueMatchType::RegularExpression => c.regex(at, v),
            }
        }
    }
    let http = HttpRouteMatch {
        headers: m.headers.clone(),
        ..Default::default()
    };
    route_match(at, &http, c);
}
