//! The resources the ADS client holds, and how a response changes them. No I/O: the client
//! feeds responses in and sends the answers this returns.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use prost::{Message, Name};
use weft_xds_proto::{
    envoy::config::{
        cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
        route::v3::RouteConfiguration,
    },
    google::protobuf::Any,
    type_url,
};

use crate::table::{digest, xds};

/// A resource type the client subscribes to.
#[derive(Debug)]
pub struct ResourceKind {
    pub type_url: &'static str,
    /// For logs, metrics and errors: listener, route, cluster, endpoint.
    pub name: &'static str,
}

/// What the client subscribes to, in the order it subscribes: clusters and their endpoints
/// before the listeners and routes that name them.
pub const KINDS: [ResourceKind; 4] = [
    ResourceKind {
        type_url: type_url::CLUSTER,
        name: "cluster",
    },
    ResourceKind {
        type_url: type_url::ENDPOINT,
        name: "endpoint",
    },
    ResourceKind {
        type_url: type_url::LISTENER,
        name: "listener",
    },
    ResourceKind {
        type_url: type_url::ROUTE,
        name: "route",
    },
];

/// One response, in the shape both ADS variants reduce to.
#[derive(Debug, Clone)]
pub struct Update {
    pub type_url: String,
    pub version: String,
    /// State of the world: the resources are the whole set, and any other is removed.
    pub full: bool,
    /// (name, if the response names it; resource version; the resource).
    pub resources: Vec<(Option<String>, String, Option<Any>)>,
    /// Delta: names removed.
    pub removed: Vec<String>,
}

/// What applying one response did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The resources held differ from before.
    pub changed: bool,
    /// One per rejected resource, naming it.
    pub errors: Vec<String>,
    /// Resources accepted (changed or not).
    pub applied: usize,
    /// The names of the resources added, changed or removed.
    pub names: Vec<Arc<str>>,
}

/// Every resource the client holds (each one checked), and their versions.
#[derive(Debug, Default)]
pub struct State {
    res: xds::Resources,
    /// Per kind: for each resource held, under the name `res` holds it by (one allocation).
    meta: [BTreeMap<Arc<str>, Meta>; 4],
    /// Per kind: the version of the last response accepted whole.
    type_versions: [String; 4],
    received: [bool; 4],
}

/// What the client keeps of a resource besides its conversion.
#[derive(Debug)]
struct Meta {
    /// The version the control plane gave it (delta; empty in a state of the world).
    version: Box<str>,
    /// The digest of the bytes it was converted from.
    digest: u64,
}

/// The four message types, handled alike: decoded, converted (see `xds::convert`) and kept
/// converted.
trait Resource: Message + Name + Default + Sized {
    const KIND: usize;
    /// What the proxy keeps of it.
    type Spec;
    fn name(&self) -> &str;
    fn convert(&self) -> Result<Self::Spec, xds::Refused>;
    fn held(res: &mut xds::Resources) -> &mut BTreeMap<Arc<str>, Self::Spec>;
    /// Replaces the names of other resources `spec` holds with `known`'s allocation of
    /// them, where there is one.
    fn share_names(_spec: &mut Self::Spec, _known: &dyn Fn(&Arc<str>) -> Arc<str>) {}
}

impl Resource for Cluster {
    const KIND: usize = 0;
    type Spec = xds::ClusterSpec;
    fn name(&self) -> &str {
        &self.name
    }
    fn convert(&self) -> Result<Self::Spec, xds::Refused> {
        xds::convert::cluster(self)
    }
    fn held(res: &mut xds::Resources) -> &mut BTreeMap<Arc<str>, Self::Spec> {
        &mut res.clusters
    }
}

impl Resource for ClusterLoadAssignment {
    const KIND: usize = 1;
    type Spec = xds::Endpoints;
    fn name(&self) -> &str {
        &self.cluster_name
    }
    fn convert(&self) -> Result<Self::Spec, xds::Refused> {
        xds::convert::load_assignment(self)
    }
    fn held(res: &mut xds::Resources) -> &mut BTreeMap<Arc<str>, Self::Spec> {
        &mut res.endpoints
    }
}

impl Resource for Listener {
    const KIND: usize = 2;
    type Spec = xds::ListenerSpec;
    fn name(&self) -> &str {
        &self.name
    }
    fn convert(&self) -> Result<Self::Spec, xds::Refused> {
        xds::convert::listener(self)
    }
    fn held(res: &mut xds::Resources) -> &mut BTreeMap<Arc<str>, Self::Spec> {
        &mut res.listeners
    }
    fn share_names(spec: &mut Self::Spec, known: &dyn Fn(&Arc<str>) -> Arc<str>) {
        spec.rds = known(&spec.rds);
    }
}

impl Resource for RouteConfiguration {
    const KIND: usize = 3;
    type Spec = xds::RouteConfigSpec;
    fn name(&self) -> &str {
        &self.name
    }
    fn convert(&self) -> Result<Self::Spec, xds::Refused> {
        xds::convert::route_config(self)
    }
    fn held(res: &mut xds::Resources) -> &mut BTreeMap<Arc<str>, Self::Spec> {
        &mut res.routes
    }
    fn share_names(spec: &mut Self::Spec, known: &dyn Fn(&Arc<str>) -> Arc<str>) {
        // A service's `host:port` is also its resources' name.
        for d in spec.domains.iter_mut() {
            *d = known(d);
        }
        for r in spec.routes.iter_mut() {
            for (_, c) in r.backends.iter_mut() {
                *c = known(c);
            }
            if let Some((c, _)) = &mut r.mirror {
                *c = known(c);
            }
        }
    }
}

/// A digest of a resource's bytes as they arrived (`balance::hash64`: stable, no seed): what
/// tells a changed resource from one sent again. A control plane that encodes unchanged
/// content differently (protobuf maps in another order) costs one service's compile, never a
/// wrong table; weft's sends a resource again only when its content changed (delta).
pub use crate::balance::hash64 as bytes_digest;

impl State {
    pub fn resources(&self) -> &xds::Resources {
        &self.res
    }

    /// The resources of `kind` held, with the versions the control plane gave them.
    pub fn versions(&self, kind: usize) -> impl Iterator<Item = (&str, &str)> {
        self.meta[kind].iter().map(|(n, m)| (&**n, &*m.version))
    }

    pub fn type_version(&self, kind: usize) -> &str {
        &self.type_versions[kind]
    }

    pub fn len(&self, kind: usize) -> usize {
        match kind {
            0 => self.res.clusters.len(),
            1 => self.res.endpoints.len(),
            2 => self.res.listeners.len(),
            _ => self.res.routes.len(),
        }
    }

    /// Every kind has had a response.
    pub fn complete(&self) -> bool {
        self.received.iter().all(|r| *r)
    }

    /// The table version: a digest of the four type versions, the same on every control-plane
    /// replica serving the same resources.
    pub fn version(&self) -> String {
        digest(&self.type_versions.join("/")).replace("fnv-", "xds-")
    }

    /// Applies a response of `kind` (an index into [`KINDS`]). A response counts as received
    /// (for `/ready`) once it was accepted, or applied at least one resource: one rejected
    /// whole does not.
    pub fn apply(&mut self, kind: usize, u: Update) -> Outcome {
        let version = u.version.clone();
        let outcome = match kind {
            0 => self.apply_as::<Cluster>(u),
            1 => self.apply_as::<ClusterLoadAssignment>(u),
            2 => self.apply_as::<Listener>(u),
            _ => self.apply_as::<RouteConfiguration>(u),
        };
        if outcome.errors.is_empty() {
            self.type_versions[kind] = version;
        }
        self.received[kind] |= outcome.errors.is_empty() || outcome.applied > 0;
        outcome
    }

    fn apply_as<R: Resource>(&mut self, u: Update) -> Outcome {
        let label = R::NAME;
        let metas = &mut self.meta;
        let held = R::held(&mut self.res);
        let mut out = Outcome::default();
        let mut seen = HashSet::new();
        // A rejected resource the response does not name (state of the world): any resource
        // held could be it, so none is removed for being absent.
        let mut unnamed_rejected = false;
        for (name, version, any) in u.resources {
            let sum = any.as_ref().map(|a| bytes_digest(&a.value));
            // The same bytes again under the same name: nothing to convert.
            if let (Some(n), Some(d)) = (&name, sum)
                && let Some(m) = metas[R::KIND].get_mut(n.as_str())
                && m.digest == d
                && any.as_ref().is_some_and(|a| a.type_url == u.type_url)
            {
                seen.insert(n.clone());
                out.applied += 1;
                m.version = version.into();
                continue;
            }
            let decoded = decode::<R>(name.as_deref(), any.as_ref(), &u.type_url);
            // A body that calls itself another name than the response gives it may be meant
            // as either: neither is removed as absent from the set.
            if let Err((_, Some(body_name))) = &decoded {
                seen.insert(body_name.clone());
            }
            let decoded = decoded.map_err(|(e, _)| e);
            let shown = name
                .clone()
                .or_else(|| decoded.as_ref().ok().map(|r| r.name().to_string()));
            // The NACK says why, as text.
            let converted = decoded.and_then(|r| {
                (r.convert())
                    .map(|spec| (r.name().to_string(), spec))
                    .map_err(|e| e.to_string())
            });
            let (name, mut spec) = match converted {
                Ok(c) => c,
                Err(e) => {
                    match &shown {
                        Some(n) => {
                            out.errors.push(format!("{label} `{n}`: {e}"));
                            seen.insert(n.clone());
                        }
                        None => {
                            out.errors.push(format!("{label}: {e}"));
                            unnamed_rejected = true;
                        }
                    }
                    continue;
                }
            };
            out.applied += 1;
            let digest = sum.expect("a resource that converted has a body");
            let version = version.into();
            if let Some(m) = metas[R::KIND].get_mut(name.as_str())
                && m.digest == digest
            {
                m.version = version;
            } else {
                // A name is allocated once: resources of every type (and the names inside
                // them) share the allocation of the first that arrived under it.
                let known = |n: &str| {
                    metas
                        .iter()
                        .find_map(|m| m.get_key_value(n))
                        .map(|(k, _)| k.clone())
                };
                let key = known(&name).unwrap_or_else(|| Arc::from(name.as_str()));
                R::share_names(&mut spec, &|n| {
                    if *n == key {
                        key.clone()
                    } else {
                        known(n).unwrap_or_else(|| n.clone())
                    }
                });
                metas[R::KIND].insert(key.clone(), Meta { version, digest });
                held.insert(key.clone(), spec);
                out.names.push(key);
            }
            seen.insert(name);
        }
        if u.full && !unnamed_rejected {
            held.retain(|n, _| {
                let keep = seen.contains(&**n);
                if !keep {
                    out.names.push(n.clone());
                }
                keep
            });
            metas[R::KIND].retain(|n, _| seen.contains(&**n));
        }
        for n in u.removed {
            metas[R::KIND].remove(n.as_str());
            if let Some((n, _)) = held.remove_entry(n.as_str()) {
                out.names.push(n);
            }
        }
        out.changed = !out.names.is_empty();
        out
    }

    /// The digest of the bytes the resource of `kind` named `name` was converted from.
    pub fn digest_of(&self, kind: usize, name: &str) -> Option<u64> {
        self.meta[kind].get(name).map(|m| m.digest)
    }
}

/// Decodes one resource, checking that it is of the response's type and, when the response
/// names it, that the name matches.
///
/// The error comes with the name the body gives itself, when it decoded.
fn decode<R: Resource>(
    name: Option<&str>,
    any: Option<&Any>,
    type_url: &str,
) -> Result<R, (String, Option<String>)> {
    let any = any.ok_or(("the resource has no body".to_string(), None))?;
    if any.type_url != type_url {
        return Err((
            format!("a {} in a response of {type_url}", any.type_url),
            None,
        ));
    }
    let r = R::decode(&*any.value).map_err(|e| (format!("cannot decode: {e}"), None))?;
    if let Some(n) = name
        && n != r.name()
    {
        let own = r.name().to_string();
        return Err((format!("the resource calls itself `{own}`"), Some(own)));
    }
    Ok(r)
}
