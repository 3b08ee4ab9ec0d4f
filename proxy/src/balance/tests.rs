use std::collections::HashMap;

use weft_core::policy::OutlierDetection;

use super::*;

fn split(weights: &[u32]) -> WeightedSplit<Arc<EndpointState>> {
    WeightedSplit::new(weights.iter().enumerate().map(|(i, w)| {
        let addr = SocketAddr::from(([10, 0, 0, i as u8 + 1], 80));
        (*w, Arc::new(EndpointState::new(addr)))
    }))
}

/// Ring hash reads no endpoint state.
fn unused_state() -> &'static EndpointState {
    static STATE: std::sync::OnceLock<EndpointState> = std::sync::OnceLock::new();
    STATE.get_or_init(|| EndpointState::new("10.0.0.1:80".parse().unwrap()))
}

/// The latency estimate now, in milliseconds.
fn ms(s: &EndpointState) -> f64 {
    s.ewma.lock().unwrap().decayed(Instant::now()) / 1e6
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_jumps_up_and_decays_with_its_time_constant() {
    let e = Arc::new(EndpointState::new("10.0.0.1:80".parse().unwrap()));
    assert!((ms(&e) - 30.0).abs() < 1e-6, "unknown: the default RTT");

    let r = e.start();
    assert_eq!(e.in_flight(), 1);
    tokio::time::advance(Duration::from_millis(100)).await;
    r.responded();
    assert_eq!(e.in_flight(), 0);
    assert!(
        (ms(&e) - 100.0).abs() < 1e-6,
        "a slower response is taken at once: {}",
        ms(&e)
    );

    // Idle for one time constant: 1/e of the estimate is left.
    tokio::time::advance(DECAY).await;
    let decayed = 100.0 * (-1f64).exp();
    assert!((ms(&e) - decayed).abs() < 1e-3, "{}", ms(&e));

    // A faster sample after that long pulls the estimate (1 - 1/e) of the way to it.
    let r = e.start();
    tokio::time::advance(Duration::from_millis(10)).await;
    r.responded();
    let w = (-(10.01f64) / 10.0).exp();
    let want = 100.0 * w + 10.0 * (1.0 - w);
    assert!((ms(&e) - want).abs() < 1e-3, "{} vs {want}", ms(&e));

    // Load counts the requests in flight.
    let now = Instant::now();
    let idle = e.load(now);
    let _a = e.start();
    let _b = e.start();
    assert!((e.load(now) - 3.0 * idle).abs() < 1e-6 * idle);
}

#[tokio::test(start_paused = true)]
async fn a_failure_counts_as_a_slow_response_and_a_dropped_request_teaches_nothing() {
    let e = Arc::new(EndpointState::new("10.0.0.1:80".parse().unwrap()));
    let r = e.start();
    tokio::time::advance(Duration::from_millis(2)).await;
    drop(r);
    assert_eq!(e.in_flight(), 0);
    assert!((ms(&e) - 30.0).abs() < 0.01, "{}", ms(&e));
    let r = e.start();
    tokio::time::advance(Duration::from_millis(2)).await;
    r.failed();
    assert!((ms(&e) - 1000.0).abs() < 1e-6, "{}", ms(&e));
}

#[tokio::test(start_paused = true)]
async fn p2c_ewma_avoids_the_slow_endpoint_until_its_estimate_decays() {
    let eps = split(&[1, 1]);
    let slow = eps.get(1).unwrap().clone();
    let r = slow.start();
    tokio::time::advance(Duration::from_millis(500)).await;
    r.responded();
    let b = Balancer::new(LbPolicy::P2cEwma, &eps, |e| e.addr.to_string());
    let picks = |n| {
        (0..n)
            .filter(|_| b.pick(&eps, |e| e, None) == Some(1))
            .count()
    };
    assert_eq!(
        picks(1000),
        0,
        "with two endpoints both are always compared"
    );
    // The fast endpoint keeps answering in 30 ms; the slow one's 500 ms, untouched, decays
    // below that after ln(500/30) = 2.8 time constants.
    let fast = eps.get(0).unwrap().clone();
    for _ in 0..30 {
        let r = fast.start();
        tokio::time::advance(Duration::from_millis(30)).await;
        r.responded();
        tokio::time::advance(Duration::from_millis(970)).await;
    }
    assert!(ms(&slow) < ms(&fast));
    assert_eq!(
        picks(1000),
        1000,
        "the idle one is cheaper now: it is probed again"
    );
}

#[test]
fn least_request_takes_the_endpoint_with_fewer_in_flight() {
    let eps = split(&[1, 1, 1]);
    let busy: Vec<InFlight> = (0..5).map(|_| eps.get(0).unwrap().start()).collect();
    let b = Balancer::new(LbPolicy::LeastRequest, &eps, |e| e.addr.to_string());
    for _ in 0..500 {
        assert_ne!(b.pick(&eps, |e| e, None), Some(0));
    }
    drop(busy);
    assert!((0..500).any(|_| b.pick(&eps, |e| e, None) == Some(0)));
}

#[test]
fn round_robin_is_smooth_and_follows_weights() {
    assert_eq!(&*smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
    assert_eq!(&*smooth_schedule(&[1, 1, 1]), [0, 1, 2]);
    assert_eq!(
        &*smooth_schedule(&[20, 10]),
        [0, 1, 0],
        "divided by the gcd"
    );
    let big = smooth_schedule(&[1_000_000, 3_000_000, 1]);
    assert!(big.len() as u64 <= SCHEDULE_MAX + 2, "{}", big.len());
    assert!(big.contains(&2), "a small weight still comes up");

    let eps = split(&[3, 1]);
    let b = Balancer::new(LbPolicy::RoundRobin, &eps, |e| e.addr.to_string());
    let mut count = [0; 2];
    for _ in 0..400 {
        count[b.pick(&eps, |e| e, None).unwrap()] += 1;
    }
    assert_eq!(count, [300, 100]);
}

#[test]
fn ring_hash_spreads_keys_and_moves_only_the_removed_endpoints_keys() {
    let keys: Vec<u64> = (0..10_000)
        .map(|i| hash64(format!("user-{i}").as_bytes()))
        .collect();
    let owners = |n: usize, skip: Option<usize>| -> Vec<String> {
        let addrs: Vec<String> = (0..n)
            .filter(|i| Some(*i) != skip)
            .map(|i| format!("10.0.0.{i}:80"))
            .collect();
        let eps = WeightedSplit::new(addrs.iter().map(|a| (1, a.clone())));
        let b = Balancer::new(LbPolicy::RingHash, &eps, |a| a.clone());
        keys.iter()
            .map(|k| {
                let i = b.pick(&eps, |_| unused_state(), Some(*k)).unwrap();
                eps.get(i).unwrap().clone()
            })
            .collect()
    };
    let before = owners(10, None);
    let mut per: HashMap<&str, usize> = HashMap::new();
    for o in &before {
        *per.entry(o).or_default() += 1;
    }
    assert_eq!(per.len(), 10);
    for (ep, n) in &per {
        assert!((500..=1500).contains(n), "{ep} owns {n} of 10000 keys");
    }
    let after = owners(10, Some(3));
    for (b, a) in before.iter().zip(&after) {
        if b != "10.0.0.3:80" {
            assert_eq!(a, b, "a key not on the removed endpoint moved");
        }
    }
    // The same key maps to the same endpoint every time (and in every proxy: no seed).
    assert_eq!(owners(10, None), before);
}

#[test]
fn ring_hash_follows_weights() {
    let eps = WeightedSplit::new([(3, "a".to_string()), (1, "b".to_string())]);
    let b = Balancer::new(LbPolicy::RingHash, &eps, |a| a.clone());
    let to_a = (0..10_000u64)
        .filter(|i| b.pick(&eps, |_| unused_state(), Some(hash64(&i.to_le_bytes()))) == Some(0))
        .count();
    assert!((6500..=8500).contains(&to_a), "{to_a}");
}

fn outlier(consecutive: u32) -> Outlier {
    Outlier::compile(&OutlierDetection {
        consecutive_5xx: Some(consecutive),
        base_ejection_time: Some(Duration::from_secs(1)),
        max_ejection_time: Some(Duration::from_secs(5)),
        ..Default::default()
    })
}

#[tokio::test(start_paused = true)]
async fn consecutive_errors_eject_and_successes_reset() {
    let cfg = outlier(3);
    let ep = EndpointState::new("10.0.0.1:80".parse().unwrap());
    let now = now_ms();
    assert!(!ep.record(Outcome::ServerError, &cfg, now));
    assert!(!ep.record(Outcome::GatewayError, &cfg, now));
    // A success in between starts the count again.
    assert!(!ep.record(Outcome::Success, &cfg, now));
    assert!(!ep.record(Outcome::ServerError, &cfg, now));
    assert!(!ep.record(Outcome::ServerError, &cfg, now));
    assert!(ep.record(Outcome::ServerError, &cfg, now));
}

#[tokio::test(start_paused = true)]
async fn ejections_double_while_the_endpoint_keeps_failing_and_probation_decides() {
    let cfg = outlier(1);
    let ep = EndpointState::new("10.0.0.1:80".parse().unwrap());
    assert!(ep.record(Outcome::GatewayError, &cfg, now_ms()));
    assert_eq!(ep.eject(&cfg, now_ms()), Duration::from_secs(1));
    assert!(ep.ejected(now_ms()));
    tokio::time::advance(Duration::from_millis(999)).await;
    assert!(ep.ejected(now_ms()));
    assert!(!ep.return_if_due(now_ms()));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(ep.return_if_due(now_ms()));
    assert!(!ep.ejected(now_ms()));
    // On probation: one failure sends it straight back, for twice as long.
    assert!(ep.record(Outcome::ServerError, &outlier(100), now_ms()));
    assert_eq!(ep.eject(&cfg, now_ms()), Duration::from_secs(2));
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(ep.return_if_due(now_ms()));
    assert!(ep.record(Outcome::GatewayError, &cfg, now_ms()));
    assert_eq!(ep.eject(&cfg, now_ms()), Duration::from_secs(4));
    tokio::time::advance(Duration::from_secs(4)).await;
    assert!(ep.return_if_due(now_ms()));
    assert!(ep.record(Outcome::GatewayError, &cfg, now_ms()));
    // Capped at the maximum.
    assert_eq!(ep.eject(&cfg, now_ms()), Duration::from_secs(5));
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(ep.return_if_due(now_ms()));
    // A success on probation keeps it in; once it has stayed in longer than it was last
    // out, the next ejection is back to the base time.
    assert!(!ep.record(Outcome::Success, &cfg, now_ms()));
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(ep.record(Outcome::GatewayError, &cfg, now_ms()));
    assert_eq!(ep.eject(&cfg, now_ms()), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_the_last_calls_within_the_window() {
    // 50% of the last 10 calls within 10 s.
    let cfg = Outlier::compile(&OutlierDetection {
        consecutive_5xx: Some(1000),
        failure_rate: Some(weft_core::policy::FailureRate {
            threshold_percent: 50,
            minimum_requests: Some(10),
            window: Some(Duration::from_secs(10)),
        }),
        ..Default::default()
    });
    let ep = EndpointState::new("10.0.0.1:80".parse().unwrap());
    // Alternating: 4 failures in 9 calls is below the minimum count...
    for i in 0..9 {
        let o = if i % 2 == 1 {
            Outcome::ServerError
        } else {
            Outcome::Success
        };
        assert!(!ep.record(o, &cfg, now_ms()), "call {i}");
    }
    // ...the 10th makes 5 of 10.
    assert!(ep.record(Outcome::GatewayError, &cfg, now_ms()));
    // Old calls leave the window: the same pattern spread over 20 s never reaches 10 calls.
    let ep = EndpointState::new("10.0.0.2:80".parse().unwrap());
    for i in 0..20 {
        let o = if i % 2 == 1 {
            Outcome::ServerError
        } else {
            Outcome::Success
        };
        assert!(!ep.record(o, &cfg, now_ms()), "call {i}");
        tokio::time::advance(Duration::from_millis(1500)).await;
    }
}

#[test]
fn the_ring_is_bounded_whatever_the_weights() {
    // Weights 1 and 1,000,000 (4,000,000,000 made a proxy grow past 1 GB): the ring holds at
    // most RING_MAX_POINTS, plus one point for each endpoint a share would round to none.
    let keys = ["10.0.0.1:80".to_string(), "10.0.0.2:80".to_string()];
    let r = ring(&[1, 1_000_000], &keys);
    assert!(r.len() as u64 <= RING_MAX_POINTS + 2, "{} points", r.len());
    assert!(
        r.iter().any(|(_, i)| *i == 0),
        "the light endpoint keeps a point"
    );
    let heavy = r.iter().filter(|(_, i)| *i == 1).count();
    assert!(heavy as u64 >= RING_MAX_POINTS - 2, "{heavy}");
    // Small rings are as before: 64 points per unit of the smallest weight.
    assert_eq!(ring(&[3, 1], &keys).len(), 4 * 64);
    // Sorted, so lookups can bisect.
    assert!(r.windows(2).all(|w| w[0].0 <= w[1].0));
}

#[test]
fn a_schedule_of_many_endpoints_keeps_every_one_and_its_share() {
    // 5,000 endpoints: every one comes up, in proportion to its weight.
    let weights: Vec<u64> = (0..5_000).map(|i| if i % 2 == 0 { 2 } else { 1 }).collect();
    let s = smooth_schedule(&weights);
    let mut count = vec![0u32; weights.len()];
    for i in s.iter() {
        count[*i as usize] += 1;
    }
    assert!(count.iter().all(|c| *c >= 1));
    assert_eq!(count[0], 2 * count[1], "{:?}", &count[..4]);
}

/// A gRPC answer's outcome: a trailers-only UNAVAILABLE or DEADLINE_EXCEEDED is a gateway
/// error (a sidecar whose application is down answers UNAVAILABLE with HTTP 200), INTERNAL and
/// the like a server error, anything else by the HTTP status.
#[test]
fn grpc_statuses_count_as_the_http_status_they_stand_for() {
    assert_eq!(Outcome::of_grpc(200, Some(14)), Outcome::GatewayError);
    assert_eq!(Outcome::of_grpc(200, Some(4)), Outcome::GatewayError);
    assert_eq!(Outcome::of_grpc(200, Some(13)), Outcome::ServerError);
    assert_eq!(Outcome::of_grpc(200, Some(0)), Outcome::Success);
    assert_eq!(Outcome::of_grpc(200, Some(5)), Outcome::Success);
    assert_eq!(Outcome::of_grpc(200, None), Outcome::Success);
    assert_eq!(Outcome::of_grpc(503, None), Outcome::GatewayError);
}
