//! `TrafficPolicy`: what operators write to steer a service's traffic. One schema everywhere:
//! a YAML/JSON file in the file registry, a value in etcd, a custom resource in Kubernetes.
//!
//! ```yaml
//! apiVersion: weft.dev/v1alpha1
//! kind: TrafficPolicy
//! metadata: {name: reviews, namespace: default}
//! spec:
//!   service: reviews.default.svc.cluster.local:9080
//!   subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
//!   routes:
//!     - backends: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]
//! ```
//!
//! Parsing ([`parse`]) checks the shape; [`TrafficPolicy::validate`] checks the meaning and names
//! every field that is wrong. Only a policy with no errors may replace the one in force.

mod validate;

use std::{collections::BTreeMap, time::Duration};

pub use weft_core::{
    authz::{AllowRule, Authorization, AuthzDefault},
    policy::{
        Backoff, CircuitBreaker, FailureRate, Fault, FaultAbort, FaultDelay, HashKey, LbPolicy,
        LoadBalancer, Mirror, OutlierDetection, RETRY_CONDITIONS, RateLimit, RetryBudget,
        RetryPolicy,
    },
};

use serde::{Deserialize, Serialize};

pub(crate) use validate::Check;
pub use validate::{FieldError, is_name};

pub const API_VERSION: &str = "weft.dev/v1alpha1";
pub const KIND: &str = "TrafficPolicy";

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: PolicySpec,
}

/// Object metadata. Fields other than these (a Kubernetes object has many) are ignored.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    /// The service this policy governs, `host:port`.
    pub service: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// Tried in order; the first that matches takes the request. Unmatched requests go to every
    /// endpoint of the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteRule>,
    /// Default whole-request timeout for routes that set none.
    #[serde(
        default,
        with = "weft_core::duration::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Default retry policy for routes that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// The longest `grpc-timeout` a caller may ask for; longer ones are cut to this.
    #[serde(
        default,
        with = "weft_core::duration::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub grpc_timeout_max: Option<Duration>,
    /// A stream that carries nothing for this long is ended.
    #[serde(
        default,
        with = "weft_core::duration::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
}

/// A named set of the service's endpoints: those that carry every one of `labels`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subset {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<RouteMatch>,
    /// Weighted backends (the canary split); empty means every endpoint of the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
    #[serde(
        default,
        with = "weft_core::duration::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// A token bucket for this route alone (the service's `rateLimit` applies as well).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    #[serde(
        default,
        with = "weft_core::duration::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub grpc_timeout_max: Option<Duration>,
    #[serde(
        default,
        with = "weft_core::duration::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
}

/// Every part given must match.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Query parameters, matched on their values as sent (not percent-decoded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<HeaderMatch>,
}

/// Exactly one of the fields. Regexes match the whole value.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A header (or query parameter) match: at most one of `exact`, `prefix`, `regex`; none
/// means "present".
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backend {
    /// A subset; absent means every endpoint of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Why policies could not be read. The text names the source, the policy and each field.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{source_name}: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: policy {policy}: {}", join(errors))]
    Invalid {
        source_name: String,
        policy: String,
        errors: Vec<FieldError>,
    },
    /// An object of another kind (`HTTPRoute demo/web`), named with its kind.
    #[error("{source_name}: {object}: {}", join(errors))]
    InvalidObject {
        source_name: String,
        object: String,
        errors: Vec<FieldError>,
    },
}

impl PolicyError {
    /// What is wrong, without the source and the object it is in.
    pub fn problems(&self) -> String {
        match self {
            PolicyError::Parse { message, .. } => message.clone(),
            PolicyError::Invalid { errors, .. } | PolicyError::InvalidObject { errors, .. } => {
                join(errors)
            }
        }
    }
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl TrafficPolicy {
    /// `namespace/name` (namespace `default` when unset).
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name
        )
    }
}

/// Reads every policy in a YAML (or JSON) text, `---`-separated, and validates each. `source`
/// names the text in errors (a file path, an etcd key).
pub fn parse(source: &str, text: &str) -> Result<Vec<TrafficPolicy>, PolicyError> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        // Straight from the text, so errors keep their line and column.
        let policy = Option::<TrafficPolicy>::deserialize(doc).map_err(|e| PolicyError::Parse {
            source_name: source.to_string(),
            message: e.to_string(),
        })?;
        // An empty document, e.g. after a trailing `---`.
        let Some(policy) = policy else { continue };
        policy.validate().map_err(|errors| PolicyError::Invalid {
            source_name: source.to_string(),
            policy: policy.key(),
            errors,
        })?;
        out.push(policy);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
