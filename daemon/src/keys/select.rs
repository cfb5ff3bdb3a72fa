//! One resolution step: (name, kind, selector) → a key-version handle that operations call.
//! Kind checks, version selection (current, by number, by thumbprint), state checks and, for
//! software keys, finding the master that unwraps the secret all happen here, once.

use std::sync::Arc;

use custody_proto::ErrorCode;
use zeroize::Zeroizing;

use super::policy::no_active;
use super::record::{KeyRecord, SealedSecret, VersionRecord, VersionState};
use super::KeyManager;
use crate::backend::{
    software, Backend, BackendError, KeyKind, KeyRef, Master, Sealed, SignScheme,
};
use crate::error::OpError;

/// Which version of a key an operation wants.
#[derive(Clone, Copy, Debug)]
pub enum Selector<'a> {
    /// The version for a new signature or encryption: the current one, under the validity
    /// policy (rotated when expired and the policy allows, else `key_expired`).
    Current,
    /// The current (active) version as it is, without the validity policy: the default for
    /// decryption, which must keep working for data made before expiry.
    Active,
    /// A version by number.
    Version(u32),
    /// The version whose thumbprint starts with these 1–32 bytes.
    Thumbprint(&'a [u8]),
}

impl<'a> Selector<'a> {
    /// By number if given, else by thumbprint prefix if given, else [`Selector::Active`].
    pub fn for_decryption(version: Option<u32>, thumbprint: Option<&'a [u8]>) -> Self {
        match (version, thumbprint) {
            (Some(n), _) => Selector::Version(n),
            (None, Some(t)) => Selector::Thumbprint(t),
            (None, None) => Selector::Active,
        }
    }
}

/// A resolved, usable key version: what operations call. The backend behind it is hidden.
pub struct KeyVersion {
    rec: Arc<KeyRecord>,
    idx: usize,
    backend: Arc<dyn Backend>,
    sealed: Option<Sealed>,
}

impl KeyVersion {
    /// The key.
    pub fn key(&self) -> &KeyRecord {
        &self.rec
    }

    /// The version's record.
    pub fn record(&self) -> &VersionRecord {
        &self.rec.versions[self.idx]
    }

    /// The version number.
    pub fn number(&self) -> u32 {
        self.record().version
    }

    fn key_ref(&self) -> KeyRef<'_> {
        KeyRef {
            object: &self.record().backend_ref,
            sealed: self.sealed.as_ref(),
        }
    }

    /// Signs a SHA-256 digest.
    pub fn sign(&self, digest: &[u8; 32], scheme: SignScheme) -> Result<Vec<u8>, BackendError> {
        self.backend.sign(&self.key_ref(), digest, scheme)
    }

    /// RSA-OAEP-SHA256 decryption.
    pub fn decrypt_oaep(
        &self,
        ciphertext: &[u8],
        label: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.backend
            .decrypt_oaep(&self.key_ref(), ciphertext, label)
    }

    /// Pure Ed25519 signature of `data` (an `ed25519` key).
    pub fn sign_ed25519(&self, data: &[u8]) -> Result<Vec<u8>, BackendError> {
        self.backend.sign_ed25519(&self.key_ref(), data)
    }

    /// Opens a `nacl.box` addressed to this `x25519` key.
    pub fn box_open(
        &self,
        encryptor: &[u8; 32],
        nonce: &[u8; 24],
        boxed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.backend
            .box_open(&self.key_ref(), encryptor, nonce, boxed)
    }

    /// The secret of a software key, for one operation.
    pub fn secret(&self) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.backend.secret(&self.key_ref())
    }
}

/// Refuses retired and destroyed versions.
pub fn usable(rec: &KeyRecord, v: &VersionRecord) -> Result<(), OpError> {
    match v.state {
        VersionState::Active | VersionState::DecryptOnly => Ok(()),
        s => Err(OpError::new(
            ErrorCode::KeyRetired,
            format!("version {} of `{}` is {}", v.version, rec.name, s.as_str()),
        )),
    }
}

/// Checks a key's kind for an op.
pub fn require_kind(rec: &KeyRecord, kind: KeyKind, op: &str) -> Result<(), OpError> {
    if rec.kind == kind {
        Ok(())
    } else {
        Err(OpError::new(
            ErrorCode::WrongKind,
            format!("`{op}` needs a {kind} key; `{}` is {}", rec.name, rec.kind),
        ))
    }
}

/// The index of the version `sel` names (without the validity policy).
fn select(rec: &KeyRecord, sel: Selector<'_>) -> Result<usize, OpError> {
    let pos = |n: u32| rec.versions.iter().position(|v| v.version == n);
    let idx = match sel {
        Selector::Current | Selector::Active => rec
            .current()
            .and_then(|c| pos(c.version))
            .ok_or_else(|| no_active(&rec.name))?,
        Selector::Version(n) => pos(n).ok_or_else(|| {
            OpError::new(
                ErrorCode::NotFound,
                format!("key `{}` has no version {n}", rec.name),
            )
        })?,
        Selector::Thumbprint(p) => {
            if p.is_empty() || p.len() > 32 {
                return Err(OpError::bad("a thumbprint prefix has 1 to 32 bytes"));
            }
            let mut hits = rec
                .versions
                .iter()
                .enumerate()
                .filter(|(_, v)| v.thumbprints().any(|t| t.starts_with(p)));
            let (first, _) = hits.next().ok_or_else(|| {
                OpError::new(
                    ErrorCode::NotFound,
                    format!("no version of `{}` has that thumbprint", rec.name),
                )
            })?;
            if hits.next().is_some() {
                return Err(OpError::bad("thumbprint prefix matches several versions"));
            }
            first
        }
    };
    usable(rec, &rec.versions[idx])?;
    Ok(idx)
}

impl KeyManager {
    /// Resolves `name` for `op`, which needs a `kind` key, to the version `sel` names. The kind is
    /// checked first, so a wrong-kind request never triggers an automatic rotation.
    pub fn resolve(
        &self,
        name: &str,
        kind: KeyKind,
        op: &str,
        sel: Selector<'_>,
    ) -> Result<KeyVersion, OpError> {
        let t = crate::stages::start();
        let r = self.resolve_inner(name, kind, op, sel);
        crate::stages::end(crate::stages::Stage::Registry, t);
        r
    }

    fn resolve_inner(
        &self,
        name: &str,
        kind: KeyKind,
        op: &str,
        sel: Selector<'_>,
    ) -> Result<KeyVersion, OpError> {
        let rec = self.get(name)?;
        require_kind(&rec, kind, op)?;
        let (rec, idx) = match sel {
            Selector::Current => {
                let (rec, n) = self.current_for_use(rec)?;
                let idx = select(&rec, Selector::Version(n))?;
                (rec, idx)
            }
            other => {
                let idx = select(&rec, other)?;
                (rec, idx)
            }
        };
        self.handle(rec, idx)
    }

    /// The handle of version `idx` of `rec`.
    fn handle(&self, rec: Arc<KeyRecord>, idx: usize) -> Result<KeyVersion, OpError> {
        let backend = self.backend(rec.backend)?;
        let v = &rec.versions[idx];
        let sealed = match &v.sealed {
            Some(s) => Some(self.unsealer(&rec, v, s)?),
            None => None,
        };
        Ok(KeyVersion {
            rec,
            idx,
            backend,
            sealed,
        })
    }

    /// The master (usable version) and AAD that unwrap a software key version's secret.
    pub(super) fn unsealer(
        &self,
        rec: &KeyRecord,
        v: &VersionRecord,
        s: &SealedSecret,
    ) -> Result<Sealed, OpError> {
        let master = self.get(&s.master.name)?;
        let mv = master.version(s.master.version).ok_or_else(|| {
            OpError::new(ErrorCode::NotFound, format!("master {} is gone", s.master))
        })?;
        usable(&master, mv)?;
        Ok(Sealed {
            blob: s.blob.clone(),
            aad: if s.aad_bound {
                software::aad(&rec.name, v.version, rec.kind)
            } else {
                Vec::new()
            },
            master: Master {
                backend: self.backend(master.backend)?,
                object: mv.backend_ref.clone(),
            },
        })
    }
}
