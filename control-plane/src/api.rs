//! The API `weftctl` talks to: HTTP/JSON on its own listener (loopback by default, since it can
//! change policies).
//!
//! | method | path | does |
//! | --- | --- | --- |
//! | GET | `/api/v1/registry` | what the registry holds: services, policies, routes and the routes' conditions (JSON) |
//! | GET | `/api/v1/check` | `weftctl check`'s findings (JSON) |
//! | GET | `/api/v1/proxy-status` | per node and type: versions sent, acknowledged, last NACK (JSON) |
//! | GET | `/api/v1/proxies/<node>/config` | one node's status and, per type, the resources served to it now (name and version, its namespace's variants included) (JSON) |
//! | PUT | `/api/v1/policies` | body: policies, HTTPRoutes and GRPCRoutes (YAML or JSON, `---`-separated); validated, then written into the registry (`store`) |
//! | DELETE | `/api/v1/policies/<namespace>/<name>` (`httproutes`, `grpcroutes`) | removes one weftctl wrote |
//!
//! Errors are `text/plain` with a 4xx status and a message that names what was wrong.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use tokio::{net::TcpListener, sync::watch};

use crate::{ads::Nodes, policy, registry::Snapshot, snapshot::XdsSnapshot};

mod store;
pub use store::PolicyStore;
use store::{KUBERNETES_POLICIES, Kind};

pub type Rsp = Response<Full<Bytes>>;

pub fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Rsp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        content_type.parse().expect("a valid content type"),
    );
    r
}

fn plain(status: StatusCode, body: impl Into<String>) -> Rsp {
    text(status, "text/plain; charset=utf-8", body.into() + "\n")
}

/// Per node and type: the versions sent and acknowledged, and the last rejection.
pub fn proxy_status_json(nodes: &Nodes) -> Vec<u8> {
    let status: serde_json::Map<String, serde_json::Value> = nodes
        .snapshot()
        .into_iter()
        .map(|(id, n)| {
            let types: serde_json::Map<String, serde_json::Value> = n
                .types
                .into_iter()
                .map(|(t, s)| {
                    let nack = s
                        .last_nack
                        .map(|(v, e)| serde_json::json!({"version": v, "error": e}));
                    let v = serde_json::json!({"sent": s.sent_version, "acked": s.acked_version, "lastNack": nack});
                    (t, v)
                })
                .collect();
            let v = serde_json::json!({"connected": n.connected, "delta": n.delta, "types": types});
            (id, v)
        })
        .collect();
    serde_json::to_vec_pretty(&status).unwrap_or_default()
}

/// One node's status, and per type the resources the control plane serves it now, or `None`
/// for a node that never connected.
pub fn proxy_config_json(nodes: &Nodes, snapshot: &XdsSnapshot, node: &str) -> Option<Vec<u8>> {
    let n = nodes.snapshot().remove(node)?;
    let types: serde_json::Map<String, serde_json::Value> = (snapshot.types.keys())
        .map(|url| {
            let st = n.types.get(*url).cloned().unwrap_or_default();
            // What this node is served: its namespace's variants in place of the others.
            let set = snapshot.view(url, &n.about.namespace);
            let resources: serde_json::Map<String, serde_json::Value> = (set.resources())
                .map(|(name, v)| (name.to_string(), v.version.to_string().into()))
                .collect();
            let nack = st
                .last_nack
                .map(|(v, e)| serde_json::json!({"version": v, "error": e}));
            let v = serde_json::json!({
                "sent": st.sent_version,
                "acked": st.acked_version,
                "lastNack": nack,
                "serving": {"version": set.version(), "resources": resources},
            });
            (url.to_string(), v)
        })
        .collect();
    let v = serde_json::json!({
        "node": node,
        "connected": n.connected,
        "stream": if n.delta { "delta" } else { "sotw" },
        "types": types,
    });
    serde_json::to_vec_pretty(&v).ok()
}

/// The snapshot, and each HTTPRoute's status against it (`http_route_status`, by
/// `namespace/name`: its `parents`, as Kubernetes would hold them).
pub fn registry_json(registry: &watch::Receiver<Arc<Snapshot>>) -> Vec<u8> {
    let snap = registry.borrow().clone();
    let mut v = serde_json::to_value(&*snap).unwrap_or_default();
    let registered = crate::gateway::Registered::new(&snap);
    if !snap.http_routes.is_empty() {
        let status: serde_json::Map<String, serde_json::Value> = snap
            .http_routes
            .iter()
            .map(|(k, r)| {
                let parents = crate::gateway::status(r, &registered);
                (k.clone(), serde_json::json!({ "parents": parents }))
            })
            .collect();
        v["http_route_status"] = serde_json::Value::Object(status);
    }
    if !snap.grpc_routes.is_empty() {
        let status: serde_json::Map<String, serde_json::Value> = snap
            .grpc_routes
            .iter()
            .map(|(k, r)| {
                let parents = crate::gateway::status(&r.as_http(), &registered);
                (k.clone(), serde_json::json!({ "parents": parents }))
            })
            .collect();
        v["grpc_route_status"] = serde_json::Value::Object(status);
    }
    serde_json::to_vec_pretty(&v).unwrap_or_default()
}

/// What the API needs.
#[derive(Debug, Clone)]
pub struct Api {
    pub store: PolicyStore,
    pub registry: watch::Receiver<Arc<Snapshot>>,
    pub nodes: Arc<Nodes>,
    pub snapshots: watch::Receiver<Arc<XdsSnapshot>>,
    /// The registry's current errors (documents it could not read), for `weftctl check`.
    pub registry_errors: Arc<std::sync::Mutex<Vec<String>>>,
    /// When the CA certificate expires; `None` when the control plane is no CA.
    pub ca_not_after: Option<std::time::SystemTime>,
    /// The API listens on loopback: it answers only requests whose `Host` is a loopback name
    /// (a page on another site whose name resolves to 127.0.0.1 sends its own: DNS
    /// rebinding). Elsewhere (behind an authenticating proxy) any Host is taken.
    pub loopback_only: bool,
}

impl Api {
    pub async fn serve(self, l: TcpListener) {
        let api = Arc::new(self);
        let slots = crate::serve::slots();
        loop {
            let Ok((s, _)) = l.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let slot = slots.take();
            let api = api.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.handle(req).await) }
                });
                crate::serve::connection(s, svc, crate::serve::HEADER_READ_TIMEOUT, slot).await;
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Rsp {
        let host = req
            .headers()
            .get(http::header::HOST)
            .map(|h| h.to_str().unwrap_or("\0"));
        if self.loopback_only && host.is_some_and(|h| !weft_core::address::is_loopback_authority(h))
        {
            return plain(
                StatusCode::FORBIDDEN,
                "the API answers requests for localhost, 127.0.0.1 or [::1] only (Host)",
            );
        }
        let path = req.uri().path().to_string();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/api/v1/registry") => text(
                StatusCode::OK,
                "application/json",
                registry_json(&self.registry),
            ),
            (Method::GET, "/api/v1/check") => {
                text(StatusCode::OK, "application/json", self.check_json())
            }
            (Method::GET, "/api/v1/proxy-status") => text(
                StatusCode::OK,
                "application/json",
                proxy_status_json(&self.nodes),
            ),
            (Method::GET, p)
                if let Some(node) = p
                    .strip_prefix("/api/v1/proxies/")
                    .and_then(|rest| rest.strip_suffix("/config"))
                    .filter(|node| !node.is_empty()) =>
            {
                let snap = self.snapshots.borrow().clone();
                match proxy_config_json(&self.nodes, &snap, node) {
                    Some(body) => text(StatusCode::OK, "application/json", body),
                    None => plain(
                        StatusCode::NOT_FOUND,
                        format!(
                            "no proxy `{node}` has connected (weftctl proxy-status lists those that have)"
                        ),
                    ),
                }
            }
            (Method::PUT, "/api/v1/policies") => {
                let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        return plain(
                            StatusCode::BAD_REQUEST,
                            format!("cannot read the body: {e}"),
                        );
                    }
                };
                let Ok(text) = std::str::from_utf8(&body) else {
                    return plain(StatusCode::BAD_REQUEST, "the body is not UTF-8 text");
                };
                self.apply(text).await
            }
            (Method::DELETE, p) if p.starts_with("/api/v1/policies/") => {
                self.delete(Kind::Policy, &p["/api/v1/policies/".len()..])
                    .await
            }
            (Method::DELETE, p) if p.starts_with("/api/v1/httproutes/") => {
                self.delete(Kind::HttpRoute, &p["/api/v1/httproutes/".len()..])
                    .await
            }
            (Method::DELETE, p) if p.starts_with("/api/v1/grpcroutes/") => {
                self.delete(Kind::GrpcRoute, &p["/api/v1/grpcroutes/".len()..])
                    .await
            }
            _ => plain(
                StatusCode::NOT_FOUND,
                "endpoints: GET /api/v1/registry, GET /api/v1/check, GET /api/v1/proxy-status, GET /api/v1/proxies/<node>/config, PUT /api/v1/policies, DELETE /api/v1/policies|httproutes|grpcroutes/<namespace>/<name>",
            ),
        }
    }

    /// `weftctl check`'s findings, as JSON.
    fn check_json(&self) -> Vec<u8> {
        let registry = self.registry.borrow().clone();
        let serving = self.snapshots.borrow().clone();
        let errors = self.registry_errors.lock().expect("errors lock").clone();
        let nodes = self.nodes.snapshot();
        let proxies = nodes
            .iter()
            .map(|(node, n)| crate::check::Proxy {
                node,
                connected: n.connected,
                delta: n.delta,
                types: &n.types,
                namespace: &n.about.namespace,
            })
            .collect();
        let findings = crate::check::report(&crate::check::Inputs {
            registry: &registry,
            registry_errors: &errors,
            proxies,
            serving: &serving,
            ca_not_after: self.ca_not_after,
            now: std::time::SystemTime::now(),
        });
        serde_json::to_vec_pretty(&findings).unwrap_or_default()
    }

    async fn apply(&self, text: &str) -> Rsp {
        if matches!(self.store, PolicyStore::Kubernetes) {
            return plain(StatusCode::CONFLICT, KUBERNETES_POLICIES);
        }
        let c = match crate::registry::file::parse_documents("request", text) {
            Ok(c) => c,
            Err(e) => return plain(StatusCode::BAD_REQUEST, e),
        };
        if !c.services.is_empty() {
            return plain(
                StatusCode::BAD_REQUEST,
                "`Service` documents are registrations: write them into the registry (weftctl applies TrafficPolicy and HTTPRoute documents)",
            );
        }
        if c.policies.is_empty() && c.http_routes.is_empty() && c.grpc_routes.is_empty() {
            return plain(
                StatusCode::BAD_REQUEST,
                "no TrafficPolicy, HTTPRoute or GRPCRoute in the request",
            );
        }
        let policies = c.policies.iter().map(|p| {
            let yaml = serde_yaml_ng::to_string(p);
            (Kind::Policy, p.key(), yaml)
        });
        let routes = c.http_routes.iter().map(|r| {
            let yaml = serde_yaml_ng::to_string(r);
            (Kind::HttpRoute, r.key(), yaml)
        });
        let grpc = c.grpc_routes.iter().map(|r| {
            let yaml = serde_yaml_ng::to_string(r);
            (Kind::GrpcRoute, r.key(), yaml)
        });
        let mut done = Vec::new();
        for (kind, key, yaml) in policies.chain(routes).chain(grpc) {
            let what = kind.name();
            let yaml = match yaml {
                Ok(y) => y,
                Err(e) => {
                    return plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("{what} {key}: {e}"),
                    );
                }
            };
            let stored = kind.stored_key(&key);
            let at = self.store.location(&stored);
            if let Err(e) = self.store.write(&stored, yaml).await {
                return plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{what} {key}: cannot write {at}: {e}"),
                );
            }
            tracing::info!(kind = what, key = %key, at = %at, "applied");
            done.push(format!("{what} {key} applied"));
        }
        plain(StatusCode::OK, done.join("\n"))
    }

    async fn delete(&self, kind: Kind, key: &str) -> Rsp {
        if matches!(self.store, PolicyStore::Kubernetes) {
            return plain(StatusCode::CONFLICT, KUBERNETES_POLICIES);
        }
        let Some((ns, name)) = key
            .split_once('/')
            .filter(|(ns, name)| policy::is_name(ns) && policy::is_name(name))
        else {
            return plain(
                StatusCode::BAD_REQUEST,
                format!(
                    "`{key}`: expected <namespace>/<name> (lower-case letters, digits, `-` and `.`)"
                ),
            );
        };
        let key = format!("{ns}/{name}");
        let what = kind.name();
        let stored = kind.stored_key(&key);
        let known = {
            let reg = self.registry.borrow();
            match kind {
                Kind::Policy => reg.policies.contains_key(&key),
                Kind::HttpRoute => reg.http_routes.contains_key(&key),
                Kind::GrpcRoute => reg.grpc_routes.contains_key(&key),
            }
        };
        match self.store.remove(&stored).await {
            Ok(true) => plain(StatusCode::OK, format!("{what} {key} deleted")),
            Err(e) => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "{what} {key}: cannot delete {}: {e}",
                    self.store.location(&stored)
                ),
            ),
            Ok(false) if known => plain(
                StatusCode::CONFLICT,
                format!(
                    "{what} {key} was not applied with weftctl; edit {} instead",
                    self.store.describe()
                ),
            ),
            Ok(false) => plain(StatusCode::NOT_FOUND, format!("no {what} {key}")),
        }
    }
}
