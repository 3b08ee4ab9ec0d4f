//! A standard xDS client on weft's control plane: gRPC's own proxyless client (Python
//! `grpcio`, target `xds:///<service>`, `GRPC_XDS_BOOTSTRAP`) resolves a service and follows a
//! weighted canary split, with no weft code on the client side.

use std::{path::PathBuf, process::Command, sync::atomic::Ordering};

use weft_tests::{
    chain::TempDir,
    grpc,
    mesh::{self, weftctl},
    proxy::Proxy,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_proxyless_client_follows_the_weighted_split() {
    let Some(py) = weft_tests::tools::venv_python("grpc, grpc_tools") else {
        return;
    };
    let (a1, s1) = grpc::server().await;
    let (a2, s2) = grpc::server().await;
    let dir = TempDir::new("interop");
    dir.write(
        "echo.yaml",
        &mesh::service("echo", 9090, "http2", &[(a1, "v1"), (a2, "v2")]),
    );
    dir.write(
        "echo-policy.yaml",
        &mesh::split_policy("echo", 9090, (75, 25)),
    );
    let cp = mesh::control_plane(&dir, &[]);
    let calls = 2000;
    proxyless_calls(&dir, &cp, py, calls).await;

    // Straight to the endpoints (proxyless), split by the policy's weights.
    split_25(&s1, &s2, calls);

    // The client acknowledged every type, as weft's own proxies do.
    let (_, status, _) = weftctl(&cp, &["proxy-status"]);
    let row = status
        .lines()
        .find(|l| l.starts_with("grpcio-client"))
        .unwrap_or_else(|| panic!("{status}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[2], "sotw", "{status}");
    assert!(
        cols[3..7].iter().all(|v| *v != "-"),
        "every type acked: {status}"
    );
    assert!(row.ends_with('-'), "no NACK: {status}");
}

/// Runs gRPC's proxyless client (`py`) on the control plane `cp` for `calls` unary calls to
/// `echo`; every call must succeed.
async fn proxyless_calls(dir: &TempDir, cp: &Proxy, py: PathBuf, calls: usize) {
    let bootstrap = dir.write(
        "bootstrap.json.txt",
        &serde_json::json!({
            "xds_servers": [{
                "server_uri": cp.addr("xds").to_string(),
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {"id": "grpcio-client", "locality": {}},
        })
        .to_string(),
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/grpc_xds_client.py");
    let proto = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .env("GRPC_XDS_BOOTSTRAP", bootstrap)
            .args([
                script.to_str().unwrap(),
                "echo.demo.svc.cluster.local:9090",
                &calls.to_string(),
                proto.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the grpcio client failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.trim(), format!("ok {calls}"));
}

/// The same client following a Gateway API GRPCRoute: a rule for the method it calls,
/// splitting 75/25 between the Services `echo-v1` and `echo-v2` (standard xDS: an exact `path`
/// match, weighted clusters of other Services).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_proxyless_client_follows_a_grpc_route_split() {
    let Some(py) = weft_tests::tools::venv_python("grpc, grpc_tools") else {
        return;
    };
    let (a1, s1) = grpc::server().await;
    let (a2, s2) = grpc::server().await;
    let dir = TempDir::new("interop-grpcroute");
    mesh::write_versions(&dir, "echo", 9090, "http2", (a1, a2));
    dir.write(
        "route.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: echo, namespace: demo}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 9090}]\n  rules:\n    - matches: [{method: {service: weft.test.Echo, method: Unary}}]\n      backendRefs:\n        - {name: echo-v1, port: 9090, weight: 75}\n        - {name: echo-v2, port: 9090, weight: 25}\n",
    );
    let cp = mesh::control_plane(&dir, &[]);
    let calls = 2000;
    proxyless_calls(&dir, &cp, py, calls).await;
    split_25(&s1, &s2, calls);
}

/// Every one of `calls` reached v1 (`s1`) or v2 (`s2`), and v2 about a quarter of them.
fn split_25(s1: &grpc::ServerState, s2: &grpc::ServerState, calls: usize) {
    let (n1, n2) = (
        s1.started.load(Ordering::SeqCst),
        s2.started.load(Ordering::SeqCst),
    );
    assert_eq!(n1 + n2, calls, "every call reached one of the two servers");
    let v2 = n2 as f64 * 100.0 / calls as f64;
    eprintln!("grpcio: {n1} calls to v1, {n2} to v2 ({v2:.1}%, configured 25%)");
    assert!((v2 - 25.0).abs() <= 4.0, "v2 got {v2:.1}%");
}
