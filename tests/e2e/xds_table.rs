//! The control plane's xDS, compiled by the proxy: registry files -> translate -> xDS resources
//! -> routing table, and the routing decisions the table then makes.

use std::sync::Arc;

use http::{HeaderMap, Method};
use weft_control_plane::{registry::file::FileRegistry, translate};
use weft_proxy::{
    metrics::Metrics,
    table::xds::{self, Resources},
};
use weft_tests::chain::TempDir;

const FILES: &str = "apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  port: 8080
  aliases: [web]
  vip: 10.96.0.30
  protocol: http2
  endpoints:
    - {address: 10.0.0.1:8080, labels: {version: v1}}
    - {address: 10.0.0.2:8080, weight: 3, labels: {version: v2}}
    - {address: 10.0.0.3:8080, healthy: false, labels: {version: v2}}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: web, namespace: demo}
spec:
  service: web.demo.svc.cluster.local:8080
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
  routes:
    - name: testers
      match: {path: {prefix: /api}, method: POST, headers: [{name: x-canary, exact: '1'}]}
      backends: [{subset: v2}]
      timeout: 2s
    - name: split
      backends: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]
";

fn resources(files: &str) -> Resources {
    let dir = TempDir::new("xds-table");
    dir.write("web.yaml", files);
    let mut reg = FileRegistry::new(&dir.0);
    let snap = reg.scan().unwrap();
    assert!(reg.errors.is_empty(), "{:?}", reg.errors);
    let r = translate::translate(&snap);
    Resources {
        listeners: r
            .listeners
            .into_iter()
            .map(|l| (l.name.clone(), l))
            .collect(),
        routes: r.routes.into_iter().map(|c| (c.name.clone(), c)).collect(),
        clusters: r
            .clusters
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect(),
        endpoints: r
            .endpoints
            .into_iter()
            .map(|e| (e.cluster_name.clone(), e))
            .collect(),
    }
}

#[test]
fn the_control_planes_resources_compile_into_the_same_routing() {
    let metrics = Metrics::new();
    let table = xds::compile(&resources(FILES), Arc::from("v1"), 1, &metrics).unwrap();
    let svc = table
        .by_authority("web.demo.svc.cluster.local:8080")
        .expect("by host:port");
    assert!(
        Arc::ptr_eq(svc, table.by_authority("web").unwrap()),
        "by alias"
    );
    assert!(
        Arc::ptr_eq(
            svc,
            table.by_vip("10.96.0.30:8080".parse().unwrap()).unwrap()
        ),
        "by VIP"
    );
    assert_eq!(svc.protocol, weft_proxy::table::Protocol::Http2);

    let mut canary = HeaderMap::new();
    canary.insert("x-canary", "1".parse().unwrap());
    let pick = |method: &Method, path: &str, h: &HeaderMap| {
        svc.routes
            .iter()
            .find(|r| r.matches.matches(method, path, h))
            .map(|r| r.name.to_string())
    };
    assert_eq!(
        pick(&Method::POST, "/api/x", &canary).as_deref(),
        Some("testers")
    );
    assert_eq!(
        pick(&Method::GET, "/api/x", &canary).as_deref(),
        Some("split"),
        "the method must match"
    );
    assert_eq!(
        pick(&Method::POST, "/api/x", &HeaderMap::new()).as_deref(),
        Some("split")
    );

    let testers = &svc.routes[0];
    assert_eq!(testers.timeout, Some(std::time::Duration::from_secs(2)));
    let v2 = testers.backends.pick().unwrap();
    assert_eq!(&*v2.name, "web.demo.svc.cluster.local:8080/v2");
    // The unhealthy v2 endpoint gets no traffic; the healthy one all of it.
    assert_eq!(v2.endpoints.len(), 1);
    assert_eq!(
        v2.endpoints.pick().unwrap().addr,
        "10.0.0.2:8080".parse().unwrap()
    );
    assert_eq!(v2.endpoints.pick().unwrap().labels["version"], "v2");

    let split = &svc.routes[1];
    assert_eq!(split.backends.total(), 100);
    let to_v1 = (0..100u64)
        .filter(|r| split.backends.pick_with(*r).unwrap().name.ends_with("/v1"))
        .count();
    assert_eq!(to_v1, 90);
    assert!(
        metrics
            .render()
            .contains(r#"target="web.demo.svc.cluster.local:8080""#)
    );
}

#[test]
fn a_route_to_a_missing_cluster_rejects_the_set_and_names_it() {
    let mut res = resources(FILES);
    res.endpoints.remove("web.demo.svc.cluster.local:8080/v2");
    let metrics = Metrics::new();
    let errors = xds::compile(&res, Arc::from("v2"), 2, &metrics).unwrap_err();
    assert_eq!(
        errors,
        [
            "Listener `web.demo.svc.cluster.local:8080`: RouteConfiguration `web.demo.svc.cluster.local:8080`: route `testers`: cluster `web.demo.svc.cluster.local:8080/v2`: no ClusterLoadAssignment received"
        ]
    );
    assert!(
        !metrics.render().contains("web.demo"),
        "a rejected set creates no series"
    );
}
