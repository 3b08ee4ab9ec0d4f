//! Circuit-breaker limits, outlier ejection and return, connection reuse, and the connector's
//! own guard, in process and in paused time.

use std::{sync::Arc, time::Duration};

use tokio::{sync::Notify, time::Instant};

use super::{Mesh, Upstreams, reply};

const A: &str = "10.0.0.1:80";
const B: &str = "10.0.0.2:80";

#[tokio::test(start_paused = true)]
async fn requests_past_the_breakers_limit_are_refused_at_once() {
    let up = Upstreams::default();
    let release = Arc::new(Notify::new());
    let held = release.clone();
    up.serve(A, move |n, _| {
        let held = held.clone();
        async move {
            if n == 1 {
                held.notified().await;
            }
            reply(200, "")
        }
    });
    let table = format!(
        "services:
  - name: echo
    port: 80
    endpoints: [{{address: {A}}}]
    circuitBreaker: {{maxRequests: 1}}
"
    );
    let mesh = Arc::new(Mesh::outbound(&table, up));
    let first = tokio::spawn({
        let mesh = mesh.clone();
        async move { mesh.get("echo", "/").await.status() }
    });
    let arrived = async {
        while mesh.upstreams.requests(A) == 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), arrived)
        .await
        .expect("the first request reaches the upstream");
    let start = Instant::now();
    let rsp = mesh.get("echo", "/").await;
    assert_eq!(rsp.status(), 503, "the second request at once");
    assert_eq!(start.elapsed(), Duration::ZERO, "refused without waiting");
    assert_eq!(mesh.upstreams.requests(A), 1, "and never sent");
    assert_eq!(
        mesh.metric(
            r#"weft_circuit_breaker_overflow_total{direction="outbound",limit="requests",target="echo:80"}"#
        ),
        1.0
    );
    release.notify_one();
    assert_eq!(first.await.unwrap(), 200);
    // The limit's unit came back with the first request's end.
    assert_eq!(mesh.get("echo", "/").await.status(), 200);
}

/// `echo:80` at [`A`] and [`B`] in turn, an endpoint out for 10 s after two gateway errors.
fn ejecting() -> String {
    format!(
        "services:
  - name: echo
    port: 80
    endpoints: [{{address: {A}}}, {{address: {B}}}]
    loadBalancer: {{policy: round-robin}}
    outlierDetection: {{consecutiveGatewayErrors: 2, baseEjectionTime: 10s, maxEjectionPercent: 50}}
"
    )
}

#[tokio::test(start_paused = true)]
async fn a_failing_endpoint_is_ejected_then_tried_again_and_ejected_for_longer() {
    let up = Upstreams::default();
    up.serve(A, |_, _| async { reply(502, "a") });
    up.serve(B, |_, _| async { reply(200, "b") });
    let mesh = Mesh::outbound(&ejecting(), up);
    let ejections = r#"weft_outlier_ejections_total{direction="outbound",target="echo:80"}"#;
    let ejected = r#"weft_outlier_ejected_endpoints{direction="outbound",target="echo:80"}"#;
    for _ in 0..20 {
        mesh.get("echo", "/").await;
    }
    assert_eq!(
        mesh.upstreams.requests(A),
        2,
        "out after two gateway errors"
    );
    assert_eq!(mesh.upstreams.requests(B), 18);
    assert_eq!(mesh.metric(ejections), 1.0);
    assert_eq!(mesh.metric(ejected), 1.0);

    // Out for the base ejection time, then on probation: one failure sends it back out.
    tokio::time::sleep(Duration::from_millis(9_900)).await;
    mesh.get("echo", "/").await;
    mesh.get("echo", "/").await;
    assert_eq!(mesh.upstreams.requests(A), 2, "still out just before 10 s");
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..4 {
        mesh.get("echo", "/").await;
    }
    assert_eq!(
        mesh.upstreams.requests(A),
        3,
        "back after 10 s, for one request"
    );
    assert_eq!(mesh.metric(ejections), 2.0);

    // Ejected again so soon: for twice as long.
    tokio::time::sleep(Duration::from_secs(15)).await;
    for _ in 0..4 {
        mesh.get("echo", "/").await;
    }
    assert_eq!(mesh.upstreams.requests(A), 3, "still out after 15 s of 20");
    tokio::time::sleep(Duration::from_secs(6)).await;
    for _ in 0..4 {
        mesh.get("echo", "/").await;
    }
    assert_eq!(mesh.upstreams.requests(A), 4, "back after 20 s");
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_that_recovers_stays_in_after_probation() {
    let up = Upstreams::default();
    // Two failures, then well.
    up.serve(A, |n, _| async move {
        reply(if n <= 2 { 502 } else { 200 }, "a")
    });
    up.serve(B, |_, _| async { reply(200, "b") });
    let mesh = Mesh::outbound(&ejecting(), up);
    for _ in 0..4 {
        mesh.get("echo", "/").await;
    }
    assert_eq!(mesh.upstreams.requests(A), 2);
    tokio::time::sleep(Duration::from_secs(11)).await;
    for _ in 0..10 {
        assert_eq!(mesh.get("echo", "/").await.status(), 200);
    }
    assert_eq!(mesh.upstreams.requests(A), 2 + 5, "its share again");
    let ejections = r#"weft_outlier_ejections_total{direction="outbound",target="echo:80"}"#;
    assert_eq!(mesh.metric(ejections), 1.0, "it was ejected once");
    let ejected = r#"weft_outlier_ejected_endpoints{direction="outbound",target="echo:80"}"#;
    assert_eq!(mesh.metric(ejected), 0.0, "and is back");
}

#[tokio::test(start_paused = true)]
async fn sequential_requests_reuse_one_upstream_connection() {
    let up = Upstreams::default();
    up.serve(A, |_, _| async { reply(200, "") });
    let table = format!("services: [{{name: echo, port: 80, endpoints: [{{address: {A}}}]}}]");
    let mesh = Mesh::outbound(&table, up);
    for _ in 0..5 {
        assert_eq!(mesh.get("echo", "/").await.status(), 200);
    }
    assert_eq!(mesh.upstreams.requests(A), 5);
    assert_eq!(mesh.upstreams.connects(A), 1);
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "the proxy connected to unexpected addresses: [10.0.0.9:80]")]
async fn a_connect_to_an_address_the_test_did_not_serve_fails_the_test() {
    let table = "services: [{name: echo, port: 80, endpoints: [{address: 10.0.0.9:80}]}]";
    let mesh = Mesh::outbound(table, Upstreams::default());
    // The proxy answers as it does for a refused connect...
    assert_eq!(mesh.get("echo", "/").await.status(), 503);
    // ...and the mesh fails the test when it is dropped.
}
