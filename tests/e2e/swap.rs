//! Routing-table hot swap under continuous load: nothing in flight is dropped.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::Request;
use http_body_util::BodyExt;
use weft_tests::{chain::TempDir, eventually, http_peer, proxy::Proxy};

fn table(version: usize, backends: &[(std::net::SocketAddr, u32)]) -> String {
    let mut s = format!(
        "version: v{version}\nservices:\n  - name: echo.test\n    port: 8080\n    endpoints:\n"
    );
    for (addr, w) in backends {
        s += &format!("      - address: {addr}\n        weight: {w}\n");
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_swaps_under_load_drop_nothing() {
    let peers = [
        http_peer::server("p0").await,
        http_peer::server("p1").await,
        http_peer::server("p2").await,
    ];
    let addrs: Vec<_> = peers.iter().map(|p| p.addr).collect();
    let dir = TempDir::new("swap");
    let cfg = dir.write("mesh.yaml", &table(0, &[(addrs[0], 1)]));
    let proxy = Proxy::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--config-poll-interval",
        "0",
    ]);
    let outbound = proxy.addr("outbound");

    // Load: 6 clients (3 HTTP/1.1 keep-alive, 3 HTTP/2) in a loop until told to stop, at most
    // 100,000 requests in all. Two of them ask for answers 100 ms late, so that requests are
    // in flight across many swaps (an endpoint they are on may leave the table meanwhile).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let slow_ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..6 {
        let (stop, ok, failed, slow_ok) =
            (stop.clone(), ok.clone(), failed.clone(), slow_ok.clone());
        clients.push(tokio::spawn(async move {
            let mut served: HashMap<String, usize> = HashMap::new();
            let h2 = c % 2 == 1;
            let path = if c >= 4 { "/delay?ms=100" } else { "/id" };
            let mut h2tx = if h2 {
                Some(http_peer::h2_client(outbound).await)
            } else {
                None
            };
            let tcp = tokio::net::TcpStream::connect(outbound).await.unwrap();
            let (mut h1tx, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            while !stop.load(Ordering::Relaxed)
                && ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < 100_000
            {
                let res = if let Some(tx) = h2tx.as_mut() {
                    let req = Request::get(format!("http://echo.test:8080{path}"))
                        .body(http_peer::body(""))
                        .unwrap();
                    match tx.send_request(req).await {
                        Ok(r) if r.status() == 200 => {
                            r.into_body().collect().await.ok().map(|b| b.to_bytes())
                        }
                        _ => None,
                    }
                } else {
                    let req = Request::get(path)
                        .header("host", "echo.test:8080")
                        .body(String::new())
                        .unwrap();
                    let _ = h1tx.ready().await;
                    match h1tx.send_request(req).await {
                        Ok(r) if r.status() == 200 => {
                            r.into_body().collect().await.ok().map(|b| b.to_bytes())
                        }
                        _ => None,
                    }
                };
                match res {
                    Some(b) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if c >= 4 {
                            slow_ok.fetch_add(1, Ordering::Relaxed);
                        }
                        *served
                            .entry(String::from_utf8_lossy(&b).into_owned())
                            .or_default() += 1;
                    }
                    None => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            served
        }));
    }

    // 200 swaps: weights change, endpoints come and go; each is confirmed before the next.
    for v in 1..=200usize {
        let set: Vec<_> = match v % 4 {
            0 => vec![(addrs[0], 1), (addrs[1], 1), (addrs[2], 1)],
            1 => vec![(addrs[1], 5), (addrs[2], 1)],
            2 => vec![(addrs[2], 1)],
            _ => vec![(addrs[0], 3), (addrs[2], 0), (addrs[1], 1)],
        };
        dir.write("mesh.yaml", &table(v, &set));
        proxy.signal("HUP");
        let want = format!("v{v}");
        eventually(
            Duration::from_secs(10),
            &format!("table {want}"),
            || async { (proxy.config_dump().await["version"] == want.as_str()).then_some(()) },
        )
        .await;
    }
    // Let the last table serve a little, then stop the load.
    let before = ok.load(Ordering::Relaxed);
    eventually(
        Duration::from_secs(10),
        "requests on the last table",
        || async { (ok.load(Ordering::Relaxed) > before + 100).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut served: HashMap<String, usize> = HashMap::new();
    for c in clients {
        for (k, v) in c.await.unwrap() {
            *served.entry(k).or_default() += v;
        }
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} requests ok, {failed} failed, served by {served:?}");
    assert_eq!(failed, 0, "requests failed during swaps");
    assert!(ok > 1000, "too little load to prove anything: {ok}");
    let slow_ok = slow_ok.load(Ordering::Relaxed);
    assert!(slow_ok >= 4, "too few slow requests: {slow_ok}");
    assert_eq!(
        served.len(),
        3,
        "every backend took traffic at some point: {served:?}"
    );
    assert_eq!(proxy.metric("weft_table_generation").await, 201.0);
    assert_eq!(
        proxy
            .metric(r#"weft_table_reloads_total{result="ok"}"#)
            .await,
        200.0
    );
}
