//! The Aggregated Discovery Service: every proxy (or any standard xDS client) opens one stream
//! and receives listeners, routes, clusters and endpoints on it, state-of-the-world or delta.
//!
//! Each stream runs in a task of its own and always sends the latest snapshot: a slow or stuck
//! client holds back only its own stream, and it skips intermediate versions instead of
//! queueing them. Per node the server records what was sent, acknowledged and rejected (NACK,
//! with the client's error text) for `proxy-status`.

mod delta;
mod sotw;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use weft_xds_proto::{
    discovery::{
        AggregatedDiscoveryService, DeltaDiscoveryRequest, DeltaDiscoveryResponse,
        DiscoveryRequest, DiscoveryResponse,
    },
    google::rpc,
};

use crate::{metrics::Metrics, snapshot::XdsSnapshot};

/// Responses a stream may have queued for a slow client before its task waits.
const STREAM_BUFFER: usize = 4;

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
    /// By type URL.
    pub types: BTreeMap<String, TypeStatus>,
}

/// Status of every node that opened a stream, by node id, and the metrics it feeds.
#[derive(Debug, Default)]
pub struct Nodes {
    status: Mutex<BTreeMap<String, NodeStatus>>,
    pub metrics: Arc<Metrics>,
}

impl Nodes {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Nodes {
            status: Mutex::default(),
            metrics,
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, NodeStatus> {
        self.status.lock().expect("nodes lock").clone()
    }

    fn connect(&self, node: &str, delta: bool) {
        self.metrics.connected_proxies.inc();
        self.status.lock().expect("nodes lock").insert(
            node.to_string(),
            NodeStatus {
                connected: true,
                delta,
                since: SystemTime::now(),
                types: BTreeMap::new(),
            },
        );
    }

    fn update(&self, node: &str, type_url: &str, f: impl FnOnce(&mut TypeStatus)) {
        if let Some(n) = self.status.lock().expect("nodes lock").get_mut(node) {
            f(n.types.entry(type_url.to_string()).or_default());
        }
    }

    fn disconnect(&self, node: &str) {
        self.metrics.connected_proxies.dec();
        if let Some(n) = self.status.lock().expect("nodes lock").get_mut(node) {
            n.connected = false;
        }
    }

    fn pushed(&self, type_url: &str) {
        self.metrics.pushes.with_label_values(&[type_url]).inc();
    }

    fn nacked(&self, type_url: &str) {
        self.metrics.nacks.with_label_values(&[type_url]).inc();
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
    node: Option<String>,
    delta: bool,
    nonce: u64,
}

impl<R: Send> Conn<R> {
    fn new(
        snaps: watch::Receiver<Arc<XdsSnapshot>>,
        nodes: Arc<Nodes>,
        tx: mpsc::Sender<Result<R, Status>>,
        delta: bool,
    ) -> Self {
        Conn {
            snaps,
            nodes,
            tx,
            node: None,
            delta,
            nonce: 0,
        }
    }

    /// The stream's node, registered with its first request (the id may be empty: such a
    /// client is served and reported under "").
    fn node(&mut self, node: &Option<weft_xds_proto::envoy::config::core::v3::Node>) -> String {
        if let Some(n) = &self.node {
            return n.clone();
        }
        let id = node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
        self.nodes.connect(&id, self.delta);
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
                tracing::warn!(%node, %type_url, %version, error = %err.message, delta = self.delta, "xDS NACK");
                self.nodes.nacked(type_url);
                let msg = err.message.clone();
                self.nodes
                    .update(node, type_url, |t| t.last_nack = Some((version, msg)));
            }
            None => self
                .nodes
                .update(node, type_url, |t| t.acked_version = Some(version)),
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
                .update(node, type_url, |t| t.sent_version = Some(v));
        }
        Ok(())
    }
}

impl<R> Drop for Conn<R> {
    fn drop(&mut self) {
        if let Some(n) = &self.node {
            self.nodes.disconnect(n);
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = sotw::Stream::new(Conn::new(
            self.snapshots.clone(),
            self.nodes.clone(),
            tx,
            false,
        ));
        tokio::spawn(stream.run(req.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = delta::Stream::new(Conn::new(
            self.snapshots.clone(),
            self.nodes.clone(),
            tx,
            true,
        ));
        tokio::spawn(stream.run(req.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests;
