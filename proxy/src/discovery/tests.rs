use std::time::Duration;

use prost::{Message, Name};
use weft_xds_proto::{
    envoy::config::{
        cluster::v3::Cluster,
        core::v3::{Address, SocketAddress, address, socket_address::PortSpecifier},
        endpoint::v3::{
            ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
            lb_endpoint::HostIdentifier,
        },
    },
    google::protobuf::Any,
};

use super::*;

fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// What the state records of a resource it holds: the digest of its bytes.
fn sum<M: Message>(m: &M) -> u64 {
    state::bytes_digest(&m.encode_to_vec())
}

/// That the state holds, under `name`, the load assignment `cla` as it was sent.
fn assert_holds(st: &State, name: &str, cla: &ClusterLoadAssignment, what: &str) {
    assert_eq!(st.digest_of(ENDPOINTS, name), Some(sum(cla)), "{what}");
}

fn cla(name: &str, port: u32) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: "127.0.0.1".into(),
                            port_specifier: Some(PortSpecifier::PortValue(port)),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn update(kind: usize, version: &str, full: bool, items: &[Any], removed: &[&str]) -> Update {
    Update {
        type_url: KINDS[kind].type_url.into(),
        version: version.into(),
        full,
        resources: items
            .iter()
            .map(|a| (None, format!("{version}-r"), Some(a.clone())))
            .collect(),
        removed: removed.iter().map(|s| s.to_string()).collect(),
    }
}

const ENDPOINTS: usize = 1;

#[test]
fn state_of_the_world_replaces_the_set_and_delta_changes_what_it_names() {
    let mut st = State::default();
    let out = st.apply(
        ENDPOINTS,
        update(
            ENDPOINTS,
            "1",
            true,
            &[any(&cla("a", 1)), any(&cla("b", 2))],
            &[],
        ),
    );
    assert!(out.changed && out.errors.is_empty());
    assert_eq!(st.len(ENDPOINTS), 2);
    assert_eq!(st.type_version(ENDPOINTS), "1");

    // The same set again changes nothing.
    let out = st.apply(
        ENDPOINTS,
        update(
            ENDPOINTS,
            "1",
            true,
            &[any(&cla("a", 1)), any(&cla("b", 2))],
            &[],
        ),
    );
    assert!(!out.changed);

    // State of the world: what is not in the response is gone.
    let out = st.apply(
        ENDPOINTS,
        update(ENDPOINTS, "2", true, &[any(&cla("a", 1))], &[]),
    );
    assert!(out.changed);
    assert!(st.resources().endpoints.keys().map(|k| &**k).eq(["a"]));

    // Delta: additions and removals by name; the rest stays.
    let out = st.apply(
        ENDPOINTS,
        update(ENDPOINTS, "3", false, &[any(&cla("c", 3))], &[]),
    );
    assert!(out.changed);
    assert_eq!(st.len(ENDPOINTS), 2);
    let out = st.apply(ENDPOINTS, update(ENDPOINTS, "4", false, &[], &["a"]));
    assert!(out.changed);
    assert!(st.resources().endpoints.keys().map(|k| &**k).eq(["c"]));
    // The versions a reconnecting delta stream reports.
    assert_eq!(st.versions(ENDPOINTS).collect::<Vec<_>>(), [("c", "3-r")]);
    assert!(!st.complete(), "only one type has arrived");
}

#[test]
fn a_bad_resource_is_rejected_alone_and_its_previous_version_stays() {
    let mut st = State::default();
    st.apply(
        ENDPOINTS,
        update(
            ENDPOINTS,
            "1",
            true,
            &[any(&cla("a", 1)), any(&cla("b", 2))],
            &[],
        ),
    );
    // `b` now has port 0; `a` moves to port 10.
    let out = st.apply(
        ENDPOINTS,
        update(
            ENDPOINTS,
            "2",
            true,
            &[any(&cla("a", 10)), any(&cla("b", 0))],
            &[],
        ),
    );
    assert_eq!(
        out.errors,
        ["ClusterLoadAssignment `b`: endpoint 127.0.0.1: port 0 is out of range"]
    );
    assert!(out.changed);
    assert_holds(&st, "a", &cla("a", 10), "the good one applies");
    assert_holds(
        &st,
        "b",
        &cla("b", 2),
        "the bad one keeps its last good version",
    );
    assert_eq!(
        st.type_version(ENDPOINTS),
        "1",
        "a NACKed response's version is not taken"
    );
}

#[test]
fn resources_of_the_wrong_type_or_name_are_rejected() {
    let mut st = State::default();
    let wrong = any(&Cluster {
        name: "a".into(),
        ..Default::default()
    });
    let out = st.apply(ENDPOINTS, update(ENDPOINTS, "1", true, &[wrong], &[]));
    assert_eq!(out.errors.len(), 1);
    assert!(
        out.errors[0].contains("envoy.config.cluster.v3.Cluster in a response of"),
        "{:?}",
        out.errors
    );
    let mut u = update(ENDPOINTS, "1", false, &[any(&cla("a", 1))], &[]);
    u.resources[0].0 = Some("b".into());
    let out = st.apply(ENDPOINTS, u);
    assert_eq!(
        out.errors,
        ["ClusterLoadAssignment `b`: the resource calls itself `a`"]
    );
    assert_eq!(st.len(ENDPOINTS), 0);
}

#[test]
fn the_table_version_depends_only_on_the_type_versions() {
    let mut a = State::default();
    let mut b = State::default();
    for (st, order) in [(&mut a, [0, 1, 2, 3]), (&mut b, [3, 2, 1, 0])] {
        for k in order {
            st.apply(k, update(k, &format!("v{k}"), true, &[], &[]));
        }
    }
    assert!(a.complete());
    assert_eq!(a.version(), b.version());
    assert!(a.version().starts_with("xds-"));
    a.apply(0, update(0, "v9", true, &[], &[]));
    assert_ne!(a.version(), b.version());
}

#[test]
fn reconnect_backoff_grows_with_full_jitter_up_to_the_cap() {
    let (base, max) = (Duration::from_millis(100), Duration::from_secs(2));
    for failures in 0..40 {
        let ceiling = (base * 2u32.pow(failures.min(10))).min(max);
        for _ in 0..20 {
            assert!(backoff(base, max, failures) <= ceiling);
        }
    }
    // Jitter: not always the same delay.
    let seen: std::collections::HashSet<_> = (0..50).map(|_| backoff(base, max, 3)).collect();
    assert!(seen.len() > 1);
}

#[test]
fn an_undecodable_resource_in_a_full_response_removes_nothing() {
    let mut st = State::default();
    st.apply(
        ENDPOINTS,
        update(
            ENDPOINTS,
            "1",
            true,
            &[any(&cla("a", 1)), any(&cla("b", 2))],
            &[],
        ),
    );
    // State of the world: `a` changes, and a resource that cannot be decoded (it may be `b`).
    let garbage = Any {
        type_url: KINDS[ENDPOINTS].type_url.into(),
        value: vec![0xff, 0xff, 0xff],
    };
    let out = st.apply(
        ENDPOINTS,
        update(ENDPOINTS, "2", true, &[any(&cla("a", 10)), garbage], &[]),
    );
    assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
    assert_holds(&st, "a", &cla("a", 10), "the good one applies");
    assert_holds(&st, "b", &cla("b", 2), "`b` keeps its last good version");
}

#[test]
fn a_response_rejected_whole_is_not_received() {
    let mut st = State::default();
    let out = st.apply(
        ENDPOINTS,
        update(ENDPOINTS, "1", true, &[any(&cla("b", 0))], &[]),
    );
    assert_eq!(out.errors.len(), 1);
    for k in [0, 2, 3] {
        st.apply(k, update(k, "1", true, &[], &[]));
    }
    assert!(
        !st.complete(),
        "nothing of the endpoints was accepted: not ready"
    );
    st.apply(
        ENDPOINTS,
        update(ENDPOINTS, "2", true, &[any(&cla("b", 2))], &[]),
    );
    assert!(st.complete());
}

/// Found by the `xds_updates` fuzz target: a response of the whole set names a resource `x`
/// whose body calls itself `b`. It is rejected, and `b`, which it may have been meant to be,
/// keeps its last good version (it was removed as absent from the set).
#[test]
fn a_resource_rejected_for_its_name_keeps_the_one_its_body_names() {
    let mut st = State::default();
    st.apply(
        ENDPOINTS,
        update(
            ENDPOINTS,
            "1",
            true,
            &[any(&cla("a", 1)), any(&cla("b", 2))],
            &[],
        ),
    );
    let mut u = update(ENDPOINTS, "2", true, &[any(&cla("a", 10))], &[]);
    u.resources
        .push((Some("x".into()), "2-r".into(), Some(any(&cla("b", 20)))));
    let out = st.apply(ENDPOINTS, u);
    assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
    let res = st.resources();
    assert_eq!(st.digest_of(ENDPOINTS, "a"), Some(sum(&cla("a", 10))));
    assert_holds(&st, "b", &cla("b", 2), "`b` keeps its last good version");
    assert!(!res.endpoints.contains_key("x"));
}

/// The node says where its metrics are only where the control plane can list that right (its
/// port, on the address the stream comes from): a probe on every address, or on loopback; not
/// one bound to some other address.
#[test]
fn the_node_names_its_metrics_port_only_where_that_is_right() {
    use clap::Parser;
    let cfg = crate::config::Cli::parse_from(["weft-proxy"]).run.discovery;
    let port = |probe: &str| {
        let node = super::wire::node(&cfg, probe.parse().unwrap());
        node.metadata
            .unwrap()
            .fields
            .get(weft_core::contract::xds::NODE_METRICS_PORT)
            .map(|v| v.kind.clone())
    };
    use weft_xds_proto::google::protobuf::value::Kind;
    assert_eq!(
        port("0.0.0.0:15020"),
        Some(Some(Kind::NumberValue(15020.0)))
    );
    assert_eq!(port("[::]:15020"), Some(Some(Kind::NumberValue(15020.0))));
    assert_eq!(
        port("127.0.0.1:4000"),
        Some(Some(Kind::NumberValue(4000.0)))
    );
    assert_eq!(port("10.0.0.5:15020"), None);
}

#[test]
fn a_name_is_one_allocation_across_resource_types_and_the_names_inside_them() {
    use weft_xds_proto::envoy::{
        config::{
            listener::v3::{ApiListener, Listener},
            route::v3::{
                Route as XdsRoute, RouteAction, RouteConfiguration, RouteMatch as XdsMatch,
                VirtualHost, route::Action, route_action::ClusterSpecifier,
                route_match::PathSpecifier,
            },
        },
        extensions::filters::network::http_connection_manager::v3::{
            HttpConnectionManager, Rds, http_connection_manager::RouteSpecifier,
        },
    };
    let name = "web.demo.svc.cluster.local:8080";
    let mut st = State::default();
    use weft_xds_proto::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    let cluster = Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        ..Default::default()
    };
    for (kind, body) in [(0, any(&cluster)), (ENDPOINTS, any(&cla(name, 80)))] {
        let out = st.apply(kind, update(kind, "1", true, &[body], &[]));
        assert!(out.errors.is_empty(), "{:?}", out.errors);
    }
    let hcm = HttpConnectionManager {
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            route_config_name: name.into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let listener = Listener {
        name: name.into(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(&hcm)),
        }),
        ..Default::default()
    };
    let out = st.apply(2, update(2, "1", true, &[any(&listener)], &[]));
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let route = XdsRoute {
        name: "default".into(),
        r#match: Some(XdsMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(name.into())),
            ..Default::default()
        })),
        ..Default::default()
    };
    let rc = RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: "web".into(),
            domains: vec![name.into(), "web.demo".into()],
            routes: vec![route],
            ..Default::default()
        }],
        ..Default::default()
    };
    let out = st.apply(3, update(3, "1", true, &[any(&rc)], &[]));
    assert!(out.errors.is_empty(), "{:?}", out.errors);

    let res = st.resources();
    let (key, _) = res.clusters.get_key_value(name).unwrap();
    let same = |a: &Arc<str>, what: &str| assert!(Arc::ptr_eq(a, key), "{what}");
    same(
        res.endpoints.get_key_value(name).unwrap().0,
        "load assignment",
    );
    let (listener_key, l) = res.listeners.get_key_value(name).unwrap();
    same(listener_key, "listener");
    same(&l.rds, "the listener's RouteConfiguration");
    let (routes_key, rc) = res.routes.get_key_value(name).unwrap();
    same(routes_key, "RouteConfiguration");
    same(&rc.domains[0], "the domain that is the service's name");
    assert_eq!(
        &*rc.domains[1], "web.demo",
        "another domain is kept as it is"
    );
    let r = &rc.routes[0];
    same(&r.backends[0].1, "the route's cluster");
    // What every service's default route has is shared by all of them.
    assert!(Arc::ptr_eq(&r.matches, &crate::route::RouteMatch::any()));
    assert!(Arc::ptr_eq(&r.policy, &crate::table::RoutePolicy::none()));
    assert!(Arc::ptr_eq(&r.name, &crate::table::Route::default_name()));
}
