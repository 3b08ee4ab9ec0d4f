//! Retries, compiled: which outcomes a route retries (its conditions, the upstream's pushback),
//! how far apart (the one backoff, `weft_core::backoff`), and within what budget. A budget's
//! ledger is carried from the table in force into the next one by name, so a policy push does
//! not reset it. The retry loop itself is `relay/send.rs`; the body kept for another try is
//! `http/replay.rs`. (The rest of a route's protection is [`crate::resilience`].)

use std::{sync::Mutex, time::Duration};

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;
use weft_core::policy::{self, RETRY_CONDITIONS, check::Problem};

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

/// The label of [`Reason::PerTryTimeout`].
const PER_TRY_TIMEOUT: &str = "per-try-timeout";

/// How many reasons there are: the retry conditions, then `per-try-timeout`.
pub const REASON_COUNT: usize = RETRY_CONDITIONS.len() + 1;

impl Reason {
    /// The metric label: the condition's name (the variants up to `Unavailable` are in
    /// [`RETRY_CONDITIONS`]' order), or `per-try-timeout`.
    pub fn as_str(self) -> &'static str {
        RETRY_CONDITIONS
            .get(self as usize)
            .copied()
            .unwrap_or(PER_TRY_TIMEOUT)
    }

    /// Every reason's label, in the variants' order.
    pub fn labels() -> impl Iterator<Item = &'static str> {
        RETRY_CONDITIONS.iter().copied().chain([PER_TRY_TIMEOUT])
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
    /// The least wait before any retry (a Gateway API route's `retry.backoff`).
    pub floor: Duration,
    pub per_try_timeout: Option<Duration>,
}

impl Retry {
    /// Compiles a policy, checked as the control plane checks it (`weft_core::policy::check`);
    /// the error names the field.
    pub fn compile(p: &policy::RetryPolicy) -> Result<Retry, Problem> {
        if let Some(problem) = p.problems().into_iter().next() {
            return Err(problem);
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
            floor: Duration::ZERO,
            per_try_timeout: p.per_try_timeout.filter(|d| !d.is_zero()),
        })
    }

    /// The same policy, never retrying sooner than `floor` after a try.
    pub fn at_least(self, floor: Duration) -> Retry {
        Retry { floor, ..self }
    }

    fn has(&self, r: Reason) -> bool {
        self.on & r.bit() != 0
    }

    /// The wait before retry number `n` (0 for the first): the floor, then full jitter, a
    /// uniform draw (`unit` in [0, 1)) below `base × 2^n`, capped at `max`.
    pub fn backoff(&self, n: u32, unit: f64) -> Duration {
        self.floor + weft_core::backoff::full_jitter(self.base, self.max, n, unit)
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

/// Retries may add at most `ratio` of the requests of the last `BUDGET_WINDOW_SECS` seconds,
/// plus a reserve of `min_per_second` that refills every second (Finagle's and Linkerd's
/// scheme). A fully failing upstream then sees at most (1 + ratio) × the request rate +
/// `min_per_second`.
#[derive(Debug)]
pub struct Budget {
    pub ratio: f64,
    pub min_per_second: u32,
    /// Made on first use: a sidecar holds a budget for every service of the mesh, and calls
    /// few of them. A ledger made later is the one made earlier would be by then (no
    /// requests in its window, its reserve full).
    ledger: std::sync::OnceLock<Box<Mutex<Ledger>>>,
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
        Budget {
            ratio,
            min_per_second,
            ledger: Default::default(),
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        let ledger = self.ledger.get_or_init(|| {
            let now = Instant::now();
            Box::new(Mutex::new(Ledger {
                slots: Default::default(),
                second: 0,
                origin: now,
                reserve: f64::from(self.min_per_second),
                refilled: now,
            }))
        });
        ledger.lock().expect("budget lock")
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
        let mut l = self.ledger();
        self.advance(&mut l, Instant::now());
        let i = (l.second % BUDGET_WINDOW_SECS) as usize;
        l.slots[i].0 = l.slots[i].0.saturating_add(1);
    }

    /// Takes one retry from the budget, if it has one.
    pub fn withdraw(&self) -> bool {
        let mut l = self.ledger();
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

#[cfg(test)]
mod tests;
