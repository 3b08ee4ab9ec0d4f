//! The `weft-control-plane` binary: file registry in, xDS out to a standard ADS client.

use std::{
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use weft_tests::{
    chain::TempDir,
    eventually,
    mesh::{self, weftctl},
    proxy::{Proxy, binary_named},
};
use weft_xds_proto::{
    discovery::{AggregatedDiscoveryServiceClient, DiscoveryRequest},
    envoy::config::{cluster::v3::Cluster, core::v3::Node, endpoint::v3::ClusterLoadAssignment},
    type_url::{CLUSTER, ENDPOINT},
};

const SERVICE: &str = "apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  port: 8080
  endpoints:
    - {address: 127.0.0.1:9001, labels: {version: v1}}
    - {address: 127.0.0.1:9002, labels: {version: v2}}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: web, namespace: demo}
spec:
  service: web.demo.svc.cluster.local:8080
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
  routes: [{backends: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]}]
";

fn start(dir: &TempDir) -> Proxy {
    mesh::control_plane(dir, &["--registry-poll-interval", "100ms"])
}

/// Opens a state-of-the-world ADS stream to `cp` as `node` and subscribes to every cluster.
async fn subscribe_clusters(
    cp: &Proxy,
    node: &str,
) -> (
    tokio::sync::mpsc::Sender<DiscoveryRequest>,
    tonic::Streaming<weft_xds_proto::discovery::DiscoveryResponse>,
) {
    let mut client =
        AggregatedDiscoveryServiceClient::connect(format!("http://{}", cp.addr("xds")))
            .await
            .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let rsp = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let node = Some(Node {
        id: node.into(),
        ..Default::default()
    });
    tx.send(DiscoveryRequest {
        node,
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    (tx, rsp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_file_registry_over_ads_and_follows_edits() {
    let dir = TempDir::new("cp");
    dir.write("web.yaml", SERVICE);
    let mut cp = start(&dir);
    let (tx, mut rsp) = subscribe_clusters(&cp, "proxy-1").await;
    let cds = rsp.message().await.unwrap().unwrap();
    let names: Vec<String> = cds
        .resources
        .iter()
        .map(|a| Cluster::decode(&*a.value).unwrap().name)
        .collect();
    let svc = "web.demo.svc.cluster.local:8080";
    assert_eq!(
        names,
        [svc.to_string(), format!("{svc}/v1"), format!("{svc}/v2")]
    );
    tx.send(DiscoveryRequest {
        version_info: cds.version_info.clone(),
        type_url: CLUSTER.into(),
        response_nonce: cds.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    tx.send(DiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names: vec![format!("{svc}/v2")],
        ..Default::default()
    })
    .await
    .unwrap();
    let eds = rsp.message().await.unwrap().unwrap();
    let cla = ClusterLoadAssignment::decode(&*eds.resources[0].value).unwrap();
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1);

    // An edit to the file: a third v2 endpoint reaches the subscribed client.
    let third = "127.0.0.1:9002, labels: {version: v2}}\n    - {address: 127.0.0.1:9003, labels: {version: v2}}";
    dir.write(
        "web.yaml",
        &SERVICE.replace("127.0.0.1:9002, labels: {version: v2}}", third),
    );
    let eds2 = tokio::time::timeout(Duration::from_secs(10), rsp.message())
        .await
        .expect("a push")
        .unwrap()
        .unwrap();
    assert_eq!(eds2.type_url, ENDPOINT);
    let cla = ClusterLoadAssignment::decode(&*eds2.resources[0].value).unwrap();
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 2);

    // Status over the API (loopback), metrics on the port the network reaches, which shows
    // nothing of the mesh.
    let status: serde_json::Value =
        serde_json::from_str(&cp.get("api", "/api/v1/proxy-status").await.1).unwrap();
    for path in ["/proxy_status", "/registry"] {
        let (code, body) = cp.get("metrics", path).await;
        assert_eq!(code, 404, "{path} on the metrics port: {body}");
    }
    assert_eq!(status["proxy-1"]["connected"], true);
    assert_eq!(
        status["proxy-1"]["types"][CLUSTER]["acked"],
        cds.version_info.as_str()
    );
    let metrics = cp.get("metrics", "/metrics").await.1;
    assert!(metrics.contains("weft_cp_connected_proxies 1"), "{metrics}");
    weft_tests::tools::assert_promtool_clean(&metrics);

    // A bad edit keeps what is registered and is reported.
    dir.write("web.yaml", &SERVICE.replace("port: 8080", "port: eighty"));
    eventually(
        Duration::from_secs(10),
        "the registry error to be counted",
        || async {
            cp.get("metrics", "/metrics")
                .await
                .1
                .contains("weft_cp_registry_errors 1")
                .then_some(())
        },
    )
    .await;
    let registry: serde_json::Value =
        serde_json::from_str(&cp.get("api", "/api/v1/registry").await.1).unwrap();
    assert_eq!(
        registry["services"][svc]["spec"]["endpoints"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    cp.signal("TERM");
    assert!(
        cp.wait_exit(Duration::from_secs(10))
            .expect("exits")
            .success()
    );
}

#[test]
fn a_missing_registry_directory_stops_the_start() {
    let out = Command::new(binary_named("weft-control-plane"))
        .args([
            "--registry-dir",
            "/nonexistent/registry",
            "--log-level",
            "off",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "weft-control-plane: error: registry directory /nonexistent/registry: No such file or directory (os error 2)\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftctl_applies_lists_deletes_and_reports_proxies() {
    let dir = TempDir::new("weftctl");
    let (service, policy) = SERVICE.split_once("---\n").unwrap();
    dir.write("web.yaml", service);
    let cp = start(&dir);

    let (code, out, _) = weftctl(&cp, &["get", "services"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        out,
        "SERVICE                          REGISTRATION  PROTOCOL  ENDPOINTS\nweb.demo.svc.cluster.local:8080  demo/web      http      2\n"
    );

    // A bad policy is refused before anything is sent, with the field named.
    let work = TempDir::new("weftctl-files");
    let bad = work.write(
        "bad.yaml",
        &policy.replace("{subset: v2, weight: 10}", "{subset: v3, weight: 10}"),
    );
    let (code, _, err) = weftctl(&cp, &["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        format!(
            "weftctl: {}: policy demo/web: spec.routes[0].backends[1].subset: unknown subset `v3` (defined: v1, v2)\n",
            bad.display()
        )
    );

    // A regex every proxy would refuse (its compiled program is over the bound proxies
    // enforce) is refused here, by the same check, not NACKed later by every proxy.
    let heavy = work.write(
        "heavy.yaml",
        &policy.replace(
            "routes: [{backends:",
            "routes: [{match: {path: {regex: '/\\w{60}'}}, backends:",
        ),
    );
    let (code, _, err) = weftctl(&cp, &["apply", "-f", heavy.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("policy demo/web: spec.routes[0].match.path.regex: invalid regex: compiled, it is larger than the size limit of 2 MiB"),
        "{err}"
    );

    let good = work.write("good.yaml", policy);
    let (code, out, err) = weftctl(&cp, &["apply", "-f", good.to_str().unwrap()]);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "policy demo/web applied\n"),
        "{err}"
    );
    let listed = eventually(
        Duration::from_secs(10),
        "the policy in the registry",
        || async {
            let (_, out, _) = weftctl(&cp, &["get", "policies"]);
            out.contains("demo/web").then_some(out)
        },
    )
    .await;
    assert_eq!(
        listed,
        "POLICY    SERVICE                          ROUTES  SUBSETS\ndemo/web  web.demo.svc.cluster.local:8080  1       2\n"
    );

    // A proxy connects and acknowledges: proxy-status shows it.
    let (tx, mut rsp) = subscribe_clusters(&cp, "sidecar-7").await;
    // ACK every response: the policy applied above may still be on its way (pushes are
    // debounced), and an ACK of a superseded response is rightly ignored by the server.
    let acked = Arc::new(Mutex::new(String::new()));
    let last = acked.clone();
    tokio::spawn(async move {
        while let Ok(Some(r)) = rsp.message().await {
            let ack = DiscoveryRequest {
                version_info: r.version_info.clone(),
                type_url: CLUSTER.into(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            };
            if tx.send(ack).await.is_err() {
                return;
            }
            *last.lock().unwrap() = r.version_info;
        }
    });
    let (status, version) = eventually(
        Duration::from_secs(10),
        "the ACK in proxy-status",
        || async {
            let version = acked.lock().unwrap().clone();
            let (_, out, _) = weftctl(&cp, &["proxy-status"]);
            (!version.is_empty() && out.contains(&version)).then_some((out, version))
        },
    )
    .await;
    let row = status.lines().nth(1).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols,
        [
            "sidecar-7",
            "true",
            "sotw",
            version.as_str(),
            "-",
            "-",
            "-",
            "-"
        ],
        "{status}"
    );

    // Two policies whose namespace/name would collide with `-` for the slash are kept apart.
    let pair = ["a-b/c", "a/b-c"].map(|key| {
        let (ns, name) = key.split_once('/').unwrap();
        work.write(
            &format!("{ns}_{name}.yaml"),
            &format!(
                "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  service: {name}.{ns}.svc.cluster.local:80\n  timeout: 1s\n"
            ),
        )
    });
    for f in &pair {
        let (code, _, err) = weftctl(&cp, &["apply", "-f", f.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{err}");
    }
    let (code, out, _) = weftctl(&cp, &["delete", "policy", "a-b/c"]);
    assert_eq!((code, out.as_str()), (Some(0), "policy a-b/c deleted\n"));
    let (code, out, err) = weftctl(&cp, &["delete", "policy", "a/b-c"]);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "policy a/b-c deleted\n"),
        "the other one is still there: {err}"
    );
    // On loopback, the API answers loopback host names only (DNS rebinding).
    let (code, body) = weft_tests::http_peer::exchange(
        cp.addr("api"),
        http::Request::builder()
            .method("GET")
            .uri("/api/v1/registry")
            .header("host", "rebind.example:15015"),
        String::new(),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    // A path the API does not serve is answered, whatever its length.
    for path in [
        "/api/v1/proxies/config",
        "/api/v1/proxies//config",
        "/api/v1/proxies/",
    ] {
        let (code, body) = cp.get("api", path).await;
        assert_eq!(code, 404, "{path}: {body}");
    }

    let (code, out, _) = weftctl(&cp, &["delete", "policy", "demo/web"]);
    assert_eq!((code, out.as_str()), (Some(0), "policy demo/web deleted\n"));
    let (code, _, err) = weftctl(&cp, &["delete", "policy", "demo/nope"]);
    assert_eq!(
        (code, err.as_str()),
        (Some(1), "weftctl: no policy demo/nope\n")
    );
}

#[test]
fn weftctl_says_when_it_cannot_reach_the_control_plane() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Command::new(binary_named("weftctl"))
        .args(["--control-plane", &free.to_string(), "get", "services"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with(&format!(
            "weftctl: cannot reach the control plane at {free}: Connection refused"
        )),
        "{err}"
    );
    assert!(
        err.ends_with(
            "(is weft-control-plane running? set --control-plane or WEFT_CONTROL_PLANE)\n"
        ),
        "{err}"
    );
}

#[test]
fn the_kubernetes_registry_without_credentials_says_so() {
    let home = TempDir::new("no-kube");
    let out = Command::new(binary_named("weft-control-plane"))
        .args(["--registry", "kubernetes", "--log-level", "off"])
        .env("HOME", &home.0)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "Kubernetes: --registry kubernetes needs cluster credentials (in-cluster service account or KUBECONFIG)"
        ),
        "{err}"
    );
}

/// A policy an earlier weftctl stored as `weftctl-<ns>-<name>` is replaced, not shadowed, when
/// it is applied again (the old file sorted first and won), and `delete` removes it.
#[test]
fn a_policy_stored_under_the_earlier_name_is_replaced_and_deleted() {
    let dir = TempDir::new("weftctl-legacy");
    let (service, policy) = SERVICE.split_once("---\n").unwrap();
    dir.write("web.yaml", service);
    dir.write("weftctl-demo-web.yaml", policy);
    let cp = start(&dir);
    let work = TempDir::new("weftctl-legacy-files");
    let tighter = work.write(
        "p.yaml",
        &policy
            .replace("weight: 90", "weight: 50")
            .replace("weight: 10", "weight: 50"),
    );
    let (code, out, err) = weftctl(&cp, &["apply", "-f", tighter.to_str().unwrap()]);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "policy demo/web applied\n"),
        "{err}"
    );
    assert!(
        !dir.0.join("weftctl-demo-web.yaml").exists(),
        "the earlier file is gone"
    );
    let now = std::fs::read_to_string(dir.0.join("weftctl-demo_web.yaml")).unwrap();
    assert!(now.contains("weight: 50"), "{now}");

    dir.write("weftctl-demo-web.yaml", policy);
    std::fs::remove_file(dir.0.join("weftctl-demo_web.yaml")).unwrap();
    let (code, out, err) = weftctl(&cp, &["delete", "policy", "demo/web"]);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "policy demo/web deleted\n"),
        "{err}"
    );
    assert!(!dir.0.join("weftctl-demo-web.yaml").exists());
}

/// An xDS request larger than `--xds-max-message-size` (4 MiB by default) ends its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_xds_request_ends_its_stream() {
    let dir = TempDir::new("xds-limit");
    dir.write("web.yaml", SERVICE.split_once("---\n").unwrap().0);
    let cp = start(&dir);
    let (tx, mut rsp) = subscribe_clusters(&cp, "big").await;
    assert!(rsp.message().await.unwrap().is_some(), "the first answer");
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: "big".into(),
            ..Default::default()
        }),
        type_url: CLUSTER.into(),
        // About 5 MiB of names.
        resource_names: (0..160_000)
            .map(|i| format!("cluster-name-number-{i:08}"))
            .collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    // The server drops the stream: it ends (or fails) instead of answering.
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = rsp.message().await {}
    })
    .await
    .expect("the stream ends");
    assert!(
        cp.logs
            .lock()
            .unwrap()
            .iter()
            .all(|l| !l.contains("panicked")),
        "the control plane is fine"
    );
}

/// The control plane's plain HTTP servers keep the bounds the sidecar's admin and probe
/// servers keep: a client that does not finish its request's headers within 5 s is cut off,
/// and each server holds at most 256 connections, a new one beyond taking the place of the
/// oldest (so whoever holds many cannot lock the kubelet's probes out). (Both held connections
/// for ever, without a limit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_and_api_servers_bound_slow_and_idle_clients() {
    let dir = TempDir::new("cp-bounds");
    let cp = weft_tests::mesh::control_plane(&dir, &[]);
    for listener in ["metrics", "api"] {
        weft_tests::slow_headers_are_cut_off(cp.addr(listener), listener).await;

        weft_tests::the_newest_connection_takes_the_oldests_place(cp.addr(listener), listener, 256)
            .await;
    }
    // Once they are gone, the servers answer again.
    weft_tests::eventually(
        Duration::from_secs(10),
        "the metrics server to answer",
        || async { (cp.get("metrics", "/live").await.0 == 200).then_some(()) },
    )
    .await;
}

/// Stops the child this test started, by its PID, however the test ends.
/// Prometheus' HTTP service discovery: the control plane lists every connected proxy's
/// `/metrics` (its probe port, on the address its ADS stream comes from) with its namespace
/// and pod, and a real Prometheus given that list scrapes the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_finds_and_scrapes_the_connected_proxies() {
    let Some(prometheus) = weft_tests::tools::require("prometheus") else {
        return;
    };
    let dir = TempDir::new("prometheus-sd");
    let cp = mesh::control_plane(&dir, &[]);
    let proxy = Proxy::start(&[
        "--control-plane",
        &cp.addr("xds").to_string(),
        "--pod-name",
        "web-7",
        "--pod-namespace",
        "shop",
    ]);
    let probe = proxy.addr("probe").to_string();
    let groups: serde_json::Value = eventually(Duration::from_secs(10), "the proxy listed", || {
        let cp = &cp;
        async move {
            let (status, body) = cp.get("metrics", "/prometheus/targets").await;
            assert_eq!(status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            (v.as_array()?.len() == 1).then_some(v)
        }
    })
    .await;
    assert_eq!(groups[0]["targets"], serde_json::json!([probe]));
    // What a node says of itself is offered for relabelling only, never a label by itself.
    assert_eq!(groups[0]["labels"]["__meta_weft_namespace"], "shop");
    assert_eq!(groups[0]["labels"]["__meta_weft_pod"], "web-7");
    assert_eq!(groups[0]["labels"]["__meta_weft_node_id"], "web-7.shop");
    assert_eq!(groups[0]["labels"].as_object().unwrap().len(), 3);

    // A real Prometheus, scraping what the list names every second.
    let prom = weft_tests::prometheus::Prometheus::start(&prometheus, &dir, cp.addr("metrics"));
    let query = "weft_xds_connected%7Bjob%3D%22weft%22%7D";
    let sample = prom.first_sample(query, Duration::from_secs(30)).await;
    let log = prom.log();
    assert_eq!(sample["metric"]["instance"], probe, "{sample}\n{log}");
    assert_eq!(sample["metric"]["namespace"], "shop");
    assert_eq!(sample["metric"]["pod"], "web-7");
    assert_eq!(
        sample["value"][1], "1",
        "the proxy's xDS stream is up: {sample}"
    );

    // A proxy that disconnects leaves the list.
    drop(proxy);
    eventually(Duration::from_secs(10), "the proxy unlisted", || {
        let cp = &cp;
        async move {
            let (_, body) = cp.get("metrics", "/prometheus/targets").await;
            (body.trim() == "[]").then_some(())
        }
    })
    .await;
}
