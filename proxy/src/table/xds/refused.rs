//! Why the proxy refused an xDS resource.

use std::fmt;

use weft_core::{matching::RegexError, policy::check::Problem};

/// Why an xDS resource was refused: what is wrong, and where in the resource it is (outermost
/// part first: `route `api``, `header x-canary`). Its text is what the NACK carries.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The parts of the resource leading to the fault, outermost first.
    pub at: Vec<String>,
    pub reason: Reason,
}

/// What is wrong.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Reason {
    /// A part weft needs is not there.
    #[error("{0}")]
    Missing(&'static str),
    /// A form of xDS weft does not implement.
    #[error("{0}")]
    Unsupported(String),
    /// A value its field does not take.
    #[error("{0}")]
    Invalid(String),
    /// A regex refused (not a regex, or over the size bound).
    #[error("{0}")]
    Regex(#[from] RegexError),
    /// A policy setting refused, as the control plane's checks refuse it.
    #[error("{0}")]
    Policy(#[from] Problem),
}

impl Refused {
    /// The same fault, inside `part`.
    pub fn at(mut self, part: impl Into<String>) -> Self {
        self.at.insert(0, part.into());
        self
    }
}

impl From<Reason> for Refused {
    fn from(reason: Reason) -> Self {
        Refused {
            at: Vec::new(),
            reason,
        }
    }
}

impl From<RegexError> for Refused {
    fn from(e: RegexError) -> Self {
        Reason::Regex(e).into()
    }
}

impl From<Problem> for Refused {
    fn from(e: Problem) -> Self {
        Reason::Policy(e).into()
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.at {
            write!(f, "{part}: ")?;
        }
        self.reason.fmt(f)
    }
}

impl std::error::Error for Refused {}

/// A part weft needs is not there.
pub(super) fn missing(what: &'static str) -> Refused {
    Reason::Missing(what).into()
}

/// A form of xDS weft does not implement.
pub(super) fn unsupported(what: impl Into<String>) -> Refused {
    Reason::Unsupported(what.into()).into()
}

/// A value its field does not take.
pub(super) fn invalid(what: impl Into<String>) -> Refused {
    Reason::Invalid(what.into()).into()
}
