//! `rewrap`: re-target a wrapped data key or a whole envelope to another key (named, or an
//! external public key) without the data key leaving the daemon. Covers IDA's K22 → K18 path, a
//! partner re-encryption, and re-wrapping to the current version after a rotation.

use custody_proto::ops::{names, RewrapArgs, RewrapResult};
use custody_proto::Request;

use super::decrypt::split_wrapped;
use super::keyuse::{decrypt_version, oaep_decrypt, Recipient};
use super::{encode, Ctx, OpResult};
use crate::error::OpError;
use crate::format::envelope;

/// `rewrap`. Needs `rewrap` permission on the source key and on a named target key.
pub async fn rewrap(ctx: &mut Ctx, req: &Request) -> OpResult {
    let a: RewrapArgs = req.args()?;
    if a.to_key.is_some() == a.to_public_key.is_some() {
        return Err(OpError::bad(
            "give exactly one of `to_key` and `to_public_key`",
        ));
    }
    ctx.authorize(Some(&a.key))?;
    match &a.to_key {
        Some(t) => ctx.authorize(Some(t))?,
        // Re-targeting to a key the daemon does not hold hands the data key to whoever holds
        // that key: as strong as `unwrap`, so it is a right of its own.
        None => ctx.authorize_as(names::REWRAP_EXTERNAL, Some(&a.key))?,
    }
    let key = a.key.clone();
    let external = a.to_public_key.is_some();
    let (version, result) = ctx
        .blocking(move |app| {
            let rec = app.keys.get(&key)?;
            let is_envelope = a.input.starts_with(envelope::VERSION);
            let (thumb, wrapped) = if is_envelope {
                let p = envelope::parse(&a.input)?;
                (Some(&p.thumbprint[..]), p.wrapped_key)
            } else {
                split_wrapped(&a.input)?
            };
            let v = decrypt_version(&rec, None, thumb)?;
            let data_key = oaep_decrypt(app, &rec, v, wrapped, &[], "rewrap")?;
            let to = match (a.to_key, a.to_public_key) {
                (Some(n), _) => Recipient::named(app, &n, "rewrap")?.1,
                (None, Some(spki)) => Recipient::external(spki)?,
                (None, None) => return Err(OpError::bad("no target")),
            };
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
                v.version,
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
    encode(&result)
}
