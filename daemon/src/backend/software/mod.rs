//! Software backend: secrets hardware cannot hold (`aes256` data keys, `x25519` box keys, and
//! `ed25519` keys where the token lacks EdDSA) are generated in the daemon (or, for a
//! password-derived X25519 key, given to it) and stored only wrapped under an `aes256` master key
//! version held in hardware (a PKCS#11 token). The registry keeps the wrapped blob; the backend
//! unwraps it through the master's backend for the length of one operation, into zeroizing
//! memory.
//!
//! Every blob is wrapped with AAD naming the key, version and kind it belongs to ([`aad`]), so a
//! blob copied to another row, another version or another kind fails authentication instead of
//! being used as that key.

use ed25519_dalek::Signer;
use rand::RngCore;
use zeroize::Zeroizing;

use super::{
    Backend, BackendError, BackendKind, CreatedKey, Health, KeyKind, KeyRef, NewKey, PublicKeyInfo,
    Template,
};
use crate::crypto::idos::{self, IdosError};
use crate::format::okp;

/// Length of every secret this backend holds (AES-256 key, X25519 secret, Ed25519 seed).
const SECRET_LEN: usize = 32;

/// The public key of a software secret of `kind` (none for `aes256`).
fn public_of(kind: KeyKind, secret: &[u8]) -> Result<Option<PublicKeyInfo>, BackendError> {
    let raw = match kind {
        KeyKind::Aes256 => return Ok(None),
        KeyKind::X25519 => idos::x25519_public(secret).map_err(box_error)?,
        KeyKind::Ed25519 => ed25519_key(secret)?.verifying_key().to_bytes(),
        k => {
            return Err(BackendError::Unsupported(format!(
                "the software backend holds aes256, x25519 and ed25519 keys, not {k}"
            )))
        }
    };
    let spki_der = okp::spki_der(kind, &raw)
        .ok_or_else(|| BackendError::Internal(format!("cannot encode a {kind} public key")))?;
    Ok(Some(PublicKeyInfo {
        spki_der,
        tpmt: None,
    }))
}

fn ed25519_key(secret: &[u8]) -> Result<ed25519_dalek::SigningKey, BackendError> {
    let seed = Zeroizing::new(
        <[u8; SECRET_LEN]>::try_from(secret)
            .map_err(|_| BackendError::Internal("an ed25519 secret is a 32-byte seed".into()))?,
    );
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

fn box_error(e: IdosError) -> BackendError {
    match e {
        IdosError::BadInput(m) => BackendError::BadInput(m),
        IdosError::Integrity => BackendError::Integrity("nacl.box authentication failed".into()),
        IdosError::Internal(m) => BackendError::Internal(m),
    }
}

impl SoftwareBackend {
    /// Wraps `secret` as version `spec.version` of `spec.name` under the spec's master and
    /// computes its public key.
    fn seal_new(&self, spec: &NewKey<'_>, secret: &[u8]) -> Result<CreatedKey, BackendError> {
        if spec.template != Template::Default {
            return Err(BackendError::Unsupported(format!(
                "template {:?} is not available on the software backend",
                spec.template.as_str()
            )));
        }
        if secret.len() != SECRET_LEN {
            return Err(BackendError::BadInput(format!(
                "a {} secret is {SECRET_LEN} bytes",
                spec.kind
            )));
        }
        let public = public_of(spec.kind, secret)?;
        let (master, aad) = spec.master.ok_or_else(|| {
            BackendError::BadInput("a software key needs a master key to be wrapped under".into())
        })?;
        let blob = master
            .backend
            .wrap_secret(&KeyRef::object(&master.object), secret, aad)?;
        Ok(CreatedKey {
            backend_ref: String::new(),
            public,
            sealed: Some(blob),
        })
    }
}

/// Domain separation for the AAD of wrapped secrets (format 1).
const AAD_CONTEXT: &[u8] = b"custodyd sealed secret v1";

/// The AAD binding a wrapped secret to `(name, version, kind)`:
/// `"custodyd sealed secret v1" ‖ 0x00 ‖ name ‖ 0x00 ‖ version (u32 BE) ‖ kind`.
pub fn aad(name: &str, version: u32, kind: KeyKind) -> Vec<u8> {
    let kind = kind.as_str().as_bytes();
    let mut out = Vec::with_capacity(AAD_CONTEXT.len() + name.len() + kind.len() + 6);
    out.extend_from_slice(AAD_CONTEXT);
    out.push(0);
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(kind);
    out
}

/// The software backend. Stateless: the wrapped secrets live in the registry.
#[derive(Debug, Default)]
pub struct SoftwareBackend;

impl Backend for SoftwareBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Software
    }

    fn health(&self) -> Health {
        Health {
            ok: true,
            detail: "software keys, wrapped under hardware master keys".into(),
        }
    }

    fn create(&self, spec: &NewKey<'_>) -> Result<CreatedKey, BackendError> {
        if !BackendKind::Software.kinds().contains(&spec.kind) {
            return Err(BackendError::Unsupported(format!(
                "the software backend holds aes256, x25519 and ed25519 keys, not {}",
                spec.kind
            )));
        }
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        rand::rngs::OsRng.fill_bytes(&mut secret[..]);
        self.seal_new(spec, &secret[..])
    }

    fn import(&self, spec: &NewKey<'_>, secret: &[u8]) -> Result<CreatedKey, BackendError> {
        self.seal_new(spec, secret)
    }

    fn sign_ed25519(&self, key: &KeyRef<'_>, data: &[u8]) -> Result<Vec<u8>, BackendError> {
        let secret = self.secret(key)?;
        Ok(ed25519_key(&secret)?.sign(data).to_bytes().to_vec())
    }

    fn box_open(
        &self,
        key: &KeyRef<'_>,
        encryptor: &[u8; 32],
        nonce: &[u8; 24],
        boxed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let secret = self.secret(key)?;
        idos::open(&secret, encryptor, nonce, boxed).map_err(box_error)
    }

    fn secret(&self, key: &KeyRef<'_>) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let sealed = key.sealed.ok_or_else(|| {
            BackendError::Internal("software key without its wrapped secret".into())
        })?;
        sealed.master.backend.unwrap_secret(
            &KeyRef::object(&sealed.master.object),
            &sealed.blob,
            &sealed.aad,
        )
    }

    fn destroy(&self, _key: &KeyRef<'_>) -> Result<(), BackendError> {
        // Nothing outside the registry: the registry drops the wrapped secret.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aad_binds_name_version_and_kind() {
        let a = aad("data", 1, KeyKind::Aes256);
        assert_ne!(a, aad("data", 2, KeyKind::Aes256));
        assert_ne!(a, aad("datb", 1, KeyKind::Aes256));
        assert_ne!(a, aad("data", 1, KeyKind::Rsa2048Sign));
        // The 0x00 after the name keeps `ab` + version from colliding with `a` + other bytes.
        assert_ne!(aad("ab", 1, KeyKind::Aes256), aad("a", 1, KeyKind::Aes256));
        assert!(a.starts_with(AAD_CONTEXT));
    }
}
