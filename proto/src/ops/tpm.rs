//! `tpm.*`: operating the TPM itself (today: clearing a dictionary-attack lockout).

use serde::{Deserialize, Serialize};

use super::Password;

/// `tpm.clear-lockout` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct TpmClearLockoutArgs {
    /// The TPM's lockout-hierarchy authorization value as raw bytes (at most 64; empty when the
    /// lockout hierarchy has no authorization set). Zeroized on drop, never printed or logged.
    pub lockout_auth: Password,
}

/// `tpm.clear-lockout` result: the dictionary-attack state read back after the reset.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct TpmClearLockoutResult {
    /// Authorization failures the TPM counts now (`TPM_PT_LOCKOUT_COUNTER`; 0 after a reset).
    pub counter: u32,
    /// Failures that put it into lockout (`TPM_PT_MAX_AUTH_FAIL`).
    pub max_tries: u32,
    /// Whether the TPM is still in lockout (`TPMA_PERMANENT.inLockout`).
    pub in_lockout: bool,
    /// Seconds after which one failure is forgotten (`TPM_PT_LOCKOUT_INTERVAL`; 0: never).
    pub recovery_seconds: u32,
    /// Seconds the lockout hierarchy stays locked after a wrong lockout authorization
    /// (`TPM_PT_LOCKOUT_RECOVERY`; 0: until the next TPM reset).
    pub lockout_recovery_seconds: u32,
}
