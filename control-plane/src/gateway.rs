//! The Gateway API's routes for a mesh (GAMMA): `HTTPRoute` documents (`gateway.networking.k8s.io/v1`,
//! standard channel) whose `parentRefs` name a Service. One schema everywhere, as
//! `TrafficPolicy`: a document in the file registry, a value in etcd.
//!
//! ```yaml
//! apiVersion: gateway.networking.k8s.io/v1
//! kind: HTTPRoute
//! metadata: {name: web-canary, namespace: demo}
//! spec:
//!   parentRefs: [{group: "", kind: Service, name: web, port: 8080}]
//!   rules:
//!     - backendRefs:
//!         - {name: web-v1, port: 8080, weight: 90}
//!         - {name: web-v2, port: 8080, weight: 10}
//! ```
//!
//! A route attached to a Service replaces the Service's default routing: a request that no rule
//! matches is answered 404. What is not supported yet (consumer routes, `sectionName`, filters,
//! `timeouts.backendRequest`) is refused with the field named, never ignored: see
//! `docs/gateway-api.md`.
//!
//! Parsing ([`parse`]) checks the shape; [`HttpRoute::validate`] the meaning, naming every field
//! that is wrong. Only a route without errors may replace the one in force.

mod grpc;
mod refs;
mod status;
mod validate;

pub use grpc::{
    GRPC_ROUTE, GrpcMethodMatch, GrpcRoute, GrpcRouteMatch, GrpcRouteRule, GrpcRouteSpec,
};

pub use refs::{Registered, ServiceRef};
pub use status::{CONTROLLER_NAME, Condition, ParentStatus, status};

use serde::{Deserialize, Serialize};

use crate::policy::PolicyError;

pub const API_VERSION: &str = "gateway.networking.k8s.io/v1";
/// The same schema, served by the CRDs as well.
pub const API_VERSION_BETA: &str = "gateway.networking.k8s.io/v1beta1";
pub const HTTP_ROUTE: &str = "HTTPRoute";

/// An `HTTPRoute`. Fields outside `spec` other than these (a Kubernetes object's `status`,
/// managed fields, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    pub api_version: String,
    pub kind: String,
    pub metadata: RouteMetadata,
    pub spec: HttpRouteSpec,
}

/// Object metadata: what ordering routes needs besides the name.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMetadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// RFC 3339, as Kubernetes writes it: the older of two conflicting routes wins. Documents
    /// outside Kubernetes have none (then `namespace/name` decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Accepted and not used: a mesh route matches by the Service it is attached to (GAMMA:
    /// "implementations SHOULD NOT infer any functionality from `hostnames`").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default = "default_rules")]
    pub rules: Vec<HttpRouteRule>,
}

fn default_rules() -> Vec<HttpRouteRule> {
    vec![HttpRouteRule::default()]
}

/// What a route attaches to: a Service (`group: ""`, `kind: Service`), one of its ports or all.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    /// The API's default is `gateway.networking.k8s.io` (a Gateway): a mesh route sets `""`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// ORed; none (or an empty list) matches every request (`PathPrefix /`).
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// GEP-1731 (the experimental channel's `HTTPRouteRetry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<HttpRouteRetry>,
}

/// Retries (GEP-1731): which statuses to retry (connection errors always are), how many
/// retries, and the least wait before each.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteRetry {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

impl HttpRouteRetry {
    /// The least wait before a retry (`backoff`; none for `0s`).
    pub fn minimum(&self) -> Option<std::time::Duration> {
        (self.backoff.as_deref().and_then(duration)).filter(|d| !d.is_zero())
    }

    /// The connection errors GEP-1731 says to retry whenever a rule has `retry`.
    pub const CONNECTION_ERRORS: [&str; 3] = ["connect-failure", "refused-stream", "reset"];

    /// As weft's retry policy (the budget is the Service's policy's, or the default).
    pub fn policy(&self) -> weft_core::policy::RetryPolicy {
        let mut on: Vec<String> = Self::CONNECTION_ERRORS.map(String::from).into();
        if !self.codes.is_empty() {
            on.push("retriable-status-codes".into());
        }
        // `0s`: no least wait; weft's own backoff then.
        let base = self.minimum();
        weft_core::policy::RetryPolicy {
            attempts: self.attempts,
            backoff: base.map(|b| weft_core::policy::Backoff {
                base: Some(b),
                max: None,
            }),
            on,
            status_codes: self.codes.clone(),
            ..Default::default()
        }
    }
}

/// Every part given must match.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NameMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<NameMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpPathMatch {
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    #[serde(default = "slash")]
    pub value: String,
}

fn slash() -> String {
    "/".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum PathMatchType {
    Exact,
    /// Whole path segments: `/v2` matches `/v2` and `/v2/x`, not `/v2x`; a trailing `/` in the
    /// value is ignored.
    #[default]
    PathPrefix,
    RegularExpression,
}

/// A header (name case-insensitive) or query parameter (name case-sensitive) match.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NameMatch {
    #[serde(rename = "type", default)]
    pub kind: ValueMatchType,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ValueMatchType {
    #[default]
    Exact,
    RegularExpression,
}

/// A filter: the header modifiers are supported; the other types are kept as written, and
/// validation refuses them by name.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

pub const REQUEST_HEADER_MODIFIER: &str = "RequestHeaderModifier";
pub const RESPONSE_HEADER_MODIFIER: &str = "ResponseHeaderModifier";
pub const REQUEST_MIRROR: &str = "RequestMirror";
pub const URL_REWRITE: &str = "URLRewrite";
pub const REQUEST_REDIRECT: &str = "RequestRedirect";

/// `RequestRedirect`: the rule answers with a redirect to the request's URL with these changed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestRedirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301, 302 (the default), 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

/// `URLRewrite`: the request's host name and path changed before it is sent.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UrlRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// A path change: `ReplaceFullPath` (with `replaceFullPath`) or `ReplacePrefixMatch` (with
/// `replacePrefixMatch`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

/// `RequestMirror`: a copy of the requests (all, `percent` of them, or `fraction`) goes to a
/// Service; its answers are dropped.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestMirror {
    pub backend_ref: MirrorBackendRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Fraction>,
}

/// A backendRef without weight or filters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MirrorBackendRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fraction {
    pub numerator: u32,
    #[serde(default = "hundred")]
    pub denominator: u32,
}

fn hundred() -> u32 {
    100
}

impl RequestMirror {
    /// The share of requests copied, in percent.
    pub fn percent(&self) -> f64 {
        match (&self.fraction, self.percent) {
            (Some(f), _) => f64::from(f.numerator) * 100.0 / f64::from(f.denominator.max(1)),
            (None, Some(p)) => f64::from(p),
            (None, None) => 100.0,
        }
    }
}

/// `RequestHeaderModifier` / `ResponseHeaderModifier`: headers set (every value replaced),
/// added (beside the values there are) and removed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HttpHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HttpHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

/// A Service (`group: ""`, `kind: Service`, the API's defaults here) and its port.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpBackendRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 0 to 1,000,000; the share is the weight over the rule's sum.
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
}

fn one() -> u32 {
    1
}

/// GEP-1742's timeouts, as Gateway API durations (`10s`, `1m30s`, `500ms`; `0s` is none).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

impl HttpRoute {
    /// `namespace/name` (namespace `default` when unset).
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace(), self.metadata.name)
    }

    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }
}

/// A Gateway API duration: one to four `<1-5 digits><h|m|s|ms>` parts.
pub fn duration(text: &str) -> Option<std::time::Duration> {
    let mut rest = text;
    let mut total = std::time::Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=5).contains(&digits) {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (std::time::Duration::from_millis(1), 2)
        } else {
            match rest.bytes().next()? {
                b'h' => (std::time::Duration::from_secs(3600), 1),
                b'm' => (std::time::Duration::from_secs(60), 1),
                b's' => (std::time::Duration::from_secs(1), 1),
                _ => return None,
            }
        };
        rest = &rest[len..];
        total += unit * u32::try_from(n).ok()?;
        parts += 1;
    }
    (1..=4).contains(&parts).then_some(total)
}

/// Reads every `HTTPRoute` in a YAML (or JSON) text, `---`-separated, and validates each.
/// `source` names the text in errors (a file path, an etcd key).
pub fn parse(source: &str, text: &str) -> Result<Vec<HttpRoute>, PolicyError> {
    parse_routes(
        source,
        text,
        HTTP_ROUTE,
        HttpRoute::validate,
        HttpRoute::key,
    )
}

/// Reads every `GRPCRoute` in a YAML (or JSON) text, `---`-separated, and validates each.
pub fn parse_grpc(source: &str, text: &str) -> Result<Vec<GrpcRoute>, PolicyError> {
    parse_routes(
        source,
        text,
        GRPC_ROUTE,
        GrpcRoute::validate,
        GrpcRoute::key,
    )
}

/// The documents of one kind in `text`, each read straight from the text (errors keep their
/// line and column) and validated; an error names the object by `kind` and key.
fn parse_routes<T: serde::de::DeserializeOwned>(
    source: &str,
    text: &str,
    kind: &str,
    validate: impl Fn(&T) -> Result<(), Vec<crate::policy::FieldError>>,
    key: impl Fn(&T) -> String,
) -> Result<Vec<T>, PolicyError> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let route = Option::<T>::deserialize(doc).map_err(|e| PolicyError::Parse {
            source_name: source.to_string(),
            message: e.to_string(),
        })?;
        // An empty document, e.g. after a trailing `---`.
        let Some(route) = route else { continue };
        validate(&route).map_err(|errors| PolicyError::InvalidObject {
            source_name: source.to_string(),
            object: format!("{kind} {}", key(&route)),
            errors,
        })?;
        out.push(route);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
