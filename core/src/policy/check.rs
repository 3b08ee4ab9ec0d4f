//! The checks both sides make of the traffic settings: the control plane before it accepts a
//! policy, the proxy when it compiles one (from its table file or from xDS). One
//! implementation, so a setting the control plane accepts is one every proxy takes.

use std::fmt;

use super::{DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX, Fault, RETRY_CONDITIONS, RetryPolicy};

/// The most retries a policy may ask for.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

/// What is wrong with a setting: the field, relative to the setting (`delay.percent`; empty
/// for the setting as a whole), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl std::error::Error for Problem {}

impl Problem {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field.as_str() {
            "" => f.write_str(&self.message),
            field => write!(f, "{field}: {}", self.message),
        }
    }
}

/// `p` if it is a percentage, else why not.
pub fn percent(p: f64) -> Result<f64, String> {
    if (0.0..=100.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not a percentage between 0 and 100"))
    }
}

impl RetryPolicy {
    /// Every problem with the policy (none: it is valid).
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Some(n) = self.attempts
            && n > MAX_RETRY_ATTEMPTS
        {
            out.push(Problem::new(
                "attempts",
                format!("{n} retries is more than the limit of {MAX_RETRY_ATTEMPTS}"),
            ));
        }
        // As the proxy reads them: an unset base is the default, an unset max the default or
        // the base, whichever is longer.
        let backoff = self.backoff.as_ref();
        let base = backoff.and_then(|b| b.base).unwrap_or(DEFAULT_BACKOFF_BASE);
        let max = backoff
            .and_then(|b| b.max)
            .unwrap_or(DEFAULT_BACKOFF_MAX.max(base));
        if base.is_zero() {
            out.push(Problem::new("backoff.base", "must be more than 0"));
        } else if max < base {
            out.push(Problem::new(
                "backoff.max",
                format!("{max:?} is less than base {base:?}"),
            ));
        }
        for (i, cond) in self.on.iter().enumerate() {
            if !RETRY_CONDITIONS.contains(&cond.as_str()) {
                out.push(Problem::new(
                    format!("on[{i}]"),
                    format!(
                        "unknown retry condition `{cond}` (known: {})",
                        RETRY_CONDITIONS.join(", ")
                    ),
                ));
            }
        }
        let wants_codes = self.on.iter().any(|o| o == "retriable-status-codes");
        if wants_codes && self.status_codes.is_empty() {
            out.push(Problem::new(
                "statusCodes",
                "`retriable-status-codes` needs at least one status code",
            ));
        }
        if !wants_codes && !self.status_codes.is_empty() {
            out.push(Problem::new(
                "statusCodes",
                "status codes are only used with the `retriable-status-codes` condition",
            ));
        }
        for (i, code) in self.status_codes.iter().enumerate() {
            if !(100..=599).contains(code) {
                out.push(Problem::new(
                    format!("statusCodes[{i}]"),
                    format!("{code} is not an HTTP status"),
                ));
            }
        }
        if let Some(b) = &self.budget
            && let Some(r) = b.ratio
            && !(0.0..=1.0).contains(&r)
        {
            out.push(Problem::new(
                "budget.ratio",
                format!("{r} is not a ratio between 0 and 1 (0.2 means 20%)"),
            ));
        }
        out
    }
}

impl Fault {
    /// Every problem with the fault (none: it is valid).
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Some(d) = &self.delay {
            if let Err(e) = percent(d.percent) {
                out.push(Problem::new("delay.percent", e));
            }
            if d.fixed.is_none() {
                out.push(Problem::new("delay.fixed", "a delay needs its length"));
            }
        }
        if let Some(a) = &self.abort {
            if let Err(e) = percent(a.percent) {
                out.push(Problem::new("abort.percent", e));
            }
            match (a.http_status, a.grpc_status) {
                (Some(s), None) if !(200..=599).contains(&s) => out.push(Problem::new(
                    "abort.httpStatus",
                    format!("{s} is not an HTTP status from 200 to 599"),
                )),
                (None, Some(g)) if !(1..=16).contains(&g) => out.push(Problem::new(
                    "abort.grpcStatus",
                    format!("{g} is not a gRPC error status (1 to 16)"),
                )),
                (Some(_), None) | (None, Some(_)) => {}
                _ => out.push(Problem::new(
                    "abort",
                    "set exactly one of `httpStatus` and `grpcStatus`",
                )),
            }
        }
        out
    }
}

/// Whether a route may not change header `name` (lower case): HTTP/2's pseudo-headers, `host`
/// (the authority routes the request) and the connection's own headers (stripped hop by hop).
pub fn unchangeable_header(name: &str) -> bool {
    name.starts_with(':')
        || matches!(
            name,
            "host"
                | "connection"
                | "keep-alive"
                | "proxy-connection"
                | "transfer-encoding"
                | "upgrade"
                | "te"
                | "trailer"
        )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::{Backoff, FaultAbort, FaultDelay};

    fn fields(p: Vec<Problem>) -> Vec<String> {
        p.into_iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn retry_problems_are_named_as_the_proxy_reads_the_policy() {
        assert!(RetryPolicy::default().problems().is_empty());
        let p = RetryPolicy {
            attempts: Some(11),
            on: vec!["5xx".into(), "sometimes".into()],
            status_codes: vec![700],
            ..Default::default()
        };
        let got = fields(p.problems());
        assert!(got[0].starts_with("attempts: 11 retries"), "{got:?}");
        assert!(
            got[1].starts_with("on[1]: unknown retry condition `sometimes`"),
            "{got:?}"
        );
        assert!(
            got[2].starts_with("statusCodes: status codes are only used"),
            "{got:?}"
        );
        assert!(got[3].starts_with("statusCodes[0]: 700"), "{got:?}");
        // Only a max, below the default base: the proxy would refuse it, so it is a problem.
        let p = RetryPolicy {
            backoff: Some(Backoff {
                base: None,
                max: Some(Duration::from_millis(10)),
            }),
            ..Default::default()
        };
        assert_eq!(
            fields(p.problems()),
            ["backoff.max: 10ms is less than base 25ms"]
        );
    }

    #[test]
    fn fault_problems() {
        let f = Fault {
            delay: Some(FaultDelay {
                percent: 200.0,
                fixed: None,
            }),
            abort: Some(FaultAbort {
                percent: 10.0,
                http_status: Some(503),
                grpc_status: Some(14),
            }),
        };
        assert_eq!(
            fields(f.problems()),
            [
                "delay.percent: 200 is not a percentage between 0 and 100",
                "delay.fixed: a delay needs its length",
                "abort: set exactly one of `httpStatus` and `grpcStatus`",
            ]
        );
    }
}
