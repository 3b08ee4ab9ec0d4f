//! A delta (incremental) ADS stream: each response carries only the resources that changed
//! since the client last had them, and the names of those that went away.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use weft_xds_proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};

use super::{Nodes, node_id};
use crate::snapshot::XdsSnapshot;

/// One type on this stream.
#[derive(Debug, Default)]
struct Sub {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client has: name -> version.
    has: BTreeMap<String, String>,
    nonce: String,
    /// The type version of the last response, reported as acknowledged when its nonce is.
    sent_version: String,
    responded: bool,
}

pub struct Stream {
    snaps: watch::Receiver<Arc<XdsSnapshot>>,
    nodes: Arc<Nodes>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    node: Option<String>,
    subs: BTreeMap<String, Sub>,
    nonce: u64,
}

struct Closed;

impl Stream {
    pub fn new(
        snaps: watch::Receiver<Arc<XdsSnapshot>>,
        nodes: Arc<Nodes>,
        tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> Self {
        Stream {
            snaps,
            nodes,
            tx,
            node: None,
            subs: BTreeMap::new(),
            nonce: 0,
        }
    }

    pub async fn run(mut self, mut input: Streaming<DeltaDiscoveryRequest>) {
        loop {
            let res = tokio::select! {
                req = input.message() => match req {
                    Ok(Some(r)) => self.handle(r).await,
                    _ => Err(Closed),
                },
                changed = self.snaps.changed() => match changed {
                    Ok(()) => self.push_all().await,
                    Err(_) => Err(Closed),
                },
            };
            if res.is_err() {
                break;
            }
        }
        if let Some(n) = &self.node {
            self.nodes.disconnect(n);
        }
    }

    async fn handle(&mut self, r: DeltaDiscoveryRequest) -> Result<(), Closed> {
        let node = match &self.node {
            Some(n) => n.clone(),
            None => {
                let id = node_id(&r.node);
                self.nodes.connect(&id, true);
                self.node = Some(id.clone());
                id
            }
        };
        let new = !self.subs.contains_key(&r.type_url);
        let sub = self.subs.entry(r.type_url.clone()).or_default();
        if new {
            // A first request that names nothing subscribes to everything.
            sub.wildcard = r.resource_names_subscribe.is_empty();
            sub.has = r.initial_resource_versions.into_iter().collect();
        }
        if !r.response_nonce.is_empty() && r.response_nonce == sub.nonce {
            let version = sub.sent_version.clone();
            match &r.error_detail {
                Some(err) => {
                    tracing::warn!(%node, type_url = %r.type_url, %version, error = %err.message, "xDS NACK (delta)");
                    self.nodes.nacked(&r.type_url);
                    let msg = err.message.clone();
                    self.nodes
                        .update(&node, &r.type_url, |t| t.last_nack = Some((version, msg)));
                }
                None => self
                    .nodes
                    .update(&node, &r.type_url, |t| t.acked_version = Some(version)),
            }
        }
        let mut changed = new;
        for n in r.resource_names_subscribe {
            changed = true;
            if n == "*" {
                sub.wildcard = true;
            } else {
                // A name subscribed again is sent again.
                sub.has.remove(&n);
                sub.names.insert(n);
            }
        }
        for n in r.resource_names_unsubscribe {
            if n == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(&n);
                sub.has.remove(&n);
            }
        }
        if changed {
            self.push(&r.type_url).await?;
        }
        Ok(())
    }

    async fn push_all(&mut self) -> Result<(), Closed> {
        let types: Vec<String> = self.subs.keys().cloned().collect();
        for t in types {
            self.push(&t).await?;
        }
        Ok(())
    }

    /// Sends what changed for the type; the first response for a type is sent even if empty.
    async fn push(&mut self, type_url: &str) -> Result<(), Closed> {
        let snap = self.snaps.borrow().clone();
        let set = snap.get(type_url);
        let Some(sub) = self.subs.get_mut(type_url) else {
            return Ok(());
        };
        let wanted = |name: &str| sub.wildcard || sub.names.contains(name);
        let mut resources = Vec::new();
        for (name, v) in set.into_iter().flat_map(|s| s.resources.iter()) {
            if wanted(name) && sub.has.get(name) != Some(&v.version) {
                resources.push(Resource {
                    name: name.clone(),
                    version: v.version.clone(),
                    resource: Some(v.any.clone()),
                    ..Default::default()
                });
            }
        }
        let removed: Vec<String> = sub
            .has
            .keys()
            .filter(|n| set.is_none_or(|s| !s.resources.contains_key(*n)))
            .cloned()
            .collect();
        if resources.is_empty() && removed.is_empty() && sub.responded {
            return Ok(());
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let version = set.map_or_else(String::new, |s| s.version.clone());
        for r in &resources {
            sub.has.insert(r.name.clone(), r.version.clone());
        }
        for n in &removed {
            sub.has.remove(n);
        }
        let rsp = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce: nonce.clone(),
            ..Default::default()
        };
        self.tx.send(Ok(rsp)).await.map_err(|_| Closed)?;
        self.nodes.pushed(type_url);
        sub.nonce = nonce;
        sub.sent_version = version.clone();
        sub.responded = true;
        if let Some(node) = &self.node {
            self.nodes
                .update(node, type_url, |t| t.sent_version = Some(version));
        }
        Ok(())
    }
}
