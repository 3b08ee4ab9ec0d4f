//! Real external clients: curl, h2load, promtool.

use weft_tests::{chain::Chain, grpc, http_peer, tools};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http2_prior_knowledge_and_expect_continue() {
    let Some(curl) = tools::require("curl") else {
        return;
    };
    let peer = http_peer::server("s1").await;
    let chain = Chain::start(peer.addr);
    let url = format!("http://{}/echo", chain.outbound());
    let out = tokio::process::Command::new(&curl)
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-H",
            "Host: echo.test:8080",
            "-D",
            "-",
            "--data-binary",
            "hello-h2",
            &url,
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(text.contains("x-seen-version: HTTP/2.0"), "{text}");
    assert!(text.ends_with("hello-h2"), "{text}");

    // Expect: 100-continue: curl waits for the interim response before sending the body.
    let body = "x".repeat(100_000);
    let out = tokio::process::Command::new(&curl)
        .args([
            "-sS",
            "-v",
            "--http1.1",
            "-H",
            "Host: echo.test:8080",
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "10",
            "--data-binary",
            &body,
            &url,
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("HTTP/1.1 100 Continue"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_through_the_chain() {
    let Some(h2load) = tools::require("h2load") else {
        return;
    };
    let peer = http_peer::server("s1").await;
    let chain = Chain::start(peer.addr);
    let url = format!("http://{}/id", chain.outbound());
    let out = tokio::process::Command::new(h2load)
        .args([
            "-n",
            "5000",
            "-c",
            "4",
            "-m",
            "16",
            "-H",
            ":authority: echo.test:8080",
            &url,
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(
            "requests: 5000 total, 5000 started, 5000 done, 5000 succeeded, 0 failed, 0 errored"
        ),
        "{text}"
    );
    assert!(text.contains("status codes: 5000 2xx"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics() {
    if tools::require("promtool").is_none() {
        return;
    }
    let (server, _) = grpc::server().await;
    let chain = Chain::start(server);
    let mut c = grpc::client(chain.outbound(), chain::HTTP_SERVICE).await;
    c.unary(grpc::Msg::default()).await.unwrap();
    let _ = c
        .unary(grpc::Msg {
            text: "fail".into(),
            ..Default::default()
        })
        .await;
    for proxy in [&chain.a, &chain.b] {
        let metrics = proxy.metrics().await;
        for family in [
            "weft_request_total",
            "weft_response_total",
            "weft_response_latency_seconds",
            "weft_tcp_open_connections",
            "weft_tcp_read_bytes_total",
            "weft_table_generation",
            "weft_table_reloads_total",
        ] {
            assert!(
                metrics.contains(&format!("# TYPE {family} ")),
                "{family} missing:\n{metrics}"
            );
        }
        tools::assert_promtool_clean(&metrics);
    }
}

use weft_tests::chain;

/// Every family the proxy exports, each given a sample, passes promtool's lint (a family with
/// no series is not exported, so the chain above only checks those its traffic fills), and
/// `docs/metrics.md` lists exactly these families.
#[test]
fn every_proxy_metric_family_passes_promtool_and_is_documented() {
    use std::sync::Arc;
    use weft_proxy::{
        metrics::{AuthzProtocol, Direction, Metrics},
        resilience::Limit,
        retry::Reason,
    };
    let m = Metrics::new();
    let t = m.target(Direction::Outbound, &Arc::from("echo.test:8080"));
    t.request();
    t.latency(0.003);
    t.response(200, None);
    t.response(200, Some(14));
    t.retry(Reason::Http5xx);
    t.budget_exhausted();
    t.attempts(2);
    t.overflow(Limit::Pending);
    t.pending_timeout();
    t.ejection();
    t.rate_limited();
    t.fault(true);
    t.mirrored(true);
    let c = m.conns(Direction::Inbound);
    c.accepted.inc();
    c.open.inc();
    c.read_bytes.inc_by(10);
    c.write_bytes.inc_by(20);
    c.detected("http2");
    m.connect_error(Direction::Outbound, "timeout");
    m.table_loaded("v2", 2, 3);
    m.table_reload_failed();
    m.xds_connected.set(1);
    m.xds_update("cluster", true);
    m.endpoint_dns("ok");
    m.tls.handshake(Direction::Inbound, "ok");
    m.tls.refused.with_label_values(&["plaintext"]).inc();
    m.tls.authz(AuthzProtocol::Http, true);
    m.tls
        .peer_requests(Some("spiffe://cluster.local/ns/demo/sa/web"))
        .inc();
    m.tls.identity(Some(std::time::SystemTime::now()), 1, 1);
    let text = m.render();

    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let documented: std::collections::BTreeSet<&str> = include_str!("../../docs/metrics.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|f| f.starts_with("weft_") && !f.starts_with("weft_cp_"))
        .collect();
    let registered: std::collections::BTreeSet<&str> =
        m.families().iter().map(String::as_str).collect();
    assert_eq!(
        exported, registered,
        "every registered family given a sample"
    );
    assert_eq!(exported, documented, "exported families against metrics.md");
    tools::assert_promtool_clean(&text);
}
