//! A local mesh on the control plane: `weft-control-plane` on a file registry, the YAML of
//! registrations and policies, and `weftctl`.

use std::{net::SocketAddr, process::Command};

use crate::{
    chain::TempDir,
    proxy::{Proxy, args_over_defaults, binary_named},
};

/// Starts the control plane on the registry in `dir`: every listener on `127.0.0.1:0`, the
/// directory polled every 20 ms, pushes 10 ms after a change, unless `extra` (flag, value
/// pairs) says otherwise.
pub fn control_plane(dir: &TempDir, extra: &[&str]) -> Proxy {
    let mut cmd = Command::new(binary_named("weft-control-plane"));
    cmd.args(["--registry-dir", dir.0.to_str().unwrap()]);
    let defaults = [
        ("--registry-poll-interval", "20ms"),
        ("--push-debounce", "10ms"),
        ("--xds-addr", "127.0.0.1:0"),
        ("--metrics-addr", "127.0.0.1:0"),
        ("--api-addr", "127.0.0.1:0"),
        ("--tls-addr", "127.0.0.1:0"),
        ("--log-format", "json"),
    ];
    args_over_defaults(&mut cmd, &defaults, extra);
    Proxy::spawn_until(cmd, "weft-control-plane ready").unwrap_or_else(|(s, logs)| {
        panic!("control plane did not start ({s:?}):\n{}", logs.join("\n"))
    })
}

/// A `Service` registration in namespace `demo`: `(address, version label)` per endpoint.
pub fn service(name: &str, port: u16, protocol: &str, endpoints: &[(SocketAddr, &str)]) -> String {
    let with_ids: Vec<_> = endpoints.iter().map(|(a, v)| (*a, *v, None)).collect();
    meshed_service(name, port, protocol, &with_ids)
}

/// A `Service` registration in namespace `demo`: `(address, version label, identity)` per
/// endpoint; an endpoint with an identity is reached over mutual TLS.
pub fn meshed_service(
    name: &str,
    port: u16,
    protocol: &str,
    endpoints: &[(SocketAddr, &str, Option<&str>)],
) -> String {
    let mut s = format!(
        "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  port: {port}\n  protocol: {protocol}\n  aliases: [{name}]\n  endpoints:\n"
    );
    for (addr, version, identity) in endpoints {
        let id = identity
            .map(|i| format!(", identity: {i}"))
            .unwrap_or_default();
        s += &format!("    - {{address: {addr}, labels: {{version: {version}}}{id}}}\n");
    }
    s
}

/// Writes into `dir` the Service `name` on both versions' endpoints and one Service per
/// version, `<name>-v1` and `<name>-v2` (the Gateway API's canary backends), all on `port`.
pub fn write_versions(
    dir: &crate::chain::TempDir,
    name: &str,
    port: u16,
    protocol: &str,
    (v1, v2): (SocketAddr, SocketAddr),
) {
    let (v1, v2) = ((v1, "v1"), (v2, "v2"));
    dir.write(
        &format!("{name}.yaml"),
        &service(name, port, protocol, &[v1, v2]),
    );
    for (v, e) in [("v1", v1), ("v2", v2)] {
        let versioned = format!("{name}-{v}");
        dir.write(
            &format!("{versioned}.yaml"),
            &service(&versioned, port, protocol, &[e]),
        );
    }
}

/// A `TrafficPolicy` for `name` in `demo` with subsets v1 and v2 (by the `version` label) and
/// one route splitting between them by `weights` (v1, v2).
pub fn split_policy(name: &str, port: u16, weights: (u32, u32)) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  service: {name}.demo.svc.cluster.local:{port}\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n  routes:\n    - name: split\n      backends: [{{subset: v1, weight: {}}}, {{subset: v2, weight: {}}}]\n",
        weights.0, weights.1
    )
}

/// Runs `weftctl` against the control plane's API; returns exit code, stdout and stderr.
pub fn weftctl(cp: &Proxy, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(binary_named("weftctl"))
        .arg("--control-plane")
        .arg(cp.addr("api").to_string())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}
