//! Durations as operators write them: `250ms`, `10s`, `2m`, `1h` (a bare number is
//! seconds). Used by the proxy's flags and table file and by traffic policies.

use std::time::Duration;

use serde::{Deserializer, Serializer};

/// Ten years: longer than any timeout means, and still representable as a deadline.
const MAX_SECS: f64 = 10.0 * 365.0 * 86400.0;
/// The longest duration weft takes from any configuration (flags, the table file, policies,
/// xDS); a longer one is this.
pub const MAX: Duration = Duration::from_secs(10 * 365 * 86400);

/// `d`, at most [`MAX`]: no deadline computed from a configured duration can overflow.
pub fn clamp(d: Duration) -> Duration {
    d.min(MAX)
}

pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a duration such as 250ms, 10s or 2m"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    if !secs.is_finite() || !(0.0..=MAX_SECS).contains(&secs) {
        return Err(format!("`{s}`: out of range (at most 10 years)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Writes a duration back in the shortest exact unit.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// `#[serde(with = "weft_core::duration::opt")]` for `Option<Duration>` fields: a string
/// (`250ms`) or a bare number of seconds; errors point at the value itself.
pub mod opt {
    use std::fmt;

    use serde::de::{self, Visitor};

    use super::*;

    struct DurationVisitor;

    impl<'de> Visitor<'de> for DurationVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as 250ms, 10s or 2m")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            parse(s).map(Some).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
            self.visit_str(&n.to_string())
        }

        fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
            self.visit_str(&n.to_string())
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(DurationVisitor)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_option(DurationVisitor)
    }

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&format(*d)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert!(parse("5 fortnights").unwrap_err().contains("unknown unit"));
        assert!(parse("1e30h").unwrap_err().contains("unknown unit `e30h`"));
        assert!(parse("h").unwrap_err().contains("expected a duration"));
        assert!(parse("9999999999h").unwrap_err().contains("out of range"));
        for s in ["250ms", "1500ms", "2m", "1h", "0s", "90s"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
