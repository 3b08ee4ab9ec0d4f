//! `weftctl get`: the registry's services, endpoints, policies and routes as tables.

use super::{What, table};

pub(super) fn s(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub(super) fn get(what: What, registry: &serde_json::Value) -> String {
    let mut rows = Vec::new();
    match what {
        What::Services => {
            rows.push(vec![
                "SERVICE".into(),
                "REGISTRATION".into(),
                "PROTOCOL".into(),
                "ENDPOINTS".into(),
            ]);
            for (authority, svc) in registry["services"].as_object().into_iter().flatten() {
                let spec = &svc["spec"];
                let n = spec["endpoints"].as_array().map_or(0, Vec::len);
                rows.push(vec![
                    authority.clone(),
                    s(&svc["key"]),
                    s(&spec["protocol"]),
                    n.to_string(),
                ]);
            }
        }
        What::Endpoints => {
            rows.push(vec![
                "SERVICE".into(),
                "ADDRESS".into(),
                "WEIGHT".into(),
                "HEALTHY".into(),
                "LABELS".into(),
            ]);
            for (authority, svc) in registry["services"].as_object().into_iter().flatten() {
                for e in svc["spec"]["endpoints"].as_array().into_iter().flatten() {
                    let labels: Vec<String> = e["labels"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| format!("{k}={}", s(v)))
                        .collect();
                    rows.push(vec![
                        authority.clone(),
                        s(&e["address"]),
                        s(&e["weight"]),
                        s(&e["healthy"]),
                        labels.join(","),
                    ]);
                }
            }
        }
        What::Policies => {
            rows.push(vec![
                "POLICY".into(),
                "SERVICE".into(),
                "ROUTES".into(),
                "SUBSETS".into(),
            ]);
            for (key, p) in registry["policies"].as_object().into_iter().flatten() {
                let spec = &p["spec"];
                let count = |f: &str| spec[f].as_array().map_or(0, Vec::len).to_string();
                rows.push(vec![
                    key.clone(),
                    s(&spec["service"]),
                    count("routes"),
                    count("subsets"),
                ]);
            }
        }
        What::Httproutes | What::Grpcroutes | What::Routes => {
            let kinds: &[_] = match what {
                What::Grpcroutes => &[("grpc_routes", "grpc_route_status", "")],
                What::Httproutes => &[("http_routes", "http_route_status", "")],
                _ => &[
                    ("http_routes", "http_route_status", "HTTPRoute "),
                    ("grpc_routes", "grpc_route_status", "GRPCRoute "),
                ],
            };
            let title = match what {
                What::Grpcroutes => "GRPCROUTE",
                What::Httproutes => "HTTPROUTE",
                _ => "ROUTE",
            };
            rows.push(vec![
                title.into(),
                "PARENTS".into(),
                "RULES".into(),
                "ACCEPTED".into(),
                "RESOLVEDREFS".into(),
            ]);
            for (routes, statuses, kind) in kinds {
                let status = &registry[*statuses];
                for (key, r) in registry[*routes].as_object().into_iter().flatten() {
                    // A consumer route's parent is in another namespace: it is named with it.
                    let parents: Vec<String> = r["spec"]["parentRefs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| {
                            let name = match p["namespace"].as_str() {
                                Some(ns) => format!("{ns}/{}", s(&p["name"])),
                                None => s(&p["name"]),
                            };
                            match p["port"].as_u64() {
                                Some(port) => format!("{name}:{port}"),
                                None => name,
                            }
                        })
                        .collect();
                    // Per condition type: its status, and the reason when it is not True.
                    let condition = |kind: &str| {
                        let found: Vec<String> = status[key]["parents"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .flat_map(|p| p["conditions"].as_array().into_iter().flatten())
                            .filter(|c| c["type"] == kind)
                            .map(|c| match c["status"].as_str() {
                                Some("True") => "True".to_string(),
                                _ => format!("False ({}: {})", s(&c["reason"]), s(&c["message"])),
                            })
                            .collect();
                        let mut found = found;
                        found.dedup();
                        found.join("; ")
                    };
                    rows.push(vec![
                        format!("{kind}{key}"),
                        parents.join(","),
                        r["spec"]["rules"]
                            .as_array()
                            .map_or(0, Vec::len)
                            .to_string(),
                        condition("Accepted"),
                        condition("ResolvedRefs"),
                    ]);
                }
            }
        }
    }
    table(rows)
}
