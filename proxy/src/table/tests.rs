use std::{path::Path, time::Duration};

use http::Method;

use super::*;
use crate::metrics::Direction;

fn load(text: &str) -> Result<Table, LoadError> {
    load_text(
        Path::new("mesh.yaml"),
        text,
        1,
        &Metrics::new(),
        &Resolved::none(),
        &Table::empty(),
    )
}

const GOOD: &str = r#"
version: v7
services:
  - name: Echo.default
    port: 8080
    aliases: [echo]
    vip: 10.96.0.10
    endpoints:
      - address: 127.0.0.1:9001
        labels: {version: v1}
      - address: 127.0.0.1:9002
        weight: 3
        labels: {version: v2}
    subsets:
      - name: v1
        labels: {version: v1}
      - name: v2
        labels: {version: v2}
    routes:
      - name: canary-header
        match:
          path: {prefix: /api}
          headers:
            - name: x-canary
              exact: "1"
        backends:
          - subset: v2
      - match:
          path: {regex: "/users/[0-9]+"}
        timeout: 250ms
        backends:
          - {subset: v1, weight: 90}
          - {subset: v2, weight: 10}
  - name: other
    port: 80
"#;

#[test]
fn compiles_services_routes_and_subsets() {
    let t = load(GOOD).unwrap();
    assert_eq!(&*t.version, "v7");
    let svc = t.by_authority("echo.default:8080").unwrap();
    assert_eq!(&*svc.name, "echo.default:8080");
    assert!(Arc::ptr_eq(svc, t.by_authority("ECHO:8080").unwrap()));
    assert!(
        Arc::ptr_eq(svc, t.by_authority("echo").unwrap()),
        "a host with one port matches without it"
    );
    assert!(Arc::ptr_eq(
        svc,
        t.by_vip("10.96.0.10:8080".parse().unwrap()).unwrap()
    ));
    assert!(t.by_authority("echo:9999").is_none());
    assert!(t.by_authority("other").is_some());
    assert_eq!(svc.routes.len(), 2);
    assert_eq!(&*svc.routes[0].name, "canary-header");
    assert_eq!(&*svc.routes[1].name, "route-1");
    assert_eq!(
        svc.routes[1].policy.timeout,
        Some(Duration::from_millis(250))
    );
    let v2 = svc.routes[0].backends.pick().unwrap();
    assert_eq!(&*v2.name, "echo.default:8080/v2");
    assert_eq!(v2.endpoints().len(), 1);
    assert_eq!(
        v2.endpoints().pick().unwrap().addr,
        "127.0.0.1:9002".parse().unwrap()
    );
    assert_eq!(
        svc.default_route
            .backends
            .pick()
            .unwrap()
            .endpoints()
            .total(),
        4
    );
}

#[test]
fn an_empty_file_is_refused() {
    for text in ["", "  \n\n"] {
        assert_eq!(
            load(text).unwrap_err().to_string(),
            "mesh.yaml: the file is empty (for a table with no services write `services: []`)"
        );
    }
    assert_eq!(load("services: []").unwrap().service_count(), 0);
}

#[test]
fn version_defaults_to_a_digest_of_the_content() {
    let a = load("services: []\n").unwrap();
    let b = load("services: []\n# changed\n").unwrap();
    assert!(a.version.starts_with("fnv-"));
    assert_ne!(a.version, b.version);
}

#[test]
fn parse_errors_name_file_line_and_field() {
    let err = load("services:\n  - name: echo\n    port: eighty\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "mesh.yaml: services[0].port: invalid type: string \"eighty\", expected u16 at line 3 column 11"
    );
    let err =
        load("services:\n  - name: echo\n    port: 80\n    endpoints:\n      - address: nowhere\n")
            .unwrap_err()
            .to_string();
    assert!(
        err.starts_with(
            "mesh.yaml: services[0].endpoints[0].address: `nowhere` has no port (write IP:PORT, [IPv6]:PORT or HOST:PORT) at line 5"
        ),
        "{err}"
    );
    let err = load(
        "services:\n  - name: echo\n    port: 80\n    endpoints:\n      - address: 10.0.0.300:80\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(
            "`10.0.0.300` is not an IP address or a host name: its last label is a number"
        ),
        "{err}"
    );
    let err = load("services:\n  - name: echo\n    prot: 80\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `prot`"), "{err}");
}

#[test]
fn semantic_errors_name_the_field() {
    let cases = [
        (
            "services:\n  - {name: a, port: 80, routes: [{backends: [{subset: v9}]}]}\n",
            "mesh.yaml: services[0].routes[0].backends[0].subset: unknown subset `v9` (defined: )",
        ),
        (
            "services:\n  - {name: a, port: 80}\n  - {name: b, port: 80, aliases: [a]}\n",
            "mesh.yaml: services[1].aliases[0]: `a:80` is already taken by services[0]",
        ),
        (
            "services:\n  - {name: a, port: 0}\n",
            "mesh.yaml: services[0].port: must be between 1 and 65535",
        ),
        (
            "services:\n  - {name: a, port: 80, routes: [{match: {path: {regex: '('}}}]}\n",
            "mesh.yaml: services[0].routes[0].match.path.regex: invalid regex",
        ),
        (
            "services:\n  - {name: a, port: 80, routes: [{match: {path: {exact: /a, prefix: /b}}}]}\n",
            "mesh.yaml: services[0].routes[0].match.path: set exactly one of `exact`, `prefix` or `regex`",
        ),
        (
            "services:\n  - {name: 'a b', port: 80}\n",
            "mesh.yaml: services[0].name: `a b` is not a host name",
        ),
        (
            "services:\n  - {name: a, port: 80, routes: [{backends: [{weight: 0}]}]}\n",
            "mesh.yaml: services[0].routes[0].backends: every backend has weight 0",
        ),
    ];
    for (text, want) in cases {
        let err = load(text).unwrap_err().to_string();
        assert!(err.starts_with(want), "got:  {err}\nwant: {want}");
    }
}

#[test]
fn route_order_and_default() {
    let t = load(GOOD).unwrap();
    let svc = t.by_authority("echo:8080").unwrap();
    let mut h = http::HeaderMap::new();
    h.insert("x-canary", "1".parse().unwrap());
    let take = |path: &str, h: &http::HeaderMap| {
        svc.routes
            .iter()
            .find(|r| r.matches.matches(&Method::GET, path, None, h))
            .map(|r| r.name.to_string())
    };
    assert_eq!(take("/api/x", &h).as_deref(), Some("canary-header"));
    assert_eq!(take("/users/7", &h).as_deref(), Some("route-1"));
    assert_eq!(take("/api/x", &http::HeaderMap::new()), None);
}

#[test]
fn a_rejected_table_creates_no_metrics_series() {
    let m = Metrics::new();
    let bad = "services:\n  - {name: good, port: 80}\n  - {name: bad, port: 0}\n";
    assert!(
        load_text(
            Path::new("x"),
            bad,
            1,
            &m,
            &Resolved::none(),
            &Table::empty()
        )
        .is_err()
    );
    assert!(!m.render().contains("good:80"));
    let t = load_text(
        Path::new("x"),
        "services:\n  - {name: good, port: 80}\n",
        1,
        &m,
        &Resolved::none(),
        &Table::empty(),
    )
    .unwrap();
    // Nor does a table in force, until the service is used: 10,000 services this pod never
    // calls cost no series.
    assert!(!m.render().contains("good:80"));
    t.by_authority("good:80").unwrap().metrics.request();
    assert!(m.render().contains(r#"target="good:80""#));
}

#[test]
fn a_bad_duration_names_its_field_and_line() {
    let text = "services:\n  - name: a\n    port: 80\n    routes:\n      - timeout: soon\n";
    assert_eq!(
        load(text).unwrap_err().to_string(),
        "mesh.yaml: services[0].routes[0].timeout: `soon`: expected a duration such as 250ms, 10s or 2m at line 5 column 18"
    );
    let t =
        load("services:\n  - name: a\n    port: 80\n    routes:\n      - timeout: 3\n").unwrap();
    assert_eq!(
        t.services()[0].routes[0].policy.timeout,
        Some(Duration::from_secs(3)),
        "a bare number is seconds"
    );
}

#[test]
fn a_host_name_endpoint_is_every_address_it_resolved_to() {
    let text = "services:
  - name: db
    port: 5432
    protocol: tcp
    endpoints:
      - {address: DB.example.com:5432, weight: 3, labels: {version: v2}}
      - {address: 10.0.0.9:5432}
    subsets: [{name: v2, labels: {version: v2}}]
    routes: [{backends: [{subset: v2}]}]
";
    let m = Metrics::new();
    let unresolved = load_text(
        Path::new("t"),
        text,
        1,
        &m,
        &Resolved::none(),
        &Table::empty(),
    )
    .unwrap();
    assert_eq!(unresolved.dns_names(), [Box::from("db.example.com")]);
    let addrs = |t: &Table, route: usize| -> Vec<(u64, String)> {
        let svc = t.by_authority("db:5432").unwrap();
        let r = svc.routes.get(route).unwrap_or(&svc.default_route);
        r.backends
            .iter()
            .next()
            .unwrap()
            .endpoints()
            .weighted()
            .map(|(w, e)| (w, e.addr.to_string()))
            .collect()
    };
    // Until the name is answered only the address given by IP serves.
    assert_eq!(addrs(&unresolved, 9), [(1, "10.0.0.9:5432".to_string())]);
    assert!(addrs(&unresolved, 0).is_empty());

    let dns = Resolved::from_map([(
        "db.example.com".to_string(),
        vec!["10.1.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
    )]);
    let t = load_text(Path::new("t"), text, 2, &m, &dns, &Table::empty()).unwrap();
    assert_eq!(
        addrs(&t, 9),
        [
            (3, "10.1.0.2:5432".to_string()),
            (3, "[fd00::2]:5432".to_string()),
            (1, "10.0.0.9:5432".to_string()),
        ]
    );
    // The resolved addresses keep the name's labels: the v2 subset has both.
    assert_eq!(addrs(&t, 0).len(), 2);
    assert_eq!(t.services_at("10.1.0.2:5432".parse().unwrap()).count(), 1);
    // The file as written is what /config_dump shows back.
    assert_eq!(
        t.source.services[0].endpoints[0].address.to_string(),
        "db.example.com:5432"
    );
}

/// An endpoint at 10.0.0.1:`port` with a balancer state of its own.
fn endpoint(port: u16) -> Endpoint {
    let addr = SocketAddr::from(([10, 0, 0, 1], port));
    Endpoint {
        addr,
        labels: Default::default(),
        identity: None,
        state: Arc::new(crate::balance::EndpointState::new(addr)),
    }
}

/// A retry goes to another endpoint than the one that just failed, even when the balancer
/// prefers the failed one (found by the soak benchmark: a sidecar whose application is down
/// answers UNAVAILABLE at once, so P2C saw the fastest endpoint, and retries went back to it).
#[test]
fn a_retry_never_goes_back_to_the_endpoint_that_failed() {
    let ep = endpoint;
    let (dead, a, b) = (ep(1), ep(2), ep(3));
    // The others look busy: P2C prefers the dead one whenever it is a candidate.
    let busy: Vec<_> = (0..50)
        .flat_map(|_| [a.state.start(), b.state.start()])
        .collect();
    let avoid = dead.addr;
    let split = crate::route::WeightedSplit::new([(1, dead), (1, a), (1, b)]);
    let cluster = Cluster::new("c".into(), split, weft_core::policy::LbPolicy::P2cEwma);
    let metrics = Metrics::new().target(Direction::Outbound, &Arc::from("c"));
    for _ in 0..500 {
        let e = cluster.pick_other(None, avoid, &metrics).unwrap();
        assert_ne!(
            e.addr, avoid,
            "the retry went back to the endpoint that failed"
        );
    }
    // With no other endpoint in service, the same one again.
    let alone = Cluster::new(
        "d".into(),
        crate::route::WeightedSplit::new([(1, ep(1))]),
        weft_core::policy::LbPolicy::P2cEwma,
    );
    assert_eq!(alone.pick_other(None, avoid, &metrics).unwrap().addr, avoid);
    drop(busy);
}

/// The other endpoint a retry takes is drawn by weight, and ejected ones count when too few are
/// in service (the panic threshold), as for a first try.
#[test]
fn a_retrys_other_endpoint_follows_weights_and_the_panic_threshold() {
    use crate::balance::Outlier;
    let ep = endpoint;
    let (failed, light, heavy) = (ep(1), ep(2), ep(3));
    let (avoid, heavy_addr) = (failed.addr, heavy.addr);
    let metrics = Metrics::new().target(Direction::Outbound, &Arc::from("c"));
    let split = crate::route::WeightedSplit::new([(1, failed), (1, light), (98, heavy)]);
    let cluster = Cluster::new("c".into(), split, weft_core::policy::LbPolicy::Random);
    let mut to_heavy = 0;
    let mut tries = 0;
    while tries < 2000 {
        // Only the retries the balancer sent back to the failed endpoint exercise the draw.
        if cluster.pick(None, &metrics).unwrap().addr != avoid {
            continue;
        }
        tries += 1;
        let e = cluster.pick_other(None, avoid, &metrics).unwrap();
        assert_ne!(e.addr, avoid);
        to_heavy += usize::from(e.addr == heavy_addr);
    }
    assert!(
        to_heavy > 1900,
        "weights 1 and 98: {to_heavy} of 2000 to the heavy one"
    );

    // Both others ejected: in panic (1 of 3 in service, under 50 %), they still take retries.
    // (The failed endpoint is weighted so that the balancer picks it again nearly always.)
    let (failed, a, b) = (ep(1), ep(2), ep(3));
    let split = crate::route::WeightedSplit::new([(98, failed), (1, a), (1, b)]);
    let mut panicking = Cluster::new("p".into(), split, weft_core::policy::LbPolicy::Random);
    let cfg = Outlier::compile(&Default::default());
    let now = crate::balance::now_ms();
    for i in 1..3 {
        panicking.endpoints().get(i).unwrap().state.eject(&cfg, now);
    }
    panicking.outlier = Some(Box::new(cfg));
    for _ in 0..200 {
        let e = panicking.pick_other(None, avoid, &metrics).unwrap();
        assert_ne!(
            e.addr, avoid,
            "in panic, an ejected endpoint rather than the failed one"
        );
    }
}

#[test]
fn a_policy_that_sets_nothing_is_the_one_shared_and_any_setting_makes_its_own() {
    assert!(Arc::ptr_eq(
        &RoutePolicy::default().shared(),
        &RoutePolicy::none()
    ));
    let timeout = RoutePolicy {
        timeout: Some(Duration::from_millis(250)),
        ..RoutePolicy::default()
    }
    .shared();
    assert!(!Arc::ptr_eq(&timeout, &RoutePolicy::none()));
    assert_eq!(timeout.timeout, Some(Duration::from_millis(250)));
    let hash = RoutePolicy {
        hash: Some(HashOn::SourceIp),
        ..RoutePolicy::default()
    }
    .shared();
    assert!(hash.hash.is_some());
    assert!(RoutePolicy::none().timeout.is_none() && RoutePolicy::none().retry.is_none());
}
