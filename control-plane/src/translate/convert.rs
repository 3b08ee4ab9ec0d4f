//! Small conversions from weft's model to Envoy's protobuf types.

use std::time::Duration;

use weft_core::address::EndpointAddress;

use weft_xds_proto::{
    envoy::{
        config::{
            core::v3::{Address, Metadata, SocketAddress, address, socket_address::PortSpecifier},
            route::v3::{
                HeaderMatcher, RetryPolicy as EnvoyRetry, RouteMatch as EnvoyMatch,
                header_matcher::HeaderMatchSpecifier,
                retry_policy::RetryBackOff,
                route_action::{HashPolicy, hash_policy},
                route_match::PathSpecifier,
            },
        },
        r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher::MatchPattern},
    },
    google::protobuf::{self as pb, value::Kind},
};

use super::METADATA_KEY;
use crate::policy::{HashKey, RetryPolicy, RouteMatch};

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
pub fn metadata(weft: serde_json::Value) -> Metadata {
    let mut m = Metadata::default();
    if let Kind::StructValue(s) = json(weft) {
        m.filter_metadata.insert(METADATA_KEY.into(), s);
    }
    m
}

/// JSON to protobuf `Value` (what `Struct` metadata holds).
fn json(v: serde_json::Value) -> Kind {
    use serde_json::Value as J;
    match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s),
        J::Array(a) => Kind::ListValue(pb::ListValue {
            values: a
                .into_iter()
                .map(|v| pb::Value {
                    kind: Some(json(v)),
                })
                .collect(),
        }),
        J::Object(o) => Kind::StructValue(pb::Struct {
            fields: o
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        pb::Value {
                            kind: Some(json(v)),
                        },
                    )
                })
                .collect(),
        }),
    }
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
    EnvoyMatch {
        path_specifier: Some(path),
        headers,
        ..Default::default()
    }
}

pub fn retry_policy(r: &RetryPolicy) -> EnvoyRetry {
    EnvoyRetry {
        retry_on: r.on.join(","),
        num_retries: r.attempts.map(u32v),
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
