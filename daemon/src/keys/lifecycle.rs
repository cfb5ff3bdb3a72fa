//! Admin changes: create, rotate, retire, destroy, and declared keys at start-up. Each change is
//! durable in the registry before the new record is published to the cache, under the registry
//! lock, so the next change sees it.

use std::sync::Arc;

use custody_proto::ErrorCode;

use super::record::{now, KeyRecord, MasterRef, SealedSecret, VersionRecord, VersionState};
use super::select::usable;
use super::KeyManager;
use crate::backend::{
    software, validate_key_name, BackendError, BackendKind, ExistingKey, KeyKind, KeyRef, Master,
    NewKey, PublicKeyInfo, Template,
};
use crate::config::DeclaredKey;
use crate::error::OpError;

/// What `create` needs.
#[derive(Clone, Debug)]
pub struct CreateSpec {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: KeyKind,
    /// Backend.
    pub backend: BackendKind,
    /// Template.
    pub template: Template,
    /// Master key name (software backend).
    pub master: Option<String>,
    /// Validity override.
    pub validity_days: Option<u32>,
    /// Pre-expiry override.
    pub pre_expire_days: Option<u32>,
}

impl From<&DeclaredKey> for CreateSpec {
    fn from(d: &DeclaredKey) -> Self {
        CreateSpec {
            name: d.name.clone(),
            kind: d.kind,
            backend: d.backend,
            template: d.template,
            master: d.master.clone(),
            validity_days: d.validity_days,
            pre_expire_days: d.pre_expire_days,
        }
    }
}

impl KeyManager {
    /// Creates every declared key that is missing (at start-up).
    pub fn ensure_declared(&self, decls: &[DeclaredKey]) -> Result<(), OpError> {
        for d in decls {
            if self.get(&d.name).is_ok() {
                continue;
            }
            self.create(&CreateSpec::from(d))?;
            tracing::info!(key = %d.name, "created declared key");
        }
        Ok(())
    }

    /// Creates a key with version 1; durable before it returns.
    pub fn create(&self, spec: &CreateSpec) -> Result<Arc<KeyRecord>, OpError> {
        self.create_from(spec, None)
    }

    /// Creates a software key whose version 1 is `secret` (a password-derived X25519 key),
    /// wrapped under the spec's master like a generated secret; durable before it returns. Later
    /// versions (rotation) are generated as usual.
    pub fn import(&self, spec: &CreateSpec, secret: &[u8]) -> Result<Arc<KeyRecord>, OpError> {
        if spec.backend != BackendKind::Software {
            return Err(OpError::bad(format!(
                "a given secret can only be kept by the software backend, not {}",
                spec.backend
            )));
        }
        self.create_from(spec, Some(secret))
    }

    fn create_from(
        &self,
        spec: &CreateSpec,
        secret: Option<&[u8]>,
    ) -> Result<Arc<KeyRecord>, OpError> {
        validate_key_name(&spec.name).map_err(OpError::bad)?;
        let validity_days = spec.validity_days.unwrap_or(self.policy.validity_days);
        let pre_expire_days = spec.pre_expire_days.unwrap_or(self.policy.pre_expire_days);
        if validity_days == 0 || pre_expire_days >= validity_days {
            return Err(OpError::bad(
                "validity_days must be > 0 and greater than pre_expire_days",
            ));
        }
        if spec.template == Template::Mosip && spec.backend != BackendKind::Tpm {
            return Err(OpError::bad(
                "template `mosip` exists only for the tpm backend",
            ));
        }
        match (spec.backend, &spec.master) {
            (BackendKind::Software, None) => {
                return Err(OpError::bad(
                    "the software backend needs `master` (an aes256 key in hardware)",
                ))
            }
            (BackendKind::External, _) => {
                return Err(OpError::bad(
                    "external (public-only) keys are imported with keys.import, not created",
                ))
            }
            (BackendKind::Tpm | BackendKind::Pkcs11, Some(_)) => {
                return Err(OpError::bad(format!(
                    "`master` is only for the software backend, not {}",
                    spec.backend
                )))
            }
            _ => {}
        }
        let mut store = self.lock_store();
        if store.exists(&spec.name)? {
            return Err(OpError::new(
                ErrorCode::AlreadyExists,
                format!("key `{}` already exists", spec.name),
            ));
        }
        let mut rec = KeyRecord {
            name: spec.name.clone(),
            kind: spec.kind,
            backend: spec.backend,
            template: spec.template,
            master: spec.master.clone(),
            validity_days,
            pre_expire_days,
            versions: Vec::new(),
        };
        let v = self.new_version(&rec, 1, secret)?;
        rec.versions.push(v);
        if let Err(e) = store.insert_key(&rec) {
            self.discard(&rec, &rec.versions[0]);
            return Err(e.into());
        }
        // Published before the store lock is released, so the next admin change sees it.
        Ok(self.publish(rec))
    }

    /// Registers a key that already exists in a backend (`keys.adopt`) as version 1 of a new key
    /// `name`, after the backend checked its kind and protection; durable before it returns.
    /// One object is adopted under one name only. The object stays the token owner's: destroying
    /// the version later only forgets it.
    pub fn adopt(
        &self,
        name: &str,
        kind: KeyKind,
        backend: BackendKind,
        at: &ExistingKey,
    ) -> Result<Arc<KeyRecord>, OpError> {
        validate_key_name(name).map_err(OpError::bad)?;
        if backend != BackendKind::Pkcs11 {
            return Err(OpError::bad(format!(
                "keys are adopted from a pkcs11 token, not the {backend} backend"
            )));
        }
        let mut store = self.lock_store();
        if store.exists(name)? {
            return Err(OpError::new(
                ErrorCode::AlreadyExists,
                format!("key `{name}` already exists"),
            ));
        }
        let c = self.backend(backend)?.adopt(kind, at)?;
        if let Some(other) = self.list().iter().find(|k| {
            k.backend == backend
                && k.versions
                    .iter()
                    .any(|v| v.is_live() && v.backend_ref == c.backend_ref)
        }) {
            return Err(OpError::new(
                ErrorCode::AlreadyExists,
                format!("that token object is already key `{}`", other.name),
            ));
        }
        let created = now();
        let rec = KeyRecord {
            name: name.to_owned(),
            kind,
            backend,
            template: Template::Default,
            master: None,
            validity_days: self.policy.validity_days,
            pre_expire_days: self.policy.pre_expire_days,
            versions: vec![VersionRecord {
                version: 1,
                state: VersionState::Active,
                created,
                not_after: created + i64::from(self.policy.validity_days) * 86_400,
                backend_ref: c.backend_ref,
                thumbprint: c
                    .public
                    .as_ref()
                    .map(|p| crate::format::thumbprint::thumbprint(&p.spki_der)),
                public_der: c.public.map(|p| p.spki_der),
                public_tpmt: None,
                sealed: None,
                certs: Vec::new(),
                adopted: true,
            }],
        };
        store.insert_key(&rec)?;
        let rec = self.publish(rec);
        drop(store);
        tracing::info!(key = %name, kind = %kind, "key adopted from the token");
        Ok(rec)
    }

    /// Makes a new current version; previous active versions become decrypt-only.
    pub fn rotate(&self, name: &str) -> Result<Arc<KeyRecord>, OpError> {
        self.rotate_if(name, |_| true)
    }

    /// Rotates under the registry lock if `still_needed` holds for the record as it is then
    /// (used by automatic rotation so concurrent requests on an expired key rotate it once);
    /// otherwise returns the record unchanged.
    pub(super) fn rotate_if(
        &self,
        name: &str,
        still_needed: impl FnOnce(&KeyRecord) -> bool,
    ) -> Result<Arc<KeyRecord>, OpError> {
        let mut store = self.lock_store();
        let current = self.get(name)?;
        if !still_needed(&current) {
            return Ok(current);
        }
        let mut rec = (*current).clone();
        if rec.template == Template::Mosip {
            return Err(OpError::bad(format!(
                "`{name}` uses the mosip template: the TPM always derives the same key from it, \
                 so it cannot be rotated"
            )));
        }
        let next = rec.next_version();
        let v = self.new_version(&rec, next, None)?;
        if let Err(e) = store.rotate(name, &v) {
            self.discard(&rec, &v);
            return Err(e.into());
        }
        for old in rec.versions.iter_mut() {
            if old.state == VersionState::Active {
                old.state = VersionState::DecryptOnly;
            }
        }
        rec.versions.push(v);
        let rec = self.publish(rec);
        drop(store);
        tracing::info!(key = %name, version = next, "rotated");
        Ok(rec)
    }

    /// Retires a non-current version: every operation with it is refused from now on.
    pub fn retire(&self, name: &str, version: u32) -> Result<Arc<KeyRecord>, OpError> {
        self.change_state(name, version, VersionState::Retired)
    }

    /// Destroys a non-current version in its backend and records it destroyed.
    pub fn destroy(&self, name: &str, version: u32) -> Result<Arc<KeyRecord>, OpError> {
        self.change_state(name, version, VersionState::Destroyed)
    }

    fn change_state(
        &self,
        name: &str,
        version: u32,
        to: VersionState,
    ) -> Result<Arc<KeyRecord>, OpError> {
        let mut store = self.lock_store();
        let mut rec = (*self.get(name)?).clone();
        let Some(idx) = rec.versions.iter().position(|v| v.version == version) else {
            return Err(OpError::new(
                ErrorCode::NotFound,
                format!("key `{name}` has no version {version}"),
            ));
        };
        let v = &rec.versions[idx];
        if v.state == VersionState::Active {
            return Err(OpError::bad(format!(
                "version {version} of `{name}` is current; rotate first"
            )));
        }
        if v.state == VersionState::Destroyed {
            return Err(OpError::new(
                ErrorCode::KeyRetired,
                format!("version {version} of `{name}` is already destroyed"),
            ));
        }
        // A master version still wrapping a live (not destroyed) software key version must stay
        // usable, or that key is lost.
        if let Some(user) = self.list().iter().find(|k| {
            k.versions.iter().any(|w| {
                w.is_live()
                    && w.sealed
                        .as_ref()
                        .is_some_and(|s| s.master.name == name && s.master.version == version)
            })
        }) {
            return Err(OpError::bad(format!(
                "version {version} of `{name}` still wraps key `{}`; destroy those versions first",
                user.name
            )));
        }
        if let Some(pool) = self.pool_using(name, version) {
            return Err(OpError::bad(format!(
                "version {version} of `{name}` still wraps keys of zk pool `{pool}`; run \
                 `zk rotate-master {pool}` first"
            )));
        }
        if to == VersionState::Destroyed && !v.adopted && !self.shared_object(&rec, idx) {
            match self
                .backend(rec.backend)?
                .destroy(&KeyRef::object(&v.backend_ref))
            {
                Ok(()) | Err(BackendError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        store.set_state(name, version, to)?;
        rec.versions[idx].state = to;
        if to == VersionState::Destroyed {
            rec.versions[idx].sealed = None;
        }
        let rec = self.publish(rec);
        drop(store);
        tracing::info!(key = %name, version, state = to.as_str(), "version state changed");
        Ok(rec)
    }

    /// True when another live version refers to the same backend object (MOSIP-template TPM
    /// keys are one primary per template: destroying one version must not destroy the others).
    fn shared_object(&self, rec: &KeyRecord, idx: usize) -> bool {
        let r = &rec.versions[idx].backend_ref;
        rec.template == Template::Mosip
            || rec
                .versions
                .iter()
                .enumerate()
                .any(|(i, v)| i != idx && v.is_live() && !r.is_empty() && &v.backend_ref == r)
    }

    /// The current version of a master key, checked to be an `aes256` key held in hardware.
    pub(super) fn master_for_new(&self, name: &str) -> Result<(MasterRef, Master), OpError> {
        let master = self.get(name)?;
        if master.kind != KeyKind::Aes256 || master.backend == BackendKind::Software {
            return Err(OpError::new(
                ErrorCode::WrongKind,
                format!("master key `{name}` must be an aes256 key in a hardware backend"),
            ));
        }
        let mv = master.current().ok_or_else(|| {
            OpError::new(
                ErrorCode::KeyRetired,
                format!("master `{name}` has no current version"),
            )
        })?;
        usable(&master, mv)?;
        Ok((
            MasterRef {
                name: name.to_owned(),
                version: mv.version,
            },
            Master {
                backend: self.backend(master.backend)?,
                object: mv.backend_ref.clone(),
            },
        ))
    }

    /// Makes version `version` of `rec` in its backend: generated, or from `secret` when given.
    fn new_version(
        &self,
        rec: &KeyRecord,
        version: u32,
        secret: Option<&[u8]>,
    ) -> Result<VersionRecord, OpError> {
        let created = now();
        let not_after = created + i64::from(rec.validity_days) * 86_400;
        let master = rec
            .master
            .as_deref()
            .map(|m| self.master_for_new(m))
            .transpose()?;
        let aad = software::aad(&rec.name, version, rec.kind);
        let new = NewKey {
            name: &rec.name,
            version,
            kind: rec.kind,
            template: rec.template,
            master: master.as_ref().map(|(_, m)| (m, &aad[..])),
        };
        let backend = self.backend(rec.backend)?;
        let c = match secret {
            None => backend.create(&new)?,
            Some(s) => backend.import(&new, s)?,
        };
        if let Some(p) = &c.public {
            if let Err(e) = check_public(p) {
                if rec.template != Template::Mosip {
                    if let Ok(b) = self.backend(rec.backend) {
                        let _ = b.destroy(&KeyRef::object(&c.backend_ref));
                    }
                }
                return Err(e);
            }
        }
        let sealed = match (c.sealed, master) {
            (Some(blob), Some((m, _))) => Some(SealedSecret {
                blob,
                master: m,
                aad_bound: true,
            }),
            (None, None) => None,
            _ => return Err(OpError::internal("backend returned no wrapped secret")),
        };
        let thumbprint = c
            .public
            .as_ref()
            .map(|p| crate::format::thumbprint::thumbprint(&p.spki_der));
        Ok(VersionRecord {
            version,
            state: VersionState::Active,
            created,
            not_after,
            backend_ref: c.backend_ref,
            public_der: c.public.as_ref().map(|p| p.spki_der.clone()),
            public_tpmt: c.public.and_then(|p| p.tpmt),
            thumbprint,
            sealed,
            certs: Vec::new(),
            adopted: false,
        })
    }

    fn discard(&self, rec: &KeyRecord, v: &VersionRecord) {
        if rec.template == Template::Mosip {
            return;
        }
        if let Ok(b) = self.backend(rec.backend) {
            if let Err(e) = b.destroy(&KeyRef::object(&v.backend_ref)) {
                tracing::warn!(key = %rec.name, "could not discard backend object: {e}");
            }
        }
    }

    /// Re-wraps secrets written before they were bound to their key version by AAD (registries
    /// from before the software backend): unwrapped with the empty AAD they were made with,
    /// wrapped again with the binding AAD, stored in one transaction each. A master that cannot
    /// be reached now leaves the blob as it is (still usable) until the next start.
    pub(super) fn reseal_legacy(&self) {
        for rec in self.list() {
            for v in rec.versions.iter().filter(|v| v.is_live()) {
                let Some(s) = v.sealed.as_ref().filter(|s| !s.aad_bound) else {
                    continue;
                };
                match self.reseal_one(&rec, v, s) {
                    Ok(()) => {
                        tracing::info!(key = %rec.name, version = v.version, "wrapped secret bound to its key version")
                    }
                    Err(e) => tracing::warn!(
                        key = %rec.name,
                        version = v.version,
                        "wrapped secret not yet bound to its key version (retried at next start): {e}"
                    ),
                }
            }
        }
    }

    fn reseal_one(
        &self,
        rec: &KeyRecord,
        v: &VersionRecord,
        s: &SealedSecret,
    ) -> Result<(), OpError> {
        let mut store = self.lock_store();
        let old = self.unsealer(rec, v, s)?;
        let master = KeyRef::object(&old.master.object);
        let secret = old
            .master
            .backend
            .unwrap_secret(&master, &old.blob, &old.aad)?;
        let aad = software::aad(&rec.name, v.version, rec.kind);
        let blob = old.master.backend.wrap_secret(&master, &secret, &aad)?;
        store.set_sealed(&rec.name, v.version, &blob)?;
        let mut updated = (*self.get(&rec.name)?).clone();
        if let Some(u) = updated.versions.iter_mut().find(|u| u.version == v.version) {
            u.sealed = Some(SealedSecret {
                blob,
                master: s.master.clone(),
                aad_bound: true,
            });
        }
        self.publish(updated);
        Ok(())
    }
}

/// Checks a new public key before it is recorded: a TPM key's `TPMT_PUBLIC` (what MOSIP
/// registers) must describe exactly the key of the DER SubjectPublicKeyInfo handed out, read by
/// the independent parser in [`crate::format::tpm_public`].
fn check_public(p: &PublicKeyInfo) -> Result<(), OpError> {
    if let Some(tpmt) = &p.tpmt {
        let parsed = crate::format::tpm_public::parse(tpmt).map_err(|e| {
            OpError::internal(format!(
                "TPM returned a TPMT_PUBLIC that does not parse: {e}"
            ))
        })?;
        let spki = parsed
            .to_spki_der()
            .map_err(|e| OpError::internal(format!("TPMT_PUBLIC key is not usable: {e}")))?;
        if spki != p.spki_der {
            return Err(OpError::internal(
                "TPMT_PUBLIC and SubjectPublicKeyInfo of the new key disagree",
            ));
        }
    }
    Ok(())
}
