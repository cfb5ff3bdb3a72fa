//! `keys.public`: the public key of a version as DER, PEM or TPMT_PUBLIC, with its thumbprint and
//! MOSIP key index.

use base64::Engine;
use custody_proto::ops::{KeysPublic, PublicKeyArgs, PublicKeyResult};
use custody_proto::ErrorCode;

use super::{Ctx, Handle};
use crate::backend::KeyKind;
use crate::error::OpError;
use crate::format::thumbprint::key_index;
use crate::keys::VersionRecord;

/// PEM `PUBLIC KEY` block of a DER SubjectPublicKeyInfo.
pub fn pem(der: &[u8]) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(chunk));
        s.push('\n');
    }
    s.push_str("-----END PUBLIC KEY-----\n");
    s
}

/// MOSIP key index of a version: over TPMT_PUBLIC for TPM keys (what MOSIP registers for a
/// machine), else over the DER SubjectPublicKeyInfo.
pub fn version_key_index(v: &VersionRecord) -> Option<String> {
    v.public_tpmt
        .as_deref()
        .or(v.public_der.as_deref())
        .map(key_index)
}

impl Handle for KeysPublic {
    async fn handle(ctx: &mut Ctx, a: PublicKeyArgs) -> Result<PublicKeyResult, OpError> {
        let rec = ctx.app.keys.get(&a.name)?;
        let v = rec.version_or_current(a.version).ok_or_else(|| {
            OpError::new(
                ErrorCode::NotFound,
                format!("no such version of `{}`", a.name),
            )
        })?;
        ctx.version = Some(v.version);
        let (Some(der), Some(thumb)) = (v.public_der.as_ref(), v.thumbprint) else {
            return Err(OpError::new(
                ErrorCode::WrongKind,
                format!("`{}` is {}: it has no public key", rec.name, rec.kind),
            ));
        };
        let format = a.format.as_deref().unwrap_or("der");
        let raw = || {
            crate::format::okp::raw_from_spki(rec.kind, der).ok_or_else(|| {
                OpError::new(
                    ErrorCode::WrongKind,
                    format!(
                        "`{}` is {}: only x25519 and ed25519 keys have a raw form",
                        rec.name, rec.kind
                    ),
                )
            })
        };
        let data = match format {
            "der" => der.clone(),
            "pem" => pem(der).into_bytes(),
            "raw" => raw()?.to_vec(),
            // The form the key is usually written in: idOS stores X25519 keys as standard
            // base64 and issuer Ed25519 keys as hex; RSA keys are PEM.
            "text" => match rec.kind {
                KeyKind::X25519 => base64::engine::general_purpose::STANDARD
                    .encode(raw()?)
                    .into_bytes(),
                KeyKind::Ed25519 => hex::encode(raw()?).into_bytes(),
                _ => pem(der).into_bytes(),
            },
            "tpmt" => v.public_tpmt.clone().ok_or_else(|| {
                OpError::new(
                    ErrorCode::WrongKind,
                    format!("`{}` is not a TPM key: no TPMT_PUBLIC", rec.name),
                )
            })?,
            o => {
                return Err(OpError::bad(format!(
                    "unknown format `{}` (der, pem, tpmt, raw, text)",
                    o.escape_default()
                )))
            }
        };
        Ok(PublicKeyResult {
            name: rec.name.clone(),
            version: v.version,
            format: format.into(),
            data,
            thumbprint: thumb.to_vec(),
            key_index: version_key_index(v).unwrap_or_default(),
            thumbprints: super::admin::thumbprints(v),
        })
    }
}
