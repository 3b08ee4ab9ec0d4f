//! The traffic policies a route or cluster enforces, compiled: retries and their budget, local
//! rate limits, fault injection and circuit-breaker limits. Their state (a budget's ledger, a
//! bucket's tokens, a breaker's counts) is carried from the table in force into the next one
//! by name, so a policy push does not reset it.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;
use weft_core::policy::{self, RETRY_CONDITIONS};

use crate::grpc;

/// Retries after the first try when a policy does not say.
pub const DEFAULT_RETRIES: u32 = policy::DEFAULT_RETRY_ATTEMPTS;
pub use weft_core::policy::{DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX};
/// Retries may add this share of the request rate...
pub const DEFAULT_BUDGET_RATIO: f64 = 0.2;
/// ...plus this many per second.
pub const DEFAULT_BUDGET_MIN_PER_SECOND: u32 = 10;
/// How long a request's deposit into the budget lasts.
const BUDGET_WINDOW_SECS: u64 = 10;
/// The longest `Retry-After` / `grpc-retry-pushback-ms` the proxy waits out; a longer one
/// ends the retries.
pub const MAX_PUSHBACK: Duration = Duration::from_secs(60);

/// Why a try is retried: a condition, or `per-try-timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    ConnectFailure,
    RefusedStream,
    Reset,
    Http5xx,
    GatewayError,
    StatusCode,
    Cancelled,
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    Unavailable,
    PerTryTimeout,
}

/// How many reasons there are: the retry conditions, then `per-try-timeout`.
pub const REASON_COUNT: usize = RETRY_CONDITIONS.len() + 1;

impl Reason {
    /// The metric label: the condition's name (the variants up to `Unavailable` are in
    /// [`RETRY_CONDITIONS`]' order), or `per-try-timeout`.
    pub fn as_str(self) -> &'static str {
        RETRY_CONDITIONS
            .get(self as usize)
            .copied()
            .unwrap_or("per-try-timeout")
    }

    fn bit(self) -> u16 {
        1 << (self as u8)
    }
}

/// A route's retry policy, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Bits of the [`Reason`]s the policy names.
    on: u16,
    status_codes: Box<[u16]>,
    pub retries: u32,
    pub base: Duration,
    pub max: Duration,
    pub per_try_timeout: Option<Duration>,
}

impl Retry {
    /// Compiles a policy, checked as the control plane checks it (`weft_core::policy::check`);
    /// the error names the field.
    pub fn compile(p: &policy::RetryPolicy) -> Result<Retry, String> {
        if let Some(problem) = p.problems().into_iter().next() {
            return Err(problem.to_string());
        }
        let on =
            p.on.iter()
                .filter_map(|cond| RETRY_CONDITIONS.iter().position(|c| c == cond))
                .fold(0, |on, i| on | 1 << i);
        let base = p
            .backoff
            .as_ref()
            .and_then(|b| b.base)
            .unwrap_or(DEFAULT_BACKOFF_BASE);
        let max = p
            .backoff
            .as_ref()
            .and_then(|b| b.max)
            .unwrap_or(DEFAULT_BACKOFF_MAX.max(base));
        Ok(Retry {
            on,
            status_codes: p.status_codes.clone().into(),
            retries: p.attempts.unwrap_or(DEFAULT_RETRIES),
            base,
            max,
            per_try_timeout: p.per_try_timeout.filter(|d| !d.is_zero()),
        })
    }

    fn has(&self, r: Reason) -> bool {
        self.on & r.bit() != 0
    }

    /// The wait before retry number `n` (0 for the first): full jitter, a uniform draw
    /// (`unit` in [0, 1)) below `base × 2^n`, capped at `max`.
    pub fn backoff(&self, n: u32, unit: f64) -> Duration {
        weft_core::backoff::full_jitter(self.base, self.max, n, unit)
    }

    /// Whether a response (its head) is one to retry, and why. A gRPC error only shows in the
    /// head of a trailers-only response; one in trailers comes after the response has begun.
    pub fn response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Reason> {
        if let Some(code) = grpc::status(headers) {
            let r = match code {
                grpc::CANCELLED => Reason::Cancelled,
                grpc::DEADLINE_EXCEEDED => Reason::DeadlineExceeded,
                grpc::RESOURCE_EXHAUSTED => Reason::ResourceExhausted,
                grpc::INTERNAL => Reason::Internal,
                grpc::UNAVAILABLE => Reason::Unavailable,
                _ => return None,
            };
            return self.has(r).then_some(r);
        }
        let s = status.as_u16();
        if self.has(Reason::StatusCode) && self.status_codes.contains(&s) {
            return Some(Reason::StatusCode);
        }
        if self.has(Reason::GatewayError) && matches!(s, 502..=504) {
            return Some(Reason::GatewayError);
        }
        if self.has(Reason::Http5xx) && status.is_server_error() {
            return Some(Reason::Http5xx);
        }
        None
    }

    /// Whether a try that got no response, for `reason` ([`ProxyError::unanswered`]), is one
    /// to retry. As Envoy's, `5xx` covers every failure to get a response, `gateway-error`
    /// the ones a gateway answers with 502, 503 or 504 (connect failures, resets, per-try
    /// timeouts).
    ///
    /// [`ProxyError::unanswered`]: crate::http::error::ProxyError::unanswered
    pub fn failure(&self, reason: Reason) -> Option<Reason> {
        let covered = self.has(reason)
            || self.has(Reason::Http5xx)
            || (self.has(Reason::GatewayError) && reason != Reason::RefusedStream)
            || (reason == Reason::PerTryTimeout && self.has(Reason::Reset));
        covered.then_some(reason)
    }
}

/// How long the upstream asked the caller to wait before trying again, from `Retry-After`
/// (seconds; an HTTP date is treated as no advice) or `grpc-retry-pushback-ms`.
/// `Some(None)`: do not retry (a negative or malformed pushback, as gRPC defines it).
pub fn pushback(headers: &HeaderMap) -> Option<Option<Duration>> {
    if let Some(v) = headers.get("grpc-retry-pushback-ms") {
        return Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(Duration::from_millis),
        );
    }
    let v = headers.get(http::header::RETRY_AFTER)?;
    let secs = v.to_str().ok()?.trim().parse::<u64>().ok()?;
    Some(Some(Duration::from_secs(secs)))
}

/// Retries may add at most `ratio` of the requests of the last [`BUDGET_WINDOW_SECS`] seconds,
/// plus a reserve of `min_per_second` that refills every second (Finagle's and Linkerd's
/// scheme). A fully failing upstream then sees at most (1 + ratio) × the request rate +
/// `min_per_second`.
#[derive(Debug)]
pub struct Budget {
    pub ratio: f64,
    pub min_per_second: u32,
    ledger: Mutex<Ledger>,
}

#[derive(Debug)]
struct Ledger {
    /// Per second of the window: (requests, retries paid for by requests).
    slots: [(u32, u32); BUDGET_WINDOW_SECS as usize],
    /// The second the newest slot counts (since `origin`).
    second: u64,
    origin: Instant,
    /// Tokens of the per-second reserve, and when it was last refilled.
    reserve: f64,
    refilled: Instant,
}

impl Budget {
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        let now = Instant::now();
        Budget {
            ratio,
            min_per_second,
            ledger: Mutex::new(Ledger {
                slots: Default::default(),
                second: 0,
                origin: now,
                reserve: f64::from(min_per_second),
                refilled: now,
            }),
        }
    }

    pub fn from_policy(p: Option<&policy::RetryBudget>) -> Self {
        Budget::new(
            p.and_then(|b| b.ratio).unwrap_or(DEFAULT_BUDGET_RATIO),
            p.and_then(|b| b.min_per_second)
                .unwrap_or(DEFAULT_BUDGET_MIN_PER_SECOND),
        )
    }

    /// The same parameters.
    pub fn same(&self, other: &Budget) -> bool {
        self.ratio == other.ratio && self.min_per_second == other.min_per_second
    }

    fn advance(&self, l: &mut Ledger, now: Instant) {
        let second = now.saturating_duration_since(l.origin).as_secs();
        let gap = second.saturating_sub(l.second);
        for i in 1..=gap.min(BUDGET_WINDOW_SECS) {
            l.slots[((l.second + i) % BUDGET_WINDOW_SECS) as usize] = (0, 0);
        }
        l.second = second;
        let elapsed = now.saturating_duration_since(l.refilled).as_secs_f64();
        let cap = f64::from(self.min_per_second);
        l.reserve = (l.reserve + elapsed * cap).min(cap);
        l.refilled = now;
    }

    /// A request (not a retry) that could be retried: it pays `ratio` into the budget.
    pub fn deposit(&self) {
        let mut l = self.ledger.lock().expect("budget lock");
        self.advance(&mut l, Instant::now());
        let i = (l.second % BUDGET_WINDOW_SECS) as usize;
        l.slots[i].0 = l.slots[i].0.saturating_add(1);
    }

    /// Takes one retry from the budget, if it has one.
    pub fn withdraw(&self) -> bool {
        let mut l = self.ledger.lock().expect("budget lock");
        self.advance(&mut l, Instant::now());
        let (requests, retries) = l.slots.iter().fold((0u64, 0u64), |(a, b), (r, t)| {
            (a + u64::from(*r), b + u64::from(*t))
        });
        if (retries + 1) as f64 <= self.ratio * requests as f64 {
            let i = (l.second % BUDGET_WINDOW_SECS) as usize;
            l.slots[i].1 = l.slots[i].1.saturating_add(1);
            return true;
        }
        if l.reserve >= 1.0 {
            l.reserve -= 1.0;
            return true;
        }
        false
    }
}

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
        let now = Instant::now();
        let mut s = self.state.lock().expect("bucket lock");
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate).min(f64::from(self.burst));
        s.1 = now;
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
    pub fn compile(f: &policy::Fault) -> Result<Fault, String> {
        if let Some(problem) = f.problems().into_iter().next() {
            return Err(problem.to_string());
        }
        let delay = f.delay.as_ref().and_then(|d| Some((d.percent, d.fixed?)));
        let abort = match &f.abort {
            Some(a) => {
                let what = match (a.http_status, a.grpc_status) {
                    (Some(h), _) => {
                        Abort::Http(StatusCode::from_u16(h).map_err(|e| format!("{h}: {e}"))?)
                    }
                    (None, Some(g)) => Abort::Grpc(g),
                    (None, None) => return Err("an abort needs a status".into()),
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
