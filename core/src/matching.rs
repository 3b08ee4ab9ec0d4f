//! Regexes as routes use them: matched against a whole value (as Envoy's `safe_regex` is),
//! within a bound on the compiled program, because the proxy runs them on every request. One
//! implementation, so the control plane refuses exactly the patterns every proxy would.

use regex::{Regex, RegexBuilder};

/// The largest compiled program a route's regex may have, in bytes (as Envoy bounds RE2's
/// program size). A Unicode class such as `\w` costs about 50 KiB: `\w{42}` is over.
pub const MAX_REGEX_SIZE: usize = 2 * 1024 * 1024;

/// Why a route's regex was refused.
#[derive(Debug, Clone)]
pub enum RegexError {
    /// Compiled, it is over [`MAX_REGEX_SIZE`].
    TooBig,
    /// It is not a regex.
    Invalid(regex::Error),
}

impl std::fmt::Display for RegexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegexError::TooBig => write!(
                f,
                "invalid regex: compiled, it is larger than the size limit of {} MiB (it runs on every request): simplify it",
                MAX_REGEX_SIZE >> 20
            ),
            RegexError::Invalid(e) => write!(f, "invalid regex: {e}"),
        }
    }
}

impl std::error::Error for RegexError {}

/// Compiles `pattern` to match whole values; the error says what is wrong with it.
pub fn whole_value_regex(pattern: &str) -> Result<Regex, RegexError> {
    bounded_regex(&format!("^(?:{pattern})$"))
}

/// Compiles `pattern` as it is (a rewrite's, which finds matches within a value), within the
/// same bound.
pub fn bounded_regex(pattern: &str) -> Result<Regex, RegexError> {
    RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_SIZE)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => RegexError::TooBig,
            e => RegexError::Invalid(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_values_within_the_bound() {
        let r = whole_value_regex("/users/[0-9]+").unwrap();
        assert!(r.is_match("/users/42"));
        assert!(!r.is_match("/users/42/x"), "the whole value must match");
        assert!(whole_value_regex(r"\w{41}").is_ok());
        let err = whole_value_regex(r"\w{60}").unwrap_err();
        assert!(matches!(err, RegexError::TooBig));
        assert!(err.to_string().contains("size limit of 2 MiB"), "{err}");
        let err = whole_value_regex("(").unwrap_err();
        assert!(matches!(err, RegexError::Invalid(_)));
        assert!(err.to_string().starts_with("invalid regex: "), "{err}");
    }
}
