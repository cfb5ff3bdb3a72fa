//! `envelope.seal` and `envelope.open`: MOSIP's `VER_R2` hybrid envelope, byte-exact.

use custody_proto::ops::{OpenArgs, SealArgs, SealResult};
use custody_proto::Request;

use super::keyuse::{decrypt_version, oaep_decrypt, Recipient};
use super::{encode, plaintext_result, Ctx, OpResult};
use crate::error::OpError;
use crate::format::envelope;

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

/// `envelope.seal`: to the current version of a named key, or to an external public key.
pub async fn seal(ctx: &mut Ctx, req: &Request) -> OpResult {
    let a: SealArgs = req.args()?;
    let name = match (&a.key, &a.public_key) {
        (Some(k), None) => Some(k.clone()),
        (None, Some(_)) => None,
        _ => return Err(OpError::bad("give exactly one of `key` and `public_key`")),
    };
    ctx.authorize(name.as_deref())?;
    let r = ctx
        .blocking(move |app| {
            let to = match (name, a.public_key) {
                (Some(n), _) => Recipient::named(app, &n, "envelope.seal")?.1,
                (None, Some(spki)) => Recipient::external(spki)?,
                (None, None) => return Err(OpError::bad("no recipient")),
            };
            let env = envelope::seal_with(&a.plaintext, &to.thumbprint, |k| to.wrap(&k[..]))?;
            Ok(SealResult {
                envelope: env,
                thumbprint: to.thumbprint.to_vec(),
                version: to.version,
            })
        })
        .await?;
    ctx.version = r.version;
    encode(&r)
}

/// `envelope.open`: the key version is the one whose thumbprint the envelope carries.
pub async fn open(ctx: &mut Ctx, req: &Request) -> OpResult {
    let a: OpenArgs = req.args()?;
    ctx.authorize(Some(&a.key))?;
    let key = a.key.clone();
    let (version, plaintext) = ctx
        .blocking(move |app| {
            let parsed = envelope::parse(&a.envelope)?;
            let rec = app.keys.get(&key)?;
            let v = decrypt_version(&rec, None, Some(&parsed.thumbprint[..]))?;
            let data_key = oaep_decrypt(app, &rec, v, parsed.wrapped_key, &[], "envelope.open")?;
            let pt = envelope::open_with(&parsed, &data_key)?;
            Ok((v.version, pt))
        })
        .await?;
    plaintext_result(ctx, a.key, version, &plaintext)
}
