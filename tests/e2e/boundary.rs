//! The sidecar's trust boundary, attacked from another pod. Pod B runs as a new user deploys it:
//! capture on, inbound PERMISSIVE. From pod A, as its proxy's UID (so A's own capture stays out
//! of the way: this is any workload on the network), the attacker dials B's pod IP on the
//! sidecar's own ports and on an application port bound to loopback only; and, through A's
//! sidecar, over mutual TLS with A's identity. Each attempt is refused, counted, and B's
//! sidecar keeps running; ordinary calls to B's application still work.

use std::time::Duration;

use weft_tests::netns::{self, Netns};

use super::capture::{B_IP, Pods, TD, curl, metric, run};

/// An attacker's curl from pod A, outside A's capture (A's proxy UID).
fn attack(a: &Netns, args: &[&str]) -> (bool, String) {
    let mut all = vec!["curl", "-sS", "-m", "5", "-D", "-"];
    all.extend_from_slice(args);
    run(&mut a.cmd_as(2102, &all))
}

/// A DNS question for `name` (type A) over TCP to `addr`, from pod A outside its capture;
/// prints the answer's first address, or fails.
fn dns_over_tcp(a: &Netns, addr: &str, name: &str) -> (bool, String) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let script = format!(
        r#"
import socket, struct, sys
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
for label in "{name}".split("."):
    q += bytes([len(label)]) + label.encode()
q += b"\x00" + struct.pack(">HH", 1, 1)
s = socket.create_connection(("{host}", {port}), timeout=5)
s.sendall(struct.pack(">H", len(q)) + q)
head = s.recv(2)
if len(head) < 2:
    sys.exit("closed without an answer")
n = struct.unpack(">H", head)[0]
data = b""
while len(data) < n:
    more = s.recv(n - len(data))
    if not more:
        sys.exit("closed mid-answer")
    data += more
print(".".join(str(b) for b in data[-4:]))
"#
    );
    run(&mut a.cmd_as(2102, &["/usr/bin/python3", "-c", &script]))
}

fn refused(b: &Netns, reason: &str) -> f64 {
    metric(
        b,
        &format!(r#"weft_inbound_refused_total{{reason="{reason}"}}"#),
    )
}

/// B's application answered, and saw the caller it should have.
fn served_by_b(out: &str, peer: Option<&str>) -> bool {
    let lower = out.to_ascii_lowercase();
    lower.starts_with("http/1.1 200")
        && lower.contains("x-served-by: b")
        && peer.is_none_or(|p| lower.contains(&format!("x-seen-peer-identity: {p}")))
}

#[test]
fn another_pod_cannot_reach_the_sidecars_own_ports_or_loopback_only_apps() {
    if !netns::root_or_skip() {
        return;
    }
    let mut p = Pods::new("permissive");
    let (a, b) = (&p.a, &p.b);
    let b_admin = format!("http://{B_IP}:15000");
    // Every attempt that got through, named: all are listed when the test fails.
    let mut breaches = Vec::new();
    let mut refuse = |what: &str, (ok, out): (bool, String), got_in: bool| {
        if got_in {
            breaches.push(format!("{what} ({ok}):\n{out}"));
        }
    };

    // The admin server, through B's capture: no table (and, below, no shutdown).
    let r = attack(a, &[&format!("{b_admin}/config_dump")]);
    let got_in = r.0 || r.1.contains("services");
    refuse("config_dump answered", r, got_in);
    // Over IPv6 too (ip6tables captures it the same way).
    let r = attack(a, &["-6", "-g", "http://[fd00:77::2]:15000/config_dump"]);
    let got_in = r.0 || r.1.contains("services");
    refuse("config_dump answered over IPv6", r, got_in);

    // The outbound listener, through B's capture: a request that would leave B with B's
    // identity (to B's own web service, which would then see B as the caller).
    let r = attack(
        a,
        &[
            "-H",
            "Host: web.demo:8080",
            &format!("http://{B_IP}:15001/echo"),
        ],
    );
    let got_in = r.0;
    refuse("B's outbound listener relayed for another pod", r, got_in);
    // An outbound listener bound to every address and not captured serves only B's own pod.
    let r = attack(a, &[&format!("http://{B_IP}:7100/echo")]);
    let got_in = r.0;
    refuse(
        "B's outbound-tcp listener relayed for another pod",
        r,
        got_in,
    );

    // The DNS proxy's TCP port, through B's capture.
    let r = dns_over_tcp(a, &format!("{B_IP}:5353"), "web.demo");
    let got_in = r.0;
    refuse("B's DNS proxy answered another pod over TCP", r, got_in);

    // An application bound to 127.0.0.1 only is private to its pod: not in plaintext...
    let r = attack(a, &[&format!("http://{B_IP}:7010/echo")]);
    let got_in = r.1.to_ascii_lowercase().contains("x-served-by: private");
    refuse("a loopback-only application answered", r, got_in);
    // ... and not over mutual TLS, as a meshed endpoint: A's applications (captured by A's
    // sidecar, which dials B with A's certificate) reach neither it nor B's admin server.
    let r = curl(a, "http://10.96.0.21:7010/echo");
    let got_in = r.1.to_ascii_lowercase().contains("x-served-by: private");
    refuse("a loopback-only application answered over mTLS", r, got_in);
    let r = curl(a, "http://10.96.0.20:15000/config_dump");
    let got_in = r.1.contains("services");
    refuse("B's admin server answered over mTLS", r, got_in);
    // A packet for another address, sent through B's link (A routes 10.99.0.1 via B): the
    // redirect takes it, but B is not a relay (to a cloud metadata address, say), and a
    // destination of 127.0.0.1 would reach loopback-only applications the same way.
    a.must(&[
        "ip",
        "route",
        "add",
        "10.99.0.1/32",
        "via",
        B_IP,
        "dev",
        "eth0",
    ]);
    let r = attack(a, &["http://10.99.0.1:8080/echo"]);
    let got_in = r.1.contains("HTTP/1.1");
    refuse(
        "B's sidecar served a connection for another address",
        r,
        got_in,
    );
    // Last: before the fix, this one stopped B.
    let r = attack(a, &["-X", "POST", &format!("{b_admin}/shutdown")]);
    let got_in = r.0;
    refuse("shutdown answered", r, got_in);
    assert!(breaches.is_empty(), "{}", breaches.join("\n\n"));

    // B refused and counted each attempt on its own ports (two admin requests over IPv4, one
    // over IPv6, one over mTLS, the outbound port, the DNS port), and is still running.
    assert_eq!(refused(b, "proxy_port"), 6.0);
    assert_eq!(refused(b, "not_local"), 1.0);
    assert!(
        p.sidecar_b.wait_exit(Duration::ZERO).is_none(),
        "B's sidecar stopped"
    );
    let (ok, out) = run(&mut b.cmd(&["curl", "-sS", "-m", "5", "http://127.0.0.1:15020/live"]));
    assert!(ok, "{out}");
    let logs = p.sidecar_b.logs.lock().unwrap().join("\n");
    assert!(
        logs.contains("connection to one of the sidecar's own ports refused"),
        "{logs}"
    );

    // What B serves still works: over mutual TLS with A's identity, and in plaintext
    // (PERMISSIVE) with none.
    let (ok, out) = curl(a, "http://10.96.0.10:8080/echo");
    assert!(ok && served_by_b(&out, Some(&format!("{TD}/a"))), "{out}");
    let (ok, out) = attack(a, &[&format!("http://{B_IP}:8080/echo")]);
    assert!(ok && served_by_b(&out, None), "{out}");
    // The escape hatch: B delivers port 7020 on loopback (--inbound-loopback-ports), so its
    // loopback-only application serves the mesh there; the same flag naming the admin port
    // (15000) did not open it above.
    let (ok, out) = attack(a, &[&format!("http://{B_IP}:7020/echo")]);
    assert!(
        ok && out.to_ascii_lowercase().contains("x-served-by: hatch"),
        "{out}"
    );
    assert!(
        !out.to_ascii_lowercase()
            .contains("x-seen-peer-identity: spiffe")
    );
    drop(p.sidecar_a.take());
}

/// `--default-authz deny`: a destination no policy guards takes nobody; one whose service has
/// a policy takes whom the policy allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_default_authz_deny_only_what_a_policy_allows_gets_in() {
    use weft_tests::{chain::TempDir, eventually, http_peer, proxy::Proxy};
    let app = http_peer::server("app").await;
    let dir = TempDir::new("default-authz");
    let table = dir.write(
        "table.yaml",
        "services:\n  - name: other.demo\n    port: 80\n    endpoints: [{address: 10.0.0.1:80}]\n",
    );
    let forward = app.addr.to_string();
    let proxy = Proxy::start(&[
        "--config",
        table.to_str().unwrap(),
        "--inbound-forward",
        &forward,
        "--default-authz",
        "deny",
    ]);
    let inbound = proxy.addr("inbound");
    let get = || async {
        http_peer::request_h1(
            inbound,
            http::Request::get("/echo").header("host", "app:80"),
            String::new(),
        )
        .await
        .unwrap()
    };
    let rsp = get().await;
    assert_eq!(rsp.status(), 403, "{rsp:?}");
    assert!(
        rsp.headers()["weft-proxy-error"]
            .to_str()
            .unwrap()
            .contains("no policy guards it; --default-authz deny"),
        "{rsp:?}"
    );
    assert_eq!(
        app.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // A service at this address with a policy that lets everyone in.
    dir.write(
        "table.yaml",
        &format!(
            "services:\n  - name: app.demo\n    port: 80\n    endpoints: [{{address: {inbound}}}]\n    authorization: {{default: allow}}\n"
        ),
    );
    proxy.signal("HUP");
    eventually(Duration::from_secs(10), "the policy in force", || async {
        (get().await.status() == 200).then_some(())
    })
    .await;
    // Counted as decisions: the denials before, an allow now.
    let count = |result: &'static str| {
        let proxy = &proxy;
        async move {
            proxy
                .metric(&format!(
                    r#"weft_authz_total{{protocol="http",result="{result}"}}"#
                ))
                .await
        }
    };
    let (denied, allowed) = (count("deny").await, count("allow").await);
    assert!(denied >= 1.0);
    assert_eq!(get().await.status(), 200);
    assert_eq!(
        (count("deny").await, count("allow").await),
        (denied, allowed + 1.0)
    );
}

/// A port scan of the pod does not grow the sidecar's metrics: destinations no service
/// declares share the `other` target; a declared one keeps its own.
#[test]
fn a_port_scan_does_not_grow_the_metrics() {
    if !netns::root_or_skip() {
        return;
    }
    let p = Pods::new("permissive");
    let (a, b) = (&p.a, &p.b);
    let ports: Vec<u16> = (7030..7050).collect();
    for port in &ports {
        let _ = attack(a, &["-m", "2", &format!("http://{B_IP}:{port}/")]);
    }
    let (ok, out) = attack(a, &[&format!("http://{B_IP}:8080/echo")]);
    assert!(ok && served_by_b(&out, None), "{out}");
    let (_, text) = run(&mut b.cmd(&["curl", "-s", "http://127.0.0.1:15020/metrics"]));
    let targets: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("weft_request_total{") && l.contains(r#"direction="inbound""#))
        .filter_map(|l| l.split(r#"target=""#).nth(1)?.split('"').next())
        .collect();
    // The declared web port, the undeclared rest, and the `--inbound-forward` address (the
    // target of uncaptured connections, made at start).
    assert_eq!(
        targets,
        ["10.77.0.2:8080", "other", "127.0.0.1:8080"]
            .into_iter()
            .collect(),
        "{targets:?}"
    );
    assert_eq!(
        metric(
            b,
            r#"weft_request_total{backend="",direction="inbound",route="",target="other"}"#
        ),
        ports.len() as f64
    );
}

/// The probe server (reachable from the network, never captured) and the admin server close a
/// connection that does not finish its request's headers within 5 s (one byte at a time would
/// otherwise hold it forever), and hold at most 256 connections, a new one taking the place of
/// the oldest (a client holding them all used to lock the kubelet's probes out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_of_the_probe_and_admin_servers_is_cut_off() {
    let proxy = weft_tests::proxy::Proxy::start(&[]);
    for listener in ["probe", "admin"] {
        weft_tests::slow_headers_are_cut_off(proxy.addr(listener), listener).await;
        // Whoever holds the 256 connections cannot lock a new client (the kubelet) out.
        weft_tests::the_newest_connection_takes_the_oldests_place(
            proxy.addr(listener),
            listener,
            256,
        )
        .await;
    }
    // And the probe still answers.
    assert_eq!(proxy.get("probe", "/live").await.0, 200);
}

/// The DNS proxy relays at most MAX_RELAYS_IN_FLIGHT (256) queries at once: with an upstream
/// that never answers, the relays hold at most 256 sockets, and a query beyond is answered
/// SERVFAIL at once (each relay held a socket and a 64 KiB buffer for 5 s, without a bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dns_proxy_relays_a_bounded_number_of_queries_at_once() {
    // An upstream that takes queries and never answers.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let upstream = silent.local_addr().unwrap().to_string();
    let proxy = weft_tests::proxy::Proxy::start(&[
        "--dns-addr",
        "127.0.0.1:0",
        "--dns-upstream",
        &upstream,
    ]);
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", proxy.pid()))
            .unwrap()
            .count()
    };
    let before = fds();
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(proxy.addr("dns")).await.unwrap();
    // A query for example.org, type A, with id `i`.
    let query = |i: u16| {
        let mut q = i.to_be_bytes().to_vec();
        q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        q.extend_from_slice(b"\x07example\x03org\x00\x00\x01\x00\x01");
        q
    };
    // Queries, a few at a time (a burst would overflow the socket's buffer), until the relays
    // in flight hold the bound.
    let next = std::sync::atomic::AtomicU16::new(0);
    weft_tests::eventually(
        Duration::from_secs(20),
        "the relays at the bound",
        || async {
            let start = next.fetch_add(16, std::sync::atomic::Ordering::SeqCst);
            for i in start..start + 16 {
                client.send(&query(i)).await.unwrap();
            }
            (fds().saturating_sub(before) >= 256).then_some(())
        },
    )
    .await;
    // Beyond it, each query is answered SERVFAIL (rcode 2) at once.
    for i in 0..20u16 {
        client.send(&query(50_000 + i)).await.unwrap();
    }
    let mut buf = [0u8; 512];
    let mut servfails = 0;
    while servfails < 20 {
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .expect("answers at once")
            .unwrap();
        if n > 3 && buf[3] & 0x0f == 2 {
            servfails += 1;
        }
    }
    let held = fds().saturating_sub(before);
    assert!(held <= 256 + 16, "{held} descriptors held for relays");
}

/// A listener holds at most `--max-connections`: beyond, a new connection is closed at once
/// and counted; when one closes, a new one is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_holds_at_most_max_connections() {
    use tokio::io::AsyncReadExt;
    let proxy = weft_tests::proxy::Proxy::start(&["--max-connections", "3"]);
    let outbound = proxy.addr("outbound");
    // Three clients that say nothing (held in protocol detection).
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(outbound).await.unwrap());
    }
    weft_tests::eventually(Duration::from_secs(10), "three open", || async {
        (proxy
            .metric(r#"weft_tcp_open_connections{direction="outbound"}"#)
            .await
            == 3.0)
            .then_some(())
    })
    .await;
    let mut fourth = tokio::net::TcpStream::connect(outbound).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut buf))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0, "the fourth connection is closed");
    assert_eq!(
        proxy
            .metric(r#"weft_tcp_refused_total{direction="outbound"}"#)
            .await,
        1.0
    );
    drop(held.pop());
    weft_tests::eventually(Duration::from_secs(10), "a slot free again", || async {
        // Refused until the proxy has seen the close: then answered (no such service).
        let rsp = weft_tests::http_peer::request_h1(
            outbound,
            http::Request::get("/").header("host", "nowhere.test"),
            String::new(),
        )
        .await
        .ok()?;
        (rsp.status() == 404).then_some(())
    })
    .await;
}
