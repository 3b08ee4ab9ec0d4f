//! Mutual TLS between sidecars, end to end: the control plane (mesh CA, xDS over TLS), sidecars
//! that get their certificates from it with bootstrap tokens, and real peers on both ends
//! (hyper, tonic, a TCP echo server, `openssl s_client`).
//!
//! The mesh: `frontend` (ns demo) and `intruder` (ns other) are client sidecars; `web`
//! (HTTP/1.1), `echo` (gRPC) and `tcp` (an echo server) each sit behind a sidecar of their own.
//! Every service allows only `frontend`.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_tests::{
    chain::TempDir,
    eventually,
    grpc::{self, Msg, ServerState},
    http_peer::{self, Peer},
    mesh,
    proxy::Proxy,
    tcp_peer, tools,
};

const TD: &str = "spiffe://cluster.local";
const WEB: &str = "web.demo.svc.cluster.local:8080";
const ECHO: &str = "echo.demo.svc.cluster.local:9090";
const TCP: &str = "tcp.demo.svc.cluster.local:7000";

pub(crate) fn id(ns: &str, sa: &str) -> String {
    format!("{TD}/ns/{ns}/sa/{sa}")
}

/// How a test wants the mesh.
struct Options {
    /// `--cert-ttl` and `--cert-max-ttl` of the CA (sidecars ask for 24 h; the CA caps it).
    cert_ttl: &'static str,
    /// The identity the registry gives web's endpoint (web's sidecar proves `demo/web`).
    web_identity: String,
    /// `--inbound-mtls` of web's sidecar.
    web_mode: &'static str,
    /// Whether web has the authorization policy (only `frontend` may call).
    web_authz: bool,
    /// Web's sidecar reads its identity from files (`web-files.crt`, `.key`) instead of asking
    /// the CA.
    web_files: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cert_ttl: "1h",
            web_identity: id("demo", "web"),
            web_mode: "strict",
            web_authz: true,
            web_files: false,
        }
    }
}

/// The control plane on `registry`, its CA in `dir/ca` (created on first start), its TLS port on
/// `tls_addr`.
pub(crate) fn start_cp(dir: &TempDir, registry: &TempDir, cert_ttl: &str, tls_addr: &str) -> Proxy {
    let (ca_dir, tokens) = (dir.0.join("ca"), dir.0.join("tokens"));
    mesh::control_plane(
        registry,
        &[
            "--ca-dir",
            ca_dir.to_str().unwrap(),
            "--ca-create",
            "--bootstrap-tokens",
            tokens.to_str().unwrap(),
            "--cert-ttl",
            cert_ttl,
            "--cert-max-ttl",
            cert_ttl,
            "--tls-addr",
            tls_addr,
        ],
    )
}

struct Mesh {
    dir: TempDir,
    registry: TempDir,
    cp: Proxy,
    /// The mesh CA's certificate (the trust bundle).
    bundle: PathBuf,
    web: Peer,
    echo: Arc<ServerState>,
    /// web, echo, tcp.
    pods: Vec<Proxy>,
    frontend: Proxy,
    intruder: Proxy,
}

/// The sidecar flags for workload `ns/sa`, getting its identity from `cp`'s CA.
pub(crate) fn sidecar(
    dir: &TempDir,
    cp: &Proxy,
    bundle: &std::path::Path,
    ns: &str,
    sa: &str,
    extra: &[&str],
) -> Proxy {
    let token = dir.write(&format!("{sa}.token"), &token(sa));
    let url = format!("https://{}", cp.addr("xds-tls"));
    let mut args = vec![
        "--control-plane",
        &url,
        "--trust-bundle",
        bundle.to_str().unwrap(),
    ];
    // Unless `extra` says where the identity comes from: the CA.
    if !extra.contains(&"--identity") {
        args.extend([
            "--identity",
            "ca",
            "--identity-token-file",
            token.to_str().unwrap(),
        ]);
    }
    let log = access_log(dir, sa);
    args.extend([
        "--pod-namespace",
        ns,
        "--service-account",
        sa,
        "--pod-name",
        sa,
        "--access-log",
        "json",
        "--access-log-path",
        log.to_str().unwrap(),
    ]);
    args.extend_from_slice(extra);
    Proxy::start(&args)
}

/// Where workload `sa`'s sidecar writes its access log.
pub(crate) fn access_log(dir: &TempDir, sa: &str) -> PathBuf {
    dir.0.join(format!("{sa}.access.log"))
}

/// The access log lines of `sa`'s sidecar that `pick` chooses, once there are `n` of them.
async fn logged(
    dir: &TempDir,
    sa: &str,
    n: usize,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let path = access_log(dir, sa);
    eventually(Duration::from_secs(10), "access log lines", || async {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .filter(|l| pick(l))
            .collect();
        (lines.len() >= n).then_some(lines)
    })
    .await
}

pub(crate) fn token(sa: &str) -> String {
    format!("{sa}-bootstrap-token-0123456789")
}

/// A service with one endpoint that proves `identity`; with `authz`, only `frontend` may call it.
pub(crate) fn service(
    name: &str,
    port: u16,
    protocol: &str,
    addr: SocketAddr,
    identity: &str,
    authz: bool,
) -> String {
    let mut s = format!(
        "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  port: {port}\n  protocol: {protocol}\n  aliases: [{name}]\n  endpoints:\n    - {{address: {addr}, identity: {identity}}}\n"
    );
    if authz {
        s += &format!(
            "---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  service: {name}.demo.svc.cluster.local:{port}\n  authorization: {{default: deny, allow: [{{identity: {}}}]}}\n",
            id("demo", "frontend")
        );
    }
    s
}

impl Mesh {
    /// Requests the `web` application has answered.
    fn served(&self) -> usize {
        self.web
            .state
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn new(o: Options) -> Mesh {
        let dir = TempDir::new("mtls");
        let mut tokens = String::new();
        for (ns, sa) in [
            ("demo", "frontend"),
            ("other", "intruder"),
            ("demo", "web"),
            ("demo", "echo"),
            ("demo", "tcp"),
        ] {
            tokens += &format!("{} {ns} {sa}\n", token(sa));
        }
        dir.write("tokens", &tokens);
        let registry = TempDir::new("mtls-registry");
        let ca_dir = dir.0.join("ca");
        let cp = start_cp(&dir, &registry, o.cert_ttl, "127.0.0.1:0");
        let bundle = ca_dir.join("ca.crt");
        let web = http_peer::server("web").await;
        let (echo_addr, echo) = grpc::server().await;
        let tcp_addr = tcp_peer::echo_server(false).await;
        let files = o.web_files.then(|| {
            leaf(
                &dir,
                "web-files",
                &mesh_ca(&dir),
                &id("demo", "web"),
                time::OffsetDateTime::now_utc() + time::Duration::hours(2),
            )
        });
        let pod = |sa: &str, app: SocketAddr, mode: &str| {
            let app = app.to_string();
            let mut extra = vec!["--inbound-forward", &app, "--inbound-mtls", mode];
            if let (Some((cert, key)), "web") = (&files, sa) {
                extra.extend([
                    "--identity",
                    "files",
                    "--identity-cert",
                    cert.to_str().unwrap(),
                    "--identity-key",
                    key.to_str().unwrap(),
                    "--identity-bundle",
                    bundle.to_str().unwrap(),
                    "--identity-poll-interval",
                    "100ms",
                ]);
            }
            sidecar(&dir, &cp, &bundle, "demo", sa, &extra)
        };
        let pods = vec![
            pod("web", web.addr, o.web_mode),
            pod("echo", echo_addr, "strict"),
            pod("tcp", tcp_addr, "strict"),
        ];
        let tcp_listener = format!("127.0.0.1:0={TCP}");
        let client = |ns: &str, sa: &str| {
            sidecar(
                &dir,
                &cp,
                &bundle,
                ns,
                sa,
                &["--outbound-tcp", &tcp_listener],
            )
        };
        let frontend = client("demo", "frontend");
        let intruder = client("other", "intruder");
        let write = |file: &str, text: String| {
            registry.write(file, &text);
        };
        write(
            "web.yaml",
            service(
                "web",
                8080,
                "http",
                pods[0].addr("inbound"),
                &o.web_identity,
                o.web_authz,
            ),
        );
        write(
            "echo.yaml",
            service(
                "echo",
                9090,
                "http2",
                pods[1].addr("inbound"),
                &id("demo", "echo"),
                true,
            ),
        );
        write(
            "tcp.yaml",
            service(
                "tcp",
                7000,
                "tcp",
                pods[2].addr("inbound"),
                &id("demo", "tcp"),
                true,
            ),
        );
        let m = Mesh {
            dir,
            registry,
            cp,
            bundle,
            web,
            echo,
            pods,
            frontend,
            intruder,
        };
        for p in m.pods.iter().chain([&m.frontend, &m.intruder]) {
            eventually(
                Duration::from_secs(20),
                "every sidecar ready (config and certificate)",
                || async { (p.get("probe", "/ready").await.0 == 200).then_some(()) },
            )
            .await;
        }
        // Every sidecar has the services (ready means every type arrived once, not this
        // content).
        for p in [&m.frontend, &m.intruder, &m.pods[0]] {
            eventually(
                Duration::from_secs(10),
                "the services in the table",
                || async {
                    let dump = p.config_dump().await;
                    (dump["services"].as_array().map_or(0, Vec::len) == 3).then_some(())
                },
            )
            .await;
        }
        m
    }

    /// An HTTP/1.1 request for `web` through `via`'s outbound listener.
    async fn get_web(via: &Proxy) -> http::Response<bytes::Bytes> {
        let rsp = http_peer::request_h1(
            via.addr("outbound"),
            Request::get("/echo").header("host", "web:8080"),
            String::new(),
        )
        .await
        .unwrap();
        let (parts, body) = rsp.into_parts();
        http::Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
    }
}

fn msg(text: &str, size: usize) -> Msg {
    Msg {
        payload: vec![b'x'; size],
        text: text.to_string(),
        count: 0,
    }
}

/// Opens a connection to `via`'s TCP listener for `tcp`, sends a line and reads what comes back
/// before the connection ends (at most a second).
async fn tcp_exchange(via: &Proxy) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(via.addr(&format!("outbound-tcp {TCP}")))
        .await
        .unwrap();
    let _ = s.write_all(b"ping\n").await;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while !got.ends_with(b"ping\n") {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_carry_http1_grpc_and_tcp_over_mutual_tls_and_enforce_authorization() {
    let m = Mesh::new(Options::default()).await;
    let frontend = id("demo", "frontend");

    // HTTP/1.1 from the application, HTTP/2 over mutual TLS between the sidecars, HTTP/1.1
    // again for the server, which sees who called.
    let rsp = Mesh::get_web(&m.frontend).await;
    assert_eq!(rsp.status(), 200, "{rsp:?}");
    assert_eq!(rsp.headers()["x-seen-peer-identity"], frontend.as_str());
    assert_eq!(rsp.headers()["x-seen-version"], "HTTP/1.1");
    assert_eq!(rsp.headers()["x-seen-host"], "web:8080");

    // All four gRPC call shapes.
    let mut c = grpc::client(m.frontend.addr("outbound"), ECHO).await;
    assert_eq!(
        grpc::four_shapes(&mut c).await,
        Ok(grpc::FourShapes::expected())
    );
    let peers = m.echo.peers.lock().unwrap().clone();
    let methods: Vec<&str> = peers.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(methods, ["unary", "server_stream", "client_stream", "bidi"]);
    assert!(peers.iter().all(|(_, p)| *p == frontend), "{peers:?}");

    // Opaque TCP, mutual TLS too.
    assert_eq!(tcp_exchange(&m.frontend).await, b"ping\n");

    // A protocol upgrade gets an mTLS connection of its own (ALPN http/1.1) and tunnels.
    let mut s = tokio::net::TcpStream::connect(m.frontend.addr("outbound"))
        .await
        .unwrap();
    s.write_all(b"GET /upgrade HTTP/1.1\r\nHost: web:8080\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut b = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&b[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"tunnelled").await.unwrap();
    let mut back = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"tunnelled");
    drop(s);

    // The intruder is authenticated but not allowed: 403, PERMISSION_DENIED, a closed
    // connection; nothing reaches the applications.
    let served = m.served();
    let rsp = Mesh::get_web(&m.intruder).await;
    assert_eq!(rsp.status(), 403, "{rsp:?}");
    let reason = rsp.headers()["weft-proxy-error"].to_str().unwrap();
    assert!(
        reason.contains(&id("other", "intruder")) && reason.contains(WEB),
        "{reason}"
    );
    assert_eq!(m.served(), served);
    let mut c = grpc::client(m.intruder.addr("outbound"), ECHO).await;
    let err = c.unary(msg("hello", 10)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert_eq!(
        m.echo.peers.lock().unwrap().len(),
        4,
        "the call never reached echo"
    );
    assert_eq!(tcp_exchange(&m.intruder).await, b"");

    // Access logs: a request with a trace context through both sidecars (curl, HTTP/2), and
    // the opaque TCP connection.
    let curl = tools::require("curl");
    if let Some(curl) = &curl {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let out = tokio::process::Command::new(curl)
            .args([
                "-sS",
                "--http2-prior-knowledge",
                "-H",
                "Host: web:8080",
                "-H",
                &format!("traceparent: 00-{trace}-00f067aa0ba902b7-01"),
                "-H",
                "x-request-id: logged-1",
                "--data-binary",
                "hello",
                &format!("http://{}/echo?secret=1", m.frontend.addr("outbound")),
            ])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let by_id = |l: &serde_json::Value| l["request_id"] == "logged-1";
        let out_line = &logged(&m.dir, "frontend", 1, by_id).await[0];
        let in_line = &logged(&m.dir, "web", 1, by_id).await[0];
        for (l, direction) in [(out_line, "outbound"), (in_line, "inbound")] {
            assert_eq!(l["direction"], direction, "{l}");
            assert_eq!(l["trace_id"], trace, "{l}");
            assert_eq!(l["path"], "/echo", "the query is not logged: {l}");
            assert_eq!(l["method"], "POST", "{l}");
            assert_eq!(l["response_code"], 200, "{l}");
            assert_eq!(l["response_flags"], "-", "{l}");
            assert_eq!(l["bytes_received"], 5, "{l}");
        }
        assert_eq!(out_line["protocol"], "HTTP/2");
        assert_eq!(out_line["service"], WEB);
        assert_eq!(out_line["upstream_cluster"], WEB);
        assert_eq!(out_line["upstream_identity"], id("demo", "web"));
        assert_eq!(
            out_line["upstream_host"],
            m.pods[0].addr("inbound").to_string()
        );
        assert_eq!(in_line["client_identity"], frontend.as_str());
        assert_eq!(in_line["upstream_host"], m.web.addr.to_string());
        assert_eq!(out_line["bytes_sent"], in_line["bytes_sent"]);
    }
    let tcp = |l: &serde_json::Value| l["protocol"] == "TCP";
    let out_line = &logged(&m.dir, "frontend", 1, tcp).await[0];
    assert_eq!(out_line["service"], TCP);
    assert_eq!(out_line["upstream_identity"], id("demo", "tcp"));
    assert_eq!(
        (&out_line["bytes_received"], &out_line["bytes_sent"]),
        (&5.into(), &5.into())
    );
    let in_line = &logged(&m.dir, "tcp", 1, tcp).await[0];
    assert_eq!(in_line["client_identity"], frontend.as_str());
    assert_eq!(
        (&in_line["bytes_received"], &in_line["bytes_sent"]),
        (&5.into(), &5.into())
    );
    // The intruder's connection was closed by the tcp pod's authorization: nothing came back.
    let refused = logged(&m.dir, "intruder", 1, tcp).await;
    assert_eq!(refused[0]["bytes_sent"], 0, "{:?}", refused[0]);

    // Metrics on both sides (curl's request is one more from frontend to web).
    let curled = if curl.is_some() { 1.0 } else { 0.0 };
    let web_pod = &m.pods[0];
    assert!(
        web_pod
            .metric(r#"weft_tls_handshakes_total{direction="inbound",result="ok"}"#)
            .await
            >= 3.0
    );
    assert_eq!(
        web_pod
            .metric(&format!(
                r#"weft_inbound_peer_requests_total{{client_id="{frontend}",tls="true"}}"#
            ))
            .await,
        2.0 + curled
    );
    for (pod, protocol, result, count) in [
        (0, "http", "allow", 2.0 + curled),
        (0, "http", "deny", 1.0),
        (1, "grpc", "deny", 1.0),
        (2, "tcp", "allow", 1.0),
        (2, "tcp", "deny", 1.0),
    ] {
        let series = format!(r#"weft_authz_total{{protocol="{protocol}",result="{result}"}}"#);
        assert_eq!(
            m.pods[pod].metric(&series).await,
            count,
            "pod {pod}: {series}"
        );
    }
    assert!(
        m.frontend
            .metric(r#"weft_tls_handshakes_total{direction="outbound",result="ok"}"#)
            .await
            >= 3.0
    );
    let expiry = m
        .frontend
        .metric("weft_identity_cert_expiry_timestamp_seconds")
        .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now + 3000.0 && expiry < now + 3700.0,
        "{expiry} vs {now}"
    );
    tools::assert_promtool_clean(&web_pod.metrics().await);

    // The identity and the CA's bundle are in the config dump; the CA counted its work.
    let dump = m.frontend.config_dump().await;
    assert_eq!(dump["identity"]["spiffe_id"], frontend.as_str());
    assert_eq!(dump["identity"]["valid"], true);
    assert!(
        m.cp.metric(r#"weft_cp_ca_requests_total{result="issued"}"#)
            .await
            >= 5.0
    );
    drop(m.dir);
}

/// The mesh CA the control plane created in `dir/ca`, as a signer.
fn mesh_ca(dir: &TempDir) -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let ca_dir = dir.0.join("ca");
    rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(ca_dir.join("ca.crt")).unwrap(),
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key")).unwrap()).unwrap(),
    )
    .unwrap()
}

/// A certificate for `id` signed by `issuer`, valid until `not_after`; written to `dir` as
/// `<name>.crt` and `<name>.key`.
fn leaf(
    dir: &TempDir,
    name: &str,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    id: &str,
    not_after: time::OffsetDateTime,
) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
    p.not_before = not_after - time::Duration::days(2);
    p.not_after = not_after;
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let cert = p.signed_by(&key, issuer).unwrap();
    (
        dir.write(&format!("{name}.crt"), &cert.pem()),
        dir.write(&format!("{name}.key"), &key.serialize_pem()),
    )
}

/// `openssl s_client` to `addr` offering `alpn`, presenting `cert` if any, sending `input`;
/// returns what it printed (stdout then stderr).
async fn s_client(
    addr: SocketAddr,
    bundle: &std::path::Path,
    cert: Option<&(PathBuf, PathBuf)>,
    alpn: &str,
    input: &str,
) -> String {
    let openssl = tools::require("openssl").expect("openssl");
    let mut cmd = tokio::process::Command::new(openssl);
    cmd.args([
        "s_client",
        "-quiet",
        "-connect",
        &addr.to_string(),
        "-alpn",
        alpn,
    ])
    .arg("-CAfile")
    .arg(bundle);
    if let Some((c, k)) = cert {
        cmd.arg("-cert").arg(c).arg("-key").arg(k);
    }
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("s_client finishes within 10 s")
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_inbound_refuses_everything_but_mesh_mtls_from_an_allowed_identity() {
    if tools::require("openssl").is_none() {
        return;
    }
    let m = Mesh::new(Options::default()).await;
    let pod = &m.pods[0];
    let inbound = pod.addr("inbound");
    let ca_dir = m.dir.0.join("ca");
    let mesh_ca = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(ca_dir.join("ca.crt")).unwrap(),
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key")).unwrap()).unwrap(),
    )
    .unwrap();
    let stranger = {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let c = p.self_signed(&key).unwrap();
        rcgen::Issuer::from_ca_cert_pem(&c.pem(), key).unwrap()
    };
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let past = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let frontend = leaf(&m.dir, "frontend", &mesh_ca, &id("demo", "frontend"), later);
    let intruder = leaf(
        &m.dir,
        "intruder",
        &mesh_ca,
        &id("other", "intruder"),
        later,
    );
    let expired = leaf(&m.dir, "expired", &mesh_ca, &id("demo", "frontend"), past);
    let foreign = leaf(&m.dir, "foreign", &stranger, &id("demo", "frontend"), later);
    let request = "GET /echo HTTP/1.1\r\nHost: web:8080\r\nConnection: close\r\n\r\n";
    let mesh_alpn = "http/1.1,weft/1";
    let inbound_handshakes = |result: &'static str| async move {
        pod.metric(&format!(
            r#"weft_tls_handshakes_total{{direction="inbound",result="{result}"}}"#
        ))
        .await
    };

    // The control: a mesh certificate of an allowed identity gets through, and OpenSSL is as
    // good a client as a sidecar.
    let out = s_client(inbound, &m.bundle, Some(&frontend), mesh_alpn, request).await;
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains(&format!("x-seen-peer-identity: {}", id("demo", "frontend"))),
        "{out}"
    );
    let served = m.served();

    // No client certificate, one from another CA, an expired one.
    for (cert, result, alert) in [
        (None, "no_client_cert", "alert certificate required"),
        (Some(&foreign), "untrusted", "alert unknown ca"),
        (Some(&expired), "expired", "alert certificate expired"),
    ] {
        let out = s_client(inbound, &m.bundle, cert, mesh_alpn, request).await;
        assert!(
            !out.contains("HTTP/1.1") && out.contains(alert),
            "{result}: {out}"
        );
        assert_eq!(inbound_handshakes(result).await, 1.0, "{result}: {out}");
    }
    // A valid identity the service does not allow: the handshake succeeds, the request is
    // refused.
    let out = s_client(inbound, &m.bundle, Some(&intruder), mesh_alpn, request).await;
    assert!(out.contains("HTTP/1.1 403"), "{out}");
    assert!(out.contains("may not call"), "{out}");
    // TLS that is not a sidecar's (no `weft/1`), and plaintext: refused before any handshake.
    let out = s_client(inbound, &m.bundle, Some(&frontend), "http/1.1", request).await;
    assert!(!out.contains("HTTP/1.1"), "{out}");
    // A sidecar's TLS with no HTTP protocol (ALPN weft/1 alone) to an HTTP service: raw bytes
    // would skip the per-request header and authorization, so it is refused.
    let out = s_client(inbound, &m.bundle, Some(&frontend), "weft/1", request).await;
    assert!(!out.contains("HTTP/1.1"), "{out}");
    assert_eq!(
        pod.metric(r#"weft_inbound_refused_total{reason="opaque_to_http"}"#)
            .await,
        1.0
    );
    let mut plain = tokio::net::TcpStream::connect(inbound).await.unwrap();
    plain.write_all(request.as_bytes()).await.unwrap();
    let got = until_closed(&mut plain).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));

    assert_eq!(
        m.served(),
        served,
        "nothing refused reached the application"
    );
    assert_eq!(
        pod.metric(r#"weft_inbound_refused_total{reason="plaintext"}"#)
            .await,
        1.0
    );
    assert_eq!(
        pod.metric(r#"weft_inbound_refused_total{reason="foreign_tls"}"#)
            .await,
        1.0
    );
    assert_eq!(
        pod.metric(r#"weft_authz_total{protocol="http",result="deny"}"#)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unexpected_server_identity_fails_the_request_and_permissive_accepts_both() {
    let m = Mesh::new(Options {
        web_identity: id("demo", "payments"),
        web_mode: "permissive",
        web_authz: false,
        ..Options::default()
    })
    .await;
    // The registry says web's endpoint is `payments`; it proves `web`: no request is sent.
    let rsp = Mesh::get_web(&m.frontend).await;
    assert_eq!(rsp.status(), 502, "{rsp:?}");
    let reason = rsp.headers()["weft-proxy-error"].to_str().unwrap();
    assert!(
        reason.contains(&format!(
            "the server's identity is {}, not the expected {}",
            id("demo", "web"),
            id("demo", "payments")
        )),
        "{reason}"
    );
    assert_eq!(m.served(), 0);
    assert!(
        m.frontend
            .metric(r#"weft_tls_handshakes_total{direction="outbound",result="identity_mismatch"}"#)
            .await
            >= 1.0
    );

    // Corrected, the same pod takes mutual TLS ...
    m.registry.write(
        "web.yaml",
        &service(
            "web",
            8080,
            "http",
            m.pods[0].addr("inbound"),
            &id("demo", "web"),
            false,
        ),
    );
    let rsp = eventually(
        Duration::from_secs(10),
        "the corrected identity",
        || async {
            let rsp = Mesh::get_web(&m.frontend).await;
            (rsp.status() == 200).then_some(rsp)
        },
    )
    .await;
    assert_eq!(
        rsp.headers()["x-seen-peer-identity"],
        id("demo", "frontend").as_str()
    );
    // ... and, PERMISSIVE, plaintext, which carries no identity (a forged one is removed).
    let rsp = http_peer::request_h1(
        m.pods[0].addr("inbound"),
        Request::get("/echo")
            .header("host", "web:8080")
            .header("x-weft-peer-identity", id("demo", "admin")),
        String::new(),
    )
    .await
    .unwrap();
    assert_eq!(rsp.status(), 200);
    assert!(
        rsp.headers().get("x-seen-peer-identity").is_none(),
        "{rsp:?}"
    );
    let rsp = http_peer::request_h1(
        m.pods[0].addr("inbound"),
        Request::get("/echo")
            .header("host", "web:8080")
            .header("x_weft_peer_identity", id("demo", "admin")),
        String::new(),
    )
    .await
    .unwrap();
    let seen = rsp.headers()["x-seen-headers"].to_str().unwrap();
    assert!(!seen.contains("peer_identity"), "{seen}");
    // A client that says nothing until detection gives up (the server-first timeout) is opaque;
    // to an HTTP service that is refused, so a forged header cannot ride in as raw bytes.
    let served = m.served();
    let mut quiet = tokio::net::TcpStream::connect(m.pods[0].addr("inbound"))
        .await
        .unwrap();
    // Silent until the proxy decides (it closes a refused connection); then the forgery.
    let mut got = until_closed(&mut quiet).await;
    let _ = quiet
        .write_all(b"GET /echo HTTP/1.1\r\nHost: web:8080\r\nx-weft-peer-identity: spiffe://cluster.local/ns/demo/sa/admin\r\n\r\n")
        .await;
    got.extend(until_closed(&mut quiet).await);
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert_eq!(m.served(), served);
    assert_eq!(
        m.pods[0]
            .metric(r#"weft_inbound_refused_total{reason="opaque_to_http"}"#)
            .await,
        1.0
    );
    assert_eq!(
        m.pods[0]
            .metric(r#"weft_inbound_peer_requests_total{client_id="",tls="false"}"#)
            .await,
        2.0
    );

    // A sidecar whose CA cannot be reached is not ready: mutual TLS is on and it holds no
    // certificate.
    let token = m.dir.write("lost.token", &token("frontend"));
    let lost = Proxy::start(&[
        "--control-plane",
        &format!("https://{}", m.cp.addr("xds-tls")),
        "--trust-bundle",
        m.bundle.to_str().unwrap(),
        "--identity",
        "ca",
        "--ca-address",
        "https://127.0.0.1:1",
        "--identity-token-file",
        token.to_str().unwrap(),
        "--pod-namespace",
        "demo",
        "--service-account",
        "frontend",
    ]);
    let (status, body) = eventually(
        Duration::from_secs(10),
        "config, but no certificate",
        || async {
            let dump = lost.config_dump().await;
            let configured = dump["services"].as_array().map_or(0, Vec::len) == 3;
            let ready = lost.get("probe", "/ready").await;
            configured.then_some(ready)
        },
    )
    .await;
    assert_eq!(status, 503);
    assert!(body.contains("no valid workload certificate"), "{body}");
    assert!(lost.metric("weft_identity_renewal_failures_total").await >= 1.0);
    assert_eq!(
        lost.metric("weft_identity_cert_expiry_timestamp_seconds")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_request() {
    let m = Mesh::new(Options {
        cert_ttl: "3s",
        ..Options::default()
    })
    .await;
    let mut grpc = grpc::client(m.frontend.addr("outbound"), ECHO).await;
    let (mut ok, mut failed) = (0u32, Vec::new());
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut i = 0;
    while tokio::time::Instant::now() < until && i < 3000 {
        i += 1;
        let rsp = Mesh::get_web(&m.frontend).await;
        match rsp.status().as_u16() {
            200 => ok += 1,
            s => failed.push(format!(
                "web {s}: {:?}",
                rsp.headers().get("weft-proxy-error")
            )),
        }
        match grpc.unary(msg("x", 10)).await {
            Ok(_) => ok += 1,
            Err(e) => failed.push(format!("echo: {e:?}")),
        }
        // A new connection, so a new handshake with whatever certificates are current.
        match tcp_exchange(&m.frontend).await.as_slice() {
            b"ping\n" => ok += 1,
            other => failed.push(format!("tcp: {other:?}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} ok, {} failed: {:?}",
        ok,
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok >= 30, "{ok}");
    for p in [&m.frontend, &m.pods[0], &m.pods[2]] {
        let renewals = p.metric("weft_identity_renewals_total").await;
        assert!(
            renewals >= 3.0,
            "{renewals} certificates in 8 s of 3 s ones"
        );
    }
    let fresh = m.pods[2]
        .metric(r#"weft_tls_handshakes_total{direction="inbound",result="ok"}"#)
        .await;
    assert!(
        fresh >= f64::from(i),
        "{fresh} handshakes for {i} TCP connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_files_are_served_and_reloaded_when_they_change() {
    let m = Mesh::new(Options {
        web_files: true,
        ..Options::default()
    })
    .await;
    let pod = &m.pods[0];
    let rsp = Mesh::get_web(&m.frontend).await;
    assert_eq!(rsp.status(), 200, "{rsp:?}");
    assert_eq!(
        rsp.headers()["x-seen-peer-identity"],
        id("demo", "frontend").as_str()
    );
    let dump = pod.config_dump().await;
    assert_eq!(dump["identity"]["spiffe_id"], id("demo", "web").as_str());
    let first = dump["identity"]["expires_unix"].as_u64().unwrap();

    // A key that does not load (a writer caught half way): counted, and the identity in force
    // stays.
    m.dir.write(
        "web-files.key",
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    );
    eventually(Duration::from_secs(10), "the bad key noticed", || async {
        (pod.metric("weft_identity_renewal_failures_total").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(pod.config_dump().await["identity"]["expires_unix"], first);
    assert_eq!(Mesh::get_web(&m.frontend).await.status(), 200);

    // A new certificate and key: in force at the next poll.
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(5);
    leaf(
        &m.dir,
        "web-files",
        &mesh_ca(&m.dir),
        &id("demo", "web"),
        later,
    );
    let second = eventually(Duration::from_secs(10), "the new certificate", || async {
        let e = pod.config_dump().await["identity"]["expires_unix"].as_u64()?;
        (e != first).then_some(e)
    })
    .await;
    assert_eq!(second, later.unix_timestamp() as u64);
    assert!(pod.metric("weft_identity_renewals_total").await >= 1.0);
    assert_eq!(Mesh::get_web(&m.frontend).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_outage_at_renewal_keeps_the_certificate_in_hand_until_the_ca_returns() {
    let mut m = Mesh::new(Options {
        cert_ttl: "8s",
        ..Options::default()
    })
    .await;
    let fe = &m.frontend;
    // Just after a renewal, so about 8 s of validity are in hand.
    let r0 = fe.metric("weft_identity_renewals_total").await;
    eventually(Duration::from_secs(10), "a renewal", || async {
        (fe.metric("weft_identity_renewals_total").await > r0).then_some(())
    })
    .await;
    let r1 = fe.metric("weft_identity_renewals_total").await;
    let tls_addr = m.cp.addr("xds-tls").to_string();
    m.cp.signal("KILL");
    let _ = m.cp.wait_exit(Duration::from_secs(5));

    // The next renewal fails; the certificate in hand stays valid and in use.
    eventually(Duration::from_secs(10), "a failed renewal", || async {
        (m.frontend
            .metric("weft_identity_renewal_failures_total")
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    let dump = m.frontend.config_dump().await;
    assert_eq!(dump["identity"]["valid"], true, "{}", dump["identity"]);
    assert_eq!(m.frontend.get("probe", "/ready").await.0, 200);
    assert_eq!(Mesh::get_web(&m.frontend).await.status(), 200);

    // The CA returns (same key, same address): renewals resume.
    m.cp = start_cp(&m.dir, &m.registry, "8s", &tls_addr);
    let fe = &m.frontend;
    eventually(
        Duration::from_secs(10),
        "a renewal after the outage",
        || async { (fe.metric("weft_identity_renewals_total").await > r1).then_some(()) },
    )
    .await;
    assert_eq!(fe.config_dump().await["identity"]["valid"], true);
    assert_eq!(Mesh::get_web(fe).await.status(), 200);
}

/// What a connection receives until the proxy closes it (at most 5 s).
async fn until_closed(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    got
}

/// A service with one plain endpoint (an application outside the mesh, HTTP/1.1) and one meshed
/// one (web, behind its STRICT sidecar); round robin, one retry on 5xx, every request mirrored
/// to the meshed endpoint. Whichever endpoint a try goes to decides its protocol, TLS and the
/// identity expected: a retry or a mirror never reuses what the first try was prepared for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_is_secured_for_the_endpoint_it_goes_to() {
    use std::sync::atomic::Ordering::SeqCst;
    let m = Mesh::new(Options::default()).await;
    let plain = http_peer::server("plain").await;
    let web = m.pods[0].addr("inbound");
    m.registry.write(
        "mixed.yaml",
        &format!(
            "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: mixed, namespace: demo}}\nspec:\n  port: 8080\n  protocol: http\n  aliases: [mixed]\n  endpoints:\n    - {{address: {web}, identity: {}, labels: {{kind: meshed}}}}\n    - {{address: {}, labels: {{kind: plain}}}}\n---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: mixed, namespace: demo}}\nspec:\n  service: mixed.demo.svc.cluster.local:8080\n  subsets: [{{name: meshed, labels: {{kind: meshed}}}}]\n  loadBalancer: {{policy: round-robin}}\n  routes:\n    - name: all\n      mirror: {{subset: meshed}}\n      retry: {{attempts: 1, backoff: {{base: 1ms, max: 1ms}}, \"on\": [5xx]}}\n",
            id("demo", "web"),
            plain.addr
        ),
    );
    let get = || async {
        let rsp = http_peer::request_h1(
            m.frontend.addr("outbound"),
            Request::get("/echo").header("host", "mixed:8080"),
            String::new(),
        )
        .await
        .unwrap();
        let (parts, _) = rsp.into_parts();
        parts
    };
    eventually(Duration::from_secs(10), "the mixed service", || async {
        (get().await.status != 404).then_some(())
    })
    .await;
    // The series appears with the first copy sent.
    let mirrored = || async {
        m.frontend
            .try_metric(
                r#"weft_mirrored_requests_total{direction="outbound",result="sent",target="mixed.demo.svc.cluster.local:8080"}"#,
            )
            .await
            .unwrap_or(0.0)
    };
    let header = |p: &http::response::Parts, name: &str| {
        p.headers
            .get(name)
            .map_or(String::new(), |v| v.to_str().unwrap().to_string())
    };

    // The plain endpoint fails: every request that starts there is retried on the meshed one,
    // over mutual TLS with frontend's identity (web's sidecar refuses anything else).
    plain.state.fail_every.store(1, SeqCst);
    let (plain_before, mirrored_before) = (plain.state.requests.load(SeqCst), mirrored().await);
    for i in 0..4 {
        let p = get().await;
        assert_eq!(p.status, 200, "request {i}: {p:?}");
        assert_eq!(header(&p, "x-served-by"), "web", "request {i}");
        assert_eq!(
            header(&p, "x-seen-peer-identity"),
            id("demo", "frontend"),
            "request {i}"
        );
    }
    assert!(
        plain.state.requests.load(SeqCst) - plain_before >= 1,
        "some first tries went to the plain endpoint"
    );
    // Each copy reached the meshed endpoint over mutual TLS, whatever endpoint the request's
    // first try was prepared for (the mirror's result comes in the background).
    eventually(Duration::from_secs(10), "four mirrored copies", || async {
        (mirrored().await - mirrored_before >= 4.0).then_some(())
    })
    .await;

    // The meshed endpoint fails: requests that start there are retried on the plain one as
    // plain HTTP/1.1, with no header meant for a sidecar.
    plain.state.fail_every.store(0, SeqCst);
    m.web.state.fail_every.store(1, SeqCst);
    let retries = || {
        m.frontend.metric(
            r#"weft_retries_total{direction="outbound",reason="5xx",target="mixed.demo.svc.cluster.local:8080"}"#,
        )
    };
    let retried_before = retries().await;
    for i in 0..4 {
        let p = get().await;
        assert_eq!(p.status, 200, "request {i}: {p:?}");
        assert_eq!(header(&p, "x-served-by"), "plain", "request {i}");
        assert_eq!(header(&p, "x-seen-version"), "HTTP/1.1", "request {i}");
        let seen = header(&p, "x-seen-headers");
        assert!(!seen.contains("x-weft"), "request {i}: {seen}");
    }
    assert!(
        retries().await - retried_before >= 1.0,
        "some first tries went to the failing meshed endpoint and were retried"
    );
}

/// The names weft reserves (`x-weft-*`) never reach the application from a caller, in any
/// spelling a server could read as one (CGI, Rack and Puma map `_` to `-` and ignore case), in
/// headers or trailers; and `Connection` cannot remove the identity header the sidecar sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_headers_cannot_be_forged_or_removed_in_any_spelling() {
    let m = Mesh::new(Options {
        web_mode: "permissive",
        web_authz: false,
        ..Options::default()
    })
    .await;
    let inbound = m.pods[0].addr("inbound");
    let admin = id("demo", "admin");
    let spellings = [
        "x-weft-peer-identity",
        "x_weft_peer_identity",
        "x-weft-peer_identity",
        "x_weft-peer-identity",
        "X-Weft_Peer-IDENTITY",
        "x-weft-orig-proto",
        "x_weft_not_yet_invented",
    ];

    // PERMISSIVE plaintext: the caller is nobody, whatever it writes.
    for name in spellings {
        let rsp = http_peer::request_h1(
            inbound,
            Request::get("/echo")
                .header("host", "web:8080")
                .header(name, admin.as_str()),
            String::new(),
        )
        .await
        .unwrap();
        assert_eq!(rsp.status(), 200, "{name}");
        let seen = rsp.headers()["x-seen-headers"].to_str().unwrap();
        assert!(!seen.contains("weft"), "{name} reached the app: {seen}");
    }

    // Mutual TLS, as a sidecar speaking HTTP/1.1 with frontend's certificate: every spelling
    // forged, and `Connection` naming the header the sidecar sets.
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let cert = leaf(
        &m.dir,
        "caller",
        &mesh_ca(&m.dir),
        &id("demo", "frontend"),
        later,
    );
    let mut request = String::from(
        "GET /echo HTTP/1.1\r\nHost: web:8080\r\nConnection: close, x-weft-peer-identity\r\n",
    );
    for name in spellings {
        request += &format!("{name}: {admin}\r\n");
    }
    request += "\r\n";
    let out = s_client(inbound, &m.bundle, Some(&cert), "http/1.1,weft/1", &request).await;
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("http/1.1 200"), "{out}");
    assert!(
        lower.contains(&format!("x-seen-peer-identity: {}", id("demo", "frontend"))),
        "the identity the sidecar set was removed:\n{out}"
    );
    assert!(
        !lower.contains("sa/admin"),
        "a forged identity got through:\n{out}"
    );
    let seen = lower
        .lines()
        .find_map(|l| l.strip_prefix("x-seen-headers: "))
        .unwrap_or_default();
    assert_eq!(
        seen.matches("weft").count(),
        1,
        "only the sidecar's own: {seen}"
    );

    // Trailers: the application lists the trailer names it received.
    let trailers = "POST /seen-trailers HTTP/1.1\r\nHost: web:8080\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nTrailer: x_weft_peer_identity, x-weft-peer-identity, x-kept-trailer\r\n\r\n4\r\nbody\r\n0\r\nx_weft_peer_identity: forged\r\nx-weft-peer-identity: forged\r\nx-kept-trailer: yes\r\n\r\n";
    for (what, cert) in [("mTLS", Some(&cert)), ("plaintext", None)] {
        let out = match cert {
            Some(c) => s_client(inbound, &m.bundle, Some(c), "http/1.1,weft/1", trailers).await,
            None => raw_http(inbound, trailers).await,
        };
        let seen = out
            .to_ascii_lowercase()
            .lines()
            .find_map(|l| l.strip_prefix("x-seen-trailers: ").map(String::from));
        assert_eq!(seen.as_deref(), Some("x-kept-trailer"), "{what}:\n{out}");
    }
}

/// Sends `request` on a plain TCP connection to `addr`; returns everything that comes back
/// until the server closes.
async fn raw_http(addr: SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    String::from_utf8_lossy(&until_closed(&mut s).await).into_owned()
}
