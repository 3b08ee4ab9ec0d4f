use std::time::Duration;

use weft_xds_proto::{
    envoy::config::{
        core::v3::address,
        route::v3::{
            header_matcher::HeaderMatchSpecifier, route_action::hash_policy::PolicySpecifier,
            route_match::PathSpecifier,
        },
    },
    google::protobuf::value::Kind,
};

use super::*;
use crate::registry::file::FileRegistry;
use weft_xds_proto::envoy::config::cluster::v3::cluster::LbPolicy as EnvoyLb;

const FILES: &str = "apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  port: 9080
  aliases: [reviews]
  vip: 10.96.0.20
  endpoints:
    - {address: 10.0.1.4:8080, labels: {version: v1}}
    - {address: 10.0.1.5:8080, weight: 3, labels: {version: v2}, identity: spiffe://cluster.local/ns/shop/sa/reviews}
    - {address: 10.0.1.6:8080, healthy: false, labels: {version: v2}}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: reviews, namespace: shop}
spec:
  service: reviews.shop.svc.cluster.local:9080
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
  routes:
    - name: testers
      match: {path: {prefix: /api}, method: get, headers: [{name: X-Canary, exact: '1'}, {name: x-debug}], queryParams: [{name: beta, exact: 'on'}]}
      backends: [{subset: v2}]
      fault: {abort: {percent: 5, grpcStatus: 14}}
      mirror: {subset: v1, percent: 12.5}
      rateLimit: {requestsPerSecond: 5}
    - name: split
      backends: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]
      timeout: 2s
  retry:
    attempts: 3
    backoff: {base: 500ms, max: 5s}
    on: [connect-failure, retriable-status-codes]
    statusCodes: [503]
    budget: {ratio: 0.2, minPerSecond: 10}
  loadBalancer: {policy: ring-hash, hash: {header: X-User}}
  circuitBreaker: {maxRequests: 1000}
  rateLimit: {requestsPerSecond: 100, burst: 200}
  grpcTimeoutMax: 10s
  authorization: {default: deny, allow: [{namespace: shop}, {identity: spiffe://cluster.local/ns/web/sa/frontend}]}
  outlierDetection: {consecutive5xx: 5, failureRate: {thresholdPercent: 50, minimumRequests: 10, window: 10s}}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: ratings}
spec: {host: ratings.example, port: 80, protocol: http2, endpoints: [{address: '[::1]:9000', weight: 0}]}
";

const A: &str = "reviews.shop.svc.cluster.local:9080";

fn resources() -> Resources {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("weft-translate-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mesh.yaml"), FILES).unwrap();
    let mut reg = FileRegistry::new(&dir);
    let snap = reg.scan().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(reg.errors.is_empty(), "{:?}", reg.errors);
    translate(&snap)
}

fn weft_meta(m: &Option<weft_xds_proto::envoy::config::core::v3::Metadata>, field: &str) -> Kind {
    m.as_ref().unwrap().filter_metadata[METADATA_KEY].fields[field]
        .kind
        .clone()
        .unwrap()
}

#[test]
fn authorization_rides_on_the_listener_for_the_inbound_sidecars() {
    let r = resources();
    let Kind::StructValue(a) = weft_meta(&r.listeners[1].metadata, "authorization") else {
        panic!("authorization is a struct");
    };
    assert_eq!(
        a.fields["default"].kind,
        Some(Kind::StringValue("deny".into()))
    );
    let Some(Kind::ListValue(allow)) = &a.fields["allow"].kind else {
        panic!("allow is a list");
    };
    assert_eq!(allow.values.len(), 2);
    let no_policy = r.listeners[0].metadata.as_ref().unwrap();
    assert!(
        !no_policy.filter_metadata[METADATA_KEY]
            .fields
            .contains_key("authorization")
    );
}

#[test]
fn listeners_use_rds_over_ads_and_the_router() {
    let r = resources();
    let names: Vec<&str> = r.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["ratings.example:80", A]);
    let l = &r.listeners[1];
    let any = l
        .api_listener
        .as_ref()
        .unwrap()
        .api_listener
        .as_ref()
        .unwrap();
    assert_eq!(any.type_url, HttpConnectionManager::type_url());
    let hcm = HttpConnectionManager::decode(&*any.value).unwrap();
    let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
        panic!("RDS expected")
    };
    assert_eq!(rds.route_config_name, A);
    assert!(matches!(
        rds.config_source.unwrap().config_source_specifier,
        Some(ConfigSourceSpecifier::Ads(_))
    ));
    let filters: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        filters,
        [FAULT_FILTER, RATE_LIMIT_FILTER, "envoy.filters.http.router"]
    );
    // Clients without a local rate limiter may skip it; the others are required.
    assert!(hcm.http_filters[1].is_optional && !hcm.http_filters[0].is_optional);
    let Some(ConfigType::TypedConfig(router)) = &hcm.http_filters[2].config_type else {
        panic!("typed router config expected")
    };
    assert_eq!(router.type_url, Router::type_url());
    assert_eq!(
        weft_meta(&l.metadata, "vip"),
        Kind::StringValue("10.96.0.20:9080".into())
    );
    assert_eq!(
        weft_meta(&r.listeners[0].metadata, "protocol"),
        Kind::StringValue("http2".into())
    );
}

#[test]
fn routes_follow_the_policy_then_a_default() {
    let r = resources();
    let rc = r.routes.iter().find(|rc| rc.name == A).unwrap();
    let vh = &rc.virtual_hosts[0];
    assert_eq!(
        vh.domains,
        [
            A,
            "reviews.shop.svc.cluster.local",
            "reviews:9080",
            "reviews",
            "10.96.0.20:9080"
        ]
    );
    let names: Vec<&str> = vh.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["testers", "split", "default"]);

    let testers = &vh.routes[0];
    let m = testers.r#match.as_ref().unwrap();
    assert_eq!(m.path_specifier, Some(PathSpecifier::Prefix("/api".into())));
    let header_names: Vec<&str> = m.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(header_names, ["x-canary", "x-debug", ":method"]);
    assert_eq!(
        m.headers[1].header_match_specifier,
        Some(HeaderMatchSpecifier::PresentMatch(true))
    );
    let Some(Action::Route(a)) = &testers.action else {
        panic!()
    };
    assert_eq!(
        a.cluster_specifier,
        Some(ClusterSpecifier::Cluster(format!("{A}/v2")))
    );
    assert_eq!(m.query_parameters.len(), 1);
    assert_eq!(m.query_parameters[0].name, "beta");
    let fault = HttpFault::decode(&*testers.typed_per_filter_config[FAULT_FILTER].value).unwrap();
    let abort = fault.abort.unwrap();
    // Percentages travel per million, so fractions keep their value.
    assert_eq!(abort.percentage.unwrap().numerator, 50_000);
    assert_eq!(
        abort.error_type,
        Some(weft_xds_proto::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType::GrpcStatus(14))
    );
    assert_eq!(a.request_mirror_policies.len(), 1);
    assert_eq!(a.request_mirror_policies[0].cluster, format!("{A}/v1"));
    let fraction = a.request_mirror_policies[0]
        .runtime_fraction
        .as_ref()
        .and_then(|f| f.default_value)
        .unwrap();
    assert_eq!(fraction.numerator, 125_000);
    assert_eq!(
        a.max_stream_duration
            .as_ref()
            .and_then(|m| m.grpc_timeout_header_max),
        Some(duration(Duration::from_secs(10)))
    );
    let route_bucket =
        LocalRateLimit::decode(&*testers.typed_per_filter_config[RATE_LIMIT_FILTER].value)
            .unwrap()
            .token_bucket
            .unwrap();
    assert_eq!(
        (route_bucket.max_tokens, route_bucket.tokens_per_fill),
        (5, Some(u32v(5)))
    );
    // The service's bucket is the virtual host's, shared by every route.
    let svc_bucket = LocalRateLimit::decode(&*vh.typed_per_filter_config[RATE_LIMIT_FILTER].value)
        .unwrap()
        .token_bucket
        .unwrap();
    assert_eq!(
        (svc_bucket.max_tokens, svc_bucket.tokens_per_fill),
        (200, Some(u32v(100)))
    );
    assert!(
        !vh.routes[1]
            .typed_per_filter_config
            .contains_key(RATE_LIMIT_FILTER)
    );

    let Some(Action::Route(split)) = &vh.routes[1].action else {
        panic!()
    };
    let Some(ClusterSpecifier::WeightedClusters(wc)) = &split.cluster_specifier else {
        panic!()
    };
    let weights: Vec<(String, u32)> = wc
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight.as_ref().unwrap().value))
        .collect();
    assert_eq!(weights, [(format!("{A}/v1"), 90), (format!("{A}/v2"), 10)]);
    assert_eq!(split.timeout, Some(duration(Duration::from_secs(2))));
    let retry = split.retry_policy.as_ref().unwrap();
    assert_eq!(retry.retry_on, "connect-failure,retriable-status-codes");
    assert_eq!(retry.num_retries, Some(u32v(3)));
    assert_eq!(retry.retriable_status_codes, [503]);
    let backoff = retry.retry_back_off.as_ref().unwrap();
    assert_eq!(
        backoff.base_interval,
        Some(duration(Duration::from_millis(500)))
    );
    assert_eq!(
        split.hash_policy[0].policy_specifier,
        Some(PolicySpecifier::Header(
            weft_xds_proto::envoy::config::route::v3::route_action::hash_policy::Header {
                header_name: "x-user".into(),
                ..Default::default()
            }
        ))
    );

    let Some(Action::Route(default)) = &vh.routes[2].action else {
        panic!()
    };
    assert_eq!(
        default.cluster_specifier,
        Some(ClusterSpecifier::Cluster(A.into()))
    );
    assert_eq!(default.timeout, None);
}

#[test]
fn clusters_per_service_and_subset_with_their_settings() {
    let r = resources();
    let names: Vec<&str> = r.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ratings.example:80",
            A,
            &format!("{A}/v1"),
            &format!("{A}/v2")
        ]
    );
    let c = &r.clusters[1];
    assert_eq!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
    );
    assert_eq!(c.eds_cluster_config.as_ref().unwrap().service_name, A);
    assert_eq!(c.lb_policy, EnvoyLb::RingHash as i32);
    let t = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(t.max_requests, Some(u32v(1000)));
    let budget = t.retry_budget.as_ref().unwrap();
    assert!((budget.budget_percent.as_ref().unwrap().value - 20.0).abs() < 1e-9);
    assert_eq!(
        weft_meta(&c.metadata, "retryBudgetMinPerSecond"),
        Kind::NumberValue(10.0)
    );
    let o = c.outlier_detection.as_ref().unwrap();
    assert_eq!(o.consecutive_5xx, Some(u32v(5)));
    assert_eq!(o.failure_percentage_threshold, Some(u32v(50)));
    assert_eq!(o.enforcing_failure_percentage, Some(u32v(100)));
    assert_eq!(
        weft_meta(&c.metadata, "failureRateWindow"),
        Kind::StringValue("10s".into())
    );
    // No policy: the default balancer, nothing else.
    assert_eq!(r.clusters[0].lb_policy, EnvoyLb::LeastRequest as i32);
    assert_eq!(
        weft_meta(&r.clusters[0].metadata, "lbPolicy"),
        Kind::StringValue("p2c-ewma".into())
    );
    assert!(r.clusters[0].circuit_breakers.is_none());
}

#[test]
fn endpoints_carry_weight_health_labels_and_identity() {
    let r = resources();
    let cla = |name: &str| r.endpoints.iter().find(|e| e.cluster_name == name).unwrap();
    let addr = |e: &LbEndpoint| {
        let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
            panic!()
        };
        let Some(address::Address::SocketAddress(sa)) = &ep.address.as_ref().unwrap().address
        else {
            panic!()
        };
        sa.address.clone()
    };
    assert_eq!(cla(A).endpoints[0].lb_endpoints.len(), 3);
    let v2 = &cla(&format!("{A}/v2")).endpoints[0].lb_endpoints;
    assert_eq!(
        v2.iter().map(addr).collect::<Vec<_>>(),
        ["10.0.1.5", "10.0.1.6"]
    );
    assert_eq!(v2[0].load_balancing_weight, Some(u32v(3)));
    assert_eq!(v2[0].health_status, HealthStatus::Healthy as i32);
    assert_eq!(v2[1].health_status, HealthStatus::Unhealthy as i32);
    assert_eq!(
        weft_meta(&v2[0].metadata, "identity"),
        Kind::StringValue("spiffe://cluster.local/ns/shop/sa/reviews".into())
    );
    let Kind::StructValue(labels) = weft_meta(&v2[0].metadata, "labels") else {
        panic!()
    };
    assert_eq!(
        labels.fields["version"].kind,
        Some(Kind::StringValue("v2".into()))
    );
    // Weight 0 drains; IPv6 addresses are written bare.
    let ratings = &cla("ratings.example:80").endpoints[0].lb_endpoints[0];
    assert_eq!(ratings.health_status, HealthStatus::Draining as i32);
    assert_eq!(addr(ratings), "::1");
}

#[test]
fn translation_is_deterministic() {
    assert_eq!(resources(), resources());
}

#[test]
fn services_without_a_vip_get_a_stable_one_from_the_reserved_block() {
    let r = resources();
    let vip = |l: &Listener| match weft_meta(&l.metadata, "vip") {
        Kind::StringValue(v) => v,
        other => panic!("{other:?}"),
    };
    // reviews registered 10.96.0.20; ratings has none and gets one in 240.240.0.0/16.
    assert_eq!(vip(&r.listeners[1]), "10.96.0.20:9080");
    let allocated = vip(&r.listeners[0]);
    assert!(allocated.starts_with("240.240."), "{allocated}");
    assert!(allocated.ends_with(":80"), "{allocated}");
    // The same on every translation (another replica, the next push).
    assert_eq!(vip(&resources().listeners[0]), allocated);
    let rc = r
        .routes
        .iter()
        .find(|rc| rc.name == "ratings.example:80")
        .unwrap();
    assert!(rc.virtual_hosts[0].domains.contains(&allocated));
}

/// Two host names whose hashes fall on the same VIP: whichever registers second probes on, and
/// neither one's VIP changes when the other comes or goes (a cached DNS answer would reach the
/// wrong service).
#[test]
fn a_service_keeps_its_vip_when_a_colliding_one_comes_and_goes() {
    let slot = |h: &str| {
        h.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        }) % 65534
    };
    // Two names on one slot, the second sorting before the first.
    let mut seen = std::collections::HashMap::new();
    let (first, second) = (0..100_000)
        .map(|i| format!("svc-{i}.example"))
        .find_map(|h| {
            let other = seen.insert(slot(&h), h.clone())?;
            Some(if other < h { (h, other) } else { (other, h) })
        })
        .expect("a collision among 100,000 names");
    assert!(second < first);
    let vip_of = |r: &Resources, host: &str| {
        let l = r
            .listeners
            .iter()
            .find(|l| l.name.starts_with(&format!("{host}:")))
            .unwrap();
        match weft_meta(&l.metadata, "vip") {
            Kind::StringValue(v) => v,
            other => panic!("{other:?}"),
        }
    };
    let mut vips = Vips::default();
    let alone = translate_with(&crate::registry::test_snapshot(&[&first], 1), &mut vips);
    let before = vip_of(&alone, &first);
    let both = translate_with(
        &crate::registry::test_snapshot(&[&first, &second], 1),
        &mut vips,
    );
    assert_eq!(vip_of(&both, &first), before, "the newcomer moved it");
    let newcomer = vip_of(&both, &second);
    assert_ne!(newcomer, before);
    let without = translate_with(&crate::registry::test_snapshot(&[&second], 1), &mut vips);
    assert_eq!(
        vip_of(&without, &second),
        newcomer,
        "the departure moved it"
    );
}

/// More hosts than the block has addresses: the allocation ends, every address goes to one
/// host, and the hosts left over get none. (It used to probe for ever.)
#[test]
fn a_full_vip_block_leaves_hosts_without_a_vip_and_ends() {
    let snap = crate::registry::test_snapshot(&["a.example", "b.example", "c.example"], 1);
    let vips = super::vips::allocate_vips_in(&snap, &Vips::default(), 2);
    assert_eq!(vips.len(), 2, "{vips:?}");
    let distinct: std::collections::HashSet<_> = vips.values().collect();
    assert_eq!(distinct.len(), 2);
}
