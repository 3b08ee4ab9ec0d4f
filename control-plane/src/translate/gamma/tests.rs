//! Gateway API routes translated: precedence, the shapes of their xDS routes, GRPCRoutes over
//! HTTPRoutes, and retries.

use std::time::Duration;

use weft_xds_proto::envoy::config::route::v3::{
    Route, route::Action, route_action::ClusterSpecifier, route_match::PathSpecifier,
};

use crate::registry::{Snapshot, file::FileRegistry};
use crate::translate::{METADATA_KEY, Resources, translate};

/// The routes of the route configuration `name`.
fn routes_of<'a>(res: &'a Resources, name: &str) -> &'a [Route] {
    let rc = res.routes.iter().find(|r| r.name == name).unwrap();
    &rc.virtual_hosts[0].routes
}

/// The registry `yaml` makes, read as the file registry reads it (it must be free of errors).
fn scan(tag: &str, yaml: &str) -> Snapshot {
    let dir = std::env::temp_dir().join(format!("weft-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mesh.yaml"), yaml).unwrap();
    let mut reg = FileRegistry::new(&dir);
    let snap = reg.scan().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(reg.errors.is_empty(), "{:?}", reg.errors);
    snap
}

const GAMMA: &str = "apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: web, namespace: demo}
spec: {port: 8080, endpoints: [{address: 10.0.2.1:8080}]}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: web-v1, namespace: demo}
spec: {port: 8080, endpoints: [{address: 10.0.2.1:8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b, namespace: demo}
spec:
  parentRefs: [{group: '', kind: Service, name: web}]
  rules:
    - matches: [{path: {value: /api/}}, {path: {type: Exact, value: /x}}]
      backendRefs: [{name: web-v1, port: 8080}]
    - name: rest
      backendRefs: [{name: web-v1, port: 8080, weight: 3}, {name: web-v9, port: 8080}, {name: web, port: 8080, weight: 0}]
      timeouts: {request: 2s}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a, namespace: demo}
spec:
  parentRefs: [{group: '', kind: Service, name: web, port: 8080}, {group: '', kind: Service, name: web, port: 9999}]
  rules:
    - matches: [{path: {value: /api}, method: POST}, {path: {type: RegularExpression, value: '/v[0-9]+'}}, {path: {value: /api/long}}]
      backendRefs: [{name: web, port: 8080}]
";

#[test]
fn gateway_routes_replace_the_default_in_the_apis_precedence() {
    let res = translate(&scan("gamma", GAMMA));
    let rc = |name: &str| routes_of(&res, name).to_vec();
    let web = rc("web.demo.svc.cluster.local:8080");
    let described: Vec<(String, String)> = web
        .iter()
        .map(|r| {
            let m = r.r#match.as_ref().unwrap();
            let path = match m.path_specifier.as_ref().unwrap() {
                PathSpecifier::Prefix(p) => format!("prefix {p}"),
                PathSpecifier::Path(p) => format!("exact {p}"),
                PathSpecifier::SafeRegex(r) => format!("regex {}", r.regex),
                PathSpecifier::PathSeparatedPrefix(p) => format!("segments {p}"),
                other => format!("{other:?}"),
            };
            let method = if m.headers.iter().any(|h| h.name == ":method") {
                " +method"
            } else {
                ""
            };
            (r.name.clone(), format!("{path}{method}"))
        })
        .collect();
    let want = [
        ("demo/b/rule-0", "exact /x"),
        ("demo/a/rule-0", "regex /v[0-9]+"),
        ("demo/a/rule-0", "segments /api/long"),
        // Equal prefixes: the one with a method first; a trailing `/` does not count.
        ("demo/a/rule-0", "segments /api +method"),
        ("demo/b/rule-0", "segments /api"),
        ("demo/b/rest", "prefix /"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(described, want, "no default route after them");
    let Some(Action::Route(rest)) = &web[5].action else {
        panic!("a route action")
    };
    let Some(ClusterSpecifier::WeightedClusters(w)) = &rest.cluster_specifier else {
        panic!("weighted clusters")
    };
    let clusters: Vec<(&str, u32)> = w
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight.as_ref().unwrap().value))
        .collect();
    assert_eq!(
        clusters,
        [
            ("web-v1.demo.svc.cluster.local:8080", 3),
            ("unresolved/demo/web-v9:8080", 1)
        ],
        "weight 0 sends nothing; an unknown Service gets its share answered"
    );
    assert_eq!(
        rest.cluster_not_found_response_code,
        weft_xds_proto::envoy::config::route::v3::route_action::ClusterNotFoundResponseCode::InternalServerError
            as i32
    );
    assert_eq!(rest.timeout.as_ref().unwrap().seconds, 2);
    // A service no route is attached to keeps its default route.
    let v1 = rc("web-v1.demo.svc.cluster.local:8080");
    assert_eq!(v1.len(), 1);
    assert_eq!(v1[0].name, "default");
}

#[test]
fn a_grpc_route_wins_over_http_routes_on_the_same_service() {
    let grpc = "---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: demo}
spec:
  parentRefs: [{group: '', kind: Service, name: web, port: 8080}]
  rules:
    - matches: [{method: {service: pkg.Echo, method: Unary}}]
      backendRefs: [{name: web-v1, port: 8080}]
";
    let res = translate(&scan("grpc-route", &format!("{GAMMA}{grpc}")));
    let web = routes_of(&res, "web.demo.svc.cluster.local:8080");
    assert_eq!(web.len(), 1, "the HTTPRoutes' rules are not there");
    assert_eq!(web[0].name, "demo/g/rule-0");
    assert_eq!(
        web[0].r#match.as_ref().unwrap().path_specifier,
        Some(PathSpecifier::Path("/pkg.Echo/Unary".into()))
    );
}

#[test]
fn a_rules_retry_is_the_routes_retry_policy_with_its_backoff_a_minimum() {
    let retry = "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: demo}
spec:
  parentRefs: [{group: '', kind: Service, name: web-v1}]
  rules:
    - retry: {codes: [500, 503], attempts: 3, backoff: 100ms}
      timeouts: {request: 2s, backendRequest: 500ms}
      backendRefs: [{name: web-v1, port: 8080}]
    - retry: {attempts: 1, backoff: 0s}
      backendRefs: [{name: web-v1, port: 8080}]
";
    let res = translate(&scan("gamma-retry", &format!("{GAMMA}{retry}")));
    let routes = routes_of(&res, "web-v1.demo.svc.cluster.local:8080");
    let retry_of = |i: usize| {
        let Some(Action::Route(a)) = &routes[i].action else {
            panic!("a route action")
        };
        a.retry_policy.clone().unwrap()
    };
    let codes = retry_of(0);
    assert_eq!(
        codes.retry_on,
        "connect-failure,refused-stream,reset,retriable-status-codes"
    );
    assert_eq!(codes.retriable_status_codes, [500, 503]);
    assert_eq!(codes.num_retries.unwrap().value, 3);
    let backoff = codes.retry_back_off.unwrap();
    assert_eq!(backoff.base_interval.unwrap().nanos, 100_000_000);
    assert_eq!(codes.per_try_timeout.unwrap().nanos, 500_000_000);
    // The minimum rides in weft's route metadata; nothing else does.
    let meta: weft_core::contract::xds::RouteMetadata =
        weft_xds_proto::metadata::read(METADATA_KEY, routes[0].metadata.as_ref()).unwrap();
    assert_eq!(meta.retry_backoff_min, Some(Duration::from_millis(100)));
    assert_eq!(routes[1].metadata, None);
    // Connection errors only, weft's default backoff (`0s`: no least wait).
    let plain = retry_of(1);
    assert_eq!(plain.retry_on, "connect-failure,refused-stream,reset");
    assert!(plain.retriable_status_codes.is_empty() && plain.retry_back_off.is_none());
    assert_eq!(plain.num_retries.unwrap().value, 1);
}
