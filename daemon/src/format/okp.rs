//! RFC 8410 public keys (X25519, Ed25519): the raw 32-byte key and its DER
//! `SubjectPublicKeyInfo` (`AlgorithmIdentifier` with the curve's OID and no parameters, the key
//! as the BIT STRING), through the `spki` crate.

use spki::der::asn1::BitStringRef;
use spki::der::{Decode, Encode};
use spki::{AlgorithmIdentifierRef, ObjectIdentifier, SubjectPublicKeyInfoRef};

use crate::backend::KeyKind;

/// `id-X25519` (RFC 8410).
pub const OID_X25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.110");
/// `id-Ed25519` (RFC 8410).
pub const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

fn oid(kind: KeyKind) -> Option<ObjectIdentifier> {
    match kind {
        KeyKind::X25519 => Some(OID_X25519),
        KeyKind::Ed25519 => Some(OID_ED25519),
        _ => None,
    }
}

/// The DER SubjectPublicKeyInfo of a raw X25519 or Ed25519 public key; `None` for other kinds.
pub fn spki_der(kind: KeyKind, raw: &[u8; 32]) -> Option<Vec<u8>> {
    let spki = SubjectPublicKeyInfoRef {
        algorithm: AlgorithmIdentifierRef {
            oid: oid(kind)?,
            parameters: None,
        },
        subject_public_key: BitStringRef::from_bytes(raw).ok()?,
    };
    spki.to_der().ok()
}

/// The raw 32-byte key of an X25519 or Ed25519 SubjectPublicKeyInfo of that kind; `None` if the
/// DER is not one.
pub fn raw_from_spki(kind: KeyKind, der: &[u8]) -> Option<[u8; 32]> {
    let spki = SubjectPublicKeyInfoRef::from_der(der).ok()?;
    if spki.algorithm.oid != oid(kind)? || spki.algorithm.parameters.is_some() {
        return None;
    }
    spki.subject_public_key.as_bytes()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8410_layout() {
        let raw = [7u8; 32];
        let der = spki_der(KeyKind::Ed25519, &raw).unwrap();
        // RFC 8410 §10.1: 302a300506032b6570032100 ‖ key.
        assert_eq!(hex::encode(&der[..12]), "302a300506032b6570032100");
        assert_eq!(&der[12..], &raw);
        let der = spki_der(KeyKind::X25519, &raw).unwrap();
        assert_eq!(hex::encode(&der[..12]), "302a300506032b656e032100");
        assert_eq!(raw_from_spki(KeyKind::X25519, &der), Some(raw));
        assert_eq!(raw_from_spki(KeyKind::Ed25519, &der), None);
        assert_eq!(spki_der(KeyKind::Aes256, &raw), None);
    }
}
