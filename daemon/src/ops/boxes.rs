//! `box.seal`, `box.open`, `box.reencrypt`, `box.reencrypt.batch`, `box.derive`: idOS's
//! `nacl.box` with custody `x25519` keys (software backend, secrets wrapped under an HSM master).
//! A re-encryption opens the content and seals it to the grantee inside the daemon: the plaintext
//! exists only in zeroizing memory for that request and never reaches the caller.

use custody_proto::ops::{
    BoxDerive, BoxDeriveArgs, BoxDeriveResult, BoxOpen, BoxOpenArgs, BoxReencrypt,
    BoxReencryptArgs, BoxReencryptBatch, BoxReencryptBatchArgs, BoxReencryptBatchResult,
    BoxReencryptResult, BoxReencrypted, BoxSeal, BoxSealArgs, BoxSealResult, Op, PlaintextResult,
};
use custody_proto::{ErrorCode, WireError};
use subtle::ConstantTimeEq;

use super::admin::info;
use super::{plaintext_result, Ctx, Handle};
use crate::backend::{BackendError, BackendKind, KeyKind, Template};
use crate::crypto::idos::{self, IdosError, KEY_LEN};
use crate::error::OpError;
use crate::keys::{CreateSpec, KeyVersion, Selector};

/// Most items in one `box.reencrypt.batch`.
pub const MAX_BATCH: usize = 1024;

/// The one message for a box that does not open: which of key, encryptor key or content was
/// wrong is not told apart.
pub const BOX_FAILED: &str =
    "box does not open: wrong key, wrong encryptor public key or tampered content";

impl From<IdosError> for OpError {
    fn from(e: IdosError) -> Self {
        match e {
            IdosError::BadInput(m) => OpError::bad(m),
            IdosError::Integrity => OpError::new(ErrorCode::Integrity, BOX_FAILED),
            IdosError::Internal(m) => OpError::internal(m),
        }
    }
}

fn key32(bytes: &[u8], what: &str) -> Result<[u8; KEY_LEN], OpError> {
    Ok(idos::public_key(bytes, what)?)
}

/// A recipient key: 32 bytes and not a low-order point, checked once per request.
fn recipient(bytes: &[u8]) -> Result<idos::Recipient, OpError> {
    let to = key32(bytes, "`to_public_key`")?;
    idos::Recipient::new(to).map_err(|_| {
        OpError::bad("`to_public_key` is a low-order point: a box to it protects nothing")
    })
}

/// An expected content hash: 64 hex digits (either case), as 32 bytes.
fn expected_hash(h: Option<&str>) -> Result<Option<[u8; 32]>, OpError> {
    h.map(|h| {
        hex::decode(h)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| OpError::bad("`expect_content_hash` is a SHA-256: 64 hex digits"))
    })
    .transpose()
}

/// Opens `content` with `k`; every authentication failure is the one [`BOX_FAILED`].
fn open(
    k: &KeyVersion,
    encryptor: &[u8; KEY_LEN],
    content: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, OpError> {
    let c = idos::parse_content(content)?;
    k.box_open(encryptor, &c.nonce, c.boxed)
        .map_err(|e| match e {
            BackendError::Integrity(_) => OpError::new(ErrorCode::Integrity, BOX_FAILED),
            other => other.into(),
        })
}

/// Opens, checks the hash, seals to `to`: one re-encryption. The plaintext is dropped
/// (zeroized) before this returns.
fn reencrypt_one(
    k: &KeyVersion,
    encryptor: &[u8; KEY_LEN],
    content: &[u8],
    to: &idos::Recipient,
    expect: Option<[u8; 32]>,
) -> Result<(idos::Sealed, String), OpError> {
    reencrypt_with(open(k, encryptor, content)?, to, expect)
}

/// Opens `content` with an unwrapped x25519 secret; failures as [`open`].
fn open_with_secret(
    secret: &[u8],
    encryptor: &[u8; KEY_LEN],
    content: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, OpError> {
    let c = idos::parse_content(content)?;
    idos::open(secret, encryptor, &c.nonce, c.boxed).map_err(|e| match e {
        IdosError::Integrity => OpError::new(ErrorCode::Integrity, BOX_FAILED),
        other => other.into(),
    })
}

/// Checks the hash of an opened plaintext and seals it to `to`.
fn reencrypt_with(
    pt: zeroize::Zeroizing<Vec<u8>>,
    to: &idos::Recipient,
    expect: Option<[u8; 32]>,
) -> Result<(idos::Sealed, String), OpError> {
    // One digest serves both the check and the returned hex.
    let actual = idos::content_digest(&pt);
    if let Some(e) = expect {
        if !bool::from(actual.ct_eq(&e)) {
            return Err(OpError::new(
                ErrorCode::Integrity,
                "content hash mismatch: the plaintext's SHA-256 is not `expect_content_hash`",
            ));
        }
    }
    Ok((idos::seal(to, &pt)?, hex::encode(actual)))
}

impl Handle for BoxSeal {
    /// To a public key, with a fresh ephemeral key and nonce.
    async fn handle(_ctx: &mut Ctx, a: BoxSealArgs) -> Result<BoxSealResult, OpError> {
        let to = recipient(&a.to_public_key)?;
        let s = idos::seal(&to, &a.plaintext)?;
        Ok(BoxSealResult {
            content: s.content,
            encryptor_public_key: s.encryptor_public_key.to_vec(),
        })
    }
}

impl Handle for BoxOpen {
    async fn handle(ctx: &mut Ctx, a: BoxOpenArgs) -> Result<PlaintextResult, OpError> {
        let encryptor = key32(&a.encryptor_public_key, "`encryptor_public_key`")?;
        idos::parse_content(&a.content)?;
        let key = a.key.clone();
        let (version, plaintext) = ctx
            .blocking(move |app| {
                let k = app.keys.resolve(
                    &key,
                    KeyKind::X25519,
                    BoxOpen::NAME,
                    Selector::for_decryption(a.version, None),
                )?;
                let pt = open(&k, &encryptor, &a.content)?;
                Ok((k.number(), pt))
            })
            .await?;
        plaintext_result(ctx, a.key, version, &plaintext)
    }
}

impl Handle for BoxReencrypt {
    async fn handle(ctx: &mut Ctx, a: BoxReencryptArgs) -> Result<BoxReencryptResult, OpError> {
        let encryptor = key32(&a.encryptor_public_key, "`encryptor_public_key`")?;
        idos::parse_content(&a.content)?;
        let to = recipient(&a.to_public_key)?;
        let expect = expected_hash(a.expect_content_hash.as_deref())?;
        let r = ctx
            .blocking(move |app| {
                let k = app.keys.resolve(
                    &a.key,
                    KeyKind::X25519,
                    BoxReencrypt::NAME,
                    Selector::for_decryption(a.version, None),
                )?;
                let (sealed, content_hash) =
                    reencrypt_one(&k, &encryptor, &a.content, &to, expect)?;
                Ok(BoxReencryptResult {
                    version: k.number(),
                    key: a.key,
                    content: sealed.content,
                    encryptor_public_key: sealed.encryptor_public_key.to_vec(),
                    content_hash,
                })
            })
            .await?;
        ctx.version = Some(r.version);
        Ok(r)
    }
}

impl Handle for BoxReencryptBatch {
    /// Every item with the same key version and grantee; each fails on its own.
    async fn handle(
        ctx: &mut Ctx,
        a: BoxReencryptBatchArgs,
    ) -> Result<BoxReencryptBatchResult, OpError> {
        if a.items.is_empty() || a.items.len() > MAX_BATCH {
            return Err(OpError::bad(format!(
                "a batch has 1 to {MAX_BATCH} items; got {}",
                a.items.len()
            )));
        }
        let to = recipient(&a.to_public_key)?;
        let deadline = ctx.batch_deadline();
        let r = ctx
            .blocking(move |app| {
                let k = app.keys.resolve(
                    &a.key,
                    KeyKind::X25519,
                    BoxReencryptBatch::NAME,
                    Selector::for_decryption(a.version, None),
                )?;
                // The secret is unwrapped (one HSM call) once for the whole batch, not per item;
                // a backend that cannot hand it out opens each box itself.
                let secret = match k.secret() {
                    Ok(s) => Some(Ok(s)),
                    Err(BackendError::Unsupported(_)) => None,
                    Err(e) => Some(Err(OpError::from(e))),
                };
                let results = a
                    .items
                    .iter()
                    .map(|item| {
                        let one = (|| {
                            let encryptor =
                                key32(&item.encryptor_public_key, "`encryptor_public_key`")?;
                            let expect = expected_hash(item.expect_content_hash.as_deref())?;
                            if std::time::Instant::now() >= deadline {
                                return Err(OpError::new(
                                    ErrorCode::BackendUnavailable,
                                    "batch time limit reached before this item",
                                ));
                            }
                            match &secret {
                                None => reencrypt_one(&k, &encryptor, &item.content, &to, expect),
                                Some(Ok(secret)) => reencrypt_with(
                                    open_with_secret(secret, &encryptor, &item.content)?,
                                    &to,
                                    expect,
                                ),
                                Some(Err(e)) => Err(OpError::new(e.code, e.message.clone())),
                            }
                        })();
                        match one {
                            Ok((s, hash)) => BoxReencrypted {
                                content: Some(s.content),
                                encryptor_public_key: Some(s.encryptor_public_key.to_vec()),
                                content_hash: Some(hash),
                                err: None,
                            },
                            Err(e) => BoxReencrypted {
                                err: Some(WireError::from(e)),
                                ..Default::default()
                            },
                        }
                    })
                    .collect();
                Ok(BoxReencryptBatchResult {
                    version: k.number(),
                    key: a.key,
                    results,
                })
            })
            .await?;
        ctx.version = Some(r.version);
        Ok(r)
    }
}

impl Handle for BoxDerive {
    /// scrypt runs on a blocking worker (about 16 MiB and tens of milliseconds each).
    async fn handle(ctx: &mut Ctx, a: BoxDeriveArgs) -> Result<BoxDeriveResult, OpError> {
        idos::check_salt(&a.salt)?;
        let password = std::str::from_utf8(a.password.expose())
            .map_err(|_| OpError::bad("the password is not UTF-8"))?;
        if password.is_empty() {
            return Err(OpError::bad("the password is empty"));
        }
        let check = a
            .check_public_key
            .as_deref()
            .map(|c| key32(c, "`check_public_key`"))
            .transpose()?;
        let (public_key, rec) = ctx
            .blocking_keygen(move |app| {
                let password = std::str::from_utf8(a.password.expose())
                    .map_err(|_| OpError::bad("the password is not UTF-8"))?;
                let secret = idos::derive_secret(password, &a.salt)?;
                let public = idos::x25519_public(&secret[..])?;
                if let Some(c) = check {
                    if !bool::from(public.ct_eq(&c)) {
                        return Err(OpError::new(
                            ErrorCode::Integrity,
                            "the password does not yield the expected public key \
                             (wrong password or wrong user id)",
                        ));
                    }
                }
                let rec = match (a.import, a.master) {
                    (Some(name), Some(master)) => Some(app.keys.import(
                        &CreateSpec {
                            name,
                            kind: KeyKind::X25519,
                            backend: BackendKind::Software,
                            template: Template::Default,
                            master: Some(master),
                            validity_days: None,
                            pre_expire_days: None,
                        },
                        &secret[..],
                    )?),
                    _ => None,
                };
                Ok((public, rec))
            })
            .await?;
        ctx.version = rec.as_ref().and_then(|r| r.current().map(|v| v.version));
        Ok(BoxDeriveResult {
            public_key: public_key.to_vec(),
            key: rec.as_deref().map(info),
        })
    }
}
