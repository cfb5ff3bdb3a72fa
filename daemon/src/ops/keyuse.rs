//! Helpers shared by the operations that use a key: OAEP decryption with one error for every
//! failure, the signature scheme, encrypting to a recipient.

use custody_proto::ErrorCode;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPublicKey};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::backend::{BackendError, KeyKind, SignScheme};
use crate::error::OpError;
use crate::format::thumbprint::thumbprint;
use crate::keys::{KeyVersion, Selector};
use crate::state::App;

/// Largest OAEP label accepted.
pub const MAX_LABEL: usize = 1024;

/// The one message for every failed decryption (bad padding, wrong label, wrong key, tampered
/// envelope, a data key of the wrong length): callers must not be able to tell these apart, or
/// the daemon becomes a padding oracle. Details go to the debug log only.
pub const DECRYPTION_FAILED: &str = "decryption failed: wrong key, wrong label or tampered data";

/// The error for a failed decryption; `detail` is logged at debug level, never returned.
pub fn decryption_failed(detail: &dyn std::fmt::Display) -> OpError {
    tracing::debug!("decryption failed: {detail}");
    OpError::new(ErrorCode::Integrity, DECRYPTION_FAILED)
}

/// Parses a scheme name (`pkcs1v15` default, `pss`).
pub fn scheme(s: Option<&str>) -> Result<SignScheme, OpError> {
    match s {
        None | Some("pkcs1v15") => Ok(SignScheme::Pkcs1v15),
        Some("pss") => Ok(SignScheme::Pss),
        Some(o) => Err(OpError::bad(format!(
            "unknown scheme `{}` (pkcs1v15, pss)",
            o.escape_default()
        ))),
    }
}

/// RSA-OAEP-SHA256 decryption with a resolved version of an `rsa2048-oaep` key.
pub fn oaep_decrypt(
    k: &KeyVersion,
    ciphertext: &[u8],
    label: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpError> {
    if ciphertext.len() != 256 {
        return Err(OpError::bad(format!(
            "RSA-2048 ciphertext is 256 bytes; got {}",
            ciphertext.len()
        )));
    }
    if label.len() > MAX_LABEL {
        return Err(OpError::bad("OAEP label is limited to 1024 bytes"));
    }
    k.decrypt_oaep(ciphertext, label).map_err(|e| match e {
        // Whatever the device says about a failed decryption, the caller hears one thing.
        BackendError::Integrity(_) => decryption_failed(&e),
        BackendError::Internal(_) => {
            // Possibly a real device fault: operators must see it, the caller must not.
            tracing::warn!(key = %k.key().name, "decryption: {e}");
            decryption_failed(&e)
        }
        other => other.into(),
    })
}

/// The recipient of a (re-)encryption: a named key's current version or an external key.
pub struct Recipient {
    /// The thumbprint written for this recipient: its newest certificate's for a named key that
    /// has one, else SHA-256 of its SubjectPublicKeyInfo.
    pub thumbprint: [u8; 32],
    /// Key version, for a named key.
    pub version: Option<u32>,
    key: RsaPublicKey,
}

impl Recipient {
    /// The current version of the named key, or the external key: exactly one is given.
    pub fn of(
        app: &App,
        name: Option<&str>,
        spki: Option<Vec<u8>>,
        op: &str,
    ) -> Result<Recipient, OpError> {
        match (name, spki) {
            (Some(n), None) => Recipient::named(app, n, op),
            (None, Some(spki)) => Recipient::external(spki),
            _ => Err(OpError::bad("give exactly one recipient")),
        }
    }

    /// The current version of a named `rsa2048-oaep` key.
    pub fn named(app: &App, name: &str, op: &str) -> Result<Recipient, OpError> {
        let k = app
            .keys
            .resolve(name, KeyKind::Rsa2048Oaep, op, Selector::Current)?;
        Recipient::version(&k)
    }

    /// A resolved version of a named `rsa2048-oaep` key.
    pub fn version(k: &KeyVersion) -> Result<Recipient, OpError> {
        let name = &k.key().name;
        let spki = k
            .record()
            .public_der
            .clone()
            .ok_or_else(|| OpError::internal(format!("no public key recorded for `{name}`")))?;
        let mut r = Recipient::external(spki)?;
        // A certified recipient is addressed by its newest certificate (MOSIP's rule).
        if let Some(t) = k.record().recipient_thumbprint() {
            r.thumbprint = t;
        }
        r.version = Some(k.number());
        Ok(r)
    }

    /// An external RSA-2048 public key (DER SubjectPublicKeyInfo).
    pub fn external(spki: Vec<u8>) -> Result<Recipient, OpError> {
        let key = RsaPublicKey::from_public_key_der(&spki)
            .map_err(|_| OpError::bad("public key is not a DER RSA SubjectPublicKeyInfo"))?;
        if key.size() != 256 {
            return Err(OpError::bad(format!(
                "recipient RSA key has {} bytes; RSA-2048 (256) is required",
                key.size()
            )));
        }
        Ok(Recipient {
            thumbprint: thumbprint(&spki),
            version: None,
            key,
        })
    }

    /// RSA-OAEP-SHA256 (MGF1-SHA-256, empty label) encryption of a data key to this recipient.
    pub fn wrap(&self, data_key: &[u8]) -> Result<Vec<u8>, OpError> {
        self.key
            .encrypt(&mut rand::rngs::OsRng, Oaep::new::<Sha256>(), data_key)
            .map_err(|e| OpError::internal(format!("RSA-OAEP encryption failed: {e}")))
    }
}
