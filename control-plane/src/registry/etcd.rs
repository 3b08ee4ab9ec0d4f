//! The etcd v3 registry: documents and leased endpoint registrations under one key prefix
//! (default `/weft/`), watched from the revision last seen.
//!
//! | key | value |
//! | --- | --- |
//! | `<prefix>config/<any name>` | `Service` and `TrafficPolicy` documents, the file registry's schema (YAML or JSON, `---`-separated) |
//! | `<prefix>endpoints/<namespace>/<service>/<instance>` | one endpoint registration (JSON, [`Registration`]), written with a lease by the workload it describes |
//!
//! A registration joins the service `<namespace>/<service>` (the `Service` document with that
//! namespace and name) when there is one, else it implies one: host
//! `<service>.<namespace>.svc.cluster.local`, port and protocol from the registration. A
//! registration whose owner stops renewing its lease disappears with the lease.
//!
//! As in the file registry, a key whose value is bad keeps its last good value in force and
//! the problem is reported; nothing registered is lost because of a bad write.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use weft_core::{
    address::EndpointAddress,
    etcd::{self, Client, Event},
};

use super::{
    Endpoint, Protocol, Service, ServiceSpec, Snapshot,
    file::{self, Contents},
};

/// What a workload writes under `<prefix>endpoints/<namespace>/<service>/<instance>`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Registration {
    /// Where the workload (its sidecar's inbound port) is reached: `IP:PORT`, or `HOST:PORT`
    /// for a workload outside the mesh known by name.
    pub address: EndpointAddress,
    /// The service port clients address (`host:port`).
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default = "yes")]
    pub healthy: bool,
    #[serde(default)]
    pub identity: Option<String>,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default)]
struct Doc {
    text: String,
    good: Option<Contents>,
    error: Option<String>,
}

#[derive(Debug)]
pub struct EtcdRegistry {
    client: Client,
    prefix: String,
    docs: BTreeMap<String, Doc>,
    /// By key: the last good registration, and the problem with the current value.
    regs: BTreeMap<String, (Option<Registration>, Option<String>)>,
    /// The store revision everything above reflects.
    pub revision: i64,
    /// Problems in force (bad values, conflicts), for logs and status.
    pub errors: Vec<String>,
}

impl EtcdRegistry {
    pub fn new(client: Client, prefix: &str) -> Self {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        EtcdRegistry {
            client,
            prefix,
            docs: BTreeMap::new(),
            regs: BTreeMap::new(),
            revision: 0,
            errors: Vec::new(),
        }
    }

    /// Reads everything under the prefix, replacing what was held; returns the snapshot.
    pub async fn load(&mut self) -> Result<Snapshot, etcd::Error> {
        let (kvs, revision) = self.client.range_prefix(&self.prefix).await?;
        let (old_docs, old_regs) = (
            std::mem::take(&mut self.docs),
            std::mem::take(&mut self.regs),
        );
        for kv in kvs {
            // A bad value keeps the good one it replaced, across reloads too.
            if let Some(d) = old_docs.get(&kv.key) {
                self.docs.insert(
                    kv.key.clone(),
                    Doc {
                        text: d.text.clone(),
                        good: d.good.clone(),
                        error: None,
                    },
                );
            }
            if let Some(r) = old_regs.get(&kv.key) {
                self.regs.insert(kv.key.clone(), r.clone());
            }
            self.take(&kv);
        }
        self.revision = revision;
        Ok(self.assemble())
    }

    /// Takes one key's value; a bad value (not UTF-8, not a valid document or registration) is
    /// an error naming the key, and the key's last good value stays.
    fn take(&mut self, kv: &etcd::KeyValue) {
        if !kv.binary {
            return self.put(&kv.key, &kv.value);
        }
        let Some(rest) = kv.key.strip_prefix(&self.prefix) else {
            return;
        };
        let error = format!("{}: the value is not UTF-8 text", kv.key);
        if rest.starts_with("config/") {
            let doc = self.docs.entry(kv.key.clone()).or_default();
            // Forgotten, so the next good value is read again.
            doc.text.clear();
            doc.error = Some(error);
        } else if rest.starts_with("endpoints/") {
            self.regs.entry(kv.key.clone()).or_default().1 = Some(error);
        }
    }

    fn put(&mut self, key: &str, value: &str) {
        let Some(rest) = key.strip_prefix(&self.prefix) else {
            return;
        };
        if rest.starts_with("config/") {
            let doc = self.docs.entry(key.to_string()).or_default();
            if doc.text == value && doc.good.is_some() {
                return;
            }
            doc.text = value.to_string();
            match file::parse_documents(key, value) {
                Ok(c) => {
                    doc.good = Some(c);
                    doc.error = None;
                }
                Err(e) => doc.error = Some(e),
            }
        } else if rest.starts_with("endpoints/") {
            let entry = self.regs.entry(key.to_string()).or_default();
            match registration_key(rest).and_then(|_| {
                serde_json::from_str::<Registration>(value).map_err(|e| format!("{key}: {e}"))
            }) {
                Ok(r) => *entry = (Some(r), None),
                Err(e) => entry.1 = Some(e),
            }
        }
    }

    fn delete(&mut self, key: &str) {
        self.docs.remove(key);
        self.regs.remove(key);
    }

    /// Applies a batch of watch events; returns the new snapshot.
    pub fn apply(&mut self, events: Vec<Event>, revision: i64) -> Snapshot {
        for e in events {
            match e {
                Event::Put(kv) => self.take(&kv),
                Event::Delete { key, .. } => self.delete(&key),
            }
        }
        self.revision = revision;
        self.assemble()
    }

    fn assemble(&mut self) -> Snapshot {
        let (mut snap, mut errors) = file::assemble(
            self.docs
                .iter()
                .map(|(k, d)| (k.clone(), d.good.as_ref(), d.error.as_deref())),
        );
        let prefix_len = self.prefix.len();
        for (key, (good, error)) in &self.regs {
            if let Some(e) = error {
                errors.push(format!(
                    "{e} ({})",
                    if good.is_some() {
                        "its last good value stays in force"
                    } else {
                        "not registered"
                    }
                ));
            }
            let Some(r) = good else { continue };
            let Ok((ns, name)) = registration_key(&key[prefix_len..]) else {
                continue;
            };
            let svc_key = format!("{ns}/{name}");
            let existing = snap.services.values_mut().find(|s| s.key == svc_key);
            let svc = match existing {
                Some(s) if s.spec.port != r.port => {
                    errors.push(format!(
                        "{key}: port {} does not match service {svc_key}'s port {} (not registered)",
                        r.port, s.spec.port
                    ));
                    continue;
                }
                Some(s) => s,
                None => {
                    let host = format!("{name}.{ns}.svc.cluster.local");
                    let authority = format!("{host}:{}", r.port);
                    snap.services.entry(authority).or_insert_with(|| Service {
                        key: svc_key.clone(),
                        host,
                        spec: ServiceSpec {
                            host: None,
                            port: r.port,
                            aliases: Vec::new(),
                            vip: None,
                            protocol: r.protocol,
                            endpoints: Vec::new(),
                        },
                    })
                }
            };
            svc.spec.endpoints.push(Endpoint {
                address: r.address.clone(),
                weight: r.weight,
                labels: r.labels.clone(),
                healthy: r.healthy,
                identity: r.identity.clone(),
            });
        }
        self.errors = errors;
        snap
    }

    /// Loads until it succeeds (the control plane serves nothing before), then returns the
    /// first snapshot.
    pub async fn first_load(&mut self) -> Snapshot {
        let mut delay = Duration::from_millis(250);
        loop {
            match self.load().await {
                Ok(s) => return s,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "etcd registry: cannot load yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Watches the prefix and publishes every change on `tx` until every receiver is gone.
    /// A broken watch is resumed from the revision after the last one seen; when that revision
    /// has been compacted away, everything is read again.
    pub async fn run(
        mut self,
        tx: watch::Sender<Arc<Snapshot>>,
        on_errors: impl Fn(&[String]) + Send + 'static,
    ) {
        let mut reported = self.errors.clone();
        let mut delay = Duration::from_millis(100);
        let mut reload = false;
        loop {
            if tx.is_closed() {
                return;
            }
            if reload {
                match self.load().await {
                    Ok(snap) => {
                        reload = false;
                        self.publish(&tx, snap, &mut reported, &on_errors);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?delay, "etcd registry: reload failed; keeping what is registered");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            let mut w = match self
                .client
                .watch_prefix(&self.prefix, self.revision + 1)
                .await
            {
                Ok(w) => w,
                Err(etcd::Error::Compacted { .. }) => {
                    reload = true;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "etcd registry: cannot watch; keeping what is registered");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            tracing::info!(revision = self.revision, "etcd registry: watching");
            loop {
                match w.next().await {
                    Ok((events, revision)) => {
                        // Only a watch that delivers resets the backoff.
                        delay = Duration::from_millis(100);
                        let snap = self.apply(events, revision);
                        self.publish(&tx, snap, &mut reported, &on_errors);
                    }
                    Err(etcd::Error::Compacted { .. }) => {
                        reload = true;
                        break;
                    }
                    Err(e) => {
                        // Resumed after a backoff: a watch that breaks at once (the same
                        // revision failing again) does not spin.
                        tracing::warn!(error = %e, revision = self.revision, retry_in = ?delay, "etcd registry: watch broken; resuming");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                        break;
                    }
                }
            }
        }
    }

    fn publish(
        &self,
        tx: &watch::Sender<Arc<Snapshot>>,
        snap: Snapshot,
        reported: &mut Vec<String>,
        on_errors: &impl Fn(&[String]),
    ) {
        if self.errors != *reported {
            for e in &self.errors {
                tracing::warn!(error = %e, "etcd registry");
            }
            on_errors(&self.errors);
            *reported = self.errors.clone();
        }
        tx.send_if_modified(|cur| {
            let changed = **cur != snap;
            if changed {
                *cur = Arc::new(snap);
            }
            changed
        });
    }
}

/// `endpoints/<namespace>/<service>/<instance>` -> (namespace, service).
fn registration_key(rest: &str) -> Result<(&str, &str), String> {
    let parts: Vec<&str> = rest.split('/').collect();
    match parts[..] {
        ["endpoints", ns, svc, inst] if !ns.is_empty() && !svc.is_empty() && !inst.is_empty() => {
            Ok((ns, svc))
        }
        _ => Err(format!(
            "`{rest}`: registration keys are endpoints/<namespace>/<service>/<instance>"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_keys() {
        assert_eq!(
            registration_key("endpoints/demo/web/pod-1"),
            Ok(("demo", "web"))
        );
        assert!(registration_key("endpoints/demo/web").is_err());
        assert!(registration_key("endpoints//web/x").is_err());
    }

    #[test]
    fn registrations_join_their_service_or_imply_one() {
        let mut r = EtcdRegistry::new(Client::new(&[]), "/weft");
        let reg = |addr: &str, port: u16| {
            serde_json::json!({"address": addr, "port": port, "labels": {"version": "v2"}})
                .to_string()
        };
        r.put(
            "/weft/config/web",
            "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {port: 8080, aliases: [web]}\n",
        );
        r.put("/weft/endpoints/demo/web/a", &reg("10.0.0.1:15006", 8080));
        r.put("/weft/endpoints/demo/api/b", &reg("10.0.0.2:15006", 9090));
        r.put("/weft/endpoints/demo/web/c", &reg("10.0.0.3:15006", 1234));
        r.put("/weft/endpoints/demo/web/d", "{\"address\": \"nowhere\"}");
        let snap = r.assemble();
        let web = &snap.services["web.demo.svc.cluster.local:8080"];
        assert_eq!(web.spec.aliases, ["web"]);
        assert_eq!(web.spec.endpoints.len(), 1);
        assert_eq!(web.spec.endpoints[0].labels["version"], "v2");
        let api = &snap.services["api.demo.svc.cluster.local:9090"];
        assert_eq!(api.key, "demo/api");
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
        assert!(r.errors[0].contains("port 1234 does not match service demo/web's port 8080"));
        assert!(
            r.errors[1].starts_with("/weft/endpoints/demo/web/d: "),
            "{:?}",
            r.errors
        );

        // Deleted with its lease: gone.
        let snap = r.apply(
            vec![Event::Delete {
                key: "/weft/endpoints/demo/api/b".into(),
                mod_revision: 9,
            }],
            9,
        );
        assert!(
            !snap
                .services
                .contains_key("api.demo.svc.cluster.local:9090")
        );
        assert_eq!(r.revision, 9);
    }
}
