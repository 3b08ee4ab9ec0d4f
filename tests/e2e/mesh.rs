//! The whole loop: registry files -> `weft-control-plane` -> ADS -> `weft-proxy` -> traffic.
//!
//! The mesh: a client-side proxy (`--control-plane`) and one inbound proxy per "pod" in front of
//! real servers: `web` (hyper; v1, v2 and a second v2 that comes and goes) and `echo` (tonic
//! gRPC; v1, v2). Every request crosses two proxies.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::Request;
use http_body_util::BodyExt;
use weft_tests::{
    chain::TempDir,
    eventually,
    grpc::{self, Msg, ServerState},
    http_peer::{self, Peer},
    mesh::{self, weftctl},
    proxy::Proxy,
    xds_relay::Relay,
};

const WEB: &str = "web.demo.svc.cluster.local:8080";
const ECHO: &str = "echo.demo.svc.cluster.local:9090";

struct Mesh {
    dir: TempDir,
    cp: Proxy,
    client: Proxy,
    /// Between the client proxy and the control plane, when the test wants one.
    relay: Option<Relay>,
    /// web v1, web v2, web v2 (second), echo v1, echo v2.
    pods: Vec<Proxy>,
    web: [Peer; 2],
    echo: [Arc<ServerState>; 2],
}

impl Mesh {
    /// Starts servers, pods, the control plane and the client proxy; with `policies`, 90/10
    /// policies for both services.
    async fn new(protocol: &str, policies: bool) -> Mesh {
        Self::start(protocol, policies, false).await
    }

    /// The mesh with the client proxy's ADS stream (`protocol`) through a [`Relay`].
    async fn with_relay(protocol: &str) -> Mesh {
        Self::start(protocol, false, true).await
    }

    async fn start(protocol: &str, policies: bool, relay: bool) -> Mesh {
        let web = [
            http_peer::server("web-v1").await,
            http_peer::server("web-v2").await,
        ];
        let (e1, s1) = grpc::server().await;
        let (e2, s2) = grpc::server().await;
        let pod = |app: SocketAddr| Proxy::start(&["--inbound-forward", &app.to_string()]);
        let pods = vec![
            pod(web[0].addr),
            pod(web[1].addr),
            pod(web[1].addr),
            pod(e1),
            pod(e2),
        ];
        let dir = TempDir::new("mesh");
        let inbound = |i: usize| pods[i].addr("inbound");
        dir.write(
            "web.yaml",
            &mesh::service(
                "web",
                8080,
                "http",
                &[(inbound(0), "v1"), (inbound(1), "v2")],
            ),
        );
        dir.write(
            "echo.yaml",
            &mesh::service(
                "echo",
                9090,
                "http2",
                &[(inbound(3), "v1"), (inbound(4), "v2")],
            ),
        );
        if policies {
            dir.write(
                "web-policy.yaml",
                &mesh::split_policy("web", 8080, (90, 10)),
            );
            dir.write(
                "echo-policy.yaml",
                &mesh::split_policy("echo", 9090, (90, 10)),
            );
        }
        let cp = mesh::control_plane(&dir, &[]);
        let relay = match relay {
            true => Some(Relay::start(cp.addr("xds")).await),
            false => None,
        };
        let xds = relay.as_ref().map_or(cp.addr("xds"), |r| r.addr);
        let client = client_proxy(&xds, protocol);
        Mesh {
            dir,
            cp,
            client,
            relay,
            pods,
            web,
            echo: [s1, s2],
        }
    }

    fn inbound(&self, pod: usize) -> SocketAddr {
        self.pods[pod].addr("inbound")
    }

    /// Writes the web registration: v1, v2, and the second v2 pod when `third`.
    fn write_web(&self, third: bool) {
        let mut eps = vec![(self.inbound(0), "v1"), (self.inbound(1), "v2")];
        if third {
            eps.push((self.inbound(2), "v2"));
        }
        self.dir
            .write("web.yaml", &mesh::service("web", 8080, "http", &eps));
    }

    async fn generation(&self) -> f64 {
        self.client.metric("weft_table_generation").await
    }

    /// Runs `change`, then waits until the client proxy has swapped in a new table.
    async fn push(&self, what: &str, change: impl FnOnce()) {
        let before = self.generation().await;
        change();
        eventually(Duration::from_secs(10), what, || async {
            (self.generation().await > before).then_some(())
        })
        .await;
    }
}

/// The client-side proxy, on the control plane, ready once its first configuration is in.
fn client_proxy(xds: &SocketAddr, protocol: &str) -> Proxy {
    Proxy::start(&[
        "--control-plane",
        &xds.to_string(),
        "--xds-protocol",
        protocol,
        "--node-id",
        "client-0",
        "--xds-backoff-base",
        "50ms",
        "--xds-backoff-max",
        "500ms",
    ])
}

/// In a RouteConfiguration response, every header match by the regex `from` becomes one by `to`.
fn replace_header_regex(
    type_url: &str,
    any: &mut weft_xds_proto::google::protobuf::Any,
    from: &str,
    to: &str,
) {
    use prost::Message;
    use weft_xds_proto::envoy::{
        config::route::v3::{RouteConfiguration, header_matcher::HeaderMatchSpecifier},
        r#type::matcher::v3::string_matcher::MatchPattern,
    };
    if type_url != weft_xds_proto::type_url::ROUTE {
        return;
    }
    let mut rc = RouteConfiguration::decode(&*any.value).unwrap();
    let headers = rc
        .virtual_hosts
        .iter_mut()
        .flat_map(|v| &mut v.routes)
        .flat_map(|r| &mut r.r#match)
        .flat_map(|m| &mut m.headers);
    for h in headers {
        if let Some(HeaderMatchSpecifier::StringMatch(sm)) = &mut h.header_match_specifier
            && let Some(MatchPattern::SafeRegex(re)) = &mut sm.match_pattern
            && re.regex == from
        {
            re.regex = to.into();
        }
    }
    any.value = rc.encode_to_vec();
}

async fn wait_ready(p: &Proxy) {
    eventually(Duration::from_secs(10), "the proxy to be ready", || async {
        (p.get("probe", "/ready").await.0 == 200).then_some(())
    })
    .await;
}

/// Continuous load through the client proxy: HTTP/1.1, HTTP/2 and gRPC clients in loops,
/// bounded in count, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const LOAD_LIMIT: usize = 400_000;

impl Load {
    async fn start(outbound: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for c in 0..6 {
            let (stop, ok1, ok2, errors) = (stop.clone(), ok.clone(), ok.clone(), errors.clone());
            let going =
                move || !stop.load(Ordering::Relaxed) && ok1.load(Ordering::Relaxed) < LOAD_LIMIT;
            // A client that fails this often has seen enough: it stops (the test then fails).
            let record = move |r: Result<(), String>| match r {
                Ok(()) => {
                    ok2.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(e) => {
                    let mut errors = errors.lock().unwrap();
                    errors.push(e);
                    errors.len() < 100
                }
            };
            tasks.push(tokio::spawn(async move {
                match c % 3 {
                    0 => {
                        let mut tx = http_peer::h2_client(outbound).await;
                        while going() {
                            let req = Request::get(format!("http://{WEB}/id"))
                                .body(http_peer::body(""))
                                .unwrap();
                            if !record(http_ok(tx.send_request(req).await).await) {
                                break;
                            }
                        }
                    }
                    1 => {
                        let tcp = tokio::net::TcpStream::connect(outbound).await.unwrap();
                        let (mut tx, conn) = hyper::client::conn::http1::handshake(
                            hyper_util::rt::TokioIo::new(tcp),
                        )
                        .await
                        .unwrap();
                        tokio::spawn(conn);
                        while going() {
                            let req = Request::get("/id")
                                .header("host", WEB)
                                .body(String::new())
                                .unwrap();
                            let _ = tx.ready().await;
                            if !record(http_ok(tx.send_request(req).await).await) {
                                break;
                            }
                        }
                    }
                    _ => {
                        let mut client = grpc::client(outbound, ECHO).await;
                        while going() {
                            let r = client
                                .unary(Msg {
                                    text: "hi".into(),
                                    ..Default::default()
                                })
                                .await;
                            if !record(r.map(drop).map_err(|s| format!("gRPC: {s:?}"))) {
                                break;
                            }
                        }
                    }
                }
            }));
        }
        Load {
            stop,
            ok,
            errors,
            tasks,
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `more` requests have succeeded from now on (`what` names the phase).
    async fn progress(&self, more: usize, what: &str) {
        let before = self.ok();
        eventually(Duration::from_secs(10), what, || async {
            (self.ok() > before + more).then_some(())
        })
        .await;
    }

    /// Stops the clients and asserts that none of their requests failed; returns how many
    /// succeeded (`what` says when, for the log).
    async fn finish(mut self, what: &str) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            t.await.unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        let ok = self.ok();
        eprintln!("{ok} requests succeeded {what}; {} failed", errors.len());
        assert!(
            errors.is_empty(),
            "{} failed, e.g. {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        ok
    }
}

impl Drop for Load {
    /// A test that fails half-way stops its clients too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn http_ok<B: hyper::body::Body>(
    r: Result<http::Response<B>, hyper::Error>,
) -> Result<(), String>
where
    B::Error: std::fmt::Debug,
{
    let r = r.map_err(|e| format!("HTTP: {e}"))?;
    let status = r.status();
    let body = r
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("HTTP body: {e:?}"))?
        .to_bytes();
    if status == 200 {
        Ok(())
    } else {
        Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
    }
}

/// Sends `n` requests of each kind over 8 concurrent clients; returns the share (percent) that
/// went to v2, for web (by the server's name) and echo (by the calls each server started).
async fn measure_split(m: &Mesh, n: usize) -> (f64, f64) {
    let outbound = m.client.addr("outbound");
    let v2 = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let v2 = v2.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = http_peer::h2_client(outbound).await;
            for _ in 0..n / 8 {
                let req = Request::get(format!("http://{WEB}/id"))
                    .body(http_peer::body(""))
                    .unwrap();
                let rsp = tx.send_request(req).await.unwrap();
                assert_eq!(rsp.status(), 200);
                let body = rsp.into_body().collect().await.unwrap().to_bytes();
                if body == "web-v2" {
                    v2.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let web = v2.load(Ordering::Relaxed) as f64 * 100.0 / (n / 8 * 8) as f64;

    let started = |s: &ServerState| s.started.load(Ordering::SeqCst);
    let before = (started(&m.echo[0]), started(&m.echo[1]));
    grpc::unary_calls(outbound, ECHO, 8, n / 8).await;
    let d1 = started(&m.echo[0]) - before.0;
    let d2 = started(&m.echo[1]) - before.1;
    assert_eq!(
        d1 + d2,
        n / 8 * 8,
        "every call reached one of the two servers"
    );
    (web, d2 as f64 * 100.0 / (d1 + d2) as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_pushes_under_load_drop_nothing_and_the_split_holds() {
    let m = Mesh::new("delta", true).await;
    wait_ready(&m.client).await;
    let load = Load::start(m.client.addr("outbound")).await;

    // 200 changes, each a push the client proxy takes before the next: weights (from 90/10)
    // 50/50 -> 0/100 -> 90/10 on both services, then a web endpoint added or removed.
    let weights = [(50, 50), (0, 100), (90, 10)];
    for i in 0..200usize {
        let step = i % 4;
        m.push(&format!("push {i}"), || {
            if step < 3 {
                m.dir.write(
                    "web-policy.yaml",
                    &mesh::split_policy("web", 8080, weights[step]),
                );
                m.dir.write(
                    "echo-policy.yaml",
                    &mesh::split_policy("echo", 9090, weights[step]),
                );
            } else {
                m.write_web(i % 8 == 3);
            }
        })
        .await;
    }
    load.progress(100, "load on the last table").await;
    let ok = load.finish("during 200 pushes").await;
    assert!(ok > 1000, "too little load to prove anything: {ok}");
    // The control plane counted the changes and timed the pushes.
    assert!(m.cp.metric("weft_cp_registry_events_total").await >= 200.0);
    let pushes = m.cp.metric("weft_cp_push_latency_seconds_count").await;
    assert!(pushes >= 200.0, "{pushes} pushes timed");
    let p99 = m.cp.metrics().await;
    assert!(
        p99.contains("weft_cp_push_latency_seconds_bucket{le=\"10\"}"),
        "{p99}"
    );

    // The split, over 10,000 requests of each kind.
    m.push("the 80/20 split", || {
        m.dir.write(
            "web-policy.yaml",
            &mesh::split_policy("web", 8080, (80, 20)),
        );
        m.dir.write(
            "echo-policy.yaml",
            &mesh::split_policy("echo", 9090, (80, 20)),
        );
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "both policies at 80/20",
        || async {
            let dump = m.client.config_dump().await;
            let weights: Vec<u64> = dump["services"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|s| s["routes"][0]["backends"].as_array().unwrap().clone())
                .map(|b| b["weight"].as_u64().unwrap())
                .collect();
            (weights == [80, 20, 80, 20]).then_some(())
        },
    )
    .await;
    let (web, echo) = measure_split(&m, 10_000).await;
    eprintln!("v2 share: web {web:.2}%, echo {echo:.2}% (policy: 20%)");
    assert!((web - 20.0).abs() <= 2.0, "web: {web:.2}% to v2");
    assert!((echo - 20.0).abs() <= 2.0, "echo: {echo:.2}% to v2");
    let served: usize = m
        .web
        .iter()
        .map(|p| p.state.requests.load(Ordering::SeqCst))
        .sum();
    assert!(served >= 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_the_proxy_rejects_keeps_the_old_routes_and_shows_in_proxy_status() {
    rejected_policy("sotw").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_the_proxy_rejects_over_delta_xds_keeps_the_old_routes() {
    rejected_policy("delta").await;
}

/// A route the proxy rejects (NACK), over the ADS variant `protocol`: the old routes stay in
/// force, and the proxy, `proxy-status` and `config-dump` say what was rejected.
async fn rejected_policy(protocol: &str) {
    let m = Mesh::with_relay(protocol).await;
    wait_ready(&m.client).await;
    let work = TempDir::new("mesh-policies");

    let apply = |name: &str, text: &str| {
        let f = work.write(name, text);
        let (code, out, err) = weftctl(&m.cp, &["apply", "-f", f.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{out}{err}");
    };
    let served_by = |n: usize| {
        let outbound = m.client.addr("outbound");
        async move {
            let mut names = std::collections::BTreeSet::new();
            let mut tx = http_peer::h2_client(outbound).await;
            for _ in 0..n {
                let req = Request::get(format!("http://{WEB}/id"))
                    .body(http_peer::body(""))
                    .unwrap();
                let rsp = tx.send_request(req).await.unwrap();
                let body = rsp.into_body().collect().await.unwrap().to_bytes();
                names.insert(String::from_utf8_lossy(&body).into_owned());
            }
            names
        }
    };

    m.push("all traffic to v2", || {
        apply("web.yaml", &mesh::split_policy("web", 8080, (0, 100)))
    })
    .await;
    eventually(Duration::from_secs(10), "traffic on v2 only", || async {
        (served_by(20).await == ["web-v2".to_string()].into()).then_some(())
    })
    .await;

    // weft's control plane refuses a regex over the proxy's bound (the same check); a control
    // plane of another version might send one. The relay plays it: the valid regex applied
    // here reaches the proxy as one too big for its bound.
    m.relay
        .as_ref()
        .unwrap()
        .tamper(|type_url, any| replace_header_regex(type_url, any, "u[0-9]+", r"\w{100}"));
    let bad = mesh::split_policy("web", 8080, (100, 0)).replace(
        "    - name: split\n",
        "    - name: users\n      match: {headers: [{name: x-user, regex: 'u[0-9]+'}]}\n      backends: [{subset: v1}]\n    - name: split\n",
    );
    apply("web.yaml", &bad);
    let status = eventually(
        Duration::from_secs(10),
        "the NACK in proxy-status",
        || async {
            let (_, out, _) = weftctl(&m.cp, &["proxy-status"]);
            out.contains("size limit").then_some(out)
        },
    )
    .await;
    let row = status.lines().find(|l| l.starts_with("client-0")).unwrap();
    assert!(
        row.contains("RDS") && row.contains("route `users`"),
        "the NACK names the type and the route: {status}"
    );
    // The old routes stay in force; the proxy says what it rejected.
    assert_eq!(served_by(50).await, ["web-v2".to_string()].into());
    let dump = m.client.config_dump().await;
    let nack = &dump["xds"]["types"]["route"]["last_nack"]["error"];
    assert!(
        nack.as_str()
            .unwrap()
            .contains(&format!("RouteConfiguration `{WEB}`: route `users`")),
        "{dump:#}"
    );
    assert_eq!(
        m.client
            .metric(r#"weft_xds_updates_total{result="nack",type="route"}"#)
            .await,
        1.0
    );
    // weftctl config-dump: the control plane's view of this one proxy.
    let (code, out, err) = weftctl(&m.cp, &["config-dump", "client-0"]);
    assert_eq!(code, Some(0), "{err}");
    let dump: serde_json::Value = serde_json::from_str(&out).unwrap();
    let routes = &dump["types"][weft_xds_proto::type_url::ROUTE];
    assert_eq!(dump["stream"], protocol);
    assert!(
        routes["lastNack"]["error"]
            .as_str()
            .unwrap()
            .contains("size limit")
    );
    assert_ne!(
        routes["acked"], routes["serving"]["version"],
        "the rejected version is not acked"
    );
    assert!(routes["serving"]["resources"][WEB].is_string(), "{dump:#}");
    let (code, _, err) = weftctl(&m.cp, &["config-dump", "nobody"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no proxy `nobody` has connected"), "{err}");

    // A good policy after it applies.
    apply("web.yaml", &mesh::split_policy("web", 8080, (100, 0)));
    eventually(Duration::from_secs(10), "traffic on v1 only", || async {
        (served_by(20).await == ["web-v1".to_string()].into()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_restarts_under_load_and_proxies_reconnect() {
    let mut m = Mesh::new("delta", true).await;
    wait_ready(&m.client).await;
    let xds = m.cp.addr("xds");
    let load = Load::start(m.client.addr("outbound")).await;
    let connected = || async { m.client.metric("weft_xds_connected").await };
    assert_eq!(connected().await, 1.0);

    m.cp.signal("KILL");
    m.cp.wait_exit(Duration::from_secs(10))
        .expect("the control plane is gone");
    eventually(Duration::from_secs(10), "the proxy to notice", || async {
        (connected().await == 0.0).then_some(())
    })
    .await;
    // Serving on the table in force meanwhile.
    load.progress(200, "traffic without a control plane").await;

    // A new control plane on the same address: the proxy reconnects, and a change made while it
    // was away arrives.
    m.dir.write(
        "web-policy.yaml",
        &mesh::split_policy("web", 8080, (0, 100)),
    );
    m.cp = mesh::control_plane(&m.dir, &["--xds-addr", &xds.to_string()]);
    eventually(
        Duration::from_secs(10),
        "the proxy to reconnect",
        || async { (connected().await == 1.0).then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the change made meanwhile",
        || async {
            let dump = m.client.config_dump().await;
            let web = dump["services"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == WEB)
                .cloned()
                .unwrap();
            (web["routes"][0]["backends"].as_array().unwrap().len() == 1).then_some(())
        },
    )
    .await;
    load.progress(200, "traffic after the reconnect").await;
    load.finish("across the restart").await;
    let (_, out, _) = weftctl(&m.cp, &["proxy-status"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("client-0") && l.contains("true")),
        "{out}"
    );
}
