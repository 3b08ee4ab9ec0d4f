//! The local mesh demo: the control plane on its embedded file registry (and as the mesh CA),
//! four sidecars and sample apps on loopback, mutual TLS with SPIFFE identities between the
//! sidecars; HTTP/1.1, HTTP/2 and gRPC traffic; a canary split that `weftctl` shifts live, with
//! the split observed after each step.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use http::Request;
use http_body_util::BodyExt;
use weft_tests::{
    chain::TempDir,
    eventually,
    grpc::{self, Msg},
    http_peer,
    mesh::{self, weftctl},
    prometheus::Prometheus,
    proxy::Proxy,
};

const WEB: &str = "web.demo.svc.cluster.local:8080";
const ECHO: &str = "echo.demo.svc.cluster.local:50051";

/// The web canary, a Gateway API HTTPRoute on the Service `web` with the Services `web-v1` and
/// `web-v2` as backends: `x-canary: 1` goes to v2; the rest is split `w1`/`w2`. With `retry`,
/// web's TrafficPolicy tries failed requests again (what the Gateway API's standard channel
/// does not express).
fn policy(w1: u32, w2: u32, retry: bool) -> String {
    let retry = if retry {
        "  retry: {attempts: 2, on: [5xx], backoff: {base: 25ms, max: 250ms}, budget: {ratio: 0.5}}\n"
    } else {
        ""
    };
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: demo}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web, port: 8080}}]
  rules:
    - name: canary-by-header
      matches: [{{headers: [{{name: x-canary, value: "1"}}]}}]
      backendRefs: [{{name: web-v2, port: 8080}}]
    - name: split
      backendRefs:
        - {{name: web-v1, port: 8080, weight: {w1}}}
        - {{name: web-v2, port: 8080, weight: {w2}}}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: web, namespace: demo}}
spec:
  service: {WEB}
{retry}"#
    )
}

async fn served_by(
    outbound: SocketAddr,
    n: usize,
    h2: bool,
    canary: bool,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut h2tx = if h2 {
        Some(http_peer::h2_client(outbound).await)
    } else {
        None
    };
    for _ in 0..n {
        let rsp = match h2tx.as_mut() {
            Some(tx) => {
                let mut req = Request::get(format!("http://{WEB}/echo"));
                if canary {
                    req = req.header("x-canary", "1");
                }
                tx.send_request(req.body(http_peer::body("")).unwrap())
                    .await
                    .unwrap()
            }
            None => {
                let mut req = Request::get("/echo").header("host", WEB);
                if canary {
                    req = req.header("x-canary", "1");
                }
                http_peer::request_h1(outbound, req, String::new())
                    .await
                    .unwrap()
            }
        };
        // A failed request (no app answered it) is counted by its status.
        let who = match rsp.headers().get("x-served-by") {
            Some(v) => v.to_str().unwrap().to_string(),
            None => rsp.status().as_str().to_string(),
        };
        let _ = rsp.into_body().collect().await;
        *out.entry(who).or_default() += 1;
    }
    out
}

fn show(m: &BTreeMap<String, usize>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("  ")
}

fn share(m: &BTreeMap<String, usize>, who: &str) -> f64 {
    let total: usize = m.values().sum();
    m.get(who).copied().unwrap_or(0) as f64 * 100.0 / total.max(1) as f64
}

/// `weftctl apply` of the web canary with `w1`/`w2`, then waits until sidecar A routes by it.
async fn shift(cp: &Proxy, a: &Proxy, work: &TempDir, w1: u32, w2: u32, retry: bool) {
    let f = work.write("web-canary.yaml", &policy(w1, w2, retry));
    let path = f.to_str().unwrap();
    let (code, out, err) = weftctl(cp, &["apply", "-f", path]);
    assert_eq!(code, Some(0), "weftctl apply failed: {err}");
    println!("   $ weftctl apply -f {path}");
    for line in out.lines() {
        println!("   {line}");
    }
    let want: Vec<u64> = [w1, w2]
        .into_iter()
        .filter(|w| *w > 0)
        .map(u64::from)
        .collect();
    eventually(
        Duration::from_secs(10),
        "the new split at sidecar A",
        || async {
            let dump = a.config_dump().await;
            let web = dump["services"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == WEB)?
                .clone();
            let weights: Vec<u64> = web["routes"][1]["backends"]
                .as_array()?
                .iter()
                .filter_map(|b| b["weight"].as_u64())
                .collect();
            let has_retry = !web["routes"][1]["policy"]["retry"].is_null();
            // One backend left is a plain cluster (its weight is not the route's).
            let split = match want.len() {
                1 => weights.len() == 1,
                _ => weights == want,
            };
            (split && has_retry == retry).then_some(())
        },
    )
    .await;
}

/// The SPIFFE id of workload `sa` in namespace `demo`.
fn id(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/demo/sa/{sa}")
}

/// `weftctl stat --by backend` for web, once Prometheus has both backends' traffic.
async fn stat(cp: &Proxy, prometheus: &Prometheus) -> String {
    let url = format!("http://{}", prometheus.api);
    let service = "web.demo.svc.cluster.local:8080";
    let args = [
        "stat",
        service,
        "--by",
        "backend",
        "--window",
        "30s",
        "--prometheus",
        &url,
    ];
    println!(
        "   $ weftctl {}",
        args.join(" ").replace(&url, "http://<prometheus>")
    );
    eventually(Duration::from_secs(30), "weftctl stat", || async {
        let (code, out, err) = weftctl(cp, &args);
        assert_eq!(code, Some(0), "weftctl stat failed: {err}");
        // The split's two backends (the header route is listed too).
        let split: Vec<&str> = out
            .lines()
            .filter(|l| l.contains(" demo/web/split "))
            .collect();
        // Each with its requests per second (every query saw two scrapes of them).
        let rps = |l: &&str| l.split_whitespace().nth(3)?.parse::<f64>().ok();
        let counted = split.len() == 2 && split.iter().all(|l| rps(l).is_some_and(|r| r > 0.0));
        counted.then_some(out)
    })
    .await
}

/// A sidecar named `node` for workload `sa` (namespace `demo`): routing table and certificate from the
/// control plane, mutual TLS only on its inbound side.
fn sidecar(cp: &Proxy, ca: &TempDir, node: &str, sa: &str, extra: &[&str]) -> Proxy {
    let token = ca.write(
        &format!("{sa}.token"),
        &format!("{sa}-demo-bootstrap-token"),
    );
    let url = format!("https://{}", cp.addr("xds-tls"));
    let bundle = ca.0.join("ca").join("ca.crt");
    let mut args = vec![
        "--control-plane",
        &url,
        "--trust-bundle",
        bundle.to_str().unwrap(),
        "--identity",
        "ca",
        "--identity-token-file",
        token.to_str().unwrap(),
        "--pod-namespace",
        "demo",
        "--service-account",
        sa,
        "--node-id",
        node,
        "--pod-name",
        node,
        "--inbound-mtls",
        "strict",
        "--access-log",
        "json",
        "--access-log-path",
    ];
    let log = access_log(ca, node);
    args.push(log.to_str().unwrap());
    args.extend_from_slice(extra);
    Proxy::start(&args)
}

/// Where sidecar `node` writes its access log.
fn access_log(ca: &TempDir, node: &str) -> std::path::PathBuf {
    ca.0.join(format!("{node}.access.log"))
}

/// The access log line of sidecar `node` for request `id`, once written.
async fn logged(ca: &TempDir, node: &str, id: &str) -> serde_json::Value {
    let path = access_log(ca, node);
    eventually(Duration::from_secs(10), "an access log line", || async {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["request_id"] == id)
    })
    .await
}

async fn ready(p: &Proxy, what: &str) {
    eventually(Duration::from_secs(20), what, || async {
        (p.get("probe", "/ready").await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("weft local demo: a control plane, sidecars and sample apps on loopback,");
    println!("every hop between sidecars mutual TLS with SPIFFE identities\n");
    let web_v1 = http_peer::server("web-v1").await;
    let web_v2 = http_peer::server("web-v2").await;
    let (echo_app, _) = grpc::server().await;

    // The control plane is also the mesh CA: it creates its root on first start and issues
    // certificates to the workloads its bootstrap tokens name.
    let ca = TempDir::new("demo-ca");
    let mut tokens = String::new();
    for sa in ["frontend", "web", "echo"] {
        tokens += &format!("{sa}-demo-bootstrap-token demo {sa}\n");
    }
    let tokens = ca.write("tokens", &tokens);
    let ca_dir = ca.0.join("ca");
    let registry = TempDir::new("demo-registry");
    let cp = mesh::control_plane(
        &registry,
        &[
            "--ca-dir",
            ca_dir.to_str().unwrap(),
            "--ca-create",
            "--bootstrap-tokens",
            tokens.to_str().unwrap(),
        ],
    );
    // A Prometheus that finds every sidecar through the control plane (HTTP service discovery)
    // and scrapes it every second, for `weftctl stat`.
    let prometheus = weft_tests::tools::require("prometheus")
        .map(|bin| Prometheus::start(&bin, &ca, cp.addr("metrics")));
    let app = |a: SocketAddr| a.to_string();
    let (b1, b2, c) = (
        sidecar(
            &cp,
            &ca,
            "web-v1",
            "web",
            &["--inbound-forward", &app(web_v1.addr)],
        ),
        sidecar(
            &cp,
            &ca,
            "web-v2",
            "web",
            &["--inbound-forward", &app(web_v2.addr)],
        ),
        sidecar(
            &cp,
            &ca,
            "echo",
            "echo",
            &["--inbound-forward", &app(echo_app)],
        ),
    );

    // The file registry: what a platform team or a deploy script would write. Each endpoint
    // names the identity its sidecar must prove.
    let (web_id, echo_id) = (id("web"), id("echo"));
    registry.write(
        "web.yaml",
        &mesh::meshed_service(
            "web",
            8080,
            "http",
            &[
                (b1.addr("inbound"), "v1", Some(&web_id)),
                (b2.addr("inbound"), "v2", Some(&web_id)),
            ],
        ),
    );
    // The canary's versions, each a Service of its own (the Gateway API's backends).
    for (name, pod, version) in [("web-v1", &b1, "v1"), ("web-v2", &b2, "v2")] {
        registry.write(
            &format!("{name}.yaml"),
            &mesh::meshed_service(
                name,
                8080,
                "http",
                &[(pod.addr("inbound"), version, Some(&web_id))],
            ),
        );
    }
    registry.write(
        "echo.yaml",
        &mesh::meshed_service(
            "echo",
            50051,
            "http2",
            &[(c.addr("inbound"), "v1", Some(&echo_id))],
        ),
    );
    let a = sidecar(&cp, &ca, "client-a", "frontend", &[]);
    for (p, what) in [
        (&a, "sidecar A ready"),
        (&b1, "web-v1 sidecar ready"),
        (&b2, "web-v2 sidecar ready"),
        (&c, "echo sidecar ready"),
    ] {
        ready(p, what).await;
    }
    // Ready means every resource type arrived once; the registry's files may be a poll later.
    eventually(
        Duration::from_secs(10),
        "the services at sidecar A",
        || async {
            let dump = a.config_dump().await;
            // web, web-v1, web-v2 and echo.
            (dump["services"].as_array().map_or(0, Vec::len) == 4).then_some(())
        },
    )
    .await;
    let out = a.addr("outbound");
    // Prometheus counts a counter's increase from its first sample: it scrapes the sidecars
    // before the traffic starts.
    if let Some(p) = &prometheus {
        let scraped = "weft_xds_connected%7Bpod%3D%22client-a%22%7D";
        p.first_sample(scraped, Duration::from_secs(30)).await;
    }
    println!(
        "  control plane     xDS+CA (TLS) {}  API {}  registry {}",
        cp.addr("xds-tls"),
        cp.addr("api"),
        registry.0.display()
    );
    println!("  mesh root CA      {}", ca_dir.join("ca.crt").display());
    println!("  client sidecar A  outbound {out}  (routing table from the control plane)");
    for (name, p, app) in [
        ("web-v1", &b1, web_v1.addr),
        ("web-v2", &b2, web_v2.addr),
        ("echo", &c, echo_app),
    ] {
        println!(
            "  {name:<6} sidecar    inbound {} (mTLS, STRICT) -> app {app}",
            p.addr("inbound")
        );
    }
    println!("\n0. Identities: each sidecar made its key and got a certificate from the CA");
    for (name, p) in [("A", &a), ("web-v1", &b1), ("web-v2", &b2), ("echo", &c)] {
        let dump = p.config_dump().await;
        println!(
            "   {name:<7} {}",
            dump["identity"]["spiffe_id"].as_str().unwrap_or("?")
        );
    }
    let rsp = http_peer::request_h1(
        out,
        Request::get("/echo").header("host", WEB),
        String::new(),
    )
    .await
    .unwrap();
    println!(
        "   the web app sees its caller (x-weft-peer-identity): {}",
        rsp.headers()
            .get("x-seen-peer-identity")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
    );
    let plain = http_peer::request_h1(
        b1.addr("inbound"),
        Request::get("/echo").header("host", WEB),
        String::new(),
    )
    .await;
    println!(
        "   plaintext straight to web-v1's sidecar: {}",
        match plain {
            Ok(r) => format!("answered {} (unexpected)", r.status()),
            Err(_) => "refused (STRICT accepts mutual TLS only)".to_string(),
        }
    );

    let work = TempDir::new("demo-policies");
    println!(
        "\n1. A canary HTTPRoute: 90/10 between the Services web-v1 and web-v2, `x-canary: 1` always to v2"
    );
    shift(&cp, &a, &work, 90, 10, false).await;
    let m = served_by(out, 400, false, false).await;
    println!(
        "   HTTP/1.1, 400 requests: {}  (v2 {:.1}%)",
        show(&m),
        share(&m, "web-v2")
    );
    println!(
        "   HTTP/2 with x-canary: 1, 20 requests: {}",
        show(&served_by(out, 20, true, true).await)
    );

    println!("2. gRPC to {ECHO} through A and the echo sidecar, all four call shapes");
    let mut g = grpc::client(out, ECHO).await;
    let r = grpc::four_shapes(&mut g)
        .await
        .expect("the four call shapes");
    println!("   unary          -> {:?}", r.unary);
    println!("   server stream  -> {} messages", r.server_stream);
    println!(
        "   client stream  -> server got {} messages, {} bytes",
        r.client_stream.0, r.client_stream.1
    );
    println!("   bidi           -> {}", r.bidi.join(", "));
    let fail = Msg {
        payload: Vec::new(),
        text: "fail".into(),
        count: 0,
    };
    let err = g.unary(fail).await.unwrap_err();
    println!("   error status   -> {:?}: {}", err.code(), err.message());

    println!("3. Shifting the canary live with weftctl");
    for (w1, w2) in [(50, 50), (0, 100)] {
        shift(&cp, &a, &work, w1, w2, false).await;
        if let (Some(p), 50) = (&prometheus, w1) {
            // The split's series (made by step 1's requests) are scraped before these: their
            // increase is counted from there.
            let split = "weft_request_total%7Broute%3D%22demo%2Fweb%2Fsplit%22%7D";
            p.first_sample(split, Duration::from_secs(30)).await;
        }
        let m = served_by(out, 400, true, false).await;
        println!(
            "   HTTP/2, 400 requests: {}  (v2 {:.1}%)",
            show(&m),
            share(&m, "web-v2")
        );
        if let (Some(p), 50) = (&prometheus, w1) {
            println!("   each backend as the callers' sidecars saw it, from Prometheus:");
            for line in stat(&cp, p).await.lines() {
                println!("   {line}");
            }
        }
    }
    if prometheus.is_none() {
        println!("   (Prometheus is not installed: no `weftctl stat`; scripts/demo installs it)");
    }

    println!("\n4. Retries: web-v2 starts failing every fourth request with 503");
    web_v2
        .state
        .fail_every
        .store(4, std::sync::atomic::Ordering::SeqCst);
    let failed = |m: &BTreeMap<String, usize>| m.get("503").copied().unwrap_or(0);
    let m = served_by(out, 300, true, false).await;
    println!(
        "   no retry policy, 300 requests: {}  ({} failed)",
        show(&m),
        failed(&m)
    );
    assert!(failed(&m) > 50, "web-v2 fails a quarter of its requests");
    shift(&cp, &a, &work, 0, 100, true).await;
    let m = served_by(out, 300, true, false).await;
    println!(
        "   retry on 5xx (2 retries, backoff 25-250 ms, budget 50 % + 10/s), 300 requests: {}  ({} failed)",
        show(&m),
        failed(&m)
    );
    assert_eq!(failed(&m), 0, "retries absorb the failures");
    for line in a.metrics().await.lines() {
        if line.starts_with("weft_retries_total")
            || line.starts_with("weft_request_attempts_sum")
            || line.starts_with("weft_request_attempts_count")
            || line.starts_with("weft_retry_budget_exhausted_total")
        {
            println!("   {line}");
        }
    }

    // web-v2 recovers: the request below is answered on its first try.
    web_v2
        .state
        .fail_every
        .store(0, std::sync::atomic::Ordering::SeqCst);
    println!("\n5. One request followed through both sidecars' access logs (JSON, one line each)");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let req = Request::get("/echo")
        .header("host", WEB)
        .header("x-canary", "1")
        .header("x-request-id", "demo-request-1")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"));
    let rsp = http_peer::request_h1(out, req, String::new())
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    println!("   $ curl -H 'x-canary: 1' -H 'traceparent: 00-{trace}-...' http://{WEB}/echo");
    for node in ["client-a", "web-v2"] {
        let l = logged(&ca, node, "demo-request-1").await;
        assert_eq!(l["trace_id"], trace, "{l}");
        let field = |k: &str| {
            l[k].as_str()
                .map_or_else(|| l[k].to_string(), str::to_string)
        };
        let who = if l["direction"] == "outbound" {
            format!(
                "route {} backend {} upstream {} ({})",
                field("route_name"),
                field("upstream_cluster"),
                field("upstream_host"),
                field("upstream_identity")
            )
        } else {
            format!("caller {}", field("client_identity"))
        };
        println!(
            "   {node:<9} {:<8} {} {} -> {} in {} ms, trace {}, {who}",
            field("direction"),
            field("method"),
            field("path"),
            field("response_code"),
            field("duration_ms"),
            field("trace_id"),
        );
    }

    println!("\n6. What the control plane knows of its proxies (weftctl proxy-status):");
    let (_, status, _) = weftctl(&cp, &["proxy-status"]);
    for line in status.lines() {
        println!("   {line}");
    }
    println!(
        "\n7. What sidecar A counted (GET /metrics on its probe port {}):",
        a.addr("probe")
    );
    for line in a.metrics().await.lines() {
        if line.starts_with("weft_response_total")
            || line.starts_with("weft_table_generation")
            || line.starts_with("weft_tls_handshakes_total")
            || line.starts_with("weft_identity_cert_expiry")
        {
            println!("   {line}");
        }
    }
    println!();
    for (name, mut p) in [
        ("sidecar A", a),
        ("sidecar web-v1", b1),
        ("sidecar web-v2", b2),
        ("sidecar echo", c),
        ("control plane", cp),
    ] {
        p.signal("TERM");
        let status = p.wait_exit(Duration::from_secs(30));
        let code = status.and_then(|s| s.code());
        println!("{name} stopped (drained), exit status {code:?}");
    }
}
