//! One error type for the core, carrying a stable code that survives the
//! wire: clients tell a disclosure refusal from a data error, a policy
//! refusal or an unavailable node by the code, never by the text.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A released value would rest on too few patients.
    Disclosure,
    /// Data could not be read or does not match the dictionary.
    Data,
    /// Not permitted: membership, allowlist, analysis or variable.
    Policy,
    /// Too few nodes reachable or answering in time.
    Unavailable,
    /// The request is malformed or names unknown things.
    Invalid,
    /// Something that should not happen; a bug or an environment fault.
    Internal,
    /// The thing asked for does not exist.
    NotFound,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Disclosure => "disclosure",
            ErrorCode::Data => "data",
            ErrorCode::Policy => "policy",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Internal => "internal",
            ErrorCode::NotFound => "not_found",
        }
    }

    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::Disclosure,
        ErrorCode::Data,
        ErrorCode::Policy,
        ErrorCode::Unavailable,
        ErrorCode::Invalid,
        ErrorCode::Internal,
        ErrorCode::NotFound,
    ];

    /// The code whose [`as_str`](Self::as_str) is `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with its class. Messages are lowercase, say what is wrong and
/// what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, message)
    }
    pub fn policy(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Policy, message)
    }
    pub fn disclosure(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Disclosure, message)
    }
    pub fn data(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Data, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn codes_round_trip_through_their_names() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(ErrorCode::parse("teapot"), None);
    }
}
