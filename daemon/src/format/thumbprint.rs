//! Key thumbprints and key indexes.
//!
//! * MOSIP's certificate thumbprint is SHA-256 over the DER certificate. For a bare public key the
//!   daemon uses SHA-256 over the DER `SubjectPublicKeyInfo` ([`thumbprint`]).
//! * The key index of a machine public key is SHA-256 of the public key bytes, lowercase hex with a
//!   `:` between every two hex digits, 95 characters ([`key_index`]).

use sha2::{Digest, Sha256};

/// Length of a key index string: 32 bytes as 64 hex digits plus 31 colons.
pub const KEY_INDEX_LEN: usize = 95;

/// SHA-256 over a DER `SubjectPublicKeyInfo` (or, for MOSIP certificates, over the DER certificate:
/// the computation is the same, only the input differs).
pub fn thumbprint(spki_der: &[u8]) -> [u8; 32] {
    Sha256::digest(spki_der).into()
}

/// MOSIP key index: SHA-256 of `bytes`, lowercase hex, `:` between every two hex digits
/// (`ab:cd:…`, 95 characters).
pub fn key_index(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(KEY_INDEX_LEN);
    for (i, byte) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&hex::encode([*byte]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_index_of_abc() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        let idx = key_index(b"abc");
        assert_eq!(
            idx,
            "ba:78:16:bf:8f:01:cf:ea:41:41:40:de:5d:ae:22:23:\
             b0:03:61:a3:96:17:7a:9c:b4:10:ff:61:f2:00:15:ad"
        );
        assert_eq!(idx.len(), KEY_INDEX_LEN);
    }

    #[test]
    fn key_index_shape() {
        for input in [&b""[..], b"\x00", &[0xffu8; 300]] {
            let idx = key_index(input);
            assert_eq!(idx.len(), 95);
            for (i, c) in idx.chars().enumerate() {
                if i % 3 == 2 {
                    assert_eq!(c, ':');
                } else {
                    assert!(c.is_ascii_digit() || ('a'..='f').contains(&c), "{idx}");
                }
            }
        }
    }

    #[test]
    fn thumbprint_is_sha256() {
        assert_eq!(
            hex::encode(thumbprint(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
