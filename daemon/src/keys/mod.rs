//! Keys: the registry's records and their in-memory cache (this file), resolution of a key
//! version for an operation (`select`), the validity policy (`policy`), admin changes
//! (`lifecycle`), the zero-knowledge key pools (`pool`), the SQLite store with its schema migrations (`store`) and its backups
//! (`backup`).
//!
//! Methods that touch a backend block: call them from a blocking worker thread.

pub mod backup;
mod certs;
mod lifecycle;
mod policy;
pub mod pool;
mod pool_store;
mod record;
mod select;
mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use custody_proto::ErrorCode;

use crate::backend::{Backend, BackendKind, Health};
use crate::config::KeyPolicy;
use crate::error::OpError;

pub use lifecycle::CreateSpec;
pub use record::{now, KeyRecord, MasterRef, SealedSecret, VersionRecord, VersionState};
pub use select::{require_kind, usable, KeyVersion, Selector};
pub use store::{Store, StoreError, SCHEMA_VERSION};

/// The registry (cached in memory, written through to SQLite) and the backends.
pub struct KeyManager {
    store: Mutex<Store>,
    cache: RwLock<HashMap<String, Arc<KeyRecord>>>,
    backends: HashMap<BackendKind, Arc<dyn Backend>>,
    policy: KeyPolicy,
    pools: pool::Pools,
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::internal(e.to_string())
    }
}

impl KeyManager {
    /// Opens the registry (migrating an older schema), loads it into memory, and binds secrets
    /// of older registries to their key versions where their master is reachable.
    pub fn open(
        path: &Path,
        backends: Vec<Arc<dyn Backend>>,
        policy: KeyPolicy,
    ) -> Result<KeyManager, StoreError> {
        let store = Store::open(path)?;
        let pools = pool::Pools::load(store.load_pools()?);
        let cache = store
            .load_all()?
            .into_iter()
            .map(|k| (k.name.clone(), Arc::new(k)))
            .collect();
        let km = KeyManager {
            store: Mutex::new(store),
            cache: RwLock::new(cache),
            backends: backends.into_iter().map(|b| (b.kind(), b)).collect(),
            policy,
            pools,
        };
        km.reseal_legacy();
        Ok(km)
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
}
