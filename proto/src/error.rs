//! Stable error codes carried in `err` responses.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A stable, documented error code. The wire carries it as a lowercase string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed: undecodable CBOR, a missing or mistyped field, a bad value.
    BadRequest,
    /// `hello` asked for a protocol version the server does not speak.
    UnsupportedVersion,
    /// The `op` is not one the server knows.
    UnknownOp,
    /// The caller's uid/gid has no role that allows this op on this key.
    PermissionDenied,
    /// No such key or key version.
    NotFound,
    /// A key with that name already exists.
    AlreadyExists,
    /// The key's current version has expired and automatic rotation is off.
    KeyExpired,
    /// The key version is retired or destroyed: it can no longer be used for this op.
    KeyRetired,
    /// The key's kind does not support this op (e.g. decrypt with a signing key).
    WrongKind,
    /// Authentication or decryption failed: tampered data, wrong key, bad padding.
    Integrity,
    /// The TPM or HSM cannot be reached now; retry later.
    BackendUnavailable,
    /// The connection limit was reached; retry later.
    Busy,
    /// The frame (request or response) is larger than the frame limit.
    TooLarge,
    /// An unexpected server-side failure; the message says what.
    Internal,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BadRequest,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownOp,
        ErrorCode::PermissionDenied,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::KeyExpired,
        ErrorCode::KeyRetired,
        ErrorCode::WrongKind,
        ErrorCode::Integrity,
        ErrorCode::BackendUnavailable,
        ErrorCode::Busy,
        ErrorCode::TooLarge,
        ErrorCode::Internal,
    ];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::KeyExpired => "key_expired",
            ErrorCode::KeyRetired => "key_retired",
            ErrorCode::WrongKind => "wrong_kind",
            ErrorCode::Integrity => "integrity",
            ErrorCode::BackendUnavailable => "backend_unavailable",
            ErrorCode::Busy => "busy",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Internal => "internal",
        }
    }

    /// Parses a wire string; `None` for a code this version does not know.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `err` member of a response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[error("{code}: {message}")]
pub struct WireError {
    /// One of the [`ErrorCode`] strings (clients must tolerate unknown ones).
    pub code: String,
    /// One line for humans; never key material or plaintext.
    pub message: String,
}

impl WireError {
    /// Builds an error from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code: code.as_str().to_owned(),
            message: message.into(),
        }
    }

    /// The code as an enum, if known.
    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::parse(&self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            assert!(seen.insert(c.as_str()));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }
}
