//! How often one caller address may have the CA ask the API server about a token
//! (TokenReview): every review is an API server request, so a caller sending tokens in a loop
//! must not turn the CA into a way to load it.
//!
//! Token buckets in a fixed table of [`SLOTS`], chosen by a keyed hash of the address: the
//! memory is the same whoever calls (addresses that share a slot share its budget).

use std::{
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::Mutex,
};

use tokio::time::Instant;

/// Buckets in the table.
pub const SLOTS: usize = 1024;

#[derive(Debug)]
pub struct PerCaller {
    slots: Box<[Mutex<Bucket>]>,
    /// Tokens a second per slot; 0 is no limit.
    rate: f64,
    burst: f64,
    hasher: RandomState,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Option<Instant>,
}

impl PerCaller {
    /// `per_second` reviews a second for each address, in bursts of twice that; 0: no limit.
    pub fn new(per_second: u32) -> Self {
        PerCaller {
            slots: (0..SLOTS)
                .map(|_| {
                    Mutex::new(Bucket {
                        tokens: 0.0,
                        at: None,
                    })
                })
                .collect(),
            rate: f64::from(per_second),
            burst: f64::from(per_second) * 2.0,
            hasher: RandomState::new(),
        }
    }

    /// Takes one review from `caller`'s budget; `false` when it is spent. IPv6 callers are
    /// taken by their /64 (one host can hold all of one).
    pub fn allow(&self, caller: IpAddr) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let key = match caller {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
            },
            v4 => v4,
        };
        let i = (self.hasher.hash_one(key) % SLOTS as u64) as usize;
        let mut b = self.slots[i].lock().expect("token review limiter");
        let now = Instant::now();
        b.tokens = match b.at {
            None => self.burst,
            Some(at) => {
                (b.tokens + now.duration_since(at).as_secs_f64() * self.rate).min(self.burst)
            }
        };
        b.at = Some(now);
        if b.tokens < 1.0 {
            return false;
        }
        b.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn each_caller_gets_a_burst_then_the_rate() {
        let l = PerCaller::new(5);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let burst = (0..100).take_while(|_| l.allow(a)).count();
        assert_eq!(burst, 10, "twice the rate");
        assert!(!l.allow(a));
        // Another caller has its own budget (unless it shares the slot: 1 in 1,024).
        let shares = (l.hasher.hash_one(a) % SLOTS as u64) == (l.hasher.hash_one(b) % SLOTS as u64);
        assert_eq!(l.allow(b), !shares);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(l.allow(a), "one more after a fifth of a second");
        assert!(!l.allow(a));
        assert!(PerCaller::new(0).allow(a), "0: no limit");
        // One /64 is one caller.
        let l = PerCaller::new(1);
        let burst = (0..10u16)
            .take_while(|i| l.allow(format!("fd00:1:2:3::{i:x}").parse().unwrap()))
            .count();
        assert_eq!(burst, 2);
    }
}
