//! Who is connected: every node that opened a stream, what it was sent, acknowledged and
//! refused (for `proxy-status`), what it says of itself and where its metrics are (for
//! Prometheus' service discovery), and the metrics those feed. Nodes choose their ids and
//! what they say: all of it is bounded.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use super::{MAX_GONE_NODES, cut, served};
use crate::metrics::Metrics;

/// The `type_url` label for `type_url`.
fn type_label(type_url: &str) -> &str {
    if served(type_url) { type_url } else { "other" }
}

/// What the server knows about one type on one node's stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    pub sent_version: Option<String>,
    pub acked_version: Option<String>,
    /// The last rejection: the version the client refused and its error text.
    pub last_nack: Option<(String, String)>,
}

/// One connected (or formerly connected) node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub connected: bool,
    pub delta: bool,
    pub since: SystemTime,
    /// By type URL (the types the server serves only).
    pub types: BTreeMap<String, TypeStatus>,
    /// What the node says of itself, and where its metrics are.
    pub about: NodeAbout,
    /// The stream that registered it: only that stream's end marks it disconnected (a
    /// reconnected node's old stream may end after the new one began).
    stream: u64,
    /// When it disconnected, as a count of disconnections: the oldest is forgotten first.
    left: Option<u64>,
}

/// What a node says of itself (its metadata, each string cut to [`MAX_NODE_FIELD`] bytes), and
/// where its `/metrics` is: its `metrics_port` on the address its stream comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAbout {
    pub namespace: String,
    pub pod: String,
    pub metrics: Option<std::net::SocketAddr>,
}

/// The longest node metadata string kept (a DNS name's length): the client chooses them.
pub const MAX_NODE_FIELD: usize = 253;

impl NodeAbout {
    /// From a node's metadata, its stream coming from `peer`.
    pub(super) fn new(
        node: Option<&weft_xds_proto::envoy::config::core::v3::Node>,
        peer: Option<std::net::IpAddr>,
    ) -> Self {
        use weft_xds_proto::google::protobuf::value::Kind;
        let field = |k: &str| {
            node.and_then(|n| n.metadata.as_ref())
                .and_then(|m| m.fields.get(k))
                .and_then(|v| v.kind.as_ref())
        };
        let text = |k: &str| match field(k) {
            Some(Kind::StringValue(s)) => cut(s, MAX_NODE_FIELD),
            _ => String::new(),
        };
        let port = match field(weft_core::contract::xds::NODE_METRICS_PORT) {
            Some(Kind::NumberValue(p)) if (1.0..=65535.0).contains(p) && p.fract() == 0.0 => {
                Some(*p as u16)
            }
            _ => None,
        };
        NodeAbout {
            namespace: text("namespace"),
            pod: text("pod"),
            metrics: peer.zip(port).map(|(ip, port)| (ip, port).into()),
        }
    }
}

/// Status of every node that opened a stream, by node id, and the metrics it feeds.
#[derive(Debug, Default)]
pub struct Nodes {
    status: Mutex<BTreeMap<String, NodeStatus>>,
    /// Disconnections so far.
    departures: std::sync::atomic::AtomicU64,
    /// Streams registered so far: each one's number.
    streams: std::sync::atomic::AtomicU64,
    pub metrics: Arc<Metrics>,
}

impl Nodes {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Nodes {
            status: Mutex::default(),
            departures: Default::default(),
            streams: Default::default(),
            metrics,
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, NodeStatus> {
        self.status.lock().expect("nodes lock").clone()
    }

    /// Registers `node`'s new stream; returns its number.
    pub(super) fn connect(&self, node: &str, delta: bool, about: NodeAbout) -> u64 {
        self.metrics.connected_proxies.inc();
        let stream = self
            .streams
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.status.lock().expect("nodes lock").insert(
            node.to_string(),
            NodeStatus {
                connected: true,
                delta,
                since: SystemTime::now(),
                types: BTreeMap::new(),
                about,
                stream,
                left: None,
            },
        );
        stream
    }

    /// The connected nodes that said where their metrics are, with what they said: read under
    /// the lock, nothing else copied.
    pub fn targets(&self) -> Vec<(String, NodeAbout)> {
        let status = self.status.lock().expect("nodes lock");
        (status.iter())
            .filter(|(_, n)| n.connected && n.about.metrics.is_some())
            .map(|(id, n)| (id.clone(), n.about.clone()))
            .collect()
    }

    pub(super) fn update(
        &self,
        node: &str,
        stream: u64,
        type_url: &str,
        f: impl FnOnce(&mut TypeStatus),
    ) {
        if !served(type_url) {
            return;
        }
        if let Some(n) = self.status.lock().expect("nodes lock").get_mut(node)
            && n.stream == stream
        {
            f(n.types.entry(type_url.to_string()).or_default());
        }
    }

    pub(super) fn disconnect(&self, node: &str, stream: u64) {
        self.metrics.connected_proxies.dec();
        let mut status = self.status.lock().expect("nodes lock");
        match status.get_mut(node) {
            Some(n) if n.stream == stream => {
                n.connected = false;
                n.left = Some(
                    self.departures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                );
            }
            // Its node reconnected on another stream since: that one stands.
            _ => return,
        }
        // Node ids are the clients' to choose: keep the newest MAX_GONE_NODES departures.
        let gone = status.values().filter(|n| n.left.is_some()).count();
        if gone > MAX_GONE_NODES {
            let oldest = status
                .iter()
                .filter_map(|(id, n)| Some((n.left?, id.clone())))
                .min();
            if let Some((_, id)) = oldest {
                status.remove(&id);
            }
        }
    }

    pub(super) fn pushed(&self, type_url: &str) {
        self.metrics
            .pushes
            .with_label_values(&[type_label(type_url)])
            .inc();
    }

    pub(super) fn nacked(&self, type_url: &str) {
        self.metrics
            .nacks
            .with_label_values(&[type_label(type_url)])
            .inc();
    }
}

#[cfg(test)]
mod tests;
