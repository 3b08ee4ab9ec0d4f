//! The translation from API objects, recorded in the shape the API server returns them
//! (`kubectl get -o json` lists and watch events), to the registry snapshot.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::*;

fn items<T: DeserializeOwned>(list: &str) -> Vec<Arc<T>> {
    let v: serde_json::Value = serde_json::from_str(list).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| Arc::new(serde_json::from_value(o.clone()).unwrap()))
        .collect()
}

pub(super) fn recorded() -> Objects {
    Objects {
        services: items(include_str!("../../../fixtures/k8s/services.json")),
        slices: items(include_str!("../../../fixtures/k8s/endpointslices.json")),
        pods: items(include_str!("../../../fixtures/k8s/pods.json")),
        policies: items(include_str!("../../../fixtures/k8s/trafficpolicies.json")),
        http_routes: items(include_str!("../../../fixtures/k8s/httproutes.json")),
        grpc_routes: items(include_str!("../../../fixtures/k8s/grpcroutes.json")),
    }
}

/// Applies one watch event (`{"type": ..., "object": ...}`) to the objects, as a reflector does.
fn apply(objs: &mut Objects, line: &str) {
    let ev: serde_json::Value = serde_json::from_str(line).unwrap();
    let deleted = ev["type"] == "DELETED";
    let obj = ev["object"].clone();
    let id = |m: &kube::core::ObjectMeta| (m.namespace.clone(), m.name.clone());
    fn upsert<T>(
        v: &mut Vec<Arc<T>>,
        obj: T,
        deleted: bool,
        id: impl Fn(&T) -> (Option<String>, Option<String>),
    ) {
        let k = id(&obj);
        v.retain(|o| id(o) != k);
        if !deleted {
            v.push(Arc::new(obj));
        }
    }
    match obj["kind"].as_str().unwrap() {
        "Service" => upsert(
            &mut objs.services,
            serde_json::from_value(obj).unwrap(),
            deleted,
            |o: &KubeService| id(&o.metadata),
        ),
        "EndpointSlice" => upsert(
            &mut objs.slices,
            serde_json::from_value(obj).unwrap(),
            deleted,
            |o: &EndpointSlice| id(&o.metadata),
        ),
        "Pod" => upsert(
            &mut objs.pods,
            serde_json::from_value(obj).unwrap(),
            deleted,
            |o: &Pod| id(&o.metadata),
        ),
        "GRPCRoute" => upsert(
            &mut objs.grpc_routes,
            serde_json::from_value(obj).unwrap(),
            deleted,
            |o: &DynamicObject| id(&o.metadata),
        ),
        "HTTPRoute" => upsert(
            &mut objs.http_routes,
            serde_json::from_value(obj).unwrap(),
            deleted,
            |o: &DynamicObject| id(&o.metadata),
        ),
        "TrafficPolicy" => upsert(
            &mut objs.policies,
            serde_json::from_value(obj).unwrap(),
            deleted,
            |o: &DynamicObject| id(&o.metadata),
        ),
        other => panic!("unexpected kind {other}"),
    }
}

const REVIEWS: &str = "reviews.bookinfo.svc.cluster.local:9080";

#[test]
fn recorded_objects_become_services_endpoints_and_policies() {
    let mut t = Translator::new("cluster.local");
    let snap = t.snapshot(&recorded());
    assert_eq!(t.errors, Vec::<String>::new());
    let names: Vec<&str> = snap.services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "mysql.bookinfo.svc.cluster.local:3306",
            "ratings.bookinfo.svc.cluster.local:50051",
            "ratings.bookinfo.svc.cluster.local:8081",
            REVIEWS,
        ],
        "one service per TCP port; ExternalName and UDP ports left out"
    );

    let reviews = &snap.services[REVIEWS];
    assert_eq!(reviews.key, "bookinfo/reviews");
    assert_eq!(reviews.spec.vip, Some("10.96.141.7".parse().unwrap()));
    assert_eq!(
        reviews.spec.aliases,
        ["reviews", "reviews.bookinfo", "reviews.bookinfo.svc"]
    );
    assert_eq!(reviews.spec.protocol, Protocol::Http);
    let eps: Vec<(String, &str, bool)> = reviews
        .spec
        .endpoints
        .iter()
        .map(|e| {
            (
                e.address.to_string(),
                e.labels["version"].as_str(),
                e.healthy,
            )
        })
        .collect();
    assert_eq!(
        eps,
        [
            ("10.244.1.17:9080".to_string(), "v1", true),
            ("10.244.2.23:9080".to_string(), "v2", true),
            ("10.244.2.31:9080".to_string(), "v3", false),
        ],
        "a not-ready pod stays unhealthy; a terminating, not-serving one is gone"
    );
    assert_eq!(
        reviews.spec.endpoints[0].identity.as_deref(),
        Some("spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews")
    );
    assert_eq!(
        reviews.spec.endpoints[1].identity, None,
        "a pod the injector did not mark (weft.dev/status) has no sidecar: plaintext"
    );

    let grpc = &snap.services["ratings.bookinfo.svc.cluster.local:50051"];
    assert_eq!(
        grpc.spec.protocol,
        Protocol::Http2,
        "appProtocol kubernetes.io/h2c"
    );
    assert_eq!(
        grpc.spec.endpoints[0].address.to_string(),
        "10.244.1.40:50051"
    );
    assert_eq!(
        grpc.spec.endpoints[0].identity.as_deref(),
        Some("spiffe://cluster.local/ns/bookinfo/sa/default"),
        "no service account named: `default`"
    );
    assert_eq!(
        snap.services["ratings.bookinfo.svc.cluster.local:8081"]
            .spec
            .protocol,
        Protocol::Http
    );
    let mysql = &snap.services["mysql.bookinfo.svc.cluster.local:3306"];
    assert_eq!(
        (mysql.spec.vip, mysql.spec.protocol),
        (None, Protocol::Tcp),
        "headless, tcp- port name"
    );

    let policy = &snap.policies["bookinfo/reviews-canary"];
    assert_eq!(policy.spec.routes.len(), 2);

    // Through the translation the proxies receive: the v2 subset has the v2 pod.
    let xds = crate::translate::translate(&snap);
    let v2 = xds
        .endpoints
        .iter()
        .find(|e| e.cluster_name == format!("{REVIEWS}/v2"))
        .unwrap();
    assert_eq!(v2.endpoints[0].lb_endpoints.len(), 1);
}

#[test]
fn recorded_watch_events_update_the_snapshot() {
    let mut objs = recorded();
    let mut t = Translator::new("cluster.local");
    t.snapshot(&objs);
    let mut events = include_str!("../../../fixtures/k8s/watch-events.jsonl").lines();

    // The v2 pod starts terminating (still serving) and v3 leaves the slice.
    apply(&mut objs, events.next().unwrap());
    let snap = t.snapshot(&objs);
    let eps: Vec<(String, bool)> = snap.services[REVIEWS]
        .spec
        .endpoints
        .iter()
        .map(|e| (e.address.to_string(), e.healthy))
        .collect();
    assert_eq!(
        eps,
        [
            ("10.244.1.17:9080".to_string(), true),
            ("10.244.2.23:9080".to_string(), false)
        ]
    );

    // The policy is changed to name a subset that does not exist: rejected, the last good
    // version stays, and the error names the field.
    apply(&mut objs, events.next().unwrap());
    let snap = t.snapshot(&objs);
    let errors = &t.errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("spec.routes[0].backends[1].subset: unknown subset `v3`")
            && errors[0].contains("last good version stays"),
        "{:?}",
        t.errors
    );
    assert_eq!(
        snap.policies["bookinfo/reviews-canary"].spec.routes.len(),
        2
    );

    // A Service deleted: gone.
    apply(&mut objs, events.next().unwrap());
    let snap = t.snapshot(&objs);
    assert!(
        !snap
            .services
            .contains_key("mysql.bookinfo.svc.cluster.local:3306")
    );

    // The policy deleted: gone, and so is its error.
    apply(&mut objs, events.next().unwrap());
    let snap = t.snapshot(&objs);
    assert!(snap.policies.is_empty());
    assert!(t.errors.is_empty());
}

#[test]
fn recorded_http_routes_attach_in_the_apis_order_and_report_their_status() {
    let mut t = Translator::new("cluster.local");
    let snap = t.snapshot(&recorded());
    assert_eq!(t.errors, Vec::<String>::new());
    assert_eq!(
        snap.http_routes.keys().collect::<Vec<_>>(),
        [
            "bookinfo/ratings-api",
            "bookinfo/ratings-older",
            "shop/ratings-for-shop"
        ]
    );
    // The recorded GRPCRoute, on ratings' gRPC port: its method is an exact path there.
    assert_eq!(
        snap.grpc_routes.keys().collect::<Vec<_>>(),
        ["bookinfo/ratings-grpc"]
    );
    let grpc = crate::translate::translate(&snap);
    let on_grpc_port = &grpc
        .routes
        .iter()
        .find(|r| r.name == "ratings.bookinfo.svc.cluster.local:50051")
        .unwrap()
        .virtual_hosts[0]
        .routes;
    assert_eq!(
        on_grpc_port
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["bookinfo/ratings-grpc/rule-0"],
        "the GRPCRoute wins over ratings-older (no port) there"
    );
    let older = &snap.http_routes["bookinfo/ratings-older"];
    assert_eq!(
        older.metadata.creation_timestamp.as_deref(),
        Some("2026-11-01T12:30:00Z")
    );
    // Both routes match `/api` alike: the older one comes first.
    let res = crate::translate::translate(&snap);
    let rc = res
        .routes
        .iter()
        .find(|r| r.name == "ratings.bookinfo.svc.cluster.local:8081")
        .unwrap();
    let names: Vec<&str> = rc.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "bookinfo/ratings-older/rule-0",
            "bookinfo/ratings-api/rule-0"
        ]
    );
    // The consumer route (in `shop`, for a Service in `bookinfo`): callers in `shop` get a
    // variant of the route configuration with its rule alone (and its 100 ms timeout); the
    // producer routes above are everyone else's.
    let shop = &res.consumer_routes["shop"];
    assert_eq!(shop.len(), 1);
    assert_eq!(shop[0].name, rc.name);
    let routes = &shop[0].virtual_hosts[0].routes;
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].name, "shop/ratings-for-shop/rule-0");
    use weft_xds_proto::envoy::config::route::v3::route::Action;
    let Some(Action::Route(a)) = &routes[0].action else {
        panic!("{:?}", routes[0].action)
    };
    assert_eq!(a.timeout.as_ref().map(|d| d.nanos), Some(100_000_000));
    assert_eq!(
        res.consumer_routes.len(),
        1,
        "no other namespace has a variant"
    );
    assert_eq!(
        rc.virtual_hosts[0].routes[1].response_headers_to_add[0]
            .header
            .as_ref()
            .unwrap()
            .key,
        "x-route"
    );
    // The status the control plane would write: ratings-v2 is not a registered Service.
    let status = serde_json::to_value(crate::gateway::status(
        &snap.http_routes["bookinfo/ratings-api"],
        &crate::gateway::Registered::new(&snap),
    ))
    .unwrap();
    assert_eq!(
        status,
        serde_json::json!([{
            "parentRef": {"group": "", "kind": "Service", "name": "ratings", "port": 8081},
            "controllerName": "weft.dev/gateway-controller",
            "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "attached"},
                {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound",
                 "message": "not registered: bookinfo/ratings-v2:8081 (a backend's share of the requests is answered 500; a mirror copies nothing)"}
            ]
        }])
    );
}
