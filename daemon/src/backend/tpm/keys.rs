//! Key references (`backend_ref` strings) and public-key encodings.
//!
//! Reference formats:
//! - `mosip:sign` / `mosip:encrypt`: the MOSIP registration client's endorsement-hierarchy
//!   primaries, recreated from their templates (never persisted);
//! - `persistent:0x81010100:<16 hex>`: a default-template key persisted at that handle; the
//!   suffix is the first 8 bytes of SHA-256 over the key's marshalled `TPMT_PUBLIC`, checked
//!   every time the handle is opened, so a reference can never reach another key that was later
//!   persisted at a reused handle. The suffix is required. Keys created since issue 11 carry
//!   `;auth=<64 hex>`: the key's random authValue, which the daemon alone holds (in its registry)
//!   and sets on every use, so another process that can open the TPM cannot use the key. A
//!   reference without it (an older key) is used with the empty authValue it was made with.

use rsa::{pkcs8::EncodePublicKey, BigUint, RsaPublicKey};
use tss_esapi::{
    structures::{Public, RsaScheme},
    traits::Marshall,
};

use crate::backend::{BackendError, KeyKind, PublicKeyInfo};

/// Number of persistent handles (from `persistent_base`) the backend may allocate and address.
pub const PERSISTENT_RANGE: u32 = 0x100;

/// One of the two MOSIP primaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MosipKey {
    /// The signing key (K10).
    Sign,
    /// The encryption (OAEP) key.
    Encrypt,
}

impl MosipKey {
    /// The key kind this primary serves.
    pub fn kind(self) -> KeyKind {
        match self {
            MosipKey::Sign => KeyKind::Rsa2048Sign,
            MosipKey::Encrypt => KeyKind::Rsa2048Oaep,
        }
    }
}

/// A parsed `backend_ref`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TpmRef {
    /// A MOSIP template primary.
    Mosip(MosipKey),
    /// A persisted default-template key at this TPM handle, with the fingerprint of its public
    /// area when known.
    Persistent(u32, Option<[u8; 8]>),
}

/// Bytes of a default-template key's authValue (the nameAlg's digest size, SHA-256).
pub const AUTH_LEN: usize = 32;

/// A key's authValue as the daemon holds it: empty for MOSIP primaries and older keys. Never
/// printed (`Debug` says only whether it is set).
#[derive(Clone, Default)]
pub struct KeyAuth(zeroize::Zeroizing<Vec<u8>>);

impl std::fmt::Debug for KeyAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeyAuth({})",
            if self.0.is_empty() { "empty" } else { "set" }
        )
    }
}

impl KeyAuth {
    /// A fresh random authValue.
    pub fn random() -> KeyAuth {
        use rand::RngCore;
        let mut v = zeroize::Zeroizing::new(vec![0u8; AUTH_LEN]);
        rand::rngs::OsRng.fill_bytes(&mut v);
        KeyAuth(v)
    }

    /// An authValue unwrapped from the registry.
    pub fn from_bytes(bytes: zeroize::Zeroizing<Vec<u8>>) -> KeyAuth {
        KeyAuth(bytes)
    }

    /// True for the empty authValue.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The reference suffix that records it (`;auth=<hex>`; empty for the empty authValue).
    pub fn suffix(&self) -> String {
        if self.0.is_empty() {
            String::new()
        } else {
            format!(";auth={}", hex::encode(&*self.0))
        }
    }
}

/// First 8 bytes of SHA-256 over a marshalled `TPMT_PUBLIC`.
pub fn fingerprint(tpmt: &[u8]) -> [u8; 8] {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(tpmt);
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

/// Checks that the object found at a persistent handle is the referenced key.
pub fn check_fingerprint(key: TpmRef, public: &Public) -> Result<(), BackendError> {
    if let TpmRef::Persistent(h, Some(expected)) = key {
        let tpmt = public
            .marshall()
            .map_err(|e| BackendError::Internal(format!("marshalling TPMT_PUBLIC: {e}")))?;
        if fingerprint(&tpmt) != expected {
            return Err(BackendError::NotFound(format!(
                "the object at persistent handle {h:#010x} is not this key (handle reused)"
            )));
        }
    }
    Ok(())
}

impl TpmRef {
    /// Parses a reference with its authValue suffix (see the module docs); error messages never
    /// show the authValue.
    pub fn parse_with_auth(
        s: &str,
        persistent_base: u32,
    ) -> Result<(TpmRef, KeyAuth), BackendError> {
        let (key, auth) = match s.split_once(";auth=") {
            None => (s, KeyAuth::default()),
            Some((key, a)) => {
                let bytes = zeroize::Zeroizing::new(hex::decode(a).map_err(|_| {
                    BackendError::NotFound(format!("not a TPM key reference: {key:?} (bad auth)"))
                })?);
                if bytes.len() != AUTH_LEN {
                    return Err(BackendError::NotFound(format!(
                        "not a TPM key reference: {key:?} (bad auth length)"
                    )));
                }
                (key, KeyAuth(bytes))
            }
        };
        Ok((TpmRef::parse(key, persistent_base)?, auth))
    }

    /// Parses a reference; handles outside `[base, base + PERSISTENT_RANGE)` are rejected so a
    /// registry entry can never address (or evict) someone else's persistent object such as the EK.
    pub fn parse(s: &str, persistent_base: u32) -> Result<TpmRef, BackendError> {
        match s {
            "mosip:sign" => return Ok(TpmRef::Mosip(MosipKey::Sign)),
            "mosip:encrypt" => return Ok(TpmRef::Mosip(MosipKey::Encrypt)),
            _ => {}
        }
        let bad = || BackendError::NotFound(format!("not a TPM key reference: {s:?}"));
        let rest = s
            .strip_prefix("persistent:0x")
            .or_else(|| s.strip_prefix("persistent:0X"))
            .ok_or_else(bad)?;
        let (hex, fp) = rest.split_once(':').ok_or_else(bad)?;
        let fp = hex::decode(fp).map_err(|_| bad())?;
        let fp = Some(<[u8; 8]>::try_from(fp.as_slice()).map_err(|_| bad())?);
        let handle = u32::from_str_radix(hex, 16).map_err(|_| bad())?;
        if handle < persistent_base || handle - persistent_base >= PERSISTENT_RANGE {
            return Err(BackendError::NotFound(format!(
                "persistent handle {handle:#010x} is outside this backend's range"
            )));
        }
        Ok(TpmRef::Persistent(handle, fp))
    }
}

impl std::fmt::Display for TpmRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TpmRef::Mosip(MosipKey::Sign) => f.write_str("mosip:sign"),
            TpmRef::Mosip(MosipKey::Encrypt) => f.write_str("mosip:encrypt"),
            TpmRef::Persistent(h, None) => write!(f, "persistent:{h:#010x}"),
            TpmRef::Persistent(h, Some(fp)) => {
                write!(f, "persistent:{h:#010x}:{}", hex::encode(fp))
            }
        }
    }
}

/// Facts about an RSA key read from its `Public` area.
#[derive(Clone, Debug)]
pub struct RsaFacts {
    /// The key may sign.
    pub sign: bool,
    /// The key may decrypt.
    pub decrypt: bool,
    /// The key's fixed scheme (`Null` when the caller chooses).
    pub scheme: RsaScheme,
}

impl RsaFacts {
    /// Reads the facts; non-RSA objects are `Unsupported`.
    pub fn of(public: &Public) -> Result<RsaFacts, BackendError> {
        match public {
            Public::Rsa {
                object_attributes,
                parameters,
                ..
            } => Ok(RsaFacts {
                sign: object_attributes.sign_encrypt(),
                decrypt: object_attributes.decrypt(),
                scheme: parameters.rsa_scheme(),
            }),
            _ => Err(BackendError::Unsupported("object is not an RSA key".into())),
        }
    }

    /// The kind of key this is (sign or OAEP); `None` for anything else (e.g. a storage key).
    pub fn kind(&self) -> Option<KeyKind> {
        match (self.sign, self.decrypt) {
            (true, false) => Some(KeyKind::Rsa2048Sign),
            (false, true) => Some(KeyKind::Rsa2048Oaep),
            _ => None,
        }
    }

    /// Checks the key serves `want`; `Unsupported` otherwise.
    pub fn require(&self, want: KeyKind) -> Result<(), BackendError> {
        if self.kind() == Some(want) {
            Ok(())
        } else {
            Err(BackendError::Unsupported(format!(
                "key is not an {want} key (sign={}, decrypt={})",
                self.sign, self.decrypt
            )))
        }
    }
}

/// DER SubjectPublicKeyInfo and marshalled `TPMT_PUBLIC` of an RSA `Public`.
pub fn public_info(public: &Public) -> Result<PublicKeyInfo, BackendError> {
    let (n, e) = match public {
        Public::Rsa {
            parameters, unique, ..
        } => {
            // An exponent of 0 in a TPM public area means the default, 65537.
            let e = match parameters.exponent().value() {
                0 => 65537,
                e => e,
            };
            (unique.value().to_vec(), e)
        }
        _ => return Err(BackendError::Unsupported("object is not an RSA key".into())),
    };
    if n.is_empty() {
        return Err(BackendError::Internal(
            "TPM returned an empty RSA modulus".into(),
        ));
    }
    let key = RsaPublicKey::new(BigUint::from_bytes_be(&n), BigUint::from(e))
        .map_err(|e| BackendError::Internal(format!("TPM returned an invalid RSA key: {e}")))?;
    let spki = key
        .to_public_key_der()
        .map_err(|e| BackendError::Internal(format!("encoding SubjectPublicKeyInfo: {e}")))?;
    let tpmt = public
        .marshall()
        .map_err(|e| BackendError::Internal(format!("marshalling TPMT_PUBLIC: {e}")))?;
    Ok(PublicKeyInfo {
        spki_der: spki.as_bytes().to_vec(),
        tpmt: Some(tpmt),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_round_trip_and_range() {
        let base = 0x8101_0100;
        for s in [
            "mosip:sign",
            "mosip:encrypt",
            "persistent:0x81010100:0011223344556677",
        ] {
            let r = TpmRef::parse(s, base).map(|r| r.to_string());
            assert_eq!(r.ok().as_deref(), Some(s));
        }
        assert!(TpmRef::parse("persistent:0x81010001", base).is_err());
        assert!(TpmRef::parse("persistent:0x81010200", base).is_err());
        assert!(TpmRef::parse("persistent:zz", base).is_err());
        let with_fp = "persistent:0x81010100:0011223344556677";
        assert_eq!(TpmRef::parse(with_fp, base).unwrap().to_string(), with_fp);
        assert!(TpmRef::parse("persistent:0x81010100:0011", base).is_err());
        assert!(
            TpmRef::parse("persistent:0x81010100", base).is_err(),
            "fingerprint required"
        );
        assert!(TpmRef::parse("persistent:0x81010100:zz11223344556677", base).is_err());
        assert!(TpmRef::parse("mosip:other", base).is_err());
    }
}
