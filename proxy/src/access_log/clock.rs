//! The wall-clock time a request starts at, from the monotonic time the request path has
//! already read: reading the system clock costs about as much again on a virtual machine, and
//! an entry (and its span) needs both. Each thread keeps one reading of both clocks and reads
//! them again once its reading is a second old, so a step of the wall clock (NTP, an
//! operator) shows within a second; between readings the two clocks advance at the same rate
//! (NTP slews both alike).

use std::{
    cell::Cell,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

/// How long a thread's reading of both clocks is used.
const REREAD: Duration = Duration::from_secs(1);

thread_local! {
    /// The last reading: the monotonic time and the Unix time in nanoseconds at that moment.
    static READING: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
}

/// Nanoseconds since the Unix epoch at `now` (a monotonic time just read).
pub fn unix_nanos(now: Instant) -> u64 {
    READING.with(|r| {
        let (at, wall) = match r.get() {
            Some((at, wall)) if now.saturating_duration_since(at) < REREAD => (at, wall),
            _ => {
                let reading = (Instant::now(), system_nanos());
                r.set(Some(reading));
                reading
            }
        };
        if now >= at {
            wall.saturating_add((now - at).as_nanos() as u64)
        } else {
            wall.saturating_sub((at - now).as_nanos() as u64)
        }
    })
}

fn system_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_time_of_a_monotonic_time_is_the_system_clocks_within_a_millisecond() {
        let now = Instant::now();
        let system = system_nanos();
        let wall = unix_nanos(now);
        assert!(system.abs_diff(wall) < 1_000_000, "{system} vs {wall}");
        // A time past the reading's second: read again, and still the system clock's.
        let later = now + Duration::from_secs(2);
        let wall = unix_nanos(later);
        let system = system_nanos() + 2_000_000_000;
        assert!(system.abs_diff(wall) < 1_000_000, "{system} vs {wall}");
        // Monotonic times a moment apart are as far apart on the wall, before the reading too.
        let b = Instant::now();
        let a = b - Duration::from_millis(250);
        assert_eq!(unix_nanos(b) - unix_nanos(a), 250_000_000);
    }
}
