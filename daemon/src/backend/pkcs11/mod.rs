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
//! (AES-256-GCM with the master key and the caller's AAD).
//!
//! Files: `session` (pool, retry loop, health), `oaep` (OAEP paths), `secrets` (wrapping
//! software secrets), `keys` (objects and handle cache), `mechanisms` (capability probe),
//! `pool`, `context`, `errors`.

mod adopt;
mod context;
mod errors;
mod keys;
mod mechanisms;
mod oaep;
mod pool;
mod secrets;
mod session;

use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use secrecy::SecretString;
use zeroize::Zeroizing;

pub use self::context::shared_context;
pub use self::mechanisms::Capabilities;
pub use self::pool::PoolStats;
pub use crate::crypto::oaep::OaepHash;

use self::errors::OpError;
use self::keys::{Cached, HandleCache, KeyId, Role};
use self::pool::SessionPool;
use super::{
    Backend, BackendError, BackendKind, CreatedKey, ExistingKey, Health, KeyKind, KeyRef, NewKey,
    PublicKeyInfo, SignScheme, Template,
};

/// Where RSA-OAEP padding is removed (config `pkcs11.oaep`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
}

impl Backend for Pkcs11Backend {
    fn kind(&self) -> BackendKind {
        BackendKind::Pkcs11
    }

    fn health(&self) -> Health {
        self.probe_health()
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
            let modulus_len = match spec.kind {
                KeyKind::Rsa2048Sign | KeyKind::Rsa2048Oaep => 256,
                _ => 0,
            };
            Ok(((g, modulus_len), public))
        })?;
        let (g, modulus_len) = generated;
        let (private_role, public_role) = match spec.kind {
            KeyKind::Rsa2048Sign => (Role::Sign, Role::Public),
            KeyKind::Rsa2048Oaep => (Role::Decrypt, Role::Public),
            KeyKind::Aes256 => (Role::Secret, Role::Public),
            KeyKind::Ed25519 => (Role::EdSign, Role::EdPublic),
            KeyKind::X25519 => {
                return Err(BackendError::Unsupported(
                    "x25519 keys are held by the software backend, not pkcs11".into(),
                ))
            }
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
                public_role,
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
            sealed: None,
        })
    }

    fn public_key(&self, key: &KeyRef<'_>, kind: KeyKind) -> Result<PublicKeyInfo, BackendError> {
        if !kind.is_asymmetric() {
            return Err(BackendError::Unsupported(format!(
                "{kind} keys have no public key"
            )));
        }
        if kind == KeyKind::Ed25519 {
            return self.with_key(key, Role::EdPublic, |s, k| {
                keys::read_ed25519_public(s, k.handle)
            });
        }
        self.with_key(key, Role::Public, |s, k| keys::read_public(s, k.handle))
    }

    fn sign_ed25519(&self, key: &KeyRef<'_>, data: &[u8]) -> Result<Vec<u8>, BackendError> {
        self.with_key(key, Role::EdSign, |s, k| {
            Ok(s.sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                k.handle,
                data,
            )?)
        })
    }

    fn sign(
        &self,
        key: &KeyRef<'_>,
        digest: &[u8; 32],
        scheme: SignScheme,
    ) -> Result<Vec<u8>, BackendError> {
        self.with_key(key, Role::Sign, |s, k| {
            let sig = match scheme {
                SignScheme::Pkcs1v15 => {
                    let mut data = Vec::with_capacity(51);
                    data.extend_from_slice(&mechanisms::SHA256_DIGEST_INFO_PREFIX);
                    data.extend_from_slice(digest);
                    s.sign(&Mechanism::RsaPkcs, k.handle, &data)?
                }
                SignScheme::Pss => s.sign(&mechanisms::pss_sha256(), k.handle, digest)?,
            };
            Ok(sig)
        })
    }

    fn decrypt_oaep(
        &self,
        key: &KeyRef<'_>,
        ciphertext: &[u8],
        label: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let path = self.oaep_path_for(label)?;
        self.decrypt_oaep_with(key, ciphertext, label, OaepHash::Sha256, path)
    }

    fn wrap_secret(
        &self,
        master: &KeyRef<'_>,
        secret: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        self.gcm_wrap(master, secret, aad)
    }

    fn unwrap_secret(
        &self,
        master: &KeyRef<'_>,
        wrapped: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.gcm_unwrap(master, wrapped, aad)
    }

    fn adopt(&self, kind: KeyKind, at: &ExistingKey) -> Result<CreatedKey, BackendError> {
        self.adopt_existing(kind, at)
    }

    fn ecb_decrypt(
        &self,
        key: &KeyRef<'_>,
        data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        if data.is_empty() || data.len() % 16 != 0 {
            return Err(BackendError::BadInput(format!(
                "AES-ECB input is a non-empty multiple of 16 bytes; got {}",
                data.len()
            )));
        }
        self.with_key(key, Role::Secret, |s, k| {
            Ok(Zeroizing::new(s.decrypt(
                &Mechanism::AesEcb,
                k.handle,
                data,
            )?))
        })
    }

    fn destroy(&self, key: &KeyRef<'_>) -> Result<(), BackendError> {
        let backend_ref = key.object;
        let id = KeyId::parse(backend_ref)?;
        self.keys.forget_id(&id);
        let n = self.run(|s| keys::destroy_all(s, &id));
        self.keys.forget_id(&id);
        let n = n?;
        tracing::info!(backend_ref, objects = n, "pkcs11 key destroyed");
        Ok(())
    }
}
