//! A state-of-the-world ADS stream: each response carries every resource of its type that the
//! client subscribed to (all of them for a wildcard subscription).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use weft_xds_proto::discovery::{DiscoveryRequest, DiscoveryResponse};

use super::{Nodes, node_id};
use crate::snapshot::XdsSnapshot;

/// One type on this stream.
#[derive(Debug, Default)]
struct Sub {
    /// Empty: every resource of the type (wildcard).
    names: BTreeSet<String>,
    sent_version: Option<String>,
    nonce: String,
}

pub struct Stream {
    snaps: watch::Receiver<Arc<XdsSnapshot>>,
    nodes: Arc<Nodes>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    node: Option<String>,
    subs: BTreeMap<String, Sub>,
    nonce: u64,
}

/// The client went away.
struct Closed;

impl Stream {
    pub fn new(
        snaps: watch::Receiver<Arc<XdsSnapshot>>,
        nodes: Arc<Nodes>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
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

    pub async fn run(mut self, mut input: Streaming<DiscoveryRequest>) {
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

    async fn handle(&mut self, r: DiscoveryRequest) -> Result<(), Closed> {
        let node = match &self.node {
            Some(n) => n.clone(),
            None => {
                let id = node_id(&r.node);
                self.nodes.connect(&id, false);
                self.node = Some(id.clone());
                id
            }
        };
        let sub = self.subs.entry(r.type_url.clone()).or_default();
        if !r.response_nonce.is_empty() {
            if r.response_nonce != sub.nonce {
                // An answer to a response that has been superseded: nothing to act on.
                return Ok(());
            }
            match &r.error_detail {
                Some(err) => {
                    let refused = sub.sent_version.clone().unwrap_or_default();
                    tracing::warn!(%node, type_url = %r.type_url, version = %refused, error = %err.message, "xDS NACK");
                    self.nodes.nacked(&r.type_url);
                    let msg = err.message.clone();
                    self.nodes.update(&node, &r.type_url, |t| {
                        t.last_nack = Some((refused, msg));
                    });
                }
                None => {
                    let v = r.version_info.clone();
                    self.nodes
                        .update(&node, &r.type_url, |t| t.acked_version = Some(v));
                }
            }
        }
        let names: BTreeSet<String> = r.resource_names.into_iter().filter(|n| n != "*").collect();
        let first = sub.sent_version.is_none();
        let resubscribed = names != sub.names;
        sub.names = names;
        if first || resubscribed {
            self.push(&r.type_url, true).await?;
        }
        Ok(())
    }

    async fn push_all(&mut self) -> Result<(), Closed> {
        let types: Vec<String> = self.subs.keys().cloned().collect();
        for t in types {
            self.push(&t, false).await?;
        }
        Ok(())
    }

    /// Sends the type's resources if its version changed since the last response (or always,
    /// with `force`).
    async fn push(&mut self, type_url: &str, force: bool) -> Result<(), Closed> {
        let snap = self.snaps.borrow().clone();
        let set = snap.get(type_url);
        let version = set.map_or_else(String::new, |s| s.version.clone());
        let Some(sub) = self.subs.get_mut(type_url) else {
            return Ok(());
        };
        if !force && sub.sent_version.as_deref() == Some(&version) {
            return Ok(());
        }
        let resources = set
            .into_iter()
            .flat_map(|s| s.resources.iter())
            .filter(|(name, _)| sub.names.is_empty() || sub.names.contains(*name))
            .map(|(_, v)| v.any.clone())
            .collect();
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let rsp = DiscoveryResponse {
            version_info: version.clone(),
            resources,
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        // Waits only this stream's task when the client is slow.
        self.tx.send(Ok(rsp)).await.map_err(|_| Closed)?;
        self.nodes.pushed(type_url);
        sub.sent_version = Some(version.clone());
        sub.nonce = nonce;
        if let Some(node) = &self.node {
            self.nodes
                .update(node, type_url, |t| t.sent_version = Some(version));
        }
        Ok(())
    }
}
