//! Key administration: create, list, show, rotate, retire, destroy. Changes are durable before
//! they are acknowledged and take effect at once.

use custody_proto::ops::{
    KeyCreateArgs, KeyInfo, KeyListArgs, KeyListResult, KeyNameArgs, KeyVersionArgs, VersionInfo,
};
use custody_proto::Request;

use super::{encode, Ctx, OpResult};
use crate::backend::{BackendKind, KeyKind, Template};
use crate::error::OpError;
use crate::keys::{CreateSpec, KeyRecord};

/// The wire view of a key.
pub fn info(rec: &KeyRecord) -> KeyInfo {
    KeyInfo {
        name: rec.name.clone(),
        kind: rec.kind.as_str().into(),
        backend: rec.backend.as_str().into(),
        template: rec.template.as_str().into(),
        current_version: rec.current().map(|v| v.version).unwrap_or(0),
        versions: rec
            .versions
            .iter()
            .map(|v| VersionInfo {
                version: v.version,
                state: v.state.as_str().into(),
                created: v.created,
                not_after: v.not_after,
                thumbprint: v.thumbprint.map(|t| t.to_vec()),
            })
            .collect(),
    }
}

/// `keys.create`.
pub async fn create(ctx: &mut Ctx, req: &Request) -> OpResult {
    let a: KeyCreateArgs = req.args()?;
    ctx.authorize(Some(&a.name))?;
    if let Some(m) = &a.master {
        // Wrapping under a master key is a use of that key.
        ctx.authorize(Some(m))?;
    }
    let spec = CreateSpec {
        kind: KeyKind::parse(&a.kind).ok_or_else(|| {
            OpError::bad(format!(
                "unknown kind `{}` (rsa2048-sign, rsa2048-oaep, aes256)",
                a.kind.escape_default()
            ))
        })?,
        backend: BackendKind::parse(&a.backend).ok_or_else(|| {
            OpError::bad(format!(
                "unknown backend `{}` (tpm, pkcs11, wrapped)",
                a.backend.escape_default()
            ))
        })?,
        template: match a.template.as_deref() {
            None => Template::Default,
            Some(t) => Template::parse(t).ok_or_else(|| {
                OpError::bad(format!(
                    "unknown template `{}` (default, mosip)",
                    t.escape_default()
                ))
            })?,
        },
        name: a.name,
        master: a.master,
        validity_days: a.validity_days,
        pre_expire_days: a.pre_expire_days,
    };
    let rec = ctx
        .blocking_keygen(move |app| app.keys.create(&spec))
        .await?;
    ctx.version = rec.current().map(|v| v.version);
    encode(&info(&rec))
}

/// `keys.list`.
pub async fn list(ctx: &mut Ctx, req: &Request) -> OpResult {
    let _: KeyListArgs = req.args()?;
    ctx.authorize(None)?;
    // Only the keys the caller's roles cover for `keys.list`.
    let policy = ctx.app.policy();
    let keys = ctx
        .app
        .keys
        .list()
        .iter()
        .filter(|r| policy.check(&ctx.peer, ctx.op, Some(&r.name)).is_ok())
        .map(|r| info(r))
        .collect();
    encode(&KeyListResult { keys })
}

/// `keys.show`.
pub async fn show(ctx: &mut Ctx, req: &Request) -> OpResult {
    let a: KeyNameArgs = req.args()?;
    ctx.authorize(Some(&a.name))?;
    encode(&info(&*ctx.app.keys.get(&a.name)?))
}

/// `keys.rotate`.
pub async fn rotate(ctx: &mut Ctx, req: &Request) -> OpResult {
    let a: KeyNameArgs = req.args()?;
    ctx.authorize(Some(&a.name))?;
    let rec = ctx
        .blocking_keygen(move |app| app.keys.rotate(&a.name))
        .await?;
    ctx.version = rec.current().map(|v| v.version);
    encode(&info(&rec))
}

/// `keys.retire`.
pub async fn retire(ctx: &mut Ctx, req: &Request) -> OpResult {
    let a: KeyVersionArgs = req.args()?;
    ctx.authorize(Some(&a.name))?;
    ctx.version = Some(a.version);
    let rec = ctx
        .blocking(move |app| app.keys.retire(&a.name, a.version))
        .await?;
    encode(&info(&rec))
}

/// `keys.destroy`.
pub async fn destroy(ctx: &mut Ctx, req: &Request) -> OpResult {
    let a: KeyVersionArgs = req.args()?;
    ctx.authorize(Some(&a.name))?;
    ctx.version = Some(a.version);
    let rec = ctx
        .blocking(move |app| app.keys.destroy(&a.name, a.version))
        .await?;
    encode(&info(&rec))
}
