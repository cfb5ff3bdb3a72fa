//! TPM 2.0 backend (tss-esapi 7.7).
//!
//! One worker thread owns the `tss_esapi::Context` and serves requests from a channel (module
//! `worker`); [`TpmBackend`] is the thread-safe handle the daemon uses. The backend never fails
//! to start because the TPM is down: requests then fail with [`BackendError::Unavailable`] and the
//! next request reconnects.
//!
//! Key references:
//! - `mosip:sign`, `mosip:encrypt`: MOSIP registration-client primaries ([`crate::backend::Template::Mosip`]),
//!   recreated from the exact templates under the endorsement hierarchy, never persisted;
//! - `persistent:0x81010100`: default-template keys, children of the owner storage primary,
//!   persisted with EvictControl from [`TpmConfig::persistent_base`] upwards, each with a random
//!   authValue recorded in its reference (the registry) and set on every use; MOSIP primaries
//!   keep the empty authValue MOSIP defines.
//!
//! Cost on swtpm (2-core machine): an RSA-2048 CreatePrimary takes about 30-150 ms, a signature
//! about 3-5 ms, so the two MOSIP primaries stay loaded between requests (checked with ReadPublic
//! before each use, recreated after a reconnect or TPM restart); about 300 signatures/s go through
//! the single worker whatever the number of calling threads.

mod error;
mod keys;
#[allow(unsafe_code)]
mod lockout;
mod ops;
mod templates;
mod worker;

use std::{
    sync::{
        mpsc::{self, Receiver, Sender},
        Mutex,
    },
    time::{Duration, Instant},
};

use zeroize::Zeroizing;

use self::{
    keys::{KeyAuth, TpmRef},
    worker::{Request, Worker},
};
use super::{
    Backend, BackendError, BackendKind, CreatedKey, DaState, Health, KeyKind, KeyRef, NewKey,
    PublicKeyInfo, SignScheme,
};

pub use self::keys::PERSISTENT_RANGE;
pub use self::templates::{EK_POLICY_SHA256, MOSIP_EXPONENT};

/// Default first persistent handle for default-template keys (owner range, clear of the EK/SRK
/// handles 0x81000001, 0x81010001 and friends).
pub const DEFAULT_PERSISTENT_BASE: u32 = 0x8101_0100;

/// Default per-request deadline.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the TPM and how long to wait for it.
#[derive(Clone, Debug)]
pub struct TpmConfig {
    /// TCTI configuration: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, ...
    pub tcti: String,
    /// Longest time a request waits (queueing included) before it fails with `Unavailable`.
    pub op_timeout: Duration,
    /// First persistent handle used for default-template keys; the backend allocates and
    /// addresses only `[persistent_base, persistent_base + PERSISTENT_RANGE)`.
    pub persistent_base: u32,
}

impl TpmConfig {
    /// A configuration for `tcti` with the default timeout and persistent base.
    pub fn new(tcti: impl Into<String>) -> TpmConfig {
        TpmConfig {
            tcti: tcti.into(),
            op_timeout: DEFAULT_OP_TIMEOUT,
            persistent_base: DEFAULT_PERSISTENT_BASE,
        }
    }
}

impl Default for TpmConfig {
    /// The kernel resource manager, `device:/dev/tpmrm0`.
    fn default() -> TpmConfig {
        TpmConfig::new("device:/dev/tpmrm0")
    }
}

/// The TPM backend: a handle to the worker thread that owns the TPM context.
///
/// Operations:
/// - `sign`: the 32-byte digest is signed with a null hash-check ticket. `Pkcs1v15` is
///   RSASSA-SHA256; `Pss` is RSAPSS-SHA256, MGF1-SHA-256, whose salt is 32 bytes (the digest size)
///   on swtpm/libtpms, so verifiers may use salt length 32 or "auto" (not the maximum, 222). The
///   MOSIP signing key's template fixes RSASSA and the TPM itself refuses RSAPSS with it
///   (TPM_RC_SCHEME), so PSS with it is `Unsupported` (checked before sending).
/// - `decrypt_oaep`: RSA_Decrypt with OAEP-SHA256. The label is passed to the TPM unchanged. The
///   TPM requires a non-empty label to end with a zero byte (else TPM_RC_VALUE; reported here as
///   `BadInput` before anything is sent) and uses all the bytes, that zero included, as the OAEP
///   label: MOSIP's one-byte label `[0x00]` is OpenSSL's `rsa_oaep_label:00`, not the empty label,
///   and `b"abc\0"` is `rsa_oaep_label:61626300`. A padding/label mismatch is `Integrity`
///   (libtpms reports it as TPM_RC_FAILURE 0x101 without entering failure mode). The MOSIP
///   encryption key has the EK policy as authPolicy but also userWithAuth, so a password session
///   with its empty auth suffices (no PolicySecret session needed).
/// - Ciphertext of a length other than 256 bytes is `BadInput`.
/// - `destroy`: evicts a persisted key; MOSIP primaries cannot be destroyed (`Unsupported`).
pub struct TpmBackend {
    tx: Sender<Request>,
    done: Mutex<Receiver<()>>,
    cfg: TpmConfig,
}

impl TpmBackend {
    /// Starts the worker thread. Never fails because the TPM is unreachable: the worker connects
    /// on the first request (and after any transport failure).
    pub fn start(cfg: TpmConfig) -> TpmBackend {
        // Expected failures (probing absent handles) make the TSS print ERROR lines: silence them
        // unless the operator asked for TSS logging.
        if std::env::var_os("TSS2_LOG").is_none() {
            std::env::set_var("TSS2_LOG", "all+none");
        }
        let (tx, rx) = mpsc::channel::<Request>();
        let (done_tx, done) = mpsc::sync_channel(1);
        let worker = Worker::new(cfg.tcti.clone());
        let spawned = std::thread::Builder::new()
            .name("tpm-worker".into())
            .spawn(move || worker.run(rx, done_tx));
        if let Err(e) = spawned {
            // The requests will fail with Unavailable (the receiver is gone).
            tracing::error!(error = %e, "cannot spawn TPM worker thread");
        }
        TpmBackend {
            tx,
            done: Mutex::new(done),
            cfg,
        }
    }

    /// The configuration this backend runs with.
    pub fn config(&self) -> &TpmConfig {
        &self.cfg
    }

    fn parse(&self, backend_ref: &str) -> Result<TpmRef, BackendError> {
        self.parse_with_auth(backend_ref).map(|(k, _)| k)
    }

    fn parse_with_auth(&self, backend_ref: &str) -> Result<(TpmRef, KeyAuth), BackendError> {
        TpmRef::parse_with_auth(backend_ref, self.cfg.persistent_base)
    }

    /// The authValue of `key`: unwrapped by its master when the registry holds it wrapped,
    /// else the one recorded in its reference (empty for MOSIP primaries and older keys).
    fn auth_of(&self, key: &KeyRef<'_>) -> Result<KeyAuth, BackendError> {
        match key.sealed {
            Some(s) => {
                let bytes = s.master.backend.unwrap_secret(
                    &KeyRef::object(&s.master.object),
                    &s.blob,
                    &s.aad,
                )?;
                Ok(KeyAuth::from_bytes(bytes))
            }
            None => self.parse_with_auth(key.object).map(|(_, a)| a),
        }
    }

    /// Runs `f` on the worker and waits at most `op_timeout` for its answer.
    fn call<R, F>(&self, what: &str, f: F) -> Result<R, BackendError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Worker) -> Result<R, BackendError> + Send + 'static,
    {
        self.call_within(what, self.cfg.op_timeout, f)
    }

    /// Runs `f` on the worker and waits at most `limit` for its answer.
    fn call_within<R, F>(&self, what: &str, limit: Duration, f: F) -> Result<R, BackendError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Worker) -> Result<R, BackendError> + Send + 'static,
    {
        // On a scheduler worker, the request's own deadline bounds the TPM job too: a job queued
        // behind others on the TPM thread is dropped there once its caller has been answered.
        super::deadline::check("TPM call")?;
        let limit = super::deadline::cap(limit);
        let deadline = Instant::now() + limit;
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        let job = Box::new(move |w: &mut Worker| {
            let _ = reply_tx.send(f(w));
        });
        self.tx.send(Request { deadline, job }).map_err(|_| {
            BackendError::Unavailable(format!(
                "TPM worker thread is not running ({})",
                self.cfg.tcti
            ))
        })?;
        match reply_rx.recv_timeout(limit) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(BackendError::Unavailable(format!(
                "TPM {what} timed out after {limit:?} ({})",
                self.cfg.tcti
            ))),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(BackendError::Unavailable(format!(
                "TPM {what} dropped by the worker ({})",
                self.cfg.tcti
            ))),
        }
    }
}

impl Drop for TpmBackend {
    /// Stops the worker and waits (at most `op_timeout`) until it has flushed its objects, so a
    /// backend started right after on the same TPM does not race with the old worker's flushes.
    fn drop(&mut self) {
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Ok(done) = self.done.lock() {
            let _ = done.recv_timeout(self.cfg.op_timeout);
        }
    }
}

impl Backend for TpmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Tpm
    }

    fn health(&self) -> Health {
        match self.call("health probe", |w| Ok(w.op_health())) {
            Ok(h) => h,
            // Timeout or dead worker: those messages already name the TCTI.
            Err(e) => Health {
                ok: false,
                detail: e.to_string(),
            },
        }
    }

    fn create(&self, spec: &NewKey<'_>) -> Result<CreatedKey, BackendError> {
        let (kind, template, base) = (spec.kind, spec.template, self.cfg.persistent_base);
        // A default-template key's authValue: wrapped under the master when one is given (the
        // registry then holds only the wrapped blob), else recorded in the reference.
        let auth = KeyAuth::random();
        let sealed = match (spec.master, template) {
            (None, _) => None,
            (Some(_), crate::backend::Template::Mosip) => {
                return Err(BackendError::BadInput(
                    "mosip-template keys have MOSIP's empty authValue: no master".into(),
                ))
            }
            (Some((master, aad)), _) => Some(master.backend.wrap_secret(
                &KeyRef::object(&master.object),
                auth.bytes(),
                aad,
            )?),
        };
        let record_auth = sealed.is_none();
        // RSA key generation takes seconds on a TPM (up to a minute on some): not bound by the
        // short per-operation timeout meant for signatures.
        let limit = self.cfg.op_timeout.max(crate::backend::KEYGEN_TIMEOUT);
        let mut created = self.call_within("create", limit, move |w| {
            w.op_create(kind, template, base, &auth, record_auth)
        })?;
        created.sealed = sealed;
        Ok(created)
    }

    fn public_key(&self, key: &KeyRef<'_>, kind: KeyKind) -> Result<PublicKeyInfo, BackendError> {
        let key = self.parse(key.object)?;
        self.call("public key read", move |w| w.op_public_key(key, kind))
    }

    fn sign(
        &self,
        key: &KeyRef<'_>,
        digest: &[u8; 32],
        scheme: SignScheme,
    ) -> Result<Vec<u8>, BackendError> {
        let auth = self.auth_of(key)?;
        let (key, _) = self.parse_with_auth(key.object)?;
        let digest = *digest;
        self.call("sign", move |w| w.op_sign(key, &auth, &digest, scheme))
    }

    fn decrypt_oaep(
        &self,
        key: &KeyRef<'_>,
        ciphertext: &[u8],
        label: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        if ciphertext.len() != ops::RSA_BYTES {
            return Err(BackendError::BadInput(format!(
                "RSA-2048 ciphertext must be {} bytes, got {}",
                ops::RSA_BYTES,
                ciphertext.len()
            )));
        }
        let auth = self.auth_of(key)?;
        let (key, _) = self.parse_with_auth(key.object)?;
        let (ct, label) = (ciphertext.to_vec(), label.to_vec());
        self.call("decrypt", move |w| w.op_decrypt(key, &auth, &ct, &label))
    }

    fn destroy(&self, key: &KeyRef<'_>) -> Result<(), BackendError> {
        let key = self.parse(key.object)?;
        self.call("destroy", move |w| w.op_destroy(key))
    }

    fn clear_lockout(&self, lockout_auth: &[u8]) -> Result<DaState, BackendError> {
        if lockout_auth.len() > lockout::MAX_AUTH {
            return Err(BackendError::BadInput(format!(
                "a TPM authorization value is at most {} bytes, got {}",
                lockout::MAX_AUTH,
                lockout_auth.len()
            )));
        }
        let auth = Zeroizing::new(lockout_auth.to_vec());
        self.call("lockout reset", move |w| w.op_clear_lockout(&auth))
    }
}
