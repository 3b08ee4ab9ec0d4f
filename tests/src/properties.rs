//! Invariants across the control plane and the proxy, for the fuzz target in `fuzz/` and the
//! generated cases of `tests/e2e/properties.rs`: whatever the control plane accepts, the proxy
//! accepts.

use weft_control_plane::{registry::file::FileRegistry, translate};
use weft_proxy::{
    metrics::Metrics,
    resolve::Resolved,
    table::{
        Table,
        xds::{self, Protos},
    },
};

use crate::chain::TempDir;

/// The xDS resources the control plane makes of registry `files` (one YAML stream), as the
/// proxy holds them; `Err` with the registry's errors when it refuses any document.
pub fn registry_resources(files: &str) -> Result<Protos, Vec<String>> {
    let dir = TempDir::new("registry");
    dir.write("mesh.yaml", files);
    let mut reg = FileRegistry::new(&dir.0);
    let snap = reg.scan().expect("the scratch directory reads");
    if !reg.errors.is_empty() {
        return Err(reg.errors.clone());
    }
    let r = translate::translate(&snap);
    Ok(Protos {
        listeners: r
            .listeners
            .into_iter()
            .map(|l| (l.name.clone(), l))
            .collect(),
        routes: r.routes.into_iter().map(|c| (c.name.clone(), c)).collect(),
        clusters: r
            .clusters
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect(),
        endpoints: r
            .endpoints
            .into_iter()
            .map(|e| (e.cluster_name.clone(), e))
            .collect(),
    })
}

/// The service every policy of [`policy_differential`] governs.
const SERVICE: &str = "apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  port: 8080
  endpoints:
    - {address: 10.0.0.1:8080, labels: {version: v1}}
    - {address: 10.0.0.2:8080, weight: 3, labels: {version: v2}}
---
";

/// A TrafficPolicy with `spec` (YAML, indented under `spec:`) for `web.demo`: if the control
/// plane's registry accepts it, every resource it translates to passes the proxy's checks (no
/// NACK), the proxy's table compiles with nothing held back, and the service is routed.
/// Returns whether the control plane accepted it (a caller checks that some cases are).
pub fn policy_differential(spec: &str) -> bool {
    let files = format!(
        "{SERVICE}apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: web, namespace: demo}}\nspec:\n  service: web.demo.svc.cluster.local:8080\n{spec}"
    );
    let Ok(res) = registry_resources(&files) else {
        return false;
    };
    let nack = |what: &str, name: &str, e: weft_proxy::table::xds::Refused| -> ! {
        panic!(
            "the control plane accepted a policy whose {what} `{name}` the proxy rejects: {e}\n{files}"
        )
    };
    for (n, c) in &res.clusters {
        xds::check_cluster(c).unwrap_or_else(|e| nack("cluster", n, e));
    }
    for (n, e) in &res.endpoints {
        xds::check_load_assignment(e).unwrap_or_else(|err| nack("endpoints", n, err));
    }
    for (n, l) in &res.listeners {
        xds::check_listener(l).unwrap_or_else(|e| nack("listener", n, e));
    }
    for (n, r) in &res.routes {
        xds::check_route_config(r).unwrap_or_else(|e| nack("route", n, e));
    }
    let compiled = xds::compile(
        &res,
        "v1".into(),
        1,
        &Metrics::new(),
        &Table::empty(),
        &Resolved::none(),
    );
    assert_eq!(compiled.held_back, Vec::<String>::new(), "{files}");
    assert!(
        compiled
            .table
            .by_authority("web.demo.svc.cluster.local:8080")
            .is_some(),
        "the service is not routed:\n{files}"
    );
    true
}

/// The mesh settings the injector of [`admission_review`] runs with.
const MESH: &str = "controlPlaneAddress: https://weft-control-plane.weft-system.svc:15012
proxy: {image: weft/proxy:test}
capture: {excludeOutboundCidrs: [169.254.169.254/32], excludeInboundPorts: [9091]}
";

/// The injector answers any body: an error naming what is wrong when it is no AdmissionReview,
/// else an admission.k8s.io/v1 AdmissionReview for the request's uid that allows with a
/// JSONPatch of `add` operations (carried base64, exactly the patch decided), allows unchanged,
/// or refuses with a 400 status and a message.
pub fn admission_review(body: &[u8]) {
    use base64::Engine;
    use weft_control_plane::inject::{Decision, Injector, MeshConfig};
    let injector = Injector {
        mesh: MeshConfig::parse(MESH).expect("the mesh settings parse"),
        trust_bundle: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
    };
    let (answer, decision) = match injector.review(body) {
        Ok(a) => a,
        Err(e) => {
            assert!(!e.is_empty());
            return;
        }
    };
    let review: serde_json::Value = serde_json::from_slice(body).expect("a reviewed body is JSON");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], review["request"]["uid"]);
    match decision {
        Decision::Inject { patch, .. } => {
            assert_eq!(response["allowed"], true);
            // The patch applies to the pod it was made for, and adds the sidecar.
            let mut pod = review["request"]["object"].clone();
            for op in &patch {
                add(&mut pod, op);
            }
            let named = |list: &serde_json::Value| {
                list.as_array()
                    .is_some_and(|l| l.iter().any(|c| c["name"] == "weft-proxy"))
            };
            assert!(
                named(&pod["spec"]["containers"]) || named(&pod["spec"]["initContainers"]),
                "no weft-proxy container after the patch: {pod}"
            );
            assert_eq!(response["patchType"], "JSONPatch");
            let carried = base64::engine::general_purpose::STANDARD
                .decode(response["patch"].as_str().expect("the patch is a string"))
                .expect("the patch is base64");
            let carried: Vec<serde_json::Value> =
                serde_json::from_slice(&carried).expect("the patch is a JSON array");
            assert_eq!(carried, patch);
            for op in &patch {
                assert_eq!(op["op"], "add", "{op}");
                assert!(
                    op["path"].as_str().is_some_and(|p| p.starts_with('/')),
                    "{op}"
                );
            }
        }
        Decision::Skip(_) => {
            assert_eq!(response["allowed"], true);
            assert!(response.get("patch").is_none());
        }
        Decision::Deny(why) => {
            assert_eq!(response["allowed"], false);
            assert_eq!(response["status"]["code"], 400);
            assert!(!why.is_empty());
        }
    }
}

/// Applies one JSONPatch `add` (RFC 6902) to `doc`; panics when its parent does not exist.
fn add(doc: &mut serde_json::Value, op: &serde_json::Value) {
    assert_eq!(op["op"], "add", "{op}");
    let path = op["path"].as_str().expect("a path");
    let mut parts: Vec<String> = path[1..]
        .split('/')
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect();
    let last = parts.pop().expect("a path with a name");
    let mut at = &mut *doc;
    for p in &parts {
        at = match at {
            serde_json::Value::Object(m) => m.get_mut(p.as_str()),
            serde_json::Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .unwrap_or_else(|| panic!("the patch adds under a missing parent: {path}"));
    }
    let value = op["value"].clone();
    match at {
        serde_json::Value::Object(m) => {
            m.insert(last, value);
        }
        serde_json::Value::Array(a) if last == "-" => a.push(value),
        serde_json::Value::Array(a) => {
            let i: usize = last.parse().expect("an array index");
            assert!(i <= a.len(), "index {i} past the end in {path}");
            a.insert(i, value);
        }
        other => panic!("the patch adds into {other} at {path}"),
    }
}
