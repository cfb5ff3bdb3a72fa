//! A bounded pool of logged-in read/write sessions.
//!
//! Never more than `max` sessions are open at once (sessions being opened count too); a caller
//! waits up to the configured timeout for one to come free. Sessions the token broke are discarded
//! (closed, not returned); after such an event every idle session is dropped as well and a
//! generation counter makes sessions still in use be closed rather than returned, because a logout
//! or token removal affects all sessions of the application at once.

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;

use super::context::{reinitialize, sessions_added, sessions_removed, shared_context};
use super::errors::{describe, is_token_gone_rv, rv};
use crate::backend::BackendError;

/// Counters of a session pool, for health output and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// Sessions open now (in use + idle + being opened).
    pub open: usize,
    /// Idle sessions ready for use.
    pub idle: usize,
    /// Highest `open` ever observed.
    pub peak: usize,
    /// The bound.
    pub max: usize,
    /// Sessions opened since start.
    pub opened_total: u64,
    /// Sessions discarded as broken since start.
    pub discarded_total: u64,
    /// Times the module was re-initialised to find a token that had gone.
    pub reinits: u64,
}

struct State {
    idle: Vec<Session>,
    open: usize,
    peak: usize,
    slot: Option<Slot>,
    generation: u64,
    opened_total: u64,
    discarded_total: u64,
    reinits: u64,
    last_reinit: Option<Instant>,
    /// Why the last login failed, until a login succeeds (the PIN itself is never kept here).
    login_error: Option<String>,
    /// Set when the token rejected the PIN itself: never try it again in this process, since
    /// every attempt counts against the token's retry limit and could lock the PIN.
    pin_rejected: bool,
    /// Threads waiting in [`SessionPool::acquire`] for a session to come free: a returned
    /// session wakes one only if there is one (with std's futex condvar, every `notify_one` is a
    /// system call).
    waiting: usize,
}

/// Shortest interval between two module re-initialisations.
const REINIT_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) struct SessionPool {
    module: PathBuf,
    token_label: String,
    pin: SecretString,
    max: usize,
    wait: Duration,
    state: Mutex<State>,
    freed: Condvar,
    /// Serialises session opening and login, so that once the token rejects the PIN no other
    /// thread tries it again (each try counts against the token's retry limit).
    login: Mutex<()>,
}

/// A session borrowed from the pool; returned on drop unless discarded.
pub(crate) struct PooledSession<'a> {
    pool: &'a SessionPool,
    session: Option<Session>,
    generation: u64,
}

impl Deref for PooledSession<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        // `session` is only None after `discard` consumed the guard.
        match &self.session {
            Some(s) => s,
            None => unreachable!("pooled session used after discard"),
        }
    }
}

impl PooledSession<'_> {
    /// Closes the session instead of returning it (the token broke it).
    pub(crate) fn discard(mut self) {
        if let Some(s) = self.session.take() {
            drop(s); // C_CloseSession; an error (already closed) is ignored by cryptoki
            let mut st = self.pool.lock();
            st.open = st.open.saturating_sub(1);
            st.discarded_total += 1;
            let wake = st.waiting > 0;
            drop(st);
            sessions_removed(1);
            if wake {
                self.pool.freed.notify_one();
            }
        }
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let mut st = self.pool.lock();
            let wake = st.waiting > 0;
            if st.generation == self.generation {
                st.idle.push(s);
                drop(st);
            } else {
                st.open = st.open.saturating_sub(1);
                drop(st);
                drop(s);
                sessions_removed(1);
            }
            if wake {
                self.pool.freed.notify_one();
            }
        }
    }
}

impl SessionPool {
    pub(crate) fn new(
        module: PathBuf,
        token_label: String,
        pin: SecretString,
        max: usize,
        wait: Duration,
    ) -> Self {
        SessionPool {
            module,
            token_label,
            pin,
            max,
            wait,
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
                peak: 0,
                slot: None,
                generation: 0,
                opened_total: 0,
                discarded_total: 0,
                reinits: 0,
                last_reinit: None,
                login_error: None,
                pin_rejected: false,
                waiting: 0,
            }),
            freed: Condvar::new(),
            login: Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn token_label(&self) -> &str {
        &self.token_label
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let st = self.lock();
        PoolStats {
            open: st.open,
            idle: st.idle.len(),
            peak: st.peak,
            max: self.max,
            opened_total: st.opened_total,
            discarded_total: st.discarded_total,
            reinits: st.reinits,
        }
    }

    /// The shared PKCS#11 context of this pool's module.
    pub(crate) fn context(&self) -> Result<Pkcs11, BackendError> {
        shared_context(&self.module).map_err(|e| {
            BackendError::Unavailable(format!(
                "cannot load PKCS#11 module {}: {}",
                self.module.display(),
                describe(&e)
            ))
        })
    }

    /// The slot holding the token, looked up by label when not known (which makes SoftHSM re-scan
    /// its token directory).
    pub(crate) fn slot(&self) -> Result<(Pkcs11, Slot), BackendError> {
        let ctx = self.context()?;
        if let Some(slot) = self.lock().slot {
            return Ok((ctx, slot));
        }
        let slot = self.find_slot(&ctx)?;
        self.lock().slot = Some(slot);
        Ok((ctx, slot))
    }

    fn find_slot(&self, ctx: &Pkcs11) -> Result<Slot, BackendError> {
        let slots = ctx.get_slots_with_token().map_err(|e| {
            BackendError::Unavailable(format!("cannot list PKCS#11 slots: {}", describe(&e)))
        })?;
        for slot in slots {
            if let Ok(info) = ctx.get_token_info(slot) {
                if info.label().trim_end() == self.token_label {
                    return Ok(slot);
                }
            }
        }
        Err(BackendError::Unavailable(format!(
            "PKCS#11 token {:?} not found",
            self.token_label
        )))
    }

    /// Forgets every idle session (closing them) and makes in-use sessions be closed when they
    /// come back; with `token_gone` also forgets the slot so the next open re-scans.
    pub(crate) fn invalidate(&self, token_gone: bool) {
        let idle = {
            let mut st = self.lock();
            st.generation += 1;
            if token_gone {
                st.slot = None;
            }
            let idle = std::mem::take(&mut st.idle);
            st.open = st.open.saturating_sub(idle.len());
            st.discarded_total += idle.len() as u64;
            idle
        };
        let n = idle.len();
        drop(idle); // closes them, outside the lock
        sessions_removed(n);
        self.freed.notify_all();
    }

    /// Borrows a session: an idle one, a newly opened one while below the bound, or the first one
    /// freed within the wait time.
    pub(crate) fn acquire(&self) -> Result<PooledSession<'_>, BackendError> {
        let deadline = Instant::now() + crate::backend::deadline::cap(self.wait);
        let mut st = self.lock();
        loop {
            if let Some(s) = st.idle.pop() {
                return Ok(PooledSession {
                    pool: self,
                    session: Some(s),
                    generation: st.generation,
                });
            }
            if st.open < self.max {
                st.open += 1;
                st.peak = st.peak.max(st.open);
                let generation = st.generation;
                drop(st);
                sessions_added(1);
                return match self.open_session() {
                    Ok(s) => {
                        self.lock().opened_total += 1;
                        Ok(PooledSession {
                            pool: self,
                            session: Some(s),
                            generation,
                        })
                    }
                    Err(e) => {
                        let mut st = self.lock();
                        st.open = st.open.saturating_sub(1);
                        let wake = st.waiting > 0;
                        drop(st);
                        sessions_removed(1);
                        if wake {
                            self.freed.notify_one();
                        }
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(BackendError::Unavailable(format!(
                    "session pool exhausted: all {} sessions busy for {} ms",
                    self.max,
                    self.wait.as_millis()
                )));
            }
            st.waiting += 1;
            st = self
                .freed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            st.waiting -= 1;
        }
    }

    /// Opens and logs in a session; when the token cannot be found, re-initialises the module
    /// once (see [`reinitialize`]) and tries again, so a token that came back is picked up.
    fn open_session(&self) -> Result<Session, BackendError> {
        let first = self.try_open_session();
        let Err(e) = first else { return first };
        let token_missing = self.lock().slot.is_none();
        if token_missing && self.reinitialize() {
            tracing::debug!("pkcs11: retrying after re-initialisation: {e}");
            return self.try_open_session();
        }
        Err(e)
    }

    /// Re-initialises the module when this pool's caller is the only session user in the
    /// process and the last attempt is at least [`REINIT_INTERVAL`] old. Returns true if done.
    fn reinitialize(&self) -> bool {
        let mut st = self.lock();
        if st.open != 1 || !st.idle.is_empty() {
            return false;
        }
        if st
            .last_reinit
            .is_some_and(|t| t.elapsed() < REINIT_INTERVAL)
        {
            return false;
        }
        st.last_reinit = Some(Instant::now());
        match reinitialize(&self.module) {
            Ok(true) => {
                st.reinits += 1;
                st.generation += 1;
                st.slot = None;
                tracing::info!(
                    token = %self.token_label,
                    "pkcs11 module re-initialised to look for the token again"
                );
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!("pkcs11 module re-initialisation failed: {}", describe(&e));
                false
            }
        }
    }

    /// Why the last login attempt failed, if no login has succeeded since.
    pub(crate) fn login_error(&self) -> Option<String> {
        self.lock().login_error.clone()
    }

    /// The number of module re-initialisations so far (object handles from before are stale).
    pub(crate) fn reinits(&self) -> u64 {
        self.lock().reinits
    }

    fn try_open_session(&self) -> Result<Session, BackendError> {
        let _login = self.login.lock().unwrap_or_else(PoisonError::into_inner);
        {
            let st = self.lock();
            if st.pin_rejected {
                return Err(BackendError::Unavailable(format!(
                    "{}; not retried (fix the PIN and restart custodyd)",
                    st.login_error
                        .as_deref()
                        .unwrap_or("the token rejected the PIN")
                )));
            }
        }
        let (ctx, slot) = self.slot()?;
        let session = match ctx.open_rw_session(slot) {
            Ok(s) => s,
            Err(e) => {
                if rv(&e).is_some_and(is_token_gone_rv) {
                    self.lock().slot = None;
                }
                return Err(BackendError::Unavailable(format!(
                    "cannot open a session on token {:?}: {}",
                    self.token_label,
                    describe(&e)
                )));
            }
        };
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                self.lock().login_error = None;
                Ok(session)
            }
            Err(e) => {
                let msg = format!(
                    "login to token {:?} failed: {}",
                    self.token_label,
                    describe(&e)
                );
                let mut st = self.lock();
                st.login_error = Some(msg.clone());
                st.pin_rejected = matches!(
                    rv(&e),
                    Some(
                        RvError::PinIncorrect
                            | RvError::PinLocked
                            | RvError::PinExpired
                            | RvError::PinInvalid
                            | RvError::PinLenRange
                    )
                );
                Err(BackendError::Unavailable(msg))
            }
        }
    }
}
