//! The run loop: every token call goes through a pooled, logged-in session; a session the token
//! broke is discarded and the call retried once; a stale object handle is looked up once more;
//! a token that stopped answering is reported `Unavailable` and looked up again next time.

use cryptoki::session::Session;

use super::errors::{self, describe, OpError};
use super::keys::{Cached, KeyId, Role};
use super::Pkcs11Backend;
use crate::backend::{BackendError, Health, KeyRef};
use crate::stages::{self, Stage};

impl Pkcs11Backend {
    /// Runs `op` on a pooled session; a broken session is discarded and `op` retried once on a
    /// fresh one.
    pub(super) fn run<T>(
        &self,
        mut op: impl FnMut(&Session) -> Result<T, OpError>,
    ) -> Result<T, BackendError> {
        let mut retried = false;
        loop {
            crate::backend::deadline::check("PKCS#11 call")?;
            let t = stages::start();
            let session = self.pool.acquire()?;
            stages::end(Stage::SessionCheckout, t);
            // Waiting for a session may have used up the request's time.
            crate::backend::deadline::check("PKCS#11 call")?;
            // A module re-initialisation invalidated every cached object handle.
            let reinits = self.pool.reinits();
            if self
                .seen_reinits
                .swap(reinits, std::sync::atomic::Ordering::SeqCst)
                != reinits
            {
                self.keys.clear();
            }
            let t = stages::start();
            let result = match op(&session) {
                Err(e) if e.may_hide_dead_token() => Err(self.check_token(e)),
                other => other,
            };
            stages::end(Stage::TokenCall, t);
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.is_broken() => {
                    let gone = e.token_gone();
                    session.discard();
                    // Logout and removal affect every session and invalidate object handles.
                    self.pool.invalidate(gone);
                    self.keys.clear();
                    let err = e.into_backend();
                    tracing::warn!(
                        token = self.pool.token_label(),
                        error = %err,
                        token_gone = gone,
                        retry = !retried,
                        "pkcs11 session broken; discarded"
                    );
                    if retried {
                        return Err(err);
                    }
                    retried = true;
                }
                Err(e) => return Err(e.into_backend()),
            }
        }
    }

    /// Keeps `e` unless the token no longer answers `C_GetTokenInfo`, then reports it gone.
    fn check_token(&self, e: OpError) -> OpError {
        match self.pool.slot() {
            Ok((ctx, slot)) => match ctx.get_token_info(slot) {
                Ok(_) => e,
                Err(te) => OpError::Gone(format!(
                    "token {:?} stopped answering: {}",
                    self.pool.token_label(),
                    describe(&te)
                )),
            },
            Err(_) => e,
        }
    }

    /// Runs `f` with the object of `key` in `role`; a stale cached handle is dropped and
    /// looked up once more.
    pub(super) fn with_key<T>(
        &self,
        key: &KeyRef<'_>,
        role: Role,
        f: impl Fn(&Session, Cached) -> Result<T, OpError>,
    ) -> Result<T, BackendError> {
        let id = KeyId::parse(key.object)?;
        self.run(|s| {
            let key = self.keys.lookup(s, &id, role)?;
            match f(s, key) {
                Err(OpError::Ck(e)) if errors::is_stale_handle(&e) => {
                    self.keys.forget(&id, role);
                    let key = self.keys.lookup(s, &id, role)?;
                    f(s, key)
                }
                other => other,
            }
        })
    }

    /// Probes the token (looking it up again, and re-initialising the module, if it went away).
    pub(super) fn probe_health(&self) -> Health {
        let label = self.pool.token_label().to_owned();
        if self.pool.slot().is_err() {
            // Opening a session re-initialises the module if the token may have come back.
            drop(self.pool.acquire());
        }
        let stats = self.pool.stats();
        let probe = self.pool.slot().and_then(|(ctx, slot)| {
            ctx.get_token_info(slot).map(|i| (slot, i)).map_err(|e| {
                // Gone, or (SoftHSM after its token directory vanished) CKR_GENERAL_ERROR: drop the
                // slot and sessions so the next attempt looks the token up again.
                self.pool.invalidate(true);
                self.keys.clear();
                BackendError::Unavailable(describe(&e))
            })
        });
        let probe = probe.and_then(|found| match self.pool.login_error() {
            // The token is there but sessions cannot log in (wrong PIN, locked PIN…).
            Some(e) => Err(BackendError::Unavailable(e)),
            None => Ok(found),
        });
        match probe {
            Ok((slot, info)) => Health {
                ok: true,
                detail: format!(
                    "pkcs11 token {label:?} in slot {} ({} {}): pool {}/{} sessions open, \
                     token reports {} sessions",
                    slot.id(),
                    info.manufacturer_id().trim_end(),
                    info.model().trim_end(),
                    stats.open,
                    stats.max,
                    info.session_count()
                        .map_or_else(|| "?".to_owned(), |n| n.to_string()),
                ),
            },
            Err(e) => Health {
                ok: false,
                detail: format!("pkcs11 token {label:?}: {e}"),
            },
        }
    }
}
