//! The wire format between weft's control plane and its proxies.
//!
//! - Standard Envoy v3 xDS, re-exported from the `envoy-types` crate (pre-generated prost/tonic
//!   code; no `protoc` needed): the Aggregated Discovery Service and the resources weft sends
//!   over it (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment).
//! - weft's own small protos, compiled at build time with protox: the mesh CA service
//!   ([`ca::v1`]).
#![forbid(unsafe_code)]

pub use envoy_types::pb::{envoy, google, xds};

/// The xDS services.
pub mod discovery {
    pub use crate::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        Resource,
        aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
        aggregated_discovery_service_server::{
            AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
        },
    };
}

/// The resource types weft exchanges, by their xDS type URLs.
pub mod type_url {
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// The order in which an ADS client should apply resources (so that nothing references a
    /// resource it has not seen): clusters and their endpoints before the listeners and routes
    /// that use them.
    pub const APPLY_ORDER: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];
}

pub mod grpc;
pub mod metadata;

/// weft's mesh CA.
pub mod ca {
    pub mod v1 {
        tonic::include_proto!("weft.ca.v1");
    }
}

#[cfg(test)]
mod tests;
