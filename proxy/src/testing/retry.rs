//! Retries, in process and in paused time: which outcomes are retried, the backoff between
//! tries, an upstream's pushback, the per-try timeout, the route's timeout across tries, and
//! the retry budget.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use super::{Mesh, Upstreams, grpc_reply, reply, slow};

const A: &str = "10.0.0.1:80";

/// One service `echo:80` at [`A`] with the service-level retry policy `retry` and, when
/// `route` is not empty, one route with those settings (YAML flow mappings).
fn table(retry: &str, route: &str) -> String {
    let routes = if route.is_empty() {
        String::new()
    } else {
        format!("    routes: [{route}]\n")
    };
    format!(
        "services:
  - name: echo
    port: 80
    endpoints:
      - address: {A}
    retry: {retry}
{routes}"
    )
}

/// An upstream at [`A`] that answers `status` to every request.
fn always(status: u16) -> Upstreams {
    let up = Upstreams::default();
    up.serve(A, move |_, _| async move { reply(status, "") });
    up
}

#[tokio::test(start_paused = true)]
async fn a_failing_answer_is_retried_until_one_succeeds() {
    let up = Upstreams::default();
    up.serve(A, |n, _| async move {
        if n < 3 {
            reply(503, "down")
        } else {
            reply(200, "up")
        }
    });
    let mesh = Mesh::outbound(&table("{attempts: 2, on: [5xx]}", ""), up);
    let rsp = mesh.get("echo", "/").await;
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.body().as_ref(), b"up");
    assert_eq!(mesh.upstreams.requests(A), 3);
    assert_eq!(
        mesh.metric(r#"weft_retries_total{direction="outbound",reason="5xx",target="echo:80"}"#),
        2.0
    );
    assert_eq!(
        mesh.metric(r#"weft_request_attempts_sum{direction="outbound",target="echo:80"}"#),
        3.0
    );
}

#[tokio::test(start_paused = true)]
async fn only_the_outcomes_a_policy_names_are_retried() {
    // (policy, the upstream's answer, requests it gets: 3 when retried twice, else 1)
    let cases = [
        ("{attempts: 2, on: [5xx]}", 503, 3),
        ("{attempts: 2, on: [5xx]}", 404, 1),
        ("{attempts: 2, on: [gateway-error]}", 502, 3),
        ("{attempts: 2, on: [gateway-error]}", 504, 3),
        ("{attempts: 2, on: [gateway-error]}", 500, 1),
        (
            "{attempts: 2, on: [retriable-status-codes], statusCodes: [409]}",
            409,
            3,
        ),
        (
            "{attempts: 2, on: [retriable-status-codes], statusCodes: [409]}",
            503,
            1,
        ),
        // gRPC conditions look at grpc-status only.
        ("{attempts: 2, on: [unavailable]}", 503, 1),
        ("{attempts: 0, on: [5xx]}", 503, 1),
    ];
    for (policy, status, expected) in cases {
        let mesh = Mesh::outbound(&table(policy, ""), always(status));
        let rsp = mesh.get("echo", "/").await;
        assert_eq!(rsp.status(), status, "{policy}, {status}");
        assert_eq!(
            mesh.upstreams.requests(A),
            expected,
            "{policy}: requests made for a {status}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn tries_are_spaced_by_a_jittered_backoff_below_its_cap() {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let up = Upstreams::default();
    let seen = arrivals.clone();
    up.serve(A, move |_, _| {
        seen.lock().unwrap().push(Instant::now());
        async { reply(503, "") }
    });
    // A budget that is never the limit here.
    let policy = "{attempts: 3, on: [5xx], backoff: {base: 100ms, max: 150ms}, \
                  budget: {minPerSecond: 1000}}";
    let mesh = Mesh::outbound(&table(policy, ""), up);
    let mut waits = Vec::new();
    for _ in 0..20 {
        arrivals.lock().unwrap().clear();
        assert_eq!(mesh.get("echo", "/").await.status(), 503);
        let at = arrivals.lock().unwrap().clone();
        assert_eq!(at.len(), 4, "the first try and three retries");
        waits.extend(at.windows(2).enumerate().map(|(n, w)| (n, w[1] - w[0])));
    }
    // Retry n waits a uniform draw below base × 2^n, capped at max (the timer rounds up to
    // its next millisecond).
    for (n, wait) in &waits {
        let cap = Duration::from_millis((100u64 << n).min(150));
        assert!(
            *wait <= cap + Duration::from_millis(1),
            "retry {n} waited {wait:?}, over {cap:?}"
        );
    }
    let mut distinct: Vec<_> = waits.iter().map(|(_, w)| w.as_millis()).collect();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > 10, "jittered: {distinct:?}");
    let mean = waits.iter().map(|(_, w)| w.as_secs_f64()).sum::<f64>() / waits.len() as f64;
    // The mean of draws below 100, 150 and 150 ms is about 67 ms.
    assert!((0.04..0.095).contains(&mean), "mean wait {mean} s");
}

#[tokio::test(start_paused = true)]
async fn an_upstreams_pushback_sets_the_wait_or_ends_the_retries() {
    let up = Upstreams::default();
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let seen = arrivals.clone();
    up.serve(A, move |n, _| {
        seen.lock().unwrap().push(Instant::now());
        async move {
            let mut rsp = reply(if n == 2 { 200 } else { 503 }, "");
            // First request: wait 2 s. Third: wait far longer than the proxy will.
            let after = if n == 1 { "2" } else { "3600" };
            rsp.headers_mut()
                .insert(http::header::RETRY_AFTER, after.parse().unwrap());
            rsp
        }
    });
    let mesh = Mesh::outbound(&table("{attempts: 2, on: [5xx]}", ""), up);
    assert_eq!(mesh.get("echo", "/").await.status(), 200);
    {
        let at = arrivals.lock().unwrap();
        assert_eq!(at.len(), 2);
        assert_eq!(at[1] - at[0], Duration::from_secs(2), "the Retry-After");
    }
    assert_eq!(mesh.get("echo", "/").await.status(), 503);
    assert_eq!(
        mesh.upstreams.requests(A),
        3,
        "not retried after an hour's pushback"
    );
}

#[tokio::test(start_paused = true)]
async fn a_try_past_its_per_try_timeout_is_given_up_and_retried() {
    let up = Upstreams::default();
    up.serve(A, |n, _| async move {
        if n == 1 {
            slow(Duration::from_secs(10), 200).await
        } else {
            reply(200, "second")
        }
    });
    let policy = "{attempts: 2, on: [5xx], perTryTimeout: 1s, backoff: {base: 20ms, max: 20ms}}";
    let mesh = Mesh::outbound(&table(policy, ""), up);
    let start = Instant::now();
    let rsp = mesh.get("echo", "/").await;
    let took = start.elapsed();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.body().as_ref(), b"second");
    assert!(
        took >= Duration::from_secs(1) && took <= Duration::from_millis(1022),
        "{took:?}: one per-try timeout and one backoff"
    );
    assert_eq!(
        mesh.metric(
            r#"weft_retries_total{direction="outbound",reason="per-try-timeout",target="echo:80"}"#
        ),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_with_no_retry_left_answers_504() {
    let up = Upstreams::default();
    up.serve(A, |_, _| slow(Duration::from_secs(10), 200));
    let policy = "{attempts: 1, on: [5xx], perTryTimeout: 1s, backoff: {base: 20ms, max: 20ms}}";
    let mesh = Mesh::outbound(&table(policy, ""), up);
    let start = Instant::now();
    let rsp = mesh.get("echo", "/").await;
    assert_eq!(rsp.status(), 504);
    assert_eq!(mesh.upstreams.requests(A), 2);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took <= Duration::from_millis(2022),
        "{took:?}: two per-try timeouts and one backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn the_route_timeout_bounds_all_tries_together() {
    let up = Upstreams::default();
    up.serve(A, |_, _| slow(Duration::from_secs(10), 200));
    let policy = "{attempts: 5, on: [5xx], perTryTimeout: 1s, backoff: {base: 10ms, max: 10ms}}";
    let mesh = Mesh::outbound(&table(policy, "{timeout: 2500ms}"), up);
    let start = Instant::now();
    let rsp = mesh.get("echo", "/").await;
    assert_eq!(rsp.status(), 504);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(2500),
        "cut off at the route's timeout, not at a try's"
    );
    assert_eq!(
        mesh.upstreams.requests(A),
        3,
        "tries at 0 s, about 1 s and about 2 s"
    );
}

#[tokio::test(start_paused = true)]
async fn the_budgets_reserve_bounds_retries_and_refills_each_second() {
    let policy = "{attempts: 5, on: [5xx], backoff: {base: 1ms, max: 1ms}, \
                  budget: {ratio: 0.0, minPerSecond: 2}}";
    let mesh = Mesh::outbound(&table(policy, ""), always(503));
    let exhausted = r#"weft_retry_budget_exhausted_total{direction="outbound",target="echo:80"}"#;
    mesh.get("echo", "/").await;
    assert_eq!(
        mesh.upstreams.requests(A),
        3,
        "two retries from the reserve"
    );
    assert_eq!(mesh.metric(exhausted), 1.0);
    mesh.get("echo", "/").await;
    assert_eq!(mesh.upstreams.requests(A), 4, "the reserve is spent");
    assert_eq!(mesh.metric(exhausted), 2.0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    mesh.get("echo", "/").await;
    assert_eq!(mesh.upstreams.requests(A), 7, "refilled after a second");
}

#[tokio::test(start_paused = true)]
async fn the_budgets_ratio_lets_retries_add_a_share_of_the_requests() {
    let up = Upstreams::default();
    // Ten requests that succeed, then failures.
    up.serve(A, |n, _| async move {
        reply(if n <= 10 { 200 } else { 503 }, "")
    });
    let policy = "{attempts: 10, on: [5xx], backoff: {base: 1ms, max: 1ms}, \
                  budget: {ratio: 0.5, minPerSecond: 0}}";
    let mesh = Mesh::outbound(&table(policy, ""), up);
    for _ in 0..10 {
        assert_eq!(mesh.get("echo", "/").await.status(), 200);
    }
    assert_eq!(mesh.get("echo", "/").await.status(), 503);
    // 11 requests deposited: retries may add up to half of them, 5.
    assert_eq!(mesh.upstreams.requests(A), 10 + 1 + 5);
}

#[tokio::test(start_paused = true)]
async fn grpc_calls_are_retried_on_the_statuses_the_policy_names_over_http2() {
    // (policy, the status of the first two answers, requests made, the status the client gets)
    let cases = [
        ("{attempts: 2, on: [unavailable]}", 14, 3, "0"),
        ("{attempts: 2, on: [unavailable]}", 13, 1, "13"),
        (
            "{attempts: 2, on: [internal, resource-exhausted]}",
            8,
            3,
            "0",
        ),
        // 5xx is about HTTP statuses: a gRPC error rides a 200.
        ("{attempts: 2, on: [5xx]}", 14, 1, "14"),
    ];
    for (policy, code, requests, answer) in cases {
        let up = Upstreams::default();
        let versions = Arc::new(Mutex::new(Vec::new()));
        let seen = versions.clone();
        up.serve(A, move |n, req| {
            seen.lock().unwrap().push(req.version());
            async move { grpc_reply(if n <= 2 { code } else { 0 }) }
        });
        let mesh = Mesh::outbound(&table(policy, ""), up);
        let rsp = mesh.grpc("echo:80", "/echo.Echo/Say").await;
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.headers()["grpc-status"], answer, "{policy}, {code}");
        assert_eq!(mesh.upstreams.requests(A), requests, "{policy}, {code}");
        assert_eq!(
            mesh.upstreams.connects(A),
            1,
            "one HTTP/2 connection for every try"
        );
        let versions = versions.lock().unwrap();
        assert!(
            versions.iter().all(|v| *v == http::Version::HTTP_2),
            "{versions:?}"
        );
    }
}
