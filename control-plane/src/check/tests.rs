use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use weft_xds_proto::type_url;

use super::*;
use crate::snapshot::TypeSet;

fn policies(yaml: &str) -> Snapshot {
    let mut s = crate::registry::test_snapshot(&["web"], 1);
    for (i, svc) in s.services.values_mut().enumerate() {
        svc.spec.endpoints[0].labels = [("version".to_string(), format!("v{}", i + 1))].into();
    }
    for p in crate::policy::parse("test.yaml", yaml).unwrap() {
        let key = format!(
            "{}/{}",
            p.metadata.namespace.as_deref().unwrap_or("default"),
            p.metadata.name
        );
        s.policies.insert(key, p);
    }
    s
}

fn serving(version: &str) -> XdsSnapshot {
    let mut x = XdsSnapshot::default();
    for url in [type_url::CLUSTER, type_url::LISTENER] {
        x.types.insert(
            url,
            TypeSet {
                version: version.into(),
                resources: BTreeMap::new(),
            },
        );
    }
    x
}

fn status(acked: &str, nack: Option<(&str, &str)>) -> BTreeMap<String, TypeStatus> {
    [type_url::CLUSTER, type_url::LISTENER]
        .into_iter()
        .map(|url| {
            (
                url.to_string(),
                TypeStatus {
                    sent_version: Some("v2".into()),
                    acked_version: Some(acked.into()),
                    last_nack: nack.map(|(v, e)| (v.to_string(), e.to_string())),
                },
            )
        })
        .collect()
}

fn problems(f: &[Finding]) -> Vec<String> {
    f.iter()
        .filter(|f| !f.ok)
        .map(|f| f.detail.clone())
        .collect()
}

#[test]
fn a_sound_mesh_has_no_problem() {
    let registry = policies(
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: web}\nspec:\n  service: web:80\n  subsets: [{name: v1, labels: {version: v1}}]\n  routes:\n    - {name: api, match: {path: {prefix: /api}}, backends: [{subset: v1}]}\n    - {name: rest}\n",
    );
    let now = SystemTime::now();
    let (fresh, x) = (status("v2", None), serving("v2"));
    let f = report(&Inputs {
        registry: &registry,
        registry_errors: &[],
        proxies: vec![Proxy {
            node: "a.demo",
            connected: true,
            delta: false,
            types: &fresh,
            namespace: "",
        }],
        serving: &x,
        ca_not_after: Some(now + Duration::from_secs(365 * 86_400)),
        now,
    });
    assert_eq!(problems(&f), Vec::<String>::new());
    let checks: Vec<&str> = f.iter().map(|f| f.check).collect();
    assert_eq!(checks, ["registry", "policies", "ca", "proxies"]);
}

#[test]
fn each_problem_is_named_with_what_to_do() {
    let registry = policies(
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: web}\nspec:\n  service: web:80\n  subsets: [{name: v1, labels: {version: v1}}, {name: v9, labels: {version: v9}}, {name: v8, labels: {version: v8}}]\n  routes:\n    - {name: all, backends: [{subset: v9}]}\n    - {name: api, match: {path: {prefix: /api}}}\n    - {name: api-again, match: {path: {prefix: /api}}}\n---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: gone}\nspec:\n  service: gone:80\n",
    );
    let now = SystemTime::now();
    let (rejected, behind, gone) = (
        status("v1", Some(("v2", "route `x`: bad regex"))),
        status("v1", None),
        status("v0", None),
    );
    let x = serving("v2");
    let f = report(&Inputs {
        registry: &registry,
        registry_errors: &["bad.yaml: line 3: expected a mapping".to_string()],
        proxies: vec![
            Proxy {
                node: "a.demo",
                connected: true,
                delta: false,
                types: &rejected,
                namespace: "",
            },
            Proxy {
                node: "b.demo",
                connected: true,
                delta: false,
                types: &behind,
                namespace: "",
            },
            // A proxy that left is not reported.
            Proxy {
                node: "c.demo",
                connected: false,
                delta: false,
                types: &gone,
                namespace: "",
            },
        ],
        serving: &x,
        ca_not_after: Some(now + Duration::from_secs(10 * 86_400)),
        now,
    });
    let p = problems(&f);
    let want = [
        "bad.yaml: line 3: expected a mapping",
        "policy default/gone governs gone:80, which no registration declares",
        "policy default/web: subset `v9` selects no endpoint of web:80: its share of the traffic gets 503",
        "policy default/web: route `api` can never match: `all` before it matches every request",
        "policy default/web: route `api-again` can never match: `all` before it matches every request",
        "the CA certificate expires at",
        "proxy a.demo rejected CDS version v2: route `x`: bad regex",
        "proxy a.demo rejected LDS version v2: route `x`: bad regex",
        "proxy b.demo has not taken CDS version v2 (acknowledged: v1)",
        "proxy b.demo has not taken LDS version v2 (acknowledged: v1)",
    ];
    assert_eq!(p.len(), want.len(), "{p:#?}");
    for (got, want) in p.iter().zip(want) {
        assert!(got.starts_with(want), "{got}\nwant: {want}");
    }
    assert!(f.iter().filter(|f| !f.ok).all(|f| f.fix.is_some()));
    // Without the catch-all, the repeated match is the problem.
    let registry = policies(
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: web}\nspec:\n  service: web:80\n  routes:\n    - {name: api, match: {path: {prefix: /api}}}\n    - {name: api-again, match: {path: {prefix: /api}}}\n",
    );
    let f = report(&Inputs {
        registry: &registry,
        registry_errors: &[],
        proxies: vec![],
        serving: &x,
        ca_not_after: Some(now - Duration::from_secs(60)),
        now,
    });
    assert_eq!(
        problems(&f)[0],
        "policy default/web: route `api-again` can never match: `api` before it has the same match"
    );
    assert!(
        problems(&f)[1].starts_with("the CA certificate expired at"),
        "{f:?}"
    );
}

#[test]
fn matches_are_compared_as_the_proxy_reads_them() {
    let registry = policies(
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: web}\nspec:\n  service: web:80\n  routes:\n    - {name: h, match: {method: get, headers: [{name: X-A, exact: '1'}, {name: x-b}]}}\n    - {name: h-again, match: {method: GET, headers: [{name: x-b}, {name: x-a, exact: '1'}]}}\n    - {name: slash, match: {path: {prefix: /}}}\n    - {name: after-slash, match: {path: {prefix: /api}}}\n---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: empty}\nspec:\n  service: web:80\n  routes:\n    - {name: empty, match: {}}\n    - {name: after-empty, match: {method: POST}}\n",
    );
    let now = SystemTime::now();
    let f = report(&Inputs {
        registry: &registry,
        registry_errors: &[],
        proxies: vec![],
        serving: &serving("v1"),
        ca_not_after: None,
        now,
    });
    assert_eq!(
        problems(&f),
        [
            "policy default/empty: route `after-empty` can never match: `empty` before it matches every request",
            "policy default/web: route `h-again` can never match: `h` before it has the same match",
            "policy default/web: route `after-slash` can never match: `slash` before it matches every request",
        ]
    );
}

#[test]
fn a_delta_stream_is_current_when_it_acknowledged_what_it_was_sent() {
    let registry = policies("");
    let now = SystemTime::now();
    // Sent v2 (its subscribed resources have not changed since), acknowledged v2, while the
    // server serves v5 of the types: current. A SotW stream in the same state is behind.
    let delta = status("v2", None);
    let mut nacked = status("v1", Some(("v2", "bad")));
    for t in nacked.values_mut() {
        t.sent_version = Some("v2".into());
    }
    let f = report(&Inputs {
        registry: &registry,
        registry_errors: &[],
        proxies: vec![
            Proxy {
                node: "delta",
                connected: true,
                delta: true,
                types: &delta,
                namespace: "",
            },
            Proxy {
                node: "delta-nacked",
                connected: true,
                delta: true,
                types: &nacked,
                namespace: "",
            },
            Proxy {
                node: "sotw",
                connected: true,
                delta: false,
                types: &delta,
                namespace: "",
            },
        ],
        serving: &serving("v5"),
        ca_not_after: None,
        now,
    });
    assert_eq!(
        problems(&f),
        [
            "proxy delta-nacked rejected CDS version v2: bad",
            "proxy delta-nacked rejected LDS version v2: bad",
            "proxy sotw has not taken CDS version v5 (acknowledged: v2)",
            "proxy sotw has not taken LDS version v5 (acknowledged: v2)",
        ]
    );
}

#[test]
fn printed_text_has_no_control_character() {
    assert_eq!(
        printable("a.yaml: bad\n\u{1b}[2Jproxy x ok\tdone é"),
        "a.yaml: bad\\n\\u{1b}[2Jproxy x ok\\tdone é"
    );
}

#[test]
fn http_routes_that_shadow_a_policys_routes_or_name_nothing_are_reported() {
    let mut registry = policies(
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: web}\nspec:\n  service: web:80\n  timeout: 2s\n  retry: {attempts: 1, on: [5xx]}\n  routes:\n    - {name: all}\n",
    );
    let routes = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{group: '', kind: Service, name: web}]\n  rules:\n    - backendRefs: [{name: web, port: 80}, {name: web-v9, port: 80}, {name: off, port: 80, weight: 0}]\n      retry: {attempts: 2}\n      timeouts: {request: 1s}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: lost}\nspec:\n  parentRefs: [{group: '', kind: Service, name: web, port: 81}]\n  rules:\n    - backendRefs: [{name: web, port: 80}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: c, namespace: shop}\nspec:\n  parentRefs: [{group: '', kind: Service, name: web, namespace: default}]\n  rules:\n    - backendRefs: [{name: web, namespace: default, port: 80}]\n      retry: {attempts: 1}\n";
    for r in crate::gateway::parse("r.yaml", routes).unwrap() {
        registry.http_routes.insert(r.key(), r);
    }
    let grpc = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  parentRefs: [{group: '', kind: Service, name: nowhere}]\n  rules:\n    - backendRefs: [{name: web, port: 80}]\n";
    for r in crate::gateway::parse_grpc("g.yaml", grpc).unwrap() {
        registry.grpc_routes.insert(r.key(), r);
    }
    let x = serving("v1");
    let f = report(&Inputs {
        registry: &registry,
        registry_errors: &[],
        proxies: vec![],
        serving: &x,
        ca_not_after: None,
        now: SystemTime::now(),
    });
    assert_eq!(
        problems(&f),
        [
            "policy default/web: its routes are not used: HTTPRoute default/r decides how web:80 is routed",
            "policy default/web: `spec.retry` is also set by HTTPRoute default/r, whose rules use their own",
            "policy default/web: `spec.retry` is also set by HTTPRoute shop/c, whose rules use their own",
            "policy default/web: `spec.timeout` is also set by HTTPRoute default/r, whose rules use their own",
            "HTTPRoute default/lost attaches to no registered Service (or port)",
            "HTTPRoute default/r: rules[0] sends to default/web-v9:80, which is not registered: its share gets 500",
            "GRPCRoute default/g attaches to no registered Service (or port)",
        ]
    );
}

#[test]
fn a_sotw_proxy_is_current_with_its_namespaces_consumer_routes() {
    let registry = policies("");
    let mut x = serving("v2");
    let routes = |version: &str| TypeSet {
        version: version.into(),
        resources: BTreeMap::new(),
    };
    x.types.insert(type_url::ROUTE, routes("r1"));
    x.namespaced.insert("shop".into(), routes("s1"));
    let acked = |rds: &str| {
        let mut t = status("v2", None);
        t.insert(
            type_url::ROUTE.to_string(),
            TypeStatus {
                acked_version: Some(rds.into()),
                ..Default::default()
            },
        );
        t
    };
    let (variant, base) = (acked("r1+s1"), acked("r1"));
    let proxy = |node, namespace, types| Proxy {
        node,
        connected: true,
        delta: false,
        types,
        namespace,
    };
    let f = report(&Inputs {
        registry: &registry,
        registry_errors: &[],
        proxies: vec![
            proxy("in-shop", "shop", &variant),
            proxy("elsewhere", "web", &base),
            proxy("shop-behind", "shop", &base),
        ],
        serving: &x,
        ca_not_after: None,
        now: SystemTime::now(),
    });
    assert_eq!(
        problems(&f),
        ["proxy shop-behind has not taken RDS version r1+s1 (acknowledged: r1)"]
    );
}
