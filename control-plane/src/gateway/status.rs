//! A route's status as the Gateway API reports it: per parentRef, `Accepted` (the parent is a
//! registered Service and port) and `ResolvedRefs` (every backendRef with weight names a
//! registered Service port), with the API's reasons. Kubernetes gets it as `status.parents[]`;
//! elsewhere `weftctl get httproutes` shows it.

use serde::Serialize;

use super::HttpRoute;
use super::Registered;

/// The controller that owns the statuses weft writes.
pub const CONTROLLER_NAME: &str = "weft.dev/gateway-controller";

/// One condition (`metav1.Condition`'s fields that weft sets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// The status of one parent.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentStatus {
    pub parent_ref: super::ParentRef,
    pub controller_name: &'static str,
    pub conditions: Vec<Condition>,
}

fn condition(kind: &'static str, ok: bool, reason: &'static str, message: String) -> Condition {
    Condition {
        kind,
        status: if ok { "True" } else { "False" },
        reason,
        message,
    }
}

/// `route`'s status against what is registered.
pub fn status(route: &HttpRoute, snap: &Registered<'_>) -> Vec<ParentStatus> {
    let ns = route.namespace();
    let missing: Vec<String> = route
        .spec
        .rules
        .iter()
        .flat_map(|r| &r.backend_refs)
        .filter(|b| b.weight > 0)
        .map(|b| b.service(ns))
        .chain(
            route
                .spec
                .rules
                .iter()
                .flat_map(|r| &r.filters)
                .filter_map(|f| f.request_mirror.as_ref())
                .map(|m| m.backend_ref.service(ns)),
        )
        .filter(|s| !s.registered(snap))
        .map(|s| format!("{}:{}", s.key, s.port.unwrap_or(0)))
        .collect();
    let resolved = if missing.is_empty() {
        condition(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "every backendRef names a registered Service port".into(),
        )
    } else {
        condition(
            "ResolvedRefs",
            false,
            "BackendNotFound",
            format!(
                "not registered: {} (a backend's share of the requests is answered 500; a mirror copies nothing)",
                missing.join(", ")
            ),
        )
    };
    route
        .service_parents()
        .map(|p| {
            let r = p.service(ns);
            let accepted = if r.registered(snap) {
                condition("Accepted", true, "Accepted", "attached".into())
            } else {
                let port = r.port.map(|p| format!(" port {p}")).unwrap_or_default();
                condition(
                    "Accepted",
                    false,
                    "NoMatchingParent",
                    format!("no registered Service {}{port}", r.key),
                )
            };
            ParentStatus {
                parent_ref: p.clone(),
                controller_name: CONTROLLER_NAME,
                conditions: vec![accepted, resolved.clone()],
            }
        })
        .collect()
}
