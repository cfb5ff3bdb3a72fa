//! The process-wide PKCS#11 context: one `C_Initialize` per module per process.
//!
//! A PKCS#11 module may be initialised only once per process (a second `C_Initialize` fails with
//! `CKR_CRYPTOKI_ALREADY_INITIALIZED`), and SoftHSM reads `SOFTHSM2_CONF` only then. Every backend
//! (and every pool) using the same module therefore shares one [`Pkcs11`] handle, kept here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};

static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();

/// Sessions counted by every pool of the process (open, idle, or being opened). A mutex, not an
/// atomic: [`reinitialize`] holds it from its check to the end of `C_Initialize`, so no pool can
/// start a session in between.
static LIVE_SESSIONS: Mutex<usize> = Mutex::new(0);

fn live() -> std::sync::MutexGuard<'static, usize> {
    LIVE_SESSIONS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records `n` more sessions counted by a pool (waits while a re-initialisation runs).
pub(crate) fn sessions_added(n: usize) {
    *live() += n;
}

/// Records `n` fewer sessions counted by a pool.
pub(crate) fn sessions_removed(n: usize) {
    let mut l = live();
    *l = l.saturating_sub(n);
}

/// Re-initialises the module (`C_Finalize` then `C_Initialize`) so that it re-reads its tokens —
/// SoftHSM notices a token that was removed and came back only this way. Allowed only when the
/// caller's own session-being-opened is the only one in the process, because finalising
/// invalidates every session and object handle; returns false (doing nothing) otherwise.
pub(crate) fn reinitialize(module: &Path) -> Result<bool, Error> {
    // Held until the module is initialised again: no session can be counted (and opened) meanwhile.
    let live = live();
    if *live > 1 {
        return Ok(false);
    }
    let map = CONTEXTS.get_or_init(|| Mutex::new(HashMap::new()));
    let contexts = map.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(ctx) = contexts.get(module) else {
        return Ok(false);
    };
    match ctx.clone().finalize() {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiNotInitialized, _)) => {}
        Err(e) => return Err(e),
    }
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Returns the process-wide, initialised context for `module`, loading and initialising it on
/// first use. A failed load is not cached, so a module that appears later is picked up.
pub fn shared_context(module: &Path) -> Result<Pkcs11, Error> {
    let map = CONTEXTS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut contexts = map.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(ctx) = contexts.get(module) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(module)?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(e),
    }
    contexts.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}
