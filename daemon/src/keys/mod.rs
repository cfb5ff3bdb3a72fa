//! Keys: the registry's records, version selection (current, by number, by thumbprint), the
//! MOSIP validity policy, and the admin changes (create, rotate, retire, destroy).
//!
//! Methods that touch a backend block: call them from a blocking worker thread.

mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use custody_proto::ErrorCode;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::backend::{Backend, BackendKind, Health, KeyKind, NewKey, Template};
use crate::config::{DeclaredKey, KeyPolicy};
use crate::error::OpError;
pub use store::{Store, StoreError};

/// State of a key version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionState {
    /// The current version: signs, encrypts, decrypts.
    Active,
    /// Superseded by a rotation: still decrypts and verifies.
    DecryptOnly,
    /// Refused for every operation; the object still exists in the backend.
    Retired,
    /// Removed from the backend.
    Destroyed,
}

impl VersionState {
    /// Name used in the registry and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Active => "active",
            VersionState::DecryptOnly => "decrypt-only",
            VersionState::Retired => "retired",
            VersionState::Destroyed => "destroyed",
        }
    }

    /// Parses a state name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(VersionState::Active),
            "decrypt-only" => Some(VersionState::DecryptOnly),
            "retired" => Some(VersionState::Retired),
            "destroyed" => Some(VersionState::Destroyed),
            _ => None,
        }
    }
}

/// One version of a key as recorded.
#[derive(Clone, Debug)]
pub struct VersionRecord {
    /// Version number, from 1.
    pub version: u32,
    /// State.
    pub state: VersionState,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Expiry, Unix seconds.
    pub not_after: i64,
    /// Backend's reference to the object.
    pub backend_ref: String,
    /// DER SubjectPublicKeyInfo (asymmetric kinds).
    pub public_der: Option<Vec<u8>>,
    /// Marshalled TPMT_PUBLIC (TPM keys).
    pub public_tpmt: Option<Vec<u8>>,
    /// SHA-256 of `public_der`.
    pub thumbprint: Option<[u8; 32]>,
    /// The secret wrapped under the master key (`wrapped` backend).
    pub wrapped: Option<Vec<u8>>,
}

/// A key and all its versions as recorded.
#[derive(Clone, Debug)]
pub struct KeyRecord {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: KeyKind,
    /// Backend.
    pub backend: BackendKind,
    /// Template.
    pub template: Template,
    /// Master key name (`wrapped` backend).
    pub master: Option<String>,
    /// Validity of each version, days.
    pub validity_days: u32,
    /// Days before expiry at which the version stops being current.
    pub pre_expire_days: u32,
    /// Versions, ascending.
    pub versions: Vec<VersionRecord>,
}

impl KeyRecord {
    /// The active version (the highest one that is `active`).
    pub fn current(&self) -> Option<&VersionRecord> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.state == VersionState::Active)
    }

    /// A version by number.
    pub fn version(&self, n: u32) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == n)
    }

    /// True when `v` is past its usable period: now ≥ not_after − pre_expire. MOSIP-template
    /// TPM keys never expire: they are the machine's identity for the TPM's lifetime (the same
    /// TPM always yields the same key), so no new version could replace them.
    pub fn expired(&self, v: &VersionRecord, now: i64) -> bool {
        self.template != Template::Mosip
            && (now < v.created || now >= v.not_after - i64::from(self.pre_expire_days) * 86_400)
    }
}

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
    /// Master key name (`wrapped` backend).
    pub master: Option<String>,
    /// Validity override.
    pub validity_days: Option<u32>,
    /// Pre-expiry override.
    pub pre_expire_days: Option<u32>,
}

/// Checks a key name: 1–64 characters of `A-Za-z0-9._-`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("a key name has 1 to 64 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "key name `{}` may contain only A-Z a-z 0-9 . _ -",
            name.escape_default()
        ));
    }
    Ok(())
}

/// Unix time now, seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The registry (cached in memory, written through to SQLite) and the backends.
pub struct KeyManager {
    store: Mutex<Store>,
    cache: RwLock<HashMap<String, Arc<KeyRecord>>>,
    backends: HashMap<BackendKind, Arc<dyn Backend>>,
    policy: KeyPolicy,
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::internal(e.to_string())
    }
}

impl KeyManager {
    /// Opens the registry and loads it into memory.
    pub fn open(
        path: &Path,
        backends: Vec<Arc<dyn Backend>>,
        policy: KeyPolicy,
    ) -> Result<KeyManager, StoreError> {
        let store = Store::open(path)?;
        let cache = store
            .load_all()?
            .into_iter()
            .map(|k| (k.name.clone(), Arc::new(k)))
            .collect();
        Ok(KeyManager {
            store: Mutex::new(store),
            cache: RwLock::new(cache),
            backends: backends.into_iter().map(|b| (b.kind(), b)).collect(),
            policy,
        })
    }

    /// The backend of a kind, or `backend_unavailable` when it is not configured.
    pub fn backend(&self, kind: BackendKind) -> Result<Arc<dyn Backend>, OpError> {
        self.backends.get(&kind).cloned().ok_or_else(|| {
            OpError::new(
                ErrorCode::BackendUnavailable,
                format!("backend `{kind}` is not configured"),
            )
        })
    }

    /// Health of every configured backend (probes them: blocks).
    pub fn health(&self) -> Vec<(BackendKind, Health)> {
        let mut v: Vec<_> = self
            .backends
            .iter()
            .map(|(k, b)| (*k, b.health()))
            .collect();
        v.sort_by_key(|(k, _)| k.as_str());
        v
    }

    /// Names of configured backends (no probe).
    pub fn backend_kinds(&self) -> Vec<BackendKind> {
        let mut v: Vec<_> = self.backends.keys().copied().collect();
        v.sort_by_key(|k| k.as_str());
        v
    }

    /// A key's record, or `not_found`.
    pub fn get(&self, name: &str) -> Result<Arc<KeyRecord>, OpError> {
        let cache = match self.cache.read() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        cache
            .get(name)
            .cloned()
            .ok_or_else(|| OpError::new(ErrorCode::NotFound, format!("no key named `{name}`")))
    }

    /// Every key, by name.
    pub fn list(&self) -> Vec<Arc<KeyRecord>> {
        let cache = match self.cache.read() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        let mut v: Vec<_> = cache.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn publish(&self, rec: KeyRecord) -> Arc<KeyRecord> {
        let rec = Arc::new(rec);
        let mut cache = match self.cache.write() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        cache.insert(rec.name.clone(), rec.clone());
        rec
    }

    fn lock_store(&self) -> std::sync::MutexGuard<'_, Store> {
        match self.store.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// Creates every declared key that is missing (at start-up).
    pub fn ensure_declared(&self, decls: &[DeclaredKey]) -> Result<(), OpError> {
        for d in decls {
            if self.get(&d.name).is_ok() {
                continue;
            }
            let spec = CreateSpec {
                name: d.name.clone(),
                kind: KeyKind::parse(&d.kind)
                    .ok_or_else(|| OpError::bad(format!("unknown kind `{}`", d.kind)))?,
                backend: BackendKind::parse(&d.backend)
                    .ok_or_else(|| OpError::bad(format!("unknown backend `{}`", d.backend)))?,
                template: d
                    .template
                    .as_deref()
                    .map(|t| {
                        Template::parse(t)
                            .ok_or_else(|| OpError::bad(format!("unknown template `{t}`")))
                    })
                    .transpose()?
                    .unwrap_or_default(),
                master: d.master.clone(),
                validity_days: d.validity_days,
                pre_expire_days: d.pre_expire_days,
            };
            self.create(&spec)?;
            tracing::info!(key = %d.name, "created declared key");
        }
        Ok(())
    }

    /// Creates a key with version 1; durable before it returns.
    pub fn create(&self, spec: &CreateSpec) -> Result<Arc<KeyRecord>, OpError> {
        validate_name(&spec.name).map_err(OpError::bad)?;
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
        if spec.backend == BackendKind::Wrapped && spec.master.is_none() {
            return Err(OpError::bad(
                "the wrapped backend needs `master` (an aes256 key)",
            ));
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
        let v = self.new_version(&rec, 1)?;
        rec.versions.push(v);
        if let Err(e) = store.insert_key(&rec) {
            self.discard(&rec, &rec.versions[0]);
            return Err(e.into());
        }
        // Published before the store lock is released, so the next admin change sees it.
        let rec = self.publish(rec);
        drop(store);
        Ok(rec)
    }

    /// Makes a new current version; previous active versions become decrypt-only.
    pub fn rotate(&self, name: &str) -> Result<Arc<KeyRecord>, OpError> {
        self.rotate_if(name, |_| true)
    }

    /// Rotates under the registry lock if `still_needed` holds for the record as it is then
    /// (used by automatic rotation so concurrent requests on an expired key rotate it once);
    /// otherwise returns the record unchanged.
    fn rotate_if(
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
        let next = rec.versions.last().map(|v| v.version + 1).unwrap_or(1);
        let v = self.new_version(&rec, next)?;
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
        // A master version still wrapping live keys must stay usable, or those keys are lost.
        let reference = format!("{name}:v{version}");
        if let Some(user) = self.list().iter().find(|k| {
            k.backend == BackendKind::Wrapped
                && k.versions
                    .iter()
                    .any(|w| w.state != VersionState::Destroyed && w.backend_ref == reference)
        }) {
            return Err(OpError::bad(format!(
                "version {version} of `{name}` still wraps key `{}`; destroy those versions first",
                user.name
            )));
        }
        if to == VersionState::Destroyed && !self.shared_object(&rec, idx) {
            match rec.backend {
                BackendKind::Wrapped => {}
                b => match self.backend(b)?.destroy(&v.backend_ref) {
                    Ok(()) | Err(crate::backend::BackendError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                },
            }
        }
        store.set_state(name, version, to)?;
        rec.versions[idx].state = to;
        if to == VersionState::Destroyed {
            rec.versions[idx].wrapped = None;
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
                .any(|(i, v)| i != idx && v.state != VersionState::Destroyed && &v.backend_ref == r)
    }

    fn new_version(&self, rec: &KeyRecord, version: u32) -> Result<VersionRecord, OpError> {
        let created = now();
        let not_after = created + i64::from(rec.validity_days) * 86_400;
        let (backend_ref, public, wrapped) = if rec.backend == BackendKind::Wrapped {
            let (r, w) = self.new_wrapped(rec)?;
            (r, None, Some(w))
        } else {
            let b = self.backend(rec.backend)?;
            let c = b.create(&NewKey {
                name: &rec.name,
                version,
                kind: rec.kind,
                template: rec.template,
            })?;
            (c.backend_ref, c.public, None)
        };
        if let Some(p) = &public {
            if let Err(e) = check_public(p) {
                if rec.template != Template::Mosip {
                    if let Ok(b) = self.backend(rec.backend) {
                        let _ = b.destroy(&backend_ref);
                    }
                }
                return Err(e);
            }
        }
        let thumbprint = public
            .as_ref()
            .map(|p| crate::format::thumbprint::thumbprint(&p.spki_der));
        Ok(VersionRecord {
            version,
            state: VersionState::Active,
            created,
            not_after,
            backend_ref,
            public_der: public.as_ref().map(|p| p.spki_der.clone()),
            public_tpmt: public.and_then(|p| p.tpmt),
            thumbprint,
            wrapped,
        })
    }

    /// Generates a software secret and wraps it under the current version of the master key.
    fn new_wrapped(&self, rec: &KeyRecord) -> Result<(String, Vec<u8>), OpError> {
        if rec.kind != KeyKind::Aes256 {
            return Err(OpError::new(
                ErrorCode::WrongKind,
                format!("the wrapped backend holds aes256 keys, not {}", rec.kind),
            ));
        }
        let master_name = rec.master.as_deref().unwrap_or_default();
        let master = self.get(master_name)?;
        if master.kind != KeyKind::Aes256 || master.backend == BackendKind::Wrapped {
            return Err(OpError::new(
                ErrorCode::WrongKind,
                format!("master key `{master_name}` must be an aes256 key in a hardware backend"),
            ));
        }
        let mv = master.current().ok_or_else(|| {
            OpError::new(
                ErrorCode::KeyRetired,
                format!("master `{master_name}` has no current version"),
            )
        })?;
        let mut secret = Zeroizing::new(vec![0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let blob = self
            .backend(master.backend)?
            .wrap_secret(&mv.backend_ref, &secret)?;
        Ok((format!("{master_name}:v{}", mv.version), blob))
    }

    /// Unwraps the software secret of a `wrapped` key version (for the operations that use one).
    pub fn software_secret(
        &self,
        rec: &KeyRecord,
        v: &VersionRecord,
    ) -> Result<Zeroizing<Vec<u8>>, OpError> {
        let blob = v.wrapped.as_deref().ok_or_else(|| {
            OpError::new(
                ErrorCode::WrongKind,
                format!("`{}` is not a wrapped key", rec.name),
            )
        })?;
        let (master_name, mver) = v
            .backend_ref
            .rsplit_once(":v")
            .and_then(|(n, ver)| ver.parse::<u32>().ok().map(|ver| (n, ver)))
            .ok_or_else(|| OpError::internal("wrapped key reference is malformed"))?;
        let master = self.get(master_name)?;
        let mv = master.version(mver).ok_or_else(|| {
            OpError::new(
                ErrorCode::NotFound,
                format!("master `{master_name}` v{mver} is gone"),
            )
        })?;
        usable(&master, mv)?;
        Ok(self
            .backend(master.backend)?
            .unwrap_secret(&mv.backend_ref, blob)?)
    }

    fn discard(&self, rec: &KeyRecord, v: &VersionRecord) {
        if rec.backend == BackendKind::Wrapped || rec.template == Template::Mosip {
            return;
        }
        if let Ok(b) = self.backend(rec.backend) {
            if let Err(e) = b.destroy(&v.backend_ref) {
                tracing::warn!(key = %rec.name, "could not discard backend object: {e}");
            }
        }
    }

    /// The record and the version to use for a new signature or encryption: the current one,
    /// rotated first when expired and the policy says so, else `key_expired`.
    pub fn current(&self, name: &str) -> Result<(Arc<KeyRecord>, u32), OpError> {
        let rec = self.get(name)?;
        let cur = rec.current().ok_or_else(|| {
            OpError::new(
                ErrorCode::KeyRetired,
                format!("key `{name}` has no active version"),
            )
        })?;
        if !rec.expired(cur, now()) {
            let v = cur.version;
            return Ok((rec, v));
        }
        if !self.policy.auto_rotate {
            return Err(OpError::new(
                ErrorCode::KeyExpired,
                format!("current version {} of `{name}` has expired", cur.version),
            ));
        }
        let old = cur.version;
        // Concurrent requests may all see the expired version: only the first rotates.
        let rec = self.rotate_if(name, |r| {
            r.current()
                .is_none_or(|c| c.version == old || r.expired(c, now()))
        })?;
        let cur = rec.current().ok_or_else(|| {
            OpError::new(
                ErrorCode::KeyRetired,
                format!("key `{name}` has no active version"),
            )
        })?;
        let v = cur.version;
        Ok((rec, v))
    }
}

/// Checks a new public key before it is recorded: a TPM key's `TPMT_PUBLIC` (what MOSIP
/// registers) must describe exactly the key of the DER SubjectPublicKeyInfo handed out, read by
/// the independent parser in [`crate::format::tpm_public`].
fn check_public(p: &crate::backend::PublicKeyInfo) -> Result<(), OpError> {
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
