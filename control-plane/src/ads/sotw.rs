//! A state-of-the-world ADS stream: each response carries every resource of its type that the
//! client subscribed to (all of them for a wildcard subscription).

use std::collections::{BTreeMap, BTreeSet};

use tonic::Streaming;
use weft_xds_proto::discovery::DiscoveryRequest;

use super::{Closed, Conn, SotwResponse as DiscoveryResponse, served};

/// One type on this stream.
#[derive(Debug, Default)]
struct Sub {
    /// Empty: every resource of the type (wildcard).
    names: BTreeSet<String>,
    sent_version: Option<String>,
    nonce: String,
}

pub struct Stream {
    conn: Conn<DiscoveryResponse>,
    subs: BTreeMap<String, Sub>,
}

impl Stream {
    pub fn new(conn: Conn<DiscoveryResponse>) -> Self {
        Stream {
            conn,
            subs: BTreeMap::new(),
        }
    }

    /// Serves requests and snapshot changes in order until either side is gone.
    pub async fn run(mut self, mut input: Streaming<DiscoveryRequest>) {
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

    async fn handle(&mut self, r: DiscoveryRequest) -> Result<(), Closed> {
        self.conn.node(&r.node);
        if !served(&r.type_url) {
            // Answered (no resources) when asked, its ACKs ignored, nothing of it kept: the
            // client chooses the name.
            if !r.response_nonce.is_empty() {
                return Ok(());
            }
            let rsp = DiscoveryResponse {
                type_url: r.type_url.clone(),
                nonce: self.conn.next_nonce(),
                ..Default::default()
            };
            return self.conn.send(&r.type_url, "", rsp, None).await;
        }
        let sub = self.subs.entry(r.type_url.clone()).or_default();
        if !r.response_nonce.is_empty() {
            if r.response_nonce != sub.nonce {
                // An answer to a response that has been superseded: nothing to act on.
                return Ok(());
            }
            let version = match &r.error_detail {
                Some(_) => sub.sent_version.clone().unwrap_or_default(),
                None => r.version_info.clone(),
            };
            self.conn
                .answered(&r.type_url, version, r.error_detail.as_ref());
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
        let snap = self.conn.snaps.borrow().clone();
        let set = snap.view(type_url, &self.conn.namespace);
        let version = set.version();
        let Some(sub) = self.subs.get_mut(type_url) else {
            return Ok(());
        };
        if !force && sub.sent_version.as_deref() == Some(&version) {
            return Ok(());
        }
        let resources = (set.resources())
            .filter(|(name, _)| sub.names.is_empty() || sub.names.contains(&**name as &str))
            .map(|(_, v)| v.sotw.clone())
            .collect();
        let nonce = self.conn.next_nonce();
        let rsp = DiscoveryResponse {
            version_info: version.clone(),
            resources,
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
        };
        let changed_at = if force { None } else { snap.changed_at };
        self.conn.send(type_url, &version, rsp, changed_at).await?;
        sub.sent_version = Some(version);
        sub.nonce = nonce;
        Ok(())
    }
}
