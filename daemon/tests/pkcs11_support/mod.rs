//! What the PKCS#11 backend tests need from the daemon's own API (backend configs, key specs,
//! a session of our own on the backend's `Pkcs11` handle). Shared by `pkcs11_backend.rs` and
//! `pkcs11_token_faults.rs` (`mod pkcs11_support;`); tokens, `pkcs11-tool`, openssl and helper
//! processes come from `custody-testkit`.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::time::Duration;

use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use custody_daemon::backend::pkcs11::{shared_context, OaepMode, Pkcs11Config};
use custody_daemon::backend::{KeyKind, NewKey, Template};
use custody_testkit::SOFTHSM_MODULE;
use secrecy::SecretString;

/// A backend config for the token `label` (op timeout 30 s).
pub fn config(label: &str, pin: &str, max_sessions: usize, oaep: OaepMode) -> Pkcs11Config {
    Pkcs11Config {
        module: PathBuf::from(SOFTHSM_MODULE),
        token_label: label.to_owned(),
        pin: SecretString::from(pin.to_owned()),
        max_sessions,
        op_timeout: Duration::from_secs(30),
        oaep,
    }
}

/// Version 1 of a key `name` of `kind`, default template.
pub fn new_key(name: &str, kind: KeyKind) -> NewKey<'_> {
    NewKey {
        name,
        version: 1,
        kind,
        template: Template::Default,
        master: None,
    }
}

/// The slot of the token `label` (slot ids change after init: found by label).
pub fn slot_of(label: &str) -> Slot {
    let ctx = shared_context(Path::new(SOFTHSM_MODULE)).expect("context");
    ctx.get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|i| i.label().trim_end() == label)
                .unwrap_or(false)
        })
        .expect("token slot")
}

/// A session of our own on the same `Pkcs11` handle, behind the pool's back.
pub fn side_session(label: &str, pin: &str) -> Session {
    let ctx = shared_context(Path::new(SOFTHSM_MODULE)).expect("context");
    let s = ctx.open_rw_session(slot_of(label)).expect("open session");
    match s.login(UserType::User, Some(&SecretString::from(pin.to_owned()))) {
        Ok(()) => {}
        Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    s
}
