//! Outlier detection's settings, compiled, with weft's defaults. (Its state is each endpoint's
//! `EndpointState`: `record` and `eject` in `balance.rs`.)

use std::time::Duration;

use weft_core::policy::OutlierDetection;

pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
pub const DEFAULT_FAILURE_RATE_MINIMUM: u32 = 10;
pub const DEFAULT_FAILURE_RATE_WINDOW: Duration = Duration::from_secs(10);
pub const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;

/// A cluster's outlier detection, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Outlier {
    pub consecutive_5xx: u32,
    pub consecutive_gateway: Option<u32>,
    /// (threshold percent, minimum calls, window).
    pub failure_rate: Option<(u32, u32, Duration)>,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
}

impl Outlier {
    pub fn compile(o: &OutlierDetection) -> Outlier {
        let base = o.base_ejection_time.unwrap_or(DEFAULT_BASE_EJECTION);
        Outlier {
            consecutive_5xx: o.consecutive_5xx.unwrap_or(DEFAULT_CONSECUTIVE_5XX),
            consecutive_gateway: o.consecutive_gateway_errors,
            failure_rate: o.failure_rate.as_ref().map(|f| {
                (
                    f.threshold_percent,
                    f.minimum_requests
                        .unwrap_or(DEFAULT_FAILURE_RATE_MINIMUM)
                        .max(1),
                    f.window
                        .or(o.interval)
                        .unwrap_or(DEFAULT_FAILURE_RATE_WINDOW),
                )
            }),
            base_ejection: base,
            max_ejection: o
                .max_ejection_time
                .unwrap_or(DEFAULT_MAX_EJECTION)
                .max(base),
            max_ejection_percent: o
                .max_ejection_percent
                .unwrap_or(DEFAULT_MAX_EJECTION_PERCENT),
        }
    }
}
