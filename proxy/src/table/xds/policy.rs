//! The traffic policies in xDS resources, read from their standard fields: a route's
//! `retry_policy`, `request_mirror_policies`, `max_stream_duration` and `idle_timeout`; the
//! fault and local rate-limit filters' per-route (and per-virtual-host) configs; a cluster's
//! `outlier_detection`, `circuit_breakers` and `common_lb_config`. weft's additions (the retry
//! budget's minimum per second, the failure-rate window) come from `weft` metadata.

use std::time::Duration;

use prost::{Message, Name};
use weft_core::policy;
use weft_xds_proto::{
    envoy::{
        config::{
            cluster::v3::Cluster as XdsCluster,
            route::v3::{RetryPolicy as EnvoyRetry, RouteAction},
        },
        extensions::filters::{
            common::fault::v3::fault_delay::FaultDelaySecifier,
            http::{
                fault::v3::{HttpFault, fault_abort::ErrorType},
                local_ratelimit::v3::LocalRateLimit,
            },
        },
        r#type::v3::{FractionalPercent, fractional_percent::DenominatorType},
    },
    google::protobuf::Any,
};

use super::{
    convert::duration,
    refused::{Refused, invalid, missing, unsupported},
};
use crate::{
    balance::Outlier,
    resilience::{Fault, TokenBucket},
    retry::{Budget, Retry},
};
use weft_core::contract::xds::ClusterMetadata;

pub use weft_core::contract::xds::{FAULT_FILTER, RATE_LIMIT_FILTER};

/// A fraction as a percentage.
pub fn percent(f: &FractionalPercent) -> f64 {
    let denominator = match DenominatorType::try_from(f.denominator) {
        Ok(DenominatorType::TenThousand) => 10_000.0,
        Ok(DenominatorType::Million) => 1_000_000.0,
        _ => 100.0,
    };
    (f64::from(f.numerator) / denominator * 100.0).min(100.0)
}

/// A route's retry policy; `floor`: the least wait before a retry (weft's route metadata).
pub fn retry(action: &RouteAction, floor: Option<Duration>) -> Result<Option<Retry>, Refused> {
    let Some(r) = &action.retry_policy else {
        return Ok(None);
    };
    let retry = Retry::compile(&retry_policy(r))?;
    Ok(Some(retry.at_least(floor.unwrap_or_default())))
}

fn retry_policy(r: &EnvoyRetry) -> policy::RetryPolicy {
    policy::RetryPolicy {
        attempts: Some(r.num_retries.as_ref().map_or(1, |n| n.value)),
        backoff: r.retry_back_off.as_ref().map(|b| policy::Backoff {
            base: b.base_interval.as_ref().map(duration),
            max: b.max_interval.as_ref().map(duration),
        }),
        per_try_timeout: r.per_try_timeout.as_ref().map(duration),
        on: r
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        status_codes: r
            .retriable_status_codes
            .iter()
            .map(|c| u16::try_from(*c).unwrap_or(0))
            .collect(),
        budget: None,
    }
}

fn decode<M: Message + Name + Default>(any: &Any, what: &'static str) -> Result<M, Refused> {
    if any.type_url != M::type_url() {
        return Err(invalid(format!("expected {}, got {}", M::type_url(), any.type_url)).at(what));
    }
    M::decode(&*any.value).map_err(|e| invalid(e.to_string()).at(what))
}

/// The fault filter's per-route config.
pub fn fault(any: Option<&Any>) -> Result<Option<Fault>, Refused> {
    let Some(any) = any else { return Ok(None) };
    let f: HttpFault = decode(any, FAULT_FILTER)?;
    let delay = match &f.delay {
        Some(d) => Some(policy::FaultDelay {
            percent: d.percentage.as_ref().map_or(0.0, percent),
            fixed: match &d.fault_delay_secifier {
                Some(FaultDelaySecifier::FixedDelay(t)) => Some(duration(t)),
                _ => {
                    return Err(unsupported("only fixed delays are supported").at(FAULT_FILTER));
                }
            },
        }),
        None => None,
    };
    let abort = match &f.abort {
        Some(a) => {
            let (http_status, grpc_status) = match a.error_type {
                Some(ErrorType::HttpStatus(s)) => (Some(u16::try_from(s).unwrap_or(0)), None),
                Some(ErrorType::GrpcStatus(g)) => (None, Some(g)),
                _ => {
                    return Err(missing("an abort needs an HTTP or gRPC status").at(FAULT_FILTER));
                }
            };
            Some(policy::FaultAbort {
                percent: a.percentage.as_ref().map_or(0.0, percent),
                http_status,
                grpc_status,
            })
        }
        None => None,
    };
    Fault::compile(&policy::Fault { delay, abort })
        .map(Some)
        .map_err(|e| Refused::from(e).at(FAULT_FILTER))
}

/// The local rate-limit filter's config, as a bucket's rate per second and size.
pub fn rate_limit(any: Option<&Any>) -> Result<Option<TokenBucket>, Refused> {
    let Some(any) = any else { return Ok(None) };
    let rl: LocalRateLimit = decode(any, RATE_LIMIT_FILTER)?;
    let Some(b) = rl.token_bucket else {
        return Err(missing("no token_bucket").at(RATE_LIMIT_FILTER));
    };
    let per_fill = b.tokens_per_fill.map_or(1, |t| t.value);
    let interval = b.fill_interval.as_ref().map(duration).unwrap_or_default();
    if b.max_tokens == 0 || per_fill == 0 || interval.is_zero() {
        return Err(invalid(
            "the token bucket needs max_tokens, tokens_per_fill and fill_interval above 0",
        )
        .at(RATE_LIMIT_FILTER));
    }
    // A filter not enabled or not enforced for every request is out of scope: refuse it
    // rather than limit more than asked.
    for (name, f) in [
        ("filter_enabled", &rl.filter_enabled),
        ("filter_enforced", &rl.filter_enforced),
    ] {
        if let Some(f) = f
            && f.default_value.as_ref().map_or(0.0, percent) < 100.0
        {
            return Err(
                unsupported(format!("{name} below 100% is not supported")).at(RATE_LIMIT_FILTER)
            );
        }
    }
    Ok(Some(TokenBucket::new(
        f64::from(per_fill) / interval.as_secs_f64(),
        b.max_tokens,
    )))
}

/// A cluster's outlier detection.
pub fn outlier(c: &XdsCluster, meta: &ClusterMetadata) -> Option<Outlier> {
    let o = c.outlier_detection.as_ref()?;
    let window = meta.failure_rate_window;
    let failure_rate = o
        .failure_percentage_threshold
        .as_ref()
        .filter(|_| {
            o.enforcing_failure_percentage
                .as_ref()
                .is_some_and(|e| e.value > 0)
        })
        .map(|t| policy::FailureRate {
            threshold_percent: t.value,
            minimum_requests: o.failure_percentage_request_volume.map(|v| v.value),
            window,
        });
    Some(Outlier::compile(&policy::OutlierDetection {
        consecutive_5xx: o.consecutive_5xx.map(|v| v.value),
        consecutive_gateway_errors: o.consecutive_gateway_failure.map(|v| v.value),
        failure_rate,
        interval: o.interval.as_ref().map(duration),
        base_ejection_time: o.base_ejection_time.as_ref().map(duration),
        max_ejection_time: o.max_ejection_time.as_ref().map(duration),
        max_ejection_percent: o.max_ejection_percent.map(|v| v.value),
    }))
}

/// A cluster's circuit-breaker limits (its default-priority thresholds).
pub fn circuit_breaker(c: &XdsCluster) -> Option<policy::CircuitBreaker> {
    let t = c.circuit_breakers.as_ref()?.thresholds.first()?;
    let cb = policy::CircuitBreaker {
        max_connections: t.max_connections.map(|v| v.value),
        max_pending_requests: t.max_pending_requests.map(|v| v.value),
        max_requests: t.max_requests.map(|v| v.value),
        max_retries: t.max_retries.map(|v| v.value),
    };
    (cb != policy::CircuitBreaker::default()).then_some(cb)
}

/// A cluster's panic threshold, in percent.
pub fn panic_threshold(c: &XdsCluster) -> f64 {
    c.common_lb_config
        .as_ref()
        .and_then(|l| l.healthy_panic_threshold.as_ref())
        .map_or(crate::balance::DEFAULT_PANIC_THRESHOLD, |p| {
            p.value.clamp(0.0, 100.0)
        })
}

/// The retry budget a service's cluster carries: `retry_budget.budget_percent`, and the
/// minimum per second from metadata (weft's defaults for what is unset).
pub fn budget(c: Option<&XdsCluster>, meta: &ClusterMetadata) -> Budget {
    let ratio = c
        .and_then(|c| c.circuit_breakers.as_ref())
        .and_then(|cb| cb.thresholds.first())
        .and_then(|t| t.retry_budget.as_ref())
        .and_then(|b| b.budget_percent.as_ref())
        .map(|p| (p.value / 100.0).clamp(0.0, 1.0));
    Budget::from_policy(Some(&policy::RetryBudget {
        ratio,
        min_per_second: meta.retry_budget_min_per_second,
    }))
}

/// The route's `max_stream_duration.grpc_timeout_header_max` and `idle_timeout`.
pub fn timeouts(action: &RouteAction) -> (Option<Duration>, Option<Duration>) {
    let grpc_max = action
        .max_stream_duration
        .as_ref()
        .and_then(|m| m.grpc_timeout_header_max.as_ref())
        .map(duration)
        .filter(|d| !d.is_zero());
    let idle = action
        .idle_timeout
        .as_ref()
        .map(duration)
        .filter(|d| !d.is_zero());
    (grpc_max, idle)
}
