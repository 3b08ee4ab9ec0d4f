//! Service registrations: what every registry (file, etcd, Kubernetes) yields, in one model.
//!
//! A registry publishes whole [`Snapshot`]s on a `watch` channel: the services with their
//! endpoints, and the traffic policies. Consumers always see a complete, consistent view; bursts
//! of changes coalesce into the latest snapshot.

pub mod etcd;
pub mod file;
pub mod kubernetes;

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};
use weft_core::address::EndpointAddress;

use crate::gateway::{GrpcRoute, HttpRoute};
use crate::policy::TrafficPolicy;

pub const API_VERSION: &str = crate::policy::API_VERSION;

/// A service: a host and port clients address, and the endpoints that serve it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Host name clients use; default `<name>.<namespace>.svc.cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub port: u16,
    /// More host names for the same port (`reviews`, `reviews.shop`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// A virtual IP clients may dial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<IpAddr>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
}

/// How proxies talk to the service's endpoints: the contract's, which the Listener carries.
pub use weft_core::contract::xds::Protocol;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    /// `IP:PORT`, `[IPv6]:PORT`, or `HOST:PORT` (resolved by the proxies, which re-resolve it
    /// when its TTL runs out).
    pub address: EndpointAddress,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// An unhealthy endpoint stays registered but gets no traffic.
    #[serde(default = "yes")]
    pub healthy: bool,
    /// The SPIFFE id the endpoint's proxy presents (meshed endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// A service as registered: where it came from and what it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    /// `namespace/name` of the registration.
    pub key: String,
    /// The host clients use.
    pub host: String,
    pub spec: ServiceSpec,
}

impl Service {
    /// `host:port`: how policies and proxies name the service.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.spec.port)
    }
}

/// Everything a registry knows at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// By `host:port`.
    pub services: BTreeMap<String, Service>,
    /// By `namespace/name`.
    pub policies: BTreeMap<String, TrafficPolicy>,
    /// Gateway API `HTTPRoute`s, by `namespace/name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub http_routes: BTreeMap<String, HttpRoute>,
    /// Gateway API `GRPCRoute`s, by `namespace/name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grpc_routes: BTreeMap<String, GrpcRoute>,
}

/// A snapshot with `hosts` (port 80), each with one endpoint of `weight`, for tests.
#[cfg(test)]
pub(crate) fn test_snapshot(hosts: &[&str], weight: u32) -> Snapshot {
    let mut s = Snapshot::default();
    for host in hosts {
        let svc = Service {
            key: format!("default/{host}"),
            host: host.to_string(),
            spec: ServiceSpec {
                host: Some(host.to_string()),
                port: 80,
                aliases: vec![],
                vip: None,
                protocol: Protocol::Http,
                endpoints: vec![Endpoint {
                    address: "10.0.0.1:80".parse().unwrap(),
                    weight,
                    labels: BTreeMap::new(),
                    healthy: true,
                    identity: None,
                }],
            },
        };
        s.services.insert(svc.authority(), svc);
    }
    s
}
