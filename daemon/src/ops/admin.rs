//! Key administration: create, list, show, rotate, retire, destroy. Changes are durable before
//! they are acknowledged and take effect at once.

use custody_proto::ops::{
    KeyCreateArgs, KeyInfo, KeyListArgs, KeyListResult, KeyNameArgs, KeyVersionArgs, KeysCreate,
    KeysDestroy, KeysList, KeysRetire, KeysRotate, KeysShow, Op, ThumbprintInfo, VersionInfo,
};

use super::{Ctx, Handle};
use crate::backend::{BackendKind, KeyKind, Template};
use crate::error::OpError;
use crate::keys::{CreateSpec, KeyRecord, VersionRecord};

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
                thumbprints: thumbprints(v),
                adopted: v.adopted,
            })
            .collect(),
    }
}

/// Every thumbprint a version answers to, with what each is over.
pub fn thumbprints(v: &VersionRecord) -> Vec<ThumbprintInfo> {
    v.thumbprint
        .iter()
        .map(|t| ThumbprintInfo {
            thumbprint: t.to_vec(),
            over: "spki".into(),
            subject: None,
            issuer: None,
            not_after: None,
        })
        .chain(v.certs.iter().map(|c| ThumbprintInfo {
            thumbprint: c.thumbprint.to_vec(),
            over: "certificate".into(),
            subject: Some(c.subject.clone()),
            issuer: Some(c.issuer.clone()),
            not_after: Some(c.not_after),
        }))
        .collect()
}

/// `what` names, for an error message listing the allowed values.
fn one_of<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str) -> String {
    all.iter().map(|t| name(*t)).collect::<Vec<_>>().join(", ")
}

impl Handle for KeysCreate {
    async fn handle(ctx: &mut Ctx, a: KeyCreateArgs) -> Result<KeyInfo, OpError> {
        let spec = CreateSpec {
            kind: KeyKind::parse(&a.kind).ok_or_else(|| {
                OpError::bad(format!(
                    "unknown kind `{}` ({})",
                    a.kind.escape_default(),
                    one_of(&KeyKind::ALL, KeyKind::as_str)
                ))
            })?,
            backend: BackendKind::parse(&a.backend).ok_or_else(|| {
                OpError::bad(format!(
                    "unknown backend `{}` ({}; `wrapped` is the old name of software)",
                    a.backend.escape_default(),
                    one_of(&BackendKind::ALL, BackendKind::as_str)
                ))
            })?,
            template: match a.template.as_deref() {
                None => Template::Default,
                Some(t) => Template::parse(t).ok_or_else(|| {
                    OpError::bad(format!(
                        "unknown template `{}` ({})",
                        t.escape_default(),
                        one_of(&Template::ALL, Template::as_str)
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
        Ok(info(&rec))
    }
}

impl Handle for KeysList {
    async fn handle(ctx: &mut Ctx, _a: KeyListArgs) -> Result<KeyListResult, OpError> {
        // Only the keys the caller's roles cover for `keys.list`.
        let policy = ctx.app.policy();
        let keys = ctx
            .app
            .keys
            .list()
            .iter()
            .filter(|r| {
                policy
                    .check(&ctx.peer, KeysList::NAME, Some(&r.name))
                    .is_ok()
            })
            .map(|r| info(r))
            .collect();
        Ok(KeyListResult { keys })
    }
}

impl Handle for KeysShow {
    async fn handle(ctx: &mut Ctx, a: KeyNameArgs) -> Result<KeyInfo, OpError> {
        Ok(info(&*ctx.app.keys.get(&a.name)?))
    }
}

impl Handle for KeysRotate {
    async fn handle(ctx: &mut Ctx, a: KeyNameArgs) -> Result<KeyInfo, OpError> {
        let rec = ctx
            .blocking_keygen(move |app| app.keys.rotate(&a.name))
            .await?;
        ctx.version = rec.current().map(|v| v.version);
        Ok(info(&rec))
    }
}

impl Handle for KeysRetire {
    async fn handle(ctx: &mut Ctx, a: KeyVersionArgs) -> Result<KeyInfo, OpError> {
        ctx.version = Some(a.version);
        let rec = ctx
            .blocking(move |app| app.keys.retire(&a.name, a.version))
            .await?;
        Ok(info(&rec))
    }
}

impl Handle for KeysDestroy {
    async fn handle(ctx: &mut Ctx, a: KeyVersionArgs) -> Result<KeyInfo, OpError> {
        ctx.version = Some(a.version);
        let rec = ctx
            .blocking(move |app| app.keys.destroy(&a.name, a.version))
            .await?;
        Ok(info(&rec))
    }
}
