//! The error every operation returns, mapped one-to-one onto a wire error code.

use custody_proto::{ErrorCode, WireError};

use crate::backend::BackendError;

/// An operation failure: a stable code and a message safe to show the caller.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct OpError {
    /// Wire code.
    pub code: ErrorCode,
    /// One line, never secret material.
    pub message: String,
}

impl OpError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        OpError {
            code,
            message: message.into(),
        }
    }

    /// `bad_request` with a message.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// `internal` with a message.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl From<OpError> for WireError {
    fn from(e: OpError) -> Self {
        WireError::new(e.code, e.message)
    }
}

impl From<WireError> for OpError {
    fn from(e: WireError) -> Self {
        OpError::new(e.code().unwrap_or(ErrorCode::Internal), e.message)
    }
}

impl From<BackendError> for OpError {
    fn from(e: BackendError) -> Self {
        let code = match &e {
            BackendError::Unavailable(_) => ErrorCode::BackendUnavailable,
            BackendError::NotFound(_) => ErrorCode::NotFound,
            BackendError::Unsupported(_) => ErrorCode::WrongKind,
            BackendError::Integrity(_) => ErrorCode::Integrity,
            BackendError::BadInput(_) => ErrorCode::BadRequest,
            BackendError::Refused(_) => ErrorCode::PermissionDenied,
            BackendError::Internal(_) => ErrorCode::Internal,
        };
        OpError::new(code, e.to_string())
    }
}
