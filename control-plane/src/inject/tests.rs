//! The injector's decisions on recorded AdmissionReviews (`control-plane/testdata/admission`).
//! The end-to-end test applies the patches with an independent JSONPatch library and validates
//! the result against the Kubernetes Pod schema; here the patches are applied with the small
//! `apply` below (`add` is the only operation the injector emits).

use base64::Engine;
use serde_json::{Value, json};

use super::*;

fn fixture(name: &str) -> Value {
    let path = format!("{}/testdata/admission/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

const BUNDLE: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

fn injector(native: bool) -> Injector {
    let mut mesh = MeshConfig::parse(
        "controlPlaneAddress: https://weft-control-plane.weft-system.svc:15012\n\
         proxy: {image: weft/proxy:test}\n\
         capture: {excludeOutboundCidrs: [169.254.169.254/32], excludeInboundPorts: [9091]}\n",
    )
    .unwrap();
    mesh.native_sidecars = native;
    Injector {
        mesh,
        trust_bundle: BUNDLE.into(),
    }
}

/// Applies JSONPatch `add` operations (RFC 6902) to `doc`.
fn apply(doc: &mut Value, patch: &[Value]) {
    for op in patch {
        assert_eq!(op["op"], "add", "{op}");
        let path = op["path"].as_str().unwrap();
        let mut parts: Vec<String> = path[1..]
            .split('/')
            .map(|p| p.replace("~1", "/").replace("~0", "~"))
            .collect();
        let last = parts.pop().unwrap();
        let mut target = &mut *doc;
        for p in &parts {
            target = match target {
                Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
                v => v
                    .get_mut(p.as_str())
                    .unwrap_or_else(|| panic!("{path}: no {p}")),
            };
        }
        let value = op["value"].clone();
        match target {
            Value::Array(a) if last == "-" => a.push(value),
            Value::Array(a) => a.insert(last.parse().unwrap(), value),
            Value::Object(o) => {
                o.insert(last, value);
            }
            other => panic!("{path}: cannot add into {other}"),
        }
    }
}

/// Reviews `review` and returns the response and, when a patch came back, the patched pod.
fn run(inj: &Injector, review: &Value) -> (Value, Option<Value>, Decision) {
    let (answer, decision) = inj.review(&serde_json::to_vec(review).unwrap()).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let rsp = answer["response"].clone();
    assert_eq!(rsp["uid"], review["request"]["uid"]);
    let patched = rsp["patch"].as_str().map(|b64| {
        assert_eq!(rsp["patchType"], "JSONPatch");
        let patch: Vec<Value> = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap();
        let mut pod = review["request"]["object"].clone();
        apply(&mut pod, &patch);
        pod
    });
    (rsp, patched, decision)
}

fn env_of(c: &Value) -> BTreeMap<String, Value> {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let v = if e["value"].is_null() {
                e["valueFrom"].clone()
            } else {
                e["value"].clone()
            };
            (e["name"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

#[test]
fn a_deployment_pod_gets_a_native_sidecar_and_the_capture_init_container() {
    let review = fixture("deployment-pod.json");
    let (rsp, pod, decision) = run(&injector(true), &review);
    assert_eq!(rsp["allowed"], true);
    assert_eq!(decision.result(), "injected");
    let pod = pod.expect("a patch");
    let spec = &pod["spec"];
    assert_eq!(names(&spec["initContainers"]), ["weft-init", "weft-proxy"]);
    assert_eq!(names(&spec["containers"]), ["web"]);

    let init = &spec["initContainers"][0];
    assert_eq!(init["args"], json!(["init"]));
    assert_eq!(
        init["securityContext"]["capabilities"],
        json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]})
    );
    assert_eq!(init["securityContext"]["runAsUser"], 0);
    let ienv = env_of(init);
    assert_eq!(ienv["WEFT_PROXY_UID"], "2102");
    assert_eq!(ienv["WEFT_EXCLUDE_INBOUND_PORTS"], "9091");
    assert_eq!(ienv["WEFT_EXCLUDE_OUTBOUND_CIDRS"], "169.254.169.254/32");

    let proxy = &spec["initContainers"][1];
    assert_eq!(proxy["image"], "weft/proxy:test");
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(
        proxy["startupProbe"]["httpGet"],
        json!({"path": "/ready", "port": 15020})
    );
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 15020);
    assert!(proxy["lifecycle"].is_null());
    let sc = &proxy["securityContext"];
    assert_eq!(sc["runAsUser"], 2102);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    let penv = env_of(proxy);
    assert_eq!(
        penv["WEFT_POD_NAME"],
        json!({"fieldRef": {"fieldPath": "metadata.name"}})
    );
    assert_eq!(
        penv["WEFT_POD_NAMESPACE"],
        json!({"fieldRef": {"fieldPath": "metadata.namespace"}})
    );
    assert_eq!(
        penv["WEFT_SERVICE_ACCOUNT"],
        json!({"fieldRef": {"fieldPath": "spec.serviceAccountName"}})
    );
    assert_eq!(penv["WEFT_TRUST_BUNDLE_PEM"], BUNDLE);
    assert_eq!(
        penv["WEFT_CONTROL_PLANE"],
        "https://weft-control-plane.weft-system.svc:15012"
    );
    assert_eq!(penv["WEFT_IDENTITY"], "ca");
    assert_eq!(penv["WEFT_INBOUND_MTLS"], "permissive");
    assert_eq!(penv["WEFT_DEFAULT_AUTHZ"], "allow");
    assert_eq!(penv["WEFT_CAPTURE"], "true");
    assert!(!penv.contains_key("WEFT_INBOUND_MTLS_PORTS"));
    assert!(
        !penv.contains_key("WEFT_ACCESS_LOG"),
        "the access log is off by default"
    );
    assert!(
        !penv.contains_key("WEFT_TRACE_OTLP_ENDPOINT"),
        "tracing is off by default"
    );
    // The app's HTTP readiness probe (named port) is pointed at the sidecar.
    let web = &spec["containers"][0];
    assert_eq!(
        web["readinessProbe"]["httpGet"],
        json!({"path": "/app-health/web/readyz", "port": 15020, "scheme": "HTTP"})
    );
    assert_eq!(web["readinessProbe"]["failureThreshold"], 3);
    let app: Value = serde_json::from_str(penv["WEFT_APP_PROBES"].as_str().unwrap()).unwrap();
    assert_eq!(
        app,
        json!({"/app-health/web/readyz": {
            "httpGet": {"port": 8080, "path": "/healthz", "httpHeaders": []},
            "timeoutSeconds": 1,
        }})
    );
    assert_eq!(proxy["resources"]["requests"]["cpu"], "100m");
    assert_eq!(proxy["resources"]["limits"]["memory"], "256Mi");

    // The pod's own volume stays; the token (audience weft-ca) and the labels file are added.
    assert_eq!(
        names(&spec["volumes"]),
        ["kube-api-access-x7k2p", "weft-token", "weft-podinfo"]
    );
    let token = &spec["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "weft-ca");
    assert_eq!(
        spec["volumes"][2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.labels"
    );
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["weft.dev/status"], "injected");
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "15020");
    assert_eq!(ann["prometheus.io/path"], "/metrics");
    assert_eq!(pod["metadata"]["labels"]["weft.dev/injected"], "true");
    assert_eq!(pod["metadata"]["labels"]["app"], "web");

    // Injecting the injected pod again changes nothing.
    let mut again = review.clone();
    again["request"]["object"] = pod;
    let (rsp, patched, decision) = run(&injector(true), &again);
    assert_eq!(rsp["allowed"], true);
    assert!(patched.is_none() && rsp.get("patch").is_none());
    assert_eq!(decision, Decision::Skip("already injected".into()));
}

#[test]
fn a_classic_sidecar_is_the_first_container_and_holds_the_app_in_post_start() {
    let (_, pod, _) = run(&injector(false), &fixture("deployment-pod.json"));
    let spec = &pod.unwrap()["spec"];
    assert_eq!(names(&spec["initContainers"]), ["weft-init"]);
    assert_eq!(names(&spec["containers"]), ["weft-proxy", "web"]);
    assert_eq!(
        spec["containers"][1]["readinessProbe"]["httpGet"]["path"],
        "/app-health/web/readyz"
    );
    let proxy = &spec["containers"][0];
    assert!(proxy["restartPolicy"].is_null() && proxy["startupProbe"].is_null());
    assert_eq!(
        proxy["lifecycle"]["postStart"]["exec"]["command"],
        json!(["weft-proxy", "wait", "--timeout", "120s"])
    );
}

#[test]
fn annotations_override_the_mesh_defaults_per_pod() {
    let (rsp, pod, _) = run(&injector(true), &fixture("annotated-pod.json"));
    let pod = pod.unwrap();
    let spec = &pod["spec"];
    // The proxy runs before the pod's own init containers (they may use the network).
    assert_eq!(
        names(&spec["initContainers"]),
        ["weft-init", "weft-proxy", "migrate"]
    );
    let ienv = env_of(&spec["initContainers"][0]);
    assert_eq!(ienv["WEFT_EXCLUDE_INBOUND_PORTS"], "9090,9091");
    assert_eq!(ienv["WEFT_EXCLUDE_OUTBOUND_PORTS"], "5432");
    assert_eq!(
        ienv["WEFT_EXCLUDE_OUTBOUND_CIDRS"],
        "169.254.169.254/32,10.96.0.0/12,fd00:10:96::/112"
    );
    let proxy = &spec["initContainers"][1];
    let penv = env_of(proxy);
    assert_eq!(penv["WEFT_LOG"], "weft_proxy=debug,info");
    assert_eq!(penv["WEFT_INBOUND_MTLS"], "strict");
    assert_eq!(penv["WEFT_DEFAULT_AUTHZ"], "deny");
    assert_eq!(penv["WEFT_ACCESS_LOG"], "json");
    // The tcpSocket probe goes through the sidecar; the gRPC one on 7000 cannot: that port
    // stays permissive, and whoever created the pod is told.
    assert_eq!(
        spec["containers"][0]["livenessProbe"]["httpGet"]["path"],
        "/app-health/ledger/livez"
    );
    assert_eq!(penv["WEFT_INBOUND_MTLS_PORTS"], "7000=permissive");
    let warnings = rsp["warnings"].as_array().unwrap();
    assert!(
        warnings[0].as_str().unwrap().contains("7000"),
        "{warnings:?}"
    );
    assert_eq!(proxy["resources"]["requests"]["cpu"], "200m");
    assert_eq!(proxy["resources"]["requests"]["memory"], "64Mi");
    assert_eq!(proxy["resources"]["limits"]["memory"], "512Mi");
    // No volumes before: the list is created.
    assert_eq!(names(&spec["volumes"]), ["weft-token", "weft-podinfo"]);
    // The pod's own scrape annotations win.
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/port"], "9090");
    assert!(ann.get("prometheus.io/path").is_none());
    assert_eq!(ann["weft.dev/status"], "injected");
}

#[test]
fn pods_that_must_not_be_injected_are_allowed_unchanged() {
    let inj = injector(true);
    let (rsp, patched, d) = run(&inj, &fixture("hostnetwork-pod.json"));
    assert!(rsp["allowed"] == true && patched.is_none());
    assert!(
        matches!(&d, Decision::Skip(why) if why.contains("hostNetwork")),
        "{d:?}"
    );

    let mut opt_out = fixture("deployment-pod.json");
    opt_out["request"]["object"]["metadata"]["annotations"] = json!({"weft.dev/inject": "false"});
    let (rsp, patched, d) = run(&inj, &opt_out);
    assert!(rsp["allowed"] == true && patched.is_none(), "{d:?}");

    let mut cp = fixture("deployment-pod.json");
    cp["request"]["object"]["metadata"]["labels"]["weft.dev/control-plane"] = json!("true");
    let (_, patched, d) = run(&inj, &cp);
    assert!(patched.is_none());
    assert!(
        matches!(&d, Decision::Skip(why) if why.contains("control plane")),
        "{d:?}"
    );

    let mut update = fixture("deployment-pod.json");
    update["request"]["operation"] = json!("UPDATE");
    assert!(run(&inj, &update).1.is_none());

    let mut not_pod = fixture("deployment-pod.json");
    not_pod["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    assert!(run(&inj, &not_pod).1.is_none());
}

#[test]
fn a_pod_that_cannot_be_read_or_a_bad_annotation_is_refused_with_the_reason() {
    let inj = injector(true);
    let (rsp, patched, _) = run(&inj, &fixture("malformed-pod.json"));
    assert!(patched.is_none());
    assert_eq!(rsp["allowed"], false);
    assert_eq!(rsp["status"]["code"], 400);
    let msg = rsp["status"]["message"].as_str().unwrap();
    assert!(msg.contains("cannot read the pod"), "{msg}");

    for (key, value, expect) in [
        (
            "weft.dev/exclude-inbound-ports",
            "80,http",
            "`http` is not a port",
        ),
        (
            "weft.dev/exclude-outbound-cidrs",
            "10.0.0.0/33",
            "`33` is not a prefix length",
        ),
        ("weft.dev/proxy-memory", "lots", "not a resource quantity"),
        (
            "weft.dev/mtls-mode",
            "sometimes",
            "not strict, permissive or disable",
        ),
        ("weft.dev/log-level", "loud", "not a log filter"),
        ("weft.dev/default-authz", "maybe", "not allow or deny"),
        ("weft.dev/access-log", "xml", "not off, json or apache"),
        ("weft.dev/trace-sampling", "150", "not a percentage"),
        ("weft.dev/inject", "maybe", "not enabled, disabled"),
        (
            "weft.dev/proxy-cpus",
            "1",
            "unknown annotation weft.dev/proxy-cpus",
        ),
    ] {
        let mut review = fixture("deployment-pod.json");
        review["request"]["object"]["metadata"]["annotations"] = json!({ key: value });
        let (rsp, patched, d) = run(&inj, &review);
        assert!(patched.is_none(), "{key}");
        assert_eq!(rsp["allowed"], false, "{key}");
        let msg = rsp["status"]["message"].as_str().unwrap();
        assert!(msg.contains(key) && msg.contains(expect), "{key}: {msg}");
        assert_eq!(d.result(), "denied");
    }
}

#[test]
fn a_body_that_is_no_admission_review_is_an_error() {
    let inj = injector(true);
    assert!(inj.review(b"not json").unwrap_err().contains("not JSON"));
    let err = inj
        .review(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#)
        .unwrap_err();
    assert!(err.contains("v1beta1"), "{err}");
    let err = inj
        .review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#)
        .unwrap_err();
    assert!(err.contains("uid"), "{err}");
}

#[test]
fn mesh_config_errors_name_the_field() {
    let base = "controlPlaneAddress: https://cp:15012\n";
    assert!(MeshConfig::parse(base).is_ok());
    for (extra, expect) in [
        ("mtlsMode: sometimes\n", "mtlsMode"),
        ("defaultAuthz: maybe\n", "defaultAuthz"),
        ("proxy: {logLevel: loud}\n", "proxy.logLevel"),
        ("proxy: {accessLog: xml}\n", "proxy.accessLog"),
        (
            "proxy: {tracing: {otlpEndpoint: collector:4317}}\n",
            "proxy.tracing.otlpEndpoint",
        ),
        (
            "proxy: {tracing: {sampling: -1}}\n",
            "proxy.tracing.sampling",
        ),
        (
            "proxy: {imagePullPolicy: Sometimes}\n",
            "proxy.imagePullPolicy",
        ),
        (
            "proxy: {resources: {requests: {cpu: lots}}}\n",
            "proxy.resources.cpu",
        ),
        (
            "capture: {excludeOutboundCidrs: [10.0.0.0]}\n",
            "excludeOutboundCidrs",
        ),
        ("capture: {excludeInboundPorts: [0]}\n", "port 0"),
        ("nativeSidecar: true\n", "nativeSidecar"),
    ] {
        let err = MeshConfig::parse(&format!("{base}{extra}")).unwrap_err();
        assert!(err.contains(expect), "{extra}: {err}");
    }
    let err = MeshConfig::parse("controlPlaneAddress: http://cp:15010\n").unwrap_err();
    assert!(err.contains("https://"), "{err}");
}

#[test]
fn quantities() {
    for ok in ["100m", "0.5", "64Mi", "1Gi", "2", "1e3", "1.5G"] {
        assert!(check_quantity(ok).is_ok(), "{ok}");
    }
    for bad in ["", "m", "1.2.3", "10MB", "-1", "1x"] {
        assert!(check_quantity(bad).is_err(), "{bad}");
    }
}

/// The chart's webhook configuration as `kubectl get mutatingwebhookconfiguration -o json`
/// shows it before the control plane has written its caBundle.
fn webhook_configuration() -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "weft-sidecar-injector-weft-system", "resourceVersion": "48213"},
        "webhooks": [{
            "name": "inject.weft.dev",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"service": {"name": "weft-control-plane", "namespace": "weft-system", "path": "/inject", "port": 15017}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}]
        }]
    })
}

#[test]
fn the_ca_bundle_is_written_into_every_webhook_once() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let config: MutatingWebhookConfiguration =
        serde_json::from_value(webhook_configuration()).unwrap();
    let updated = server::with_ca_bundle(config, BUNDLE.as_bytes()).expect("a change");
    let hook = &updated.webhooks.as_ref().unwrap()[0];
    assert_eq!(
        hook.client_config.ca_bundle.as_ref().unwrap().0,
        BUNDLE.as_bytes()
    );
    assert_eq!(updated.metadata.resource_version.as_deref(), Some("48213"));
    // Serialized, the bundle is base64 as the API expects.
    let text = serde_json::to_value(&updated).unwrap();
    assert_eq!(
        text["webhooks"][0]["clientConfig"]["caBundle"],
        base64::engine::general_purpose::STANDARD.encode(BUNDLE)
    );
    assert!(server::with_ca_bundle(updated, BUNDLE.as_bytes()).is_none());
}

#[tokio::test]
async fn the_ca_bundle_is_kept_set_through_the_api() {
    use crate::kube_stand_in::{serve, status};
    const PATH: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/weft-sidecar-injector-weft-system";
    // The chart's object as the API server returns it, with an empty caBundle; a PUT replaces
    // it (and bumps its resourceVersion).
    let stored = std::sync::Arc::new(std::sync::Mutex::new(webhook_configuration()));
    let store = stored.clone();
    let (client, seen) = serve(move |method, path, body| match (method.as_str(), path) {
        ("GET", PATH) => (200, store.lock().unwrap().clone()),
        ("PUT", PATH) => {
            let mut next = body.clone();
            next["metadata"]["resourceVersion"] = json!("48214");
            *store.lock().unwrap() = next.clone();
            (200, next)
        }
        _ => status(404, "NotFound", "no such path"),
    })
    .await;
    tokio::spawn(server::keep_ca_bundle(
        client,
        "weft-sidecar-injector-weft-system".into(),
        BUNDLE.as_bytes().to_vec(),
        std::time::Duration::from_millis(10),
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let n = seen.lock().unwrap().len();
        if n >= 4 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{n} requests");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let puts: Vec<&Value> = seen
        .iter()
        .filter(|(m, _, _)| m == http::Method::PUT)
        .map(|(_, _, b)| b)
        .collect();
    // One write, carrying the version it read (so a concurrent change conflicts instead of
    // being overwritten); after it, only reads: the bundle is in place.
    assert_eq!(puts.len(), 1, "{seen:?}");
    assert_eq!(puts[0]["metadata"]["resourceVersion"], "48213");
    assert_eq!(
        stored.lock().unwrap()["webhooks"][0]["clientConfig"]["caBundle"],
        base64::engine::general_purpose::STANDARD.encode(BUNDLE)
    );
}

#[test]
fn tracing_goes_to_every_sidecar_and_a_pod_may_sample_more() {
    let mut inj = injector(true);
    inj.mesh = MeshConfig::parse(
        "controlPlaneAddress: https://cp:15012\nproxy: {tracing: {otlpEndpoint: 'http://otel.obs:4317', sampling: 5}}\n",
    )
    .unwrap();
    let mut review = fixture("deployment-pod.json");
    let (_, pod, _) = run(&inj, &review);
    let pod = pod.unwrap();
    let penv = env_of(&pod["spec"]["initContainers"][1]);
    assert_eq!(penv["WEFT_TRACE_OTLP_ENDPOINT"], "http://otel.obs:4317");
    assert_eq!(penv["WEFT_TRACE_SAMPLING"], "5");
    review["request"]["object"]["metadata"]["annotations"] =
        json!({ "weft.dev/trace-sampling": "100" });
    let (_, pod, _) = run(&inj, &review);
    let pod = pod.unwrap();
    let penv = env_of(&pod["spec"]["initContainers"][1]);
    assert_eq!(penv["WEFT_TRACE_SAMPLING"], "100");
    assert!(
        !penv.contains_key("WEFT_GENERATE_REQUEST_ID"),
        "on by default"
    );
    inj.mesh = MeshConfig::parse(
        "controlPlaneAddress: https://cp:15012\nproxy: {tracing: {generateRequestId: false}}\n",
    )
    .unwrap();
    let (_, pod, _) = run(&inj, &review);
    let penv = env_of(&pod.unwrap()["spec"]["initContainers"][1]);
    assert_eq!(penv["WEFT_GENERATE_REQUEST_ID"], "false");
    assert!(!penv.contains_key("WEFT_TRACE_OTLP_ENDPOINT"));
}
