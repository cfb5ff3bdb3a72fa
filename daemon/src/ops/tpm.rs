//! `tpm.clear-lockout`: ending a TPM's dictionary-attack lockout with the lockout authorization.

use custody_proto::ops::{TpmClearLockout, TpmClearLockoutArgs, TpmClearLockoutResult};

use super::{Ctx, Handle};
use crate::backend::BackendKind;
use crate::error::OpError;

impl Handle for TpmClearLockout {
    /// TPM2_DictionaryAttackLockReset on the configured TPM; the authorization value travels only
    /// in zeroizing buffers and is never logged.
    async fn handle(
        ctx: &mut Ctx,
        args: TpmClearLockoutArgs,
    ) -> Result<TpmClearLockoutResult, OpError> {
        let tpm = ctx.app.keys.backend(BackendKind::Tpm)?;
        let state = ctx
            .blocking(move |_app| {
                tpm.clear_lockout(args.lockout_auth.expose())
                    .map_err(OpError::from)
            })
            .await?;
        Ok(TpmClearLockoutResult {
            counter: state.counter,
            max_tries: state.max_tries,
            in_lockout: state.in_lockout,
            recovery_seconds: state.interval,
            lockout_recovery_seconds: state.lockout_recovery,
        })
    }
}
