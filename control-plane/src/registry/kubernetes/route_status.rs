//! Writes the Gateway API routes' status: the `status.parents[]` entries of weft's controller
//! (`weft.dev/gateway-controller`), one per parentRef that names a Service, with the
//! `Accepted` and `ResolvedRefs` conditions `gateway::status` computes, or `Accepted: False`
//! (`UnsupportedValue`, with the validation's errors) for a route weft refuses.
//!
//! - Other controllers' entries (a Gateway's, for a route attached to both) are kept as they
//!   are: the patch writes the whole list, theirs first, and carries the route's
//!   `resourceVersion`, so a status changed meanwhile is not overwritten (the API server
//!   answers 409; the watch brings the new one, and the next round writes again).
//! - Each condition has the route's `observedGeneration`; its `lastTransitionTime` is kept
//!   while its status stays, and is the time of writing when it changes.
//! - Nothing is written when weft's entries already say what they should, nor when the writer
//!   already wrote what it would write now at the route's generation: a write's own watch event
//!   writes nothing more, and two writers that disagree (replicas of two versions during an
//!   upgrade) write once each per change instead of back and forth. The message says what is
//!   wrong with a route and nothing of the replica's own state, so replicas agree.
//! - Every [`RESYNC`] the writer forgets what it wrote and checks every route again (repairing
//!   a status edited by hand); a write that failed is tried again after [`RETRY`].
//! - A route that is no longer weft's (no Service parentRef) loses weft's entries. weft's
//!   entries go in the room other controllers' leave under the API's limit of 32.
//! - The writer runs in a task of its own, on the latest translation only: a slow API server
//!   delays status, never the registry.

use std::{collections::HashMap, sync::Arc, time::Duration};

use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    core::{ApiResource, DynamicObject},
};
use serde_json::{Value, json};
use tokio::{sync::watch, time::Instant};

use crate::gateway::{self, CONTROLLER_NAME, ParentRef, ParentStatus, Registered};
use crate::registry::Snapshot;

/// The API's limit on `status.parents`.
const MAX_PARENTS: usize = 32;
/// The API's limit on a condition's message.
const MAX_MESSAGE: usize = 32_768;

/// What the status writer works from: the routes as watched, the snapshot translated from
/// them, and the routes it refused.
#[derive(Debug, Clone, Default)]
pub struct Round {
    pub http_routes: Vec<Arc<DynamicObject>>,
    pub grpc_routes: Vec<Arc<DynamicObject>>,
    pub snapshot: Arc<Snapshot>,
    /// The routes refused, by `<kind> <namespace/name>`: what is wrong with each.
    pub refused: std::collections::BTreeMap<String, String>,
}

/// weft's entries for `obj` (a route of `kind`, `HTTPRoute` or `GRPCRoute`): from the snapshot
/// when the route is in force as it is, `Accepted: False` with its errors when it is refused.
/// `None` when its parentRefs cannot be read (there is nothing to report on).
pub fn ours(
    kind: &str,
    obj: &DynamicObject,
    round: &Round,
    registered: &Registered<'_>,
) -> Option<Vec<ParentStatus>> {
    let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
    let key = format!("{ns}/{}", obj.metadata.name.as_deref().unwrap_or(""));
    let refused = round.refused.get(&format!("{kind} {key}"));
    if refused.is_none() {
        let snap = &round.snapshot;
        let route = match kind {
            gateway::GRPC_ROUTE => snap.grpc_routes.get(&key).map(|r| r.as_http()),
            _ => snap.http_routes.get(&key).cloned(),
        };
        if let Some(route) = route {
            return Some(gateway::status(&route, registered));
        }
    }
    let refs = obj.data.pointer("/spec/parentRefs").cloned()?;
    let refs: Vec<ParentRef> = serde_json::from_value(refs).ok()?;
    // What is wrong with the route, and nothing of what this replica happens to hold (its last
    // good version): every replica writes the same status from the same objects.
    let message = weft_core::text::cut(refused.map_or("", |r| r), MAX_MESSAGE).to_string();
    let refused = gateway::Condition {
        kind: "Accepted",
        status: "False",
        reason: "UnsupportedValue",
        message,
    };
    let entries = refs.into_iter().filter(ParentRef::is_service);
    Some(
        entries
            .map(|p| ParentStatus {
                parent_ref: p,
                controller_name: CONTROLLER_NAME,
                conditions: vec![refused.clone()],
            })
            .collect(),
    )
}

/// One condition as the status holds it, without its time: what decides whether to write.
fn essence(c: &Value) -> [Value; 5] {
    ["type", "status", "reason", "message", "observedGeneration"].map(|k| c[k].clone())
}

/// The merge patch that makes `obj`'s weft entries `ours` (keeping every other controller's),
/// written at `now` (RFC 3339); `None` when they already are.
pub fn patch(obj: &DynamicObject, ours: &[ParentStatus], now: &str) -> Option<Value> {
    let current: Vec<Value> = (obj.data.pointer("/status/parents"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is_ours = |e: &Value| e["controllerName"] == CONTROLLER_NAME;
    let parent = |e: &Value| serde_json::from_value::<ParentRef>(e["parentRef"].clone()).ok();
    let generation = obj.metadata.generation;
    let written: Vec<Value> = ours
        .iter()
        .map(|p| {
            // The same parent's entry as it stands, for the times of conditions that stay.
            let before = current
                .iter()
                .find(|e| is_ours(e) && parent(e).as_ref() == Some(&p.parent_ref));
            let conditions: Vec<Value> = (p.conditions.iter())
                .map(|c| {
                    let since = before
                        .and_then(|e| e["conditions"].as_array())
                        .into_iter()
                        .flatten()
                        .find(|b| b["type"] == c.kind && b["status"] == c.status)
                        .and_then(|b| b["lastTransitionTime"].as_str())
                        .unwrap_or(now);
                    json!({
                        "type": c.kind, "status": c.status, "reason": c.reason,
                        "message": c.message, "observedGeneration": generation,
                        "lastTransitionTime": since,
                    })
                })
                .collect();
            json!({
                "parentRef": p.parent_ref,
                "controllerName": CONTROLLER_NAME,
                "conditions": conditions,
            })
        })
        .collect();
    let same = |a: &Value, b: &Value| {
        parent(a) == parent(b)
            && (a["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(essence))
            .eq(b["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(essence))
    };
    let mut parents: Vec<Value> = current.iter().filter(|e| !is_ours(e)).cloned().collect();
    // Other controllers' entries first; weft's in the room the API's limit leaves.
    let mut written = written;
    written.truncate(MAX_PARENTS.saturating_sub(parents.len()));
    let mine: Vec<&Value> = current.iter().filter(|e| is_ours(e)).collect();
    if mine.len() == written.len() && mine.iter().zip(&written).all(|(a, b)| same(a, b)) {
        return None;
    }
    parents.extend(written);
    Some(json!({
        "metadata": {"resourceVersion": obj.metadata.resource_version},
        "status": {"parents": parents},
    }))
}

/// How soon the writer tries again after a write failed, and how often it checks every route
/// against what it last wrote (repairing a status changed by someone else).
const RETRY: Duration = Duration::from_secs(10);
const RESYNC: Duration = Duration::from_secs(600);

/// Writes status after every round sent on `rounds`, until its sender is gone.
pub async fn run(client: Client, mut rounds: watch::Receiver<Round>) {
    let mut w = Writer {
        client,
        written: HashMap::new(),
        forbidden: [false; 2],
    };
    let mut round = None;
    // Two deadlines: the next check of every route, on its own schedule whatever the rounds
    // do, and the next try after a failed write (none pending: far away).
    let mut resync_at = Instant::now() + RESYNC;
    let mut retry_at: Option<Instant> = None;
    loop {
        let next = retry_at.map_or(resync_at, |r| r.min(resync_at));
        tokio::select! {
            changed = rounds.changed() => {
                if changed.is_err() {
                    return;
                }
                round = Some(rounds.borrow_and_update().clone());
            }
            () = tokio::time::sleep_until(next) => {
                if Instant::now() >= resync_at {
                    // Everything checked again against the routes as they are; a permission
                    // granted since is used.
                    w.written.clear();
                    w.forbidden = [false; 2];
                    resync_at = Instant::now() + RESYNC;
                }
                retry_at = None;
            }
        }
        let Some(r) = &round else { continue };
        let failed = w.round(r).await;
        retry_at = failed.then(|| Instant::now() + RETRY);
    }
}

/// A route: its kind and `namespace/name`.
type RouteKey = (&'static str, String);

fn route_key(obj: &DynamicObject) -> String {
    let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
    format!("{ns}/{}", obj.metadata.name.as_deref().unwrap_or(""))
}
/// weft's entries written on a route: the object (its uid: a route deleted and made again
/// under the same name is another) at its generation, and the entries.
type Written = (Option<String>, Option<i64>, Vec<ParentStatus>);

/// The writer's state between rounds.
struct Writer {
    client: Client,
    /// What it wrote (or found already written) per route, `(kind, namespace/name)`, on which
    /// object at which generation: not written again until that changes. Two writers that
    /// disagree (replicas of two versions) thus write once each per change, never back and
    /// forth. Routes gone from a round are forgotten.
    written: HashMap<RouteKey, Written>,
    /// Per kind: whether the API refused for want of permission (said once).
    forbidden: [bool; 2],
}

impl Writer {
    /// Brings every route's status up to date; whether a write failed (to be tried again).
    async fn round(&mut self, round: &Round) -> bool {
        let kinds = [
            (
                gateway::HTTP_ROUTE,
                super::http_route_resource(),
                &round.http_routes,
            ),
            (
                gateway::GRPC_ROUTE,
                super::grpc_route_resource(),
                &round.grpc_routes,
            ),
        ];
        let mut failed = false;
        let registered = Registered::new(&round.snapshot);
        // Routes that are gone are forgotten.
        let live: std::collections::HashSet<RouteKey> = (kinds.iter())
            .flat_map(|(kind, _, objs)| objs.iter().map(|o| (*kind, route_key(o))))
            .collect();
        self.written.retain(|k, _| live.contains(k));
        for (i, (kind, ar, objs)) in kinds.into_iter().enumerate() {
            for obj in objs {
                // A route that is no longer weft's (its Service parentRefs gone) loses weft's
                // entries.
                let mine = if super::is_mesh_route(obj) {
                    ours(kind, obj, round, &registered)
                } else {
                    Some(Vec::new())
                };
                if let Some(mine) = mine {
                    failed |= !self.write(kind, i, &ar, obj, mine).await;
                }
            }
        }
        failed
    }

    /// Writes `mine` as `obj`'s weft entries, unless already written; false when it failed
    /// in a way worth trying again.
    async fn write(
        &mut self,
        kind: &'static str,
        i: usize,
        ar: &ApiResource,
        obj: &DynamicObject,
        mine: Vec<ParentStatus>,
    ) -> bool {
        let (ns, name) = (
            obj.metadata.namespace.as_deref().unwrap_or("default"),
            obj.metadata.name.as_deref().unwrap_or(""),
        );
        let key = (kind, route_key(obj));
        let done = (obj.metadata.uid.clone(), obj.metadata.generation, mine);
        if self.written.get(&key) == Some(&done) {
            return true;
        }
        // metav1.Time: whole seconds.
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let now = k8s_openapi::jiff::Timestamp::from_second(now)
            .map_or_else(|_| String::new(), |t| t.to_string());
        let Some(body) = patch(obj, &done.2, &now) else {
            self.written.insert(key, done);
            return true;
        };
        let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, ar);
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => {
                tracing::debug!(%kind, %ns, %name, "route status written");
                self.written.insert(key, done);
                true
            }
            // Changed meanwhile: its watch event brings the new version, and a round after it.
            Err(kube::Error::Api(s)) if s.code == 409 => true,
            Err(kube::Error::Api(s)) if s.code == 403 => {
                if !std::mem::replace(&mut self.forbidden[i], true) {
                    tracing::warn!(%kind, error = %s.message, "route status not written: the control plane may not patch routes' status (the chart's ClusterRole grants it)");
                }
                // Not asked again until the next check of every route.
                self.written.insert(key, done);
                true
            }
            Err(e) => {
                tracing::warn!(%kind, %ns, %name, error = %e, "route status not written; trying again");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;
