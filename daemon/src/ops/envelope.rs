//! `envelope.seal` and `envelope.open`: MOSIP's `VER_R2` hybrid envelope, byte-exact.

use custody_proto::ops::{
    EnvelopeOpen, EnvelopeSeal, Op, OpenArgs, PlaintextResult, SealArgs, SealResult,
};

use super::keyuse::{oaep_decrypt, Recipient};
use super::{plaintext_result, Ctx, Handle};
use crate::backend::KeyKind;
use crate::error::OpError;
use crate::format::envelope;
use crate::keys::Selector;
use zeroize::Zeroize;

impl From<envelope::EnvelopeError> for OpError {
    fn from(e: envelope::EnvelopeError) -> Self {
        match e {
            // After the key was unwrapped: indistinguishable from a failed unwrap.
            envelope::EnvelopeError::Integrity | envelope::EnvelopeError::DataKeyLength { .. } => {
                super::keyuse::decryption_failed(&e)
            }
            envelope::EnvelopeError::Encrypt | envelope::EnvelopeError::Wrap => {
                OpError::internal(e.to_string())
            }
            _ => OpError::bad(e.to_string()),
        }
    }
}

impl Handle for EnvelopeSeal {
    /// To the current version of a named key, or to an external public key (exactly one, checked
    /// by the op's declared rights).
    async fn handle(ctx: &mut Ctx, a: SealArgs) -> Result<SealResult, OpError> {
        let r = ctx
            .blocking(move |app| {
                let to = Recipient::of(app, a.key.as_deref(), a.public_key, EnvelopeSeal::NAME)?;
                let mut plaintext = a.plaintext;
                let env = envelope::seal_with(&plaintext, &to.thumbprint, |k| to.wrap(&k[..]));
                plaintext.zeroize();
                let env = env?;
                Ok(SealResult {
                    envelope: env,
                    thumbprint: to.thumbprint.to_vec(),
                    version: to.version,
                })
            })
            .await?;
        ctx.version = r.version;
        Ok(r)
    }
}

impl Handle for EnvelopeOpen {
    /// The key version is the one whose thumbprint the envelope carries.
    async fn handle(ctx: &mut Ctx, a: OpenArgs) -> Result<PlaintextResult, OpError> {
        let key = a.key.clone();
        let (version, plaintext) = ctx
            .blocking(move |app| {
                let parsed = envelope::parse(&a.envelope)?;
                let k = app.keys.resolve(
                    &key,
                    KeyKind::Rsa2048Oaep,
                    EnvelopeOpen::NAME,
                    Selector::Thumbprint(&parsed.thumbprint[..]),
                )?;
                let data_key = oaep_decrypt(&k, parsed.wrapped_key, &[])?;
                let pt = envelope::open_with(&parsed, &data_key)?;
                Ok((k.number(), pt))
            })
            .await?;
        plaintext_result(ctx, a.key, version, &plaintext)
    }

    fn scrub(r: &mut PlaintextResult) {
        r.plaintext.zeroize();
    }
}
