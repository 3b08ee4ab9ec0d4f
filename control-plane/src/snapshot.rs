//! Versioned xDS resources, as the ADS server serves them.
//!
//! Every resource carries a version derived from its bytes, and every type a version derived
//! from its resources' names and versions: a type whose content did not change keeps its
//! version, so a state-of-the-world stream does not resend it and a delta stream sends only the
//! resources that changed.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use prometheus::IntCounter;
use prost::{Message, Name, encoding::encoded_len_varint};
use tokio::sync::watch;
use weft_xds_proto::{
    discovery::Resource,
    envoy::config::core::v3::Metadata,
    envoy::config::{
        cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
        route::v3::RouteConfiguration,
    },
    google::protobuf::{Struct, Value, value::Kind},
    type_url,
};

use crate::{registry, translate};

/// One resource with its version, encoded once for every stream that sends it.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub version: Arc<str>,
    /// The resource packed in an `Any`, encoded: what a state-of-the-world response carries
    /// (a slice of `delta`, which holds these bytes).
    pub sotw: Bytes,
    /// The resource as a delta `Resource` (its name, version and `Any`), encoded.
    pub delta: Bytes,
}

/// Resources are equal when their versions are: the packed bytes of equal content may differ
/// (protobuf maps encode in hash order).
impl PartialEq for Versioned {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
    }
}

/// The resources of one type, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeSet {
    pub version: String,
    pub resources: BTreeMap<Arc<str>, Versioned>,
}

/// Every resource the control plane serves at one moment.
#[derive(Debug, Clone, Default)]
pub struct XdsSnapshot {
    /// By type URL.
    pub types: BTreeMap<&'static str, TypeSet>,
    /// Route configurations that nodes in one namespace get instead of the same-named ones in
    /// `types` (consumer routes), by that namespace.
    pub namespaced: BTreeMap<String, TypeSet>,
    /// When the registry change that led to this snapshot was seen (`None` for the first):
    /// where push latency is measured from.
    pub changed_at: Option<Instant>,
}

/// Snapshots are equal when they serve the same resources, whenever they were made.
impl PartialEq for XdsSnapshot {
    fn eq(&self, other: &Self) -> bool {
        self.types == other.types && self.namespaced == other.namespaced
    }
}

/// FNV-1a, 64 bits: a short, stable digest for versions.
fn digest(parts: impl IntoIterator<Item = impl AsRef<[u8]>>) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for b in p.as_ref().iter().chain(&[0xff]) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// A `Struct`/`Value` written out with its keys sorted.
fn canonical_value(v: &Value, out: &mut String) {
    use std::fmt::Write;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => out.push_str("null"),
        Some(Kind::NumberValue(n)) => {
            let _ = write!(out, "{n:?}");
        }
        Some(Kind::StringValue(s)) => {
            let _ = write!(out, "{s:?}");
        }
        Some(Kind::BoolValue(b)) => {
            let _ = write!(out, "{b}");
        }
        Some(Kind::StructValue(s)) => canonical_struct(s, out),
        Some(Kind::ListValue(l)) => {
            out.push('[');
            for v in &l.values {
                canonical_value(v, out);
                out.push(',');
            }
            out.push(']');
        }
    }
}

fn canonical_struct(s: &Struct, out: &mut String) {
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    out.push('{');
    for k in keys {
        out.push_str(&format!("{k:?}:"));
        canonical_value(&s.fields[k], out);
        out.push(',');
    }
    out.push('}');
}

fn canonical_metadata(m: &Metadata) -> String {
    let mut out = String::new();
    let mut keys: Vec<&String> = m.filter_metadata.keys().collect();
    keys.sort();
    for k in keys {
        out.push_str(&format!("{k:?}="));
        canonical_struct(&m.filter_metadata[k], &mut out);
        out.push(';');
    }
    out
}

/// A resource's version: a digest of its encoding with its metadata taken out (protobuf maps
/// encode in hash order, so equal metadata can encode differently) and of that metadata
/// written with sorted keys. Equal content, equal version; any change, a new one.
fn version<M: prost::Message + Clone>(m: &M, metadata: fn(&mut M) -> Vec<Metadata>) -> String {
    let mut stripped = m.clone();
    let taken = metadata(&mut stripped);
    let parts = std::iter::once(stripped.encode_to_vec())
        .chain(taken.iter().map(|md| canonical_metadata(md).into_bytes()));
    digest(parts)
}

fn type_set<M: prost::Message + Name + Clone>(
    items: &[M],
    name: impl Fn(&M) -> &str,
    metadata: fn(&mut M) -> Vec<Metadata>,
) -> TypeSet {
    let resources: BTreeMap<Arc<str>, Versioned> = items
        .iter()
        .map(|m| {
            let any = translate::any(m);
            let version = version(m, metadata);
            let delta: Bytes = Resource {
                name: name(m).to_string(),
                version: version.clone(),
                resource: Some(any.clone()),
                ..Default::default()
            }
            .encode_to_vec()
            .into();
            // The `Any` is the delta `Resource`'s field 2, after its version (field 1): the
            // state-of-the-world form is a slice of the same bytes (the version, a digest, is
            // never empty, so field 1 is always there).
            let field = |len: usize| 1 + encoded_len_varint(len as u64);
            let start = field(version.len()) + version.len() + field(any.encoded_len());
            let v = Versioned {
                sotw: delta.slice(start..start + any.encoded_len()),
                delta,
                version: version.into(),
            };
            (name(m).into(), v)
        })
        .collect();
    let version = digest(
        resources
            .iter()
            .flat_map(|(n, v)| [n.as_bytes(), v.version.as_bytes()]),
    );
    TypeSet { version, resources }
}

impl XdsSnapshot {
    pub fn new(r: &translate::Resources) -> Self {
        let mut types = BTreeMap::new();
        // Where each type carries metadata (the only protobuf maps weft fills).
        types.insert(
            type_url::LISTENER,
            type_set(
                &r.listeners,
                |l: &Listener| &l.name,
                |l| l.metadata.take().into_iter().collect(),
            ),
        );
        let routes = |list| type_set(list, |c: &RouteConfiguration| &c.name, route_metadata);
        types.insert(type_url::ROUTE, routes(&r.routes));
        types.insert(
            type_url::CLUSTER,
            type_set(
                &r.clusters,
                |c: &Cluster| &c.name,
                |c| c.metadata.take().into_iter().collect(),
            ),
        );
        types.insert(
            type_url::ENDPOINT,
            type_set(
                &r.endpoints,
                |e: &ClusterLoadAssignment| &e.cluster_name,
                |e| {
                    e.endpoints
                        .iter_mut()
                        .flat_map(|l| l.lb_endpoints.iter_mut())
                        .map(|e| e.metadata.take().unwrap_or_default())
                        .collect()
                },
            ),
        );
        let namespaced = (r.consumer_routes.iter())
            .map(|(ns, list)| (ns.clone(), routes(list)))
            .collect();
        XdsSnapshot {
            types,
            namespaced,
            changed_at: None,
        }
    }

    pub fn get(&self, type_url: &str) -> Option<&TypeSet> {
        self.types.get(type_url)
    }

    /// The resources of a type as a node in `namespace` sees them.
    pub fn view(&self, type_url: &str, namespace: &str) -> View<'_> {
        let over = (type_url == type_url::ROUTE)
            .then(|| self.namespaced.get(namespace))
            .flatten();
        View {
            base: self.types.get(type_url),
            over,
        }
    }
}

/// Where route configurations carry metadata: their routes'.
fn route_metadata(c: &mut RouteConfiguration) -> Vec<Metadata> {
    (c.virtual_hosts.iter_mut())
        .flat_map(|vh| vh.routes.iter_mut())
        .map(|r| r.metadata.take().unwrap_or_default())
        .collect()
}

/// The resources of one type as the nodes of one namespace see them: the snapshot's, with
/// that namespace's variants (consumer routes) in place of those of the same name.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    base: Option<&'a TypeSet>,
    over: Option<&'a TypeSet>,
}

impl<'a> View<'a> {
    /// The type's version for these nodes: the snapshot's, and their variants' if any.
    pub fn version(&self) -> String {
        let base = self.base.map_or("", |b| &b.version);
        match self.over {
            Some(o) => format!("{base}+{}", o.version),
            None => base.to_string(),
        }
    }

    /// Every resource by name, in name order.
    pub fn resources(&self) -> impl Iterator<Item = (&'a Arc<str>, &'a Versioned)> + use<'a> {
        let over = self.over;
        (self.base.into_iter().flat_map(|b| b.resources.iter()))
            .map(move |(n, v)| (n, over.and_then(|o| o.resources.get(n)).unwrap_or(v)))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.base.is_some_and(|b| b.resources.contains_key(name))
    }
}

/// Turns registry snapshots into xDS snapshots. After a change it waits `debounce` for more,
/// so a burst of registry events produces one push; it publishes only when something changed.
/// `events` counts the registry changes seen (a burst the watch coalesced counts once).
/// `vips`: the VIPs the first snapshot was given, which hosts keep.
pub async fn publish(
    mut registry: watch::Receiver<Arc<registry::Snapshot>>,
    out: watch::Sender<Arc<XdsSnapshot>>,
    debounce: Duration,
    events: IntCounter,
    mut vips: translate::Vips,
) {
    let mut changed_at = None;
    loop {
        let snap = registry.borrow_and_update().clone();
        let mut xds = XdsSnapshot::new(&translate::translate_with(&snap, &mut vips));
        xds.changed_at = changed_at;
        out.send_if_modified(|cur| {
            let changed = **cur != xds;
            if changed {
                *cur = Arc::new(xds);
            }
            changed
        });
        if registry.changed().await.is_err() {
            return;
        }
        events.inc();
        changed_at = Some(Instant::now());
        tokio::time::sleep(debounce).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Snapshot;

    /// `a.test` with an endpoint of `weight`, `b.test` with one of weight 1.
    fn snap(weight: u32) -> Snapshot {
        let mut s = crate::registry::test_snapshot(&["a.test", "b.test"], 1);
        s.services.get_mut("a.test:80").unwrap().spec.endpoints[0].weight = weight;
        s
    }

    #[test]
    fn versions_change_only_with_content() {
        let one = XdsSnapshot::new(&translate::translate(&snap(1)));
        // Listeners carry two metadata keys (protocol, vip), which protobuf encodes in hash
        // order: translations of the same content must still agree, every time.
        for _ in 0..20 {
            let same = XdsSnapshot::new(&translate::translate(&snap(1)));
            assert_eq!(one, same);
        }
        let two = XdsSnapshot::new(&translate::translate(&snap(2)));
        let eds = |s: &XdsSnapshot| s.get(type_url::ENDPOINT).unwrap().clone();
        assert_ne!(
            eds(&one).version,
            eds(&two).version,
            "an endpoint weight changed"
        );
        assert_ne!(
            eds(&one).resources["a.test:80"],
            eds(&two).resources["a.test:80"]
        );
        assert_eq!(
            eds(&one).resources["b.test:80"],
            eds(&two).resources["b.test:80"]
        );
        for t in [type_url::LISTENER, type_url::ROUTE, type_url::CLUSTER] {
            assert_eq!(one.get(t), two.get(t), "{t} did not change");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_registry_changes_is_one_push() {
        let eds_version = |s: &XdsSnapshot| s.get(type_url::ENDPOINT).map(|t| t.version.clone());
        let (reg_tx, reg_rx) = watch::channel(Arc::new(snap(1)));
        let (out_tx, mut out_rx) = watch::channel(Arc::new(XdsSnapshot::default()));
        tokio::spawn(publish(
            reg_rx,
            out_tx,
            Duration::from_millis(100),
            IntCounter::new("events", "test").unwrap(),
            translate::Vips::default(),
        ));
        out_rx.changed().await.unwrap();
        out_rx.borrow_and_update();
        // Everything the publisher pushes from now on.
        let seen = tokio::spawn(async move {
            let mut seen = Vec::new();
            while out_rx.changed().await.is_ok() {
                seen.push(eds_version(&out_rx.borrow_and_update()));
            }
            seen
        });
        for w in 2..=10 {
            reg_tx.send(Arc::new(snap(w))).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(reg_tx);
        let last = XdsSnapshot::new(&translate::translate(&snap(10)));
        assert_eq!(
            seen.await.unwrap(),
            [eds_version(&last)],
            "one push, with the burst's last state"
        );
    }
}
