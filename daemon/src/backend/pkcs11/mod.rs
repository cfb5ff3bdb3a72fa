//! PKCS#11 backend (SoftHSM 2, hardware HSMs) through `cryptoki`.
//!
//! - One `C_Initialize` per module per process ([`shared_context`]); the token's slot is found by
//!   label and looked up again after the token went away. When it cannot be found and no other
//!   session is open in the process, the module is re-initialised (at most once a second) so a
//!   token that came back is seen without restarting the daemon (SoftHSM re-reads its tokens only
//!   at `C_Initialize`); cached object handles are dropped then.
//! - A bounded pool of logged-in R/W sessions (`max_sessions`); a session the token broke is
//!   discarded and the operation retried once on a fresh session.
//! - Object handles cached per key reference; a stale handle is looked up again once.
//! - RSA-OAEP-SHA256 on the token when it supports it, else raw RSA (`CKM_RSA_X_509`) on the token
//!   plus constant-time OAEP decoding in software ([`crate::crypto::oaep`]).
//!
//! `backend_ref` format: `id:<32 lowercase hex digits>` — the key's 16-byte `CKA_ID`; objects are
//! labelled `custodyd:{name}:v{version}`. Wrapped-secret blob: `iv(12) ‖ ciphertext ‖ tag(16)`
//! (AES-256-GCM with the master key, empty AAD).

mod context;
mod errors;
mod keys;
mod mechanisms;
mod pool;

use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::session::Session;
use rand::RngCore;
use secrecy::SecretString;
use zeroize::Zeroizing;

pub use self::context::shared_context;
pub use self::mechanisms::Capabilities;
pub use self::pool::PoolStats;
pub use crate::crypto::oaep::OaepHash;

use self::errors::{describe, rv, OpError};
use self::keys::{Cached, HandleCache, KeyId, Role};
use self::pool::SessionPool;
use super::{
    Backend, BackendError, BackendKind, CreatedKey, Health, KeyKind, NewKey, PublicKeyInfo,
    SignScheme, Template,
};
use crate::crypto::oaep;

/// Where RSA-OAEP padding is removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OaepMode {
    /// Token OAEP-SHA256 when the start-up probe found it working, else [`OaepMode::Software`].
    #[default]
    Auto,
    /// Always `CKM_RSA_PKCS_OAEP` on the token (`Unsupported` if the token cannot do SHA-256).
    Token,
    /// Always raw RSA on the token and constant-time OAEP decoding in the daemon.
    Software,
}

/// One concrete OAEP path (what [`OaepMode`] resolves to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OaepPath {
    /// `CKM_RSA_PKCS_OAEP` on the token.
    Token,
    /// `CKM_RSA_X_509` on the token + [`crate::crypto::oaep::decode`].
    Software,
}

/// Configuration of the PKCS#11 backend. `Debug` redacts the PIN.
#[derive(Clone, Debug)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// Label of the token to use (the slot is found by label).
    pub token_label: String,
    /// User PIN; never logged or printed.
    pub pin: SecretString,
    /// Most sessions open at once (≥ 1).
    pub max_sessions: usize,
    /// Longest wait for a free session before `Unavailable`.
    pub op_timeout: Duration,
    /// Where OAEP padding is removed.
    pub oaep: OaepMode,
}

/// The PKCS#11 backend. See the module documentation.
pub struct Pkcs11Backend {
    pool: SessionPool,
    keys: HandleCache,
    caps: OnceLock<Capabilities>,
    oaep_mode: OaepMode,
    /// Pool re-initialisations already accounted for (handle cache cleared).
    seen_reinits: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("token_label", &self.pool.token_label())
            .field("pool", &self.pool.stats())
            .field("oaep_mode", &self.oaep_mode)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Backend {
    /// Starts the backend.
    ///
    /// Fails only for an invalid configuration (`max_sessions == 0`). A missing module or token
    /// does not fail: the backend then reports itself unhealthy and operations return
    /// `Unavailable` until the token is found (each attempt looks it up again). When the token is
    /// present its capabilities are probed and logged here.
    pub fn start(cfg: Pkcs11Config) -> Result<Pkcs11Backend, BackendError> {
        if cfg.max_sessions == 0 {
            return Err(BackendError::BadInput(
                "pkcs11 max_sessions must be at least 1".into(),
            ));
        }
        let backend = Pkcs11Backend {
            pool: SessionPool::new(
                cfg.module,
                cfg.token_label,
                cfg.pin,
                cfg.max_sessions,
                cfg.op_timeout,
            ),
            keys: HandleCache::default(),
            seen_reinits: std::sync::atomic::AtomicU64::new(0),
            caps: OnceLock::new(),
            oaep_mode: cfg.oaep,
        };
        match backend.capabilities() {
            Ok(c) => {
                let path = backend.resolve_oaep(&c);
                tracing::info!(
                    token = backend.pool.token_label(),
                    mechanisms = %c.mechanisms.join(","),
                    oaep_sha256 = c.oaep_sha256,
                    oaep_sha1 = c.oaep_sha1,
                    oaep_label = c.oaep_label,
                    raw_rsa = c.raw_rsa,
                    oaep_mode = ?backend.oaep_mode,
                    oaep_path = ?path,
                    "pkcs11 backend started"
                );
                if backend.oaep_mode == OaepMode::Token && !c.oaep_sha256 {
                    tracing::warn!(
                        "oaep mode 'token' but the token cannot do RSA-OAEP with SHA-256: \
                         OAEP decryption will fail with Unsupported"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "pkcs11 backend started without its token"),
        }
        Ok(backend)
    }

    /// The token's capabilities (probed once, on first success).
    pub fn capabilities(&self) -> Result<Capabilities, BackendError> {
        if let Some(c) = self.caps.get() {
            return Ok(c.clone());
        }
        let c = self.run(|s| {
            let (ctx, slot) = self.pool.slot().map_err(OpError::Backend)?;
            mechanisms::probe(&ctx, slot, s)
        })?;
        Ok(self.caps.get_or_init(|| c).clone())
    }

    /// Counters of the session pool.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Number of cached object handles.
    pub fn cached_handles(&self) -> usize {
        self.keys.len()
    }

    /// The OAEP path `decrypt_oaep` uses with SHA-256 and an empty label (a non-empty label goes
    /// to software in mode `Auto` when the token accepts empty labels only).
    pub fn oaep_path(&self) -> Result<OaepPath, BackendError> {
        self.oaep_path_for(b"")
    }

    fn oaep_path_for(&self, label: &[u8]) -> Result<OaepPath, BackendError> {
        match self.oaep_mode {
            OaepMode::Token => Ok(OaepPath::Token),
            OaepMode::Software => Ok(OaepPath::Software),
            OaepMode::Auto => {
                let c = self.capabilities()?;
                let path = self.resolve_oaep(&c);
                if path == OaepPath::Token && !label.is_empty() && !c.oaep_label {
                    Ok(OaepPath::Software)
                } else {
                    Ok(path)
                }
            }
        }
    }

    fn resolve_oaep(&self, c: &Capabilities) -> OaepPath {
        match self.oaep_mode {
            OaepMode::Token => OaepPath::Token,
            OaepMode::Software => OaepPath::Software,
            OaepMode::Auto if c.oaep_sha256 => OaepPath::Token,
            OaepMode::Auto => OaepPath::Software,
        }
    }

    /// RSA-OAEP decryption with an explicit hash and path (`decrypt_oaep` is SHA-256 with the
    /// configured path). Exposed for interoperability tests: SoftHSM only has token OAEP with
    /// SHA-1, which lets both paths be compared on the same ciphertext.
    pub fn decrypt_oaep_with(
        &self,
        backend_ref: &str,
        ciphertext: &[u8],
        label: &[u8],
        hash: OaepHash,
        path: OaepPath,
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        if path == OaepPath::Token {
            if let Some(c) = self.caps.get() {
                let hash_ok = match hash {
                    OaepHash::Sha256 => c.oaep_sha256,
                    OaepHash::Sha1 => c.oaep_sha1,
                };
                if !hash_ok {
                    return Err(BackendError::Unsupported(format!(
                        "token does not support RSA-OAEP with {} (start-up probe failed); \
                         use oaep mode 'auto' or 'software'",
                        hash_name(hash)
                    )));
                }
                if !label.is_empty() && !c.oaep_label {
                    return Err(BackendError::Unsupported(
                        "token RSA-OAEP does not accept a non-empty label (start-up probe); \
                         use oaep mode 'auto' or 'software'"
                            .into(),
                    ));
                }
            }
        }
        self.with_key(backend_ref, Role::Decrypt, |s, key| {
            if ciphertext.len() != key.modulus_len {
                return Err(OpError::Backend(BackendError::BadInput(format!(
                    "ciphertext is {} bytes, the modulus {}",
                    ciphertext.len(),
                    key.modulus_len
                ))));
            }
            match path {
                OaepPath::Token => s
                    .decrypt(&mechanisms::oaep(hash, label), key.handle, ciphertext)
                    .map(Zeroizing::new)
                    .map_err(|e| match rv(&e) {
                        Some(
                            RvError::EncryptedDataInvalid
                            | RvError::EncryptedDataLenRange
                            | RvError::GeneralError,
                        ) => OpError::Backend(BackendError::Integrity(
                            "RSA-OAEP decryption failed".into(),
                        )),
                        Some(
                            RvError::ArgumentsBad
                            | RvError::MechanismInvalid
                            | RvError::MechanismParamInvalid,
                        ) => OpError::Backend(BackendError::Unsupported(format!(
                            "token rejected RSA-OAEP with {} (label {} bytes): {}",
                            hash_name(hash),
                            label.len(),
                            describe(&e)
                        ))),
                        _ => OpError::Ck(e),
                    }),
                OaepPath::Software => {
                    let raw = s
                        .decrypt(&Mechanism::RsaX509, key.handle, ciphertext)
                        .map(Zeroizing::new)
                        .map_err(|e| match rv(&e) {
                            // SoftHSM: CKR_GENERAL_ERROR for a ciphertext not below the modulus.
                            Some(
                                RvError::EncryptedDataInvalid
                                | RvError::EncryptedDataLenRange
                                | RvError::GeneralError,
                            ) => OpError::Backend(BackendError::Integrity(
                                "RSA-OAEP decryption failed".into(),
                            )),
                            _ => OpError::Ck(e),
                        })?;
                    oaep::decode(&raw, key.modulus_len, label, hash).map_err(|_| {
                        OpError::Backend(BackendError::Integrity(
                            "RSA-OAEP decryption failed".into(),
                        ))
                    })
                }
            }
        })
    }

    /// Runs `op` on a pooled session; a broken session is discarded and `op` retried once on a
    /// fresh one.
    fn run<T>(
        &self,
        mut op: impl FnMut(&Session) -> Result<T, OpError>,
    ) -> Result<T, BackendError> {
        let mut retried = false;
        loop {
            let session = self.pool.acquire()?;
            // A module re-initialisation invalidated every cached object handle.
            let reinits = self.pool.reinits();
            if self
                .seen_reinits
                .swap(reinits, std::sync::atomic::Ordering::SeqCst)
                != reinits
            {
                self.keys.clear();
            }
            let result = match op(&session) {
                Err(e) if e.may_hide_dead_token() => Err(self.check_token(e)),
                other => other,
            };
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

    /// Runs `f` with the object of `backend_ref` in `role`; a stale cached handle is dropped and
    /// looked up once more.
    fn with_key<T>(
        &self,
        backend_ref: &str,
        role: Role,
        f: impl Fn(&Session, Cached) -> Result<T, OpError>,
    ) -> Result<T, BackendError> {
        let id = KeyId::parse(backend_ref)?;
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
}

fn hash_name(hash: OaepHash) -> &'static str {
    match hash {
        OaepHash::Sha1 => "SHA-1",
        OaepHash::Sha256 => "SHA-256",
    }
}

fn gcm_integrity(e: cryptoki::error::Error) -> OpError {
    match rv(&e) {
        Some(
            RvError::GeneralError | RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
        ) => OpError::Backend(BackendError::Integrity(
            "AES-GCM authentication failed".into(),
        )),
        _ => OpError::Ck(e),
    }
}

const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;

impl Backend for Pkcs11Backend {
    fn kind(&self) -> BackendKind {
        BackendKind::Pkcs11
    }

    fn health(&self) -> Health {
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

    fn create(&self, spec: &NewKey<'_>) -> Result<CreatedKey, BackendError> {
        if spec.template != Template::Default {
            return Err(BackendError::Unsupported(format!(
                "template {:?} is not available on pkcs11",
                spec.template.as_str()
            )));
        }
        let id = KeyId::random();
        let label = format!("custodyd:{}:v{}", spec.name, spec.version);
        let (generated, public) = self.run(|s| {
            let g = keys::generate(s, spec.kind, &id, &label)?;
            let public = keys::read_back(s, spec.kind, &id, &g)?;
            let modulus_len = public.as_ref().map_or(0, |_| 256);
            Ok(((g, modulus_len), public))
        })?;
        let (g, modulus_len) = generated;
        let private_role = match spec.kind {
            KeyKind::Rsa2048Sign => Role::Sign,
            KeyKind::Rsa2048Oaep => Role::Decrypt,
            KeyKind::Aes256 => Role::Secret,
        };
        self.keys.insert(
            id,
            private_role,
            Cached {
                handle: g.private,
                modulus_len,
            },
        );
        if let Some(h) = g.public {
            self.keys.insert(
                id,
                Role::Public,
                Cached {
                    handle: h,
                    modulus_len,
                },
            );
        }
        tracing::info!(
            key = %label,
            kind = %spec.kind,
            backend_ref = %id.to_ref(),
            "pkcs11 key created"
        );
        Ok(CreatedKey {
            backend_ref: id.to_ref(),
            public,
        })
    }

    fn public_key(&self, backend_ref: &str, kind: KeyKind) -> Result<PublicKeyInfo, BackendError> {
        if !kind.is_asymmetric() {
            return Err(BackendError::Unsupported(format!(
                "{kind} keys have no public key"
            )));
        }
        self.with_key(backend_ref, Role::Public, |s, key| {
            keys::read_public(s, key.handle)
        })
    }

    fn sign(
        &self,
        backend_ref: &str,
        digest: &[u8; 32],
        scheme: SignScheme,
    ) -> Result<Vec<u8>, BackendError> {
        self.with_key(backend_ref, Role::Sign, |s, key| {
            let sig = match scheme {
                SignScheme::Pkcs1v15 => {
                    let mut data = Vec::with_capacity(51);
                    data.extend_from_slice(&mechanisms::SHA256_DIGEST_INFO_PREFIX);
                    data.extend_from_slice(digest);
                    s.sign(&Mechanism::RsaPkcs, key.handle, &data)?
                }
                SignScheme::Pss => s.sign(&mechanisms::pss_sha256(), key.handle, digest)?,
            };
            Ok(sig)
        })
    }

    fn decrypt_oaep(
        &self,
        backend_ref: &str,
        ciphertext: &[u8],
        label: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let path = self.oaep_path_for(label)?;
        self.decrypt_oaep_with(backend_ref, ciphertext, label, OaepHash::Sha256, path)
    }

    fn wrap_secret(&self, master_ref: &str, secret: &[u8]) -> Result<Vec<u8>, BackendError> {
        self.with_key(master_ref, Role::Secret, |s, key| {
            let mut iv = [0u8; IV_LEN];
            rand::rngs::OsRng.fill_bytes(&mut iv);
            let mut blob = Vec::with_capacity(IV_LEN + secret.len() + TAG_LEN);
            blob.extend_from_slice(&iv);
            let params = GcmParams::new(&mut iv, &[], (TAG_LEN as u64 * 8).into())?;
            let ct = s.encrypt(&Mechanism::AesGcm(params), key.handle, secret)?;
            blob.extend_from_slice(&ct);
            Ok(blob)
        })
    }

    fn unwrap_secret(
        &self,
        master_ref: &str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        if wrapped.len() < IV_LEN + TAG_LEN {
            return Err(BackendError::BadInput(format!(
                "wrapped secret is {} bytes, shorter than iv + tag",
                wrapped.len()
            )));
        }
        let (iv, ct) = wrapped.split_at(IV_LEN);
        self.with_key(master_ref, Role::Secret, |s, key| {
            let mut iv = <[u8; IV_LEN]>::try_from(iv)
                .map_err(|_| OpError::Backend(BackendError::BadInput("bad iv".into())))?;
            let params = GcmParams::new(&mut iv, &[], (TAG_LEN as u64 * 8).into())?;
            s.decrypt(&Mechanism::AesGcm(params), key.handle, ct)
                .map(Zeroizing::new)
                .map_err(gcm_integrity)
        })
    }

    fn destroy(&self, backend_ref: &str) -> Result<(), BackendError> {
        let id = KeyId::parse(backend_ref)?;
        self.keys.forget_id(&id);
        let n = self.run(|s| keys::destroy_all(s, &id));
        self.keys.forget_id(&id);
        let n = n?;
        tracing::info!(backend_ref, objects = n, "pkcs11 key destroyed");
        Ok(())
    }
}
