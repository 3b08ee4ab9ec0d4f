//! Small conversions from weft's model to Envoy's protobuf types.

use std::time::Duration;

use weft_core::address::EndpointAddress;

use weft_xds_proto::{
    envoy::{
        config::{
            core::v3::{
                Address, Metadata, RuntimeFractionalPercent, SocketAddress, address,
                socket_address::PortSpecifier,
            },
            route::v3::{
                HeaderMatcher, QueryParameterMatcher, RetryPolicy as EnvoyRetry,
                RouteMatch as EnvoyMatch,
                header_matcher::HeaderMatchSpecifier,
                query_parameter_matcher::QueryParameterMatchSpecifier,
                retry_policy::RetryBackOff,
                route_action::{HashPolicy, hash_policy},
                route_match::PathSpecifier,
            },
        },
        extensions::filters::{
            common::fault::v3::{FaultDelay, fault_delay::FaultDelaySecifier},
            http::{
                fault::v3::{FaultAbort, HttpFault, fault_abort::ErrorType},
                local_ratelimit::v3::LocalRateLimit,
            },
        },
        r#type::{
            matcher::v3::{RegexMatcher, StringMatcher, string_matcher::MatchPattern},
            v3::{FractionalPercent, TokenBucket, fractional_percent::DenominatorType},
        },
    },
    google::protobuf as pb,
};

use super::METADATA_KEY;
use crate::policy::{Fault, HashKey, RateLimit, RetryPolicy, RouteMatch};

pub fn duration(d: Duration) -> pb::Duration {
    pb::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn u32v(v: u32) -> pb::UInt32Value {
    pb::UInt32Value { value: v }
}

/// An endpoint's address: its IP, or the host name proxies resolve.
pub fn socket_address(a: &EndpointAddress) -> Address {
    let host = match a {
        EndpointAddress::Ip(ip) => ip.ip().to_string(),
        EndpointAddress::Host { host, .. } => host.to_string(),
    };
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: host,
            port_specifier: Some(PortSpecifier::PortValue(u32::from(a.port()))),
            ..Default::default()
        })),
    }
}

/// weft's own settings as filter metadata under [`METADATA_KEY`].
pub fn metadata(weft: &impl serde::Serialize) -> Metadata {
    weft_xds_proto::metadata::write(METADATA_KEY, weft)
}

fn string_matcher(
    exact: &Option<String>,
    prefix: &Option<String>,
    regex: &Option<String>,
) -> Option<StringMatcher> {
    let pattern = match (exact, prefix, regex) {
        (Some(e), _, _) => MatchPattern::Exact(e.clone()),
        (_, Some(p), _) => MatchPattern::Prefix(p.clone()),
        (_, _, Some(r)) => MatchPattern::SafeRegex(RegexMatcher {
            regex: r.clone(),
            ..Default::default()
        }),
        _ => return None,
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    })
}

/// A route's match; no match given means every request (prefix `/`).
pub fn route_match(m: Option<&RouteMatch>) -> EnvoyMatch {
    let default = RouteMatch::default();
    let m = m.unwrap_or(&default);
    let path = match &m.path {
        Some(p) if p.exact.is_some() => PathSpecifier::Path(p.exact.clone().unwrap_or_default()),
        Some(p) if p.regex.is_some() => PathSpecifier::SafeRegex(RegexMatcher {
            regex: p.regex.clone().unwrap_or_default(),
            ..Default::default()
        }),
        Some(p) => PathSpecifier::Prefix(p.prefix.clone().unwrap_or_else(|| "/".into())),
        None => PathSpecifier::Prefix("/".into()),
    };
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|h| HeaderMatcher {
            name: h.name.to_ascii_lowercase(),
            header_match_specifier: Some(match string_matcher(&h.exact, &h.prefix, &h.regex) {
                Some(sm) => HeaderMatchSpecifier::StringMatch(sm),
                None => HeaderMatchSpecifier::PresentMatch(true),
            }),
            ..Default::default()
        })
        .collect();
    if let Some(method) = &m.method {
        headers.push(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: string_matcher(
                &Some(method.to_ascii_uppercase()),
                &None,
                &None,
            )
            .map(HeaderMatchSpecifier::StringMatch),
            ..Default::default()
        });
    }
    let query_parameters = m
        .query_params
        .iter()
        .map(|q| QueryParameterMatcher {
            name: q.name.clone(),
            query_parameter_match_specifier: Some(
                match string_matcher(&q.exact, &q.prefix, &q.regex) {
                    Some(sm) => QueryParameterMatchSpecifier::StringMatch(sm),
                    None => QueryParameterMatchSpecifier::PresentMatch(true),
                },
            ),
        })
        .collect();
    EnvoyMatch {
        path_specifier: Some(path),
        headers,
        query_parameters,
        ..Default::default()
    }
}

/// A percentage as Envoy's fraction: per million, so that 0.5% or 12.25% keep their value.
pub fn percent(p: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (p.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}

pub fn runtime_percent(p: f64) -> RuntimeFractionalPercent {
    RuntimeFractionalPercent {
        default_value: Some(percent(p)),
        runtime_key: String::new(),
    }
}

/// The fault filter's per-route config.
pub fn fault(f: &Fault) -> HttpFault {
    HttpFault {
        delay: f.delay.as_ref().map(|d| FaultDelay {
            percentage: Some(percent(d.percent)),
            fault_delay_secifier: d.fixed.map(|t| FaultDelaySecifier::FixedDelay(duration(t))),
        }),
        abort: f.abort.as_ref().map(|a| FaultAbort {
            percentage: Some(percent(a.percent)),
            error_type: match (a.http_status, a.grpc_status) {
                (_, Some(g)) => Some(ErrorType::GrpcStatus(g)),
                (Some(h), None) => Some(ErrorType::HttpStatus(u32::from(h))),
                (None, None) => None,
            },
        }),
        ..Default::default()
    }
}

/// The local rate-limit filter's config: a bucket of `burst` tokens refilled at
/// `requestsPerSecond`, enabled and enforced for every request.
pub fn rate_limit(rl: &RateLimit) -> LocalRateLimit {
    LocalRateLimit {
        stat_prefix: "local_rate_limit".into(),
        token_bucket: Some(TokenBucket {
            max_tokens: rl.burst.unwrap_or(rl.requests_per_second),
            tokens_per_fill: Some(u32v(rl.requests_per_second)),
            fill_interval: Some(duration(Duration::from_secs(1))),
        }),
        filter_enabled: Some(runtime_percent(100.0)),
        filter_enforced: Some(runtime_percent(100.0)),
        ..Default::default()
    }
}

pub fn retry_policy(r: &RetryPolicy) -> EnvoyRetry {
    EnvoyRetry {
        retry_on: r.on.join(","),
        // Envoy's own default is 1; weft's is written out so every client agrees.
        num_retries: Some(u32v(
            r.attempts
                .unwrap_or(weft_core::policy::DEFAULT_RETRY_ATTEMPTS),
        )),
        per_try_timeout: r.per_try_timeout.map(duration),
        retriable_status_codes: r.status_codes.iter().map(|c| u32::from(*c)).collect(),
        retry_back_off: r.backoff.as_ref().map(|b| RetryBackOff {
            base_interval: b.base.map(duration),
            max_interval: b.max.map(duration),
        }),
        ..Default::default()
    }
}

pub fn hash_policy(h: &HashKey) -> HashPolicy {
    let spec = if let Some(name) = &h.header {
        hash_policy::PolicySpecifier::Header(hash_policy::Header {
            header_name: name.to_ascii_lowercase(),
            ..Default::default()
        })
    } else if let Some(name) = &h.cookie {
        hash_policy::PolicySpecifier::Cookie(hash_policy::Cookie {
            name: name.clone(),
            ..Default::default()
        })
    } else {
        hash_policy::PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties {
            source_ip: true,
        })
    };
    HashPolicy {
        policy_specifier: Some(spec),
        terminal: false,
    }
}
