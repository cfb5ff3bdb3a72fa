//! The direct path: the daemon's own PKCS#11 backend, in the benchmark process, on the token of
//! a daemon the benchmark started — the token's work without custodyd's socket, dispatch or
//! scheduling.

use std::time::Duration;

use custody_daemon::backend::pkcs11::{OaepMode, Pkcs11Backend, Pkcs11Config};
use custody_testkit::{Hsm, SOFTHSM_MODULE};
use secrecy::SecretString;

/// A [`Pkcs11Backend`] on `hsm`'s token (64 sessions). SoftHSM reads `SOFTHSM2_CONF` once, at
/// this process's first `C_Initialize`: this sets it to `hsm`'s, so call it before any other
/// PKCS#11 use in the process. Panics when the token cannot be opened (a benchmark, not the
/// daemon).
pub fn hsm_backend(hsm: &Hsm) -> Pkcs11Backend {
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
    Pkcs11Backend::start(Pkcs11Config {
        module: SOFTHSM_MODULE.into(),
        token_label: hsm.label.clone(),
        pin: SecretString::from(hsm.pin()),
        max_sessions: 64,
        op_timeout: Duration::from_secs(30),
        oaep: OaepMode::Auto,
    })
    .expect("PKCS#11 backend")
}
