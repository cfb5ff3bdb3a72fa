//! `zk.*` (MOSIP's zero-knowledge key pool) and `keys.adopt`. Pool keys are unwrapped inside the
//! daemon for one operation (or taken from the optional cache) and never returned in clear:
//! `zk.share` and `zk.encrypt` hand them out only RSA-OAEP-encrypted to a recipient.

use custody_proto::ops::{
    KeyAdoptArgs, KeyInfo, KeysAdopt, Op, ZkAttribute, ZkCryptArgs, ZkDecrypt, ZkDecryptResult,
    ZkEncrypt, ZkEncryptResult, ZkImport, ZkImportArgs, ZkImportMosip, ZkImportMosipArgs,
    ZkImportMosipResult, ZkImportResult, ZkInit, ZkInitArgs, ZkMasterCount, ZkPoolArgs, ZkPoolInfo,
    ZkRotateMaster, ZkShare, ZkShareArgs, ZkShareResult, ZkShow, ZkShowArgs,
};
use std::sync::Arc;

use custody_proto::ErrorCode;
use zeroize::Zeroize;

use super::admin::info;
use super::keyuse::{oaep_decrypt, Recipient};
use super::{Ctx, Handle};
use crate::backend::{BackendKind, ExistingKey, KeyKind};
use crate::error::OpError;
use crate::format::zk::{self, ZkError};
use crate::keys::pool::{PoolSecret, PoolSummary};
use crate::keys::Selector;
use crate::state::App;

/// Most attributes in one `zk.encrypt` or `zk.decrypt`.
pub const MAX_ATTRIBUTES: usize = 1024;

/// Pool size when `zk.init` gives none (MOSIP's).
pub const DEFAULT_POOL_SIZE: u32 = 10_000;

impl From<ZkError> for OpError {
    fn from(e: ZkError) -> Self {
        match e {
            ZkError::Integrity => OpError::new(ErrorCode::Integrity, e.to_string()),
            ZkError::Encrypt => OpError::internal(e.to_string()),
            _ => OpError::bad(e.to_string()),
        }
    }
}

fn pool_info(app: &App, s: PoolSummary) -> ZkPoolInfo {
    ZkPoolInfo {
        shares_cached: app.keys.shares_cached(&s.name) as u64,
        pool: s.name,
        master: s.master,
        size: s.size as u64,
        min_index: s.index_range.map(|r| r.0),
        max_index: s.index_range.map(|r| r.1),
        masters: s
            .by_master_version
            .into_iter()
            .map(|(version, n)| ZkMasterCount {
                version,
                keys: n as u64,
            })
            .collect(),
        share_to: s.share_to,
        created: s.created,
        rotating_to: s.rotating_to,
        verified: None,
        failed: None,
        rewrapped: None,
    }
}

fn check_request(a: &ZkCryptArgs) -> Result<(), OpError> {
    zk::check_id(&a.id)?;
    if a.attributes.is_empty() || a.attributes.len() > MAX_ATTRIBUTES {
        return Err(OpError::bad(format!(
            "give 1 to {MAX_ATTRIBUTES} attributes"
        )));
    }
    Ok(())
}

/// The share segment of pool key `index` for the current version of recipient `name`: made once
/// (an RSA-OAEP encryption), then reused.
fn segment(
    app: &App,
    pool: &str,
    index: u32,
    key: &PoolSecret,
    name: &str,
    op: &str,
) -> Result<Arc<str>, OpError> {
    let k = app
        .keys
        .resolve(name, KeyKind::Rsa2048Oaep, op, Selector::Current)?;
    let thumb = k
        .record()
        .recipient_thumbprint()
        .ok_or_else(|| OpError::internal(format!("no public key recorded for `{name}`")))?;
    let tag = format!("{name}\0{}\0{}", k.number(), hex::encode(thumb));
    if let Some(s) = app.keys.share_get(pool, index, &tag) {
        return Ok(s);
    }
    let r = Recipient::version(&k)?;
    let s: Arc<str> = zk::share_segment(&r.thumbprint, &r.wrap(&key[..])?).into();
    app.keys.share_put(pool, index, &tag, s.clone());
    Ok(s)
}

/// MOSIP's share string for pool key `index`: one segment per recipient of the pool, joined
/// with `.`.
fn share_string(app: &App, pool: &str, index: u32, key: &PoolSecret) -> Result<String, OpError> {
    let mut segments = Vec::new();
    for name in app.keys.pool_share_to(pool)? {
        segments.push(segment(app, pool, index, key, &name, ZkEncrypt::NAME)?);
    }
    Ok(segments.join("."))
}

/// Makes the share segments of every key of `pool` for its recipients on a background thread
/// (two workers), so `zk.encrypt` finds them ready. One warm-up per pool at a time; stops at the
/// first error (the segments are then made on use).
pub fn warm_shares(app: Arc<App>, pool: String) {
    let Ok(recipients) = app.keys.pool_share_to(&pool) else {
        return;
    };
    if recipients.is_empty() || !app.keys.warming_start(&pool) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("zk-share-warmup".into())
        .spawn(move || {
            let t = std::time::Instant::now();
            let indices = app.keys.pool_indices(&pool).unwrap_or_default();
            let chunk = indices.len().div_ceil(2).max(1);
            let made = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|s| {
                for part in indices.chunks(chunk) {
                    let (app, pool, recipients, made) = (&app, &pool, &recipients, &made);
                    s.spawn(move || {
                        for &i in part {
                            let key = match app.keys.pool_key(pool, i) {
                                Ok(k) => k,
                                Err(e) => {
                                    tracing::warn!(pool = %pool, "share warm-up stopped: {e}");
                                    return;
                                }
                            };
                            for r in recipients {
                                if let Err(e) = segment(app, pool, i, &key, r, ZkInit::NAME) {
                                    tracing::warn!(pool = %pool, "share warm-up stopped: {e}");
                                    return;
                                }
                            }
                            made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    });
                }
            });
            app.keys.warming_done(&pool);
            tracing::info!(
                pool = %pool,
                keys = made.into_inner(),
                ms = t.elapsed().as_millis() as u64,
                "zk share segments ready"
            );
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the share warm-up: {e}");
    }
}

/// Starts the share warm-up of every pool that has recipients (at daemon start).
pub fn warm_all(app: &Arc<App>) {
    for pool in app.keys.pool_names() {
        warm_shares(app.clone(), pool);
    }
}

impl Handle for ZkInit {
    async fn handle(ctx: &mut Ctx, a: ZkInitArgs) -> Result<ZkPoolInfo, OpError> {
        let size = a.size.unwrap_or(DEFAULT_POOL_SIZE);
        let pool = a.pool.clone();
        let info = ctx
            .blocking_keygen(move |app| {
                let s = app.keys.pool_init(&a.pool, &a.master, size, a.share_to)?;
                Ok(pool_info(app, s))
            })
            .await?;
        warm_shares(ctx.app.clone(), pool);
        Ok(info)
    }
}

impl Handle for ZkShow {
    async fn handle(ctx: &mut Ctx, a: ZkShowArgs) -> Result<ZkPoolInfo, OpError> {
        ctx.blocking_keygen(move |app| {
            let mut info = pool_info(app, app.keys.pool_summary(&a.pool)?);
            if a.verify {
                let (ok, failed) = app.keys.pool_verify(&a.pool)?;
                info.verified = Some(ok as u64);
                info.failed = Some(failed.into_iter().take(100).collect());
            }
            Ok(info)
        })
        .await
    }
}

impl Handle for ZkEncrypt {
    /// One pool index for the whole request, chosen with a CSPRNG.
    async fn handle(ctx: &mut Ctx, a: ZkCryptArgs) -> Result<ZkEncryptResult, OpError> {
        check_request(&a)?;
        ctx.blocking(move |app| {
            let mut a = a;
            let (index, key) = app.keys.pool_pick(&a.pool)?;
            let derived = zk::derive(&key, &a.id);
            let mut attributes = Vec::with_capacity(a.attributes.len());
            for attr in &mut a.attributes {
                let value = zk::encrypt_attribute(&derived, index, &attr.value);
                attr.value.zeroize();
                attributes.push(ZkAttribute {
                    identifier: std::mem::take(&mut attr.identifier),
                    value: value?,
                });
            }
            let share = share_string(app, &a.pool, index, &key)?;
            Ok(ZkEncryptResult {
                index,
                share,
                attributes,
            })
        })
        .await
    }
}

impl Handle for ZkDecrypt {
    /// An index with no key in the pool is `integrity`, like a wrong id or tampered data: the
    /// attribute was not made with this pool's key.
    async fn handle(ctx: &mut Ctx, a: ZkCryptArgs) -> Result<ZkDecryptResult, OpError> {
        check_request(&a)?;
        ctx.blocking(move |app| {
            app.keys.require_pool(&a.pool)?;
            let mut out = Vec::with_capacity(a.attributes.len());
            let mut last: Option<(u32, zeroize::Zeroizing<[u8; zk::KEY_LEN]>)> = None;
            for attr in a.attributes {
                let index = zk::attribute_index(&attr.value)?;
                let derived = match &last {
                    Some((i, d)) if *i == index => d.clone(),
                    _ => {
                        let key = app.keys.pool_key(&a.pool, index).map_err(|e| {
                            if e.code == ErrorCode::NotFound {
                                OpError::new(ErrorCode::Integrity, ZkError::Integrity.to_string())
                            } else {
                                e
                            }
                        })?;
                        let d = zk::derive(&key, &a.id);
                        last = Some((index, d.clone()));
                        d
                    }
                };
                let plain = zk::decrypt_attribute(&derived, &attr.value)?;
                out.push(ZkAttribute {
                    identifier: attr.identifier,
                    value: plain.to_vec(),
                });
            }
            Ok(ZkDecryptResult { attributes: out })
        })
        .await
    }

    fn scrub(r: &mut ZkDecryptResult) {
        r.attributes.zeroize();
    }
}

impl Handle for ZkShare {
    async fn handle(ctx: &mut Ctx, a: ZkShareArgs) -> Result<ZkShareResult, OpError> {
        let r = ctx
            .blocking(move |app| {
                let key = app.keys.pool_key(&a.pool, a.index)?;
                let to = Recipient::of(app, a.to.as_deref(), a.to_public_key, ZkShare::NAME)?;
                Ok(ZkShareResult {
                    share: zk::share_segment(&to.thumbprint, &to.wrap(&key[..])?),
                    thumbprint: to.thumbprint.to_vec(),
                    version: to.version,
                })
            })
            .await?;
        ctx.version = r.version;
        Ok(r)
    }
}

impl Handle for ZkImport {
    /// The segment for a version of `key` is RSA-decrypted, and the pool key re-wrapped under the
    /// pool's master at `index`: it never leaves the daemon in clear.
    async fn handle(ctx: &mut Ctx, a: ZkImportArgs) -> Result<ZkImportResult, OpError> {
        let index = zk::check_index(u64::from(a.index))?;
        let r = ctx
            .blocking(move |app| {
                let segments = zk::parse_share(&a.share)?;
                let mut found = None;
                for seg in &segments {
                    match app.keys.resolve(
                        &a.key,
                        KeyKind::Rsa2048Oaep,
                        ZkImport::NAME,
                        Selector::Thumbprint(&seg.thumbprint),
                    ) {
                        Ok(k) => {
                            found = Some((seg, k));
                            break;
                        }
                        Err(e) if e.code == ErrorCode::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                let (seg, k) = found.ok_or_else(|| {
                    OpError::new(
                        ErrorCode::NotFound,
                        format!(
                            "none of the share's {} segment(s) is addressed to a version of `{}`",
                            segments.len(),
                            a.key
                        ),
                    )
                })?;
                let plain = oaep_decrypt(&k, &seg.wrapped, &[])?;
                let mut key = zeroize::Zeroizing::new([0u8; zk::KEY_LEN]);
                if plain.len() != zk::KEY_LEN {
                    return Err(super::keyuse::decryption_failed(
                        &"share is not a 32-byte key",
                    ));
                }
                key.copy_from_slice(&plain);
                let n = app.keys.pool_import(&a.pool, &[(index, key)], "shared")?;
                Ok(ZkImportResult {
                    index,
                    imported: n == 1,
                    thumbprint: seg.thumbprint.to_vec(),
                    version: k.number(),
                })
            })
            .await?;
        ctx.version = Some(r.version);
        Ok(r)
    }
}

impl Handle for ZkRotateMaster {
    async fn handle(ctx: &mut Ctx, a: ZkPoolArgs) -> Result<ZkPoolInfo, OpError> {
        ctx.blocking_keygen(move |app| {
            let n = app.keys.pool_rotate_master(&a.pool)?;
            let mut info = pool_info(app, app.keys.pool_summary(&a.pool)?);
            info.rewrapped = Some(n as u64);
            Ok(info)
        })
        .await
    }
}

impl Handle for ZkImportMosip {
    /// The whole export is parsed and every key unwrapped before anything is stored; then one
    /// transaction stores them all.
    async fn handle(ctx: &mut Ctx, a: ZkImportMosipArgs) -> Result<ZkImportMosipResult, OpError> {
        ctx.blocking_keygen(move |app| {
            let rows = zk::parse_export(&a.export)?;
            let mut keys = Vec::with_capacity(rows.len());
            for r in &rows {
                keys.push((r.index, app.keys.mosip_unwrap(&a.master, &r.wrapped)?));
            }
            if app.keys.require_pool(&a.pool).is_err() {
                app.keys.pool_init(&a.pool, &a.master, 0, None)?;
            }
            let n = app.keys.pool_import(&a.pool, &keys, "mosip")?;
            Ok(ZkImportMosipResult {
                pool: a.pool,
                rows: rows.len() as u64,
                imported: n as u64,
            })
        })
        .await
    }
}

impl Handle for KeysAdopt {
    async fn handle(ctx: &mut Ctx, a: KeyAdoptArgs) -> Result<KeyInfo, OpError> {
        let kind = KeyKind::parse(&a.kind)
            .filter(|k| {
                matches!(
                    k,
                    KeyKind::Aes256 | KeyKind::Rsa2048Oaep | KeyKind::Rsa2048Sign
                )
            })
            .ok_or_else(|| {
                OpError::bad(format!(
                    "kind `{}` cannot be adopted (aes256, rsa2048-oaep, rsa2048-sign)",
                    a.kind.escape_default()
                ))
            })?;
        let at = match (a.label, a.id) {
            (Some(l), None) => ExistingKey::Label(l),
            (None, Some(id)) => ExistingKey::Id(id),
            _ => return Err(OpError::bad("give exactly one of `label` and `id`")),
        };
        let rec = ctx
            .blocking(move |app| app.keys.adopt(&a.name, kind, BackendKind::Pkcs11, &at))
            .await?;
        ctx.version = Some(1);
        Ok(info(&rec))
    }
}
