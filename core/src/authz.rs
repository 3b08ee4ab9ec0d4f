//! The `authorization` block of a TrafficPolicy (and of a service in the proxy's table file):
//! who may call a service. The control plane validates and sends it; the proxy enforces it.

use serde::{Deserialize, Serialize};

/// Who may call a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Authorization {
    /// What happens to a caller no rule allows.
    #[serde(default)]
    pub default: AuthzDefault,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AllowRule>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthzDefault {
    #[default]
    Allow,
    Deny,
}

/// Exactly one of the fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AllowRule {
    /// A SPIFFE id, `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Every workload of a namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Any caller with a mesh identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticated: Option<bool>,
}
