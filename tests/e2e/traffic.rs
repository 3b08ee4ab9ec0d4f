//! Traffic management through the real proxy, against backends the tests make misbehave:
//! retries absorbing connect failures, the retry budget bounding a fully failing backend,
//! outlier detection ejecting and returning an endpoint, a 90/10 canary split and a header
//! match, mirroring, fault injection, rate limits, and deadlines.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use http::Request;
use weft_tests::{
    chain::TempDir,
    http_peer::{self, Peer},
    proxy::Proxy,
};

/// `workers` keep-alive HTTP/1.1 connections sending `per_worker` requests each to `path` on
/// `host`, with `headers`; each response's status and body.
async fn run(
    proxy: &Proxy,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    workers: usize,
    per_worker: usize,
) -> Vec<(u16, String)> {
    http_peer::keepalive_load(
        proxy.addr("outbound"),
        host,
        path,
        headers,
        workers,
        per_worker,
    )
    .await
    .into_iter()
    .map(|(status, body, _)| (status, body))
    .collect()
}

/// The sum of every sample of `name` whose labels contain all of `labels` (`key="value"`).
/// The sum of the samples of `name` whose labels include all of `labels`; fails the test
/// when there is none.
async fn metric(proxy: &Proxy, name: &str, labels: &[&str]) -> f64 {
    try_metric(proxy, name, labels).await.unwrap_or_else(|| {
        panic!(
            "no series `{name}` with {labels:?} in the metrics of pid {}",
            proxy.pid()
        )
    })
}

/// As `metric`, `None` while no such series exists (a labelled counter appears with its
/// first event).
async fn try_metric(proxy: &Proxy, name: &str, labels: &[&str]) -> Option<f64> {
    let text = proxy.metrics().await;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

fn served(p: &Peer) -> usize {
    p.state.requests.load(Ordering::SeqCst)
}

/// Waits until `p` has been sent a request beyond the `seen` it had.
async fn arrived(p: &Peer, seen: usize) {
    weft_tests::eventually(
        Duration::from_secs(5),
        "the first request to arrive",
        || async { (served(p) > seen).then_some(()) },
    )
    .await;
}

/// A port nothing listens on: connections to it are refused. The socket stays bound (and
/// never listens) while the returned guard lives, so no other test's server can take the port.
fn dead_port() -> (std::net::SocketAddr, tokio::net::TcpSocket) {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    (s.local_addr().unwrap(), s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_absorb_connect_failures_and_the_budget_bounds_a_failing_backend() {
    let peers = [
        http_peer::server("a").await,
        http_peer::server("b").await,
        http_peer::server("c").await,
        http_peer::server("d").await,
    ];
    let (dead, _dead_guard) = dead_port();
    let failing = http_peer::server("failing").await;
    failing.state.status.store(503, Ordering::SeqCst);
    let dir = TempDir::new("retries");
    let cfg = dir.write(
        "mesh.yaml",
        &format!(
            "services:
  - name: flaky.test
    port: 80
    loadBalancer: {{policy: round-robin}}
    retry: {{on: [connect-failure], attempts: 2, budget: {{ratio: 0.5}}}}
    endpoints: [{{address: '{dead}'}}, {{address: '{}'}}, {{address: '{}'}}, {{address: '{}'}}, {{address: '{}'}}]
  - name: down.test
    port: 80
    retry: {{on: [5xx], attempts: 3, backoff: {{base: 1ms, max: 2ms}}, budget: {{ratio: 0.2, minPerSecond: 10}}}}
    endpoints: [{{address: '{}'}}]
",
            peers[0].addr, peers[1].addr, peers[2].addr, peers[3].addr, failing.addr
        ),
    );
    let proxy = Proxy::start(&["--config", cfg.to_str().unwrap()]);

    // One endpoint in five refuses connections: 20 % of first tries fail. (The default
    // budget, 20 % + 10/s, is just what this needs on average and runs short in bursts:
    // about 1.5 % of requests then fail. This service gives retries 50 %.)
    let results = run(&proxy, "flaky.test", "/id", &[], 4, 250).await;
    let failed = results.iter().filter(|(s, _)| *s != 200).count();
    let retries = metric(
        &proxy,
        "weft_retries_total",
        &["target=\"flaky.test:80\"", "reason=\"connect-failure\""],
    )
    .await;
    println!(
        "connect failures: {failed} of {} failed for the client; {retries} retries",
        results.len()
    );
    assert_eq!(failed, 0, "retries absorb every connect failure");
    assert!(
        (150.0..=250.0).contains(&retries),
        "about a fifth of 1000 requests retried: {retries}"
    );
    let attempts = metric(&proxy, "weft_request_attempts_count", &["flaky.test:80"]).await;
    assert_eq!(attempts, 1000.0);

    // A backend that fails everything: each request would be tried 4 times without the
    // budget; with it, upstream load stays within (1 + 20 %) × requests + 10 a second.
    let start = Instant::now();
    let before = served(&failing);
    let results = run(&proxy, "down.test", "/id", &[], 2, 500).await;
    let secs = start.elapsed().as_secs_f64();
    let upstream = served(&failing) - before;
    let bound = 1.2 * results.len() as f64 + 10.0 * secs.ceil() + 10.0;
    let exhausted = metric(
        &proxy,
        "weft_retry_budget_exhausted_total",
        &["down.test:80"],
    )
    .await;
    println!(
        "failing backend: {} requests in {secs:.2}s reached it as {upstream} (bound {bound:.0}, 4x would be {}); budget exhausted {exhausted} times",
        results.len(),
        4 * results.len()
    );
    assert!(results.iter().all(|(s, _)| *s == 503));
    assert!(
        upstream as f64 <= bound,
        "{upstream} upstream requests exceed the budget's bound {bound}"
    );
    assert!(upstream > results.len(), "some retries were made");
    assert!(exhausted > 0.0, "budget exhaustion is counted");
    weft_tests::tools::assert_promtool_clean(&proxy.metrics().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_failing_endpoint_and_returns_it_after_recovery() {
    let good = http_peer::server("good").await;
    let bad = http_peer::server("bad").await;
    bad.state.status.store(500, Ordering::SeqCst);
    let dir = TempDir::new("outlier");
    let cfg = dir.write(
        "mesh.yaml",
        &format!(
            "services:
  - name: od.test
    port: 80
    loadBalancer: {{policy: round-robin}}
    outlierDetection: {{consecutive5xx: 3, baseEjectionTime: 1s, maxEjectionPercent: 50}}
    endpoints: [{{address: '{}'}}, {{address: '{}'}}]
",
            good.addr, bad.addr
        ),
    );
    let proxy = Proxy::start(&["--config", cfg.to_str().unwrap()]);
    let results = run(&proxy, "od.test", "/id", &[], 1, 100).await;
    let errors = results.iter().filter(|(s, _)| *s == 500).count();
    // Round robin alternates: the bad endpoint's third 500 ejects it, after which the good
    // one takes everything.
    assert_eq!(
        errors, 3,
        "only the 500s before the ejection reach the client"
    );
    assert_eq!(
        metric(&proxy, "weft_outlier_ejections_total", &["od.test:80"]).await,
        1.0
    );
    assert_eq!(
        metric(&proxy, "weft_outlier_ejected_endpoints", &["od.test:80"]).await,
        1.0
    );
    // It recovers; once the ejection has run out it is on probation, succeeds, and takes
    // its share again.
    bad.state.status.store(0, Ordering::SeqCst);
    // Requests until the ejection has run out and the endpoint is tried again.
    let seen = served(&bad);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served(&bad) == seen {
        assert!(
            Instant::now() < deadline,
            "the ejected endpoint never came back"
        );
        run(&proxy, "od.test", "/id", &[], 1, 1).await;
    }
    let before = served(&bad);
    let results = run(&proxy, "od.test", "/id", &[], 1, 100).await;
    assert!(results.iter().all(|(s, _)| *s == 200));
    let back = served(&bad) - before;
    assert!(
        (40..=60).contains(&back),
        "returned endpoint served {back} of 100"
    );
    assert_eq!(
        metric(&proxy, "weft_outlier_ejected_endpoints", &["od.test:80"]).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_splits_90_10_and_a_header_match_always_goes_to_v2() {
    let v1 = http_peer::server("v1").await;
    let v2 = http_peer::server("v2").await;
    let dir = TempDir::new("canary");
    let cfg = dir.write(
        "mesh.yaml",
        &format!(
            "services:
  - name: reviews.test
    port: 80
    endpoints:
      - {{address: '{}', labels: {{version: v1}}}}
      - {{address: '{}', labels: {{version: v2}}}}
    subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
    routes:
      - name: canary-testers
        match: {{headers: [{{name: user-agent, regex: '.*Canary.*'}}]}}
        backends: [{{subset: v2}}]
      - name: beta-query
        match: {{queryParams: [{{name: beta, exact: 'on'}}]}}
        backends: [{{subset: v2}}]
      - name: split
        backends: [{{subset: v1, weight: 90}}, {{subset: v2, weight: 10}}]
",
            v1.addr, v2.addr
        ),
    );
    let proxy = Proxy::start(&["--config", cfg.to_str().unwrap()]);
    let results = run(&proxy, "reviews.test", "/id", &[], 4, 2500).await;
    assert!(results.iter().all(|(s, _)| *s == 200));
    let to_v2 = results.iter().filter(|(_, b)| b == "v2").count();
    let share = 100.0 * to_v2 as f64 / results.len() as f64;
    println!("canary: {to_v2} of {} to v2 ({share:.2} %)", results.len());
    assert!(
        (8.0..=12.0).contains(&share),
        "v2 got {share:.2} % (10 ± 2 expected)"
    );
    let ua = [("user-agent", "Mozilla/5.0 (Canary build)")];
    let testers = run(&proxy, "reviews.test", "/id", &ua, 2, 200).await;
    assert!(testers.iter().all(|(s, b)| *s == 200 && b == "v2"));
    let beta = run(&proxy, "reviews.test", "/id?beta=on", &[], 1, 100).await;
    assert!(beta.iter().all(|(s, b)| *s == 200 && b == "v2"));
    let not_beta = run(&proxy, "reviews.test", "/id?beta=off", &[], 1, 400).await;
    assert!(not_beta.iter().any(|(_, b)| b == "v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirroring_faults_and_rate_limits_act_at_their_rates() {
    let primary = http_peer::server("primary").await;
    let shadow = http_peer::server("shadow").await;
    // The mirror is slow: the caller must not wait for it.
    shadow.state.delay_ms.store(300, Ordering::SeqCst);
    let dir = TempDir::new("faults");
    let cfg = dir.write(
        "mesh.yaml",
        &format!(
            "services:
  - name: mirror.test
    port: 80
    endpoints:
      - {{address: '{p}', labels: {{role: primary}}}}
      - {{address: '{s}', labels: {{role: shadow}}}}
    subsets: [{{name: primary, labels: {{role: primary}}}}, {{name: shadow, labels: {{role: shadow}}}}]
    routes:
      - backends: [{{subset: primary}}]
        mirror: {{subset: shadow, percent: 50}}
  - name: fault.test
    port: 80
    endpoints: [{{address: '{p}'}}]
    routes:
      - match: {{path: {{prefix: /id}}}}
        fault: {{abort: {{percent: 25, httpStatus: 418}}}}
      - match: {{path: {{prefix: /slow}}}}
        fault: {{delay: {{percent: 100, fixed: 200ms}}}}
  - name: limited.test
    port: 80
    endpoints: [{{address: '{p}'}}]
    rateLimit: {{requestsPerSecond: 20, burst: 20}}
",
            p = primary.addr,
            s = shadow.addr
        ),
    );
    let proxy = Proxy::start(&["--config", cfg.to_str().unwrap()]);

    // Mirroring: every caller answered by the primary, quickly; about half copied.
    let start = Instant::now();
    let results = run(&proxy, "mirror.test", "/id", &[], 2, 200).await;
    let took = start.elapsed();
    assert!(results.iter().all(|(s, b)| *s == 200 && b == "primary"));
    assert!(
        took < Duration::from_secs(20),
        "callers waited for the slow mirror: {took:?}"
    );
    // Until every copy the mirror has taken has been answered and counted. (Copies beyond the
    // 64 in flight are not made, and counted as failed: with a 300 ms mirror, some are.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let count = |result: &'static str| {
        let proxy = &proxy;
        // Each result's series appears with its first copy.
        async move {
            try_metric(
                proxy,
                "weft_mirrored_requests_total",
                &["mirror.test:80", result],
            )
            .await
            .unwrap_or(0.0)
        }
    };
    loop {
        let sent = count("result=\"sent\"").await;
        if sent > 0.0 && sent as usize == served(&shadow) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mirrored requests never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let not_made = count("result=\"failed\"").await as usize;
    let chosen = served(&shadow) + not_made;
    println!(
        "mirror: {chosen} of 400 chosen, {} copied, {not_made} over the cap, in {took:?}",
        served(&shadow)
    );
    assert!(
        (150..=250).contains(&chosen),
        "{chosen} of 400 chosen for mirroring (50 %)"
    );
    assert!(
        shadow
            .state
            .last_host
            .lock()
            .unwrap()
            .starts_with("mirror.test-shadow")
    );

    // Fault injection: 25 % aborted with 418.
    let results = run(&proxy, "fault.test", "/id", &[], 2, 1000).await;
    let aborted = results.iter().filter(|(s, _)| *s == 418).count();
    let share = 100.0 * aborted as f64 / results.len() as f64;
    println!("abort: {aborted} of 2000 ({share:.1} %)");
    assert!(
        (21.0..=29.0).contains(&share),
        "{share:.1} % aborted (25 expected)"
    );
    assert!(results.iter().all(|(s, _)| *s == 418 || *s == 200));
    assert_eq!(
        metric(&proxy, "weft_faults_injected_total", &["fault=\"abort\""]).await,
        aborted as f64
    );
    let start = Instant::now();
    let (status, _) = http_peer::exchange(
        proxy.addr("outbound"),
        Request::get("/slow").header("host", "fault.test"),
        String::new(),
    )
    .await;
    assert_eq!(status, 404, "the delayed request still reaches the backend");
    assert!(start.elapsed() >= Duration::from_millis(200));

    // Rate limit: a burst of 20, then 20 a second.
    let start = Instant::now();
    let results = run(&proxy, "limited.test", "/id", &[], 1, 100).await;
    let secs = start.elapsed().as_secs_f64();
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let limited = results.iter().filter(|(s, _)| *s == 429).count();
    println!("rate limit: {ok} passed, {limited} refused in {secs:.2}s");
    assert_eq!(ok + limited, 100);
    assert!(
        ok >= 20 && ok as f64 <= 20.0 + 20.0 * secs + 1.0,
        "{ok} passed"
    );
    assert_eq!(
        metric(&proxy, "weft_rate_limited_total", &["limited.test:80"]).await,
        limited as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_end_slow_calls_promptly() {
    let slow = http_peer::server("slow").await;
    let dir = TempDir::new("deadline");
    let cfg = dir.write(
        "mesh.yaml",
        &format!(
            "services:
  - name: slow.test
    port: 80
    protocol: http2
    endpoints: [{{address: '{}'}}]
    routes:
      - match: {{path: {{prefix: /delay}}}}
        grpcTimeoutMax: 300ms
      - match: {{path: {{prefix: /hang}}, headers: [{{name: x-idle}}]}}
        idleTimeout: 200ms
        timeout: 20s
      - timeout: 300ms
  - name: guarded.test
    port: 80
    circuitBreaker: {{maxRequests: 1}}
    endpoints: [{{address: '{}'}}]
",
            slow.addr, slow.addr
        ),
    );
    let proxy = Proxy::start(&["--config", cfg.to_str().unwrap()]);
    let mut h2 = http_peer::h2_client(proxy.addr("outbound")).await;
    // A gRPC call asking for 10 s gets the route's 300 ms maximum, against a 30 s backend.
    // (The windows are wide: what they tell apart is 300 ms from 10 s and more, on a machine
    // that may be loaded.)
    let start = Instant::now();
    let rsp = h2
        .send_request(
            Request::post("http://slow.test/delay?ms=30000")
                .header("content-type", "application/grpc")
                .header("grpc-timeout", "10S")
                .body(http_peer::body("\0\0\0\0\0"))
                .unwrap(),
        )
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "the route's 300 ms, not the client's 10 s: {took:?}"
    );
    // An HTTP request past the route timeout: 504.
    let start = Instant::now();
    let rsp = h2
        .send_request(
            Request::get("http://slow.test/hang")
                .body(http_peer::body(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), 504);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the route's 300 ms: {:?}",
        start.elapsed()
    );
    // A stream idle timeout also bounds the wait for headers: the route's 20 s timeout
    // does not decide (a window wide enough for a loaded machine tells the two apart).
    let start = Instant::now();
    let rsp = h2
        .send_request(
            Request::get("http://slow.test/hang")
                .header("x-idle", "1")
                .body(http_peer::body(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), 504);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(10),
        "the idle timeout (200 ms), not the route's 20 s: {took:?}"
    );

    // A cluster limit of one request: a second, concurrent one fails fast with 503.
    let addr = proxy.addr("outbound");
    let seen = served(&slow);
    let first = tokio::spawn(http_peer::exchange(
        addr,
        Request::get("/delay?ms=2000").header("host", "guarded.test"),
        String::new(),
    ));
    // Until the first holds the cluster's one permit (the backend has it).
    arrived(&slow, seen).await;
    let start = Instant::now();
    let (status, body) = http_peer::exchange(
        addr,
        Request::get("/id").header("host", "guarded.test"),
        String::new(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("requests limit reached"), "{body}");
    // Fast: refused while the first still holds the permit, not queued behind it.
    assert!(!first.is_finished(), "the 503 waited for the first request");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(
        metric(
            &proxy,
            "weft_circuit_breaker_overflow_total",
            &["guarded.test:80", "limit=\"requests\""]
        )
        .await,
        1.0
    );
    // The permit is given back when the response ends.
    let (status, _) = http_peer::exchange(
        addr,
        Request::get("/id").header("host", "guarded.test"),
        String::new(),
    )
    .await;
    assert_eq!(status, 200);
}

/// A mirror that never answers holds at most MAX_MIRRORS_IN_FLIGHT (64) copies at once; the
/// requests beyond are not copied (counted as failed mirrors), and every caller is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_never_answers_holds_a_bounded_number_of_copies() {
    let primary = http_peer::server("primary").await;
    // Accepts connections and reads, never answers.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let dir = TempDir::new("mirror-cap");
    let cfg = dir.write(
        "mesh.yaml",
        &format!(
            "services:
  - name: mirror.test
    port: 80
    endpoints:
      - {{address: '{p}', labels: {{role: primary}}}}
      - {{address: '{hole_addr}', labels: {{role: hole}}}}
    subsets: [{{name: primary, labels: {{role: primary}}}}, {{name: hole, labels: {{role: hole}}}}]
    routes:
      - backends: [{{subset: primary}}]
        mirror: {{subset: hole}}
",
            p = primary.addr
        ),
    );
    let proxy = Proxy::start(&["--config", cfg.to_str().unwrap()]);
    for i in 0..100 {
        let (status, _) = http_peer::exchange(
            proxy.addr("outbound"),
            Request::get("/id").header("host", "mirror.test:80"),
            String::new(),
        )
        .await;
        assert_eq!(status, 200, "request {i}");
    }
    let failed = metric(
        &proxy,
        "weft_mirrored_requests_total",
        &["result=\"failed\""],
    )
    .await;
    let sent = try_metric(&proxy, "weft_mirrored_requests_total", &["result=\"sent\""]).await;
    assert_eq!(
        (failed, sent),
        (36.0, None),
        "64 copies held by the hole, 36 not made"
    );
}

/// A cluster's `maxPendingRequests` and `maxConnections`, end to end: with one upstream
/// HTTP/1 connection per endpoint held by a slow request, one more request waits for it and
/// the next is turned away at once (503, counted); an opaque TCP service limited to one
/// connection closes a second at once, and takes a new one once the first has closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_requests_and_connections_are_bounded_per_cluster() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let slow = http_peer::server("slow").await;
    let echo = weft_tests::tcp_peer::echo_server(false).await;
    let dir = TempDir::new("limits");
    let cfg = dir.write(
        "mesh.yaml",
        &format!(
            "services:
  - name: pending.test
    port: 80
    circuitBreaker: {{maxPendingRequests: 1}}
    endpoints: [{{address: '{}'}}]
  - name: conns.test
    port: 9000
    protocol: tcp
    circuitBreaker: {{maxConnections: 1}}
    endpoints: [{{address: '{echo}'}}]
",
            slow.addr
        ),
    );
    let proxy = Proxy::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--http1-max-connections-per-endpoint",
        "1",
        "--outbound-tcp",
        "127.0.0.1:0=conns.test:9000",
    ]);
    let addr = proxy.addr("outbound");
    let send = move |path: &'static str| async move {
        let (status, body) = http_peer::exchange(
            addr,
            Request::get(path).header("host", "pending.test"),
            String::new(),
        )
        .await;
        (status, body, Instant::now())
    };

    // The first request holds the endpoint's one connection for 3 s.
    let seen = served(&slow);
    let first = tokio::spawn(send("/delay?ms=3000"));
    arrived(&slow, seen).await;
    // Two more at once: whichever comes first waits for the connection (the one pending
    // request allowed), the other is refused without waiting.
    let (b, c) = tokio::join!(send("/id"), send("/id"));
    let (_, _, first_done) = first.await.unwrap();
    let (mut served_ok, mut refused) = (0, 0);
    for (status, body, done) in [b, c] {
        match status {
            200 => served_ok += 1,
            503 => {
                assert!(body.contains("pending limit reached"), "{body}");
                assert!(done < first_done, "the refusal waited for the connection");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((served_ok, refused), (1, 1));
    assert_eq!(
        metric(
            &proxy,
            "weft_circuit_breaker_overflow_total",
            &["pending.test:80", "limit=\"pending\""]
        )
        .await,
        1.0
    );

    // One opaque connection at a time.
    let tcp = proxy.addr("outbound-tcp conns.test:9000");
    let ping = |mut s: tokio::net::TcpStream| async move {
        s.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .expect("the echo answers")
            .map(|_| (s, back))
    };
    let (held, back) = ping(tokio::net::TcpStream::connect(tcp).await.unwrap())
        .await
        .unwrap();
    assert_eq!(&back, b"ping");
    let mut second = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .expect("the connection over the limit is closed at once");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert_eq!(
        metric(
            &proxy,
            "weft_circuit_breaker_overflow_total",
            &["conns.test:9000", "limit=\"connections\""]
        )
        .await,
        1.0
    );
    // The permit comes back with the connection.
    drop(held);
    weft_tests::eventually(
        Duration::from_secs(10),
        "a connection after the first closed",
        || async {
            let s = tokio::net::TcpStream::connect(tcp).await.ok()?;
            ping(s).await.ok().map(|_| ())
        },
    )
    .await;
}
