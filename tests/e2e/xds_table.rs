//! The control plane's xDS, compiled by the proxy: registry files -> translate -> xDS resources
//! -> routing table, and the routing decisions the table then makes.

use std::sync::Arc;

use http::{HeaderMap, Method};
use weft_proxy::{
    metrics::Metrics,
    resolve::Resolved,
    table::{
        Table,
        xds::{self, Changed, Incremental, Protos},
    },
};
use weft_xds_proto::envoy::{
    config::{
        cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType},
        core::v3::address,
        endpoint::v3::lb_endpoint::HostIdentifier,
        route::v3::header_matcher::HeaderMatchSpecifier,
    },
    r#type::matcher::v3::string_matcher::MatchPattern,
};

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

fn resources(files: &str) -> Protos {
    weft_tests::properties::registry_resources(files).expect("the registry takes the files")
}

/// The table a proxy compiles from its first, complete set of resources made from `files`.
fn first_table(files: &str, metrics: &Arc<Metrics>) -> Table {
    let compiled = xds::compile(
        &resources(files),
        Arc::from("v1"),
        1,
        metrics,
        &Table::empty(),
        &Resolved::none(),
    );
    assert_eq!(compiled.held_back, Vec::<String>::new());
    compiled.table
}

#[test]
fn the_control_planes_resources_compile_into_the_same_routing() {
    let metrics = Metrics::new();
    let table = first_table(FILES, &metrics);
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
            .find(|r| r.matches.matches(method, path, None, h))
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
    assert_eq!(
        testers.policy.timeout,
        Some(std::time::Duration::from_secs(2))
    );
    let v2 = testers.backends.pick().unwrap();
    assert_eq!(&*v2.name, "web.demo.svc.cluster.local:8080/v2");
    // The unhealthy v2 endpoint gets no traffic; the healthy one all of it.
    assert_eq!(v2.endpoints().len(), 1);
    assert_eq!(
        v2.endpoints().pick().unwrap().addr,
        "10.0.0.2:8080".parse().unwrap()
    );
    assert_eq!(v2.endpoints().pick().unwrap().labels["version"], "v2");

    let split = &svc.routes[1];
    assert_eq!(split.backends.total(), 100);
    let to_v1 = (0..100u64)
        .filter(|r| split.backends.pick_with(*r).unwrap().name.ends_with("/v1"))
        .count();
    assert_eq!(to_v1, 90);
    // A service's series appear when it is first used, not when the table is compiled.
    let series = r#"target="web.demo.svc.cluster.local:8080""#;
    assert!(!metrics.render().contains(series));
    svc.metrics.request();
    assert!(metrics.render().contains(series));
}

#[test]
fn a_listener_missing_a_reference_keeps_its_previous_service() {
    const WEB: &str = "web.demo.svc.cluster.local:8080";
    let metrics = Metrics::new();
    let full = resources(FILES);
    let first = xds::compile(
        &full,
        Arc::from("v1"),
        1,
        &metrics,
        &Table::empty(),
        &Resolved::none(),
    )
    .table;

    // The v2 subset's endpoints are gone (as between a CDS and an RDS update): the service
    // in force stays, under every name it had.
    let mut partial = full.clone();
    partial.endpoints.remove(&format!("{WEB}/v2"));
    let second = xds::compile(
        &partial,
        Arc::from("v2"),
        2,
        &metrics,
        &first,
        &Resolved::none(),
    );
    assert_eq!(
        second.held_back,
        [format!(
            "Listener `{WEB}`: RouteConfiguration `{WEB}`: route `testers`: cluster `{WEB}/v2`: its ClusterLoadAssignment has not been received"
        )]
    );
    let kept = second.table.by_authority(WEB).unwrap();
    assert!(Arc::ptr_eq(kept, first.by_authority(WEB).unwrap()));
    assert!(Arc::ptr_eq(kept, second.table.by_authority("web").unwrap()));
    assert!(Arc::ptr_eq(
        kept,
        second
            .table
            .by_vip("10.96.0.30:8080".parse().unwrap())
            .unwrap()
    ));

    // A listener seen for the first time waits until it is complete.
    let fresh = xds::compile(
        &partial,
        Arc::from("v2"),
        1,
        &metrics,
        &Table::empty(),
        &Resolved::none(),
    );
    assert_eq!(fresh.held_back.len(), 1);
    assert!(fresh.table.by_authority(WEB).is_none());

    // Complete again: compiled anew.
    let third = xds::compile(
        &full,
        Arc::from("v3"),
        3,
        &metrics,
        &second.table,
        &Resolved::none(),
    );
    assert!(third.held_back.is_empty());
    assert!(!Arc::ptr_eq(
        third.table.by_authority(WEB).unwrap(),
        first.by_authority(WEB).unwrap()
    ));
}

/// weft's settings cross in metadata typed once (`weft_core::contract::xds`): what the
/// translator writes reads back as the same values, and a field that does not fit the type is
/// refused, named, not taken for its default.
#[test]
fn weft_metadata_is_typed_once_and_a_bad_field_is_named() {
    use weft_core::contract::xds::{
        ClusterMetadata, EndpointMetadata, ListenerMetadata, METADATA, Protocol,
    };
    use weft_xds_proto::{
        google::protobuf::{Value, value::Kind},
        metadata::read,
    };
    let files = FILES.replace(
        "  routes:\n",
        "  retry: {budget: {minPerSecond: 7}}\n  loadBalancer: {policy: least-request}\n  routes:\n",
    );
    let res = resources(&files);
    let name = "web.demo.svc.cluster.local:8080";
    let mut l = res.listeners[name].clone();
    let meta: ListenerMetadata = read(METADATA, l.metadata.as_ref()).unwrap();
    assert_eq!(meta.protocol, Protocol::Http2);
    assert_eq!(meta.vip.as_deref(), Some("10.96.0.30:8080"));
    let mut c = res.clusters[name].clone();
    let meta: ClusterMetadata = read(METADATA, c.metadata.as_ref()).unwrap();
    assert_eq!(
        meta.retry_budget_min_per_second,
        Some(7),
        "a whole number crosses as one"
    );
    assert_eq!(
        meta.lb_policy,
        Some(weft_core::policy::LbPolicy::LeastRequest)
    );
    let mut cla = res.endpoints[name].clone();
    let ep = &cla.endpoints[0].lb_endpoints[0];
    let meta: EndpointMetadata = read(METADATA, ep.metadata.as_ref()).unwrap();
    assert_eq!(meta.labels["version"], "v1");

    let set = |m: &mut Option<weft_xds_proto::envoy::config::core::v3::Metadata>,
               field: &str,
               kind: Kind| {
        let weft = m
            .as_mut()
            .unwrap()
            .filter_metadata
            .get_mut(METADATA)
            .unwrap();
        weft.fields.insert(field.into(), Value { kind: Some(kind) });
    };
    set(
        &mut l.metadata,
        "protocol",
        Kind::StringValue("quic".into()),
    );
    let e = xds::check_listener(&l).unwrap_err().to_string();
    assert!(
        e.contains("metadata `weft.protocol`") && e.contains("quic"),
        "{e}"
    );

    set(
        &mut c.metadata,
        "retryBudgetMinPerSecond",
        Kind::NumberValue(-1.0),
    );
    let e = xds::check_cluster(&c).unwrap_err().to_string();
    assert!(e.contains("metadata `weft.retryBudgetMinPerSecond`"), "{e}");

    let ep = &mut cla.endpoints[0].lb_endpoints[0];
    set(&mut ep.metadata, "labels", Kind::NumberValue(3.0));
    let e = xds::check_load_assignment(&cla).unwrap_err().to_string();
    assert!(e.contains("metadata `weft.labels`"), "{e}");
}

#[test]
fn resources_are_checked_one_by_one() {
    let res = resources(FILES);
    for l in res.listeners.values() {
        xds::check_listener(l).unwrap();
    }
    for c in res.clusters.values() {
        xds::check_cluster(c).unwrap();
    }
    for e in res.endpoints.values() {
        xds::check_load_assignment(e).unwrap();
    }
    // A regex over the proxy's program-size bound, as another control plane might send it
    // (weft's refuses it: see `weftctl_applies_lists_deletes_and_reports_proxies`).
    let files = FILES.replace(
        "headers: [{name: x-canary, exact: '1'}]",
        r"headers: [{name: x-canary, regex: 'c[0-9]'}]",
    );
    let res = resources(&files);
    let mut rc = res.routes.values().next().unwrap().clone();
    let pattern = rc.virtual_hosts[0].routes[0]
        .r#match
        .as_mut()
        .and_then(|m| m.headers.iter_mut().find(|h| h.name == "x-canary"))
        .and_then(|h| match &mut h.header_match_specifier {
            Some(HeaderMatchSpecifier::StringMatch(sm)) => match &mut sm.match_pattern {
                Some(MatchPattern::SafeRegex(re)) => Some(re),
                _ => None,
            },
            _ => None,
        })
        .expect("the x-canary regex");
    assert_eq!(pattern.regex, "c[0-9]");
    pattern.regex = r"\w{100}".into();
    let err = xds::check_route_config(&rc).unwrap_err();
    assert_eq!(err.at[0], "route `testers`", "{err}");
    assert!(
        matches!(
            err.reason,
            xds::Reason::Regex(weft_core::matching::RegexError::TooBig)
        ),
        "{err}"
    );
    let err = err.to_string();
    assert!(
        err.starts_with("route `testers`: ") && err.contains("size limit"),
        "{err}"
    );
}

#[test]
fn endpoints_registered_by_host_name_become_a_strict_dns_cluster_the_proxy_resolves() {
    const PAYMENTS: &str = "payments.example:443";
    let files = "apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: payments, namespace: shop}
spec:
  host: payments.example
  port: 443
  protocol: tcp
  endpoints:
    - {address: API.payments.example:8443, weight: 2, labels: {site: a}}
    - {address: 192.0.2.9:8443, labels: {site: b}}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: payments, namespace: shop}
spec:
  service: payments.example:443
  subsets: [{name: a, labels: {site: a}}]
  routes: [{backends: [{subset: a}]}]
";
    let res = resources(files);
    // Both clusters list their endpoints themselves; nothing goes over EDS.
    assert!(res.endpoints.is_empty(), "{:?}", res.endpoints.keys());
    for name in [PAYMENTS.to_string(), format!("{PAYMENTS}/a")] {
        let c = &res.clusters[&name];
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32)),
            "{name}"
        );
        assert!(c.eds_cluster_config.is_none());
        assert_eq!(c.load_assignment.as_ref().unwrap().cluster_name, name);
        xds::check_cluster(c).unwrap();
    }

    let metrics = Metrics::new();
    let endpoints = |t: &Table, cluster: &str| -> Vec<(u64, String)> {
        let svc = t.by_authority(PAYMENTS).unwrap();
        svc.routes
            .iter()
            .chain([&svc.default_route])
            .flat_map(|r| r.backends.iter())
            .find(|c| &*c.name == cluster)
            .unwrap()
            .endpoints()
            .weighted()
            .map(|(w, e)| (w, e.addr.to_string()))
            .collect()
    };
    // Before the proxy has an answer only the address given by IP serves; the name is
    // reported for the resolver to look up.
    let before = xds::compile(
        &res,
        Arc::from("v1"),
        1,
        &metrics,
        &Table::empty(),
        &Resolved::none(),
    );
    assert!(before.held_back.is_empty(), "{:?}", before.held_back);
    assert_eq!(
        before.table.dns_names(),
        [Box::from("api.payments.example")]
    );
    assert_eq!(
        endpoints(&before.table, PAYMENTS),
        [(1, "192.0.2.9:8443".to_string())]
    );
    assert!(endpoints(&before.table, &format!("{PAYMENTS}/a")).is_empty());

    let dns = Resolved::from_map([(
        "api.payments.example".to_string(),
        vec![
            "198.51.100.7".parse().unwrap(),
            "198.51.100.8".parse().unwrap(),
        ],
    )]);
    let after = xds::compile(&res, Arc::from("v1"), 2, &metrics, &before.table, &dns).table;
    assert_eq!(
        endpoints(&after, &format!("{PAYMENTS}/a")),
        [
            (2, "198.51.100.7:8443".to_string()),
            (2, "198.51.100.8:8443".to_string())
        ]
    );
    assert_eq!(endpoints(&after, PAYMENTS).len(), 3);
}

#[test]
fn a_host_name_over_eds_is_refused_naming_the_address() {
    let mut res = resources(FILES);
    let cla = res.endpoints.values_mut().next().unwrap();
    let ep = &mut cla.endpoints[0].lb_endpoints[0];
    let Some(HostIdentifier::Endpoint(e)) = &mut ep.host_identifier else {
        panic!("an endpoint");
    };
    let Some(address::Address::SocketAddress(sa)) =
        e.address.as_mut().and_then(|a| a.address.as_mut())
    else {
        panic!("a socket address");
    };
    sa.address = "db.example.com".into();
    assert_eq!(
        xds::check_load_assignment(cla).unwrap_err().to_string(),
        "`db.example.com` is not an IP address (endpoints known by host name belong in a STRICT_DNS cluster's load_assignment)"
    );
}

/// Every traffic policy survives the trip through standard xDS fields: what the proxy
/// compiles is what the policy said.
#[test]
fn traffic_policies_cross_xds_into_the_table() {
    let files = FILES.replace(
        "    - name: split\n      backends: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]\n",
        "    - name: split
      match: {queryParams: [{name: beta, exact: 'on'}]}
      backends: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]
      fault: {delay: {percent: 12.5, fixed: 50ms}, abort: {percent: 5, grpcStatus: 14}}
      rateLimit: {requestsPerSecond: 5, burst: 7}
      mirror: {subset: v1, percent: 25}
      grpcTimeoutMax: 3s
      idleTimeout: 20s
      retry: {attempts: 3, on: [5xx, unavailable], perTryTimeout: 1s, backoff: {base: 500ms, max: 5s}}
  retry: {on: [connect-failure], budget: {ratio: 0.3, minPerSecond: 4}}
  rateLimit: {requestsPerSecond: 100}
  circuitBreaker: {maxRequests: 50, maxRetries: 3}
  outlierDetection: {consecutive5xx: 4, baseEjectionTime: 2s, maxEjectionTime: 20s, maxEjectionPercent: 40, failureRate: {thresholdPercent: 50, minimumRequests: 8, window: 5s}}
  loadBalancer: {panicThreshold: 30}
",
    );
    let table = first_table(&files, &Metrics::new());
    let svc = table.by_authority("web").unwrap();
    let split = svc.routes.iter().find(|r| &*r.name == "split").unwrap();
    let p = &split.policy;
    let retry = p.retry.as_ref().unwrap();
    assert_eq!(retry.retries, 3);
    assert_eq!(
        retry.per_try_timeout,
        Some(std::time::Duration::from_secs(1))
    );
    assert_eq!(
        (retry.base, retry.max),
        (
            std::time::Duration::from_millis(500),
            std::time::Duration::from_secs(5)
        )
    );
    let fault = p.fault.as_ref().unwrap();
    assert_eq!(
        fault.delay,
        Some((12.5, std::time::Duration::from_millis(50)))
    );
    assert_eq!(
        fault.abort,
        Some((5.0, weft_proxy::resilience::Abort::Grpc(14)))
    );
    let bucket = p.rate_limit.as_ref().unwrap();
    assert_eq!((bucket.rate, bucket.burst), (5.0, 7));
    let mirror = p.mirror.as_ref().unwrap();
    assert_eq!(
        (&*mirror.cluster.name, mirror.percent),
        ("web.demo.svc.cluster.local:8080/v1", 25.0)
    );
    assert_eq!(p.grpc_timeout_max, Some(std::time::Duration::from_secs(3)));
    assert_eq!(p.idle_timeout, Some(std::time::Duration::from_secs(20)));
    assert_eq!(split.matches.query.len(), 1);
    // The service's own settings.
    let svc_bucket = svc.rate_limit.as_ref().unwrap();
    assert_eq!((svc_bucket.rate, svc_bucket.burst), (100.0, 100));
    assert_eq!((svc.budget.ratio, svc.budget.min_per_second), (0.3, 4));
    // The testers route has no retry of its own: the policy's.
    let testers = &svc.routes[0];
    assert_eq!(testers.policy.retry.as_ref().unwrap().retries, 2);
    // Every cluster carries the outlier detection, limits and panic threshold.
    let v2 = testers.backends.pick().unwrap();
    let o = v2.outlier.as_ref().unwrap();
    assert_eq!(o.consecutive_5xx, 4);
    assert_eq!(o.base_ejection, std::time::Duration::from_secs(2));
    assert_eq!(o.max_ejection, std::time::Duration::from_secs(20));
    assert_eq!(o.max_ejection_percent, 40);
    assert_eq!(
        o.failure_rate,
        Some((50, 8, std::time::Duration::from_secs(5)))
    );
    assert_eq!(v2.panic_threshold, 30.0);
    let b = &v2.breaker;
    let _one = b.acquire(weft_proxy::resilience::Limit::Retries).unwrap();
    let _two = b.acquire(weft_proxy::resilience::Limit::Retries).unwrap();
    let _three = b.acquire(weft_proxy::resilience::Limit::Retries).unwrap();
    assert!(b.acquire(weft_proxy::resilience::Limit::Retries).is_none());
}

/// A service's authorization stays in force through routing trouble: a Listener whose routes
/// have not arrived (or were rejected) is held back, but who may call the service is known from
/// the Listener and its endpoints, and is enforced; only deleting the service removes it.
#[test]
fn authorization_never_fails_open_when_routing_is_held_back() {
    const GUARDED: &str = "apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: pay, namespace: demo}
spec:
  port: 8080
  endpoints: [{address: 10.0.0.9:8080}, {address: 10.0.0.8:8080, healthy: false}]
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: pay, namespace: demo}
spec:
  service: pay.demo.svc.cluster.local:8080
  authorization:
    default: deny
    allow: [{identity: spiffe://cluster.local/ns/demo/sa/frontend}]
";
    let metrics = Metrics::new();
    let endpoint = "10.0.0.9:8080".parse().unwrap();
    let frontend = Some("spiffe://cluster.local/ns/demo/sa/frontend");
    let intruder = Some("spiffe://cluster.local/ns/other/sa/intruder");
    let compile = |res: &Protos, previous: &Table| {
        xds::compile(
            res,
            Arc::from("v"),
            previous.generation + 1,
            &metrics,
            previous,
            &Resolved::none(),
        )
    };
    let verdict =
        |t: &Table, who: Option<&str>| t.authorize(endpoint, who, None).map(|v| v.is_ok());

    // A proxy starting while the service's RouteConfiguration is missing (not yet sent, or
    // rejected): the service is held back, its authorization is not.
    let mut res = resources(GUARDED);
    res.routes.clear();
    let started = compile(&res, &Table::empty());
    assert_eq!(started.held_back.len(), 1, "{:?}", started.held_back);
    assert!(
        started
            .table
            .by_authority("pay.demo.svc.cluster.local:8080")
            .is_none()
    );
    assert_eq!(
        verdict(&started.table, intruder),
        Some(false),
        "fails open at start"
    );
    assert_eq!(verdict(&started.table, frontend), Some(true));

    // Running: a newer Listener tightens the policy while its routes are held back; the newer
    // policy applies at once (the previous routes stay).
    let full = compile(&resources(GUARDED), &Table::empty()).table;
    assert_eq!(verdict(&full, frontend), Some(true));
    // An endpoint out of rotation (a pod not ready) still takes connections: guarded too.
    let unready = "10.0.0.8:8080".parse().unwrap();
    assert_eq!(
        full.authorize(unready, intruder, None).map(|v| v.is_ok()),
        Some(false)
    );
    let mut res = resources(&GUARDED.replace(
        "allow: [{identity: spiffe://cluster.local/ns/demo/sa/frontend}]",
        "allow: []",
    ));
    res.routes.clear();
    let tightened = compile(&res, &full);
    assert_eq!(tightened.held_back.len(), 1);
    assert!(
        tightened
            .table
            .by_authority("pay.demo.svc.cluster.local:8080")
            .is_some()
    );
    assert_eq!(verdict(&tightened.table, frontend), Some(false));

    // ... and its endpoints unknown too: the last endpoints known carry the newer policy.
    res.endpoints.clear();
    let blind = compile(&res, &tightened.table);
    assert_eq!(verdict(&blind.table, frontend), Some(false));

    // Deleted on purpose (no Listener): no policy is known; the proxy's default decides.
    let gone = compile(&Protos::default(), &blind.table);
    assert_eq!(verdict(&gone.table, intruder), None);
}

/// The control plane refuses exactly the settings every proxy would refuse: each case is
/// checked by `weftctl apply`'s validation and by the proxy's own compile of the same setting.
#[test]
fn the_control_plane_and_the_proxy_take_the_same_settings() {
    use weft_control_plane::policy;
    use weft_proxy::{authz::Authz, resilience, retry, route::StringMatch};
    let spec = |body: &str| {
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: web, namespace: demo}}\nspec:\n  service: web.demo.svc.cluster.local:8080\n{body}"
        )
    };
    let retry = |yaml: &str| {
        let p: weft_core::policy::RetryPolicy = serde_yaml_ng::from_str(yaml).unwrap();
        retry::Retry::compile(&p).is_ok()
    };
    let fault = |yaml: &str| {
        let p: weft_core::policy::Fault = serde_yaml_ng::from_str(yaml).unwrap();
        resilience::Fault::compile(&p).is_ok()
    };
    let authz = |yaml: &str| Authz::compile(&serde_yaml_ng::from_str(yaml).unwrap()).is_ok();
    let regex = |r: &str| StringMatch::regex(r).is_ok();
    #[allow(clippy::type_complexity)]
    let cases: &[(&str, &str, &dyn Fn(&str) -> bool, &str)] = &[
        (
            "  retry: {backoff: {max: 10ms}, on: [5xx]}\n",
            "retry",
            &retry,
            "{backoff: {max: 10ms}, on: [5xx]}",
        ),
        (
            "  retry: {attempts: 11, on: [5xx]}\n",
            "retry",
            &retry,
            "{attempts: 11, on: [5xx]}",
        ),
        (
            "  retry: {attempts: 3, on: [5xx]}\n",
            "retry",
            &retry,
            "{attempts: 3, on: [5xx]}",
        ),
        (
            "  fault: {abort: {percent: 5, httpStatus: 503, grpcStatus: 14}}\n",
            "fault",
            &fault,
            "{abort: {percent: 5, httpStatus: 503, grpcStatus: 14}}",
        ),
        (
            "  fault: {delay: {percent: 5, fixed: 1s}}\n",
            "fault",
            &fault,
            "{delay: {percent: 5, fixed: 1s}}",
        ),
        (
            "  authorization: {allow: [{namespace: ''}]}\n",
            "authz",
            &authz,
            "{allow: [{namespace: ''}]}",
        ),
        (
            "  authorization: {allow: [{identity: 'spiffe://td/ns/a/sa/b', authenticated: false}]}\n",
            "authz",
            &authz,
            "{allow: [{identity: 'spiffe://td/ns/a/sa/b', authenticated: false}]}",
        ),
        (
            "  authorization: {allow: [{namespace: ops}]}\n",
            "authz",
            &authz,
            "{allow: [{namespace: ops}]}",
        ),
        (
            "  routes: [{match: {path: {regex: '/\\w{60}'}}}]\n",
            "regex",
            &regex,
            "/\\w{60}",
        ),
        (
            "  routes: [{match: {path: {regex: '/[a-z]+'}}}]\n",
            "regex",
            &regex,
            "/[a-z]+",
        ),
    ];
    for (body, what, proxy_takes, setting) in cases {
        let cp_takes = policy::parse("case", &spec(body)).is_ok();
        assert_eq!(
            cp_takes,
            proxy_takes(setting),
            "{what} `{setting}`: the control plane {} it, the proxy does not",
            if cp_takes { "takes" } else { "refuses" }
        );
    }
}

/// Durations from xDS are clamped to ten years, as every configured duration is: a route's
/// `idle_timeout` of `i64::MAX` seconds (another control plane may send one) would have
/// overflowed the request's timer and panicked it.
#[test]
fn durations_from_xds_are_clamped() {
    use weft_xds_proto::{envoy::config::route::v3::route::Action, google::protobuf};
    let metrics = Metrics::new();
    let mut res = resources(FILES);
    for rc in res.routes.values_mut() {
        for r in rc.virtual_hosts.iter_mut().flat_map(|v| &mut v.routes) {
            if let Some(Action::Route(a)) = &mut r.action {
                a.idle_timeout = Some(protobuf::Duration {
                    seconds: i64::MAX,
                    nanos: 999_999_999,
                });
            }
        }
    }
    let compiled = xds::compile(
        &res,
        Arc::from("v1"),
        1,
        &metrics,
        &Table::empty(),
        &Resolved::none(),
    );
    assert!(compiled.held_back.is_empty(), "{:?}", compiled.held_back);
    let svc = compiled
        .table
        .by_authority("web.demo.svc.cluster.local:8080")
        .unwrap();
    let idle = svc.routes[0].policy.idle_timeout.unwrap();
    assert_eq!(idle, weft_core::duration::MAX);
    assert!(tokio::time::Instant::now().checked_add(idle).is_some());
}

/// `FILES` and `n` plain services (two endpoints each).
fn mesh_files(n: usize) -> String {
    let mut files = FILES.to_string();
    for i in 0..n {
        files.push_str(&format!(
            "---\napiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: demo}}\nspec:\n  port: 8080\n  endpoints: [{{address: '10.1.0.{i}:8080'}}, {{address: '10.2.0.{i}:8080'}}]\n"
        ));
    }
    files
}

/// Applies one change to `res` as the proxy's client does (only what `changed` names is
/// compiled again) and checks the table against a full compile of the same resources: the
/// same services, routes and endpoints, the same answers to lookups. Returns the new table
/// and how many Listeners the update compiled.
fn apply_and_compare(
    inc: &mut Incremental,
    res: &Protos,
    changed: Changed,
    previous: &Table,
    metrics: &Arc<Metrics>,
) -> (Table, u64) {
    let before = inc.compiles;
    let generation = previous.generation + 1;
    let c = inc.update(
        &res.convert(),
        &changed,
        Arc::from("v"),
        generation,
        metrics,
        previous,
        &Resolved::none(),
    );
    let full = xds::compile(
        res,
        Arc::from("v"),
        generation,
        metrics,
        previous,
        &Resolved::none(),
    );
    assert_eq!(c.table.describe(), full.table.describe());
    assert_eq!(c.held_back, full.held_back);
    assert_eq!(c.table.service_count(), full.table.service_count());
    for s in full.table.services() {
        for d in s.domains.iter() {
            let (a, b) = match d.parse() {
                Ok(vip) => (c.table.by_vip(vip), full.table.by_vip(vip)),
                Err(_) => (c.table.by_authority(d), full.table.by_authority(d)),
            };
            assert_eq!(a.map(|s| &s.name), b.map(|s| &s.name), "{d}");
        }
        let addrs: Vec<_> = s
            .default_route
            .backends
            .iter()
            .flat_map(|c| c.endpoints().iter().map(|e| e.addr).collect::<Vec<_>>())
            .collect();
        for addr in addrs {
            let (a, b) = (c.table.services_at(addr), full.table.services_at(addr));
            let names = |i: &mut dyn Iterator<Item = &Arc<weft_proxy::table::Service>>| {
                let mut v: Vec<_> = i.map(|s| s.name.clone()).collect();
                v.sort();
                v
            };
            assert_eq!(names(&mut { a }), names(&mut { b }), "{addr}");
            assert_eq!(
                c.table.endpoint_identity(addr),
                full.table.endpoint_identity(addr)
            );
        }
    }
    (c.table, inc.compiles - before)
}

/// The cluster of all of `service`'s endpoints (its default route's).
fn all_endpoints(t: &Table, service: &str) -> Arc<weft_proxy::table::Cluster> {
    let svc = t.service(service).unwrap();
    svc.default_route.backends.iter().next().unwrap().clone()
}

#[test]
fn an_update_compiles_only_the_services_it_touches_and_matches_a_full_compile() {
    let metrics = Metrics::new();
    let mut res = resources(&mesh_files(40));
    let mut inc = Incremental::default();
    let (mut table, n) = apply_and_compare(
        &mut inc,
        &res,
        Changed::default(),
        &Table::empty(),
        &metrics,
    );
    assert_eq!((n, table.service_count()), (41, 41));
    let svc = |i: usize| format!("svc-{i}.demo.svc.cluster.local:8080");
    let state_of = |t: &Table, i: usize| {
        all_endpoints(t, &svc(i))
            .endpoints()
            .iter()
            .next()
            .unwrap()
            .state
            .clone()
    };
    let kept = state_of(&table, 3);
    let untouched = table.service(&svc(9)).unwrap().clone();

    // One endpoint added to one service: that service only, and the endpoint that stays keeps
    // its balancer state.
    let cla = res.endpoints.get_mut(&svc(3)).unwrap();
    let mut extra = cla.endpoints[0].lb_endpoints[0].clone();
    if let Some(HostIdentifier::Endpoint(e)) = &mut extra.host_identifier
        && let Some(address::Address::SocketAddress(sa)) =
            e.address.as_mut().and_then(|a| a.address.as_mut())
    {
        sa.address = "10.3.0.3".into();
    }
    cla.endpoints[0].lb_endpoints.push(extra);
    let mut changed = Changed::default();
    changed.endpoints.insert(svc(3).into());
    let (t, n) = apply_and_compare(&mut inc, &res, changed, &table, &metrics);
    table = t;
    assert_eq!(n, 0, "an endpoint change compiled {n} listeners");
    assert!(Arc::ptr_eq(&kept, &state_of(&table, 3)));
    assert!(Arc::ptr_eq(&untouched, table.service(&svc(9)).unwrap()));
    assert_eq!(all_endpoints(&table, &svc(3)).endpoints().len(), 3);

    // A route change: its service only.
    let web = "web.demo.svc.cluster.local:8080";
    let rc = res.routes.get_mut(web).unwrap();
    rc.virtual_hosts[0].routes[0].name = "renamed".into();
    let mut changed = Changed::default();
    changed.routes.insert(web.to_string().into());
    let (t, n) = apply_and_compare(&mut inc, &res, changed, &table, &metrics);
    table = t;
    assert_eq!(n, 1);
    assert_eq!(&*table.service(web).unwrap().routes[0].name, "renamed");

    // A listener removed: gone, and nothing compiled.
    res.listeners.remove(&svc(5));
    let mut changed = Changed::default();
    changed.listeners.insert(svc(5).into());
    let (t, n) = apply_and_compare(&mut inc, &res, changed, &table, &metrics);
    table = t;
    assert_eq!((n, table.service_count()), (0, 40));
    assert!(table.by_authority(&svc(5)).is_none());

    // A RouteConfiguration removed: its listener keeps its service, held back until the
    // RouteConfiguration is back (and compiled again only then).
    let rc6 = res.routes.remove(&svc(6)).unwrap();
    let mut changed = Changed::default();
    changed.routes.insert(svc(6).into());
    let (t, n) = apply_and_compare(&mut inc, &res, changed, &table, &metrics);
    table = t;
    assert_eq!(n, 1);
    assert!(table.service(&svc(6)).is_some());
    let mut changed = Changed::default();
    changed.endpoints.insert(svc(7).into());
    let (t, n) = apply_and_compare(&mut inc, &res, changed, &table, &metrics);
    table = t;
    assert_eq!(n, 0, "an unrelated update compiled {n} listeners");
    assert_eq!(inc.held_back().count(), 1, "svc-6 is still held back");
    res.routes.insert(svc(6), rc6);
    let mut changed = Changed::default();
    changed.routes.insert(svc(6).into());
    let (t, n) = apply_and_compare(&mut inc, &res, changed, &table, &metrics);
    table = t;
    assert_eq!(n, 1);
    let mut changed = Changed::default();
    changed.endpoints.insert(svc(8).into());
    let (_, n) = apply_and_compare(&mut inc, &res, changed, &table, &metrics);
    assert_eq!(n, 0, "nothing is held back any more");
}

/// Steps applied as the client applies them, each checked against a full compile.
struct Steps {
    inc: Incremental,
    table: Table,
    metrics: Arc<Metrics>,
}

impl Steps {
    fn new(res: &Protos) -> Self {
        let metrics = Metrics::new();
        let mut inc = Incremental::default();
        let (table, _) =
            apply_and_compare(&mut inc, res, Changed::default(), &Table::empty(), &metrics);
        Steps {
            inc,
            table,
            metrics,
        }
    }

    fn apply(&mut self, res: &Protos, f: impl FnOnce(&mut Changed)) {
        let mut changed = Changed::default();
        f(&mut changed);
        let (t, _) = apply_and_compare(&mut self.inc, res, changed, &self.table, &self.metrics);
        self.table = t;
    }
}

/// A cluster that changes while a Listener using it is held back is built anew when the
/// Listener compiles again, not taken from the service it kept (found by review: the
/// comparison with a full compile failed, the old balancer stayed).
#[test]
fn a_cluster_changed_while_its_listener_is_held_back_is_built_anew() {
    use weft_xds_proto::envoy::config::cluster::v3::cluster::LbPolicy as EnvoyLb;
    let mut res = resources(&mesh_files(3));
    let mut s = Steps::new(&res);
    let web = "web.demo.svc.cluster.local:8080";
    let (v1, v2) = (format!("{web}/v1"), format!("{web}/v2"));
    // v2 goes: web is held back; v1 changes its balancer meanwhile; v2 comes back.
    let gone = res.clusters.remove(&v2).unwrap();
    s.apply(&res, |c| {
        c.clusters.insert(v2.clone().into());
    });
    {
        // The standard field decides once weft's own metadata does not name a balancer.
        let c = res.clusters.get_mut(&v1).unwrap();
        c.lb_policy = EnvoyLb::LeastRequest as i32;
        if let Some(m) = c.metadata.as_mut() {
            for s in m.filter_metadata.values_mut() {
                s.fields.remove("lbPolicy");
            }
        }
    }
    s.apply(&res, |c| {
        c.clusters.insert(v1.clone().into());
    });
    res.clusters.insert(v2.clone(), gone);
    s.apply(&res, |c| {
        c.clusters.insert(v2.clone().into());
    });
    let v1_policy = s.table.service(web).unwrap().routes[1]
        .backends
        .iter()
        .find(|c| *c.name == *v1)
        .unwrap()
        .lb_policy();
    assert_eq!(v1_policy, weft_core::policy::LbPolicy::LeastRequest);
}

/// A load assignment that comes back compiles the Listener it held back (its routes may have
/// changed meanwhile), rather than only handing it the endpoints (found by review: the
/// Listener stayed held back, on its old routes).
#[test]
fn a_load_assignment_that_comes_back_compiles_the_listener_it_held_back() {
    let mut res = resources(&mesh_files(3));
    let mut s = Steps::new(&res);
    let svc = "svc-1.demo.svc.cluster.local:8080".to_string();
    let cla = res.endpoints.remove(&svc).unwrap();
    s.apply(&res, |c| {
        c.endpoints.insert(svc.clone().into());
    });
    res.routes.get_mut(&svc).unwrap().virtual_hosts[0].routes[0].name = "renamed".into();
    s.apply(&res, |c| {
        c.routes.insert(svc.clone().into());
    });
    res.endpoints.insert(svc.clone(), cla);
    s.apply(&res, |c| {
        c.endpoints.insert(svc.clone().into());
    });
    assert_eq!(s.inc.held_back().count(), 0);
    assert_eq!(&*s.table.service(&svc).unwrap().routes[0].name, "renamed");
}

/// A new answer for one endpoint host name compiles again only the services whose endpoints
/// that name lists, not every service known by a host name; the result is a full compile's.
#[test]
fn a_new_dns_answer_compiles_only_the_services_that_name_it() {
    let service = |name: &str| {
        format!(
            "apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  host: {name}.example
  port: 443
  protocol: tcp
  endpoints: [{{address: api.{name}.example:8443}}]
"
        )
    };
    let res = resources(&format!("{}---\n{}", service("a"), service("b")));
    let held = res.convert();
    let metrics = Metrics::new();
    let ip = |s: &str| vec![s.parse().unwrap()];
    let first = Resolved::from_map([
        ("api.a.example".to_string(), ip("192.0.2.1")),
        ("api.b.example".to_string(), ip("192.0.2.2")),
    ]);
    let mut inc = Incremental::default();
    let v = || Arc::from("v");
    let before = inc
        .update(
            &held,
            &Changed::default(),
            v(),
            1,
            &metrics,
            &Table::empty(),
            &first,
        )
        .table;
    let compiles = inc.compiles;

    let next = Resolved::from_map([
        ("api.a.example".to_string(), ip("192.0.2.1")),
        ("api.b.example".to_string(), ip("192.0.2.3")),
    ]);
    let mut changed = Changed::default();
    changed
        .hosts
        .extend(next.changed_from(&first).map(Box::from));
    assert_eq!(changed.hosts, [Box::from("api.b.example")].into());
    let after = inc
        .update(&held, &changed, v(), 2, &metrics, &before, &next)
        .table;
    assert_eq!(
        inc.compiles - compiles,
        1,
        "only b's service is compiled again"
    );
    let (a, b) = ("a.example:443", "b.example:443");
    assert!(Arc::ptr_eq(
        before.by_authority(a).unwrap(),
        after.by_authority(a).unwrap()
    ));
    let addrs = |t: &Table, s: &str| -> Vec<String> {
        t.by_authority(s)
            .unwrap()
            .default_route
            .backends
            .iter()
            .flat_map(|c| {
                c.endpoints()
                    .weighted()
                    .map(|(_, e)| e.addr.to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert_eq!(addrs(&after, b), ["192.0.2.3:8443"]);
    let full = xds::compile(&res, v(), 2, &metrics, &before, &next).table;
    assert_eq!(after.describe(), full.describe());

    // A name that no longer resolves is a change too: its service only, now with no endpoint.
    let gone = Resolved::from_map([("api.a.example".to_string(), ip("192.0.2.1"))]);
    let mut changed = Changed::default();
    changed
        .hosts
        .extend(gone.changed_from(&next).map(Box::from));
    assert_eq!(changed.hosts, [Box::from("api.b.example")].into());
    let compiles = inc.compiles;
    let last = inc
        .update(&held, &changed, v(), 3, &metrics, &after, &gone)
        .table;
    assert_eq!(inc.compiles - compiles, 1);
    assert!(addrs(&last, b).is_empty());
    assert!(Arc::ptr_eq(
        after.by_authority(a).unwrap(),
        last.by_authority(a).unwrap()
    ));
}
