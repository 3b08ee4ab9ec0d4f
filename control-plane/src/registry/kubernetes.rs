//! The Kubernetes registry: Services, EndpointSlices, Pods (for endpoint labels and service
//! accounts) and `TrafficPolicy` objects (the `weft.dev/v1alpha1` CRD), watched through kube-rs
//! reflectors and translated into one [`Snapshot`].
//!
//! The translation ([`Translator`]) is pure: the tests feed it objects recorded in the shape the
//! API server returns them (lists and watch events under `control-plane/tests/fixtures/k8s/`),
//! since no API server can run where weft is built.
//!
//! - Each Service port is a service: `<name>.<namespace>.svc.cluster.local:<port>`, aliases
//!   `<name>`, `<name>.<namespace>`, `<name>.<namespace>.svc`, the cluster IP as its VIP
//!   (headless Services have none). The protocol comes from the port's `appProtocol`
//!   (`http`, `http2`, `grpc`, `kubernetes.io/h2c`, `tcp`), else from its name's prefix
//!   (`http-`, `http2-`, `grpc-`, `tcp-`, Istio's convention), else `http`.
//! - Endpoints come from the EndpointSlices labelled `kubernetes.io/service-name`: each address
//!   with the slice port of the same name as the Service port. `ready: false` endpoints stay,
//!   unhealthy; terminating ones that are no longer serving are left out. An endpoint whose
//!   `targetRef` is a Pod gets the Pod's labels (what policy subsets select on) and, when the
//!   injector gave the pod a sidecar (annotation `weft.dev/status: injected`), the identity
//!   `spiffe://<trust-domain>/ns/<namespace>/sa/<service account>`: sidecars reach it over
//!   mutual TLS, and everything else in plaintext.
//! - A TrafficPolicy that fails validation keeps its last good version in force, reported in
//!   the registry's errors.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Pod, Service as KubeService, ServicePort},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    core::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::sync::watch;

use weft_core::{address::EndpointAddress, contract::annotation};

use super::{Endpoint, Protocol, Service, ServiceSpec, Snapshot};
use crate::gateway::{self, GrpcRoute, HttpRoute};
use crate::policy::{self, TrafficPolicy};

/// Everything the watches hold at one moment.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    pub services: Vec<Arc<KubeService>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub pods: Vec<Arc<Pod>>,
    pub policies: Vec<Arc<DynamicObject>>,
    /// Gateway API HTTPRoutes and GRPCRoutes (empty when their CRDs are not installed).
    pub http_routes: Vec<Arc<DynamicObject>>,
    pub grpc_routes: Vec<Arc<DynamicObject>>,
}

/// Turns watched objects into snapshots, remembering each policy's last good version.
#[derive(Debug)]
pub struct Translator {
    trust_domain: String,
    /// By `namespace/name`: the last good policy and the text it was parsed from.
    policies: BTreeMap<String, (String, TrafficPolicy)>,
    /// The same for HTTPRoutes and GRPCRoutes.
    http_routes: BTreeMap<String, (String, HttpRoute)>,
    grpc_routes: BTreeMap<String, (String, GrpcRoute)>,
    /// Problems in force after the last translation.
    pub errors: Vec<String>,
    /// The objects refused in it, by `<kind> <namespace/name>`: what is wrong with each.
    pub refused: BTreeMap<String, String>,
}

pub(crate) fn key(ns: &Option<String>, name: &Option<String>) -> String {
    format!(
        "{}/{}",
        ns.as_deref().unwrap_or("default"),
        name.as_deref().unwrap_or("")
    )
}

/// The protocol a Service port declares.
fn protocol(p: &ServicePort) -> Protocol {
    let by_app = match p
        .app_protocol
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("http" | "http1" | "http/1.1") => Some(Protocol::Http1),
        Some("http2" | "grpc" | "kubernetes.io/h2c" | "h2c") => Some(Protocol::Http2),
        Some("tcp") => Some(Protocol::Tcp),
        _ => None,
    };
    if let Some(p) = by_app {
        return p;
    }
    let name = p.name.as_deref().unwrap_or("");
    let prefix = name.split('-').next().unwrap_or("");
    match prefix {
        "http2" | "grpc" | "h2c" => Protocol::Http2,
        "tcp" | "mongo" | "mysql" | "redis" => Protocol::Tcp,
        _ => Protocol::Http,
    }
}

impl Translator {
    pub fn new(trust_domain: &str) -> Self {
        Translator {
            trust_domain: trust_domain.to_string(),
            policies: BTreeMap::new(),
            http_routes: BTreeMap::new(),
            grpc_routes: BTreeMap::new(),
            errors: Vec::new(),
            refused: BTreeMap::new(),
        }
    }

    pub fn snapshot(&mut self, objs: &Objects) -> Snapshot {
        let (mut errors, mut refused) = (Vec::new(), BTreeMap::new());
        let mut snap = Snapshot::default();

        // Pods by namespace/name: labels and service account.
        let pods: BTreeMap<String, &Pod> = objs
            .pods
            .iter()
            .map(|p| (key(&p.metadata.namespace, &p.metadata.name), &**p))
            .collect();

        for svc in &objs.services {
            let (ns, name) = (
                svc.metadata.namespace.as_deref().unwrap_or("default"),
                svc.metadata.name.as_deref().unwrap_or(""),
            );
            let Some(spec) = &svc.spec else { continue };
            if spec.type_.as_deref() == Some("ExternalName") {
                continue;
            }
            let host = format!("{name}.{ns}.svc.cluster.local");
            let vip: Option<IpAddr> = spec
                .cluster_ip
                .as_deref()
                .filter(|ip| *ip != "None")
                .and_then(|ip| ip.parse().ok());
            let slices: Vec<&EndpointSlice> = objs
                .slices
                .iter()
                .filter(|s| {
                    s.metadata.namespace.as_deref().unwrap_or("default") == ns
                        && s.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get("kubernetes.io/service-name"))
                            .is_some_and(|n| n == name)
                })
                .map(|s| &**s)
                .collect();
            for port in spec.ports.iter().flatten() {
                let Ok(number) = u16::try_from(port.port) else {
                    errors.push(format!(
                        "service {ns}/{name}: port {} is out of range",
                        port.port
                    ));
                    continue;
                };
                if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
                    continue; // UDP and SCTP are not proxied.
                }
                let endpoints = self.endpoints(&slices, port, ns, &pods);
                let service = Service {
                    key: format!("{ns}/{name}"),
                    host: host.clone(),
                    spec: ServiceSpec {
                        host: Some(host.clone()),
                        port: number,
                        aliases: vec![
                            name.to_string(),
                            format!("{name}.{ns}"),
                            format!("{name}.{ns}.svc"),
                        ],
                        vip,
                        protocol: protocol(port),
                        endpoints,
                    },
                };
                snap.services.insert(service.authority(), service);
            }
        }

        // Policies and routes: the last good version of each stays when the current one is bad.
        snap.policies = last_good(
            &mut self.policies,
            &objs.policies,
            (policy::API_VERSION, policy::KIND),
            policy::parse,
            (&mut errors, &mut refused),
        );
        snap.http_routes = last_good(
            &mut self.http_routes,
            &mesh_routes(&objs.http_routes),
            (gateway::API_VERSION, gateway::HTTP_ROUTE),
            gateway::parse,
            (&mut errors, &mut refused),
        );
        snap.grpc_routes = last_good(
            &mut self.grpc_routes,
            &mesh_routes(&objs.grpc_routes),
            (gateway::API_VERSION, gateway::GRPC_ROUTE),
            gateway::parse_grpc,
            (&mut errors, &mut refused),
        );
        self.errors = errors;
        self.refused = refused;
        snap
    }

    /// The endpoints of one Service port across its slices.
    fn endpoints(
        &self,
        slices: &[&EndpointSlice],
        port: &ServicePort,
        ns: &str,
        pods: &BTreeMap<String, &Pod>,
    ) -> Vec<Endpoint> {
        let mut out = Vec::new();
        for slice in slices {
            // FQDN slices name their endpoints by host name; proxies resolve them.
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6" | "FQDN") {
                continue;
            }
            // The slice port carrying this Service port: same name (both unnamed for a
            // single-port Service).
            let Some(target) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or(""))
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for ep in &slice.endpoints {
                let cond = ep.conditions.as_ref();
                let ready = cond.and_then(|c| c.ready).unwrap_or(true);
                let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
                if terminating && !serving {
                    continue;
                }
                let pod = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        pods.get(&format!(
                            "{}/{}",
                            r.namespace.as_deref().unwrap_or(ns),
                            r.name.as_deref().unwrap_or("")
                        ))
                    });
                let labels = pod
                    .and_then(|p| p.metadata.labels.clone())
                    .unwrap_or_default();
                // Only a pod with a sidecar speaks mutual TLS: the injector marks it. Any other
                // (opted out, hostNetwork, a namespace without injection) is reached in
                // plaintext.
                let injected = pod.filter(|p| {
                    p.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(annotation::STATUS))
                        .is_some_and(|v| v == annotation::INJECTED)
                });
                let identity = injected.map(|p| {
                    let sa = p
                        .spec
                        .as_ref()
                        .and_then(|s| s.service_account_name.as_deref())
                        .unwrap_or("default");
                    format!("spiffe://{}/ns/{ns}/sa/{sa}", self.trust_domain)
                });
                for addr in &ep.addresses {
                    let Ok(address) = EndpointAddress::from_parts(addr, target) else {
                        continue;
                    };
                    out.push(Endpoint {
                        address,
                        weight: 1,
                        labels: labels.clone(),
                        healthy: ready,
                        identity: identity.clone(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.address.cmp(&b.address));
        out.dedup_by(|a, b| a.address == b.address);
        out
    }
}

/// The `TrafficPolicy` custom resource.
pub fn traffic_policy_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("weft.dev", "v1alpha1", policy::KIND),
        "trafficpolicies",
    )
}

/// The Gateway API's `HTTPRoute` (its CRDs are a prerequisite the operator installs).
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", gateway::HTTP_ROUTE),
        "httproutes",
    )
}

/// The Gateway API's `GRPCRoute`.
pub fn grpc_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", gateway::GRPC_ROUTE),
        "grpcroutes",
    )
}

/// Watches the cluster (in-cluster config or KUBECONFIG) and publishes a snapshot after every
/// change, until every receiver is gone. Waits for every watch's first listing before the first
/// snapshot.
pub async fn run(
    client: Client,
    trust_domain: String,
    tx: watch::Sender<Arc<Snapshot>>,
    on_errors: impl Fn(&[String]) + Send + 'static,
) {
    use futures_util::StreamExt;

    let cfg = watcher::Config::default();
    let (svc_r, svc_w) = reflector::store();
    let (slice_r, slice_w) = reflector::store();
    let (pod_r, pod_w) = reflector::store();
    let ar = traffic_policy_resource();
    let pol_w = reflector::store::Writer::new(ar.clone());
    let pol_r = pol_w.as_reader();
    let (changed_tx, mut changed) = tokio::sync::mpsc::channel::<()>(1);
    let notify = |name: &'static str| {
        let changed_tx = changed_tx.clone();
        move |r: Result<(), watcher::Error>| {
            if let Err(e) = r {
                tracing::warn!(watch = name, error = %e, "Kubernetes watch error; retrying");
            }
            let _ = changed_tx.try_send(());
            std::future::ready(())
        }
    };
    tokio::spawn(
        watcher(Api::<KubeService>::all(client.clone()), cfg.clone())
            .default_backoff()
            .reflect(svc_w)
            .applied_objects()
            .map(|r| r.map(drop))
            .for_each(notify("services")),
    );
    tokio::spawn(
        watcher(Api::<EndpointSlice>::all(client.clone()), cfg.clone())
            .default_backoff()
            .reflect(slice_w)
            .applied_objects()
            .map(|r| r.map(drop))
            .for_each(notify("endpointslices")),
    );
    tokio::spawn(
        watcher(Api::<Pod>::all(client.clone()), cfg.clone())
            .default_backoff()
            .reflect(pod_w)
            .applied_objects()
            .map(|r| r.map(drop))
            .for_each(notify("pods")),
    );
    tokio::spawn(
        watcher(
            Api::<DynamicObject>::all_with(client.clone(), &ar),
            cfg.clone(),
        )
        .default_backoff()
        .reflect(pol_w)
        .applied_objects()
        .map(|r| r.map(drop))
        .for_each(notify("trafficpolicies")),
    );
    // Routes only where the Gateway API's CRDs are installed (checked once, at start: a
    // control plane started before them is restarted to see routes, as the docs say).
    let watch_routes = |ar: ApiResource, name: &'static str| {
        let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
        let (cfg, notify) = (cfg.clone(), notify(name));
        async move {
            match api.list(&kube::api::ListParams::default().limit(1)).await {
                Err(kube::Error::Api(s)) if s.is_not_found() => {
                    tracing::warn!(
                        resource = name,
                        "the Gateway API's CRDs are not installed: these routes are not watched"
                    );
                    None
                }
                _ => {
                    let w = reflector::store::Writer::new(ar);
                    let r = w.as_reader();
                    tokio::spawn(
                        watcher(api, cfg)
                            .default_backoff()
                            .reflect(w)
                            .applied_objects()
                            .map(|r| r.map(drop))
                            .for_each(notify),
                    );
                    Some(r)
                }
            }
        }
    };
    let route_r = watch_routes(http_route_resource(), "httproutes").await;
    let grpc_r = watch_routes(grpc_route_resource(), "grpcroutes").await;
    let ready = |r: &Option<reflector::Store<DynamicObject>>| {
        let r = r.clone();
        async move {
            match r {
                Some(r) => r.wait_until_ready().await,
                None => Ok(()),
            }
        }
    };
    let routes_ready = ready(&route_r).await;
    let grpc_ready = ready(&grpc_r).await;
    for r in [
        svc_r.wait_until_ready().await,
        slice_r.wait_until_ready().await,
        pod_r.wait_until_ready().await,
        pol_r.wait_until_ready().await,
        routes_ready,
        grpc_ready,
    ] {
        if r.is_err() {
            return;
        }
    }
    // Routes' status, written by a task of its own from each round's translation.
    let (rounds, rounds_rx) = watch::channel(route_status::Round::default());
    if route_r.is_some() || grpc_r.is_some() {
        tokio::spawn(route_status::run(client.clone(), rounds_rx));
    }
    let mut translator = Translator::new(&trust_domain);
    let mut reported = Vec::new();
    let mut first = true;
    loop {
        let objs = Objects {
            services: svc_r.state(),
            slices: slice_r.state(),
            pods: pod_r.state(),
            policies: pol_r.state(),
            http_routes: route_r.as_ref().map(|r| r.state()).unwrap_or_default(),
            grpc_routes: grpc_r.as_ref().map(|r| r.state()).unwrap_or_default(),
        };
        let snap = Arc::new(translator.snapshot(&objs));
        rounds.send_replace(route_status::Round {
            http_routes: objs.http_routes,
            grpc_routes: objs.grpc_routes,
            snapshot: snap.clone(),
            refused: translator.refused.clone(),
        });
        if translator.errors != reported {
            for e in &translator.errors {
                tracing::warn!(error = %e, "Kubernetes registry");
            }
            on_errors(&translator.errors);
            reported = translator.errors.clone();
        }
        // The first snapshot always notifies: the control plane waits for it before serving.
        tx.send_if_modified(|cur| {
            let changed = first || **cur != *snap;
            if changed {
                *cur = snap;
            }
            changed
        });
        first = false;
        if tx.is_closed() || changed.recv().await.is_none() {
            return;
        }
    }
}

mod documents;
pub mod route_status;
pub(crate) use documents::is_mesh_route;
use documents::{last_good, mesh_routes};
#[cfg(test)]
mod tests;
