//! `zk.*` (MOSIP's zero-knowledge key pool) and `keys.adopt`. Pool keys are unwrapped inside the
//! daemon for one operation (or taken from the optional cache) and never returned in clear:
//! `zk.share` and `zk.encrypt` hand them out only RSA-OAEP-encrypted to a recipient.

use custody_proto::ops::{
    KeyAdoptArgs, KeyInfo, KeysAdopt, Op, ZkAttribute, ZkCryptArgs, ZkDecrypt, ZkDecryptResult,
    ZkEncrypt, ZkEncryptResult, ZkImport, ZkImportArgs, ZkImportMosip, ZkImportMosipArgs,
    ZkImportMosipResult, ZkImportResult, ZkInit, ZkInitArgs, ZkMasterCount, ZkPoolArgs, ZkPoolInfo,
    ZkRotateMaster, ZkShare, ZkShareArgs, ZkShareResult, ZkShow, ZkShowArgs,
};
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

fn pool_info(s: PoolSummary) -> ZkPoolInfo {
    ZkPoolInfo {
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

/// MOSIP's share string for `key`: one segment per recipient of the pool, joined with `.`.
fn share_string(app: &App, pool: &str, key: &PoolSecret) -> Result<String, OpError> {
    let mut segments = Vec::new();
    for name in app.keys.pool_share_to(pool)? {
        let r = Recipient::named(app, &name, ZkEncrypt::NAME)?;
        segments.push(zk::share_segment(&r.thumbprint, &r.wrap(&key[..])?));
    }
    Ok(segments.join("."))
}

impl Handle for ZkInit {
    async fn handle(ctx: &mut Ctx, a: ZkInitArgs) -> Result<ZkPoolInfo, OpError> {
        let size = a.size.unwrap_or(DEFAULT_POOL_SIZE);
        let s = ctx
            .blocking_keygen(move |app| app.keys.pool_init(&a.pool, &a.master, size, a.share_to))
            .await?;
        Ok(pool_info(s))
    }
}

impl Handle for ZkShow {
    async fn handle(ctx: &mut Ctx, a: ZkShowArgs) -> Result<ZkPoolInfo, OpError> {
        ctx.blocking_keygen(move |app| {
            let mut info = pool_info(app.keys.pool_summary(&a.pool)?);
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
            let share = share_string(app, &a.pool, &key)?;
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
            let mut info = pool_info(app.keys.pool_summary(&a.pool)?);
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
            if !app.keys.pool_names().contains(&a.pool) {
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
