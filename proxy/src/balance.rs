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
//! Per-endpoint state (latency estimate, requests in flight, outlier detection) is kept by
//! address and carried from the table in force into the next one, so a table swap does not
//! reset it.
//!
//! Outlier detection (per cluster, off unless configured) ejects an endpoint after
//! consecutive 5xx responses or gateway errors, or when its failures reach a share of its
//! recent calls; the balancers then skip it. An ejection lasts the base ejection time, doubled
//! for each ejection that follows too soon on the last, up to a maximum. When it runs out the
//! endpoint is on probation: its next outcome decides whether it stays or goes straight back
//! out. At most a share of a cluster is ejected at once, and below the panic threshold of
//! endpoints in service ejections are ignored: every endpoint takes traffic again.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

mod outlier;
mod schedule;

pub use outlier::*;

pub use schedule::hash64;
use schedule::{ring, ring_lookup, smooth_schedule};
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
pub(crate) const RING_MAX_POINTS: u64 = 64 * 1024;
/// The longest smooth-round-robin schedule (or four slots an endpoint, if more); heavier
/// weights are scaled down to fit.
pub(crate) const SCHEDULE_MAX: u64 = 4096;

/// What the balancer knows of one endpoint; shared by every cluster that has it and kept
/// across table swaps.
#[derive(Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    in_flight: AtomicU32,
    ewma: Mutex<Ewma>,
    /// While ejected: until when ([`now_ms`]); 0 when in service.
    ejected_until: AtomicU64,
    outlier: Mutex<OutlierState>,
}

/// What outlier detection has seen of an endpoint.
#[derive(Debug, Default)]
struct OutlierState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    /// Recent outcomes (when, failed), newest last, at most the failure rate's minimum.
    recent: VecDeque<(u64, bool)>,
    /// Ejections in a row, each following too soon on the last.
    ejections: u32,
    /// The last ejection's length and when it ended (`now_ms`).
    last_ejection: Duration,
    returned_at: u64,
    /// Back from an ejection: the next outcome decides.
    probation: bool,
}

/// Milliseconds on tokio's clock since a fixed origin (paused time in tests moves it). The
/// origin is a day before the first call: each test runtime's clock starts at the moment the
/// runtime was made, and one made before the first call must not read 0 for its first day.
pub fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now)
    });
    // Never 0, which means "not ejected".
    Instant::now().saturating_duration_since(origin).as_millis() as u64 + 1
}

/// How a request to an endpoint ended, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx response other than 502, 503 and 504.
    ServerError,
    /// 502, 503, 504, or no response at all (connect failure, reset, timeout).
    GatewayError,
}

impl Outcome {
    pub fn of_status(status: u16) -> Outcome {
        match status {
            502..=504 => Outcome::GatewayError,
            500..=599 => Outcome::ServerError,
            _ => Outcome::Success,
        }
    }

    /// A gRPC response's outcome: by its HTTP status, else by the `grpc-status` of a
    /// trailers-only response, read as the HTTP status it stands for (as Envoy maps them):
    /// UNAVAILABLE a 503 and DEADLINE_EXCEEDED a 504 (gateway errors: a sidecar whose
    /// application is down answers UNAVAILABLE at once, which must not look like a fast,
    /// healthy endpoint), UNKNOWN, INTERNAL and DATA_LOSS a 500.
    /// `grpc_status` is the response headers' `grpc-status`, if any.
    pub fn of_grpc(status: u16, grpc_status: Option<u32>) -> Outcome {
        let by_status = Outcome::of_status(status);
        if by_status != Outcome::Success {
            return by_status;
        }
        match grpc_status {
            Some(4 | 14) => Outcome::GatewayError,
            Some(2 | 13 | 15) => Outcome::ServerError,
            _ => Outcome::Success,
        }
    }
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
            ejected_until: AtomicU64::new(0),
            outlier: Mutex::default(),
        }
    }

    /// Whether the endpoint is ejected at `now` ([`now_ms`]).
    pub fn ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now < until
    }

    /// Ends an ejection that has run out, putting the endpoint on probation; true if this
    /// call ended it (the caller counts it back in service).
    pub fn return_if_due(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 || now < until {
            return false;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        let mut o = self.outlier.lock().expect("outlier lock");
        o.probation = true;
        o.returned_at = now;
        true
    }

    /// Records an outcome; true when it calls for an ejection (the caller checks the cluster's
    /// share of ejected endpoints, then calls [`EndpointState::eject`]).
    pub fn record(&self, outcome: Outcome, cfg: &Outlier, now: u64) -> bool {
        if self.ejected(now) {
            return false;
        }
        let mut o = self.outlier.lock().expect("outlier lock");
        let failed = outcome != Outcome::Success;
        if o.probation {
            o.probation = false;
            if failed {
                return true;
            }
        }
        match outcome {
            Outcome::Success => {
                o.consecutive_5xx = 0;
                o.consecutive_gateway = 0;
            }
            Outcome::ServerError => {
                o.consecutive_5xx += 1;
                o.consecutive_gateway = 0;
            }
            Outcome::GatewayError => {
                o.consecutive_5xx += 1;
                o.consecutive_gateway += 1;
            }
        }
        if o.consecutive_5xx >= cfg.consecutive_5xx {
            return true;
        }
        if cfg
            .consecutive_gateway
            .is_some_and(|n| o.consecutive_gateway >= n)
        {
            return true;
        }
        if let Some((threshold, minimum, window)) = cfg.failure_rate {
            let horizon = now.saturating_sub(window.as_millis() as u64);
            while o.recent.front().is_some_and(|(at, _)| *at < horizon) {
                o.recent.pop_front();
            }
            if o.recent.len() >= minimum as usize {
                o.recent.pop_front();
            }
            o.recent.push_back((now, failed));
            let failures = o.recent.iter().filter(|(_, f)| *f).count() as u64;
            if o.recent.len() >= minimum as usize
                && failures * 100 >= u64::from(threshold) * o.recent.len() as u64
            {
                return true;
            }
        }
        false
    }

    /// Ejects the endpoint; returns for how long. The time doubles with each ejection that
    /// comes before the endpoint has stayed in service as long as it was last out.
    pub fn eject(&self, cfg: &Outlier, now: u64) -> Duration {
        let mut o = self.outlier.lock().expect("outlier lock");
        let stayed = Duration::from_millis(now.saturating_sub(o.returned_at));
        o.ejections = if o.ejections > 0 && stayed <= o.last_ejection.max(cfg.base_ejection) {
            o.ejections + 1
        } else {
            1
        };
        let factor = 1u32.checked_shl(o.ejections - 1).unwrap_or(u32::MAX);
        let time = cfg
            .base_ejection
            .checked_mul(factor)
            .unwrap_or(cfg.max_ejection)
            .min(cfg.max_ejection);
        o.last_ejection = time;
        o.consecutive_5xx = 0;
        o.consecutive_gateway = 0;
        o.recent.clear();
        o.probation = false;
        self.ejected_until
            .store(now + time.as_millis() as u64, Ordering::Relaxed);
        time
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

#[cfg(test)]
mod tests;
