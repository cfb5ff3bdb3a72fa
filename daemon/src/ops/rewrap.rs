//! `rewrap`: re-target a wrapped data key or a whole envelope to another key (named, or an
//! external public key) without the data key leaving the daemon. Covers IDA's K22 → K18 path, a
//! partner re-encryption, and re-wrapping to the current version after a rotation.

use custody_proto::ops::{Op, Rewrap, RewrapArgs, RewrapResult};

use super::decrypt::split_wrapped;
use super::keyuse::{oaep_decrypt, Recipient};
use super::{Ctx, Handle};
use crate::backend::KeyKind;
use crate::error::OpError;
use crate::format::envelope;
use crate::keys::Selector;

impl Handle for Rewrap {
    /// Needs `rewrap` on the source key and on a named target key, or `rewrap.external` on the
    /// source key for an external target (declared by the op).
    async fn handle(ctx: &mut Ctx, a: RewrapArgs) -> Result<RewrapResult, OpError> {
        let key = a.key.clone();
        let external = a.to_public_key.is_some();
        let (version, result) = ctx
            .blocking(move |app| {
                let is_envelope = a.input.starts_with(envelope::VERSION);
                let (thumb, wrapped) = if is_envelope {
                    let p = envelope::parse(&a.input)?;
                    (Some(&p.thumbprint[..]), p.wrapped_key)
                } else {
                    split_wrapped(&a.input)?
                };
                let k = app.keys.resolve(
                    &key,
                    KeyKind::Rsa2048Oaep,
                    Rewrap::NAME,
                    Selector::for_decryption(None, thumb),
                )?;
                // The target is checked before the device is used: a bad target costs nothing.
                let to = Recipient::of(app, a.to_key.as_deref(), a.to_public_key, Rewrap::NAME)?;
                let data_key = oaep_decrypt(&k, wrapped, &[])?;
                let new_wrapped = to.wrap(&data_key)?;
                let (form, output) = if is_envelope {
                    let out = envelope::rewrap(&a.input, &to.thumbprint, &new_wrapped)?;
                    ("envelope", out)
                } else {
                    let mut out = to.thumbprint.to_vec();
                    out.extend_from_slice(&new_wrapped);
                    ("wrapped_key", out)
                };
                Ok((
                    k.number(),
                    RewrapResult {
                        form: form.into(),
                        output,
                        thumbprint: to.thumbprint.to_vec(),
                        version: to.version,
                    },
                ))
            })
            .await?;
        ctx.version = Some(version);
        if external {
            // Re-targeted to an external key: the audit line says which one.
            ctx.target = Some(format!("external:{}", hex::encode(&result.thumbprint)));
        }
        Ok(result)
    }
}
