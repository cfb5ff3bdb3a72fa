//! Zero-knowledge key pools (MOSIP K9 → ZKn, IDA K18): N random AES-256 pool keys, each stored
//! wrapped under a version of the pool's hardware master key with AAD naming the pool, the index
//! and the master version, so a blob moved to another row, pool or master version fails
//! authentication. Pool keys are unwrapped for one operation into zeroizing memory, or kept in
//! the optional bounded cache ([`KeyCache`]).
//!
//! A master rotation re-wraps in batches; each row records its master version, so after a crash
//! every key is served under the old or the new master and running the rotation again finishes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use custody_proto::ErrorCode;
use rand::{Rng, RngCore};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::pool_store::{KeyRow, PoolRow};
use super::record::now;
use super::select::usable;
use super::KeyManager;
use crate::backend::{validate_key_name, KeyKind, KeyRef, Master};
use crate::error::OpError;
use crate::format::zk::{KEY_LEN, MAX_INDEX};

/// Largest pool `zk.init` creates.
pub const MAX_POOL_SIZE: u32 = 100_000;

/// Keys re-wrapped per transaction during a master rotation.
const ROTATION_BATCH: usize = 500;

/// A pool key, unwrapped, in zeroizing memory.
pub type PoolSecret = Zeroizing<[u8; KEY_LEN]>;

/// Domain separation for the AAD of wrapped pool keys.
const AAD_CONTEXT: &[u8] = b"custodyd zk pool key v1";

/// `"custodyd zk pool key v1" ‖ 0 ‖ pool ‖ 0 ‖ index (u32 BE) ‖ master ‖ 0 ‖ master version (u32 BE)`.
pub fn pool_aad(pool: &str, index: u32, master: &str, master_version: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(AAD_CONTEXT.len() + pool.len() + master.len() + 11);
    out.extend_from_slice(AAD_CONTEXT);
    out.push(0);
    out.extend_from_slice(pool.as_bytes());
    out.push(0);
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(master.as_bytes());
    out.push(0);
    out.extend_from_slice(&master_version.to_be_bytes());
    out
}

/// One pool in memory.
struct Pool {
    row: PoolRow,
    keys: HashMap<u32, KeyRow>,
    /// Indices present, for a uniform random choice.
    order: Vec<u32>,
}

impl Pool {
    fn add(&mut self, k: KeyRow) {
        if self.keys.insert(k.index, k.clone()).is_none() {
            self.order.push(k.index);
        }
    }
}

/// What `zk.show` reports of a pool.
#[derive(Clone, Debug)]
pub struct PoolSummary {
    /// Pool name.
    pub name: String,
    /// Master key name.
    pub master: String,
    /// Recipient keys of every encryption's share.
    pub share_to: Vec<String>,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Number of keys.
    pub size: usize,
    /// Lowest and highest index present.
    pub index_range: Option<(u32, u32)>,
    /// Keys per master version, ascending by version.
    pub by_master_version: Vec<(u32, usize)>,
    /// The master version an unfinished rotation moves keys to.
    pub rotating_to: Option<u32>,
}

/// Cached pool keys by (pool, index, master version), with the time each was unwrapped.
type CacheMap = HashMap<(String, u32, u32), (PoolSecret, Instant)>;

/// The optional cache of unwrapped pool keys: bounded in entries and age, off when `cap` is 0.
/// A trade-off the operator chooses: fewer token operations against pool keys living in daemon
/// memory for up to `ttl`.
pub struct KeyCache {
    cap: usize,
    ttl: Duration,
    map: Mutex<CacheMap>,
}

impl KeyCache {
    fn new(cap: usize, ttl: Duration) -> Self {
        KeyCache {
            cap,
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheMap> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, pool: &str, index: u32, mv: u32) -> Option<PoolSecret> {
        if self.cap == 0 {
            return None;
        }
        let mut map = self.lock();
        let key = (pool.to_owned(), index, mv);
        match map.get(&key) {
            Some((k, at)) if at.elapsed() < self.ttl => Some(k.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    fn put(&self, pool: &str, index: u32, mv: u32, k: &PoolSecret) {
        if self.cap == 0 {
            return;
        }
        let mut map = self.lock();
        if map.len() >= self.cap {
            let ttl = self.ttl;
            map.retain(|_, (_, at)| at.elapsed() < ttl);
            if map.len() >= self.cap {
                map.clear();
            }
        }
        map.insert((pool.to_owned(), index, mv), (k.clone(), Instant::now()));
    }

    fn forget_pool(&self, pool: &str) {
        if self.cap > 0 {
            self.lock().retain(|(p, _, _), _| p != pool);
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Most share segments kept in memory (all pools, all recipients).
const MAX_SHARES: usize = 1_000_000;

/// Share segments already made, by (pool, index, recipient tag). A segment is the pool key
/// RSA-OAEP-encrypted to a recipient: not secret (MOSIP sends it in the clear to IDA), costly to
/// make (an RSA public-key operation), and valid as long as the pool key and the recipient version
/// are, so each is made once and reused. The tag names the recipient version and thumbprint.
#[derive(Default)]
struct ShareCache {
    map: Mutex<HashMap<(String, u32, String), Arc<str>>>,
    warming: Mutex<std::collections::HashSet<String>>,
}

/// Every pool, the cache of unwrapped pool keys, and the share segments made so far.
pub struct Pools {
    map: RwLock<HashMap<String, Arc<RwLock<Pool>>>>,
    cache: KeyCache,
    shares: ShareCache,
}

impl Pools {
    pub(super) fn load(rows: Vec<(PoolRow, Vec<KeyRow>)>) -> Self {
        let map = rows
            .into_iter()
            .map(|(row, keys)| {
                let order = keys.iter().map(|k| k.index).collect();
                let keys = keys.into_iter().map(|k| (k.index, k)).collect();
                (
                    row.name.clone(),
                    Arc::new(RwLock::new(Pool { row, keys, order })),
                )
            })
            .collect();
        Pools {
            map: RwLock::new(map),
            cache: KeyCache::new(0, Duration::ZERO),
            shares: ShareCache::default(),
        }
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn no_key(pool: &str, index: u32) -> OpError {
    OpError::new(
        ErrorCode::NotFound,
        format!("pool `{pool}` has no key at index {index}"),
    )
}

fn to_secret(v: &[u8]) -> Result<PoolSecret, OpError> {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    if v.len() != KEY_LEN {
        return Err(OpError::new(
            ErrorCode::Integrity,
            "a pool key is 32 bytes; the unwrapped value is not",
        ));
    }
    k.copy_from_slice(v);
    Ok(k)
}

impl KeyManager {
    /// Turns on the cache of unwrapped pool keys (`[zk] cache_size`, `cache_ttl_secs`).
    pub fn set_pool_cache(&mut self, cap: usize, ttl: Duration) {
        self.pools.cache = KeyCache::new(cap, ttl);
    }

    /// Entries in the pool key cache.
    pub fn pool_cache_len(&self) -> usize {
        self.pools.cache.len()
    }

    fn pool(&self, name: &str) -> Result<Arc<RwLock<Pool>>, OpError> {
        read(&self.pools.map)
            .get(name)
            .cloned()
            .ok_or_else(|| OpError::new(ErrorCode::NotFound, format!("no zk pool named `{name}`")))
    }

    /// A share segment made earlier for this pool index and recipient tag.
    pub fn share_get(&self, pool: &str, index: u32, tag: &str) -> Option<Arc<str>> {
        let map = self
            .pools
            .shares
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&(pool.to_owned(), index, tag.to_owned())).cloned()
    }

    /// Keeps a share segment for reuse.
    pub fn share_put(&self, pool: &str, index: u32, tag: &str, segment: Arc<str>) {
        let mut map = self
            .pools
            .shares
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_SHARES {
            map.clear();
        }
        map.insert((pool.to_owned(), index, tag.to_owned()), segment);
    }

    /// Share segments kept for a pool.
    pub fn shares_cached(&self, pool: &str) -> usize {
        let map = self
            .pools
            .shares
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.keys().filter(|(p, _, _)| p == pool).count()
    }

    /// Marks a pool's share warm-up as running; false if one already runs.
    pub fn warming_start(&self, pool: &str) -> bool {
        self.pools
            .shares
            .warming
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(pool.to_owned())
    }

    /// Marks a pool's share warm-up as finished.
    pub fn warming_done(&self, pool: &str) {
        self.pools
            .shares
            .warming
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(pool);
    }

    /// The indices present in a pool, ascending.
    pub fn pool_indices(&self, name: &str) -> Result<Vec<u32>, OpError> {
        let pool = self.pool(name)?;
        let mut v = read(&pool).order.clone();
        v.sort_unstable();
        Ok(v)
    }

    /// `not_found` unless the pool exists.
    pub fn require_pool(&self, name: &str) -> Result<(), OpError> {
        self.pool(name).map(|_| ())
    }

    /// The first pool with keys wrapped under version `version` of `master`, if any: such a
    /// master version must stay usable.
    pub(super) fn pool_using(&self, master: &str, version: u32) -> Option<String> {
        read(&self.pools.map).values().find_map(|p| {
            let p = read(p);
            (p.row.master == master && p.keys.values().any(|k| k.master_version == version))
                .then(|| p.row.name.clone())
        })
    }

    /// Names of every pool.
    pub fn pool_names(&self) -> Vec<String> {
        let mut v: Vec<_> = read(&self.pools.map).keys().cloned().collect();
        v.sort();
        v
    }

    /// The master (a usable version, by number) that unwraps a pool key.
    fn pool_master(&self, master: &str, version: u32) -> Result<Master, OpError> {
        let m = self.get(master)?;
        let mv = m.version(version).ok_or_else(|| {
            OpError::new(
                ErrorCode::NotFound,
                format!("master `{master}` has no version {version}"),
            )
        })?;
        usable(&m, mv)?;
        Ok(Master {
            backend: self.backend(m.backend)?,
            object: mv.backend_ref.clone(),
        })
    }

    /// Unwraps key row `k` of pool `pool` (master `master`), or takes it from the cache.
    fn unwrap_row(&self, pool: &str, master: &str, k: &KeyRow) -> Result<PoolSecret, OpError> {
        if let Some(s) = self.pools.cache.get(pool, k.index, k.master_version) {
            return Ok(s);
        }
        let m = self.pool_master(master, k.master_version)?;
        let aad = pool_aad(pool, k.index, master, k.master_version);
        let v = m
            .backend
            .unwrap_secret(&KeyRef::object(&m.object), &k.blob, &aad)?;
        let s = to_secret(&v)?;
        self.pools.cache.put(pool, k.index, k.master_version, &s);
        Ok(s)
    }

    /// Wraps pool keys under the master's current version.
    fn wrap_rows(
        &self,
        pool: &str,
        master: &str,
        keys: &[(u32, &[u8; KEY_LEN])],
        origin: &'static str,
    ) -> Result<Vec<KeyRow>, OpError> {
        let (mref, m) = self.master_for_new(master)?;
        let r = KeyRef::object(&m.object);
        keys.iter()
            .map(|(index, k)| {
                let aad = pool_aad(pool, *index, master, mref.version);
                Ok(KeyRow {
                    index: *index,
                    master_version: mref.version,
                    blob: m.backend.wrap_secret(&r, &k[..], &aad)?,
                    origin,
                })
            })
            .collect()
    }

    /// Creates pool `name` under `master` with keys at indices `0..size`, or completes an
    /// existing pool of the same master to that size (idempotent); `share_to`, when given,
    /// replaces the pool's share recipients. One transaction.
    pub fn pool_init(
        &self,
        name: &str,
        master: &str,
        size: u32,
        share_to: Option<Vec<String>>,
    ) -> Result<PoolSummary, OpError> {
        validate_key_name(name).map_err(|e| OpError::bad(format!("pool name: {e}")))?;
        if size > MAX_POOL_SIZE {
            return Err(OpError::bad(format!(
                "a pool has at most {MAX_POOL_SIZE} keys"
            )));
        }
        if let Some(s) = &share_to {
            for r in s {
                let k = self.get(r)?;
                super::require_kind(&k, KeyKind::Rsa2048Oaep, "zk.init share_to")?;
            }
        }
        // Checks the master: an aes256 key in hardware with a current version.
        self.master_for_new(master)?;
        let mut store = self.lock_store();
        let existing = read(&self.pools.map).get(name).cloned();
        let (row, new, missing) = match &existing {
            Some(p) => {
                let p = read(p);
                if p.row.master != master {
                    return Err(OpError::new(
                        ErrorCode::AlreadyExists,
                        format!("pool `{name}` exists with another master key"),
                    ));
                }
                let mut row = p.row.clone();
                if let Some(s) = share_to {
                    row.share_to = s;
                }
                let missing: Vec<u32> = (0..size).filter(|i| !p.keys.contains_key(i)).collect();
                (row, false, missing)
            }
            None => (
                PoolRow {
                    name: name.to_owned(),
                    master: master.to_owned(),
                    share_to: share_to.unwrap_or_default(),
                    created: now(),
                    rotating_to: None,
                },
                true,
                (0..size).collect(),
            ),
        };
        let mut rng = rand::rngs::OsRng;
        let mut fresh: Vec<(u32, PoolSecret)> = Vec::with_capacity(missing.len());
        for i in missing {
            let mut k = Zeroizing::new([0u8; KEY_LEN]);
            rng.fill_bytes(&mut k[..]);
            fresh.push((i, k));
        }
        let refs: Vec<(u32, &[u8; KEY_LEN])> = fresh.iter().map(|(i, k)| (*i, &**k)).collect();
        let rows = self.wrap_rows(name, master, &refs, "generated")?;
        store.add_pool_keys(&row, new, &rows)?;
        let pool = match existing {
            Some(p) => p,
            None => {
                let p = Arc::new(RwLock::new(Pool {
                    row: row.clone(),
                    keys: HashMap::new(),
                    order: Vec::new(),
                }));
                write(&self.pools.map).insert(name.to_owned(), p.clone());
                p
            }
        };
        {
            let mut p = write(&pool);
            p.row.share_to = row.share_to;
            for r in rows {
                p.add(r);
            }
        }
        drop(store);
        tracing::info!(pool = %name, master = %master, size, "zk pool initialised");
        self.pool_summary(name)
    }

    /// What a pool holds.
    pub fn pool_summary(&self, name: &str) -> Result<PoolSummary, OpError> {
        let pool = self.pool(name)?;
        let p = read(&pool);
        let mut by: HashMap<u32, usize> = HashMap::new();
        for k in p.keys.values() {
            *by.entry(k.master_version).or_default() += 1;
        }
        let mut by_master_version: Vec<_> = by.into_iter().collect();
        by_master_version.sort_unstable();
        Ok(PoolSummary {
            name: p.row.name.clone(),
            master: p.row.master.clone(),
            share_to: p.row.share_to.clone(),
            created: p.row.created,
            size: p.keys.len(),
            index_range: p
                .order
                .iter()
                .min()
                .copied()
                .zip(p.order.iter().max().copied()),
            by_master_version,
            rotating_to: p.row.rotating_to,
        })
    }

    /// Unwraps every key of a pool: the indices that fail (in order), and how many passed.
    pub fn pool_verify(&self, name: &str) -> Result<(usize, Vec<u32>), OpError> {
        let pool = self.pool(name)?;
        let (row, keys): (PoolRow, Vec<KeyRow>) = {
            let p = read(&pool);
            (p.row.clone(), p.keys.values().cloned().collect())
        };
        let mut ok = 0;
        let mut failed = Vec::new();
        for k in &keys {
            match self.unwrap_row(name, &row.master, k) {
                Ok(_) => ok += 1,
                Err(e) if e.code == ErrorCode::BackendUnavailable => return Err(e),
                Err(_) => failed.push(k.index),
            }
        }
        failed.sort_unstable();
        Ok((ok, failed))
    }

    /// The pool's share recipients.
    pub fn pool_share_to(&self, name: &str) -> Result<Vec<String>, OpError> {
        let pool = self.pool(name)?;
        let share_to = read(&pool).row.share_to.clone();
        Ok(share_to)
    }

    /// A pool key chosen uniformly at random (CSPRNG), unwrapped: `(index, key)`.
    pub fn pool_pick(&self, name: &str) -> Result<(u32, PoolSecret), OpError> {
        let pool = self.pool(name)?;
        let (row, k) = {
            let p = read(&pool);
            if p.order.is_empty() {
                return Err(OpError::new(
                    ErrorCode::NotFound,
                    format!("pool `{name}` has no keys"),
                ));
            }
            let i = p.order[rand::rngs::OsRng.gen_range(0..p.order.len())];
            let k = p.keys.get(&i).cloned().ok_or_else(|| no_key(name, i))?;
            (p.row.master.clone(), k)
        };
        Ok((k.index, self.unwrap_row(name, &row, &k)?))
    }

    /// The pool key at `index`, unwrapped (`not_found` when there is none).
    pub fn pool_key(&self, name: &str, index: u32) -> Result<PoolSecret, OpError> {
        let pool = self.pool(name)?;
        let (row, k) = {
            let p = read(&pool);
            let k = p
                .keys
                .get(&index)
                .cloned()
                .ok_or_else(|| no_key(name, index))?;
            (p.row.master.clone(), k)
        };
        self.unwrap_row(name, &row, &k)
    }

    /// Stores pool keys received from elsewhere (a share, a MOSIP export) at their indices,
    /// wrapped under the pool's master, all or nothing. A key already present with the same
    /// value is left as it is; a different value at an index refuses the whole import
    /// (`already_exists`). Returns how many were added.
    pub fn pool_import(
        &self,
        name: &str,
        keys: &[(u32, PoolSecret)],
        origin: &'static str,
    ) -> Result<usize, OpError> {
        let pool = self.pool(name)?;
        let mut store = self.lock_store();
        let (row, present): (PoolRow, Vec<KeyRow>) = {
            let p = read(&pool);
            let present = keys
                .iter()
                .filter_map(|(i, _)| p.keys.get(i).cloned())
                .collect();
            (p.row.clone(), present)
        };
        let mut given = HashMap::with_capacity(keys.len());
        for (i, k) in keys {
            if *i > MAX_INDEX {
                return Err(OpError::bad(format!("pool index {i} is out of range")));
            }
            if given.insert(*i, k).is_some() {
                return Err(OpError::bad(format!("index {i} is given twice")));
            }
        }
        let mut same = std::collections::HashSet::new();
        for k in &present {
            let have = self.unwrap_row(name, &row.master, k)?;
            let is_same = given
                .get(&k.index)
                .is_some_and(|g| bool::from(have.ct_eq(&g[..])));
            if is_same {
                same.insert(k.index);
            } else {
                return Err(OpError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "pool `{name}` already holds a different key at index {}; nothing imported",
                        k.index
                    ),
                ));
            }
        }
        let todo: Vec<(u32, &[u8; KEY_LEN])> = keys
            .iter()
            .filter(|(i, _)| !same.contains(i))
            .map(|(i, k)| (*i, &**k))
            .collect();
        let rows = self.wrap_rows(name, &row.master, &todo, origin)?;
        if !rows.is_empty() {
            store.add_pool_keys(&row, false, &rows)?;
        }
        let n = rows.len();
        {
            let mut p = write(&pool);
            for r in rows {
                p.add(r);
            }
        }
        drop(store);
        if n > 0 {
            tracing::info!(pool = %name, keys = n, origin, "zk pool keys imported");
        }
        Ok(n)
    }

    /// Rotates the pool's master and re-wraps every pool key under the new version, in batches;
    /// resumes an interrupted rotation instead of starting another. Returns how many keys this
    /// call re-wrapped.
    pub fn pool_rotate_master(&self, name: &str) -> Result<usize, OpError> {
        let pool = self.pool(name)?;
        let (master, resume) = {
            let p = read(&pool);
            (p.row.master.clone(), p.row.rotating_to)
        };
        let target = match resume.filter(|v| self.pool_master(&master, *v).is_ok()) {
            Some(v) => v,
            None => {
                let rec = self.rotate(&master)?;
                let v = rec
                    .current()
                    .map(|c| c.version)
                    .ok_or_else(|| OpError::internal("rotated master has no current version"))?;
                self.lock_store().set_pool_rotation(name, Some(v))?;
                write(&pool).row.rotating_to = Some(v);
                v
            }
        };
        let target_master = self.pool_master(&master, target)?;
        let tref = KeyRef::object(&target_master.object);
        let mut done = 0;
        loop {
            let (row, batch): (PoolRow, Vec<KeyRow>) = {
                let p = read(&pool);
                let batch = p
                    .order
                    .iter()
                    .filter_map(|i| p.keys.get(i))
                    .filter(|k| k.master_version != target)
                    .take(ROTATION_BATCH)
                    .cloned()
                    .collect();
                (p.row.clone(), batch)
            };
            if batch.is_empty() {
                break;
            }
            let mut rows = Vec::with_capacity(batch.len());
            for k in &batch {
                let s = self.unwrap_row(name, &row.master, k)?;
                let aad = pool_aad(name, k.index, &master, target);
                rows.push(KeyRow {
                    index: k.index,
                    master_version: target,
                    blob: target_master.backend.wrap_secret(&tref, &s[..], &aad)?,
                    origin: k.origin,
                });
            }
            self.lock_store().rewrap_pool_keys(name, &rows)?;
            done += rows.len();
            let mut p = write(&pool);
            for r in rows {
                p.keys.insert(r.index, r);
            }
        }
        self.lock_store().set_pool_rotation(name, None)?;
        write(&pool).row.rotating_to = None;
        self.pools.cache.forget_pool(name);
        tracing::info!(pool = %name, master = %master, version = target, rewrapped = done, "zk pool master rotated");
        Ok(done)
    }

    /// AES-256-ECB decryption with the current (or any usable) version of an `aes256` key held
    /// in hardware: MOSIP's wrapping of pool keys under K9.
    pub fn mosip_unwrap(
        &self,
        master: &str,
        wrapped: &[u8; KEY_LEN],
    ) -> Result<PoolSecret, OpError> {
        let m = self.get(master)?;
        super::require_kind(&m, KeyKind::Aes256, "zk.import-mosip")?;
        let mv = m.current().ok_or_else(|| {
            OpError::new(
                ErrorCode::KeyRetired,
                format!("`{master}` has no current version"),
            )
        })?;
        let v = self
            .backend(m.backend)?
            .ecb_decrypt(&KeyRef::object(&mv.backend_ref), wrapped)?;
        to_secret(&v)
    }
}
