//! The local demo (the README's main command runs its release build) runs to the end: it
//! asserts as it goes, so a zero exit means every step did what it printed.

use weft_tests::proxy::binary_named;

#[test]
fn the_demo_runs_with_mutual_tls_and_shows_the_identities() {
    let out = std::process::Command::new(binary_named("weft-demo"))
        .output()
        .expect("run weft-demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "A       spiffe://cluster.local/ns/demo/sa/frontend",
        "echo    spiffe://cluster.local/ns/demo/sa/echo",
        "the web app sees its caller (x-weft-peer-identity): spiffe://cluster.local/ns/demo/sa/frontend",
        "plaintext straight to web-v1's sidecar: refused",
        "HTTP/2, 400 requests: web-v2: 400  (v2 100.0%)",
        "budget 50 % + 10/s), 300 requests: web-v2: 300  (0 failed)",
        "weft_retries_total{direction=\"outbound\",reason=\"5xx\"",
        "trace 4bf92f3577b34da6a3ce929d0e0e4736, route demo/web/canary-by-header backend web-v2.demo.svc.cluster.local:8080",
        "inbound  GET /echo -> 200",
        "caller spiffe://cluster.local/ns/demo/sa/frontend",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    // With Prometheus there, each canary backend's live figures.
    if weft_tests::tools::require("prometheus").is_some() {
        let v2 = text
            .lines()
            .find(|l| {
                l.contains(" demo/web/split ") && l.contains("web-v2.demo.svc.cluster.local:8080")
            })
            .unwrap_or_else(|| panic!("no weftctl stat row for v2 in:\n{text}"));
        assert!(v2.contains("100.00%"), "{v2}");
    }
}
