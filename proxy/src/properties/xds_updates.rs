//! The xDS property: responses applied one after another to the proxy's state
//! (`discovery::state`), then compiled (`table::xds`).

use std::collections::BTreeMap;

use prost::{Message, Name};
use weft_xds_proto::{
    envoy::config::{
        cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
        route::v3::RouteConfiguration,
    },
    google::protobuf::Any,
};

use crate::{
    discovery::state::{KINDS, State, Update, bytes_digest},
    metrics::Metrics,
    resolve::Resolved,
    table::{Table, xds},
};

/// A resource in a fuzzed xDS response.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "properties", derive(arbitrary::Arbitrary))]
pub struct XdsResource {
    /// The name the response gives it (delta responses do; state of the world ones do not).
    pub name: Option<String>,
    /// 0: the response's own type; 1: another kind's; 2: no body at all.
    pub type_sel: u8,
    pub body: XdsBody,
}

/// A resource's body: raw bytes, or a resource of the response's kind built from a few
/// fields (so that most of them decode, and some pass the checks).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "properties", derive(arbitrary::Arbitrary))]
pub enum XdsBody {
    Raw(Vec<u8>),
    Built {
        name: String,
        address: String,
        port: u32,
        weight: u32,
        other: String,
    },
}

/// One xDS response of a fuzzed stream.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "properties", derive(arbitrary::Arbitrary))]
pub struct XdsStep {
    pub kind: u8,
    pub full: bool,
    pub resources: Vec<XdsResource>,
    pub removed: Vec<String>,
}

/// Responses applied one after another to the proxy's xDS state. After each: every resource
/// held passes its check (nothing rejected is ever held); a resource changes only to a value
/// the response carried; one goes away only when the response removes it, or replaces the
/// whole set without it and without a rejected resource it could not name; a response
/// rejected whole changes nothing but its removals; and the table the client keeps, compiling
/// only what each response changed, is the one a full compile of the same resources makes.
pub fn xds_updates(steps: &[XdsStep]) {
    let mut st = State::default();
    let metrics = Metrics::new();
    let mut inc = xds::Incremental::default();
    let mut table = Table::empty();
    let mut generation = 0;
    for step in steps {
        let kind = usize::from(step.kind % 4);
        let own = KINDS[kind].type_url;
        let before = held(&st, kind);
        let mut carried: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        let mut unnamed_undecodable = false;
        let mut resources = Vec::new();
        for r in &step.resources {
            let any = match r.type_sel % 3 {
                0 => Some(Any {
                    type_url: own.to_string(),
                    value: body(kind, &r.body),
                }),
                1 => Some(Any {
                    type_url: KINDS[(kind + 1) % 4].type_url.to_string(),
                    value: body((kind + 1) % 4, &r.body),
                }),
                _ => None,
            };
            match any.as_ref().and_then(|a| named(kind, own, a)) {
                Some((name, bytes)) => carried.entry(name).or_default().push(bytes),
                None if r.name.is_none() => unnamed_undecodable = true,
                None => {}
            }
            resources.push((r.name.clone(), "v1".to_string(), any));
        }
        let out = st.apply(
            kind,
            Update {
                type_url: own.to_string(),
                version: "v1".into(),
                full: step.full,
                resources,
                removed: step.removed.clone(),
            },
        );
        let after = held(&st, kind);
        for (name, sum) in &after {
            if before.get(name) == Some(sum) {
                continue;
            }
            // Changed: to a body the response carried, which passes its check.
            let body = carried
                .get(name)
                .and_then(|c| c.iter().find(|b| bytes_digest(b) == *sum));
            let Some(body) = body else {
                panic!("{own} `{name}` changed to a value the response did not carry");
            };
            assert!(
                checks(kind, body),
                "{own} `{name}` is held but fails its check"
            );
        }
        for name in before.keys().filter(|n| !after.contains_key(*n)) {
            let removed = step.removed.contains(name);
            let replaced = step.full && !unnamed_undecodable && !carried.contains_key(name);
            assert!(
                removed || replaced,
                "{own} `{name}` went away though nothing removed it"
            );
        }
        if out.applied == 0 && !out.errors.is_empty() {
            let mut expected = before.clone();
            expected.retain(|n, _| !step.removed.contains(n));
            if !step.full || unnamed_undecodable {
                assert_eq!(after, expected, "a response rejected whole changed {own}");
            }
        }
        // The table the client keeps, changed only where the response did, is the table a
        // full compile of the same resources makes against the same table in force.
        let mut changed = xds::Changed::default();
        for n in out.names {
            changed.mark(kind, n);
        }
        generation += 1;
        let version: std::sync::Arc<str> = st.version().into();
        let none = Resolved::none();
        let kept = inc.update(
            st.resources(),
            &changed,
            version.clone(),
            generation,
            &metrics,
            &table,
            &none,
        );
        let full = xds::Incremental::default().update(
            st.resources(),
            &xds::Changed::default(),
            version,
            generation,
            &metrics,
            &table,
            &none,
        );
        assert_eq!(kept.table.describe(), full.table.describe());
        assert_eq!(kept.held_back, full.held_back);
        assert!(kept.table.service_count() <= st.len(2));
        table = kept.table;
    }
}

/// The resources of `kind` held, by name: the digests of the bytes each was converted from.
fn held(st: &State, kind: usize) -> BTreeMap<String, u64> {
    let r = st.resources();
    let names: Vec<&std::sync::Arc<str>> = match kind {
        0 => r.clusters.keys().collect(),
        1 => r.endpoints.keys().collect(),
        2 => r.listeners.keys().collect(),
        _ => r.routes.keys().collect(),
    };
    // And the other way: the versions a reconnecting delta stream reports are of resources
    // held, or the control plane would never send one the proxy lacks.
    for (n, _) in st.versions(kind) {
        assert!(
            names.iter().any(|h| &***h == n),
            "a version for `{n}`, which is not held"
        );
    }
    names
        .into_iter()
        .map(|n| {
            let sum = st
                .digest_of(kind, n)
                .expect("every resource held has a digest");
            (n.to_string(), sum)
        })
        .collect()
}

/// The name and the bytes of `any` if it decodes as a resource of `kind`.
fn named(kind: usize, own: &str, any: &Any) -> Option<(String, Vec<u8>)> {
    fn dec<M: Message + Name + Default>(
        any: &Any,
        name: impl Fn(&M) -> String,
    ) -> Option<(String, Vec<u8>)> {
        let m = M::decode(&*any.value).ok()?;
        Some((name(&m), any.value.clone()))
    }
    if any.type_url != own {
        return None;
    }
    match kind {
        0 => dec::<Cluster>(any, |c| c.name.clone()),
        1 => dec::<ClusterLoadAssignment>(any, |c| c.cluster_name.clone()),
        2 => dec::<Listener>(any, |l| l.name.clone()),
        _ => dec::<RouteConfiguration>(any, |r| r.name.clone()),
    }
}

/// Whether the encoded resource of `kind` passes the check the proxy applies to it.
fn checks(kind: usize, bytes: &[u8]) -> bool {
    match kind {
        0 => xds::check_cluster(&Cluster::decode(bytes).unwrap()).is_ok(),
        1 => xds::check_load_assignment(&ClusterLoadAssignment::decode(bytes).unwrap()).is_ok(),
        2 => xds::check_listener(&Listener::decode(bytes).unwrap()).is_ok(),
        _ => xds::check_route_config(&RouteConfiguration::decode(bytes).unwrap()).is_ok(),
    }
}

/// The bytes of a resource body of `kind`.
fn body(kind: usize, b: &XdsBody) -> Vec<u8> {
    use weft_xds_proto::envoy::config::{
        core::v3::{Address, SocketAddress, address, socket_address::PortSpecifier},
        endpoint::v3::{Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier},
    };
    let XdsBody::Built {
        name,
        address,
        port,
        weight,
        other,
    } = b
    else {
        let XdsBody::Raw(raw) = b else { unreachable!() };
        return raw.clone();
    };
    match kind {
        0 => Cluster {
            name: name.clone(),
            ..Default::default()
        }
        .encode_to_vec(),
        1 => {
            let addr = Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: address.clone(),
                    port_specifier: Some(PortSpecifier::PortValue(*port)),
                    ..Default::default()
                })),
            };
            ClusterLoadAssignment {
                cluster_name: name.clone(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![LbEndpoint {
                        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                            address: Some(addr),
                            ..Default::default()
                        })),
                        load_balancing_weight: Some(
                            weft_xds_proto::google::protobuf::UInt32Value { value: *weight },
                        ),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }
            .encode_to_vec()
        }
        2 => Listener {
            name: name.clone(),
            stat_prefix: other.clone(),
            ..Default::default()
        }
        .encode_to_vec(),
        _ => RouteConfiguration {
            name: name.clone(),
            ..Default::default()
        }
        .encode_to_vec(),
    }
}
