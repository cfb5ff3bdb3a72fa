//! The thread that owns the `tss_esapi::Context`.
//!
//! Every TPM command runs on this one thread; callers send boxed jobs over a channel and wait for
//! the answer with a deadline. The worker connects lazily: a TPM that is down makes the current
//! request fail with `Unavailable`, and the next request tries again, so the daemon recovers by
//! itself. A transport (TCTI) or TSS-stack error drops the context (and with it every cached
//! handle); the next request reconnects and flushes transient objects left in the TPM.
//!
//! Transient-object budget: a TPM without resource manager has 3 object slots. The worker keeps at
//! most [`MAX_CACHED`] MOSIP primaries loaded (recreating an RSA primary per signature costs far
//! more than the signature) and frees cache entries before anything needs more slots.

use std::{
    panic::AssertUnwindSafe,
    str::FromStr,
    sync::mpsc::{Receiver, SyncSender},
    time::Instant,
};

use tss_esapi::{
    constants::{response_code::Tss2ResponseCodeKind, tss::TPM2_TRANSIENT_FIRST, CapabilityType},
    handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle},
    interface_types::{
        dynamic_handles::Persistent, resource_handles::Hierarchy, session_handles::AuthSession,
    },
    structures::{CapabilityData, Public},
    Context, TctiNameConf,
};

use super::{
    error::{classify, describe, map, Class},
    keys::MosipKey,
    templates,
};
use crate::backend::BackendError;

/// Object slots of a TPM without resource manager.
pub const TRANSIENT_SLOTS: usize = 3;
/// MOSIP primaries kept loaded between requests.
pub const MAX_CACHED: usize = 2;

/// Work sent to the worker thread; it answers through a channel the closure captured.
pub type Job = Box<dyn FnOnce(&mut Worker) + Send + 'static>;

/// A job and the moment its caller stops waiting for it.
pub struct Request {
    /// Past this instant the caller has given up: the job is dropped unrun.
    pub deadline: Instant,
    /// The work.
    pub job: Job,
}

struct CachedPrimary {
    key: MosipKey,
    handle: KeyHandle,
    public: Public,
}

/// State owned by the worker thread.
pub struct Worker {
    tcti: String,
    ctx: Option<Context>,
    cache: Vec<CachedPrimary>,
}

impl Worker {
    /// A worker for this TCTI; nothing is connected yet.
    pub fn new(tcti: String) -> Worker {
        Worker {
            tcti,
            ctx: None,
            cache: Vec::new(),
        }
    }

    /// Serves requests until every sender is gone, then flushes what it loaded.
    pub fn run(mut self, rx: Receiver<Request>, done: SyncSender<()>) {
        while let Ok(req) = rx.recv() {
            if Instant::now() > req.deadline {
                continue; // the caller already reported a timeout
            }
            // A panic inside the TSS wrapper must not kill the only thread that talks to the TPM:
            // the caller sees `Unavailable` (its reply channel is dropped) and the context, whose
            // state is unknown, is rebuilt on the next request.
            let job = req.job;
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut self)));
            if outcome.is_err() {
                tracing::error!(tcti = %self.tcti, "TPM job panicked; dropping the TPM context");
                self.cache.clear();
                let ctx = self.ctx.take();
                let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(ctx)));
            }
        }
        self.disconnect();
        let _ = done.try_send(());
    }

    /// The TCTI string this worker connects with.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// Drops the context; its drop flushes the primaries it created (best effort).
    pub fn disconnect(&mut self) {
        self.cache.clear();
        self.ctx = None;
    }

    /// The connected context, connecting (and cleaning up leftovers) first if needed.
    pub fn ctx(&mut self) -> Result<&mut Context, BackendError> {
        if self.ctx.is_none() {
            self.connect()?;
        }
        self.ctx
            .as_mut()
            .ok_or_else(|| BackendError::Unavailable("TPM context not connected".into()))
    }

    fn connect(&mut self) -> Result<(), BackendError> {
        self.cache.clear();
        let conf = TctiNameConf::from_str(&self.tcti)
            .map_err(|e| BackendError::Unavailable(format!("invalid TCTI {:?}: {e}", self.tcti)))?;
        let ctx = Context::new(conf).map_err(|e| {
            BackendError::Unavailable(format!(
                "connecting to TPM via {}: {}",
                self.tcti,
                describe(&e)
            ))
        })?;
        self.ctx = Some(ctx);
        if let Err(e) = self.flush_leftovers() {
            self.ctx = None;
            return Err(e);
        }
        tracing::info!(tcti = %self.tcti, "connected to TPM");
        Ok(())
    }

    /// Flushes transient objects left in the TPM (by a killed daemon, or by our own context that
    /// was dropped after a transport error while the TPM kept running).
    fn flush_leftovers(&mut self) -> Result<(), BackendError> {
        let handles = {
            let ctx = self
                .ctx
                .as_mut()
                .ok_or_else(|| BackendError::Unavailable("TPM context not connected".into()))?;
            match ctx.execute_without_session(|c| {
                c.get_capability(CapabilityType::Handles, TPM2_TRANSIENT_FIRST, 16)
            }) {
                Ok((CapabilityData::Handles(list), _)) => list.into_inner(),
                Ok(_) => Vec::new(),
                Err(e) => return Err(self.fail("listing transient objects", e)),
            }
        };
        for h in handles {
            let ctx = self
                .ctx
                .as_mut()
                .ok_or_else(|| BackendError::Unavailable("TPM context not connected".into()))?;
            let res = ctx
                .execute_without_session(|c| c.tr_from_tpm_public(h))
                .and_then(|obj| c_flush(ctx, obj));
            match res {
                Ok(()) => tracing::debug!(?h, "flushed leftover transient object"),
                Err(e) if classify(&e) == Class::Transport => {
                    return Err(self.fail("flushing leftover objects", e))
                }
                Err(e) => tracing::warn!(?h, error = %e, "could not flush leftover object"),
            }
        }
        Ok(())
    }

    /// Maps a TSS error, dropping the context when the transport or the stack failed.
    pub fn fail(&mut self, what: &str, e: tss_esapi::Error) -> BackendError {
        match classify(&e) {
            Class::Transport | Class::Stack => {
                tracing::warn!(tcti = %self.tcti, error = %e, "{what}: dropping TPM context");
                self.disconnect();
            }
            Class::Tpm(Some(Tss2ResponseCodeKind::Initialize)) => self.disconnect(),
            Class::Tpm(Some(Tss2ResponseCodeKind::Lockout)) => {
                let mut err = map(what, &e);
                let state = self.ctx.as_mut().and_then(super::ops::da_state);
                if let (BackendError::Unavailable(m), Some(s)) = (&mut err, state) {
                    m.push_str(&lockout_eta(&s));
                }
                return err;
            }
            _ => {}
        }
        map(what, &e)
    }

    /// Frees cached primaries until `needed` more transient slots are available to us.
    pub fn reserve_slots(&mut self, needed: usize) {
        while !self.cache.is_empty() && self.cache.len() + needed > TRANSIENT_SLOTS {
            let old = self.cache.remove(0);
            if let Some(ctx) = self.ctx.as_mut() {
                if let Err(e) = c_flush(ctx, old.handle.into()) {
                    tracing::debug!(error = %e, "flushing cached primary");
                }
            }
        }
    }

    /// Drops every cached primary (flushing it).
    pub fn clear_cache(&mut self) {
        self.reserve_slots(TRANSIENT_SLOTS);
    }

    /// The loaded MOSIP primary `key` and its public area, created if not cached.
    ///
    /// A cached handle is checked with ReadPublic before use: after a TPM restart the transient
    /// handle may be gone or, worse, name a different object; either way it is recreated.
    pub fn mosip_primary(&mut self, key: MosipKey) -> Result<(KeyHandle, Public), BackendError> {
        if let Some(i) = self.cache.iter().position(|c| c.key == key) {
            let handle = self.cache[i].handle;
            let ctx = self.ctx()?;
            match ctx.execute_without_session(|c| c.read_public(handle)) {
                Ok((public, _, _)) if public == self.cache[i].public => {
                    return Ok((handle, public));
                }
                Ok(_) => {
                    // Someone else's object now lives at this handle: forget ours, don't flush.
                    let stale = self.cache.remove(i);
                    let _ = self.ctx()?.tr_close(&mut ObjectHandle::from(stale.handle));
                }
                Err(e) if classify(&e) == Class::Transport => {
                    return Err(self.fail("checking cached primary", e));
                }
                Err(_) => {
                    let stale = self.cache.remove(i);
                    let _ = self.ctx()?.tr_close(&mut ObjectHandle::from(stale.handle));
                }
            }
        }
        let template = match key {
            MosipKey::Sign => templates::mosip_sign()?,
            MosipKey::Encrypt => templates::mosip_encrypt()?,
        };
        let (handle, public) = self.create_primary(Hierarchy::Endorsement, template)?;
        while self.cache.len() >= MAX_CACHED {
            let old = self.cache.remove(0);
            self.flush(old.handle.into());
        }
        self.cache.push(CachedPrimary {
            key,
            handle,
            public: public.clone(),
        });
        Ok((handle, public))
    }

    /// CreatePrimary under `hierarchy` (empty auth); the caller owns (and must flush) the handle.
    /// On TPM_RC_OBJECT_MEMORY the cache is emptied and the command retried once.
    pub fn create_primary(
        &mut self,
        hierarchy: Hierarchy,
        template: Public,
    ) -> Result<(KeyHandle, Public), BackendError> {
        self.reserve_slots(1);
        for attempt in 0..2 {
            let ctx = self.ctx()?;
            let res = ctx.execute_with_session(Some(AuthSession::Password), |c| {
                c.create_primary(hierarchy, template.clone(), None, None, None, None)
            });
            match res {
                Ok(r) => return Ok((r.key_handle, r.out_public)),
                Err(e)
                    if attempt == 0
                        && classify(&e) == Class::Tpm(Some(Tss2ResponseCodeKind::ObjectMemory)) =>
                {
                    self.clear_cache();
                }
                Err(e) => return Err(self.fail("creating primary key", e)),
            }
        }
        Err(BackendError::Unavailable(
            "TPM has no free transient object slot".into(),
        ))
    }

    /// Flushes a transient object we own (errors are logged, not returned).
    pub fn flush(&mut self, handle: ObjectHandle) {
        if let Some(ctx) = self.ctx.as_mut() {
            if let Err(e) = c_flush(ctx, handle) {
                tracing::debug!(error = %e, "flushing transient object");
            }
        }
    }

    /// An ESYS handle for the persistent object at `handle` (close it with [`Worker::close`]).
    pub fn open_persistent(&mut self, handle: u32) -> Result<(ObjectHandle, Public), BackendError> {
        let tpm_handle = PersistentTpmHandle::new(handle)
            .map_err(|e| BackendError::NotFound(format!("bad persistent handle: {e}")))?;
        let ctx = self.ctx()?;
        let obj = match ctx
            .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::Persistent(tpm_handle)))
        {
            Ok(obj) => obj,
            Err(e) => {
                return Err(match classify(&e) {
                    Class::Tpm(_) => {
                        BackendError::NotFound(format!("no persistent object at {handle:#010x}"))
                    }
                    _ => self.fail("opening persistent key", e),
                })
            }
        };
        let ctx = self.ctx()?;
        match ctx.execute_without_session(|c| c.read_public(obj.into())) {
            Ok((public, _, _)) => Ok((obj, public)),
            Err(e) => {
                self.close(obj);
                Err(self.fail("reading persistent key", e))
            }
        }
    }

    /// Releases an ESYS handle without touching the TPM object.
    pub fn close(&mut self, mut handle: ObjectHandle) {
        if let Some(ctx) = self.ctx.as_mut() {
            let _ = ctx.tr_close(&mut handle);
        }
    }

    /// Persistent handles in use in `[first, first + count)`.
    pub fn persistent_in_use(&mut self, first: u32, count: u32) -> Result<Vec<u32>, BackendError> {
        let ctx = self.ctx()?;
        let res = ctx
            .execute_without_session(|c| c.get_capability(CapabilityType::Handles, first, count));
        match res {
            Ok((CapabilityData::Handles(list), _)) => Ok(list
                .into_inner()
                .into_iter()
                .map(u32::from)
                .filter(|h| *h >= first && h - first < count)
                .collect()),
            Ok(_) => Ok(Vec::new()),
            Err(e) => Err(self.fail("listing persistent handles", e)),
        }
    }

    /// EvictControl(owner) on `object`: persists a loaded transient at `handle`, or evicts the
    /// persistent object itself when `object` is that persistent handle.
    pub fn evict_control(&mut self, object: ObjectHandle, handle: u32) -> Result<(), BackendError> {
        let tpm_handle = PersistentTpmHandle::new(handle)
            .map_err(|e| BackendError::Internal(format!("bad persistent handle: {e}")))?;
        let ctx = self.ctx()?;
        let res = ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.evict_control(
                tss_esapi::interface_types::resource_handles::Provision::Owner,
                object,
                Persistent::Persistent(tpm_handle),
            )
        });
        match res {
            Ok(mut new_obj) => {
                if new_obj != ObjectHandle::None {
                    if let Some(ctx) = self.ctx.as_mut() {
                        let _ = ctx.tr_close(&mut new_obj);
                    }
                }
                Ok(())
            }
            Err(e) => Err(self.fail("EvictControl", e)),
        }
    }
}

fn c_flush(ctx: &mut Context, handle: ObjectHandle) -> tss_esapi::Result<()> {
    ctx.execute_without_session(|c| c.flush_context(handle))
}

/// When a TPM in dictionary-attack lockout leaves it by itself, for an error message.
fn lockout_eta(s: &crate::backend::DaState) -> String {
    if s.interval == 0 {
        return format!(
            "; {} of {} failures and failures are never forgotten (interval 0): only \
             `custody tpm clear-lockout` ends it",
            s.counter, s.max_tries
        );
    }
    // It leaves lockout once the counter is below the maximum; one failure is forgotten every
    // `interval` seconds.
    let steps = u64::from(s.counter.saturating_sub(s.max_tries)) + 1;
    format!(
        "; {} of {} failures, one forgotten every {} s: it clears by itself within about {} s, \
         or at once with `custody tpm clear-lockout`",
        s.counter,
        s.max_tries,
        s.interval,
        steps * u64::from(s.interval)
    )
}
