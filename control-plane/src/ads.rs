//! The Aggregated Discovery Service: every proxy (or any standard xDS client) opens one stream
//! and receives listeners, routes, clusters and endpoints on it, state-of-the-world or delta.
//!
//! Each stream runs in a task of its own and always sends the latest snapshot: a slow or stuck
//! client holds back only its own stream, and it skips intermediate versions instead of
//! queueing them. Per node the server records what was sent, acknowledged and rejected (NACK,
//! with the client's error text) for `proxy-status`.

mod delta;
mod sotw;
mod wire;

pub use wire::AdsService;
use wire::{DeltaResponse, SotwResponse};

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use weft_xds_proto::{
    discovery::{DeltaDiscoveryRequest, DiscoveryRequest},
    google::rpc,
};

use crate::{metrics::Metrics, snapshot::XdsSnapshot};

/// Responses a stream may have queued for a slow client before its task waits.
const STREAM_BUFFER: usize = 4;

/// The longest NACK text kept per node and type (longer ones are cut, saying how long they
/// were).
pub const MAX_NACK_TEXT: usize = 4096;
/// Disconnected nodes remembered for `proxy-status`; beyond, the oldest to leave is forgotten.
pub const MAX_GONE_NODES: usize = 1024;
/// Resource names one delta stream may subscribe to per type.
pub const MAX_SUBSCRIBED_NAMES: usize = 65_536;

/// Whether the server serves `type_url`. Other types are answered (empty) and counted under
/// `other`, and nothing of them is kept: a client chooses their names.
fn served(type_url: &str) -> bool {
    weft_xds_proto::type_url::APPLY_ORDER.contains(&type_url)
}

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
    fn new(
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
    fn connect(&self, node: &str, delta: bool, about: NodeAbout) -> u64 {
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

    fn update(&self, node: &str, stream: u64, type_url: &str, f: impl FnOnce(&mut TypeStatus)) {
        if !served(type_url) {
            return;
        }
        if let Some(n) = self.status.lock().expect("nodes lock").get_mut(node)
            && n.stream == stream
        {
            f(n.types.entry(type_url.to_string()).or_default());
        }
    }

    fn disconnect(&self, node: &str, stream: u64) {
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

    fn pushed(&self, type_url: &str) {
        self.metrics
            .pushes
            .with_label_values(&[type_label(type_url)])
            .inc();
    }

    fn nacked(&self, type_url: &str) {
        self.metrics
            .nacks
            .with_label_values(&[type_label(type_url)])
            .inc();
    }
}

#[derive(Debug, Clone)]
pub struct AdsServer {
    snapshots: watch::Receiver<Arc<XdsSnapshot>>,
    pub nodes: Arc<Nodes>,
}

impl AdsServer {
    pub fn new(snapshots: watch::Receiver<Arc<XdsSnapshot>>, metrics: Arc<Metrics>) -> Self {
        AdsServer {
            snapshots,
            nodes: Arc::new(Nodes::new(metrics)),
        }
    }
}

/// The client went away.
struct Closed;

/// What a stream keeps besides its subscriptions: the snapshot feed, the node it serves, and
/// its nonce counter. Dropping it marks the node disconnected.
struct Conn<R> {
    snaps: watch::Receiver<Arc<XdsSnapshot>>,
    nodes: Arc<Nodes>,
    tx: mpsc::Sender<Result<R, Status>>,
    /// The node, and the number its registration gave this stream.
    node: Option<String>,
    stream: u64,
    delta: bool,
    nonce: u64,
    /// Where the stream comes from.
    peer: Option<std::net::IpAddr>,
}

impl<R: Send> Conn<R> {
    fn new(
        snaps: watch::Receiver<Arc<XdsSnapshot>>,
        nodes: Arc<Nodes>,
        tx: mpsc::Sender<Result<R, Status>>,
        delta: bool,
        peer: Option<std::net::IpAddr>,
    ) -> Self {
        Conn {
            snaps,
            nodes,
            tx,
            node: None,
            stream: 0,
            delta,
            nonce: 0,
            peer,
        }
    }

    /// The stream's node, registered with its first request (the id may be empty: such a
    /// client is served and reported under "").
    fn node(&mut self, node: &Option<weft_xds_proto::envoy::config::core::v3::Node>) -> String {
        if let Some(n) = &self.node {
            return n.clone();
        }
        // The client chooses its id: it is kept to a bounded length.
        let id = cut(node.as_ref().map_or("", |n| &n.id), MAX_NODE_FIELD);
        let about = NodeAbout::new(node.as_ref(), self.peer);
        self.stream = self.nodes.connect(&id, self.delta, about);
        self.node = Some(id.clone());
        id
    }

    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }

    /// Records the client's answer to the response that carried `version`: an ACK, or a NACK
    /// with the client's error.
    fn answered(&self, type_url: &str, version: String, error: Option<&rpc::Status>) {
        let Some(node) = &self.node else { return };
        match error {
            Some(err) => {
                let msg = cut(&err.message, MAX_NACK_TEXT);
                tracing::warn!(%node, %type_url, %version, error = %msg, delta = self.delta, "xDS NACK");
                self.nodes.nacked(type_url);
                self.nodes.update(node, self.stream, type_url, |t| {
                    t.last_nack = Some((version, msg))
                });
            }
            None => self.nodes.update(node, self.stream, type_url, |t| {
                t.acked_version = Some(version)
            }),
        }
    }

    /// Sends a response, waiting only this stream's task when the client is slow, and records
    /// it. `changed_at`: when the registry change this response carries was seen, for a push
    /// (not for the answer to a subscription).
    async fn send(
        &mut self,
        type_url: &str,
        version: &str,
        rsp: R,
        changed_at: Option<std::time::Instant>,
    ) -> Result<(), Closed> {
        self.tx.send(Ok(rsp)).await.map_err(|_| Closed)?;
        self.nodes.pushed(type_url);
        if let Some(t) = changed_at {
            self.nodes
                .metrics
                .push_latency
                .observe(t.elapsed().as_secs_f64());
        }
        if let Some(node) = &self.node {
            let v = version.to_string();
            self.nodes
                .update(node, self.stream, type_url, |t| t.sent_version = Some(v));
        }
        Ok(())
    }
}

/// `text`, or its first `max` bytes (at a character boundary) and how long it was.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &text[..end], text.len())
}

impl<R> Drop for Conn<R> {
    fn drop(&mut self) {
        if let Some(n) = &self.node {
            self.nodes.disconnect(n, self.stream);
        }
    }
}

impl AdsServer {
    /// Serves one state-of-the-world stream; its responses.
    fn sotw(
        &self,
        input: Streaming<DiscoveryRequest>,
        peer: Option<std::net::IpAddr>,
    ) -> ReceiverStream<Result<SotwResponse, Status>> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let conn = Conn::new(self.snapshots.clone(), self.nodes.clone(), tx, false, peer);
        tokio::spawn(sotw::Stream::new(conn).run(input));
        ReceiverStream::new(rx)
    }

    /// Serves one delta stream; its responses.
    fn delta(
        &self,
        input: Streaming<DeltaDiscoveryRequest>,
        peer: Option<std::net::IpAddr>,
    ) -> ReceiverStream<Result<DeltaResponse, Status>> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let conn = Conn::new(self.snapshots.clone(), self.nodes.clone(), tx, true, peer);
        tokio::spawn(delta::Stream::new(conn).run(input));
        ReceiverStream::new(rx)
    }
}

#[cfg(test)]
mod tests;
