//! A delta (incremental) ADS stream: each response carries only the resources that changed
//! since the client last had them, and the names of those that went away.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use tonic::Streaming;
use weft_xds_proto::discovery::DeltaDiscoveryRequest;

use super::{Closed, Conn, DeltaResponse as DeltaDiscoveryResponse, MAX_SUBSCRIBED_NAMES, served};

/// One type on this stream.
#[derive(Debug, Default)]
struct Sub {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client has: name -> version (shared with the snapshot that was sent).
    has: BTreeMap<Arc<str>, Arc<str>>,
    nonce: String,
    /// The type version of the last response, reported as acknowledged when its nonce is.
    sent_version: String,
    responded: bool,
}

pub struct Stream {
    conn: Conn<DeltaDiscoveryResponse>,
    subs: BTreeMap<String, Sub>,
}

impl Stream {
    pub fn new(conn: Conn<DeltaDiscoveryResponse>) -> Self {
        Stream {
            conn,
            subs: BTreeMap::new(),
        }
    }

    /// Serves requests and snapshot changes in order until either side is gone.
    pub async fn run(mut self, mut input: Streaming<DeltaDiscoveryRequest>) {
        loop {
            let res = tokio::select! {
                req = input.message() => match req {
                    Ok(Some(r)) => self.handle(r).await,
                    _ => Err(Closed),
                },
                changed = self.conn.snaps.changed() => match changed {
                    Ok(()) => self.push_all().await,
                    Err(_) => Err(Closed),
                },
            };
            if res.is_err() {
                return;
            }
        }
    }

    async fn handle(&mut self, r: DeltaDiscoveryRequest) -> Result<(), Closed> {
        self.conn.node(&r.node);
        if !served(&r.type_url) {
            // Answered (no resources) when asked, its ACKs ignored, nothing of it kept.
            if !r.response_nonce.is_empty() {
                return Ok(());
            }
            let rsp = DeltaDiscoveryResponse {
                type_url: r.type_url.clone(),
                nonce: self.conn.next_nonce(),
                ..Default::default()
            };
            return self.conn.send(&r.type_url, "", rsp, None).await;
        }
        let new = !self.subs.contains_key(&r.type_url);
        let sub = self.subs.entry(r.type_url.clone()).or_default();
        if new {
            // A first request that names nothing subscribes to everything.
            sub.wildcard = r.resource_names_subscribe.is_empty();
            sub.has = r
                .initial_resource_versions
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect();
        }
        if !r.response_nonce.is_empty() && r.response_nonce == sub.nonce {
            self.conn.answered(
                &r.type_url,
                sub.sent_version.clone(),
                r.error_detail.as_ref(),
            );
        }
        let mut changed = new;
        for n in r.resource_names_subscribe {
            changed = true;
            if n == "*" {
                sub.wildcard = true;
            } else {
                // A name subscribed again is sent again.
                sub.has.remove(n.as_str());
                sub.names.insert(n);
            }
        }
        for n in r.resource_names_unsubscribe {
            if n == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(&n);
                sub.has.remove(n.as_str());
            }
        }
        if sub.names.len() > MAX_SUBSCRIBED_NAMES || sub.has.len() > MAX_SUBSCRIBED_NAMES {
            let _ = self
                .conn
                .tx
                .send(Err(tonic::Status::resource_exhausted(format!(
                    "more than {MAX_SUBSCRIBED_NAMES} resource names subscribed for {}",
                    r.type_url
                ))))
                .await;
            return Err(Closed);
        }
        if changed {
            self.push(&r.type_url, false).await?;
        }
        Ok(())
    }

    async fn push_all(&mut self) -> Result<(), Closed> {
        let types: Vec<String> = self.subs.keys().cloned().collect();
        for t in types {
            self.push(&t, true).await?;
        }
        Ok(())
    }

    /// Sends what changed for the type; the first response for a type is sent even if empty.
    /// `change`: a push after a snapshot change (not an answer to a subscription).
    async fn push(&mut self, type_url: &str, change: bool) -> Result<(), Closed> {
        let snap = self.conn.snaps.borrow().clone();
        let set = snap.view(type_url, &self.conn.namespace);
        let Some(sub) = self.subs.get_mut(type_url) else {
            return Ok(());
        };
        let wanted = |name: &str| sub.wildcard || sub.names.contains(name);
        let mut resources = Vec::new();
        let mut sent = Vec::new();
        for (name, v) in set.resources() {
            if wanted(name) && sub.has.get(name) != Some(&v.version) {
                resources.push(v.delta.clone());
                sent.push((name.clone(), v.version.clone()));
            }
        }
        let removed: Vec<Arc<str>> = sub
            .has
            .keys()
            .filter(|n| !set.contains(n))
            .cloned()
            .collect();
        if resources.is_empty() && removed.is_empty() && sub.responded {
            return Ok(());
        }
        sub.has.extend(sent);
        for n in &removed {
            sub.has.remove(n);
        }
        let removed = removed.iter().map(|n| n.to_string()).collect();
        let nonce = self.conn.next_nonce();
        let version = set.version();
        let rsp = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce: nonce.clone(),
        };
        let changed_at = if change { snap.changed_at } else { None };
        self.conn.send(type_url, &version, rsp, changed_at).await?;
        sub.nonce = nonce;
        sub.sent_version = version;
        sub.responded = true;
        Ok(())
    }
}
