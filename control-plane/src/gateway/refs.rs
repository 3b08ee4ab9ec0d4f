//! What a route's references name: the Services of its parentRefs and backendRefs, and
//! whether they are registered.

use super::{HttpBackendRef, HttpRoute, MirrorBackendRef, ParentRef};

/// Where a route's parent or backend points: a Service by namespace and name, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    /// `namespace/name`, as registrations are keyed (the namespace defaults to the route's).
    pub key: String,
    pub port: Option<u16>,
}

impl ServiceRef {
    fn new(namespace: &Option<String>, name: &str, port: Option<u16>, route_ns: &str) -> Self {
        let ns = namespace.as_deref().unwrap_or(route_ns);
        ServiceRef {
            key: format!("{ns}/{name}"),
            port,
        }
    }

    /// The Service's namespace.
    pub fn namespace(&self) -> &str {
        self.key.split_once('/').map_or("", |(ns, _)| ns)
    }

    /// Whether it names a registered Service (on this port, when one is named).
    pub fn registered(&self, reg: &Registered<'_>) -> bool {
        (reg.0.get(self.key.as_str()))
            .is_some_and(|ports| self.port.is_none_or(|p| ports.contains(&p)))
    }
}

/// The registered Services' ports by `namespace/name`: what routes' references are checked
/// against, made once per snapshot (each check is then a lookup, not a pass over the mesh).
#[derive(Debug, Default)]
pub struct Registered<'a>(std::collections::HashMap<&'a str, Vec<u16>>);

impl<'a> Registered<'a> {
    pub fn new(snap: &'a crate::registry::Snapshot) -> Self {
        let mut m: std::collections::HashMap<&str, Vec<u16>> = Default::default();
        for s in snap.services.values() {
            m.entry(s.key.as_str()).or_default().push(s.spec.port);
        }
        Registered(m)
    }
}

impl HttpRoute {
    /// The parentRefs that name a Service: weft's (others are other controllers').
    pub fn service_parents(&self) -> impl Iterator<Item = &ParentRef> + Clone {
        self.spec.parent_refs.iter().filter(|p| p.is_service())
    }

    /// Whether a parentRef names the registration `key` (`namespace/name`) on `port`.
    pub fn attaches_to(&self, key: &str, port: u16) -> bool {
        self.service_parents().any(|p| {
            let r = p.service(self.namespace());
            r.key == key && r.port.is_none_or(|p| p == port)
        })
    }
}

impl ParentRef {
    /// Whether it names a Service (`group: ""`, `kind: Service`): a mesh parent, weft's.
    /// `group: core`, which some of the API's own examples write, is taken as `""`.
    pub fn is_service(&self) -> bool {
        matches!(self.group.as_deref(), Some("" | "core"))
            && self.kind.as_deref() == Some("Service")
    }

    /// The Service this names (its namespace defaults to the route's).
    pub fn service(&self, route_ns: &str) -> ServiceRef {
        ServiceRef::new(&self.namespace, &self.name, self.port, route_ns)
    }
}

impl HttpBackendRef {
    pub fn service(&self, route_ns: &str) -> ServiceRef {
        ServiceRef::new(&self.namespace, &self.name, self.port, route_ns)
    }
}

impl MirrorBackendRef {
    pub fn service(&self, route_ns: &str) -> ServiceRef {
        ServiceRef::new(&self.namespace, &self.name, self.port, route_ns)
    }
}
