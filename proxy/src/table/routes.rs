//! A compiled route: where its requests go (the backends of its split) and the policies they
//! are sent under. Routes are part of a [`super::Service`]; what they share with the
//! conversion of the RouteConfiguration they came from is behind `Arc`s.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::HeaderName;

use super::{Cluster, Picked, canonical};
use crate::{
    metrics::{Direction, LazyTarget, Metrics, TargetMetrics},
    resilience::{Fault, TokenBucket},
    retry::Retry,
    route::{RouteMatch, WeightedSplit},
};

/// A route's traffic policies beyond where it sends requests. Held behind an `Arc`: a route
/// compiled from xDS shares its conversion's (see `xds::RouteSpec`) unless it has a rate limit
/// or a mirror, which are live state, and every route without a policy shares one
/// ([`RoutePolicy::none`]), so that a service costs what it sets.
#[derive(Debug, Default, Clone)]
pub struct RoutePolicy {
    pub timeout: Option<Duration>,
    /// What a request is hashed on: for a ring-hash cluster's endpoint, and to keep a caller
    /// on one backend of the split (sticky canary).
    pub hash: Option<HashOn>,
    pub retry: Option<Retry>,
    pub fault: Option<Fault>,
    pub rate_limit: Option<Arc<TokenBucket>>,
    pub mirror: Option<Mirror>,
    /// The longest `grpc-timeout` honoured; a longer one is cut to this.
    pub grpc_timeout_max: Option<Duration>,
    /// A response stream that carries nothing for this long is ended.
    pub idle_timeout: Option<Duration>,
    /// Headers the route changes in requests and responses (`None`: none).
    pub headers: Option<Arc<RouteHeaders>>,
    /// The request's path and authority, rewritten before it is sent.
    pub rewrite: Option<Arc<crate::route::Rewrite>>,
    /// The route answers with this redirect instead of sending the request anywhere.
    pub redirect: Option<Arc<crate::route::Redirect>>,
}

/// A route's header changes: the request's before it is sent, the response's before it is
/// relayed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteHeaders {
    pub request: crate::route::HeaderMutation,
    pub response: crate::route::HeaderMutation,
}

impl RoutePolicy {
    /// The policy of a route that sets none, shared by all of them.
    pub fn none() -> Arc<RoutePolicy> {
        static NONE: std::sync::LazyLock<Arc<RoutePolicy>> = std::sync::LazyLock::new(Arc::default);
        NONE.clone()
    }

    /// `self` behind an `Arc`: the shared one when it sets nothing.
    pub fn shared(self) -> Arc<RoutePolicy> {
        let RoutePolicy {
            timeout,
            hash,
            retry,
            fault,
            rate_limit,
            mirror,
            grpc_timeout_max,
            idle_timeout,
            headers,
            rewrite,
            redirect,
        } = &self;
        let empty = timeout.is_none()
            && hash.is_none()
            && retry.is_none()
            && fault.is_none()
            && rate_limit.is_none()
            && mirror.is_none()
            && grpc_timeout_max.is_none()
            && idle_timeout.is_none()
            && headers.is_none()
            && rewrite.is_none()
            && redirect.is_none();
        if empty { Self::none() } else { Arc::new(self) }
    }

    /// What `/config_dump` shows of it (only what is set).
    pub fn describe(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        // Policies without a shape of their own in the dump are shown as their debug text.
        let d = |v: &dyn std::fmt::Debug| serde_json::Value::from(format!("{v:?}"));
        if let Some(r) = &self.retry {
            m.insert("retry".into(), d(r));
        }
        if let Some(f) = &self.fault {
            m.insert("fault".into(), d(f));
        }
        if let Some(b) = &self.rate_limit {
            m.insert(
                "rateLimit".into(),
                serde_json::json!({"perSecond": b.rate, "burst": b.burst}),
            );
        }
        if let Some(mi) = &self.mirror {
            m.insert(
                "mirror".into(),
                serde_json::json!({"cluster": &*mi.cluster.name, "percent": mi.percent}),
            );
        }
        if let Some(t) = self.grpc_timeout_max {
            m.insert("grpcTimeoutMax".into(), d(&t));
        }
        if let Some(t) = self.idle_timeout {
            m.insert("idleTimeout".into(), d(&t));
        }
        if let Some(r) = &self.redirect {
            m.insert("redirect".into(), d(r));
        }
        if let Some(r) = &self.rewrite {
            m.insert("rewrite".into(), d(r));
        }
        if let Some(h) = &self.headers {
            m.insert(
                "headers".into(),
                serde_json::json!({"request": h.request.describe(), "response": h.response.describe()}),
            );
        }
        m.into()
    }
}

/// Copies of a share of a route's requests go to `cluster`.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub cluster: Arc<Cluster>,
    pub percent: f64,
}

#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    /// Shared with the route's conversion (xDS); [`RouteMatch::any`] for a default route.
    pub matches: Arc<RouteMatch>,
    /// Concrete backends with their weights (canary splits).
    pub backends: WeightedSplit<Arc<Cluster>>,
    pub policy: Arc<RoutePolicy>,
    /// Each backend's request and response series (in `backends`' order), made on first use;
    /// filled when the service is finished.
    pub metrics: Box<[LazyTarget]>,
    /// Each backend's own header changes (a Gateway API backendRef's filters), in `backends`'
    /// order; empty when no backend has any.
    pub backend_headers: Box<[Option<Arc<RouteHeaders>>]>,
}

impl Route {
    /// The name of a service's default route, shared by all of them.
    pub fn default_name() -> Arc<str> {
        static NAME: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| "default".into());
        NAME.clone()
    }

    /// The backend (with its series) and an endpoint of it for a request with hash key
    /// `hash`: a key keeps a caller on one backend of the split (sticky canary) and, on a
    /// ring-hash cluster, on one endpoint. `None` only for a route without backends; no
    /// endpoint when the backend has none in service.
    pub fn target(&self, hash: Option<u64>, metrics: &TargetMetrics) -> Option<Target<'_>> {
        let r = hash.unwrap_or_else(|| fastrand::u64(..));
        let i = self.backends.pick_index(r)?;
        let cluster = self.backends.get(i)?;
        Some(Target {
            cluster,
            index: i,
            metrics: &self.metrics[i],
            endpoint: cluster.pick(hash, metrics),
        })
    }

    /// Makes each backend's series handles (on first use) for the route of `service`.
    pub(crate) fn count(&mut self, metrics: &Arc<Metrics>, service: &Arc<str>) {
        self.metrics = self
            .backends
            .iter()
            .map(|c| {
                let (route, backend) = (self.name.clone(), c.name.clone());
                LazyTarget::backend(
                    metrics,
                    Direction::Outbound,
                    service.clone(),
                    route,
                    backend,
                )
            })
            .collect();
    }
}

/// Where a route sends one request: the backend, its series, and an endpoint if it has one.
pub struct Target<'a> {
    pub cluster: &'a Arc<Cluster>,
    /// Into the route's backends.
    pub index: usize,
    pub metrics: &'a LazyTarget,
    pub endpoint: Option<Picked>,
}

impl Route {
    /// Backend `i`'s own header changes.
    pub fn backend_headers(&self, i: usize) -> Option<&RouteHeaders> {
        self.backend_headers.get(i).and_then(|h| h.as_deref())
    }
}

/// The part of a request a route hashes.
#[derive(Debug, Clone)]
pub enum HashOn {
    Header(HeaderName),
    Cookie(Box<str>),
    SourceIp,
}

impl HashOn {
    /// The request's key, when it carries one. No allocation.
    pub fn key(&self, headers: &http::HeaderMap, client: Option<SocketAddr>) -> Option<u64> {
        match self {
            HashOn::Header(name) => headers
                .get(name)
                .map(|v| crate::balance::hash64(v.as_bytes())),
            HashOn::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| {
                    let (k, v) = c.trim().split_once('=')?;
                    (k == &**name).then(|| crate::balance::hash64(v.as_bytes()))
                }),
            HashOn::SourceIp => client.map(|c| match canonical(c).ip() {
                std::net::IpAddr::V4(ip) => crate::balance::hash64(&ip.octets()),
                std::net::IpAddr::V6(ip) => crate::balance::hash64(&ip.octets()),
            }),
        }
    }
}
