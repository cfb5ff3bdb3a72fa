//! TPM2_DictionaryAttackLockReset through the ESAPI C library.
//!
//! tss-esapi 7.7's safe `Context` has no call for this command and keeps its raw ESYS handle
//! private, so this module opens a short-lived ESYS context of its own on the same TCTI (the
//! worker drops its context first: a simulator serves one connection at a time), authorizes the
//! lockout hierarchy with a password session and sends the command. This is the daemon's only
//! `unsafe` code: FFI calls into libtss2-esys and libtss2-tctildr, each with its `SAFETY:` note.

use std::{ffi::CString, ptr::null_mut};

use tss_esapi::{
    constants::response_code::Tss2ResponseCode,
    tss2_esys::{
        Esys_DictionaryAttackLockReset, Esys_Finalize, Esys_Initialize, Esys_TR_SetAuth,
        Tss2_TctiLdr_Finalize, Tss2_TctiLdr_Initialize, ESYS_CONTEXT, ESYS_TR_NONE,
        ESYS_TR_PASSWORD, ESYS_TR_RH_LOCKOUT, TPM2B_AUTH, TSS2_RC, TSS2_TCTI_CONTEXT,
    },
};
use zeroize::Zeroize;

/// Largest authorization value a TPM2B_AUTH holds (the size of a SHA-512 digest).
pub const MAX_AUTH: usize = 64;

/// A TCTI context from the TCTI loader, finalized on drop.
struct Tcti(*mut TSS2_TCTI_CONTEXT);

impl Drop for Tcti {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from a successful Tss2_TctiLdr_Initialize, is finalized
            // exactly once (here), and the ESYS context using it was finalized before (`Esys` is
            // declared after `Tcti` where both live, so it drops first).
            unsafe { Tss2_TctiLdr_Finalize(&mut self.0) };
        }
    }
}

/// An ESYS context, finalized on drop.
struct Esys(*mut ESYS_CONTEXT);

impl Drop for Esys {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // Overwrite the authorization ESYS keeps for the lockout hierarchy before the
            // context's memory is freed.
            let empty = empty_auth();
            // SAFETY: the context came from a successful Esys_Initialize and is still live;
            // `empty` outlives the call, which copies it.
            unsafe { Esys_TR_SetAuth(self.0, ESYS_TR_RH_LOCKOUT, &empty) };
            // SAFETY: as above; finalized exactly once, and Esys_Finalize sets the pointer null.
            unsafe { Esys_Finalize(&mut self.0) };
        }
    }
}

fn empty_auth() -> TPM2B_AUTH {
    TPM2B_AUTH {
        size: 0,
        buffer: [0; MAX_AUTH],
    }
}

/// Sends TPM2_DictionaryAttackLockReset over `tcti` with `auth` as the lockout hierarchy's
/// authorization (a password session). Ok(()) when the TPM accepted it; a TSS error otherwise
/// (TPM_RC_AUTH_FAIL for a wrong authorization, TPM_RC_LOCKOUT while the lockout hierarchy is
/// itself locked, a TCTI error when the TPM cannot be reached).
pub fn reset(tcti: &str, auth: &[u8]) -> Result<(), tss_esapi::Error> {
    let local = |rc| tss_esapi::Error::WrapperError(rc);
    if auth.len() > MAX_AUTH {
        return Err(local(tss_esapi::WrapperErrorKind::WrongParamSize));
    }
    let conf = CString::new(tcti).map_err(|_| local(tss_esapi::WrapperErrorKind::InvalidParam))?;
    let mut t = Tcti(null_mut());
    // SAFETY: `conf` is a NUL-terminated string alive for the call; `t.0` is a valid out-pointer.
    check(unsafe { Tss2_TctiLdr_Initialize(conf.as_ptr(), &mut t.0) })?;
    let mut e = Esys(null_mut());
    // SAFETY: `t.0` is a live TCTI context (initialized above, finalized after `e` drops);
    // a null ABI version asks for the library's own.
    check(unsafe { Esys_Initialize(&mut e.0, t.0, null_mut()) })?;
    let mut value = empty_auth();
    value.buffer[..auth.len()].copy_from_slice(auth);
    // At most MAX_AUTH (64), checked above.
    value.size = auth.len() as u16;
    // SAFETY: `e.0` is a live ESYS context; `value` outlives the call, which copies it.
    let set = check(unsafe { Esys_TR_SetAuth(e.0, ESYS_TR_RH_LOCKOUT, &value) });
    value.buffer.zeroize();
    set?;
    // SAFETY: `e.0` is a live ESYS context; the handles are ESYS's constants for the lockout
    // hierarchy, a password session and no further sessions.
    check(unsafe {
        Esys_DictionaryAttackLockReset(
            e.0,
            ESYS_TR_RH_LOCKOUT,
            ESYS_TR_PASSWORD,
            ESYS_TR_NONE,
            ESYS_TR_NONE,
        )
    })?;
    drop(e);
    drop(t);
    Ok(())
}

fn check(rc: TSS2_RC) -> Result<(), tss_esapi::Error> {
    if rc == 0 {
        Ok(())
    } else {
        Err(tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(rc)))
    }
}
