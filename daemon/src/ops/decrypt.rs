//! `decrypt` and `unwrap`: RSA-OAEP-SHA256 with a version of an `rsa2048-oaep` key.

use custody_proto::ops::{Decrypt, DecryptArgs, Op, PlaintextResult, Unwrap, UnwrapArgs};

use super::keyuse::oaep_decrypt;
use super::{plaintext_result, Ctx, Handle};
use crate::backend::KeyKind;
use crate::error::OpError;
use crate::keys::Selector;
use zeroize::Zeroize;

impl Handle for Decrypt {
    /// Version by number or current; label as given (default empty).
    async fn handle(ctx: &mut Ctx, a: DecryptArgs) -> Result<PlaintextResult, OpError> {
        let key = a.key.clone();
        let (version, plaintext) = ctx
            .blocking(move |app| {
                let k = app.keys.resolve(
                    &key,
                    KeyKind::Rsa2048Oaep,
                    Decrypt::NAME,
                    Selector::for_decryption(a.version, None),
                )?;
                let label = a.label.as_deref().unwrap_or_default();
                let pt = oaep_decrypt(&k, &a.ciphertext, label)?;
                Ok((k.number(), pt))
            })
            .await?;
        plaintext_result(ctx, a.key, version, &plaintext)
    }

    fn scrub(r: &mut PlaintextResult) {
        r.plaintext.zeroize();
    }
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

impl Handle for Unwrap {
    /// Version by number, else by thumbprint (argument prefix or the 32 bytes in front of the
    /// wrapped key), else current.
    async fn handle(ctx: &mut Ctx, a: UnwrapArgs) -> Result<PlaintextResult, OpError> {
        let key = a.key.clone();
        let (version, plaintext) = ctx
            .blocking(move |app| {
                let (inner_thumb, wrapped) = split_wrapped(&a.wrapped)?;
                let thumb = a.thumbprint.as_deref().or(inner_thumb);
                let k = app.keys.resolve(
                    &key,
                    KeyKind::Rsa2048Oaep,
                    Unwrap::NAME,
                    Selector::for_decryption(a.version, thumb),
                )?;
                let pt = oaep_decrypt(&k, wrapped, &[])?;
                Ok((k.number(), pt))
            })
            .await?;
        plaintext_result(ctx, a.key, version, &plaintext)
    }

    fn scrub(r: &mut PlaintextResult) {
        r.plaintext.zeroize();
    }
}
