//! `sign`, `sign.batch`, `sign.jwt`: signatures with the current version of a signing key (RSA;
//! `sign` also pure Ed25519).

use custody_proto::ops::{
    BatchItem, Op, Sign, SignArgs, SignBatch, SignBatchArgs, SignBatchResult, SignJwt, SignJwtArgs,
    SignJwtResult, SignResult,
};
use custody_proto::WireError;
use sha2::{Digest, Sha256};

use super::keyuse::scheme;
use super::public::version_key_index;
use super::{Ctx, Handle};
use crate::backend::{KeyKind, SignScheme};
use crate::error::OpError;
use crate::format::jwt;
use crate::keys::Selector;

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

/// `sign` with an `ed25519` key: pure Ed25519 over `data` (no prehash, no scheme).
async fn sign_ed25519(ctx: &mut Ctx, a: SignArgs) -> Result<SignResult, OpError> {
    if a.digest.is_some() || a.scheme.is_some() {
        return Err(OpError::bad(
            "an ed25519 key signs `data` itself (pure Ed25519): `digest` and `scheme` are not \
             accepted",
        ));
    }
    let data = a
        .data
        .ok_or_else(|| OpError::bad("an ed25519 key signs `data`: give it"))?;
    let key = a.key;
    let (key, version, signature) = ctx
        .blocking(move |app| {
            let k = app
                .keys
                .resolve(&key, KeyKind::Ed25519, Sign::NAME, Selector::Current)?;
            let sig = k.sign_ed25519(&data)?;
            Ok((key, k.number(), sig))
        })
        .await?;
    ctx.version = Some(version);
    Ok(SignResult {
        key,
        version,
        signature,
    })
}

impl Handle for Sign {
    /// RSA keys sign a SHA-256 digest (of `data`, or given); `ed25519` keys sign `data`.
    async fn handle(ctx: &mut Ctx, a: SignArgs) -> Result<SignResult, OpError> {
        if ctx
            .app
            .keys
            .get(&a.key)
            .is_ok_and(|r| r.kind == KeyKind::Ed25519)
        {
            return sign_ed25519(ctx, a).await;
        }
        let scheme = scheme(a.scheme.as_deref())?;
        let digest = match (&a.data, &a.digest) {
            (Some(d), None) => <[u8; 32]>::from(Sha256::digest(d)),
            (None, Some(h)) => digest32(h)?,
            _ => return Err(OpError::bad("give exactly one of `data` and `digest`")),
        };
        let key = a.key;
        let (key, version, signature) = ctx
            .blocking(move |app| {
                let k =
                    app.keys
                        .resolve(&key, KeyKind::Rsa2048Sign, Sign::NAME, Selector::Current)?;
                let sig = k.sign(&digest, scheme)?;
                Ok((key, k.number(), sig))
            })
            .await?;
        ctx.version = Some(version);
        Ok(SignResult {
            key,
            version,
            signature,
        })
    }
}

impl Handle for SignBatch {
    /// Every digest signed by the same version; each item fails on its own.
    async fn handle(ctx: &mut Ctx, a: SignBatchArgs) -> Result<SignBatchResult, OpError> {
        let scheme = scheme(a.scheme.as_deref())?;
        if a.digests.is_empty() || a.digests.len() > MAX_BATCH {
            return Err(OpError::bad(format!(
                "a batch has 1 to {MAX_BATCH} digests; got {}",
                a.digests.len()
            )));
        }
        let key = a.key;
        let digests = a.digests;
        // Items stop in time for the answer to say which ones were not reached (the request's
        // deadline itself is the backstop).
        let deadline = ctx.batch_deadline();
        let (key, version, results) = ctx
            .blocking(move |app| {
                let k = app.keys.resolve(
                    &key,
                    KeyKind::Rsa2048Sign,
                    SignBatch::NAME,
                    Selector::Current,
                )?;
                // The whole batch shares the op timeout: items not reached by then fail on
                // their own instead of keeping the device busy for a caller that has given up.
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
                            Ok(k.sign(&d, scheme)?)
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
                Ok((key, k.number(), results))
            })
            .await?;
        ctx.version = Some(version);
        Ok(SignBatchResult {
            key,
            version,
            results,
        })
    }
}

impl Handle for SignJwt {
    /// Compact JWS RS256 with `kid` = the signing version's key index.
    async fn handle(ctx: &mut Ctx, a: SignJwtArgs) -> Result<SignJwtResult, OpError> {
        let key = a.key;
        let payload = a.payload;
        let (key, version, kid, token) = ctx
            .blocking(move |app| {
                let k = app.keys.resolve(
                    &key,
                    KeyKind::Rsa2048Sign,
                    SignJwt::NAME,
                    Selector::Current,
                )?;
                let kid = version_key_index(k.record())
                    .ok_or_else(|| OpError::internal("no public key recorded"))?;
                let input = jwt::signing_input(&kid, &payload)
                    .map_err(|e| OpError::bad(format!("JWT payload: {e}")))?;
                let sig = k.sign(&jwt::signing_digest(&input), SignScheme::Pkcs1v15)?;
                Ok((key, k.number(), kid, jwt::assemble(&input, &sig)))
            })
            .await?;
        ctx.version = Some(version);
        Ok(SignJwtResult {
            key,
            version,
            kid,
            jwt: token,
        })
    }
}
