//! What protects a route and its backend besides retries, compiled: local rate limits (token
//! buckets), fault injection, and the circuit breaker's limits (connections, pending requests,
//! requests, retries) with the permits that hold them. Their state (a bucket's tokens, a
//! breaker's counts) is carried from the table in force into the next one by name, so a policy
//! push does not reset it. (Outlier detection is the balancer's: `balance.rs`.)

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use http::StatusCode;
use tokio::time::Instant;
use weft_core::policy::{self, check::Problem};

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug)]
pub struct TokenBucket {
    pub rate: f64,
    pub burst: u32,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32) -> Self {
        TokenBucket {
            rate,
            burst,
            state: Mutex::new((f64::from(burst), Instant::now())),
        }
    }

    pub fn from_policy(p: &policy::RateLimit) -> Self {
        TokenBucket::new(
            f64::from(p.requests_per_second),
            p.burst.unwrap_or(p.requests_per_second),
        )
    }

    pub fn same(&self, other: &TokenBucket) -> bool {
        self.rate == other.rate && self.burst == other.burst
    }

    /// Takes a token, if there is one.
    pub fn take(&self) -> bool {
        self.take_at(Instant::now())
    }

    /// [`TokenBucket::take`], at `now` (a time the caller has just read).
    pub fn take_at(&self, now: Instant) -> bool {
        let mut s = self.state.lock().expect("bucket lock");
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate).min(f64::from(self.burst));
        // A time read before another thread's (`take_at`) never moves the bucket's back.
        s.1 = s.1.max(now);
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A route's fault injection: a fixed delay and an abort, each for a share of requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub delay: Option<(f64, Duration)>,
    pub abort: Option<(f64, Abort)>,
}

/// What an injected abort answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Abort {
    Http(StatusCode),
    Grpc(u32),
}

impl Fault {
    /// Compiles a fault, checked as the control plane checks it; the error names the field.
    pub fn compile(f: &policy::Fault) -> Result<Fault, Problem> {
        if let Some(problem) = f.problems().into_iter().next() {
            return Err(problem);
        }
        let delay = f.delay.as_ref().and_then(|d| Some((d.percent, d.fixed?)));
        let abort = match &f.abort {
            Some(a) => {
                let what = match (a.http_status, a.grpc_status) {
                    (Some(h), _) => Abort::Http(
                        StatusCode::from_u16(h)
                            .map_err(|e| Problem::new("abort.httpStatus", format!("{h}: {e}")))?,
                    ),
                    (None, Some(g)) => Abort::Grpc(g),
                    (None, None) => return Err(Problem::new("abort", "an abort needs a status")),
                };
                Some((a.percent, what))
            }
            None => None,
        };
        Ok(Fault { delay, abort })
    }
}

/// `p` if it is a percentage, else an error that says it is not.
pub use weft_core::policy::check::percent as check_percent;

/// Whether a draw falls within `percent`.
pub fn chance(percent: f64) -> bool {
    percent >= 100.0 || fastrand::f64() * 100.0 < percent
}

/// Which of a cluster's limits a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Connections,
    Pending,
    Requests,
    Retries,
}

pub const LIMITS: [&str; 4] = ["connections", "pending", "requests", "retries"];

impl Limit {
    pub fn as_str(self) -> &'static str {
        LIMITS[self as usize]
    }
}

/// The `maxPendingRequests` of a cluster that sets none (Envoy's default): requests waiting
/// for room at an endpoint beyond it fail at once, so a burst cannot queue without bound.
/// The other limits have no default.
pub const DEFAULT_MAX_PENDING_REQUESTS: u32 = 1024;

/// A cluster's circuit-breaker limits and what is in use of each.
#[derive(Debug, Clone)]
pub struct Breaker {
    /// In [`Limit`]'s order; `u32::MAX` for no limit.
    max: [u32; 4],
    used: Arc<[AtomicU32; 4]>,
}

impl Breaker {
    pub fn new(p: &policy::CircuitBreaker, previous: Option<&Breaker>) -> Self {
        let m = |v: Option<u32>| v.unwrap_or(u32::MAX);
        Breaker {
            max: [
                m(p.max_connections),
                p.max_pending_requests
                    .unwrap_or(DEFAULT_MAX_PENDING_REQUESTS),
                m(p.max_requests),
                m(p.max_retries),
            ],
            used: previous.map_or_else(Default::default, |b| b.used.clone()),
        }
    }

    /// Whether `limit` has a maximum (one without is not counted at all).
    pub fn limits(&self, limit: Limit) -> bool {
        self.max[limit as usize] != u32::MAX
    }

    /// One more in use of `limit`, unless it is at its maximum.
    pub fn acquire(&self, limit: Limit) -> Option<Permit> {
        let i = limit as usize;
        let max = self.max[i];
        self.used[i]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                used: self.used.clone(),
                i,
            })
    }

    pub fn in_use(&self, limit: Limit) -> u32 {
        self.used[limit as usize].load(Ordering::Relaxed)
    }
}

/// A request turned away at a cluster's limit.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cluster {cluster}: {} limit reached", limit.as_str())]
pub struct OverLimit {
    pub cluster: Arc<str>,
    pub limit: Limit,
}

/// One unit of a limit in use, given back when dropped.
#[derive(Debug)]
pub struct Permit {
    used: Arc<[AtomicU32; 4]>,
    i: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.used[self.i].fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests;
