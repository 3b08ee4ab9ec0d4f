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
        let reading = r.get();
        // The usual case: a reading from less than a second before `now` (one subtraction).
        if let Some((at, wall)) = reading
            && let Some(since) = now.checked_duration_since(at)
            && since < REREAD
        {
            return wall.saturating_add(since.as_nanos() as u64);
        }
        let (at, wall) = match reading {
            // `now` was read before the reading (on this thread): as far before on the wall.
            Some((at, wall)) if now < at => (at, wall),
            _ => {
                let fresh = (Instant::now(), system_nanos());
                r.set(Some(fresh));
                fresh
            }
        };
        match now.checked_duration_since(at) {
            Some(since) => wall.saturating_add(since.as_nanos() as u64),
            None => wall.saturating_sub((at - now).as_nanos() as u64),
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
    fn the_wall_time_of_a_monotonic_time_is_the_system_clocks() {
        // Within 5 ms: the two clocks are read one after the other, on a busy machine.
        let now = Instant::now();
        let system = system_nanos();
        let wall = unix_nanos(now);
        assert!(system.abs_diff(wall) < 5_000_000, "{system} vs {wall}");
        // Monotonic times a moment apart are as far apart on the wall, before the reading too.
        let a = now - Duration::from_millis(250);
        assert_eq!(unix_nanos(now) - unix_nanos(a), 250_000_000);
    }

    #[test]
    fn a_reading_older_than_a_second_is_renewed() {
        let now = Instant::now();
        unix_nanos(now);
        let first = READING.with(|r| r.get()).expect("a reading").0;
        unix_nanos(now + Duration::from_millis(500));
        assert_eq!(READING.with(|r| r.get()).unwrap().0, first, "still fresh");
        unix_nanos(now + Duration::from_secs(2));
        assert_ne!(READING.with(|r| r.get()).unwrap().0, first, "read again");
    }
}
