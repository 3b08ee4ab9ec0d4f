use std::time::Duration;

use super::*;

#[tokio::test(start_paused = true)]
async fn the_token_bucket_refills_at_its_rate() {
    let t = TokenBucket::new(10.0, 5);
    assert_eq!((0..20).filter(|_| t.take()).count(), 5);
    tokio::time::advance(Duration::from_millis(300)).await;
    assert_eq!((0..20).filter(|_| t.take()).count(), 3);
    // Never more than the burst, however long it rests.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!((0..20).filter(|_| t.take()).count(), 5);
}

#[test]
fn faults_compile_and_refuse_bad_input() {
    let f = Fault::compile(&policy::Fault {
        delay: Some(policy::FaultDelay {
            percent: 50.0,
            fixed: Some(Duration::from_millis(100)),
        }),
        abort: Some(policy::FaultAbort {
            percent: 10.0,
            grpc_status: Some(14),
            http_status: None,
        }),
    })
    .unwrap();
    assert_eq!(f.delay, Some((50.0, Duration::from_millis(100))));
    assert_eq!(f.abort, Some((10.0, Abort::Grpc(14))));
    let e = Fault::compile(&policy::Fault {
        abort: Some(policy::FaultAbort {
            percent: 120.0,
            http_status: Some(503),
            grpc_status: None,
        }),
        delay: None,
    })
    .unwrap_err();
    assert!(e.to_string().contains("120 is not a percentage"), "{e}");
}

#[test]
fn breaker_limits_and_gives_back() {
    let b = Breaker::new(
        &policy::CircuitBreaker {
            max_requests: Some(2),
            ..Default::default()
        },
        None,
    );
    let p1 = b.acquire(Limit::Requests).unwrap();
    let _p2 = b.acquire(Limit::Requests).unwrap();
    assert!(b.acquire(Limit::Requests).is_none());
    // Unlimited ones are not limited.
    assert!(b.acquire(Limit::Retries).is_some());
    drop(p1);
    let _p3 = b.acquire(Limit::Requests).unwrap();
    // A new table's breaker counts on from the old one's.
    let next = Breaker::new(
        &policy::CircuitBreaker {
            max_requests: Some(3),
            ..Default::default()
        },
        Some(&b),
    );
    assert_eq!(next.in_use(Limit::Requests), 2);
    let _p4 = next.acquire(Limit::Requests).unwrap();
    assert!(next.acquire(Limit::Requests).is_none());
}

#[test]
fn pending_requests_are_bounded_by_default_and_nothing_else_is() {
    let b = Breaker::new(&policy::CircuitBreaker::default(), None);
    let held: Vec<_> = (0..DEFAULT_MAX_PENDING_REQUESTS)
        .map(|_| b.acquire(Limit::Pending).expect("under the default"))
        .collect();
    assert!(
        b.acquire(Limit::Pending).is_none(),
        "1,025th pending request"
    );
    assert!(b.limits(Limit::Pending));
    for l in [Limit::Connections, Limit::Requests, Limit::Retries] {
        assert!(!b.limits(l), "{l:?} has no default");
    }
    drop(held);
    assert_eq!(b.in_use(Limit::Pending), 0);
}
