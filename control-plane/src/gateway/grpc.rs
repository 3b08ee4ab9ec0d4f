//! `GRPCRoute` (`gateway.networking.k8s.io/v1`): gRPC's routes for a mesh. A rule matches a
//! gRPC method (service and method, exactly or by regular expression) and headers, and sends
//! to weighted Services; the header modifiers and the mirror are its filters. It is translated
//! as the `HTTPRoute` it amounts to ([`GrpcRoute::as_http`]): a method match is a path match on
//! `/<service>/<method>`.

use serde::{Deserialize, Serialize};

use super::{
    HttpBackendRef, HttpPathMatch, HttpRoute, HttpRouteFilter, HttpRouteMatch, HttpRouteRule,
    HttpRouteSpec, NameMatch, ParentRef, PathMatchType, RouteMetadata, ValueMatchType,
};

pub const GRPC_ROUTE: &str = "GRPCRoute";

/// A `GRPCRoute`; fields outside `spec` other than these are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRoute {
    pub api_version: String,
    pub kind: String,
    pub metadata: RouteMetadata,
    pub spec: GrpcRouteSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Accepted and not used (as an HTTPRoute's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// ORed; none matches every call.
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NameMatch>,
}

/// `service` (`pkg.Service`) and `method`, at least one of them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcMethodMatch {
    #[serde(rename = "type", default)]
    pub kind: ValueMatchType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

impl GrpcRoute {
    /// `namespace/name` (namespace `default` when unset).
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name
        )
    }

    /// The HTTPRoute this route amounts to: each method match a path match (Exact
    /// `/<service>/<method>`; a service alone a PathPrefix `/<service>`; a method alone, or
    /// a regular expression, a RegularExpression over the path), headers as they are.
    pub fn as_http(&self) -> HttpRoute {
        HttpRoute {
            api_version: self.api_version.clone(),
            kind: GRPC_ROUTE.into(),
            metadata: self.metadata.clone(),
            spec: HttpRouteSpec {
                parent_refs: self.spec.parent_refs.clone(),
                hostnames: self.spec.hostnames.clone(),
                rules: self
                    .spec
                    .rules
                    .iter()
                    .map(|r| HttpRouteRule {
                        name: r.name.clone(),
                        matches: r.matches.iter().map(http_match).collect(),
                        filters: r.filters.clone(),
                        backend_refs: r.backend_refs.clone(),
                        timeouts: None,
                        retry: None,
                    })
                    .collect(),
            },
        }
    }
}

fn http_match(m: &GrpcRouteMatch) -> HttpRouteMatch {
    let path = m.method.as_ref().map(|mm| {
        let (svc, method) = (mm.service.as_deref(), mm.method.as_deref());
        match (mm.kind, svc, method) {
            (ValueMatchType::Exact, Some(s), Some(me)) => HttpPathMatch {
                kind: PathMatchType::Exact,
                value: format!("/{s}/{me}"),
            },
            (ValueMatchType::Exact, Some(s), None) => HttpPathMatch {
                kind: PathMatchType::PathPrefix,
                value: format!("/{s}"),
            },
            (kind, s, me) => {
                let part = |p: Option<&str>| match (kind, p) {
                    (_, None) => "[^/]+".to_string(),
                    (ValueMatchType::Exact, Some(p)) => regex::escape(p),
                    (ValueMatchType::RegularExpression, Some(p)) => format!("(?:{p})"),
                };
                HttpPathMatch {
                    kind: PathMatchType::RegularExpression,
                    value: format!("/{}/{}", part(s), part(me)),
                }
            }
        }
    });
    HttpRouteMatch {
        path,
        headers: m.headers.clone(),
        query_params: Vec::new(),
        method: None,
    }
}
