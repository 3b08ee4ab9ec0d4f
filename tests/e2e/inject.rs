//! The sidecar injector, served by the real control plane on its TLS port: recorded
//! AdmissionReviews (`control-plane/testdata/admission`) are POSTed by `curl` the way the API
//! server sends them, each answer's JSONPatch is applied by Python's `jsonpatch` (not weft's
//! code), and the resulting pod is validated against the Kubernetes 1.33 Pod schema by
//! `kubernetes-validate`. No API server can run here, so these recorded objects stand in for
//! the requests one would make.

use std::{path::Path, process::Command};

use serde_json::{Value, json};
use weft_tests::{
    chain::TempDir,
    k8s::{self, run, validate},
    mesh, tools,
};

/// The chart's default mesh config, as its ConfigMap renders it.
const MESH: &str = "controlPlaneAddress: https://weft-control-plane.weft-system.svc:15012
trustDomain: cluster.local
nativeSidecars: true
mtlsMode: permissive
proxy:
  image: weft/proxy:0.1.0
  imagePullPolicy: IfNotPresent
  logLevel: info
capture:
  excludeOutboundCidrs: [169.254.169.254/32]
";

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../control-plane/testdata/admission")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

struct Webhook {
    cp: weft_tests::proxy::Proxy,
    dir: TempDir,
    _registry: TempDir,
    curl: std::path::PathBuf,
    py: std::path::PathBuf,
}

impl Webhook {
    /// The control plane as the mesh CA and the injector with `mesh` as its config.
    fn start(tag: &str, mesh: &str) -> Option<Webhook> {
        let curl = tools::require("curl")?;
        let py = k8s::python()?;
        let dir = TempDir::new(tag);
        let registry = TempDir::new(&format!("{tag}-registry"));
        let mesh_file = dir.write("mesh.yaml", mesh);
        let ca = dir.0.join("ca");
        let cp = mesh::control_plane(
            &registry,
            &[
                "--ca-dir",
                ca.to_str().unwrap(),
                "--ca-create",
                "--mesh-config",
                mesh_file.to_str().unwrap(),
                "--webhook-addr",
                "127.0.0.1:0",
            ],
        );
        Some(Webhook {
            cp,
            dir,
            _registry: registry,
            curl,
            py,
        })
    }

    /// POSTs `review` as the API server would (HTTPS, verifying the certificate against the
    /// mesh CA); returns the HTTP status and the body.
    fn post(&self, name: &str, review: &Value) -> (u16, String) {
        let file = self
            .dir
            .write(&format!("{name}.review.json"), &review.to_string());
        let url = format!("https://{}/inject?timeout=10s", self.cp.addr("webhook"));
        let (ok, out, err) = run(Command::new(&self.curl)
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(self.dir.0.join("ca/ca.crt"))
            .args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(url));
        assert!(ok, "curl: {err}");
        let (body, code) = out.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), body.to_string())
    }

    /// Reviews `review`; returns the answer's `response` and, when it patched, the pod after
    /// `jsonpatch` applied the patch, checked against the Pod schema.
    fn review(&self, name: &str, review: &Value) -> (Value, Option<Value>) {
        let (status, body) = self.post(name, review);
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let response = answer["response"].clone();
        assert_eq!(response["uid"], review["request"]["uid"]);
        let answer_file = self.dir.write(&format!("{name}.answer.json"), &body);
        let out = self.dir.0.join(format!("{name}.pod.json"));
        let status = Command::new(&self.py)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/apply_patch.py"))
            .arg(self.dir.0.join(format!("{name}.review.json")))
            .arg(&answer_file)
            .arg(&out)
            .status()
            .unwrap();
        if status.code() == Some(3) {
            return (response, None);
        }
        assert!(status.success(), "apply_patch.py failed for {name}");
        let (passed, unknown) = validate(&self.py, &out);
        assert_eq!(
            (passed, unknown),
            (vec!["pod".to_string()], vec![]),
            "{name}"
        );
        let pod: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        (response, Some(pod))
    }
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {list}"))
}

fn env<'a>(c: &'a Value, name: &str) -> &'a Value {
    let e = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {}", c["name"]));
    if e["value"].is_null() {
        &e["valueFrom"]
    } else {
        &e["value"]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_pods_validate_against_the_pod_schema_and_injection_is_idempotent() {
    let Some(wh) = Webhook::start("inject", MESH) else {
        return;
    };

    // A Deployment's pod: native sidecar after the capture init container.
    let review = fixture("deployment-pod.json");
    let (rsp, pod) = wh.review("deployment", &review);
    assert_eq!(rsp["allowed"], true);
    let pod = pod.expect("the pod is injected");
    let inits = &pod["spec"]["initContainers"];
    let order: Vec<&str> = inits
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["weft-init", "weft-proxy"]);
    let init = container(inits, "weft-init");
    assert_eq!(init["args"], json!(["init"]));
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(
        env(init, "WEFT_EXCLUDE_OUTBOUND_CIDRS"),
        "169.254.169.254/32"
    );
    let proxy = container(inits, "weft-proxy");
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["securityContext"]["runAsUser"], 2102);
    assert_eq!(proxy["image"], "weft/proxy:0.1.0");
    assert_eq!(
        env(proxy, "WEFT_SERVICE_ACCOUNT"),
        &json!({"fieldRef": {"fieldPath": "spec.serviceAccountName"}})
    );
    // The trust bundle the sidecar verifies the control plane with is this CA's.
    let ca = std::fs::read_to_string(wh.dir.0.join("ca/ca.crt")).unwrap();
    assert_eq!(
        env(proxy, "WEFT_TRUST_BUNDLE_PEM").as_str().unwrap().trim(),
        ca.trim()
    );
    let token = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "weft-token")
        .unwrap();
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "weft-ca"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        "15020"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["weft.dev/status"],
        "injected"
    );
    // The app's readiness probe (HTTP on the named port) now asks the sidecar, which asks the
    // app; nothing else in the app container changed.
    let web = &pod["spec"]["containers"][0];
    assert_eq!(
        web["readinessProbe"]["httpGet"],
        json!({"path": "/app-health/web/readyz", "port": 15020, "scheme": "HTTP"})
    );
    assert_eq!(web["readinessProbe"]["periodSeconds"], 10);
    let probes = env(proxy, "WEFT_APP_PROBES").as_str().unwrap();
    let parsed =
        weft_proxy::app_probe::parse(probes).expect("the proxy reads what the injector writes");
    let readyz = &parsed["/app-health/web/readyz"];
    assert_eq!(readyz.http_get.as_ref().unwrap().port, 8080);
    assert_eq!(readyz.http_get.as_ref().unwrap().path, "/healthz");
    let mut original = review["request"]["object"]["spec"]["containers"][0].clone();
    let mut injected = web.clone();
    original.as_object_mut().unwrap().remove("readinessProbe");
    injected.as_object_mut().unwrap().remove("readinessProbe");
    assert_eq!(injected, original);

    // The injected pod again: nothing to do.
    let mut again = review.clone();
    again["request"]["object"] = pod;
    let (rsp, patched) = wh.review("again", &again);
    assert!(rsp["allowed"] == true && patched.is_none(), "{rsp}");

    // Opt-out and hostNetwork: allowed, unchanged.
    let mut opt_out = review.clone();
    opt_out["request"]["object"]["metadata"]["annotations"] = json!({"weft.dev/inject": "false"});
    let (rsp, patched) = wh.review("opt-out", &opt_out);
    assert!(rsp["allowed"] == true && patched.is_none(), "{rsp}");
    let (rsp, patched) = wh.review("host-network", &fixture("hostnetwork-pod.json"));
    assert!(rsp["allowed"] == true && patched.is_none(), "{rsp}");

    // Annotations: exclusions, resources, log level, strict mTLS (probe port kept permissive).
    let (rsp, pod) = wh.review("annotated", &fixture("annotated-pod.json"));
    let pod = pod.expect("the annotated pod is injected");
    let inits = &pod["spec"]["initContainers"];
    assert_eq!(
        inits[2]["name"], "migrate",
        "the pod's init container runs after the proxy"
    );
    let init = container(inits, "weft-init");
    assert_eq!(env(init, "WEFT_EXCLUDE_INBOUND_PORTS"), "9090,9091");
    assert_eq!(env(init, "WEFT_EXCLUDE_OUTBOUND_PORTS"), "5432");
    let proxy = container(inits, "weft-proxy");
    assert_eq!(env(proxy, "WEFT_INBOUND_MTLS"), "strict");
    // The TCP liveness probe goes through the sidecar; the gRPC readiness probe cannot, so
    // its port stays permissive (and the creator is warned).
    let ledger = container(&pod["spec"]["containers"], "ledger");
    assert_eq!(
        ledger["livenessProbe"]["httpGet"]["path"],
        "/app-health/ledger/livez"
    );
    assert!(ledger["livenessProbe"]["tcpSocket"].is_null());
    assert_eq!(ledger["readinessProbe"]["grpc"]["port"], 7000);
    assert_eq!(env(proxy, "WEFT_INBOUND_MTLS_PORTS"), "7000=permissive");
    assert_eq!(env(proxy, "WEFT_LOG"), "weft_proxy=debug,info");
    assert_eq!(proxy["resources"]["requests"]["cpu"], "200m");
    assert_eq!(proxy["resources"]["limits"]["memory"], "512Mi");
    assert!(rsp["warnings"][0].as_str().unwrap().contains("7000"));

    // A pod that cannot be read: refused, with the reason, and the connection serves on.
    let (rsp, patched) = wh.review("malformed", &fixture("malformed-pod.json"));
    assert!(patched.is_none());
    assert_eq!(rsp["allowed"], false);
    let msg = rsp["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("cannot read the pod") && msg.contains("sequence"),
        "{msg}"
    );
    let mut bad = review.clone();
    bad["request"]["object"]["metadata"]["annotations"] =
        json!({"weft.dev/exclude-outbound-ports": "5432,postgres"});
    let (rsp, _) = wh.review("bad-annotation", &bad);
    assert_eq!(rsp["allowed"], false);
    let msg = rsp["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("weft.dev/exclude-outbound-ports") && msg.contains("`postgres` is not a port"),
        "{msg}"
    );
    // Not an AdmissionReview at all: 400.
    let (status, body) = wh.post("garbage", &json!({"hello": "world"}));
    assert_eq!(status, 400);
    assert!(body.contains("AdmissionReview"), "{body}");

    // Every outcome is counted, and the control plane's metrics pass promtool.
    let metrics = wh.cp.metrics().await;
    for (result, n) in [
        ("injected", 2),
        ("skipped", 3),
        ("denied", 2),
        ("invalid", 1),
    ] {
        let line = format!("weft_cp_injections_total{{result=\"{result}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    tools::assert_promtool_clean(&metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_sidecar_pod_validates_and_waits_for_the_proxy() {
    let mesh = MESH.replace("nativeSidecars: true", "nativeSidecars: false");
    let Some(wh) = Webhook::start("inject-classic", &mesh) else {
        return;
    };
    let (_, pod) = wh.review("classic", &fixture("deployment-pod.json"));
    let pod = pod.unwrap();
    assert_eq!(pod["spec"]["containers"][0]["name"], "weft-proxy");
    assert_eq!(
        pod["spec"]["containers"][0]["lifecycle"]["postStart"]["exec"]["command"],
        json!(["weft-proxy", "wait", "--timeout", "120s"])
    );
    // The probe rewrite landed on the app container, not on the proxy put in front of it.
    assert_eq!(pod["spec"]["containers"][1]["name"], "web");
    assert_eq!(
        pod["spec"]["containers"][1]["readinessProbe"]["httpGet"]["path"],
        "/app-health/web/readyz"
    );
    assert!(pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/ready");
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "weft-init");
}

/// What the classic sidecar's postStart hook runs: it returns once the sidecar is ready, and
/// fails with the reason when it never is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_proxy_wait_returns_when_the_sidecar_is_ready() {
    let dir = TempDir::new("wait");
    let table = dir.write("mesh.yaml", "services: []\n");
    let proxy = weft_tests::proxy::Proxy::start(&["--config", table.to_str().unwrap()]);
    let wait = |addr: String, timeout: &str| {
        run(
            Command::new(weft_tests::proxy::binary_named("weft-proxy")).args([
                "wait",
                "--probe-addr",
                &addr,
                "--timeout",
                timeout,
                "--interval",
                "20ms",
            ]),
        )
    };
    let (ok, _, err) = wait(proxy.addr("probe").to_string(), "10s");
    assert!(ok, "{err}");
    // Nothing listens where the proxy was once it is gone.
    let gone = proxy.addr("probe").to_string();
    drop(proxy);
    let (ok, _, err) = wait(gone.clone(), "300ms");
    assert!(!ok);
    assert!(err.contains(&gone) && err.contains("not ready"), "{err}");
}

/// The probes the injector points at the sidecar: the probe server asks the application over
/// loopback and answers as the kubelet would judge it (200-399 ready, else 503 with why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_probes_ask_the_application_on_the_kubelets_behalf() {
    use std::sync::atomic::Ordering;
    let app = weft_tests::http_peer::server("app").await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = TempDir::new("app-probes");
    let table = dir.write("mesh.yaml", "services: []\n");
    // What the injector writes for the recorded Deployment pod, with the peer's port.
    let probes = json!({
        "/app-health/web/readyz": {"httpGet": {"port": app.addr.port(), "path": "/id",
            "httpHeaders": [{"name": "X-Probe", "value": "kubelet"}]}, "timeoutSeconds": 2},
        "/app-health/web/livez": {"tcpSocket": {"port": app.addr.port()}, "timeoutSeconds": 1},
        "/app-health/db/livez": {"tcpSocket": {"port": closed}, "timeoutSeconds": 1},
    });
    let probes = probes.to_string();
    let proxy = weft_tests::proxy::Proxy::start(&[
        "--config",
        table.to_str().unwrap(),
        "--app-probes",
        &probes,
    ]);
    assert_eq!(proxy.get("probe", "/app-health/web/readyz").await.0, 200);
    assert!(
        app.state.requests.load(Ordering::SeqCst) >= 1,
        "the app was asked"
    );
    assert_eq!(proxy.get("probe", "/app-health/web/livez").await.0, 200);
    let (status, body) = proxy.get("probe", "/app-health/db/livez").await;
    assert_eq!(status, 503);
    assert!(body.contains(&format!("127.0.0.1:{closed}")), "{body}");
    // The application failing its own check fails the probe.
    app.state.status.store(500, Ordering::SeqCst);
    let (status, body) = proxy.get("probe", "/app-health/web/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("answered 500"), "{body}");
    assert_eq!(proxy.get("probe", "/app-health/nope/readyz").await.0, 404);

    // A malformed list stops the start, naming the flag.
    let out = Command::new(weft_tests::proxy::binary_named("weft-proxy"))
        .args([
            "--config",
            table.to_str().unwrap(),
            "--app-probes",
            r#"{"/healthz": {}}"#,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--app-probes") && err.contains("/app-health/"),
        "{err}"
    );
}
