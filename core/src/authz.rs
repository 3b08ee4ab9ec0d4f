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

/// What one allow rule admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule<'a> {
    Identity(&'a str),
    Namespace(&'a str),
    Authenticated,
}

impl AllowRule {
    /// The rule, or what is wrong with it: the field (within the rule; empty for the rule as a
    /// whole) and why. The control plane's validation and the proxy's compile both ask this,
    /// so a policy one accepts the other does too.
    pub fn rule(&self) -> Result<Rule<'_>, (&'static str, String)> {
        match (&self.identity, &self.namespace, self.authenticated) {
            (Some(id), None, None) if id.starts_with("spiffe://") => Ok(Rule::Identity(id)),
            (Some(id), None, None) => Err((
                "identity",
                format!("`{id}` is not a SPIFFE id (spiffe://<trust-domain>/ns/<ns>/sa/<sa>)"),
            )),
            (None, Some(ns), None) if !ns.is_empty() => Ok(Rule::Namespace(ns)),
            (None, Some(_), None) => Err(("namespace", "the namespace is empty".into())),
            (None, None, Some(true)) => Ok(Rule::Authenticated),
            _ => Err((
                "",
                "set exactly one of `identity`, `namespace`, `authenticated: true`".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> Result<Rule<'static>, (&'static str, String)> {
        let r: AllowRule = serde_json::from_str(yaml).unwrap();
        let r: &'static AllowRule = Box::leak(Box::new(r));
        r.rule()
    }

    #[test]
    fn a_rule_is_exactly_one_of_three() {
        assert_eq!(
            rule(r#"{"identity": "spiffe://td/ns/a/sa/b"}"#),
            Ok(Rule::Identity("spiffe://td/ns/a/sa/b"))
        );
        assert_eq!(rule(r#"{"namespace": "ops"}"#), Ok(Rule::Namespace("ops")));
        assert_eq!(rule(r#"{"authenticated": true}"#), Ok(Rule::Authenticated));
        assert_eq!(
            rule(r#"{"identity": "frontend"}"#).unwrap_err().0,
            "identity"
        );
        assert_eq!(rule(r#"{"namespace": ""}"#).unwrap_err().0, "namespace");
        for bad in [
            r#"{}"#,
            r#"{"authenticated": false}"#,
            r#"{"identity": "spiffe://td/ns/a/sa/b", "authenticated": false}"#,
            r#"{"namespace": "a", "authenticated": true}"#,
        ] {
            assert_eq!(rule(bad).unwrap_err().0, "", "{bad}");
        }
    }
}
