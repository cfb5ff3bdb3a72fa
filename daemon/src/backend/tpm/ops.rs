//! The backend operations, run on the worker thread.

use tss_esapi::{
    constants::{
        response_code::Tss2ResponseCodeKind,
        tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK},
    },
    handles::KeyHandle,
    interface_types::{
        algorithm::HashingAlgorithm, resource_handles::Hierarchy, session_handles::AuthSession,
    },
    structures::{
        Data, Digest, HashScheme, Public, PublicKeyRsa, RsaDecryptionScheme, RsaScheme, Signature,
        SignatureScheme,
    },
    tss2_esys::TPMT_TK_HASHCHECK,
};
use zeroize::Zeroizing;

use super::{
    error::{classify, describe, Class},
    keys::{
        check_fingerprint, fingerprint, public_info, KeyAuth, MosipKey, RsaFacts, TpmRef,
        PERSISTENT_RANGE,
    },
    lockout, templates,
    worker::Worker,
};
use crate::backend::{
    BackendError, CreatedKey, DaState, Health, KeyKind, PublicKeyInfo, SignScheme, Template,
};

/// RSA-2048 modulus / signature / ciphertext length in bytes.
pub const RSA_BYTES: usize = 256;

/// A key made usable for one operation: either a cached MOSIP primary (left loaded) or an opened
/// persistent key (closed afterwards).
struct Opened {
    handle: KeyHandle,
    public: Public,
    persistent: bool,
}

impl Worker {
    /// Opens `key` for use, with its authValue set on the handle (the empty one for MOSIP
    /// primaries and older keys).
    fn open_with(&mut self, key: TpmRef, auth: &KeyAuth) -> Result<Opened, BackendError> {
        let opened = self.open(key)?;
        if opened.persistent && !auth.is_empty() {
            let value = tss_esapi::structures::Auth::try_from(auth.bytes().to_vec())
                .map_err(|e| BackendError::Internal(format!("key authValue: {e}")));
            let set = value.and_then(|v| {
                let ctx = self.ctx()?;
                ctx.tr_set_auth(opened.handle.into(), v)
                    .map_err(|e| BackendError::Internal(format!("setting key authValue: {e}")))
            });
            if let Err(e) = set {
                self.release(opened);
                return Err(e);
            }
        }
        Ok(opened)
    }

    fn open(&mut self, key: TpmRef) -> Result<Opened, BackendError> {
        match key {
            TpmRef::Mosip(m) => {
                let (handle, public) = self.mosip_primary(m)?;
                Ok(Opened {
                    handle,
                    public,
                    persistent: false,
                })
            }
            TpmRef::Persistent(h, _) => {
                let (obj, public) = self.open_persistent(h)?;
                if let Err(e) = check_fingerprint(key, &public) {
                    self.close(obj);
                    return Err(e);
                }
                Ok(Opened {
                    handle: obj.into(),
                    public,
                    persistent: true,
                })
            }
        }
    }

    fn release(&mut self, opened: Opened) {
        if opened.persistent {
            self.close(opened.handle.into());
        }
    }

    /// Probes the TPM with GetRandom.
    pub fn op_health(&mut self) -> Health {
        /// First handle of the transient range (TPM_HT_TRANSIENT).
        const TRANSIENT_FIRST: u32 = 0x8000_0000;
        let res = self.ctx().and_then(|ctx| {
            ctx.execute_without_session(|c| c.get_random(8))
                .map_err(|e| BackendError::Unavailable(describe(&e)))?;
            // Dictionary-attack state: a TPM in lockout refuses every DA-protected key
            // (MOSIP's templates are) until it recovers or is cleared.
            let da = da_state(ctx).map(|s| da_line(&s));
            // Objects loaded in the TPM's transient slots now: a leak shows here.
            let transient = ctx
                .execute_without_session(|c| {
                    c.get_capability(
                        tss_esapi::constants::CapabilityType::Handles,
                        TRANSIENT_FIRST,
                        64,
                    )
                })
                .ok()
                .and_then(|(data, _)| match data {
                    tss_esapi::structures::CapabilityData::Handles(h) => Some(h.len()),
                    _ => None,
                });
            Ok((da, transient))
        });
        match res {
            Ok((da, transient)) => {
                let mut detail = format!("TPM 2.0 via {}", self.tcti());
                if let Some(da) = da {
                    detail.push_str(&format!("; {da}"));
                }
                // Last, as `…: N transient objects loaded`.
                if let Some(n) = transient {
                    detail.push_str(&format!(": {n} transient objects loaded"));
                }
                Health { ok: true, detail }
            }
            Err(e) => {
                if let BackendError::Unavailable(_) = e {
                    self.disconnect();
                }
                let detail = e.to_string();
                Health {
                    ok: false,
                    detail: if detail.contains(self.tcti()) {
                        detail
                    } else {
                        format!("TPM via {}: {detail}", self.tcti())
                    },
                }
            }
        }
    }

    /// Creates (MOSIP: recreates) a key.
    /// A default-template key gets `auth` as its authValue, recorded in the reference when
    /// `record_auth` (else the caller keeps it wrapped).
    pub fn op_create(
        &mut self,
        kind: KeyKind,
        template: Template,
        persistent_base: u32,
        auth: &KeyAuth,
        record_auth: bool,
    ) -> Result<CreatedKey, BackendError> {
        let child_template = match kind {
            KeyKind::Aes256 | KeyKind::X25519 | KeyKind::Ed25519 => {
                return Err(BackendError::Unsupported(format!(
                    "the TPM backend holds RSA keys only (no {kind})"
                )))
            }
            KeyKind::Rsa2048Sign => templates::default_sign,
            KeyKind::Rsa2048Oaep => templates::default_oaep,
        };
        match template {
            Template::Mosip => {
                let m = match kind {
                    KeyKind::Rsa2048Sign => MosipKey::Sign,
                    _ => MosipKey::Encrypt,
                };
                let (_, public) = self.mosip_primary(m)?;
                Ok(CreatedKey {
                    backend_ref: TpmRef::Mosip(m).to_string(),
                    public: Some(public_info(&public)?),
                    sealed: None,
                })
            }
            Template::Default => {
                let template = child_template()?;
                let (handle, public) = self.create_persistent(template, persistent_base, auth)?;
                let info = public_info(&public)?;
                let fp = info.tpmt.as_deref().map(fingerprint);
                let suffix = if record_auth {
                    auth.suffix()
                } else {
                    String::new()
                };
                Ok(CreatedKey {
                    backend_ref: format!("{}{suffix}", TpmRef::Persistent(handle, fp)),
                    public: Some(info),
                    sealed: None,
                })
            }
        }
    }

    /// Creates a child of the owner storage primary with authValue `auth` and persists it at the
    /// first free handle.
    fn create_persistent(
        &mut self,
        template: Public,
        base: u32,
        auth: &KeyAuth,
    ) -> Result<(u32, Public), BackendError> {
        let auth_value = tss_esapi::structures::Auth::try_from(auth.bytes().to_vec())
            .map_err(|e| BackendError::Internal(format!("key authValue: {e}")))?;
        let used = self.persistent_in_use(base, PERSISTENT_RANGE)?;
        let handle = (base..base.saturating_add(PERSISTENT_RANGE))
            .find(|h| !used.contains(h))
            .ok_or_else(|| {
                BackendError::Unavailable(format!(
                    "no free persistent handle in {base:#010x}+{PERSISTENT_RANGE:#x}"
                ))
            })?;
        // Storage primary + loaded child: two slots.
        self.reserve_slots(2);
        let (srk, _) = self.create_primary(Hierarchy::Owner, templates::storage_primary()?)?;
        let created = {
            let ctx = self.ctx()?;
            ctx.execute_with_session(Some(AuthSession::Password), |c| {
                let r = c.create(srk, template, Some(auth_value), None, None, None)?;
                let loaded = c.load(srk, r.out_private, r.out_public.clone())?;
                Ok::<_, tss_esapi::Error>((loaded, r.out_public))
            })
        };
        self.flush(srk.into());
        let (loaded, public) = created.map_err(|e| self.fail("creating key", e))?;
        let persisted = self.evict_control(loaded.into(), handle);
        self.flush(loaded.into());
        persisted?;
        Ok((handle, public))
    }

    /// Reads a key's public part; `kind` must match the key.
    pub fn op_public_key(
        &mut self,
        key: TpmRef,
        kind: KeyKind,
    ) -> Result<PublicKeyInfo, BackendError> {
        if let TpmRef::Mosip(m) = key {
            if m.kind() != kind {
                return Err(BackendError::Unsupported(format!(
                    "{key} is not an {kind} key"
                )));
            }
        }
        let opened = self.open(key)?;
        let res = RsaFacts::of(&opened.public)
            .and_then(|f| f.require(kind))
            .and_then(|_| public_info(&opened.public));
        self.release(opened);
        res
    }

    /// Signs a SHA-256 digest.
    pub fn op_sign(
        &mut self,
        key: TpmRef,
        auth: &KeyAuth,
        digest: &[u8; 32],
        scheme: SignScheme,
    ) -> Result<Vec<u8>, BackendError> {
        if key == TpmRef::Mosip(MosipKey::Encrypt) {
            return Err(BackendError::Unsupported(format!(
                "{key} is not an rsa2048-sign key"
            )));
        }
        self.retrying_stale_mosip(key, |t| t.sign_once(key, auth, digest, scheme))
    }

    /// Runs `op`; when `key` is a MOSIP primary whose transient handle went stale under us (the
    /// TPM restarted between the check and the command), recreates it and runs `op` once more.
    fn retrying_stale_mosip<T>(
        &mut self,
        key: TpmRef,
        mut op: impl FnMut(&mut Self) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        match op(self) {
            Err(BackendError::NotFound(_)) if matches!(key, TpmRef::Mosip(_)) => {
                self.clear_cache();
                op(self)
            }
            r => r,
        }
    }

    fn sign_once(
        &mut self,
        key: TpmRef,
        auth: &KeyAuth,
        digest: &[u8; 32],
        scheme: SignScheme,
    ) -> Result<Vec<u8>, BackendError> {
        let opened = self.open_with(key, auth)?;
        let res = self.sign_with(&opened, digest, scheme);
        self.release(opened);
        res
    }

    fn sign_with(
        &mut self,
        opened: &Opened,
        digest: &[u8; 32],
        scheme: SignScheme,
    ) -> Result<Vec<u8>, BackendError> {
        let facts = RsaFacts::of(&opened.public)?;
        facts.require(KeyKind::Rsa2048Sign)?;
        let sha256 = HashScheme::new(HashingAlgorithm::Sha256);
        let (tpm_scheme, allowed) = match scheme {
            SignScheme::Pkcs1v15 => (
                SignatureScheme::RsaSsa {
                    hash_scheme: sha256,
                },
                match facts.scheme {
                    RsaScheme::Null => true,
                    RsaScheme::RsaSsa(h) => h == sha256,
                    _ => false,
                },
            ),
            SignScheme::Pss => (
                SignatureScheme::RsaPss {
                    hash_scheme: sha256,
                },
                match facts.scheme {
                    RsaScheme::Null => true,
                    RsaScheme::RsaPss(h) => h == sha256,
                    _ => false,
                },
            ),
        };
        if !allowed {
            return Err(BackendError::Unsupported(format!(
                "this key's scheme is fixed to {:?} in its TPM template; {scheme:?} is not possible",
                facts.scheme.algorithm()
            )));
        }
        let digest = Digest::try_from(digest.to_vec())
            .map_err(|e| BackendError::Internal(format!("digest: {e}")))?;
        let ticket = TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        }
        .try_into()
        .map_err(|e| BackendError::Internal(format!("null hash-check ticket: {e}")))?;
        let handle = opened.handle;
        let ctx = self.ctx()?;
        let res = ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.sign(handle, digest, tpm_scheme, ticket)
        });
        let sig = match res {
            Ok(Signature::RsaSsa(s)) | Ok(Signature::RsaPss(s)) => s.signature().value().to_vec(),
            Ok(other) => {
                return Err(BackendError::Internal(format!(
                    "TPM returned a {:?} signature",
                    other.algorithm()
                )))
            }
            Err(e) => return Err(self.fail("signing", e)),
        };
        if sig.len() != RSA_BYTES {
            return Err(BackendError::Internal(format!(
                "TPM returned a {}-byte signature",
                sig.len()
            )));
        }
        Ok(sig)
    }

    /// RSA-OAEP-SHA256 decryption (see [`super::TpmBackend`] for the label rule).
    pub fn op_decrypt(
        &mut self,
        key: TpmRef,
        auth: &KeyAuth,
        ciphertext: &[u8],
        label: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        if ciphertext.len() != RSA_BYTES {
            return Err(BackendError::BadInput(format!(
                "RSA-2048 ciphertext must be {RSA_BYTES} bytes, got {}",
                ciphertext.len()
            )));
        }
        if key == TpmRef::Mosip(MosipKey::Sign) {
            return Err(BackendError::Unsupported(format!(
                "{key} is not an rsa2048-oaep key"
            )));
        }
        let label = tpm_label(label)?;
        let ct = PublicKeyRsa::try_from(ciphertext.to_vec())
            .map_err(|e| BackendError::BadInput(format!("ciphertext: {e}")))?;
        self.retrying_stale_mosip(key, |t| {
            t.decrypt_once(key, auth, ct.clone(), label.clone())
        })
    }

    fn decrypt_once(
        &mut self,
        key: TpmRef,
        auth: &KeyAuth,
        ct: PublicKeyRsa,
        label: tss_esapi::structures::Data,
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let opened = self.open_with(key, auth)?;
        let res = match RsaFacts::of(&opened.public).and_then(|f| f.require(KeyKind::Rsa2048Oaep)) {
            Err(e) => Err(e),
            Ok(()) => {
                let handle = opened.handle;
                let scheme = RsaDecryptionScheme::Oaep(HashScheme::new(HashingAlgorithm::Sha256));
                let ctx = self.ctx()?;
                let res = ctx.execute_with_session(Some(AuthSession::Password), |c| {
                    c.rsa_decrypt(handle, ct, scheme, label)
                });
                match res {
                    Ok(pt) => Ok(Zeroizing::new(pt.value().to_vec())),
                    Err(e) => Err(self.decrypt_error(e)),
                }
            }
        };
        self.release(opened);
        res
    }

    fn decrypt_error(&mut self, e: tss_esapi::Error) -> BackendError {
        match classify(&e) {
            // Bad OAEP padding / wrong label / wrong key: TPM_RC_VALUE (libtpms reports some
            // padding failures as TPM_RC_FAILURE without entering failure mode).
            Class::Tpm(Some(
                Tss2ResponseCodeKind::Value
                | Tss2ResponseCodeKind::Size
                | Tss2ResponseCodeKind::Failure,
            )) => BackendError::Integrity(format!("RSA-OAEP decryption failed: {}", describe(&e))),
            _ => self.fail("RSA decryption", e),
        }
    }

    /// TPM2_DictionaryAttackLockReset with the lockout authorization `auth`, then the
    /// dictionary-attack state read back.
    pub fn op_clear_lockout(&mut self, auth: &[u8]) -> Result<DaState, BackendError> {
        // The reset runs on an ESYS context of its own (see `lockout`): a simulator serves one
        // connection at a time, so ours goes first; the next request reconnects (and reloads
        // the MOSIP primaries).
        self.disconnect();
        let res = lockout::reset(self.tcti(), auth);
        let state = self.ctx().ok().and_then(da_state);
        match res {
            Ok(()) => {
                tracing::info!(tcti = %self.tcti(), "dictionary-attack lockout cleared");
                state.ok_or_else(|| {
                    BackendError::Unavailable(
                        "the lockout was cleared but the TPM's dictionary-attack state could \
                         not be read back"
                            .into(),
                    )
                })
            }
            Err(e) => {
                let recovery = state.map_or("?".into(), |s| s.lockout_recovery.to_string());
                match classify(&e) {
                    Class::Tpm(Some(
                        Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth,
                    )) => {
                        tracing::warn!(tcti = %self.tcti(), "wrong lockout authorization");
                        Err(BackendError::Refused(format!(
                            "the TPM refused the lockout authorization ({}); the lockout \
                             hierarchy now refuses every authorization for {recovery} s \
                             (lockout recovery; 0: until the TPM is reset)",
                            describe(&e)
                        )))
                    }
                    Class::Tpm(Some(Tss2ResponseCodeKind::Lockout)) => {
                        Err(BackendError::Unavailable(format!(
                            "the TPM's lockout hierarchy is locked after a wrong lockout \
                             authorization ({}): it accepts one again {recovery} s after that \
                             failure (lockout recovery; 0: only after the TPM is reset)",
                            describe(&e)
                        )))
                    }
                    _ => Err(self.fail("clearing the dictionary-attack lockout", e)),
                }
            }
        }
    }

    /// Evicts a persisted key; MOSIP primaries cannot be destroyed.
    pub fn op_destroy(&mut self, key: TpmRef) -> Result<(), BackendError> {
        match key {
            TpmRef::Mosip(_) => Err(BackendError::Unsupported(format!(
                "{key} is derived from the TPM's endorsement seed and cannot be destroyed"
            ))),
            TpmRef::Persistent(h, _) => {
                let (obj, public) = self.open_persistent(h)?;
                // Never evict another key that now lives at a reused handle.
                if let Err(e) = check_fingerprint(key, &public) {
                    self.close(obj);
                    return Err(e);
                }
                let res = self.evict_control(obj, h);
                // Close the ESYS resource in every case: after a successful eviction ESYS still
                // remembers this TPM handle with the old key's name, and a key later persisted at
                // the same handle could not be opened ("name mismatch").
                self.close(obj);
                res
            }
        }
    }
}

/// The label as sent to the TPM. The TPM (Part 3, RSA_Decrypt) requires a non-empty label to end
/// in a zero byte (else TPM_RC_VALUE) and uses all its bytes, the zero included, as the OAEP label
/// L. So the caller's bytes are passed unchanged: an empty label is OAEP's empty label, `[0x00]`
/// is the one-zero-byte label (OpenSSL `rsa_oaep_label:00`), `b"abc\0"` is OpenSSL's
/// `rsa_oaep_label:61626300`. A label without the terminating zero is `BadInput`: such a label
/// cannot be used with a TPM at all.
fn tpm_label(label: &[u8]) -> Result<Data, BackendError> {
    if label.last().is_some_and(|b| *b != 0) {
        // The TPM would answer TPM_RC_VALUE (parameter 3); say why instead.
        return Err(BackendError::BadInput(
            "a TPM OAEP label must be empty or end with a zero byte".into(),
        ));
    }
    Data::try_from(label.to_vec())
        .map_err(|_| BackendError::BadInput(format!("OAEP label too long ({} bytes)", label.len())))
}

/// The TPM's dictionary-attack state from its variable properties (None when they cannot be
/// read).
pub(super) fn da_state(ctx: &mut tss_esapi::Context) -> Option<DaState> {
    use tss_esapi::constants::PropertyTag;
    let (data, _) = ctx
        .execute_without_session(|c| {
            c.get_capability(
                tss_esapi::constants::CapabilityType::TpmProperties,
                PropertyTag::Permanent.into(),
                18,
            )
        })
        .ok()?;
    let tss_esapi::structures::CapabilityData::TpmProperties(p) = data else {
        return None;
    };
    let get = |t: PropertyTag| p.find(t).map(|x| x.value());
    Some(DaState {
        counter: get(PropertyTag::LockoutCounter)?,
        max_tries: get(PropertyTag::MaxAuthFail)?,
        // TPMA_PERMANENT bit 9: inLockout.
        in_lockout: get(PropertyTag::Permanent)? & (1 << 9) != 0,
        interval: get(PropertyTag::LockoutInterval)?,
        lockout_recovery: get(PropertyTag::LockoutRecovery)?,
    })
}

/// `dictionary attack: N of M failures, lockout no|YES (one failure forgotten every Is,
/// lockout recovery Rs)`.
fn da_line(s: &DaState) -> String {
    format!(
        "dictionary attack: {} of {} failures, lockout {} (one failure forgotten every {} s, \
         lockout recovery {} s)",
        s.counter,
        s.max_tries,
        if s.in_lockout { "YES" } else { "no" },
        s.interval,
        s.lockout_recovery,
    )
}
