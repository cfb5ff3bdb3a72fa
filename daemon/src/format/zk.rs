//! MOSIP's zero-knowledge formats, byte-exact (`reference/mosip.md`, "Zero-knowledge encryption"):
//! the per-person key derivation, the encrypted attribute layout, the share string that carries a
//! pool key to its recipients, and a line of the `data_encrypt_keystore` export.
//!
//! Pure functions: the pool key (`ZKn`) is given by the caller, in zeroizing memory.

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes256;
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::b64::{decode_b64, encode_b64url};

/// Length of a pool key and of a derived key.
pub const KEY_LEN: usize = 32;
/// Length of the index prefix (big-endian).
pub const INDEX_LEN: usize = 4;
/// AES-GCM nonce length.
pub const NONCE_LEN: usize = 12;
/// Length of the random AAD MOSIP writes into each attribute.
pub const AAD_LEN: usize = 32;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Bytes of an attribute besides the ciphertext: index, nonce, aad, tag.
pub const OVERHEAD: usize = INDEX_LEN + NONCE_LEN + AAD_LEN + TAG_LEN;
/// Thumbprint length at the head of a share segment.
pub const THUMBPRINT_LEN: usize = 32;
/// Largest pool index: MOSIP numbers its keys with positive Java ints.
pub const MAX_INDEX: u32 = i32::MAX as u32;
/// Longest person id accepted, in bytes (UINs and VIDs are short; a bound keeps requests small).
pub const MAX_ID_LEN: usize = 256;

/// What is wrong with a ZK input. Messages never contain key bytes, ids or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZkError {
    /// The person id is empty or too long.
    #[error("the id must have 1 to {MAX_ID_LEN} bytes")]
    BadId,
    /// An attribute shorter than index ‖ nonce ‖ aad ‖ tag.
    #[error(
        "an encrypted attribute has at least {OVERHEAD} bytes (index, nonce, aad, tag); got {0}"
    )]
    ShortAttribute(usize),
    /// Authentication failed: wrong id, wrong pool key or tampered data.
    #[error("zero-knowledge decryption failed: wrong id, wrong index or tampered data")]
    Integrity,
    /// A share segment that is not base64url of thumbprint ‖ RSA-2048 ciphertext.
    #[error(
        "share segment {0} is not base64url of a 32-byte thumbprint and a 256-byte RSA ciphertext"
    )]
    BadSegment(usize),
    /// An empty share string.
    #[error("the share string is empty")]
    EmptyShare,
    /// An index beyond what MOSIP's 4-byte signed index can carry.
    #[error("pool index {0} is out of range (0 to {MAX_INDEX})")]
    IndexRange(u64),
    /// A malformed line of a MOSIP pool export.
    #[error("line {line}: {why}")]
    ExportLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// The AEAD refused to encrypt (input too large for GCM).
    #[error("AES-GCM encryption failed")]
    Encrypt,
}

/// Checks a person id (UIN/VID): 1 to [`MAX_ID_LEN`] bytes of UTF-8.
pub fn check_id(id: &str) -> Result<(), ZkError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(ZkError::BadId);
    }
    Ok(())
}

/// ZKn' = AES-256-ECB(key = ZKn, data = SHA-256(utf8 id)): the two 16-byte halves of the hash
/// encrypted separately.
pub fn derive(pool_key: &[u8; KEY_LEN], id: &str) -> Zeroizing<[u8; KEY_LEN]> {
    let cipher = Aes256::new(pool_key.into());
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    out.copy_from_slice(&Sha256::digest(id.as_bytes()));
    for block in out.chunks_exact_mut(16) {
        cipher.encrypt_block(block.into());
    }
    out
}

/// Encrypts one attribute value with a derived key:
/// `index(4, BE) ‖ nonce(12) ‖ aad(32) ‖ AES-256-GCM(derived, nonce, aad, value) ‖ tag(16)`, with
/// a fresh random nonce and AAD.
pub fn encrypt_attribute(
    derived: &[u8; KEY_LEN],
    index: u32,
    value: &[u8],
) -> Result<Vec<u8>, ZkError> {
    let mut nonce = [0u8; NONCE_LEN];
    let mut aad = [0u8; AAD_LEN];
    let mut rng = rand::rngs::OsRng;
    rng.fill_bytes(&mut nonce);
    rng.fill_bytes(&mut aad);
    encrypt_attribute_with(derived, index, &nonce, &aad, value)
}

/// [`encrypt_attribute`] with a given nonce and AAD (for test vectors).
pub fn encrypt_attribute_with(
    derived: &[u8; KEY_LEN],
    index: u32,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8; AAD_LEN],
    value: &[u8],
) -> Result<Vec<u8>, ZkError> {
    let cipher = Aes256Gcm::new(derived.into());
    let ct = cipher
        .encrypt(Nonce::from_slice(nonce), Payload { msg: value, aad })
        .map_err(|_| ZkError::Encrypt)?;
    let mut out = Vec::with_capacity(INDEX_LEN + NONCE_LEN + AAD_LEN + ct.len());
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(aad);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// The pool index an encrypted attribute names.
pub fn attribute_index(attribute: &[u8]) -> Result<u32, ZkError> {
    if attribute.len() < OVERHEAD {
        return Err(ZkError::ShortAttribute(attribute.len()));
    }
    let mut i = [0u8; INDEX_LEN];
    i.copy_from_slice(&attribute[..INDEX_LEN]);
    Ok(u32::from_be_bytes(i))
}

/// Decrypts an attribute with the derived key of the pool key its index names.
pub fn decrypt_attribute(
    derived: &[u8; KEY_LEN],
    attribute: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ZkError> {
    attribute_index(attribute)?;
    let nonce = &attribute[INDEX_LEN..INDEX_LEN + NONCE_LEN];
    let aad = &attribute[INDEX_LEN + NONCE_LEN..INDEX_LEN + NONCE_LEN + AAD_LEN];
    let ct = &attribute[INDEX_LEN + NONCE_LEN + AAD_LEN..];
    Aes256Gcm::new(derived.into())
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| ZkError::Integrity)
}

/// One segment of a share string: `base64url(thumbprint(32) ‖ RSA-OAEP-SHA256(ZKn))`.
pub fn share_segment(thumbprint: &[u8; THUMBPRINT_LEN], wrapped: &[u8]) -> String {
    let mut raw = Vec::with_capacity(THUMBPRINT_LEN + wrapped.len());
    raw.extend_from_slice(thumbprint);
    raw.extend_from_slice(wrapped);
    encode_b64url(&raw)
}

/// A parsed share segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Thumbprint of the recipient key (certificate or SubjectPublicKeyInfo).
    pub thumbprint: [u8; THUMBPRINT_LEN],
    /// RSA-OAEP-SHA256 ciphertext of the pool key (256 bytes).
    pub wrapped: Vec<u8>,
}

/// Parses MOSIP's share string (`encryptedRandomKey`): segments joined with `.`; surrounding
/// whitespace is ignored. Every segment must be well-formed.
pub fn parse_share(share: &str) -> Result<Vec<Segment>, ZkError> {
    let share = share.trim();
    if share.is_empty() {
        return Err(ZkError::EmptyShare);
    }
    share
        .split('.')
        .enumerate()
        .map(|(i, seg)| {
            let raw = decode_b64(seg).map_err(|_| ZkError::BadSegment(i + 1))?;
            if raw.len() != THUMBPRINT_LEN + 256 {
                return Err(ZkError::BadSegment(i + 1));
            }
            let mut thumbprint = [0u8; THUMBPRINT_LEN];
            thumbprint.copy_from_slice(&raw[..THUMBPRINT_LEN]);
            Ok(Segment {
                thumbprint,
                wrapped: raw[THUMBPRINT_LEN..].to_vec(),
            })
        })
        .collect()
}

/// Checks a pool index given as a number.
pub fn check_index(index: u64) -> Result<u32, ZkError> {
    u32::try_from(index)
        .ok()
        .filter(|i| *i <= MAX_INDEX)
        .ok_or(ZkError::IndexRange(index))
}

/// One row of MOSIP's `data_encrypt_keystore` export: the pool index and the pool key wrapped
/// with AES-ECB (no padding) under the master K9.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRow {
    /// The row's `id`: the pool index.
    pub index: u32,
    /// `AES-ECB-nopad(K9, ZKn)`: 32 bytes.
    pub wrapped: [u8; KEY_LEN],
}

/// Parses a MOSIP pool export: CSV lines `id,key` (`key` = base64 of the ECB-wrapped pool key).
/// A header line `id,key`, blank lines, a trailing `\r` and double quotes around a field are
/// accepted; anything else malformed fails the whole file with its line number. Duplicate ids are
/// refused.
pub fn parse_export(text: &str) -> Result<Vec<ExportRow>, ZkError> {
    let mut rows = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let bad = |why: &str| ZkError::ExportLine {
            line: line_no,
            why: why.to_owned(),
        };
        let line = line.trim_end_matches('\r').trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line
            .split(',')
            .map(|f| f.trim().trim_matches('"'))
            .collect();
        if fields.len() != 2 {
            return Err(bad("expected two fields, `id,key`"));
        }
        if line_no == 1 && fields[0].eq_ignore_ascii_case("id") {
            continue;
        }
        let index: u64 = fields[0]
            .parse()
            .map_err(|_| bad("`id` is not a non-negative integer"))?;
        let index = check_index(index).map_err(|e| bad(&e.to_string()))?;
        let raw = decode_b64(fields[1]).map_err(|_| bad("`key` is not base64"))?;
        let wrapped: [u8; KEY_LEN] = raw
            .try_into()
            .map_err(|_| bad("`key` is not 32 bytes (AES-ECB of a 256-bit key)"))?;
        if !seen.insert(index) {
            return Err(bad(&format!("id {index} appears twice")));
        }
        rows.push(ExportRow { index, wrapped });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_is_ecb_of_the_id_hash_block_by_block() {
        let key = [7u8; 32];
        let d = derive(&key, "1234567890");
        let h = Sha256::digest(b"1234567890");
        let c = Aes256::new((&key).into());
        let mut b0 = aes::Block::clone_from_slice(&h[..16]);
        let mut b1 = aes::Block::clone_from_slice(&h[16..]);
        c.encrypt_block(&mut b0);
        c.encrypt_block(&mut b1);
        assert_eq!(&d[..16], &b0[..]);
        assert_eq!(&d[16..], &b1[..]);
        assert_ne!(*derive(&key, "1234567891"), *d);
    }

    #[test]
    fn attribute_layout_and_round_trip() {
        let d = derive(&[1u8; 32], "id");
        let a = encrypt_attribute_with(&d, 513, &[2; 12], &[3; 32], b"value").unwrap();
        assert_eq!(a.len(), OVERHEAD + 5);
        assert_eq!(&a[..4], &[0, 0, 2, 1]);
        assert_eq!(&a[4..16], &[2; 12]);
        assert_eq!(&a[16..48], &[3; 32]);
        assert_eq!(attribute_index(&a).unwrap(), 513);
        assert_eq!(&decrypt_attribute(&d, &a).unwrap()[..], b"value");
        let wrong = derive(&[1u8; 32], "other");
        assert_eq!(decrypt_attribute(&wrong, &a), Err(ZkError::Integrity));
        for i in 4..a.len() {
            let mut t = a.clone();
            t[i] ^= 1;
            assert_eq!(
                decrypt_attribute(&d, &t),
                Err(ZkError::Integrity),
                "byte {i}"
            );
        }
        assert_eq!(
            decrypt_attribute(&d, &a[..OVERHEAD - 1]),
            Err(ZkError::ShortAttribute(OVERHEAD - 1))
        );
    }

    #[test]
    fn share_segments_round_trip_and_bad_ones_are_named() {
        let t = [9u8; 32];
        let s = format!(
            "{}.{}",
            share_segment(&t, &[1; 256]),
            share_segment(&[8; 32], &[2; 256])
        );
        let p = parse_share(&s).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].thumbprint, t);
        assert_eq!(p[1].wrapped, vec![2; 256]);
        assert_eq!(parse_share(" "), Err(ZkError::EmptyShare));
        let bad = format!("{}.AAAA", share_segment(&t, &[1; 256]));
        assert_eq!(parse_share(&bad), Err(ZkError::BadSegment(2)));
        assert_eq!(parse_share("!!"), Err(ZkError::BadSegment(1)));
    }

    #[test]
    fn export_lines_parse_and_errors_carry_line_numbers() {
        use base64::Engine as _;
        let k = base64::engine::general_purpose::STANDARD.encode([5u8; 32]);
        let text = format!("id,key\r\n0,{k}\n\n\"7\",\"{k}\"\n");
        let rows = parse_export(&text).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].index, 7);
        assert_eq!(rows[0].wrapped, [5u8; 32]);
        let e = parse_export(&format!("1,{k}\n2,AAAA\n")).unwrap_err();
        assert!(matches!(e, ZkError::ExportLine { line: 2, .. }), "{e}");
        let e = parse_export(&format!("1,{k}\n1,{k}\n")).unwrap_err();
        assert!(matches!(e, ZkError::ExportLine { line: 2, .. }), "{e}");
        let e = parse_export(&format!("x,{k}\n")).unwrap_err();
        assert!(matches!(e, ZkError::ExportLine { line: 1, .. }), "{e}");
        let e = parse_export(&format!("-1,{k}\n")).unwrap_err();
        assert!(matches!(e, ZkError::ExportLine { line: 1, .. }), "{e}");
        let e = parse_export(&format!("3000000000,{k}\n")).unwrap_err();
        assert!(matches!(e, ZkError::ExportLine { line: 1, .. }), "{e}");
    }

    #[test]
    fn ids_are_bounded() {
        assert_eq!(check_id(""), Err(ZkError::BadId));
        assert!(check_id(&"1".repeat(MAX_ID_LEN)).is_ok());
        assert_eq!(check_id(&"1".repeat(MAX_ID_LEN + 1)), Err(ZkError::BadId));
    }
}
