//! Endpoints configured by host name, resolved by a real DNS server (dnsmasq) that the test
//! changes under the proxy: the proxy follows the answers as their TTL runs out, drops a name
//! the DNS says is gone, and keeps the last addresses while the DNS is down.

use std::{net::SocketAddr, time::Duration};

use http::Request;
use weft_tests::{chain::TempDir, dnsmasq::Dnsmasq, eventually, http_peer, proxy::Proxy};

/// One request to `backend.test` through the proxy: status and body.
async fn call(proxy: &Proxy) -> (u16, String) {
    http_peer::exchange(
        proxy.addr("outbound"),
        Request::get("/id").header("host", "backend.test"),
        String::new(),
    )
    .await
}

async fn name_status(proxy: &Proxy) -> serde_json::Value {
    let dump: serde_json::Value =
        serde_json::from_str(&proxy.get("admin", "/config_dump").await.1).unwrap();
    dump["endpoint_dns"]["names"]["backend.weft.test"].clone()
}

#[tokio::test]
async fn a_host_name_endpoint_follows_its_dns_answers() {
    let Some(mut dns) = Dnsmasq::start("weft.test", "127.0.0.1 backend.weft.test\n") else {
        return;
    };
    // The same port on two loopback addresses: which one the name resolves to decides who
    // answers. (An IPv4 and an IPv6 loopback address: both are this host's own.)
    let a = http_peer::server("v4").await;
    let port = a.addr.port();
    let _b =
        http_peer::server_on("v6", SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], port))).await;

    let dir = TempDir::new("endpoint-dns");
    let cfg = dir.write(
        "mesh.yaml",
        &format!(
            "services:\n  - name: backend.test\n    port: 80\n    endpoints:\n      - address: backend.weft.test:{port}\n"
        ),
    );
    let proxy = Proxy::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--dns-upstream",
        &dns.addr.to_string(),
        "--endpoint-dns-min-ttl",
        "1s",
        "--endpoint-dns-max-ttl",
        "2s",
        "--endpoint-dns-timeout",
        "1s",
    ]);
    // Resolved before the proxy said it was ready: the first request already has an endpoint.
    assert_eq!(call(&proxy).await, (200, "v4".to_string()));
    assert_eq!(
        name_status(&proxy).await["addresses"],
        serde_json::json!(["127.0.0.1"])
    );

    // The record changes: once its 1 s TTL has run out the proxy asks again and sends there.
    dns.set_hosts("::1 backend.weft.test\n");
    eventually(
        Duration::from_secs(15),
        "requests to go to the new address",
        || async { (call(&proxy).await == (200, "v6".to_string())).then_some(()) },
    )
    .await;
    for _ in 0..20 {
        assert_eq!(call(&proxy).await, (200, "v6".to_string()));
    }

    // The name is gone (NXDOMAIN): it has no endpoints any more.
    dns.set_hosts("");
    let (status, body) = eventually(
        Duration::from_secs(15),
        "the endpoint to go away",
        || async {
            let r = call(&proxy).await;
            (r.0 != 200).then_some(r)
        },
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        name_status(&proxy).await["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("backend.weft.test")),
        "{}",
        name_status(&proxy).await
    );

    // Back again; then the DNS server goes away: the last addresses stay in use.
    dns.set_hosts("127.0.0.1 backend.weft.test\n");
    eventually(
        Duration::from_secs(15),
        "the name to resolve again",
        || async { (call(&proxy).await == (200, "v4".to_string())).then_some(()) },
    )
    .await;
    dns.stop();
    let failed = eventually(Duration::from_secs(15), "a failed lookup", || async {
        let s = name_status(&proxy).await;
        (s["consecutive_failures"].as_u64() >= Some(1)).then_some(s)
    })
    .await;
    assert_eq!(
        failed["addresses"],
        serde_json::json!(["127.0.0.1"]),
        "{failed}"
    );
    for _ in 0..20 {
        assert_eq!(call(&proxy).await, (200, "v4".to_string()));
    }

    let metrics = proxy.metrics().await;
    for result in ["ok", "no_records", "error"] {
        let n = proxy
            .metric(&format!(
                "weft_endpoint_dns_resolutions_total{{result=\"{result}\"}}"
            ))
            .await;
        assert!(n >= 1.0, "{result}: {n}\n{metrics}");
    }
    weft_tests::tools::assert_promtool_clean(&metrics);
}
