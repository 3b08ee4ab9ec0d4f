//! A Cluster resource: EDS over ADS, with a policy's load balancing (the standard field and,
//! for clients that read it, `load_balancing_policy`), circuit breakers with the retry budget,
//! and outlier detection; what no standard field carries goes in weft's metadata.

use weft_xds_proto::envoy::{
    config::{
        cluster::v3::{
            Cluster, LoadBalancingPolicy, OutlierDetection as EnvoyOutlier,
            circuit_breakers::{Thresholds, thresholds::RetryBudget as EnvoyBudget},
            cluster::CommonLbConfig,
            cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy as EnvoyLb},
            load_balancing_policy,
        },
        core::v3::TypedExtensionConfig,
    },
    extensions::load_balancing_policies::{
        least_request::v3::LeastRequest, random::v3::Random, round_robin::v3::RoundRobin,
    },
};

use super::{
    ads, any,
    convert::{duration, metadata, u32v},
    names,
};
use crate::policy::{LbPolicy, PolicySpec};
use weft_xds_proto::google::protobuf::Any;

/// A `load_balancing_policy` listing `policies` in order of preference.
fn lb_policies(policies: Vec<(&str, Any)>) -> LoadBalancingPolicy {
    LoadBalancingPolicy {
        policies: policies
            .into_iter()
            .map(|(name, config)| load_balancing_policy::Policy {
                typed_extension_config: Some(TypedExtensionConfig {
                    name: name.to_string(),
                    typed_config: Some(config),
                }),
            })
            .collect(),
    }
}

/// The Cluster named `name` (`host:port` or `host:port/subset`), of type EDS over ADS, with
/// `policy`'s balancer, circuit breakers, retry budget and outlier detection.
pub(super) fn cluster(name: &str, policy: Option<&PolicySpec>) -> Cluster {
    let lb = policy
        .and_then(|p| p.load_balancer.as_ref())
        .map_or(LbPolicy::default(), |l| l.policy);
    // Envoy's LEAST_REQUEST is power-of-two-choices over outstanding requests, the nearest
    // standard to weft's default (P2C over peak-EWMA latency); the exact policy is in metadata.
    let lb_policy = match lb {
        LbPolicy::P2cEwma | LbPolicy::LeastRequest => EnvoyLb::LeastRequest,
        LbPolicy::RoundRobin => EnvoyLb::RoundRobin,
        LbPolicy::RingHash => EnvoyLb::RingHash,
        LbPolicy::Random => EnvoyLb::Random,
    };
    // Clients that read `load_balancing_policy` take the first entry they support: gRPC's
    // proxyless clients reject the LEAST_REQUEST and RANDOM enums, so round robin follows as
    // their fallback.
    let load_balancing_policy = match lb {
        LbPolicy::P2cEwma | LbPolicy::LeastRequest => Some(lb_policies(vec![
            (
                "envoy.load_balancing_policies.least_request",
                any(&LeastRequest::default()),
            ),
            (
                "envoy.load_balancing_policies.round_robin",
                any(&RoundRobin::default()),
            ),
        ])),
        LbPolicy::Random => Some(lb_policies(vec![
            (
                "envoy.load_balancing_policies.random",
                any(&Random::default()),
            ),
            (
                "envoy.load_balancing_policies.round_robin",
                any(&RoundRobin::default()),
            ),
        ])),
        LbPolicy::RoundRobin | LbPolicy::RingHash => None,
    };
    let cb = policy.and_then(|p| p.circuit_breaker.as_ref());
    let budget = policy
        .and_then(|p| p.retry.as_ref())
        .and_then(|r| r.budget.as_ref());
    let thresholds = (cb.is_some() || budget.is_some()).then(|| Thresholds {
        max_connections: cb.and_then(|c| c.max_connections).map(u32v),
        max_pending_requests: cb.and_then(|c| c.max_pending_requests).map(u32v),
        max_requests: cb.and_then(|c| c.max_requests).map(u32v),
        max_retries: cb.and_then(|c| c.max_retries).map(u32v),
        retry_budget: budget.map(|b| EnvoyBudget {
            budget_percent: b
                .ratio
                .map(|r| weft_xds_proto::envoy::r#type::v3::Percent { value: r * 100.0 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let outlier = policy
        .and_then(|p| p.outlier_detection.as_ref())
        .map(|o| EnvoyOutlier {
            consecutive_5xx: o.consecutive_5xx.map(u32v),
            consecutive_gateway_failure: o.consecutive_gateway_errors.map(u32v),
            interval: o.interval.map(duration),
            base_ejection_time: o.base_ejection_time.map(duration),
            max_ejection_percent: o.max_ejection_percent.map(u32v),
            max_ejection_time: o.max_ejection_time.map(duration),
            failure_percentage_threshold: o
                .failure_rate
                .as_ref()
                .map(|f| u32v(f.threshold_percent)),
            failure_percentage_request_volume: o
                .failure_rate
                .as_ref()
                .and_then(|f| f.minimum_requests)
                .map(u32v),
            enforcing_failure_percentage: o.failure_rate.as_ref().map(|_| u32v(100)),
            ..Default::default()
        });
    let weft = names::ClusterMetadata {
        lb_policy: Some(lb),
        retry_budget_min_per_second: budget.and_then(|b| b.min_per_second),
        failure_rate_window: policy
            .and_then(|p| p.outlier_detection.as_ref())
            .and_then(|o| o.failure_rate.as_ref())
            .and_then(|f| f.window),
    };
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.to_string(),
        }),
        lb_policy: lb_policy as i32,
        load_balancing_policy,
        circuit_breakers: thresholds.map(|t| {
            weft_xds_proto::envoy::config::cluster::v3::CircuitBreakers {
                thresholds: vec![t],
                ..Default::default()
            }
        }),
        outlier_detection: outlier,
        common_lb_config: policy
            .and_then(|p| p.load_balancer.as_ref())
            .and_then(|l| l.panic_threshold)
            .map(|t| CommonLbConfig {
                healthy_panic_threshold: Some(weft_xds_proto::envoy::r#type::v3::Percent {
                    value: t,
                }),
                ..Default::default()
            }),
        metadata: Some(metadata(&weft)),
        ..Default::default()
    }
}
