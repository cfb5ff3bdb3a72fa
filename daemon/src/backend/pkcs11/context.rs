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
