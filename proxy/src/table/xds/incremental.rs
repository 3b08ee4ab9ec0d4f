//! Applying xDS changes to the table in force, compiling only the services they touch.
//!
//! [`Incremental`] remembers what each Listener's service was compiled from (its
//! RouteConfiguration and the clusters its routes name). A batch of responses marks the
//! resources it changed ([`Changed`]); only the Listeners that depend on one of them (held
//! back or not) are compiled again, and the new table is the one in force with
//! those entries replaced (see [`super::super::index`]): its cost is the change's, not the
//! mesh's.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use super::{Compiled, ListenerSpec, Resources, listener, refreshed, swap_endpoints};
use crate::{
    metrics::Metrics,
    resolve::Resolved,
    table::{Cluster, Names, Table},
};

/// The names of the resources a batch of responses added, changed or removed, by type.
#[derive(Debug, Default, Clone)]
pub struct Changed {
    pub listeners: BTreeSet<Arc<str>>,
    pub routes: BTreeSet<Arc<str>>,
    pub clusters: BTreeSet<Arc<str>>,
    pub endpoints: BTreeSet<Arc<str>>,
    /// Endpoint host names resolved to new addresses: the services using one are compiled
    /// again, and only those.
    pub hosts: BTreeSet<Box<str>>,
}

impl Changed {
    /// Marks `name` of resource kind `kind` (an index into `discovery::KINDS`: cluster,
    /// endpoint, listener, route).
    pub fn mark(&mut self, kind: usize, name: Arc<str>) {
        match kind {
            0 => self.clusters.insert(name),
            1 => self.endpoints.insert(name),
            2 => self.listeners.insert(name),
            _ => self.routes.insert(name),
        };
    }
}

/// What one Listener's entry was compiled from.
#[derive(Debug, Default)]
struct Deps {
    route: Arc<str>,
    clusters: Vec<Arc<str>>,
    /// The host names its endpoints are known by.
    hosts: Box<[Box<str>]>,
}

/// The table's dependencies on the resources held, kept between updates.
#[derive(Debug, Default)]
pub struct Incremental {
    deps: HashMap<Arc<str>, Deps>,
    by_route: HashMap<Arc<str>, Users>,
    by_cluster: HashMap<Arc<str>, Users>,
    /// Host name -> the Listeners whose endpoints it names.
    by_host: HashMap<Box<str>, Users>,
    /// The clusters built from the resources as they are now, by name: what a compile uses
    /// again, and what an EDS change updates in place. A cluster whose resource changes, or
    /// whose host names resolve anew, leaves it until it is built again.
    current: HashMap<Arc<str>, Arc<Cluster>>,
    /// Listeners held back, with what each waits for.
    held: std::collections::BTreeMap<Arc<str>, String>,
    /// Listener compiles so far (what an update cost; tests count them).
    pub compiles: u64,
}

impl Incremental {
    /// A table for `res` made from `previous` by compiling again only the Listeners `changed`
    /// touches (every Listener the first time).
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        res: &Resources,
        changed: &Changed,
        version: Arc<str>,
        generation: u64,
        metrics: &Arc<Metrics>,
        previous: &Table,
        dns: &Resolved,
    ) -> Compiled {
        let first = self.deps.is_empty();
        if first {
            self.current.clear();
        }
        for c in &changed.clusters {
            self.current.remove(&**c);
        }
        for c in &changed.endpoints {
            // Taken away: whoever holds the cluster keeps its endpoints; a new assignment makes
            // a new cluster.
            if !res.endpoints.contains_key(c) {
                self.current.remove(&**c);
            }
        }
        if !changed.hosts.is_empty() {
            self.current
                .retain(|_, c| !c.dns.iter().any(|h| changed.hosts.contains(h)));
        }
        let mut current = std::mem::take(&mut self.current);
        let names = Names::new(dns, previous).reusing(&current);
        // A Listener held back is compiled again when something it references changes, as
        // any other: its dependencies are recorded whether it compiled or not.
        let mut dirty: BTreeSet<Arc<str>> = BTreeSet::new();
        // Listeners whose clusters only had their endpoints replaced in place.
        let mut refresh: BTreeSet<Arc<str>> = BTreeSet::new();
        if first {
            // Nothing compiled from these resources yet: every Listener, into an empty table.
            dirty.extend(res.listeners.keys().cloned());
        } else {
            dirty.extend(changed.listeners.iter().cloned());
            for r in &changed.routes {
                dirty.extend(
                    self.by_route
                        .get(r)
                        .into_iter()
                        .flat_map(Users::iter)
                        .cloned(),
                );
            }
            for c in &changed.clusters {
                dirty.extend(
                    self.by_cluster
                        .get(c)
                        .into_iter()
                        .flat_map(Users::iter)
                        .cloned(),
                );
            }
            for c in changed.endpoints.difference(&changed.clusters) {
                let users = self
                    .by_cluster
                    .get(c)
                    .into_iter()
                    .flat_map(Users::iter)
                    .cloned();
                let swapped = current
                    .get(&**c)
                    .is_some_and(|cluster| swap_endpoints(cluster, res, &names));
                for u in users {
                    // One held back keeps its old service: it is compiled, not refreshed.
                    if swapped && !self.held.contains_key(&u) {
                        refresh.insert(u);
                    } else {
                        dirty.insert(u);
                    }
                }
            }
            for h in &changed.hosts {
                dirty.extend(
                    self.by_host
                        .get(h)
                        .into_iter()
                        .flat_map(Users::iter)
                        .cloned(),
                );
            }
        }
        let mut table = Table {
            version,
            generation,
            index: if first {
                Default::default()
            } else {
                previous.index.clone()
            },
            source: Default::default(),
        };
        for name in &dirty {
            self.forget(name);
            let Some(l) = res.listeners.get(&**name) else {
                table.index.put(name, None);
                continue;
            };
            self.compiles += 1;
            let (entry, held) = listener(name, l, res, &names, metrics, previous);
            let deps = Deps {
                route: shared(&res.routes, &l.rds),
                clusters: clusters_of(name, l, res),
                hosts: entry
                    .as_ref()
                    .map_or_else(Box::default, |e| e.dns_names().into()),
            };
            if let Some(h) = held {
                self.held.insert(name.clone(), h);
            }
            self.remember(name, deps);
            table.index.put(name, entry);
        }
        for name in refresh.difference(&dirty) {
            if res.listeners.contains_key(&**name) {
                let entry = refreshed(name, res, &names, previous);
                table.index.put(name, entry);
            }
        }
        let built = names.take_built();
        drop(names);
        current.extend(built);
        self.current = current;
        Compiled {
            table,
            held_back: self.held.values().cloned().collect(),
        }
    }

    /// What each Listener held back waits for.
    pub fn held_back(&self) -> impl Iterator<Item = &String> {
        self.held.values()
    }

    fn forget(&mut self, name: &Arc<str>) {
        self.held.remove(name);
        let Some(d) = self.deps.remove(name) else {
            return;
        };
        let drop_from = |m: &mut HashMap<Arc<str>, Users>, k: &Arc<str>| {
            if let Some(s) = m.get_mut(k) {
                s.remove(name);
                if s.is_empty() {
                    m.remove(k);
                }
            }
        };
        drop_from(&mut self.by_route, &d.route);
        for c in &d.clusters {
            drop_from(&mut self.by_cluster, c);
        }
        for h in &d.hosts {
            if let Some(s) = self.by_host.get_mut(h) {
                s.remove(name);
                if s.is_empty() {
                    self.by_host.remove(h);
                }
            }
        }
    }

    fn remember(&mut self, name: &Arc<str>, d: Deps) {
        self.by_route
            .entry(d.route.clone())
            .or_default()
            .insert(name.clone());
        for c in &d.clusters {
            self.by_cluster
                .entry(c.clone())
                .or_default()
                .insert(name.clone());
        }
        for h in &d.hosts {
            self.by_host
                .entry(h.clone())
                .or_default()
                .insert(name.clone());
        }
        self.deps.insert(name.clone(), d);
    }
}

/// The Listeners that depend on one resource. Most resources have one, so up to [`Users::FEW`]
/// are a sorted vector, the first inline (where a B-tree's node takes about 200 bytes); more,
/// a B-tree, so that changing a resource every Listener uses stays O(n log n).
#[derive(Debug)]
enum Users {
    Few(smallvec::SmallVec<[Arc<str>; 1]>),
    Many(BTreeSet<Arc<str>>),
}

impl Default for Users {
    fn default() -> Self {
        Users::Few(Default::default())
    }
}

impl Users {
    const FEW: usize = 16;

    fn insert(&mut self, name: Arc<str>) {
        match self {
            Users::Few(v) => match v.binary_search(&name) {
                Ok(_) => {}
                Err(i) if v.len() < Self::FEW => v.insert(i, name),
                Err(_) => {
                    let mut all: BTreeSet<Arc<str>> = std::mem::take(v).into_iter().collect();
                    all.insert(name);
                    *self = Users::Many(all);
                }
            },
            Users::Many(s) => {
                s.insert(name);
            }
        }
    }

    fn remove(&mut self, name: &str) {
        match self {
            Users::Few(v) => {
                if let Ok(i) = v.binary_search_by(|x| (**x).cmp(name)) {
                    v.remove(i);
                }
            }
            Users::Many(s) => {
                s.remove(name);
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Users::Few(v) => v.is_empty(),
            Users::Many(s) => s.is_empty(),
        }
    }

    /// In order.
    fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        let (few, many) = match self {
            Users::Few(v) => (Some(v.iter()), None),
            Users::Many(s) => (None, Some(s.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

/// Every cluster a Listener's service uses or waits for: the one named as the Listener (all
/// its endpoints), and those its RouteConfiguration's routes and mirrors name.
fn clusters_of(name: &Arc<str>, l: &ListenerSpec, res: &Resources) -> Vec<Arc<str>> {
    let mut out = vec![name.clone()];
    for r in res
        .routes
        .get(&*l.rds)
        .into_iter()
        .flat_map(|rc| rc.routes.iter())
    {
        out.extend(r.backends.iter().map(|(_, c)| shared(&res.clusters, c)));
        out.extend(r.mirror.iter().map(|(c, _)| shared(&res.clusters, c)));
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// `name` as the key of the resource it names holds it, when that resource is there: the
/// dependency maps then add no copy of a name.
fn shared<V>(held: &std::collections::BTreeMap<Arc<str>, V>, name: &str) -> Arc<str> {
    held.get_key_value(name)
        .map_or_else(|| Arc::from(name), |(k, _)| k.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_stay_a_sorted_set_past_a_few() {
        let mut u = Users::default();
        let names: Vec<Arc<str>> = (0..40).rev().map(|i| format!("l-{i:02}").into()).collect();
        for n in names.iter().chain(&names) {
            u.insert(n.clone());
        }
        assert!(matches!(u, Users::Many(_)));
        let mut sorted = names.clone();
        sorted.sort();
        assert!(u.iter().eq(sorted.iter()));
        for n in &names[..39] {
            u.remove(n);
        }
        assert!(u.iter().eq([&names[39]]));
        u.remove(&names[39]);
        assert!(u.is_empty());
        let mut few = Users::default();
        for n in &names[..3] {
            few.insert(n.clone());
        }
        few.remove("l-38");
        assert!(matches!(&few, Users::Few(v) if v.len() == 2));
        assert!(few.iter().map(|n| &**n).eq(["l-37", "l-39"]));
    }
}
