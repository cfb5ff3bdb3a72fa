//! Software backend: secrets hardware cannot hold (today `aes256` data keys; X25519 and Ed25519
//! keys later) are generated in the daemon and stored only wrapped under an `aes256` master key
//! version held in hardware (a PKCS#11 token). The registry keeps the wrapped blob; the backend
//! unwraps it through the master's backend for the length of one operation, into zeroizing
//! memory.
//!
//! Every blob is wrapped with AAD naming the key, version and kind it belongs to ([`aad`]), so a
//! blob copied to another row, another version or another kind fails authentication instead of
//! being used as that key.

use rand::RngCore;
use zeroize::Zeroizing;

use super::{
    Backend, BackendError, BackendKind, CreatedKey, Health, KeyKind, KeyRef, NewKey, Template,
};

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
        if spec.template != Template::Default {
            return Err(BackendError::Unsupported(format!(
                "template {:?} is not available on the software backend",
                spec.template.as_str()
            )));
        }
        let len = match spec.kind {
            KeyKind::Aes256 => 32,
            k => {
                return Err(BackendError::Unsupported(format!(
                    "the software backend holds aes256 keys, not {k}"
                )))
            }
        };
        let (master, aad) = spec.master.ok_or_else(|| {
            BackendError::BadInput("a software key needs a master key to be wrapped under".into())
        })?;
        let mut secret = Zeroizing::new(vec![0u8; len]);
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let blob = master
            .backend
            .wrap_secret(&KeyRef::object(&master.object), &secret, aad)?;
        Ok(CreatedKey {
            backend_ref: String::new(),
            public: None,
            sealed: Some(blob),
        })
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
