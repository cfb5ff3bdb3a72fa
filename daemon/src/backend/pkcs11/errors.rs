//! Classification of PKCS#11 return values: broken session, stale handle, everything else.
//!
//! Messages built here name the PKCS#11 function and return value only; they never contain the
//! PIN, key material or plaintext.

use cryptoki::error::{Error, RvError};

use crate::backend::BackendError;

/// The error of one attempt of an operation on one session.
#[derive(Debug)]
pub(crate) enum OpError {
    /// A PKCS#11 call failed; classified by [`OpError::is_broken`] and friends.
    Ck(Error),
    /// The session is not usable any more although no call said so (e.g. found logged out).
    Broken(String),
    /// The token itself stopped answering (e.g. `C_GetTokenInfo` fails): forget the slot.
    Gone(String),
    /// A final answer for the caller (not retried).
    Backend(BackendError),
}

impl From<Error> for OpError {
    fn from(e: Error) -> Self {
        OpError::Ck(e)
    }
}

impl From<BackendError> for OpError {
    fn from(e: BackendError) -> Self {
        OpError::Backend(e)
    }
}

/// The return value of a PKCS#11 error, if it is one.
pub(crate) fn rv(e: &Error) -> Option<RvError> {
    match e {
        Error::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// Short description: `Function: ReturnValue` (the crate's Display adds a paragraph of prose).
pub(crate) fn describe(e: &Error) -> String {
    match e {
        Error::Pkcs11(rv, f) => format!("{f}: {rv:?}"),
        other => other.to_string(),
    }
}

/// True when the token or session is gone or unusable: drop the session and retry on a new one.
pub(crate) fn is_broken_rv(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::UserNotLoggedIn
            | RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::SlotIdInvalid
            | RvError::CryptokiNotInitialized
    )
}

/// True when the token itself (not just one session) is gone: forget the slot and re-scan.
pub(crate) fn is_token_gone_rv(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::SlotIdInvalid
            | RvError::CryptokiNotInitialized
    )
}

/// True when an object handle may be stale (object deleted, token re-attached, logged out).
pub(crate) fn is_stale_handle(e: &Error) -> bool {
    matches!(
        rv(e),
        Some(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid)
    )
}

impl OpError {
    /// The session this error came from must be discarded.
    pub(crate) fn is_broken(&self) -> bool {
        match self {
            OpError::Ck(e) => rv(e).is_some_and(is_broken_rv),
            OpError::Broken(_) | OpError::Gone(_) => true,
            OpError::Backend(_) => false,
        }
    }

    /// The token is gone: the slot must be looked up again.
    pub(crate) fn token_gone(&self) -> bool {
        match self {
            OpError::Ck(e) => rv(e).is_some_and(is_token_gone_rv),
            OpError::Gone(_) => true,
            _ => false,
        }
    }

    /// Errors that can hide a token gone bad: SoftHSM answers `CKR_GENERAL_ERROR` (and finds no
    /// objects) once its token directory disappeared.
    pub(crate) fn may_hide_dead_token(&self) -> bool {
        match self {
            OpError::Ck(e) => matches!(rv(e), Some(RvError::GeneralError)),
            OpError::Backend(BackendError::NotFound(_)) => true,
            _ => false,
        }
    }

    /// The answer for the caller.
    pub(crate) fn into_backend(self) -> BackendError {
        match self {
            OpError::Backend(b) => b,
            OpError::Broken(m) | OpError::Gone(m) => BackendError::Unavailable(m),
            OpError::Ck(e) => match rv(&e) {
                Some(r) if is_broken_rv(r) => BackendError::Unavailable(describe(&e)),
                Some(RvError::SessionCount | RvError::DeviceMemory | RvError::HostMemory) => {
                    BackendError::Unavailable(describe(&e))
                }
                Some(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid) => {
                    BackendError::NotFound(describe(&e))
                }
                _ => BackendError::Internal(describe(&e)),
            },
        }
    }
}

/// A failed decryption or authentication (`CKR_ENCRYPTED_DATA_INVALID`, `…_LEN_RANGE`, and
/// SoftHSM's `CKR_GENERAL_ERROR` for a GCM tag mismatch or a ciphertext not below the modulus)
/// becomes `Integrity` saying `what` failed; anything else stays a PKCS#11 error.
pub(crate) fn integrity_on(e: Error, what: &str) -> OpError {
    match rv(&e) {
        Some(
            RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange | RvError::GeneralError,
        ) => OpError::Backend(BackendError::Integrity(format!("{what} failed"))),
        _ => OpError::Ck(e),
    }
}
