//! Load balancing: which endpoint of a cluster takes a request.
//!
//! - `p2c-ewma` (the default, as Linkerd's): two endpoints drawn at random (in proportion to
//!   their weights), the one with the lower load taken. Load is the peak-EWMA of response
//!   latency times (requests in flight + 1). The estimate starts at [`DEFAULT_RTT`], jumps up at
//!   once to a slower response, and otherwise moves toward each new sample and toward zero with
//!   [`DECAY`] as its time constant (both settable: `--lb-default-rtt`, `--lb-ewma-decay`): a slow endpoint is avoided, and probed again once its
//!   estimate has decayed. A failed request counts as a [`FAILURE_PENALTY`] response.
//! - `least-request`: the same two choices, by requests in flight (divided by weight).
//! - `round-robin`: smooth weighted round robin over the endpoint weights (equal weights: plain
//!   round robin).
//! - `random`: in proportion to weight.
//! - `ring-hash`: a consistent-hash ring keyed by a header, a cookie or the caller's IP; each
//!   endpoint owns points derived from its own address, so adding or removing one endpoint
//!   moves only the keys on its arcs. A request without the key is balanced at random.
//!
//! Per-endpoint state (latency estimate, requests in flight) is kept by address and carried
//! from the table in force into the next one, so a table swap does not reset it.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
pub use weft_core::policy::LbPolicy;

use crate::route::WeightedSplit;

/// The latency estimate of an endpoint nothing has been learnt about (Linkerd's default).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// The EWMA's time constant: a sample's weight falls to 1/e after this long (Linkerd's).
pub const DECAY: Duration = Duration::from_secs(10);

/// The process's peak-EWMA settings (`--lb-ewma-decay`, `--lb-default-rtt`); the defaults
/// until [`configure`] is called.
static EWMA: std::sync::OnceLock<(Duration, Duration)> = std::sync::OnceLock::new();

/// Sets the time constant and starting estimate of every endpoint's latency estimate, once, at
/// start-up.
pub fn configure(decay: Duration, default_rtt: Duration) {
    let _ = EWMA.set((decay.max(Duration::from_millis(1)), default_rtt));
}

fn decay() -> Duration {
    EWMA.get().map_or(DECAY, |c| c.0)
}

fn default_rtt() -> Duration {
    EWMA.get().map_or(DEFAULT_RTT, |c| c.1)
}
/// What a failed request (no response) counts as.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);
/// Ring points per unit of an endpoint's weight (relative to the smallest weight), and the
/// most a ring holds.
const RING_POINTS_PER_WEIGHT: u64 = 64;
const RING_MAX_POINTS: u64 = 64 * 1024;
/// The longest smooth-round-robin schedule; heavier weights are scaled down to fit.
const SCHEDULE_MAX: u64 = 4096;

/// What the balancer knows of one endpoint; shared by every cluster that has it and kept
/// across table swaps.
#[derive(Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    in_flight: AtomicU32,
    ewma: Mutex<Ewma>,
}

#[derive(Debug, Clone, Copy)]
struct Ewma {
    /// Estimated latency, nanoseconds.
    cost: f64,
    at: Instant,
}

impl Ewma {
    /// The estimate at `now`, decayed toward zero since the last update.
    fn decayed(&self, now: Instant) -> f64 {
        self.cost * weight_of_past(now.saturating_duration_since(self.at))
    }
}

/// How much of an estimate survives `elapsed`: e^(-elapsed/DECAY).
fn weight_of_past(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / decay().as_secs_f64()).exp()
}

impl EndpointState {
    pub fn new(addr: SocketAddr) -> Self {
        EndpointState {
            addr,
            in_flight: AtomicU32::new(0),
            ewma: Mutex::new(Ewma {
                cost: default_rtt().as_nanos() as f64,
                at: Instant::now(),
            }),
        }
    }

    /// Requests sent to the endpoint that have no response yet.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Peak-EWMA load: the latency estimate times (requests in flight + 1).
    fn load(&self, now: Instant) -> f64 {
        let cost = self.ewma.lock().expect("ewma lock").decayed(now);
        cost * f64::from(self.in_flight() + 1)
    }

    fn observe(&self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let mut e = self.ewma.lock().expect("ewma lock");
        let current = e.decayed(now);
        e.cost = if rtt > current {
            rtt
        } else {
            let w = weight_of_past(now.saturating_duration_since(e.at));
            e.cost * w + rtt * (1.0 - w)
        };
        e.at = now;
    }

    /// Counts a request as in flight until the returned guard is finished or dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            ep: self.clone(),
            start: Instant::now(),
        }
    }
}

/// A request in flight to an endpoint. Dropped without an outcome (the caller went away) it
/// teaches the estimate nothing.
#[derive(Debug)]
pub struct InFlight {
    ep: Arc<EndpointState>,
    start: Instant,
}

impl InFlight {
    /// The response's head arrived: its latency feeds the estimate.
    pub fn responded(self) {
        let now = Instant::now();
        self.ep.observe(now - self.start, now);
    }

    /// No response (connect failure, reset, timeout): counted as a slow one.
    pub fn failed(self) {
        let now = Instant::now();
        self.ep
            .observe((now - self.start).max(FAILURE_PENALTY), now);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.ep.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A cluster's balancer, compiled with its endpoints.
#[derive(Debug)]
pub enum Balancer {
    P2cEwma,
    LeastRequest,
    Random,
    RoundRobin {
        /// Endpoint indexes in smooth-weighted-round-robin order.
        schedule: Box<[u32]>,
        next: AtomicUsize,
    },
    RingHash {
        /// (point, endpoint index), sorted by point.
        ring: Box<[(u64, u32)]>,
    },
}

impl Balancer {
    /// The balancer for `policy` over `endpoints` (each entry's weight as in the split).
    pub fn new<T>(
        policy: LbPolicy,
        endpoints: &WeightedSplit<T>,
        key: impl Fn(&T) -> String,
    ) -> Self {
        match policy {
            LbPolicy::P2cEwma => Balancer::P2cEwma,
            LbPolicy::LeastRequest => Balancer::LeastRequest,
            LbPolicy::Random => Balancer::Random,
            LbPolicy::RoundRobin => Balancer::RoundRobin {
                schedule: smooth_schedule(&weights(endpoints)),
                // Proxies started together should not all begin with the same endpoint.
                next: AtomicUsize::new(fastrand::usize(..)),
            },
            LbPolicy::RingHash => Balancer::RingHash {
                ring: ring(
                    &weights(endpoints),
                    &endpoints.iter().map(key).collect::<Vec<_>>(),
                ),
            },
        }
    }

    /// The index (into `endpoints`) of the endpoint for a request; `hash` is the request's
    /// hash key, when the route has one and the request carries it.
    pub fn pick<T>(
        &self,
        endpoints: &WeightedSplit<T>,
        state: impl Fn(&T) -> &EndpointState,
        hash: Option<u64>,
    ) -> Option<usize> {
        let n = endpoints.len();
        if n <= 1 {
            return (n == 1).then_some(0);
        }
        match self {
            Balancer::Random => endpoints.pick_index(fastrand::u64(..)),
            Balancer::RoundRobin { schedule, next } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % schedule.len();
                Some(schedule[i] as usize)
            }
            Balancer::RingHash { ring } => match hash {
                Some(h) => ring_lookup(ring, h),
                None => endpoints.pick_index(fastrand::u64(..)),
            },
            Balancer::P2cEwma | Balancer::LeastRequest => {
                let a = endpoints.pick_index(fastrand::u64(..))?;
                // A second, different candidate (a few draws: weights may favour `a` heavily).
                let b = (0..4)
                    .filter_map(|_| endpoints.pick_index(fastrand::u64(..)))
                    .find(|b| *b != a)
                    .unwrap_or((a + 1) % n);
                let now = Instant::now();
                let load = |i: usize| {
                    let s = state(endpoints.get(i).expect("index in range"));
                    let l = match self {
                        Balancer::P2cEwma => s.load(now),
                        _ => f64::from(s.in_flight() + 1),
                    };
                    l / endpoints.weight_at(i).max(1) as f64
                };
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }
}

fn weights<T>(s: &WeightedSplit<T>) -> Vec<u64> {
    s.weighted().map(|(w, _)| w).collect()
}

/// Smooth weighted round robin (as nginx's): the order in which each of `weights`' indexes
/// comes up, spread evenly, over one period of the weights' sum (weights scaled down to
/// [`SCHEDULE_MAX`] first).
fn smooth_schedule(weights: &[u64]) -> Box<[u32]> {
    if weights.is_empty() {
        return Box::new([]);
    }
    let gcd = weights.iter().copied().fold(0, gcd);
    let mut w: Vec<u64> = weights.iter().map(|x| x / gcd.max(1)).collect();
    let total: u64 = w.iter().sum();
    if total > SCHEDULE_MAX {
        for x in &mut w {
            *x = (*x * SCHEDULE_MAX / total).max(1);
        }
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, x) in current.iter_mut().zip(&w) {
            *c += *x as i64;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .expect("not empty");
        current[best] -= total;
        out.push(best as u32);
    }
    out.into()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A 64-bit hash with good spread and no per-process seed: every proxy builds the same ring
/// and maps a key to the same point (FNV-1a, then MurmurHash3's finaliser).
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The ring: each endpoint gets points in proportion to its weight, at hashes of its key
/// (its address) and the point's number.
fn ring(weights: &[u64], keys: &[String]) -> Box<[(u64, u32)]> {
    let Some(min) = weights.iter().copied().filter(|w| *w > 0).min() else {
        return Box::new([]);
    };
    let total_units: u64 = weights.iter().map(|w| w.div_ceil(min)).sum();
    let per_unit = (RING_MAX_POINTS / total_units.max(1)).clamp(1, RING_POINTS_PER_WEIGHT);
    let mut ring = Vec::new();
    for (i, (w, key)) in weights.iter().zip(keys).enumerate() {
        let points = w.div_ceil(min) * per_unit;
        for p in 0..points {
            ring.push((hash64(format!("{key}#{p}").as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring.into()
}

fn ring_lookup(ring: &[(u64, u32)], h: u64) -> Option<usize> {
    if ring.is_empty() {
        return None;
    }
    let i = ring.partition_point(|(p, _)| *p < h);
    Some(ring[i % ring.len()].1 as usize)
}

#[cfg(test)]
mod tests;
