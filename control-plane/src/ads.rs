//! The Aggregated Discovery Service: every proxy (or any standard xDS client) opens one stream
//! and receives listeners, routes, clusters and endpoints on it, state-of-the-world or delta.
//!
//! Each stream runs in a task of its own and always sends the latest snapshot: a slow or stuck
//! client holds back only its own stream, and it skips intermediate versions instead of
//! queueing them. Per node the server records what was sent, acknowledged and rejected (NACK,
//! with the client's error text) for `proxy-status` (`nodes`).

mod delta;
mod nodes;
mod sotw;
mod wire;

pub use nodes::{MAX_NODE_FIELD, NodeAbout, NodeStatus, Nodes, TypeStatus};
pub use wire::AdsService;
use wire::{DeltaResponse, SotwResponse};

use std::sync::Arc;

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
    /// The namespace the node says it is in (its metadata's `namespace`): it chooses which
    /// consumer routes it gets. A node could claim another namespace's, which only changes
    /// how its own requests are routed: authorization is the server sidecars'.
    namespace: String,
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
            namespace: String::new(),
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
        self.namespace = about.namespace.clone();
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
    let kept = weft_core::text::cut(text, max);
    format!("{kept}... ({} bytes in all)", text.len())
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
