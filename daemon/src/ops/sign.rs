//! `sign`, `sign.batch`, `sign.jwt`: RSA signatures with the current version of a signing key.

use custody_proto::ops::{
    BatchItem, SignArgs, SignBatchArgs, SignBatchResult, SignJwtArgs, SignJwtResult, SignResult,
};
use custody_proto::{Request, WireError};
use sha2::{Digest, Sha256};

use super::keyuse::scheme;
use super::public::version_key_index;
use super::{encode, Ctx, OpResult};
use crate::backend::{KeyKind, SignScheme};
use crate::error::OpError;
use crate::format::jwt;
use crate::keys::require_kind;

/// Most digests in one `sign.batch`.
pub const MAX_BATCH: usize = 1024;

fn digest32(d: &[u8]) -> Result<[u8; 32], OpError> {
    <[u8; 32]>::try_from(d).map_err(|_| {
        OpError::bad(format!(
            "a SHA-256 digest is 32 bytes; got {} bytes",
            d.len()
        ))
    })
}

/// `sign`.
pub async fn sign(ctx: &mut Ctx, req: &Request) -> OpResult {
    let a: SignArgs = req.args()?;
    ctx.authorize(Some(&a.key))?;
    let scheme = scheme(a.scheme.as_deref())?;
    let digest = match (&a.data, &a.digest) {
        (Some(d), None) => <[u8; 32]>::from(Sha256::digest(d)),
        (None, Some(h)) => digest32(h)?,
        _ => return Err(OpError::bad("give exactly one of `data` and `digest`")),
    };
    let key = a.key;
    let (version, signature) = ctx
        .blocking(move |app| {
            // Kind first: a wrong-kind request must not trigger an automatic rotation.
            require_kind(&*app.keys.get(&key)?, KeyKind::Rsa2048Sign, "sign")?;
            let (rec, ver) = app.keys.current(&key)?;
            let v = rec
                .version(ver)
                .ok_or_else(|| OpError::internal("current version vanished"))?;
            let sig = app
                .keys
                .backend(rec.backend)?
                .sign(&v.backend_ref, &digest, scheme)?;
            Ok((ver, sig))
        })
        .await?;
    ctx.version = Some(version);
    encode(&SignResult {
        key: ctx.key.clone().unwrap_or_default(),
        version,
        signature,
    })
}

/// `sign.batch`: every digest signed by the same version; each item fails on its own.
pub async fn sign_batch(ctx: &mut Ctx, req: &Request) -> OpResult {
    let a: SignBatchArgs = req.args()?;
    ctx.authorize(Some(&a.key))?;
    let scheme = scheme(a.scheme.as_deref())?;
    if a.digests.is_empty() || a.digests.len() > MAX_BATCH {
        return Err(OpError::bad(format!(
            "a batch has 1 to {MAX_BATCH} digests; got {}",
            a.digests.len()
        )));
    }
    let key = a.key;
    let digests = a.digests;
    // Measured from here, before the blocking pool, so items stop in time for the answer to say
    // which ones were not reached (the op timeout itself is the backstop).
    let deadline = std::time::Instant::now() + ctx.app.config.server.op_timeout() * 9 / 10;
    let (version, results) = ctx
        .blocking(move |app| {
            // Kind first: a wrong-kind request must not trigger an automatic rotation.
            require_kind(&*app.keys.get(&key)?, KeyKind::Rsa2048Sign, "sign.batch")?;
            let (rec, ver) = app.keys.current(&key)?;
            let v = rec
                .version(ver)
                .ok_or_else(|| OpError::internal("current version vanished"))?;
            let backend = app.keys.backend(rec.backend)?;
            // The whole batch shares the op timeout: items not reached by then fail on their
            // own instead of keeping the device busy for a caller that has given up.
            let results = digests
                .iter()
                .map(|d| {
                    let item = digest32(d).and_then(|d| {
                        if std::time::Instant::now() >= deadline {
                            return Err(OpError::new(
                                custody_proto::ErrorCode::BackendUnavailable,
                                "batch time limit reached before this item",
                            ));
                        }
                        Ok(backend.sign(&v.backend_ref, &d, scheme)?)
                    });
                    match item {
                        Ok(s) => BatchItem {
                            signature: Some(s),
                            err: None,
                        },
                        Err(e) => BatchItem {
                            signature: None,
                            err: Some(WireError::from(e)),
                        },
                    }
                })
                .collect();
            Ok((ver, results))
        })
        .await?;
    ctx.version = Some(version);
    encode(&SignBatchResult {
        key: ctx.key.clone().unwrap_or_default(),
        version,
        results,
    })
}

/// `sign.jwt`: compact JWS RS256 with `kid` = the signing version's key index.
pub async fn sign_jwt(ctx: &mut Ctx, req: &Request) -> OpResult {
    let a: SignJwtArgs = req.args()?;
    ctx.authorize(Some(&a.key))?;
    let key = a.key;
    let payload = a.payload;
    let (version, kid, token) = ctx
        .blocking(move |app| {
            // Kind first: a wrong-kind request must not trigger an automatic rotation.
            require_kind(&*app.keys.get(&key)?, KeyKind::Rsa2048Sign, "sign.jwt")?;
            let (rec, ver) = app.keys.current(&key)?;
            let v = rec
                .version(ver)
                .ok_or_else(|| OpError::internal("current version vanished"))?;
            let kid =
                version_key_index(v).ok_or_else(|| OpError::internal("no public key recorded"))?;
            let input = jwt::signing_input(&kid, &payload)
                .map_err(|e| OpError::bad(format!("JWT payload: {e}")))?;
            let sig = app.keys.backend(rec.backend)?.sign(
                &v.backend_ref,
                &jwt::signing_digest(&input),
                SignScheme::Pkcs1v15,
            )?;
            Ok((ver, kid, jwt::assemble(&input, &sig)))
        })
        .await?;
    ctx.version = Some(version);
    encode(&SignJwtResult {
        key: ctx.key.clone().unwrap_or_default(),
        version,
        kid,
        jwt: token,
    })
}
