//! idOS's encryption (`reference/idos.md`): `nacl.box` = X25519 + XSalsa20-Poly1305 (libsodium
//! `crypto_box_easy`, RustCrypto `crypto_box`) with `content = nonce(24) ‖ tag(16) ‖ ciphertext`
//! and the (ephemeral) encryptor public key carried beside it; the password-derived X25519 key
//! (NFKC, UTF-8, scrypt N=16384 r=8 p=1, 32 bytes); SHA-256 content hashes as lowercase hex.
//!
//! Pure functions, no I/O. Errors never carry key bytes or plaintext.

use crypto_box::aead::{AeadCore, AeadInPlace, OsRng};
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use curve25519_dalek::montgomery::MontgomeryPoint;
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

/// Length of an X25519 key (public or secret).
pub const KEY_LEN: usize = 32;
/// Length of the nonce at the start of the content.
pub const NONCE_LEN: usize = 24;
/// Length of the Poly1305 tag after the nonce.
pub const TAG_LEN: usize = 16;
/// Shortest content: nonce and tag of an empty message.
pub const MIN_CONTENT: usize = NONCE_LEN + TAG_LEN;

/// scrypt cost of idOS's password-derived keys: log2(N) = 14, r = 8, p = 1.
const SCRYPT_LOG_N: u8 = 14;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;

/// What went wrong, without secrets.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdosError {
    /// Malformed input (length, encoding, salt); the message says what.
    #[error("{0}")]
    BadInput(String),
    /// The box does not open: wrong key, wrong encryptor key, tampered content.
    #[error("box authentication failed")]
    Integrity,
    /// A library failure that should not happen.
    #[error("{0}")]
    Internal(String),
}

/// A public key as 32 bytes, or `BadInput` naming `what`.
pub fn public_key(bytes: &[u8], what: &str) -> Result<[u8; KEY_LEN], IdosError> {
    <[u8; KEY_LEN]>::try_from(bytes).map_err(|_| {
        IdosError::BadInput(format!(
            "{what} is a 32-byte X25519 public key; got {} bytes",
            bytes.len()
        ))
    })
}

/// True when `pk` is a point of small order (on the curve or its twist): the shared secret with
/// it is all zeros whatever the secret key, so a box to or from it protects nothing. libsodium
/// refuses these; so does the daemon. 8·P is computed with a 4-step ladder.
pub fn is_low_order(pk: &[u8; KEY_LEN]) -> bool {
    let eight = [true, false, false, false].into_iter();
    MontgomeryPoint(*pk).mul_bits_be(eight).to_bytes() == [0u8; KEY_LEN]
}

/// The parts of idOS content: `nonce(24) ‖ box`, `box = tag(16) ‖ ciphertext`.
#[derive(Debug)]
pub struct Content<'a> {
    /// The nonce.
    pub nonce: [u8; NONCE_LEN],
    /// `tag ‖ ciphertext`.
    pub boxed: &'a [u8],
}

/// Splits content; `BadInput` when it is shorter than nonce + tag.
pub fn parse_content(content: &[u8]) -> Result<Content<'_>, IdosError> {
    if content.len() < MIN_CONTENT {
        return Err(IdosError::BadInput(format!(
            "content is nonce(24) ‖ tag(16) ‖ ciphertext: at least {MIN_CONTENT} bytes; got {}",
            content.len()
        )));
    }
    let (nonce, boxed) = content.split_at(NONCE_LEN);
    let nonce = <[u8; NONCE_LEN]>::try_from(nonce)
        .map_err(|_| IdosError::Internal("nonce split".into()))?;
    Ok(Content { nonce, boxed })
}

/// A sealed message: the content and the ephemeral encryptor public key.
#[derive(Debug)]
pub struct Sealed {
    /// `nonce(24) ‖ tag(16) ‖ ciphertext`.
    pub content: Vec<u8>,
    /// The ephemeral public key, stored beside the content as `encryptor_public_key`.
    pub encryptor_public_key: [u8; KEY_LEN],
}

/// A recipient public key, checked once (not a point of small order) however many boxes are
/// then sealed to it: a batch re-encryption to one grantee checks its key once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recipient([u8; KEY_LEN]);

impl Recipient {
    /// `BadInput` for a point of small order ([`is_low_order`]).
    pub fn new(pk: [u8; KEY_LEN]) -> Result<Recipient, IdosError> {
        if is_low_order(&pk) {
            return Err(IdosError::BadInput(
                "recipient public key is a low-order point".into(),
            ));
        }
        Ok(Recipient(pk))
    }

    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// Seals `plaintext` to `to` with a fresh ephemeral key pair and a fresh random nonce (idOS's
/// rule: never a long-term sender key). The ephemeral secret is dropped (zeroized) on return.
pub fn seal(to: &Recipient, plaintext: &[u8]) -> Result<Sealed, IdosError> {
    let eph = SecretKey::generate(&mut OsRng);
    let epk = eph.public_key().to_bytes();
    let b = SalsaBox::new(&PublicKey::from(to.0), &eph);
    let nonce = SalsaBox::generate_nonce(&mut OsRng);
    let mut content = Vec::with_capacity(MIN_CONTENT + plaintext.len());
    content.extend_from_slice(&nonce);
    content.extend_from_slice(&[0u8; TAG_LEN]);
    content.extend_from_slice(plaintext);
    let tag = b
        .encrypt_in_place_detached(&nonce, &[], &mut content[MIN_CONTENT..])
        .map_err(|_| IdosError::Internal("XSalsa20-Poly1305 encryption failed".into()))?;
    content[NONCE_LEN..MIN_CONTENT].copy_from_slice(&tag);
    Ok(Sealed {
        content,
        encryptor_public_key: epk,
    })
}

/// Opens a box with a recipient secret key (32 bytes) and the encryptor's public key.
pub fn open(
    secret: &[u8],
    encryptor: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    boxed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, IdosError> {
    let sk = SecretKey::from_slice(secret)
        .map_err(|_| IdosError::Internal("an x25519 secret is 32 bytes".into()))?;
    if boxed.len() < TAG_LEN {
        return Err(IdosError::BadInput("box shorter than its tag".into()));
    }
    if is_low_order(encryptor) {
        return Err(IdosError::Integrity);
    }
    let b = SalsaBox::new(&PublicKey::from(*encryptor), &sk);
    let (tag, ct) = boxed.split_at(TAG_LEN);
    let mut out = Zeroizing::new(ct.to_vec());
    b.decrypt_in_place_detached(nonce.into(), &[], &mut out, tag.into())
        .map_err(|_| IdosError::Integrity)?;
    Ok(out)
}

/// The X25519 public key of a 32-byte secret.
pub fn x25519_public(secret: &[u8]) -> Result<[u8; KEY_LEN], IdosError> {
    let sk = SecretKey::from_slice(secret)
        .map_err(|_| IdosError::Internal("an x25519 secret is 32 bytes".into()))?;
    Ok(sk.public_key().to_bytes())
}

/// Checks an idOS salt: a user id, i.e. a UUID in its hyphenated text form (8-4-4-4-12 hex
/// digits; any version). It is used as given, UTF-8.
pub fn check_salt(salt: &str) -> Result<(), IdosError> {
    if salt.len() == 36 && uuid::Uuid::try_parse(salt).is_ok() {
        Ok(())
    } else {
        Err(IdosError::BadInput(
            "the salt is the user id: a UUID such as 9f51b3b2-4cbe-4c2b-8ea3-0b0c1b2f1a11".into(),
        ))
    }
}

/// idOS's password-derived X25519 secret: scrypt(NFKC(password) as UTF-8, salt as UTF-8,
/// N=16384, r=8, p=1, 32 bytes). The password must not be empty; the salt must pass
/// [`check_salt`].
pub fn derive_secret(password: &str, salt: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, IdosError> {
    if password.is_empty() {
        return Err(IdosError::BadInput("the password is empty".into()));
    }
    check_salt(salt)?;
    let normalized: Zeroizing<String> = Zeroizing::new(password.nfkc().collect());
    let params = scrypt::Params::new(SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P, KEY_LEN)
        .map_err(|e| IdosError::Internal(format!("scrypt parameters: {e}")))?;
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    scrypt::scrypt(
        normalized.as_bytes(),
        salt.as_bytes(),
        &params,
        &mut out[..],
    )
    .map_err(|e| IdosError::Internal(format!("scrypt: {e}")))?;
    Ok(out)
}

/// SHA-256 of a plaintext as lowercase hex: an access grant's `content_hash`.
pub fn content_hash(plaintext: &[u8]) -> String {
    hex::encode(content_digest(plaintext))
}

/// The plaintext's SHA-256, raw: what `content_hash` encodes.
pub fn content_digest(plaintext: &[u8]) -> [u8; 32] {
    Sha256::digest(plaintext).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    /// The two vectors of reference/idos.md and the public key of the first.
    #[test]
    fn scrypt_vectors_of_the_reference() {
        let s = derive_secret(
            "correct horse battery staple",
            "9f51b3b2-4cbe-4c2b-8ea3-0b0c1b2f1a11",
        )
        .unwrap();
        assert_eq!(
            B64.encode(&s[..]),
            "8iTwhZxrtQGKVV5OMthD5DxFc8c6B8h9MnU2Sh6JTTM="
        );
        assert_eq!(
            B64.encode(x25519_public(&s[..]).unwrap()),
            "Y+kNWSnoYhlBrsDQ/01FTfoHQ5CeXyjDEHbQmNDGOjw="
        );
        let s = derive_secret(
            "test-password-123!@#",
            "550e8400-e29b-41d4-a716-446655440000",
        )
        .unwrap();
        assert_eq!(
            hex::encode(&s[..]),
            "9de171c0abc1cb2e4ff4078605d9edaa7175cb66419b6151fa65c4ab774ff3b6"
        );
    }

    #[test]
    fn nfkc_makes_equivalent_passwords_one_key() {
        let salt = "550e8400-e29b-41d4-a716-446655440000";
        // U+FB01 LATIN SMALL LIGATURE FI is "fi" under NFKC; "é" composed vs decomposed.
        assert_eq!(
            *derive_secret("\u{FB01}x\u{0065}\u{0301}", salt).unwrap(),
            *derive_secret("fix\u{00E9}", salt).unwrap()
        );
    }

    #[test]
    fn bad_derivation_inputs() {
        let uuid = "550e8400-e29b-41d4-a716-446655440000";
        assert!(matches!(
            derive_secret("", uuid),
            Err(IdosError::BadInput(_))
        ));
        for salt in [
            "",
            "user-1",
            "550e8400e29b41d4a716446655440000",
            "{550e8400-e29b-41d4-a716-446655440000}",
            "550e8400-e29b-41d4-a716-44665544000g",
        ] {
            assert!(
                matches!(derive_secret("pw", salt), Err(IdosError::BadInput(_))),
                "{salt}"
            );
        }
    }

    #[test]
    fn seal_open_round_trip_fresh_keys_and_failures() {
        let sk = SecretKey::generate(&mut OsRng);
        let pk = Recipient::new(sk.public_key().to_bytes()).unwrap();
        let a = seal(&pk, b"credential").unwrap();
        let b = seal(&pk, b"credential").unwrap();
        assert_ne!(
            a.encryptor_public_key, b.encryptor_public_key,
            "fresh ephemeral key"
        );
        assert_ne!(
            a.content[..NONCE_LEN],
            b.content[..NONCE_LEN],
            "fresh nonce"
        );
        assert_eq!(a.content.len(), MIN_CONTENT + 10);
        let c = parse_content(&a.content).unwrap();
        let pt = open(&sk.to_bytes(), &a.encryptor_public_key, &c.nonce, c.boxed).unwrap();
        assert_eq!(&pt[..], b"credential");
        // Tampered, wrong encryptor key, wrong recipient.
        let mut t = a.content.clone();
        t[MIN_CONTENT] ^= 1;
        let c = parse_content(&t).unwrap();
        assert_eq!(
            open(&sk.to_bytes(), &a.encryptor_public_key, &c.nonce, c.boxed).unwrap_err(),
            IdosError::Integrity
        );
        let c = parse_content(&a.content).unwrap();
        assert_eq!(
            open(&sk.to_bytes(), &b.encryptor_public_key, &c.nonce, c.boxed).unwrap_err(),
            IdosError::Integrity
        );
        let other = SecretKey::generate(&mut OsRng);
        assert_eq!(
            open(
                &other.to_bytes(),
                &a.encryptor_public_key,
                &c.nonce,
                c.boxed
            )
            .unwrap_err(),
            IdosError::Integrity
        );
        assert!(matches!(
            parse_content(&[0u8; 39]),
            Err(IdosError::BadInput(_))
        ));
    }

    #[test]
    fn low_order_points_are_refused() {
        let mut p_minus_1 = [0xffu8; 32];
        p_minus_1[0] = 0xec;
        p_minus_1[31] = 0x7f;
        let mut one = [0u8; 32];
        one[0] = 1;
        for lo in [[0u8; 32], one, p_minus_1] {
            assert!(is_low_order(&lo));
            assert!(matches!(Recipient::new(lo), Err(IdosError::BadInput(_))));
        }
        let sk = SecretKey::generate(&mut OsRng);
        assert!(!is_low_order(&sk.public_key().to_bytes()));
    }
}
