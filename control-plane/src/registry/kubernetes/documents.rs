//! Policies and routes as the registry reads them from watched objects: each object a
//! document, parsed and validated as the file registry does, its last good version kept; and
//! which routes are weft's.

use std::{collections::BTreeMap, sync::Arc};

use kube::core::DynamicObject;

use super::key;
use crate::gateway;
use crate::policy;

/// Objects of one kind (`TrafficPolicy`, `HTTPRoute`) as documents, each parsed and validated
/// as the file registry does; `cache` holds each one's last good version (and the text it came
/// from: an unchanged object is not parsed again), which stays in force while the current one
/// is bad. Deleted objects are forgotten. `errors` gets a line per bad object; `refused`, by
/// `<kind> <namespace/name>`, what is wrong with it.
pub(super) fn last_good<T: Clone>(
    cache: &mut BTreeMap<String, (String, T)>,
    objs: &[Arc<DynamicObject>],
    (api_version, kind): (&str, &str),
    parse: impl Fn(&str, &str) -> Result<Vec<T>, policy::PolicyError>,
    (errors, refused): (&mut Vec<String>, &mut BTreeMap<String, String>),
) -> BTreeMap<String, T> {
    let mut live = BTreeMap::new();
    for obj in objs {
        let k = key(&obj.metadata.namespace, &obj.metadata.name);
        let doc = serde_json::json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {
                "name": obj.metadata.name,
                "namespace": obj.metadata.namespace.as_deref().unwrap_or("default"),
                "creationTimestamp": obj.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
            },
            "spec": obj.data.get("spec").cloned().unwrap_or_default(),
        })
        .to_string();
        let source = format!("{kind} {k}");
        match cache.get(&k) {
            Some((text, p)) if *text == doc => {
                live.insert(k, p.clone());
            }
            _ => match parse(&source, &doc) {
                Ok(mut ps) if ps.len() == 1 => {
                    let p = ps.remove(0);
                    cache.insert(k.clone(), (doc, p.clone()));
                    live.insert(k, p);
                }
                Ok(_) => {
                    errors.push(format!("{source}: not one {kind}"));
                    refused.insert(source, format!("not one {kind}"));
                }
                Err(e) => {
                    refused.insert(source, e.problems());
                    let kept = cache.get(&k).map(|(_, p)| p.clone());
                    errors.push(format!(
                        "{e}{}",
                        if kept.is_some() { KEPT } else { NOT_KEPT }
                    ));
                    if let Some(p) = kept {
                        live.insert(k, p);
                    }
                }
            },
        }
    }
    cache.retain(|k, _| live.contains_key(k));
    live
}

/// The routes that are weft's: those with a parentRef of a Service. A route only for Gateways
/// is another controller's, and is neither read nor reported on. (One whose parentRefs are
/// not even a list is weft's to report.)
pub(super) fn mesh_routes(objs: &[Arc<DynamicObject>]) -> Vec<Arc<DynamicObject>> {
    objs.iter().filter(|o| is_mesh_route(o)).cloned().collect()
}

/// Whether a route is weft's: see [`mesh_routes`].
pub(crate) fn is_mesh_route(o: &DynamicObject) -> bool {
    let refs = o.data.pointer("/spec/parentRefs").cloned();
    let refs = refs.unwrap_or_else(|| serde_json::json!([]));
    match serde_json::from_value::<Vec<gateway::ParentRef>>(refs) {
        Ok(refs) => refs.iter().any(gateway::ParentRef::is_service),
        Err(_) => true,
    }
}

/// What the translator's errors about an object end with: whether its last good version
/// stays in force.
const KEPT: &str = " (its last good version stays in force)";
const NOT_KEPT: &str = " (not in force)";
