//! MOSIP keymanager hybrid envelope, versioned form `VER_R2`.
//!
//! ```text
//! "VER_R2"(6) ‖ thumbprint(32) ‖ RSA-OAEP(aes_key)(256) ‖ "#KEY_SPLITTER#"(14) ‖ aad(32) ‖ ciphertext ‖ tag(16)
//! ```
//!
//! * `aes_key`: a fresh random AES-256 key per message;
//! * RSA-OAEP with SHA-256, MGF1-SHA-256 and an empty label (256 bytes for RSA-2048);
//! * `aad`: 32 random bytes; the GCM nonce is `aad[..12]` and all 32 bytes are the GCM AAD;
//! * AES-256-GCM with a 128-bit tag appended to the ciphertext.
//!
//! `reference/mosip.md` describes no unversioned keymanager form, so only `VER_R2` is accepted.
//! (The registration client's on-disk packet layout, which starts with the nonce, is a different
//! format and is not handled here.)
//!
//! On the wire MOSIP base64url-encodes the envelope without padding; see [`super::b64`].

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use rand::rngs::OsRng;
use rand::RngCore;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPublicKey};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::thumbprint::thumbprint;

/// Version prefix of the envelope.
pub const VERSION: &[u8; 6] = b"VER_R2";
/// Separator after the wrapped key.
pub const KEY_SPLITTER: &[u8; 14] = b"#KEY_SPLITTER#";
/// Length of the thumbprint.
pub const THUMBPRINT_LEN: usize = 32;
/// Length of the RSA-OAEP-wrapped AES key (RSA-2048).
pub const WRAPPED_KEY_LEN: usize = 256;
/// Length of the random AAD (its first [`NONCE_LEN`] bytes are the GCM nonce).
pub const AAD_LEN: usize = 32;
/// Length of the GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of the GCM tag.
pub const TAG_LEN: usize = 16;
/// Length of the AES-256 data key.
pub const DATA_KEY_LEN: usize = 32;

/// Offset of the thumbprint.
const THUMBPRINT_AT: usize = VERSION.len();
/// Offset of the wrapped key.
const WRAPPED_AT: usize = THUMBPRINT_AT + THUMBPRINT_LEN;
/// Offset of the splitter.
const SPLITTER_AT: usize = WRAPPED_AT + WRAPPED_KEY_LEN;
/// Offset of the AAD.
const AAD_AT: usize = SPLITTER_AT + KEY_SPLITTER.len();
/// Offset of the ciphertext.
const BODY_AT: usize = AAD_AT + AAD_LEN;
/// Shortest valid envelope (empty plaintext).
pub const MIN_LEN: usize = BODY_AT + TAG_LEN;

/// Why an envelope could not be parsed, opened or built. Never carries key bytes or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Fewer bytes than the version prefix.
    #[error("envelope too short: {len} bytes")]
    TooShort {
        /// Length of the input.
        len: usize,
    },
    /// The input does not start with `VER_R2`.
    #[error("envelope does not start with the VER_R2 version prefix")]
    BadVersion,
    /// No `#KEY_SPLITTER#` after the thumbprint.
    #[error("envelope has no #KEY_SPLITTER#")]
    MissingSplitter,
    /// `#KEY_SPLITTER#` found inside the version/thumbprint header (header truncated).
    #[error("#KEY_SPLITTER# misplaced at offset {offset}, inside the version/thumbprint header")]
    MisplacedSplitter {
        /// Offset of the splitter in the input.
        offset: usize,
    },
    /// The wrapped key (between thumbprint and splitter) is not 256 bytes.
    #[error("wrapped key is {len} bytes, expected 256")]
    WrappedKeyLength {
        /// Length found.
        len: usize,
    },
    /// Fewer than 32 AAD bytes after the splitter.
    #[error("envelope AAD truncated: {len} bytes after the splitter, expected at least 32")]
    AadTruncated {
        /// Bytes found after the splitter.
        len: usize,
    },
    /// The body after the AAD is shorter than a GCM tag.
    #[error("envelope body is {len} bytes, shorter than the 16-byte GCM tag")]
    BodyTooShort {
        /// Length of the body.
        len: usize,
    },
    /// The data key is not 32 bytes.
    #[error("data key is {len} bytes, expected 32")]
    DataKeyLength {
        /// Length of the key given.
        len: usize,
    },
    /// GCM authentication failed: wrong key or tampered envelope.
    #[error("envelope integrity check failed (wrong key or tampered data)")]
    Integrity,
    /// GCM encryption refused the input (plaintext too long).
    #[error("envelope encryption failed: plaintext too long")]
    Encrypt,
    /// The recipient public key is not a valid DER SubjectPublicKeyInfo for RSA.
    #[error("recipient public key is not an RSA SubjectPublicKeyInfo")]
    BadPublicKey,
    /// The recipient RSA key is not 2048 bits, so the wrapped key would not be 256 bytes.
    #[error("recipient RSA key is {bits} bits, expected 2048")]
    UnsupportedKeySize {
        /// Modulus size in bits.
        bits: usize,
    },
    /// RSA-OAEP encryption of the data key failed.
    #[error("RSA-OAEP wrapping of the data key failed")]
    Wrap,
}

/// The parts of a `VER_R2` envelope, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedEnvelope<'a> {
    /// SHA-256 thumbprint of the recipient key (certificate or SPKI).
    pub thumbprint: &'a [u8; THUMBPRINT_LEN],
    /// RSA-OAEP-SHA256 encryption of the AES-256 data key (256 bytes).
    pub wrapped_key: &'a [u8],
    /// Random AAD; its first 12 bytes are the GCM nonce.
    pub aad: &'a [u8; AAD_LEN],
    /// GCM ciphertext followed by the 16-byte tag.
    pub ciphertext_and_tag: &'a [u8],
}

impl ParsedEnvelope<'_> {
    /// The GCM nonce: the first 12 bytes of the AAD.
    pub fn nonce(&self) -> &[u8] {
        &self.aad[..NONCE_LEN]
    }
}

/// Finds the first occurrence of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits a `VER_R2` envelope into its parts, checking every length.
pub fn parse(bytes: &[u8]) -> Result<ParsedEnvelope<'_>, EnvelopeError> {
    let Some((version, rest)) = bytes.split_first_chunk::<6>() else {
        return Err(EnvelopeError::TooShort { len: bytes.len() });
    };
    if version != VERSION {
        return Err(EnvelopeError::BadVersion);
    }
    // The splitter where it belongs; otherwise report where it is (or that it is absent).
    let at_place = bytes.get(SPLITTER_AT..AAD_AT) == Some(&KEY_SPLITTER[..]);
    if !at_place {
        return Err(match find(rest, KEY_SPLITTER) {
            None => EnvelopeError::MissingSplitter,
            Some(pos) => {
                let offset = THUMBPRINT_AT + pos;
                if offset < WRAPPED_AT {
                    EnvelopeError::MisplacedSplitter { offset }
                } else {
                    EnvelopeError::WrappedKeyLength {
                        len: offset - WRAPPED_AT,
                    }
                }
            }
        });
    }
    let Some((thumb, rest)) = rest.split_first_chunk::<THUMBPRINT_LEN>() else {
        return Err(EnvelopeError::TooShort { len: bytes.len() });
    };
    let Some((wrapped_key, rest)) = rest.split_at_checked(WRAPPED_KEY_LEN) else {
        return Err(EnvelopeError::TooShort { len: bytes.len() });
    };
    let Some(rest) = rest.strip_prefix(&KEY_SPLITTER[..]) else {
        return Err(EnvelopeError::MissingSplitter);
    };
    let Some((aad, body)) = rest.split_first_chunk::<AAD_LEN>() else {
        return Err(EnvelopeError::AadTruncated { len: rest.len() });
    };
    if body.len() < TAG_LEN {
        return Err(EnvelopeError::BodyTooShort { len: body.len() });
    }
    Ok(ParsedEnvelope {
        thumbprint: thumb,
        wrapped_key,
        aad,
        ciphertext_and_tag: body,
    })
}

/// Decrypts the body of a parsed envelope with the (already unwrapped) AES-256 data key.
pub fn open_with(
    parsed: &ParsedEnvelope<'_>,
    data_key: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    if data_key.len() != DATA_KEY_LEN {
        return Err(EnvelopeError::DataKeyLength {
            len: data_key.len(),
        });
    }
    let cipher = Aes256Gcm::new_from_slice(data_key).map_err(|_| EnvelopeError::DataKeyLength {
        len: data_key.len(),
    })?;
    let payload = Payload {
        msg: parsed.ciphertext_and_tag,
        aad: &parsed.aad[..],
    };
    cipher
        .decrypt(Nonce::from_slice(parsed.nonce()), payload)
        .map(Zeroizing::new)
        .map_err(|_| EnvelopeError::Integrity)
}

/// Assembles the envelope bytes from its parts (lengths already checked by the caller).
fn assemble(thumb: &[u8; 32], wrapped_key: &[u8], aad: &[u8; AAD_LEN], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BODY_AT + body.len());
    out.extend_from_slice(VERSION);
    out.extend_from_slice(thumb);
    out.extend_from_slice(wrapped_key);
    out.extend_from_slice(KEY_SPLITTER);
    out.extend_from_slice(aad);
    out.extend_from_slice(body);
    out
}

/// Seals `plaintext` into a `VER_R2` envelope for the key with `thumbprint`.
///
/// A fresh AES-256 data key and 32-byte AAD are drawn from the OS RNG. `wrap` must return the
/// RSA-OAEP-SHA256 (MGF1-SHA-256, empty label) encryption of the data key under the recipient's
/// RSA-2048 public key; a result that is not 256 bytes is refused with
/// [`EnvelopeError::WrappedKeyLength`]. The caller's error type absorbs [`EnvelopeError`].
pub fn seal_with<E, F>(plaintext: &[u8], thumbprint: &[u8; 32], wrap: F) -> Result<Vec<u8>, E>
where
    E: From<EnvelopeError>,
    F: FnOnce(&[u8; DATA_KEY_LEN]) -> Result<Vec<u8>, E>,
{
    let mut data_key = Zeroizing::new([0u8; DATA_KEY_LEN]);
    OsRng.fill_bytes(&mut data_key[..]);
    let mut aad = [0u8; AAD_LEN];
    OsRng.fill_bytes(&mut aad);

    let wrapped_key = wrap(&data_key)?;
    if wrapped_key.len() != WRAPPED_KEY_LEN {
        return Err(EnvelopeError::WrappedKeyLength {
            len: wrapped_key.len(),
        }
        .into());
    }

    let cipher = Aes256Gcm::new_from_slice(&data_key[..])
        .map_err(|_| EnvelopeError::DataKeyLength { len: DATA_KEY_LEN })?;
    let payload = Payload {
        msg: plaintext,
        aad: &aad[..],
    };
    let body = cipher
        .encrypt(Nonce::from_slice(&aad[..NONCE_LEN]), payload)
        .map_err(|_| EnvelopeError::Encrypt)?;
    Ok(assemble(thumbprint, &wrapped_key, &aad, &body))
}

/// Seals `plaintext` to an RSA-2048 public key given as DER SubjectPublicKeyInfo, with the
/// thumbprint SHA-256(`spki_der`) and RSA-OAEP-SHA256 (MGF1-SHA-256, empty label) key wrapping.
pub fn seal_to_public_key(plaintext: &[u8], spki_der: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let key =
        RsaPublicKey::from_public_key_der(spki_der).map_err(|_| EnvelopeError::BadPublicKey)?;
    if key.size() != WRAPPED_KEY_LEN {
        return Err(EnvelopeError::UnsupportedKeySize {
            bits: key.n().bits(),
        });
    }
    let thumb = thumbprint(spki_der);
    seal_with(plaintext, &thumb, |data_key| {
        key.encrypt(&mut OsRng, Oaep::new::<Sha256>(), &data_key[..])
            .map_err(|_| EnvelopeError::Wrap)
    })
}

/// Re-targets an envelope to another key without touching the data: the thumbprint and wrapped key
/// are replaced, the AAD, ciphertext and tag are copied unchanged.
///
/// The input is parsed strictly and `new_wrapped_key` must be 256 bytes.
pub fn rewrap(
    bytes: &[u8],
    new_thumbprint: &[u8; 32],
    new_wrapped_key: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let parsed = parse(bytes)?;
    if new_wrapped_key.len() != WRAPPED_KEY_LEN {
        return Err(EnvelopeError::WrappedKeyLength {
            len: new_wrapped_key.len(),
        });
    }
    Ok(assemble(
        new_thumbprint,
        new_wrapped_key,
        parsed.aad,
        parsed.ciphertext_and_tag,
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
    use rsa::traits::PrivateKeyParts;
    use rsa::RsaPrivateKey;
    use std::sync::OnceLock;

    /// A fixed RSA-2048 test key (generated with `openssl genpkey`; test use only), so unit tests
    /// do not pay for RSA key generation in debug builds.
    pub(crate) fn test_key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| {
            RsaPrivateKey::from_pkcs8_pem(include_str!("testdata/test-rsa2048.pem"))
                .expect("test key parses")
        })
    }

    fn test_spki() -> Vec<u8> {
        test_key()
            .to_public_key()
            .to_public_key_der()
            .expect("spki")
            .into_vec()
    }

    fn open_with_test_key(env: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let parsed = parse(env)?;
        let key = Zeroizing::new(
            test_key()
                .decrypt(Oaep::new::<Sha256>(), parsed.wrapped_key)
                .map_err(|_| EnvelopeError::Wrap)?,
        );
        open_with(&parsed, &key)
    }

    /// A syntactically valid envelope with a chosen body, wrapped key and key (no RSA involved).
    fn fake_envelope(body_len: usize) -> Vec<u8> {
        assemble(&[7u8; 32], &[9u8; 256], &[5u8; 32], &vec![1u8; body_len])
    }

    #[test]
    fn round_trip_with_rsa_key() {
        let spki = test_spki();
        for plaintext in [&b""[..], b"x", &[0xa5u8; 5000]] {
            let env = seal_to_public_key(plaintext, &spki).expect("seal");
            assert_eq!(env.len(), MIN_LEN + plaintext.len());
            assert_eq!(&env[..6], b"VER_R2");
            assert_eq!(&env[294..308], b"#KEY_SPLITTER#");
            let parsed = parse(&env).expect("parse");
            assert_eq!(parsed.thumbprint, &thumbprint(&spki));
            assert_eq!(parsed.wrapped_key.len(), 256);
            assert_eq!(parsed.nonce(), &parsed.aad[..12]);
            let opened = open_with_test_key(&env).expect("open");
            assert_eq!(&opened[..], plaintext);
        }
    }

    #[test]
    fn fresh_key_and_aad_per_message() {
        let thumb = [1u8; 32];
        let mut keys = Vec::new();
        let mut envs = Vec::new();
        for _ in 0..2 {
            let env = seal_with::<EnvelopeError, _>(b"same", &thumb, |k| {
                keys.push(*k);
                Ok(vec![0u8; 256])
            })
            .expect("seal");
            envs.push(env);
        }
        assert_ne!(keys[0], keys[1]);
        let (a, b) = (parse(&envs[0]).expect("a"), parse(&envs[1]).expect("b"));
        assert_ne!(a.aad, b.aad);
        // The data key handed to the closure opens the envelope.
        assert_eq!(&open_with(&a, &keys[0]).expect("open")[..], b"same");
    }

    #[test]
    fn seal_with_rejects_wrong_wrapped_length_and_passes_errors() {
        let r = seal_with::<EnvelopeError, _>(b"x", &[0u8; 32], |_| Ok(vec![0u8; 255]));
        assert_eq!(r, Err(EnvelopeError::WrappedKeyLength { len: 255 }));
        let r = seal_with::<EnvelopeError, _>(b"x", &[0u8; 32], |_| Err(EnvelopeError::Wrap));
        assert_eq!(r, Err(EnvelopeError::Wrap));
    }

    #[test]
    fn seal_to_public_key_rejects_bad_keys() {
        assert_eq!(
            seal_to_public_key(b"x", b"not der"),
            Err(EnvelopeError::BadPublicKey)
        );
        // A 1024-bit key (built from the test key's prime, not generated) is refused.
        let small = RsaPublicKey::new(test_key().primes()[0].clone() * 3u32, 65537u32.into())
            .expect("small key");
        let der = small.to_public_key_der().expect("der").into_vec();
        assert!(matches!(
            seal_to_public_key(b"x", &der),
            Err(EnvelopeError::UnsupportedKeySize { .. })
        ));
    }

    #[test]
    fn tag_tamper_is_integrity_error() {
        let thumb = [3u8; 32];
        let mut key = [0u8; 32];
        let env = seal_with::<EnvelopeError, _>(b"secret data", &thumb, |k| {
            key = *k;
            Ok(vec![0u8; 256])
        })
        .expect("seal");
        // Flip a bit in the tag, the ciphertext, and the AAD in turn.
        for idx in [env.len() - 1, BODY_AT, AAD_AT, AAD_AT + 31] {
            let mut bad = env.clone();
            bad[idx] ^= 0x01;
            let parsed = parse(&bad).expect("still parses");
            assert_eq!(
                open_with(&parsed, &key),
                Err(EnvelopeError::Integrity),
                "{idx}"
            );
        }
        // Wrong key.
        let parsed = parse(&env).expect("parse");
        assert_eq!(
            open_with(&parsed, &[0u8; 32]),
            Err(EnvelopeError::Integrity)
        );
        // Truncated tag (still ≥ 16 bytes of body).
        let short = &env[..env.len() - 1];
        let parsed = parse(short).expect("parse");
        assert_eq!(open_with(&parsed, &key), Err(EnvelopeError::Integrity));
    }

    #[test]
    fn data_key_length_checked() {
        let env = fake_envelope(16);
        let parsed = parse(&env).expect("parse");
        assert_eq!(
            open_with(&parsed, &[0u8; 16]),
            Err(EnvelopeError::DataKeyLength { len: 16 })
        );
        assert_eq!(
            open_with(&parsed, &[]),
            Err(EnvelopeError::DataKeyLength { len: 0 })
        );
    }

    #[test]
    fn parse_minimal_and_offsets() {
        let env = fake_envelope(16);
        assert_eq!(env.len(), MIN_LEN);
        assert_eq!(MIN_LEN, 6 + 32 + 256 + 14 + 32 + 16);
        let p = parse(&env).expect("parse");
        assert_eq!(p.thumbprint, &[7u8; 32]);
        assert_eq!(p.wrapped_key, &[9u8; 256][..]);
        assert_eq!(p.aad, &[5u8; 32]);
        assert_eq!(p.ciphertext_and_tag, &[1u8; 16][..]);
    }

    #[test]
    fn parse_errors() {
        let good = fake_envelope(20);
        use EnvelopeError as E;

        assert_eq!(parse(b""), Err(E::TooShort { len: 0 }));
        assert_eq!(parse(b"VER_R"), Err(E::TooShort { len: 5 }));
        assert_eq!(parse(b"VER_R1xxxxxxx"), Err(E::BadVersion));
        let mut bad = good.clone();
        bad[0] = b'v';
        assert_eq!(parse(&bad), Err(E::BadVersion));
        // Unversioned input (legacy-looking) is not accepted.
        assert_eq!(parse(&good[6..]), Err(E::BadVersion));

        // Version only, or cut before the splitter.
        assert_eq!(parse(b"VER_R2"), Err(E::MissingSplitter));
        assert_eq!(parse(&good[..SPLITTER_AT + 5]), Err(E::MissingSplitter));
        // Splitter overwritten.
        let mut bad = good.clone();
        bad[SPLITTER_AT + 3] = b'x';
        assert_eq!(parse(&bad), Err(E::MissingSplitter));

        // Wrapped key one byte short / long.
        let mut short = good.clone();
        short.remove(WRAPPED_AT);
        assert_eq!(parse(&short), Err(E::WrappedKeyLength { len: 255 }));
        let mut long = good.clone();
        long.insert(WRAPPED_AT, 0);
        assert_eq!(parse(&long), Err(E::WrappedKeyLength { len: 257 }));
        // No wrapped key at all.
        let mut none = good[..WRAPPED_AT].to_vec();
        none.extend_from_slice(&good[SPLITTER_AT..]);
        assert_eq!(parse(&none), Err(E::WrappedKeyLength { len: 0 }));

        // Splitter inside the thumbprint: header truncated.
        let mut hdr = b"VER_R2".to_vec();
        hdr.extend_from_slice(&[7u8; 10]);
        hdr.extend_from_slice(KEY_SPLITTER);
        hdr.extend_from_slice(&[0u8; 400]);
        assert_eq!(parse(&hdr), Err(E::MisplacedSplitter { offset: 16 }));

        // AAD truncated: nothing or 31 bytes after the splitter.
        assert_eq!(parse(&good[..AAD_AT]), Err(E::AadTruncated { len: 0 }));
        assert_eq!(
            parse(&good[..BODY_AT - 1]),
            Err(E::AadTruncated { len: 31 })
        );

        // Body shorter than a tag.
        assert_eq!(parse(&good[..BODY_AT]), Err(E::BodyTooShort { len: 0 }));
        assert_eq!(
            parse(&good[..MIN_LEN - 1]),
            Err(E::BodyTooShort { len: 15 })
        );
        assert!(parse(&good[..MIN_LEN]).is_ok());
    }

    #[test]
    fn splitter_bytes_inside_wrapped_key_are_not_confused() {
        // A wrapped key that happens to contain the splitter text still parses by position.
        let mut wrapped = [0u8; 256];
        wrapped[10..24].copy_from_slice(KEY_SPLITTER);
        let env = assemble(&[0u8; 32], &wrapped, &[0u8; 32], &[0u8; 16]);
        let p = parse(&env).expect("parse");
        assert_eq!(p.wrapped_key, &wrapped[..]);
    }

    #[test]
    fn rewrap_keeps_body() {
        let spki = test_spki();
        let env = seal_to_public_key(b"payload to re-target", &spki).expect("seal");
        let old = parse(&env).expect("parse");
        let data_key = Zeroizing::new(
            test_key()
                .decrypt(Oaep::new::<Sha256>(), old.wrapped_key)
                .expect("unwrap"),
        );
        // Re-wrap the same data key (for the same key here) under a different thumbprint.
        let new_wrapped = test_key()
            .to_public_key()
            .encrypt(&mut OsRng, Oaep::new::<Sha256>(), &data_key[..])
            .expect("wrap");
        let new_thumb = [0x42u8; 32];
        let out = rewrap(&env, &new_thumb, &new_wrapped).expect("rewrap");
        assert_eq!(out.len(), env.len());
        let new = parse(&out).expect("parse");
        assert_eq!(new.thumbprint, &new_thumb);
        assert_eq!(new.wrapped_key, &new_wrapped[..]);
        assert_ne!(new.wrapped_key, old.wrapped_key);
        assert_eq!(new.aad, old.aad);
        assert_eq!(new.ciphertext_and_tag, old.ciphertext_and_tag);
        assert_eq!(&out[AAD_AT..], &env[AAD_AT..]);
        assert_eq!(
            &open_with_test_key(&out).expect("open")[..],
            b"payload to re-target"
        );

        assert_eq!(
            rewrap(&env, &new_thumb, &[0u8; 100]),
            Err(EnvelopeError::WrappedKeyLength { len: 100 })
        );
        assert_eq!(
            rewrap(b"junk", &new_thumb, &new_wrapped),
            Err(EnvelopeError::TooShort { len: 4 })
        );
    }

    #[test]
    fn base64_wire_form_round_trip() {
        use crate::format::b64::{decode_b64, encode_b64url};
        let env = fake_envelope(40);
        let wire = encode_b64url(&env);
        assert!(!wire.contains('=') && !wire.contains('+') && !wire.contains('/'));
        assert_eq!(decode_b64(&wire).expect("decode"), env);
        let std_padded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &env);
        assert_eq!(decode_b64(&std_padded).expect("decode"), env);
    }

    #[test]
    fn error_messages_hold_no_data() {
        // Display strings are fixed texts plus lengths/offsets only.
        let msgs = [
            EnvelopeError::Integrity.to_string(),
            EnvelopeError::WrappedKeyLength { len: 3 }.to_string(),
            EnvelopeError::BadPublicKey.to_string(),
        ];
        for m in msgs {
            assert!(m.len() < 100, "{m}");
        }
    }
}
