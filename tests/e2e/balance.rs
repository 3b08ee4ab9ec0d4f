//! Load balancing through the real proxy: P2C over peak-EWMA latency against round robin with
//! one endpoint forty times slower, consistent hashing on a header, and a sticky canary split.

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use http::Request;
use weft_tests::{
    chain::TempDir,
    http_peer::{self, Peer},
    proxy::Proxy,
};

/// `workers` keep-alive connections each sending `per_worker` requests for `host` one after
/// another; every request's latency.
async fn load(proxy: &Proxy, host: &str, workers: usize, per_worker: usize) -> Vec<Duration> {
    http_peer::keepalive_load(
        proxy.addr("outbound"),
        host,
        "/id",
        &[],
        workers,
        per_worker,
    )
    .await
    .into_iter()
    .map(|(status, _, latency)| {
        assert_eq!(status, 200);
        latency
    })
    .collect()
}

fn percentile(lat: &mut [Duration], p: f64) -> Duration {
    lat.sort_unstable();
    lat[((lat.len() as f64 * p).ceil() as usize).saturating_sub(1)]
}

fn served(p: &Peer) -> usize {
    p.state.requests.load(Ordering::SeqCst)
}

/// The peer name a request answered by `/id` came from.
async fn whoami(proxy: &Proxy, host: &str, header: (&str, &str)) -> String {
    let (status, body) = http_peer::exchange(
        proxy.addr("outbound"),
        Request::get("/id")
            .header("host", host)
            .header(header.0, header.1),
        String::new(),
    )
    .await;
    assert_eq!(status, 200);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_keeps_the_tail_off_a_slow_endpoint_that_round_robin_hits() {
    // The slow endpoint is forty times slower, so that scheduling noise on a busy machine (a
    // fast response delayed by tens of milliseconds) neither makes the slow endpoint look
    // cheaper nor blurs the difference in the tails.
    let fast = http_peer::server("fast").await;
    let slow = http_peer::server("slow").await;
    fast.state.delay_ms.store(5, Ordering::SeqCst);
    slow.state.delay_ms.store(200, Ordering::SeqCst);
    let eps = format!(
        "[{{address: '{}'}}, {{address: '{}'}}]",
        fast.addr, slow.addr
    );
    let dir = TempDir::new("balance");
    let cfg = dir.write(
        "mesh.yaml",
        &format!(
            "services:
  - {{name: p2c.test, port: 80, endpoints: {eps}}}
  - {{name: rr.test, port: 80, loadBalancer: {{policy: round-robin}}, endpoints: {eps}}}
"
        ),
    );
    // A 1 s time constant lets the estimates settle within the test (the default is 10 s).
    // With it the slow endpoint's estimate decays below the fast one's, and the slow endpoint
    // is probed again, about every ln(200/5) = 3.7 s.
    let proxy = Proxy::start(&["--config", cfg.to_str().unwrap(), "--lb-ewma-decay", "1s"]);

    let mut report = Vec::new();
    // Round robin needs no warm-up and few requests to show its tail; P2C is warmed up for
    // three time constants: both estimates start at 30 ms and learn from traffic. Two
    // clients: the load counts requests in flight, and a server is assumed to slow down with
    // each one.
    for (host, warm_up, per_worker) in [
        ("p2c.test:80", Duration::from_secs(3), 200),
        ("rr.test:80", Duration::ZERO, 20),
    ] {
        let warm = Instant::now();
        while warm.elapsed() < warm_up {
            load(&proxy, host, 2, 10).await;
        }
        let (f0, s0) = (served(&fast), served(&slow));
        let mut lat = load(&proxy, host, 2, per_worker).await;
        let (f, s) = (served(&fast) - f0, served(&slow) - s0);
        let p50 = percentile(&mut lat, 0.50);
        let p99 = percentile(&mut lat, 0.99);
        println!(
            "{host}: p50 {p50:?} p99 {p99:?}; fast served {f}, slow served {s} ({:.1} %)",
            100.0 * s as f64 / (f + s) as f64
        );
        report.push((p99, s as f64 / (f + s) as f64));
    }
    let ((p2c_p99, p2c_slow), (rr_p99, rr_slow)) = (report[0], report[1]);
    assert!(
        (0.45..=0.55).contains(&rr_slow),
        "round robin sends half to each: {rr_slow}"
    );
    assert!(
        p2c_slow < 0.02,
        "P2C keeps off the slow endpoint: {p2c_slow}"
    );
    assert!(
        rr_p99 >= Duration::from_millis(200) && p2c_p99 * 2 < rr_p99,
        "P2C's p99 {p2c_p99:?} is not clearly below round robin's {rr_p99:?}"
    );
}

#[tokio::test]
async fn ring_hash_keeps_a_user_on_one_endpoint_and_a_sticky_split_on_one_subset() {
    let peers = [
        http_peer::server("a").await,
        http_peer::server("b").await,
        http_peer::server("c").await,
    ];
    let dir = TempDir::new("ring-hash");
    let cfg = dir.write(
        "mesh.yaml",
        &format!(
            "services:
  - name: sticky.test
    port: 80
    loadBalancer: {{policy: ring-hash, hash: {{header: x-user}}}}
    endpoints: [{{address: '{a}'}}, {{address: '{b}'}}, {{address: '{c}'}}]
  - name: canary.test
    port: 80
    loadBalancer: {{hash: {{cookie: user}}}}
    endpoints:
      - {{address: '{a}', labels: {{version: v1}}}}
      - {{address: '{c}', labels: {{version: v2}}}}
    subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
    routes: [{{backends: [{{subset: v1, weight: 50}}, {{subset: v2, weight: 50}}]}}]
",
            a = peers[0].addr,
            b = peers[1].addr,
            c = peers[2].addr
        ),
    );
    let proxy = Proxy::start(&["--config", cfg.to_str().unwrap()]);

    let mut owners: HashMap<String, usize> = HashMap::new();
    for user in 0..60 {
        let id = format!("user-{user}");
        let mut seen = HashSet::new();
        for _ in 0..8 {
            seen.insert(whoami(&proxy, "sticky.test", ("x-user", &id)).await);
        }
        assert_eq!(seen.len(), 1, "{id} was served by {seen:?}");
        *owners.entry(seen.into_iter().next().unwrap()).or_default() += 1;
    }
    assert_eq!(
        owners.len(),
        3,
        "users spread over every endpoint: {owners:?}"
    );

    let mut v2 = 0;
    for user in 0..100 {
        let cookie = format!("theme=dark; user=u{user}");
        let mut seen = HashSet::new();
        for _ in 0..5 {
            seen.insert(whoami(&proxy, "canary.test", ("cookie", &cookie)).await);
        }
        assert_eq!(seen.len(), 1, "u{user} saw {seen:?}");
        v2 += usize::from(seen.contains("c"));
    }
    assert!(
        (30..=70).contains(&v2),
        "{v2} of 100 users on v2 (50 % split)"
    );
}
