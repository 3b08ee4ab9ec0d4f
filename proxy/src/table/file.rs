//! The static routing-table file: its YAML schema and loading with errors that name the place.

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde::{Deserialize, Serialize};
use weft_core::{address::EndpointAddress, policy};

/// A table file as written by the operator (and as `/config_dump` shows it back).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableFile {
    /// Free-form version; when absent a digest of the file's content is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Host name clients use (`echo.default.svc.cluster.local`).
    pub name: String,
    pub port: u16,
    /// Other host names for the same service (`echo`, `echo.default`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Virtual IP clients may dial (used once traffic is captured transparently).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<std::net::IpAddr>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<SubsetSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
    /// Who may call this service's endpoints (enforced by their inbound sidecars).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<crate::authz::AuthorizationSpec>,
    /// How requests are spread over the endpoints (default `p2c-ewma`), and what to hash.
    #[serde(
        default,
        rename = "loadBalancer",
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer: Option<weft_core::policy::LoadBalancer>,
    /// Retries for routes that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<policy::RetryPolicy>,
    #[serde(
        default,
        rename = "circuitBreaker",
        skip_serializing_if = "Option::is_none"
    )]
    pub circuit_breaker: Option<policy::CircuitBreaker>,
    #[serde(
        default,
        rename = "outlierDetection",
        skip_serializing_if = "Option::is_none"
    )]
    pub outlier_detection: Option<policy::OutlierDetection>,
    /// One token bucket for all the service's requests.
    #[serde(default, rename = "rateLimit", skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<policy::RateLimit>,
    /// Fault injection for routes that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<policy::Fault>,
}

/// How the proxy talks to a service's endpoints: the contract's, which a Listener carries.
pub use weft_core::contract::xds::Protocol;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// `IP:PORT`, `[IPv6]:PORT`, or `HOST:PORT`: a host name is resolved, and re-resolved
    /// when its TTL runs out; each of its addresses is an endpoint with this weight, labels
    /// and identity.
    pub address: EndpointAddress,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The endpoint's SPIFFE id: connections to it are mutual TLS and must prove it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubsetSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: MatchSpec,
    /// Weighted backends; empty means every endpoint of the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendSpec>,
    /// Whole-request timeout.
    #[serde(
        default,
        with = "weft_core::duration::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<policy::RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<policy::Fault>,
    /// A token bucket for this route alone.
    #[serde(default, rename = "rateLimit", skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<policy::RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<policy::Mirror>,
    #[serde(
        default,
        rename = "grpcTimeoutMax",
        with = "weft_core::duration::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub grpc_timeout_max: Option<Duration>,
    #[serde(
        default,
        rename = "idleTimeout",
        with = "weft_core::duration::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatchSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatchSpec>,
    /// Query parameters (`name` plus at most one of `exact`, `prefix`, `regex`; none: present).
    #[serde(default, rename = "queryParams", skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<HeaderMatchSpec>,
}

/// Exactly one of the fields is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

impl HeaderMatchSpec {
    /// The value half of the match (none set: the header only has to be present).
    pub fn value(&self) -> StringMatchSpec {
        StringMatchSpec {
            exact: self.exact.clone(),
            prefix: self.prefix.clone(),
            regex: self.regex.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// A subset of the service's endpoints; absent means all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(default = "one")]
    pub weight: u32,
}

/// Why a table file was not loaded. Its text names the file, the place and the problem.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {field}: {message}")]
    Invalid {
        file: String,
        field: String,
        message: String,
    },
}

/// Parses a table file's text. `file` only names it in errors.
pub fn parse(file: &Path, text: &str) -> Result<TableFile, LoadError> {
    let file_name = file.display().to_string();
    // An empty file is far more often one caught half-written than a wish for no services.
    if text.trim().is_empty() {
        return Err(LoadError::Parse {
            file: file_name,
            message: "the file is empty (for a table with no services write `services: []`)".into(),
        });
    }
    serde_yaml_ng::from_str(text).map_err(|e| LoadError::Parse {
        file: file_name,
        message: e.to_string(),
    })
}
