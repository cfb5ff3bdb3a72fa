//! `decrypt` and `unwrap`: RSA-OAEP-SHA256 with a version of an `rsa2048-oaep` key.

use custody_proto::ops::{DecryptArgs, UnwrapArgs};
use custody_proto::Request;

use super::keyuse::{decrypt_version, oaep_decrypt};
use super::{plaintext_result, Ctx, OpResult};
use crate::error::OpError;

/// `decrypt`: version by number or current; label as given (default empty).
pub async fn decrypt(ctx: &mut Ctx, req: &Request) -> OpResult {
    let a: DecryptArgs = req.args()?;
    ctx.authorize(Some(&a.key))?;
    let key = a.key.clone();
    let (version, plaintext) = ctx
        .blocking(move |app| {
            let rec = app.keys.get(&key)?;
            let v = decrypt_version(&rec, a.version, None)?;
            let label = a.label.as_deref().unwrap_or_default();
            let pt = oaep_decrypt(app, &rec, v, &a.ciphertext, label, "decrypt")?;
            Ok((v.version, pt))
        })
        .await?;
    plaintext_result(ctx, a.key, version, &plaintext)
}

/// Splits `thumbprint(32) ‖ wrapped(256)` or returns a bare 256-byte wrapped key.
pub fn split_wrapped(input: &[u8]) -> Result<(Option<&[u8]>, &[u8]), OpError> {
    match input.len() {
        256 => Ok((None, input)),
        288 => Ok((Some(&input[..32]), &input[32..])),
        n => Err(OpError::bad(format!(
            "a wrapped key is 256 bytes, or 288 with its 32-byte thumbprint first; got {n}"
        ))),
    }
}

/// `unwrap`: version by number, else by thumbprint (argument prefix or the 32 bytes in front of
/// the wrapped key), else current.
pub async fn unwrap(ctx: &mut Ctx, req: &Request) -> OpResult {
    let a: UnwrapArgs = req.args()?;
    ctx.authorize(Some(&a.key))?;
    let key = a.key.clone();
    let (version, plaintext) = ctx
        .blocking(move |app| {
            let (inner_thumb, wrapped) = split_wrapped(&a.wrapped)?;
            let rec = app.keys.get(&key)?;
            let thumb = a.thumbprint.as_deref().or(inner_thumb);
            let v = decrypt_version(&rec, a.version, thumb)?;
            let pt = oaep_decrypt(app, &rec, v, wrapped, &[], "unwrap")?;
            Ok((v.version, pt))
        })
        .await?;
    plaintext_result(ctx, a.key, version, &plaintext)
}
