//! The etcd registry against a real etcd: documents written with `etcdctl`, workloads that
//! register themselves (`weft-proxy --register`) with leases, and restarts of the control plane
//! and of etcd itself.

use std::{process::Command, time::Duration};

use http::Request;
use http_body_util::BodyExt;
use weft_tests::{
    etcd::Etcd,
    eventually, http_peer,
    mesh::{self, weftctl},
    proxy::Proxy,
    tools,
};

const WEB: &str = "web.demo.svc.cluster.local:8080";

fn etcdctl(etcd: &Etcd, args: &[&str]) -> String {
    let bin = tools::require("etcdctl").expect("etcdctl is installed with etcd");
    let out = Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.addr))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn control_plane(etcd: &Etcd, extra: &[&str]) -> Proxy {
    let dir = weft_tests::chain::TempDir::new("etcd-cp");
    let ep = etcd.addr.to_string();
    let mut args = vec!["--registry", "etcd", "--etcd-endpoints", ep.as_str()];
    args.extend_from_slice(extra);
    mesh::control_plane(&dir, &args)
}

/// A workload: an app and its sidecar, registered in etcd as an endpoint of web:8080.
fn pod(etcd: &Etcd, app: std::net::SocketAddr, name: &str, ttl: &str) -> Proxy {
    // The inbound port must be known before registering: take a free one.
    let inbound = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    Proxy::start(&[
        "--inbound-addr",
        &inbound,
        "--inbound-forward",
        &app.to_string(),
        "--register",
        "web:8080",
        "--register-address",
        &inbound,
        "--register-ttl",
        ttl,
        "--etcd-endpoints",
        &etcd.addr.to_string(),
        "--pod-namespace",
        "demo",
        "--node-id",
        name,
        "--node-label",
        "version=v1",
    ])
}

/// The endpoints the client proxy routes web's default route to.
async fn endpoints(client: &Proxy) -> Vec<String> {
    let dump = client.config_dump().await;
    dump["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == WEB)
        .map(|s| {
            let default = s["routes"].as_array().unwrap().last().unwrap().clone();
            default["backends"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|b| b["endpoints"].as_array().unwrap().clone())
                .map(|e| e.as_str().unwrap().split(' ').next().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_endpoints(client: &Proxy, what: &str, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    eventually(Duration::from_secs(20), what, || async {
        let mut have = endpoints(client).await;
        have.sort();
        (have == want).then_some(())
    })
    .await;
}

async fn get_id(client: &Proxy) -> String {
    let mut tx = http_peer::h2_client(client.addr("outbound")).await;
    let rsp = tx
        .send_request(
            Request::get(format!("http://{WEB}/id"))
                .body(http_peer::body(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    String::from_utf8_lossy(&rsp.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_registrations_leases_and_restarts() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let app1 = http_peer::server("app-1").await;
    let app2 = http_peer::server("app-2").await;

    // A Service document written by an operator; the control plane reads it from etcd.
    etcdctl(
        &etcd,
        &[
            "put",
            "/weft/config/web",
            "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {port: 8080, aliases: [web]}\n",
        ],
    );
    let mut cp = control_plane(&etcd, &[]);
    let xds = cp.addr("xds");
    let client = Proxy::start(&[
        "--control-plane",
        &xds.to_string(),
        "--node-id",
        "client-0",
        "--xds-backoff-base",
        "50ms",
        "--xds-backoff-max",
        "500ms",
    ]);

    // A workload registers itself, with a short lease.
    let mut p1 = pod(&etcd, app1.addr, "pod-1", "2s");
    let p1_addr = p1.addr("inbound").to_string();
    wait_endpoints(&client, "pod-1 registered", &[&p1_addr]).await;
    assert_eq!(get_id(&client).await, "app-1");
    let keys = etcdctl(
        &etcd,
        &["get", "--prefix", "--keys-only", "/weft/endpoints/"],
    );
    assert_eq!(keys.trim(), "/weft/endpoints/demo/web/pod-1");

    // Killed without deregistering: the lease runs out and the endpoint goes with it.
    p1.signal("KILL");
    p1.wait_exit(Duration::from_secs(10)).unwrap();
    wait_endpoints(&client, "pod-1's lease to expire", &[]).await;

    // A second workload with a long lease, stopped cleanly: it deregisters at once (well
    // before its 60 s lease could run out).
    let mut p2 = pod(&etcd, app2.addr, "pod-2", "60s");
    let p2_addr = p2.addr("inbound").to_string();
    wait_endpoints(&client, "pod-2 registered", &[&p2_addr]).await;
    assert_eq!(get_id(&client).await, "app-2");
    p2.signal("TERM");
    assert!(p2.wait_exit(Duration::from_secs(30)).unwrap().success());
    let keys = etcdctl(
        &etcd,
        &["get", "--prefix", "--keys-only", "/weft/endpoints/"],
    );
    assert_eq!(keys.trim(), "", "deregistered on drain");
    wait_endpoints(&client, "pod-2 deregistered", &[]).await;

    // The control plane is killed; registrations made meanwhile are there when it is back.
    cp.signal("KILL");
    cp.wait_exit(Duration::from_secs(10)).unwrap();
    let p3 = pod(&etcd, app1.addr, "pod-3", "30s");
    let p3_addr = p3.addr("inbound").to_string();
    cp = control_plane(&etcd, &["--xds-addr", &xds.to_string()]);
    wait_endpoints(
        &client,
        "pod-3 after the control-plane restart",
        &[&p3_addr],
    )
    .await;

    // etcd itself restarts: the control plane's watch resumes, and sees later changes.
    etcd.restart();
    let p4 = pod(&etcd, app2.addr, "pod-4", "30s");
    let p4_addr = p4.addr("inbound").to_string();
    wait_endpoints(
        &client,
        "pod-4 after the etcd restart",
        &[&p3_addr, &p4_addr],
    )
    .await;

    // Policies applied with weftctl land in etcd and take effect.
    let work = weft_tests::chain::TempDir::new("etcd-policy");
    let policy = work.write(
        "p.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: web, namespace: demo}\nspec:\n  service: web.demo.svc.cluster.local:8080\n  routes: [{name: all, timeout: 3s}]\n",
    );
    let (code, out, err) = weftctl(&cp, &["apply", "-f", policy.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    let stored = etcdctl(
        &etcd,
        &["get", "/weft/config/weftctl-demo_web", "--print-value-only"],
    );
    assert!(stored.contains("timeout"), "{stored}");
    eventually(
        Duration::from_secs(10),
        "the policy's route at the proxy",
        || async {
            let dump = client.config_dump().await;
            let s = dump["services"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == WEB)?
                .clone();
            (s["routes"][0]["name"] == "all").then_some(())
        },
    )
    .await;
    let (code, out, _) = weftctl(&cp, &["delete", "policy", "demo/web"]);
    assert_eq!((code, out.trim()), (Some(0), "policy demo/web deleted"));
    drop((p3, p4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_etcd_serve_the_same_and_a_proxy_fails_over() {
    let Some(etcd) = Etcd::start() else { return };
    let apps = [
        http_peer::server("app-1").await,
        http_peer::server("app-2").await,
    ];
    etcdctl(
        &etcd,
        &[
            "put",
            "/weft/config/web",
            "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {port: 8080}\n",
        ],
    );
    for (i, app) in apps.iter().enumerate() {
        let reg = format!("{{\"address\": \"{}\", \"port\": 8080}}", app.addr);
        etcdctl(
            &etcd,
            &["put", &format!("/weft/endpoints/demo/web/app-{i}"), &reg],
        );
    }
    let mut cp1 = control_plane(&etcd, &[]);
    let cp2 = control_plane(&etcd, &[]);
    let urls = format!("{},{}", cp1.addr("xds"), cp2.addr("xds"));
    let client = Proxy::start(&[
        "--control-plane",
        &urls,
        "--node-id",
        "client-ha",
        "--xds-backoff-base",
        "50ms",
        "--xds-backoff-max",
        "200ms",
    ]);
    wait_endpoints(
        &client,
        "both endpoints",
        &[&apps[0].addr.to_string(), &apps[1].addr.to_string()],
    )
    .await;
    let xds = |dump: &serde_json::Value| dump["xds"].clone();
    let before = xds(&client.config_dump().await);
    assert_eq!(
        before["control_plane"],
        format!("http://{}", cp1.addr("xds"))
    );
    let generation = client.metric("weft_table_generation").await;

    // Steady load while the replica in use dies.
    let outbound = client.addr("outbound");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load = tokio::spawn({
        let (stop, done) = (stop.clone(), done.clone());
        async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            let mut tx = http_peer::h2_client(outbound).await;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && ok < 200_000
                && failed.len() < 50
            {
                let req = Request::get(format!("http://{WEB}/id"))
                    .body(http_peer::body(""))
                    .unwrap();
                match tx.send_request(req).await {
                    Ok(r) if r.status() == 200 => {
                        ok += 1;
                        done.store(ok, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(r) => failed.push(format!("status {}", r.status())),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }
    });
    cp1.signal("KILL");
    cp1.wait_exit(Duration::from_secs(10)).unwrap();
    let after = eventually(
        Duration::from_secs(10),
        "the fail-over to the second replica",
        || async {
            let x = xds(&client.config_dump().await);
            (x["connected"] == true && x["control_plane"] == format!("http://{}", cp2.addr("xds")))
                .then_some(x)
        },
    )
    .await;
    // The second replica serves exactly what the first did: same versions, no new table.
    for kind in ["cluster", "endpoint", "listener", "route"] {
        assert_eq!(
            after["types"][kind]["version"], before["types"][kind]["version"],
            "{kind} versions differ between replicas"
        );
    }
    assert_eq!(client.metric("weft_table_generation").await, generation);

    // A change written to etcd now arrives through the second replica.
    etcdctl(&etcd, &["del", "/weft/endpoints/demo/web/app-0"]);
    wait_endpoints(
        &client,
        "app-0 removed via the second replica",
        &[&apps[1].addr.to_string()],
    )
    .await;
    let count = || done.load(std::sync::atomic::Ordering::Relaxed);
    let now = count();
    eventually(Duration::from_secs(10), "load after the change", || async {
        (count() > now + 200).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    eprintln!(
        "{ok} requests across the fail-over, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 100, "too little load: {ok}");
}

/// A value that is not UTF-8 text is an error naming its key; the key's last good value stays,
/// the rest of the registry applies, and a control plane starting with it in etcd starts (it
/// used to fail the whole read: the first load retried forever, and the watch spun).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_is_not_text_is_skipped_with_its_key_named() {
    use std::os::unix::ffi::OsStrExt;
    let Some(etcd) = Etcd::start() else { return };
    let doc = |name: &str| {
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec: {{port: 8080}}\n"
        )
    };
    etcdctl(&etcd, &["put", "/weft/config/web", &doc("web")]);
    let cp = control_plane(&etcd, &[]);
    let registry = || async {
        let (_, body) = cp.get("api", "/api/v1/registry").await;
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    assert!(registry().await["services"][WEB].is_object());

    let bin = tools::require("etcdctl").expect("etcdctl");
    let out = Command::new(&bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.addr))
        .args(["put", "/weft/config/web"])
        .arg(std::ffi::OsStr::from_bytes(&[0xff, 0xfe, b'x']))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    etcdctl(&etcd, &["put", "/weft/config/api", &doc("api")]);
    eventually(Duration::from_secs(10), "the later key applied", || async {
        registry().await["services"]["api.demo.svc.cluster.local:8080"]
            .is_object()
            .then_some(())
    })
    .await;
    assert!(
        registry().await["services"][WEB].is_object(),
        "web's last good value stays"
    );
    let metrics = cp.metrics().await;
    assert!(metrics.contains("weft_cp_registry_errors 1"), "{metrics}");
    assert!(
        cp.logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("/weft/config/web: the value is not UTF-8 text")),
        "the key is named"
    );

    // A control plane starting now reads everything else.
    let late = control_plane(&etcd, &[]);
    let (_, body) = late.get("api", "/api/v1/registry").await;
    let reg: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        reg["services"]["api.demo.svc.cluster.local:8080"].is_object(),
        "{reg}"
    );
}

/// A watch that cannot resume because etcd compacted its revision away reads everything
/// again: the control plane is paused while etcd restarts, a service is added, another
/// deleted and the history compacted; once resumed it serves exactly what etcd holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_behind_a_compaction_reads_everything_again() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let doc = |name: &str| {
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec: {{port: 8080}}\n"
        )
    };
    etcdctl(&etcd, &["put", "/weft/config/web", &doc("web")]);
    let cp = control_plane(&etcd, &[]);
    let services = || async {
        let (_, body) = cp.get("api", "/api/v1/registry").await;
        let reg: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut names: Vec<String> = reg["services"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    assert_eq!(services().await, [WEB]);

    // Paused, the control plane misses the restart and every change after it.
    cp.signal("STOP");
    etcd.restart();
    etcdctl(&etcd, &["put", "/weft/config/api", &doc("api")]);
    etcdctl(&etcd, &["del", "/weft/config/web"]);
    let out = etcdctl(&etcd, &["put", "/weft/other", "x", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let revision = status["header"]["revision"].as_u64().unwrap().to_string();
    etcdctl(&etcd, &["compact", &revision]);
    cp.signal("CONT");

    eventually(
        Duration::from_secs(20),
        "the registry read again after the compaction",
        || async { (services().await == ["api.demo.svc.cluster.local:8080"]).then_some(()) },
    )
    .await;
    // And the new watch delivers.
    etcdctl(&etcd, &["put", "/weft/config/web", &doc("web")]);
    eventually(
        Duration::from_secs(10),
        "a change after the reload",
        || async { (services().await.len() == 2).then_some(()) },
    )
    .await;
}
