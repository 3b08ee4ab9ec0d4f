//! Exponential backoff, the one way weft waits before trying again (retries, reconnects,
//! certificate renewal, DNS re-resolution): the ceiling of attempt `n` (0 for the first) is
//! `base × 2^n`, capped at `max`; the wait is that ceiling or, with full jitter, a uniformly
//! random share of it, so that clients that failed together do not come back together.

use std::time::Duration;

/// `base × 2^n`, at most `max`, for any `n` (no overflow).
pub fn ceiling(base: Duration, max: Duration, n: u32) -> Duration {
    1u32.checked_shl(n)
        .and_then(|m| base.checked_mul(m))
        .map_or(max, |d| d.min(max))
}

/// Full jitter: the share `unit` (a draw in [0, 1)) of the ceiling of attempt `n`.
pub fn full_jitter(base: Duration, max: Duration, n: u32, unit: f64) -> Duration {
    ceiling(base, max, n).mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_up_to_the_cap_for_any_attempt() {
        let (base, max) = (Duration::from_millis(25), Duration::from_secs(1));
        let got: Vec<_> = (0..8).map(|n| ceiling(base, max, n).as_millis()).collect();
        assert_eq!(got, [25, 50, 100, 200, 400, 800, 1000, 1000]);
        for n in [31, 32, 64, u32::MAX] {
            assert_eq!(ceiling(base, max, n), max, "attempt {n}");
        }
        assert_eq!(ceiling(Duration::MAX, max, 3), max);
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(30));
        assert_eq!(full_jitter(base, max, 2, 0.0), Duration::ZERO);
        assert_eq!(full_jitter(base, max, 2, 0.5), Duration::from_millis(200));
        assert_eq!(
            full_jitter(base, max, 2, 7.0),
            Duration::from_millis(400),
            "clamped"
        );
    }
}
