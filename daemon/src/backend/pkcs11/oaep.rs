//! RSA-OAEP-SHA256 decryption: on the token when it has the mechanism (probed at start-up), else
//! raw RSA on the token and constant-time OAEP decoding in the daemon.

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use zeroize::Zeroizing;

use super::errors::{describe, integrity_on, rv, OpError};
use super::keys::Role;
use super::{mechanisms, Capabilities, OaepHash, OaepMode, OaepPath, Pkcs11Backend};
use crate::backend::{BackendError, KeyRef};
use crate::crypto::oaep;

impl Pkcs11Backend {
    /// The OAEP path `decrypt_oaep` uses with SHA-256 and an empty label (a non-empty label goes
    /// to software in mode `Auto` when the token accepts empty labels only).
    pub fn oaep_path(&self) -> Result<OaepPath, BackendError> {
        self.oaep_path_for(b"")
    }

    pub(super) fn oaep_path_for(&self, label: &[u8]) -> Result<OaepPath, BackendError> {
        match self.oaep_mode {
            OaepMode::Token => Ok(OaepPath::Token),
            OaepMode::Software => Ok(OaepPath::Software),
            OaepMode::Auto => {
                let c = self.capabilities()?;
                let path = self.resolve_oaep(&c);
                if path == OaepPath::Token && !label.is_empty() && !c.oaep_label {
                    Ok(OaepPath::Software)
                } else {
                    Ok(path)
                }
            }
        }
    }

    pub(super) fn resolve_oaep(&self, c: &Capabilities) -> OaepPath {
        match self.oaep_mode {
            OaepMode::Token => OaepPath::Token,
            OaepMode::Software => OaepPath::Software,
            OaepMode::Auto if c.oaep_sha256 => OaepPath::Token,
            OaepMode::Auto => OaepPath::Software,
        }
    }

    /// RSA-OAEP decryption with an explicit hash and path (`decrypt_oaep` is SHA-256 with the
    /// configured path). Exposed for interoperability tests: SoftHSM only has token OAEP with
    /// SHA-1, which lets both paths be compared on the same ciphertext.
    pub fn decrypt_oaep_with(
        &self,
        key: &KeyRef<'_>,
        ciphertext: &[u8],
        label: &[u8],
        hash: OaepHash,
        path: OaepPath,
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        if path == OaepPath::Token {
            if let Some(c) = self.caps.get() {
                let hash_ok = match hash {
                    OaepHash::Sha256 => c.oaep_sha256,
                    OaepHash::Sha1 => c.oaep_sha1,
                };
                if !hash_ok {
                    return Err(BackendError::Unsupported(format!(
                        "token does not support RSA-OAEP with {} (start-up probe failed); \
                         use oaep mode 'auto' or 'software'",
                        hash_name(hash)
                    )));
                }
                if !label.is_empty() && !c.oaep_label {
                    return Err(BackendError::Unsupported(
                        "token RSA-OAEP does not accept a non-empty label (start-up probe); \
                         use oaep mode 'auto' or 'software'"
                            .into(),
                    ));
                }
            }
        }
        self.with_key(key, Role::Decrypt, |s, key| {
            if ciphertext.len() != key.modulus_len {
                return Err(OpError::Backend(BackendError::BadInput(format!(
                    "ciphertext is {} bytes, the modulus {}",
                    ciphertext.len(),
                    key.modulus_len
                ))));
            }
            match path {
                OaepPath::Token => s
                    .decrypt(&mechanisms::oaep(hash, label), key.handle, ciphertext)
                    .map(Zeroizing::new)
                    .map_err(|e| match rv(&e) {
                        Some(
                            RvError::ArgumentsBad
                            | RvError::MechanismInvalid
                            | RvError::MechanismParamInvalid,
                        ) => OpError::Backend(BackendError::Unsupported(format!(
                            "token rejected RSA-OAEP with {} (label {} bytes): {}",
                            hash_name(hash),
                            label.len(),
                            describe(&e)
                        ))),
                        _ => integrity_on(e, "RSA-OAEP decryption"),
                    }),
                OaepPath::Software => {
                    let raw = s
                        .decrypt(&Mechanism::RsaX509, key.handle, ciphertext)
                        .map(Zeroizing::new)
                        .map_err(|e| integrity_on(e, "RSA-OAEP decryption"))?;
                    oaep::decode(&raw, key.modulus_len, label, hash).map_err(|_| {
                        OpError::Backend(BackendError::Integrity(
                            "RSA-OAEP decryption failed".into(),
                        ))
                    })
                }
            }
        })
    }
}

fn hash_name(hash: OaepHash) -> &'static str {
    match hash {
        OaepHash::Sha1 => "SHA-1",
        OaepHash::Sha256 => "SHA-256",
    }
}
