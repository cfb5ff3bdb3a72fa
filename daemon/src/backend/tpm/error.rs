//! Classification of `tss-esapi` errors into [`BackendError`]s.
//!
//! The TSS reports a layered 32-bit response code: bits 16..24 name the layer (0 = the TPM itself,
//! 7 = ESAPI, 8 = SAPI, 10 = TCTI, ...). A TCTI-layer error means the transport broke (TPM down,
//! connection refused or reset); the worker then drops its context and reconnects on the next
//! request. Messages never carry key material: only response codes and what was being done.

use tss_esapi::constants::response_code::{Tss2ResponseCode, Tss2ResponseCodeKind};

use crate::backend::BackendError;

/// TSS layer number of the TCTI (transport) layer.
const LAYER_TCTI: u32 = 10;

/// What a failed TSS call tells the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The TPM answered with an error code (`kind` when the crate knows it).
    Tpm(Option<Tss2ResponseCodeKind>),
    /// The transport failed: the context must be dropped and rebuilt.
    Transport,
    /// Another TSS software layer failed (ESAPI/SAPI/marshalling); the context is suspect.
    Stack,
    /// The Rust wrapper rejected a parameter before anything was sent.
    Local,
}

/// The raw `TSS2_RC` of a TSS error, when the error came from the TSS (not the wrapper).
pub fn raw_rc(e: &tss_esapi::Error) -> Option<u32> {
    let text = match e {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatZero(rc)) => rc.to_string(),
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatOne(rc)) => rc.to_string(),
        _ => return None,
    };
    // Display is "Response code value: 0x...": the crate keeps the raw value private.
    let hex = text.rsplit("0x").next()?;
    u32::from_str_radix(hex.trim(), 16).ok()
}

/// Classifies a TSS error.
pub fn classify(e: &tss_esapi::Error) -> Class {
    match e {
        tss_esapi::Error::WrapperError(_) => Class::Local,
        tss_esapi::Error::Tss2Error(rc) => {
            let layer = raw_rc(e).map(|r| (r >> 16) & 0xff).unwrap_or(0);
            if layer == LAYER_TCTI {
                Class::Transport
            } else if layer != 0 {
                Class::Stack
            } else {
                Class::Tpm(rc.kind())
            }
        }
    }
}

/// Short description of a TSS error: what it means (or which TSS layer failed) and the code.
pub fn describe(e: &tss_esapi::Error) -> String {
    let Some(rc) = raw_rc(e) else {
        return e.to_string();
    };
    let layer = match (rc >> 16) & 0xff {
        0 => return format!("{e} (rc {rc:#x})"),
        6 => "TSS feature API",
        7 => "ESAPI",
        8 => "SAPI",
        9 => "TSS marshalling",
        LAYER_TCTI => "TPM transport (TCTI)",
        11 | 12 => "resource manager",
        _ => "TSS",
    };
    let what = match rc & 0xffff {
        1 => "general failure",
        2 => "not implemented",
        3 => "bad context",
        4 => "bad sequence",
        5 => "bad value",
        6 => "bad reference",
        7 => "insufficient buffer",
        8 => "bad size",
        9 => "timeout / try again",
        10 => "I/O error (connection refused or lost)",
        11 => "bad TCTI structure",
        12 => "not permitted",
        13 => "malformed response",
        14 => "bad TCTI type",
        _ => "error",
    };
    format!("{layer}: {what} (rc {rc:#x})")
}

/// Default mapping of a TSS error raised while doing `what`.
pub fn map(what: &str, e: &tss_esapi::Error) -> BackendError {
    let mut msg = format!("{what}: {}", describe(e));
    if matches!(classify(e), Class::Tpm(Some(Tss2ResponseCodeKind::Lockout))) {
        msg.push_str(
            " — the TPM is in dictionary-attack lockout: it refuses keys protected against \
             dictionary attacks (MOSIP's templates) until it forgets failures (see `custody \
             status`: counter, lockout interval and recovery) or an administrator clears it \
             with the lockout authorization (`custody tpm clear-lockout`)",
        );
    }
    match classify(e) {
        Class::Transport => BackendError::Unavailable(msg),
        Class::Tpm(Some(
            Tss2ResponseCodeKind::Handle
            | Tss2ResponseCodeKind::ReferenceH0
            | Tss2ResponseCodeKind::ReferenceH1
            | Tss2ResponseCodeKind::ReferenceH2,
        )) => BackendError::NotFound(msg),
        Class::Tpm(Some(
            Tss2ResponseCodeKind::Retry
            | Tss2ResponseCodeKind::Yielded
            | Tss2ResponseCodeKind::Testing
            | Tss2ResponseCodeKind::NvRate
            | Tss2ResponseCodeKind::NvUnavailable
            | Tss2ResponseCodeKind::Lockout
            | Tss2ResponseCodeKind::Initialize
            | Tss2ResponseCodeKind::ObjectMemory
            | Tss2ResponseCodeKind::Memory,
        )) => BackendError::Unavailable(msg),
        Class::Tpm(Some(
            Tss2ResponseCodeKind::Scheme
            | Tss2ResponseCodeKind::Attributes
            | Tss2ResponseCodeKind::Key
            | Tss2ResponseCodeKind::Type,
        )) => BackendError::Unsupported(msg),
        _ => BackendError::Internal(msg),
    }
}
