//! What operators see of live traffic: `weftctl stat`, from a real Prometheus that finds the
//! sidecars through the control plane's service discovery.

use std::{sync::atomic::Ordering, time::Duration};

use http::Request;
use weft_tests::{
    chain::TempDir, eventually, http_peer, mesh, prometheus::Prometheus, proxy::Proxy, tools,
};

/// `weftctl stat --by backend`'s rows: backend -> (requests per second, success rate %).
fn backends(out: &str) -> Vec<(String, f64, f64)> {
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let rps = f.get(3)?.parse().ok()?;
            let success = f.get(4)?.strip_suffix('%')?.parse().ok()?;
            Some((f[2].to_string(), rps, success))
        })
        .collect()
}

/// A client sidecar, `client-0.demo`, taking its table from `cp`.
fn client_sidecar(cp: &Proxy) -> Proxy {
    Proxy::start(&[
        "--control-plane",
        &cp.addr("xds").to_string(),
        "--pod-name",
        "client-0",
        "--pod-namespace",
        "demo",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftctl_stat_shows_each_canary_backends_success_rate_from_prometheus() {
    let Some(prometheus) = tools::require("prometheus") else {
        return;
    };
    let registry = TempDir::new("stat-registry");
    let (v1, v2) = (http_peer::server("v1").await, http_peer::server("v2").await);
    // v2 answers one request in four with a 503.
    v2.state.fail_every.store(4, Ordering::SeqCst);
    let endpoints = [(v1.addr, "v1"), (v2.addr, "v2")];
    registry.write("web.yaml", &mesh::service("web", 8080, "http", &endpoints));
    registry.write(
        "web-policy.yaml",
        &mesh::split_policy("web", 8080, (50, 50)),
    );
    let cp = mesh::control_plane(&registry, &[]);
    let proxy = client_sidecar(&cp);
    let get = || async {
        let req = Request::get("/id").header("host", "web:8080");
        let rsp = http_peer::request_h1(proxy.addr("outbound"), req, String::new()).await;
        rsp.map(|r| r.status().as_u16()).unwrap_or(0)
    };
    eventually(Duration::from_secs(10), "web routed", || async {
        (get().await == 200).then_some(())
    })
    .await;
    let dir = TempDir::new("stat-prometheus");
    let prom = Prometheus::start(&prometheus, &dir, cp.addr("metrics"));
    // Both backends' series exist (a first request each way, a 503 of v2's) before Prometheus
    // scrapes them: a counter's increase is counted from its first sample.
    for _ in 0..20 {
        get().await;
    }
    let scraped = "weft_response_total%7Bstatus_code%3D%22503%22%7D";
    prom.first_sample(scraped, Duration::from_secs(30)).await;
    // Then 400 requests over about four seconds, so several scrapes see them.
    let before = (
        v1.state.requests.load(Ordering::SeqCst),
        v2.state.requests.load(Ordering::SeqCst),
    );
    for i in 0..400 {
        get().await;
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (n1, n2) = (
        v1.state.requests.load(Ordering::SeqCst) - before.0,
        v2.state.requests.load(Ordering::SeqCst) - before.1,
    );
    assert!(n1 > 100 && n2 > 100, "a 50/50 split: {n1} / {n2}");
    let prom_url = format!("http://{}", prom.api);
    let svc = "web.demo.svc.cluster.local:8080";
    let args = [
        "stat",
        svc,
        "--by",
        "backend",
        "--window",
        "30s",
        "--prometheus",
        &prom_url,
    ];
    // Once Prometheus has scraped the last of it, each backend's success rate is its own.
    let rows = eventually(
        Duration::from_secs(30),
        "both backends in weftctl stat",
        || async {
            let (code, out, err) = mesh::weftctl(&cp, &args);
            assert_eq!(code, Some(0), "{out}{err}");
            let rows = backends(&out);
            let settled = rows.len() == 2 && rows.iter().all(|(_, rps, _)| *rps > 0.0);
            let v2_rate = rows.iter().find(|r| r.0.ends_with("/v2")).map(|r| r.2);
            (settled && v2_rate.is_some_and(|s| s < 90.0)).then_some((rows, out))
        },
    )
    .await;
    let (rows, out) = rows;
    eprintln!("weftctl {}\n{out}", args.join(" "));
    let rate = |subset: &str| {
        rows.iter()
            .find(|(b, ..)| b == &format!("{svc}/{subset}"))
            .unwrap_or_else(|| panic!("no row for {subset}: {out}"))
            .2
    };
    assert!(rate("v1") > 99.9, "v1 never fails: {out}");
    assert!(
        (rate("v2") - 75.0).abs() <= 5.0,
        "v2 fails one in four: {out}"
    );
    assert!(out.starts_with("SERVICE"), "{out}");
    assert!(out.contains("split"), "the route: {out}");

    // A Prometheus that is not there is named, with what to set.
    let (code, _, err) = mesh::weftctl(&cp, &["stat", "--prometheus", "http://127.0.0.1:1"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot reach Prometheus at 127.0.0.1:1"),
        "{err}"
    );
    assert!(err.contains("--prometheus"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftctl_check_names_each_problem_with_its_fix_and_passes_once_they_are_fixed() {
    let registry = TempDir::new("check-registry");
    let ca = TempDir::new("check-ca");
    let web = http_peer::server("web").await;
    registry.write(
        "web.yaml",
        &mesh::service("web", 8080, "http", &[(web.addr, "v1")]),
    );
    // A catch-all route first: the route after it can never match.
    let shadowed = "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: web, namespace: demo}\nspec:\n  service: web.demo.svc.cluster.local:8080\n  routes:\n    - {name: everything}\n    - {name: api, match: {path: {prefix: /api}}}\n";
    registry.write("web-policy.yaml", shadowed);
    registry.write(
        "broken.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nspec: [not, a, mapping]\n",
    );
    let ca_dir = ca.0.join("ca");
    let cp = mesh::control_plane(
        &registry,
        &["--ca-dir", ca_dir.to_str().unwrap(), "--ca-create"],
    );
    let proxy = client_sidecar(&cp);
    eventually(Duration::from_secs(10), "the proxy connected", || async {
        let (_, out, _) = mesh::weftctl(&cp, &["proxy-status"]);
        out.contains("client-0.demo").then_some(())
    })
    .await;

    // Once the proxy has acknowledged what it was sent (it may still be on its way).
    let (code, out, err) = eventually(Duration::from_secs(10), "the proxy in step", || async {
        let (code, out, err) = mesh::weftctl(&cp, &["check"]);
        out.contains("proxies        ok")
            .then_some((code, out, err))
    })
    .await;
    eprintln!("weftctl check\n{out}");
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("check found 2 problem(s)"), "{err}");
    for want in [
        "control-plane  ok       answering at",
        "registry       PROBLEM  ",
        "broken.yaml",
        "policies       PROBLEM  policy demo/web: route `api` can never match: `everything` before it matches every request",
        "fix: move the catch-all route last",
        "ca             ok       the CA certificate is valid until",
        "2 problems",
    ] {
        assert!(out.contains(want), "{want}\nin:\n{out}");
    }
    let (_, json, _) = mesh::weftctl(&cp, &["check", "-o", "json"]);
    let findings: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        findings
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["ok"] == false)
            .count(),
        2,
        "{json}"
    );

    // Fixed: the route order, the broken file gone. The proxy takes the new configuration.
    let fixed = shadowed.replace(
        "    - {name: everything}\n    - {name: api, match: {path: {prefix: /api}}}\n",
        "    - {name: api, match: {path: {prefix: /api}}}\n    - {name: everything}\n",
    );
    registry.write("web-policy.yaml", &fixed);
    std::fs::remove_file(registry.0.join("broken.yaml")).unwrap();
    let out = eventually(Duration::from_secs(10), "check to pass", || async {
        let (code, out, _) = mesh::weftctl(&cp, &["check"]);
        (code == Some(0)).then_some(out)
    })
    .await;
    assert!(
        out.contains("proxies        ok       1 connected proxies acknowledged"),
        "{out}"
    );
    assert!(out.ends_with("no problem found\n"), "{out}");
    drop(proxy);
}
