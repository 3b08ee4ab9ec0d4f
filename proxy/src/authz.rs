//! Authorization policies, compiled: which callers (SPIFFE ids, namespaces, any authenticated
//! peer) a service admits. The table compiles one per service; the inbound side asks them
//! ([`crate::inbound::Peer::authorize`]).

use std::collections::HashSet;

use weft_core::policy::check::Problem;

/// A service's authorization policy, as written (the `authorization` of a TrafficPolicy, or
/// of a service in the table file).
pub use weft_core::authz::{
    AllowRule, Authorization as AuthorizationSpec, AuthzDefault as DefaultAction, Rule,
};

/// A compiled policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authz {
    deny_by_default: bool,
    identities: HashSet<Box<str>>,
    namespaces: HashSet<Box<str>>,
    authenticated: bool,
}

impl Authz {
    /// Compiles a policy; the error names the rule.
    pub fn compile(spec: &AuthorizationSpec) -> Result<Authz, Problem> {
        let mut a = Authz {
            deny_by_default: spec.default == DefaultAction::Deny,
            identities: HashSet::new(),
            namespaces: HashSet::new(),
            authenticated: false,
        };
        for (i, r) in spec.allow.iter().enumerate() {
            match r.rule() {
                Ok(Rule::Identity(id)) => {
                    a.identities.insert(id.into());
                }
                Ok(Rule::Namespace(ns)) => {
                    a.namespaces.insert(ns.into());
                }
                Ok(Rule::Authenticated) => a.authenticated = true,
                Err(("", why)) => return Err(Problem::new(format!("allow[{i}]"), why)),
                Err((field, why)) => {
                    return Err(Problem::new(format!("allow[{i}].{field}"), why));
                }
            }
        }
        Ok(a)
    }

    /// Whether `peer` (a SPIFFE id, or `None` for a plaintext caller) may call; `namespace` is
    /// its namespace if it belongs to this proxy's trust domain.
    pub fn allows(&self, peer: Option<&str>, namespace: Option<&str>) -> bool {
        let ruled = peer.is_some_and(|id| {
            self.authenticated
                || self.identities.contains(id)
                || namespace.is_some_and(|ns| self.namespaces.contains(ns))
        });
        ruled || !self.deny_by_default
    }
}

/// The trust domain and namespace of `spiffe://<trust-domain>/ns/<namespace>/sa/<sa>`.
pub fn namespace_of(id: &str) -> Option<(&str, &str)> {
    let (td, path) = id.strip_prefix("spiffe://")?.split_once('/')?;
    let mut parts = path.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("ns"), Some(ns), Some("sa"), Some(_)) if !ns.is_empty() => Some((td, ns)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

    fn policy(yaml: &str) -> Authz {
        Authz::compile(&serde_yaml_ng::from_str(yaml).unwrap()).unwrap()
    }

    #[test]
    fn rules_allow_and_the_default_decides_the_rest() {
        let p = policy(
            "default: deny\nallow: [{identity: spiffe://cluster.local/ns/shop/sa/frontend}, {namespace: ops}]",
        );
        let allows = |id: &str| {
            let ns = namespace_of(id)
                .filter(|(td, _)| *td == "cluster.local")
                .map(|(_, ns)| ns);
            p.allows(Some(id), ns)
        };
        assert!(allows(FRONTEND));
        assert!(allows("spiffe://cluster.local/ns/ops/sa/anything"));
        assert!(
            !allows("spiffe://elsewhere.example/ns/ops/sa/anything"),
            "another trust domain's namespace"
        );
        assert!(!allows("spiffe://cluster.local/ns/shop/sa/payments"));
        assert!(!allows("spiffe://cluster.local/ns/shopping/sa/x"));
        assert!(!p.allows(None, None), "plaintext is nobody");

        let p = policy("default: deny\nallow: [{authenticated: true}]");
        assert!(p.allows(Some(FRONTEND), Some("shop")));
        assert!(!p.allows(None, None));

        let p = policy("allow: [{identity: spiffe://cluster.local/ns/shop/sa/frontend}]");
        assert!(
            p.allows(None, None),
            "default allow: the rules only add to everyone"
        );
    }

    #[test]
    fn bad_rules_are_named() {
        let spec: AuthorizationSpec =
            serde_yaml_ng::from_str("allow: [{identity: frontend}]").unwrap();
        let e = Authz::compile(&spec).unwrap_err();
        assert_eq!(e.field, "allow[0].identity");
        assert_eq!(
            e.to_string(),
            "allow[0].identity: `frontend` is not a SPIFFE id (spiffe://<trust-domain>/ns/<ns>/sa/<sa>)"
        );
        let spec: AuthorizationSpec =
            serde_yaml_ng::from_str("allow: [{namespace: a, authenticated: true}]").unwrap();
        let e = Authz::compile(&spec).unwrap_err();
        assert_eq!(e.field, "allow[0]");
        assert!(e.message.starts_with("set exactly one"), "{e}");
    }

    #[test]
    fn namespaces_come_from_the_spiffe_path() {
        assert_eq!(namespace_of(FRONTEND), Some(("cluster.local", "shop")));
        assert_eq!(namespace_of("spiffe://td/ns//sa/x"), None);
        assert_eq!(namespace_of("spiffe://td/other/shop"), None);
    }
}
