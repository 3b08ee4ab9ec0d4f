use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use weft_core::policy::{Backoff, RetryPolicy};

use super::*;

fn policy(on: &[&str]) -> RetryPolicy {
    RetryPolicy {
        on: on.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn defaults_are_two_retries_25ms_to_250ms() {
    let r = Retry::compile(&policy(&["5xx"])).unwrap();
    assert_eq!(r.retries, 2);
    assert_eq!(r.base, Duration::from_millis(25));
    assert_eq!(r.max, Duration::from_millis(250));
    assert_eq!(r.per_try_timeout, None);
}

#[test]
fn backoff_doubles_under_full_jitter_up_to_max() {
    let r = Retry::compile(&policy(&["5xx"])).unwrap();
    // The ceiling: 25, 50, 100, 200, then 250 for ever.
    let ceilings = [25, 50, 100, 200, 250, 250, 250];
    for (n, c) in ceilings.iter().enumerate() {
        let c = Duration::from_millis(*c);
        assert_eq!(r.backoff(n as u32, 0.0), Duration::ZERO);
        // Just under the ceiling, never at or above it.
        let top = r.backoff(n as u32, 0.999_999);
        assert!(top < c && top > c.mul_f64(0.999), "n={n}: {top:?} vs {c:?}");
        assert_eq!(r.backoff(n as u32, 0.5), c / 2);
    }
    // Huge retry numbers do not overflow.
    assert_eq!(r.backoff(u32::MAX, 0.5), Duration::from_millis(125));
    // Jitter spreads the waits: draws are uniform below the ceiling.
    let waits: Vec<Duration> = (0..1000).map(|_| r.backoff(3, fastrand::f64())).collect();
    let below_half = waits
        .iter()
        .filter(|w| **w < Duration::from_millis(100))
        .count();
    assert!(
        (400..600).contains(&below_half),
        "{below_half} of 1000 below half"
    );
}

#[test]
fn a_floor_comes_before_the_jitter() {
    // A Gateway API route's `retry.backoff: 100ms`: base and floor 100 ms.
    let r = Retry::compile(&RetryPolicy {
        backoff: Some(Backoff {
            base: Some(Duration::from_millis(100)),
            max: None,
        }),
        ..policy(&["5xx"])
    })
    .unwrap()
    .at_least(Duration::from_millis(100));
    for n in 0..8 {
        assert_eq!(r.backoff(n, 0.0), Duration::from_millis(100), "n={n}");
        let ceiling = weft_core::backoff::ceiling(r.base, r.max, n);
        assert!(r.backoff(n, 0.999_999) < Duration::from_millis(100) + ceiling);
    }
    // Never sooner than the floor, whatever the draw.
    assert!((0..1000).all(|_| r.backoff(0, fastrand::f64()) >= Duration::from_millis(100)));
}

#[test]
fn the_common_client_setting_is_expressible() {
    // 500 ms doubling up to 5 s, 3 attempts (2 retries).
    let r = Retry::compile(&RetryPolicy {
        attempts: Some(2),
        backoff: Some(Backoff {
            base: Some(Duration::from_millis(500)),
            max: Some(Duration::from_secs(5)),
        }),
        ..policy(&["unavailable"])
    })
    .unwrap();
    assert_eq!(r.retries, 2);
    assert_eq!(r.backoff(0, 0.5), Duration::from_millis(250));
    assert_eq!(r.backoff(1, 0.5), Duration::from_millis(500));
    assert_eq!(r.backoff(4, 0.5), Duration::from_millis(2500));
    assert_eq!(r.backoff(5, 0.5), Duration::from_millis(2500));
}

#[test]
fn bad_policies_are_refused_by_name() {
    let e = Retry::compile(&policy(&["5xx", "sometimes"])).unwrap_err();
    assert!(
        e.to_string()
            .contains("unknown retry condition `sometimes`"),
        "{e}"
    );
    let e = Retry::compile(&RetryPolicy {
        backoff: Some(Backoff {
            base: Some(Duration::from_secs(1)),
            max: Some(Duration::from_millis(10)),
        }),
        ..policy(&["5xx"])
    })
    .unwrap_err();
    assert_eq!(e.field, "backoff.max");
    assert_eq!(e.to_string(), "backoff.max: 10ms is less than base 1s");
}

fn grpc(code: u32) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("grpc-status", HeaderValue::from(code));
    h
}

#[test]
fn responses_are_classified_by_the_conditions_named() {
    let none = HeaderMap::new();
    let r = Retry::compile(&policy(&["gateway-error"])).unwrap();
    assert_eq!(
        r.response(StatusCode::SERVICE_UNAVAILABLE, &none),
        Some(Reason::GatewayError)
    );
    assert_eq!(r.response(StatusCode::INTERNAL_SERVER_ERROR, &none), None);
    assert_eq!(r.response(StatusCode::OK, &none), None);
    let r = Retry::compile(&policy(&["5xx"])).unwrap();
    assert_eq!(
        r.response(StatusCode::INTERNAL_SERVER_ERROR, &none),
        Some(Reason::Http5xx)
    );
    assert_eq!(r.response(StatusCode::TOO_MANY_REQUESTS, &none), None);
    let r = Retry::compile(&RetryPolicy {
        status_codes: vec![409],
        ..policy(&["retriable-status-codes"])
    })
    .unwrap();
    assert_eq!(
        r.response(StatusCode::CONFLICT, &none),
        Some(Reason::StatusCode)
    );
    assert_eq!(r.response(StatusCode::SERVICE_UNAVAILABLE, &none), None);
    // gRPC statuses are each opt-in.
    let r = Retry::compile(&policy(&["unavailable", "resource-exhausted"])).unwrap();
    assert_eq!(
        r.response(StatusCode::OK, &grpc(14)),
        Some(Reason::Unavailable)
    );
    assert_eq!(
        r.response(StatusCode::OK, &grpc(8)),
        Some(Reason::ResourceExhausted)
    );
    assert_eq!(r.response(StatusCode::OK, &grpc(13)), None);
    assert_eq!(r.response(StatusCode::OK, &grpc(4)), None);
    assert_eq!(r.response(StatusCode::OK, &grpc(0)), None);
}

#[test]
fn pushback_headers() {
    let mut h = HeaderMap::new();
    assert_eq!(pushback(&h), None);
    h.insert("retry-after", HeaderValue::from_static("3"));
    assert_eq!(pushback(&h), Some(Some(Duration::from_secs(3))));
    h.insert(
        "retry-after",
        HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
    );
    assert_eq!(pushback(&h), None);
    h.insert("grpc-retry-pushback-ms", HeaderValue::from_static("120"));
    assert_eq!(pushback(&h), Some(Some(Duration::from_millis(120))));
    // Negative or malformed: do not retry.
    h.insert("grpc-retry-pushback-ms", HeaderValue::from_static("-1"));
    assert_eq!(pushback(&h), Some(None));
    h.insert("grpc-retry-pushback-ms", HeaderValue::from_static("soon"));
    assert_eq!(pushback(&h), Some(None));
}

#[tokio::test(start_paused = true)]
async fn the_budget_allows_the_ratio_plus_the_reserve() {
    let b = Budget::new(0.2, 10);
    // With no requests yet, only the reserve: 10 in the first second.
    assert_eq!((0..30).filter(|_| b.withdraw()).count(), 10);
    // 100 requests pay for 20 retries.
    for _ in 0..100 {
        b.deposit();
    }
    assert_eq!((0..30).filter(|_| b.withdraw()).count(), 20);
    // A second later the reserve is back (10), the ratio is spent.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!((0..30).filter(|_| b.withdraw()).count(), 10);
    // Half a second refills half the reserve.
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!((0..30).filter(|_| b.withdraw()).count(), 5);
    // Deposits expire after the window: 11 s on, the 100 requests no longer count, nor the
    // retries they paid for.
    tokio::time::advance(Duration::from_secs(11)).await;
    for _ in 0..10 {
        b.deposit();
    }
    assert_eq!((0..30).filter(|_| b.withdraw()).count(), 2 + 10);
}

#[tokio::test(start_paused = true)]
async fn a_fully_failing_upstream_sees_at_most_the_budget() {
    // 100 requests a second for 20 s, each wanting 2 retries.
    let b = Budget::new(0.2, 10);
    let mut retries = 0;
    for _ in 0..20 {
        for _ in 0..100 {
            b.deposit();
            retries += (0..2).filter(|_| b.withdraw()).count();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    // At most 20% of 2000 plus 10 a second.
    assert!(retries <= 400 + 200, "{retries}");
    assert!(retries >= 400, "{retries}");
}

#[test]
fn reasons_are_labelled_by_their_conditions() {
    assert_eq!(Reason::ConnectFailure.as_str(), "connect-failure");
    assert_eq!(Reason::StatusCode.as_str(), "retriable-status-codes");
    assert_eq!(Reason::Unavailable.as_str(), "unavailable");
    assert_eq!(Reason::PerTryTimeout.as_str(), "per-try-timeout");
    assert_eq!(Reason::PerTryTimeout as usize + 1, REASON_COUNT);
}
