//! Constant-time EME-OAEP decoding (RFC 8017 §7.1.2, step 3).
//!
//! Used when a token can only perform raw RSA (`CKM_RSA_X_509`) — SoftHSM 2.6 lacks RSA-OAEP with
//! SHA-256 — so the padding is removed here. Every check runs over the whole block with `subtle`
//! primitives and all failures collapse into one [`OaepError`], so neither the timing nor the error
//! tells a caller where the padding was wrong (Manger's attack).

use sha1::Sha1;
use sha2::digest::{Digest, FixedOutputReset};
use sha2::Sha256;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::{Zeroize, Zeroizing};

/// Hash (and MGF1 hash) of an OAEP encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OaepHash {
    /// SHA-1 with MGF1-SHA-1 (legacy; what SoftHSM's token OAEP supports).
    Sha1,
    /// SHA-256 with MGF1-SHA-256 (MOSIP's envelope and the daemon's default).
    Sha256,
}

impl OaepHash {
    /// Output length of the hash in bytes.
    pub fn len(self) -> usize {
        match self {
            OaepHash::Sha1 => 20,
            OaepHash::Sha256 => 32,
        }
    }

    /// Always false; present for API symmetry with `len`.
    pub fn is_empty(self) -> bool {
        false
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            OaepHash::Sha1 => Sha1::digest(data).to_vec(),
            OaepHash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    /// XORs MGF1(seed, out.len()) into `out`.
    fn mgf1_xor(self, seed: &[u8], out: &mut [u8]) {
        match self {
            OaepHash::Sha1 => mgf1_xor::<Sha1>(seed, out),
            OaepHash::Sha256 => mgf1_xor::<Sha256>(seed, out),
        }
    }
}

/// The single error for every OAEP decoding failure; deliberately carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("OAEP decoding failed")]
pub struct OaepError;

fn mgf1_xor<D: Digest + FixedOutputReset>(seed: &[u8], out: &mut [u8]) {
    let mut hasher = D::new();
    let mut counter: u32 = 0;
    for chunk in out.chunks_mut(<D as Digest>::output_size()) {
        Digest::update(&mut hasher, seed);
        Digest::update(&mut hasher, counter.to_be_bytes());
        let mut block = hasher.finalize_reset();
        for (o, m) in chunk.iter_mut().zip(block.iter()) {
            *o ^= *m;
        }
        block.as_mut_slice().zeroize();
        counter = counter.wrapping_add(1);
    }
}

/// Decodes an EME-OAEP encoded block `em` (the raw RSA output) for a modulus of `k` bytes.
///
/// `em` may be shorter than `k` when the raw RSA output had its leading zero bytes stripped; it is
/// left-padded with zeros. Returns the message, or [`OaepError`] for any malformation (wrong
/// label, non-zero first byte, missing 0x01 separator, bad padding bytes, wrong length).
pub fn decode(
    em: &[u8],
    k: usize,
    label: &[u8],
    hash: OaepHash,
) -> Result<Zeroizing<Vec<u8>>, OaepError> {
    let h_len = hash.len();
    // Public-length checks: these depend only on sizes, never on secret contents.
    if k < 2 * h_len + 2 || em.len() > k {
        return Err(OaepError);
    }
    let mut block = Zeroizing::new(vec![0u8; k]);
    block[k - em.len()..].copy_from_slice(em);

    let l_hash = hash.digest(label);
    let (y, rest) = block.split_at_mut(1);
    let (seed, db) = rest.split_at_mut(h_len);
    // seed = maskedSeed xor MGF(maskedDB, hLen); DB = maskedDB xor MGF(seed, k - hLen - 1)
    hash.mgf1_xor(db, seed);
    hash.mgf1_xor(seed, db);

    let mut good = y[0].ct_eq(&0u8);
    good &= db[..h_len].ct_eq(&l_hash[..]);

    // Find the 0x01 separator after the zero padding PS without branching on the data.
    let ps_and_m = &db[h_len..];
    let mut looking = Choice::from(1u8);
    let mut index: u32 = 0;
    let mut invalid = Choice::from(0u8);
    for (i, b) in ps_and_m.iter().enumerate() {
        let is_zero = b.ct_eq(&0u8);
        let is_one = b.ct_eq(&1u8);
        // `i` is bounded by k, which fits in u32 for any real RSA modulus.
        let pos = u32::try_from(i).unwrap_or(u32::MAX);
        index.conditional_assign(&pos, looking & is_one);
        looking &= !is_one;
        invalid |= looking & !is_zero & !is_one;
    }
    good &= !invalid & !looking;

    if bool::from(good) {
        let start = usize::try_from(index).map_err(|_| OaepError)? + 1;
        Ok(Zeroizing::new(ps_and_m[start..].to_vec()))
    } else {
        Err(OaepError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    use rsa::{BigUint, Oaep, RsaPrivateKey, RsaPublicKey};

    fn key() -> RsaPrivateKey {
        // A fixed key would be faster, but 1024 bits generates quickly enough for tests.
        let mut rng = rand::thread_rng();
        RsaPrivateKey::new(&mut rng, 1024).expect("keygen")
    }

    /// Raw RSA decryption (c^d mod n), left-padded to the modulus size: what CKM_RSA_X_509 returns.
    fn raw_decrypt(key: &RsaPrivateKey, ct: &[u8]) -> Vec<u8> {
        let c = BigUint::from_bytes_be(ct);
        let m = c.modpow(key.d(), key.n());
        let bytes = m.to_bytes_be();
        let k = key.size();
        let mut out = vec![0u8; k - bytes.len()];
        out.extend_from_slice(&bytes);
        out
    }

    fn encrypt(pubkey: &RsaPublicKey, hash: OaepHash, label: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut rng = rand::thread_rng();
        let label = String::from_utf8(label.to_vec()).expect("utf8 label for rsa crate");
        let padding = match hash {
            OaepHash::Sha1 => Oaep::new_with_label::<Sha1, _>(label),
            OaepHash::Sha256 => Oaep::new_with_label::<Sha256, _>(label),
        };
        pubkey.encrypt(&mut rng, padding, msg).expect("encrypt")
    }

    #[test]
    fn round_trips_against_rsa_crate() {
        let key = key();
        let pubkey = key.to_public_key();
        let k = key.size();
        for hash in [OaepHash::Sha1, OaepHash::Sha256] {
            for label in [&b""[..], b"\0", b"some label"] {
                for len in [0usize, 1, 32, k - 2 * hash.len() - 2] {
                    let msg: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
                    let ct = encrypt(&pubkey, hash, label, &msg);
                    let em = raw_decrypt(&key, &ct);
                    let out = decode(&em, k, label, hash).expect("decode");
                    assert_eq!(&out[..], &msg[..], "{hash:?} label {label:?} len {len}");
                }
            }
        }
    }

    #[test]
    fn stripped_leading_zero_is_accepted() {
        let key = key();
        let k = key.size();
        let ct = encrypt(&key.to_public_key(), OaepHash::Sha256, b"", b"hello");
        let em = raw_decrypt(&key, &ct);
        assert_eq!(em[0], 0);
        let out = decode(&em[1..], k, b"", OaepHash::Sha256).expect("decode");
        assert_eq!(&out[..], b"hello");
    }

    #[test]
    fn wrong_label_hash_or_tampering_rejected() {
        let key = key();
        let k = key.size();
        let ct = encrypt(&key.to_public_key(), OaepHash::Sha256, b"label", b"secret");
        let em = raw_decrypt(&key, &ct);
        assert_eq!(decode(&em, k, b"other", OaepHash::Sha256), Err(OaepError));
        assert_eq!(decode(&em, k, b"", OaepHash::Sha256), Err(OaepError));
        assert_eq!(decode(&em, k, b"label", OaepHash::Sha1), Err(OaepError));
        // Any single flipped byte of the encoded block is rejected.
        for i in 0..em.len() {
            let mut bad = em.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                decode(&bad, k, b"label", OaepHash::Sha256),
                Err(OaepError),
                "byte {i}"
            );
        }
        // Tampered ciphertext → garbage block → rejected.
        let mut bad_ct = ct.clone();
        bad_ct[10] ^= 0x80;
        let em2 = raw_decrypt(&key, &bad_ct);
        assert_eq!(decode(&em2, k, b"label", OaepHash::Sha256), Err(OaepError));
        // Sizes.
        assert_eq!(
            decode(&[0u8; 200], k, b"", OaepHash::Sha256),
            Err(OaepError)
        );
        assert_eq!(decode(&em, 60, b"", OaepHash::Sha256), Err(OaepError));
        assert_eq!(
            decode(&[0u8; 128], k, b"", OaepHash::Sha256),
            Err(OaepError)
        );
    }

    #[test]
    fn no_separator_rejected() {
        // A block whose DB is lHash ‖ 00…00 (no 0x01) must fail: build it by hand.
        let hash = OaepHash::Sha256;
        let k = 128;
        let h_len = hash.len();
        let mut db = hash.digest(b"");
        db.resize(k - h_len - 1, 0);
        let seed = vec![7u8; h_len];
        let mut masked_db = db.clone();
        hash.mgf1_xor(&seed, &mut masked_db);
        let mut masked_seed = seed.clone();
        hash.mgf1_xor(&masked_db, &mut masked_seed);
        let mut em = vec![0u8];
        em.extend_from_slice(&masked_seed);
        em.extend_from_slice(&masked_db);
        assert_eq!(decode(&em, k, b"", hash), Err(OaepError));
        // And the same with a separator and message succeeds.
        let mut db = hash.digest(b"");
        db.resize(k - h_len - 1 - 4, 0);
        db.extend_from_slice(&[1, b'a', b'b', b'c']);
        let mut masked_db = db.clone();
        hash.mgf1_xor(&seed, &mut masked_db);
        let mut masked_seed = seed.clone();
        hash.mgf1_xor(&masked_db, &mut masked_seed);
        let mut em = vec![0u8];
        em.extend_from_slice(&masked_seed);
        em.extend_from_slice(&masked_db);
        assert_eq!(&decode(&em, k, b"", hash).expect("ok")[..], b"abc");
    }

    include!("oaep_vector.rs");

    /// A vector made with openssl 3:
    /// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024`, then
    /// `openssl pkeyutl -encrypt -pubin -inkey pub.pem -pkeyopt rsa_padding_mode:oaep
    ///  -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256 -pkeyopt rsa_oaep_label:<hex>`
    /// and the raw block with `openssl pkeyutl -decrypt -pkeyopt rsa_padding_mode:none`.
    #[test]
    fn openssl_vector() {
        let em = hex::decode(OPENSSL_RAW_BLOCK).expect("hex");
        let label = hex::decode(OPENSSL_LABEL_HEX).expect("hex");
        let out = decode(&em, em.len(), &label, OaepHash::Sha256).expect("decode");
        assert_eq!(&out[..], OPENSSL_PLAINTEXT);
        assert_eq!(decode(&em, em.len(), b"", OaepHash::Sha256), Err(OaepError));
        // And the same vector through the rsa crate's raw decryption of the openssl ciphertext.
        use rsa::pkcs8::DecodePrivateKey;
        let key = RsaPrivateKey::from_pkcs8_pem(OPENSSL_KEY_PEM).expect("pem");
        let ct = hex::decode(OPENSSL_CIPHERTEXT).expect("hex");
        assert_eq!(raw_decrypt(&key, &ct), em);
    }
}
