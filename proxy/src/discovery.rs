//! The ADS client: one stream to the control plane (delta by default, state of the world on
//! request) carrying listeners, routes, clusters and endpoints; each response is checked,
//! acknowledged or rejected, and the routing table recompiled and swapped in.
//!
//! - Each resource is checked on its own when it arrives. A bad one is rejected (NACK, naming
//!   it and the problem) and its previous version, if any, stays; the good ones of the same
//!   response apply. A state-of-the-world response with a resource that cannot even be decoded
//!   (so it cannot be named) removes nothing for being absent. A response is acknowledged only
//!   once the table built from it is in force; one rejected whole does not count as received.
//! - A listener whose routes, clusters or endpoints have not all arrived keeps its previous
//!   service (see [`xds::compile`]).
//! - Responses already waiting on the stream are applied together: one table per burst, not per
//!   resource type.
//! - Losing the control plane changes nothing in the data path: the table in force stays, and
//!   the client reconnects with exponential backoff and full jitter. On a delta stream it tells
//!   the control plane the versions it holds, so only what changed meanwhile is sent again.

mod settle;
pub(crate) mod state;
mod stream;
mod wire;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use weft_xds_proto::{
    discovery::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    },
    envoy::config::core::v3::Node,
};

use crate::{
    config::{DiscoveryConfig, XdsProtocol},
    metrics::Metrics,
    resolve::{Resolved, Resolver},
    table::{SharedTable, xds},
};
pub use state::{KINDS, State, Update};
use wire::{backoff, batch, delta_update, nack_status, node, sotw_update};

/// gRPC status INVALID_ARGUMENT, the code a NACK's error detail carries.
const INVALID_ARGUMENT: i32 = 3;

/// What `/config_dump` shows of the control-plane connection.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Status {
    pub control_plane: String,
    pub node_id: String,
    pub protocol: &'static str,
    pub connected: bool,
    /// Every resource type has arrived at least once.
    pub complete: bool,
    /// By kind: listener, route, cluster, endpoint.
    pub types: BTreeMap<&'static str, TypeStatus>,
    /// Listeners serving their previous version while something they reference is missing.
    pub held_back: Vec<String>,
    /// Why the last stream ended, or the last connection attempt failed.
    pub last_error: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct TypeStatus {
    /// The version last acknowledged.
    pub version: String,
    pub resources: usize,
    pub last_nack: Option<Nack>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Nack {
    pub version: String,
    pub error: String,
}

/// The connection status, shared with the admin server.
#[derive(Debug, Default)]
pub struct Shared {
    status: Mutex<Status>,
    /// Mirrors `Status::complete` for the readiness probe.
    complete: AtomicBool,
}

impl Shared {
    pub fn status(&self) -> Status {
        self.status.lock().expect("xds status lock").clone()
    }

    pub fn complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut s = self.status.lock().expect("xds status lock");
        f(&mut s);
        self.complete.store(s.complete, Ordering::Release);
    }
}

/// The ADS client.
pub struct Discovery {
    cfg: DiscoveryConfig,
    /// The control plane in use now: one of `urls`.
    url: String,
    /// Every replica given; a failed stream moves to the next.
    urls: Vec<String>,
    node: Node,
    /// How `https://` control planes are verified.
    tls: Option<Arc<rustls::ClientConfig>>,
    table: SharedTable,
    metrics: Arc<Metrics>,
    pub shared: Arc<Shared>,
    state: State,
    /// What the table in force was compiled from, so an update compiles only what it touches.
    incremental: xds::Incremental,
    /// What the responses applied since the last table changed.
    changed: xds::Changed,
    /// The answers the table in force was compiled against.
    resolved: Arc<Resolved>,
    resolver: Arc<Resolver>,
    /// Told when an endpoint host name resolves to new addresses.
    dns: watch::Receiver<u64>,
    /// What follows an apply: freed memory given back, metric series of gone services pruned.
    settle: settle::Settle,
}

/// The answer owed for one response.
struct Answer {
    kind: usize,
    nonce: String,
    /// The version to report: the response's when accepted, the one in force when not.
    version: String,
    error: Option<String>,
}

impl Discovery {
    /// `probe`: where the probe server (`/metrics`) listens; the node tells the control plane
    /// its port, which it lists for Prometheus' service discovery.
    pub fn new(
        cfg: DiscoveryConfig,
        probe: std::net::SocketAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
        table: SharedTable,
        metrics: Arc<Metrics>,
        resolver: Arc<Resolver>,
    ) -> Option<Self> {
        let urls: Vec<String> = cfg
            .control_plane
            .iter()
            .map(|a| {
                if a.contains("://") {
                    a.clone()
                } else {
                    format!("http://{a}")
                }
            })
            .collect();
        let url = urls.first()?.clone();
        let node = node(&cfg, probe);
        let shared = Arc::new(Shared::default());
        shared.update(|s| {
            s.control_plane = url.clone();
            s.node_id = node.id.clone();
            s.protocol = match cfg.xds_protocol {
                XdsProtocol::Delta => "delta",
                XdsProtocol::Sotw => "sotw",
            };
        });
        Some(Discovery {
            cfg,
            url,
            urls,
            node,
            tls,
            table,
            metrics,
            shared,
            state: State::default(),
            incremental: Default::default(),
            changed: Default::default(),
            resolved: Default::default(),
            dns: resolver.subscribe(),
            resolver,
            settle: settle::Settle::default(),
        })
    }

    /// Keeps a stream to the control plane open until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let mut progressed = false;
            let ended = tokio::select! {
                _ = stop.cancelled() => return,
                e = self.session(&mut progressed) => e,
            };
            self.metrics.xds_connected.set(0);
            self.shared.update(|s| {
                s.connected = false;
                s.last_error = Some(ended.clone());
            });
            if progressed {
                failures = 0;
            }
            // With several replicas, the next attempt goes to the next one: they serve the
            // same resources, so the proxy picks up where it was.
            if let Some(i) = self.urls.iter().position(|u| *u == self.url) {
                self.url = self.urls[(i + 1) % self.urls.len()].clone();
            }
            let url = self.url.clone();
            self.shared.update(|s| s.control_plane = url);
            let wait = backoff(
                self.cfg.xds_backoff_base,
                self.cfg.xds_backoff_max,
                failures,
            );
            failures = failures.saturating_add(1);
            tracing::warn!(next = %self.url, error = %ended, retry_in = ?wait, "xDS stream ended; serving the table in force");
            let retry = tokio::time::sleep(wait);
            tokio::pin!(retry);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = &mut retry => break,
                    Ok(()) = self.dns.changed() => self.publish(),
                }
            }
        }
    }

    /// One stream, from connecting to its end; returns why it ended. `progressed` is set once a
    /// response arrived (the backoff then starts over).
    async fn session(&mut self, progressed: &mut bool) -> String {
        let channel = match self.connect().await {
            Ok(c) => c,
            Err(e) => return e,
        };
        match self.cfg.xds_protocol {
            XdsProtocol::Delta => self.delta(channel, progressed).await,
            XdsProtocol::Sotw => self.sotw(channel, progressed).await,
        }
    }

    async fn connect(&self) -> Result<Channel, String> {
        crate::transport::grpc_channel(&self.url, self.tls.clone()).await
    }

    fn connected(&self) {
        tracing::info!(control_plane = %self.url, node = %self.node.id, "xDS stream open");
        self.metrics.xds_connected.set(1);
        self.shared.update(|s| {
            s.connected = true;
            s.last_error = None;
        });
    }

    async fn delta(&mut self, channel: Channel, progressed: &mut bool) -> String {
        let (tx, rx) = mpsc::unbounded_channel();
        for (i, kind) in KINDS.iter().enumerate() {
            let _ = tx.send(DeltaDiscoveryRequest {
                node: (i == 0).then(|| self.node.clone()),
                type_url: kind.type_url.to_string(),
                initial_resource_versions: (self.state.versions(i))
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            });
        }
        let max = self.cfg.xds_max_message_size;
        let stream = match stream::open::<_, DeltaDiscoveryResponse>(
            channel,
            stream::DELTA,
            rx,
            max,
        )
        .await
        {
            Ok(s) => s,
            Err(e) => return e,
        };
        self.follow(stream, progressed, delta_update, |a| {
            let _ = tx.send(DeltaDiscoveryRequest {
                type_url: KINDS[a.kind].type_url.to_string(),
                response_nonce: a.nonce,
                error_detail: a.error.map(nack_status),
                ..Default::default()
            });
        })
        .await
    }

    async fn sotw(&mut self, channel: Channel, progressed: &mut bool) -> String {
        let (tx, rx) = mpsc::unbounded_channel();
        for (i, kind) in KINDS.iter().enumerate() {
            let _ = tx.send(DiscoveryRequest {
                node: (i == 0).then(|| self.node.clone()),
                type_url: kind.type_url.to_string(),
                version_info: self.state.type_version(i).to_string(),
                ..Default::default()
            });
        }
        let max = self.cfg.xds_max_message_size;
        let stream =
            match stream::open::<_, DiscoveryResponse>(channel, stream::SOTW, rx, max).await {
                Ok(s) => s,
                Err(e) => return e,
            };
        self.follow(stream, progressed, sotw_update, |a| {
            let _ = tx.send(DiscoveryRequest {
                type_url: KINDS[a.kind].type_url.to_string(),
                version_info: a.version,
                response_nonce: a.nonce,
                error_detail: a.error.map(nack_status),
                ..Default::default()
            });
        })
        .await
    }

    /// Follows an open stream: applies each burst of responses and sends the answers, until the
    /// stream ends; returns why.
    async fn follow<R: prost::Message + Default>(
        &mut self,
        mut stream: stream::Responses<R>,
        progressed: &mut bool,
        update: fn(R) -> (Update, String),
        mut answer: impl FnMut(Answer),
    ) -> String {
        self.connected();
        loop {
            let (batch, ended) = tokio::select! {
                b = batch(&mut stream) => b,
                Ok(()) = self.dns.changed() => {
                    self.publish();
                    continue;
                }
            };
            if !batch.is_empty() {
                *progressed = true;
            }
            for a in self.apply(batch.into_iter().map(update)) {
                answer(a);
            }
            if let Some(e) = ended {
                return e;
            }
        }
    }

    /// Applies a burst of responses, publishes one table for all of them, and returns the
    /// answers to send (after the table is in force).
    fn apply(&mut self, batch: impl Iterator<Item = (Update, String)>) -> Vec<Answer> {
        let mut answers = Vec::new();
        let mut changed = false;
        for (update, nonce) in batch {
            let Some(kind) = KINDS.iter().position(|k| k.type_url == update.type_url) else {
                // A type weft did not ask for: say so, change nothing.
                tracing::warn!(type_url = %update.type_url, "xDS response for a type not subscribed to");
                continue;
            };
            let version = update.version.clone();
            let mut outcome = self.state.apply(kind, update);
            changed |= outcome.changed;
            for n in outcome.names.drain(..) {
                self.changed.mark(kind, n);
            }
            let name = KINDS[kind].name;
            self.metrics.xds_update(name, outcome.errors.is_empty());
            let error = (!outcome.errors.is_empty()).then(|| outcome.errors.join("; "));
            if let Some(e) = &error {
                tracing::warn!(kind = name, %version, error = %e, "xDS update rejected (NACK); the rest of it applies");
            } else {
                tracing::debug!(kind = name, %version, "xDS update accepted");
            }
            let resources = self.state.len(kind);
            let in_force = self.state.type_version(kind).to_string();
            self.shared.update(|s| {
                let t = s.types.entry(name).or_default();
                t.resources = resources;
                match &error {
                    None => t.version = in_force.clone(),
                    Some(e) => {
                        t.last_nack = Some(Nack {
                            version: version.clone(),
                            error: e.clone(),
                        })
                    }
                }
            });
            answers.push(Answer {
                kind,
                nonce,
                version: in_force,
                error,
            });
        }
        if changed {
            self.publish();
            self.settle.applied(&self.table, &self.metrics);
        }
        let complete = self.state.complete();
        self.shared.update(|s| s.complete = complete);
        answers
    }

    /// Compiles what changed into a new table and swaps it in.
    fn publish(&mut self) {
        let current = self.table.load_full();
        let generation = current.generation + 1;
        let version: Arc<str> = self.state.version().into();
        // Only the services using a host name whose addresses changed are compiled again.
        let resolved = self.resolver.resolved();
        if !Arc::ptr_eq(&resolved, &self.resolved) {
            let hosts = resolved.changed_from(&self.resolved).map(Box::from);
            self.changed.hosts.extend(hosts);
            self.resolved = resolved.clone();
        }
        let compiled = self.incremental.update(
            self.state.resources(),
            &std::mem::take(&mut self.changed),
            version.clone(),
            generation,
            &self.metrics,
            &current,
            &resolved,
        );
        let services = compiled.table.service_count();
        self.table.store(Arc::new(compiled.table));
        self.resolver.table_changed();
        self.settle.published(&self.table, &self.metrics);
        self.metrics.table_loaded(&version, generation, services);
        // Listeners arrive before their RouteConfigurations: at start, every one waits a moment,
        // so one line says how many (each is at debug level, and all are in `/config_dump`).
        for h in &compiled.held_back {
            tracing::debug!(waiting = %h, "listener keeps its previous routes until what it references arrives");
        }
        if let Some(first) = compiled.held_back.first() {
            let listeners = compiled.held_back.len();
            tracing::info!(listeners, first = %first, "listeners keep their previous routes until what they reference arrives");
        }
        tracing::info!(%version, generation, services, "routing table updated from xDS");
        self.shared.update(|s| s.held_back = compiled.held_back);
    }
}

#[cfg(test)]
mod tests;
