//! Transparent capture, for real: two "pods" (network namespaces joined by a veth pair), each
//! with an application, a sidecar running as UID 2102 and `weft-proxy init` applied inside.
//! Unmodified clients in pod A (curl, a tonic client, a bash TCP client) dial service VIPs;
//! iptables sends their connections through A's sidecar, mutual TLS to B's sidecar (its rules
//! send them to 15006), then to B's application on the original port. A's DNS is redirected to
//! its sidecar's DNS proxy, which answers the table's names.

use std::{path::PathBuf, process::Command, time::Duration};

use weft_tests::{
    chain::TempDir,
    netns::{self, Netns},
    proxy::{Proxy, binary, binary_named},
};

pub(crate) const TD: &str = "spiffe://cluster.local/ns/demo/sa";
const A_IP: &str = "10.77.0.1";
pub(crate) const B_IP: &str = "10.77.0.2";

/// A CA and one certificate per pod, as files the sidecars read (`--identity files`).
fn certificates(dir: &TempDir) -> PathBuf {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    for pod in ["a", "b"] {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = vec![rcgen::SanType::URI(
            format!("{TD}/{pod}").as_str().try_into().unwrap(),
        )];
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let cert = p.signed_by(&key, &issuer).unwrap();
        dir.write(&format!("{pod}.crt"), &cert.pem());
        dir.write(&format!("{pod}.key"), &key.serialize_pem());
    }
    dir.write("ca.crt", &ca_cert.pem())
}

/// The table both sidecars load: three services on B, each with a VIP; and two that name B's
/// private ports (its sidecar's admin port, an application bound to loopback only) as a
/// meshed endpoint, which a caller could try.
fn table() -> String {
    let mut t = String::from(
        "services:\n  - name: web6.demo\n    port: 8080\n    vip: fd00:96::10\n    endpoints:\n      - address: '[fd00:77::2]:8080'\n        identity: spiffe://cluster.local/ns/demo/sa/b\n",
    );
    for (name, port, protocol, vip) in [
        ("web", 8080, "http", "10.96.0.10"),
        ("echo", 9090, "http2", "10.96.0.11"),
        ("tcp", 7000, "tcp", "10.96.0.12"),
        ("admin-b", 15000, "http", "10.96.0.20"),
        ("private-b", 7010, "http", "10.96.0.21"),
    ] {
        t += &format!(
            "  - name: {name}.demo\n    port: {port}\n    protocol: {protocol}\n    vip: {vip}\n    endpoints:\n      - address: {B_IP}:{port}\n        identity: {TD}/b\n"
        );
    }
    t
}

/// Fields drop in order: the processes first, then the namespaces, then the files.
pub(crate) struct Pods {
    pub(crate) sidecar_a: Option<Proxy>,
    pub(crate) sidecar_b: Proxy,
    /// B's applications: web 8080, gRPC 9090, TCP echo 7000; outside the mesh, HTTP on 7002
    /// and a TCP echo on 7001; bound to 127.0.0.1 only, HTTP on 7010 and (B's escape hatch)
    /// 7020.
    pub(crate) apps: Vec<Proxy>,
    pub(crate) a: Netns,
    pub(crate) b: Netns,
    _dir: TempDir,
}

fn sidecar(ns: &Netns, dir: &TempDir, pod: &str, table: &str, extra: &[&str]) -> Proxy {
    let (table, cert, key, ca) = (
        dir.0.join(table),
        dir.0.join(format!("{pod}.crt")),
        dir.0.join(format!("{pod}.key")),
        dir.0.join("ca.crt"),
    );
    let bin = binary();
    let mut cmd = ns.cmd_as(
        2102,
        &[
            bin.to_str().unwrap(),
            "--config",
            table.to_str().unwrap(),
            "--capture",
            "--inbound-addr",
            "[::]:15006",
            "--outbound-addr",
            "127.0.0.1:15001",
            "--probe-addr",
            "0.0.0.0:15020",
            "--admin-addr",
            "127.0.0.1:15000",
            "--identity",
            "files",
            "--identity-cert",
            cert.to_str().unwrap(),
            "--identity-key",
            key.to_str().unwrap(),
            "--identity-bundle",
            ca.to_str().unwrap(),
            "--log-format",
            "json",
        ],
    );
    cmd.args(extra);
    Proxy::spawn(cmd).unwrap_or_else(|(s, logs)| {
        panic!("sidecar {pod} did not start ({s:?}):\n{}", logs.join("\n"))
    })
}

fn app(ns: &Netns, args: &[&str]) -> Proxy {
    let bin = binary_named("weft-test-app");
    let mut all = vec![bin.to_str().unwrap(), "serve"];
    all.extend_from_slice(args);
    Proxy::spawn_until(ns.cmd(&all), "ready")
        .unwrap_or_else(|(s, logs)| panic!("test app did not start ({s:?}): {logs:?}"))
}

fn init(ns: &Netns, args: &[&str]) {
    let bin = binary();
    let mut all = vec![bin.to_str().unwrap(), "init"];
    all.extend_from_slice(args);
    ns.must(&all);
}

impl Pods {
    /// `b_mode`: B's inbound mutual TLS mode (`--inbound-mtls`).
    pub(crate) fn new(b_mode: &str) -> Pods {
        let dir = TempDir::new("capture");
        certificates(&dir);
        dir.write("table.yaml", &table());
        // B's table also knows a name A's does not: A's DNS proxy relays it to B's.
        dir.write(
            "table-b.yaml",
            &(table()
                + "  - name: only-b.demo\n    port: 80\n    vip: 10.96.0.99\n    endpoints: [{address: 10.77.0.2:80}]\n"),
        );
        // The sidecars (UID 2102) read these files.
        netns::must(Command::new("chmod").args(["-R", "a+rX", dir.0.to_str().unwrap()]));
        let (a, b) = (Netns::new("a"), Netns::new("b"));
        netns::link(&a, A_IP, &b, B_IP);
        netns::add_ipv6(&a, "fd00:77::1");
        netns::add_ipv6(&b, "fd00:77::2");
        let apps = vec![
            // Web on both families: IPv6 callers are delivered over IPv6, as without a mesh.
            app(&b, &["b", "[::]:8080", "0.0.0.0:9090", "0.0.0.0:7000"]),
            app(
                &b,
                &["outside", "0.0.0.0:7002", "0.0.0.0:7003", "0.0.0.0:7001"],
            ),
            app(
                &b,
                &[
                    "private",
                    "127.0.0.1:7010",
                    "127.0.0.1:7011",
                    "127.0.0.1:7012",
                ],
            ),
            // Loopback only too, but its port is B's escape hatch (--inbound-loopback-ports).
            app(
                &b,
                &[
                    "hatch",
                    "127.0.0.1:7020",
                    "127.0.0.1:7021",
                    "127.0.0.1:7022",
                ],
            ),
        ];
        init(&a, &["--exclude-outbound-ports", "7002", "--redirect-dns"]);
        // 7100: an outbound listener bound to every address, and not captured.
        init(&b, &["--exclude-inbound-ports", "7001,7002,7003,7100"]);
        let sidecar_b = sidecar(
            &b,
            &dir,
            "b",
            "table-b.yaml",
            &[
                "--dns-addr",
                "0.0.0.0:5353",
                "--dns-upstream",
                "127.0.0.1:1",
                "--outbound-tcp",
                "0.0.0.0:7100=web.demo:8080",
                "--inbound-loopback-ports",
                "7020,15000",
                "--inbound-mtls",
                b_mode,
            ],
        );
        let sidecar_a = Some(sidecar(
            &a,
            &dir,
            "a",
            "table.yaml",
            &[
                "--dns-addr",
                "127.0.0.1:15053",
                "--dns-upstream",
                "10.77.0.2:5353",
                "--outbound-addr-v6",
                "[::1]:15001",
                "--inbound-mtls",
                "strict",
            ],
        ));
        Pods {
            sidecar_a,
            sidecar_b,
            apps,
            a,
            b,
            _dir: dir,
        }
    }
}

/// Runs `args` in `ns`; returns its exit success and stdout.
pub(crate) fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// One sample of a sidecar's metrics, read inside its namespace; fails the test when the
/// series is missing.
pub(crate) fn metric(ns: &Netns, series: &str) -> f64 {
    try_metric(ns, series).unwrap_or_else(|| panic!("series `{series}` is not in the metrics"))
}

/// One sample of a sidecar's metrics, or `None` while the series does not exist yet.
pub(crate) fn try_metric(ns: &Netns, series: &str) -> Option<f64> {
    let (ok, text) = run(&mut ns.cmd(&["curl", "-sf", "http://127.0.0.1:15020/metrics"]));
    assert!(ok, "GET /metrics in the namespace: {text}");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A TCP client (bash's `/dev/tcp`): connects, sends a line, prints the line that comes back.
pub(crate) fn tcp_ping(ns: &Netns, uid: u32, addr: &str) -> (bool, String) {
    let (host, port) = addr.split_once(':').unwrap();
    let script = format!("exec 3<>/dev/tcp/{host}/{port} && echo ping >&3 && head -1 <&3");
    run(&mut ns.cmd_as(uid, &["timeout", "5", "bash", "-c", &script]))
}

pub(crate) fn curl(ns: &Netns, url: &str) -> (bool, String) {
    run(&mut ns.cmd(&["curl", "-sS", "-m", "5", "-D", "-", url]))
}

#[test]
fn unmodified_clients_reach_the_other_pod_through_both_sidecars_over_mutual_tls() {
    if !netns::root_or_skip() {
        return;
    }
    let mut p = Pods::new("strict");
    let (a, b) = (&p.a, &p.b);
    let outbound_accepted = || metric(a, r#"weft_tcp_accepted_total{direction="outbound"}"#);

    // curl to the web service's VIP: A's sidecar -> mTLS -> B's sidecar -> B's app, which sees
    // who called.
    let (ok, out) = curl(a, "http://10.96.0.10:8080/echo");
    assert!(ok, "{out}");
    let lower = out.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{out}");
    assert!(
        lower.contains(&format!("x-seen-peer-identity: {TD}/a")),
        "{out}"
    );
    assert!(lower.contains("x-served-by: b"), "{out}");

    // A tonic client to the gRPC VIP: all four call shapes; B's app saw A's identity on each.
    let app = binary_named("weft-test-app");
    let (ok, out) = run(&mut a.cmd(&[app.to_str().unwrap(), "grpc-call", "10.96.0.11:9090"]));
    assert!(ok, "{out}");
    assert_eq!(
        out,
        "unary hello\nserver_stream 5\nclient_stream 4\nbidi m0,m1,m2\n"
    );
    // The app logs calls every 20 ms.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let calls = loop {
        let calls: Vec<String> = p.apps[0]
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("grpc call"))
            .cloned()
            .collect();
        if calls.len() >= 4 || std::time::Instant::now() > deadline {
            break calls;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(
        calls.iter().all(|c| c.contains(&format!("{TD}/a"))),
        "{calls:?}"
    );

    // A TCP client to the TCP service's VIP.
    assert_eq!(tcp_ping(a, 0, "10.96.0.12:7000"), (true, "ping\n".into()));

    // Both sidecars counted it, over mutual TLS.
    assert!(
        metric(
            a,
            r#"weft_tls_handshakes_total{direction="outbound",result="ok"}"#
        ) >= 3.0
    );
    assert_eq!(
        metric(
            a,
            r#"weft_request_total{backend="web.demo:8080",direction="outbound",route="default",target="web.demo:8080"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            b,
            &format!(r#"weft_inbound_peer_requests_total{{client_id="{TD}/a",tls="true"}}"#)
        ),
        5.0,
        "one HTTP request and four gRPC calls"
    );
    assert!(
        metric(
            b,
            r#"weft_tls_handshakes_total{direction="inbound",result="ok"}"#
        ) >= 3.0
    );

    // A destination outside the mesh (B's port 7001, not in the table, not captured at B):
    // captured at A and passed through to where it was sent.
    let before = outbound_accepted();
    assert_eq!(tcp_ping(a, 0, "10.77.0.2:7001"), (true, "ping\n".into()));
    assert_eq!(outbound_accepted(), before + 1.0, "captured by A's sidecar");
    // An excluded port (7002) and the proxy's own UID bypass capture.
    let (ok, out) = curl(a, "http://10.77.0.2:7002/echo");
    assert!(ok && out.contains("x-served-by: outside"), "{out}");
    assert_eq!(tcp_ping(a, 2102, "10.77.0.2:7001"), (true, "ping\n".into()));
    assert_eq!(
        outbound_accepted(),
        before + 1.0,
        "neither went through A's sidecar"
    );

    // DNS: the pod's resolver is redirected to A's DNS proxy, which answers mesh names (known
    // only to the table, not to any DNS server) with their VIPs and relays the rest upstream
    // (here B's DNS proxy, which knows a name A's table does not).
    let (ok, out) = run(&mut a.cmd(&["getent", "ahostsv4", "web.demo"]));
    assert!(ok && out.starts_with("10.96.0.10 "), "{out}");
    let (ok, out) = curl(a, "http://web.demo:8080/echo");
    assert!(
        ok && out.to_ascii_lowercase().contains("x-served-by: b"),
        "{out}"
    );
    let (ok, out) = run(&mut a.cmd(&["getent", "ahostsv4", "only-b.demo"]));
    assert!(ok && out.starts_with("10.96.0.99 "), "{out}");
    let (ok, out) = run(&mut a.cmd(&["getent", "ahostsv4", "nowhere.invalid"]));
    assert!(!ok, "{out}");

    // IPv6: the pods have IPv6 addresses, so init added ip6tables rules; a client dialling an
    // IPv6 VIP goes the same way (A's [::1]:15001 listener, B's dual-stack inbound).
    let rules6 =
        String::from_utf8_lossy(&a.must(&["ip6tables-save", "-t", "nat"]).stdout).into_owned();
    assert!(
        rules6.contains("-A OUTPUT -p tcp -j WEFT_OUTPUT"),
        "{rules6}"
    );
    let (ok, out) = run(&mut a.cmd(&[
        "curl",
        "-6",
        "-gsS",
        "-m",
        "5",
        "-D",
        "-",
        "http://[fd00:96::10]:8080/echo",
    ]));
    assert!(ok, "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains(&format!("x-seen-peer-identity: {TD}/a")),
        "{out}"
    );
    let (ok, out) = run(&mut a.cmd(&["getent", "ahostsv6", "web6.demo"]));
    assert!(ok && out.starts_with("fd00:96::10 "), "{out}");

    // Plaintext straight to B's web port (from A's proxy UID, so A does not capture it) is
    // captured by B and refused: STRICT.
    let (ok, out) = run(&mut a.cmd_as(
        2102,
        &["curl", "-sS", "-m", "5", "http://10.77.0.2:8080/echo"],
    ));
    assert!(!ok, "{out}");
    assert_eq!(
        metric(b, r#"weft_inbound_refused_total{reason="plaintext"}"#),
        1.0
    );

    // Without A's sidecar, A's applications fail: capture does not fall back to bypass.
    p.sidecar_a.take();
    eventually_refused(&p.a);
}

/// Waits until a connection to the web VIP from `ns` fails (the sidecar's listener is gone).
fn eventually_refused(ns: &Netns) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out) = curl(ns, "http://10.96.0.10:8080/echo");
        if !ok {
            assert!(
                out.contains("Failed to connect") || out.contains("refused"),
                "{out}"
            );
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still answered: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn init_is_idempotent_cleans_up_and_says_what_is_wrong() {
    if !netns::root_or_skip() {
        return;
    }
    let ns = Netns::new("init");
    let bin = binary();
    let bin = bin.to_str().unwrap();
    let dry = ns.must(&[bin, "init", "--dry-run", "--redirect-dns"]);
    let dry = String::from_utf8_lossy(&dry.stdout).into_owned();
    init(&ns, &["--redirect-dns"]);
    let once = ns.nat_rules();
    init(&ns, &["--redirect-dns"]);
    let twice = ns.nat_rules();
    assert_eq!(once, twice, "running init twice leaves one set of rules");
    for jump in [
        "-A PREROUTING -p tcp -j WEFT_INBOUND\n",
        "-A OUTPUT -p tcp -j WEFT_OUTPUT\n",
    ] {
        assert_eq!(twice.matches(jump).count(), 1, "{twice}");
    }
    // Every rule --dry-run printed is in force (iptables-save adds the implied `-m` matches).
    for line in dry.lines().filter(|l| l.starts_with("-A ")) {
        let saved = line
            .replace("-p tcp --dport", "-p tcp -m tcp --dport")
            .replace("-p udp --dport", "-p udp -m udp --dport");
        assert!(twice.contains(&saved), "`{saved}` not in\n{twice}");
    }
    init(&ns, &["--cleanup"]);
    let clean = ns.nat_rules();
    assert!(!clean.contains("WEFT"), "{clean}");

    // The legacy backend too.
    init(&ns, &["--iptables", "legacy"]);
    let legacy = String::from_utf8_lossy(&ns.must(&["iptables-legacy-save", "-t", "nat"]).stdout)
        .into_owned();
    assert!(
        legacy.contains("-A OUTPUT -p tcp -j WEFT_OUTPUT"),
        "{legacy}"
    );
    init(&ns, &["--iptables", "legacy", "--cleanup"]);
    let legacy = String::from_utf8_lossy(&ns.must(&["iptables-legacy-save", "-t", "nat"]).stdout)
        .into_owned();
    assert!(!legacy.contains("WEFT"), "{legacy}");

    // Without the capability, and without the binary: a clear error, non-zero.
    let (ok, out) = run(&mut ns.cmd_as(65534, &[bin, "init"]));
    assert!(!ok);
    assert!(out.contains("CAP_NET_ADMIN"), "{out}");
    let ip = weft_tests::tools::require("ip").expect("iproute2");
    let (ok, out) = run(Command::new(ip)
        .args(["netns", "exec", &ns.name, bin, "init"])
        .env("PATH", "/nonexistent"));
    assert!(!ok);
    assert!(out.contains("is not installed"), "{out}");
}
