//! Mechanism parameters and start-up capability probing.

use cryptoki::context::Pkcs11;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use rsa::{BigUint, Oaep, RsaPublicKey};

use super::errors::{describe, OpError};
use crate::crypto::oaep::OaepHash;

/// DER prefix of a DigestInfo for SHA-256 (RFC 8017 §9.2 note 1).
pub(crate) const SHA256_DIGEST_INFO_PREFIX: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// What the token was found to support at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Mechanisms the token lists.
    pub mechanisms: Vec<String>,
    /// `CKM_RSA_PKCS_OAEP` with SHA-256/MGF1-SHA-256 and an empty label decrypts correctly.
    pub oaep_sha256: bool,
    /// `CKM_RSA_PKCS_OAEP` with SHA-1/MGF1-SHA-1 and an empty label decrypts correctly.
    pub oaep_sha1: bool,
    /// Token OAEP also accepts a non-empty label (SoftHSM 2.6 does not).
    pub oaep_label: bool,
    /// `CKM_RSA_X_509` (raw RSA) is listed: needed for the software OAEP path.
    pub raw_rsa: bool,
}

/// `CKM_RSA_PKCS_OAEP` parameters for `hash` (MGF1 of the same hash) and `label`.
pub(crate) fn oaep(hash: OaepHash, label: &[u8]) -> Mechanism<'_> {
    let (h, mgf) = match hash {
        OaepHash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        OaepHash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
    };
    // An empty label must be passed as a NULL pointer: SoftHSM rejects any non-NULL source data
    // (it supports empty labels only).
    let source = if label.is_empty() {
        PkcsOaepSource::empty()
    } else {
        PkcsOaepSource::data_specified(label)
    };
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(h, mgf, source))
}

/// `CKM_RSA_PKCS_PSS` with SHA-256, MGF1-SHA-256, salt 32, over a precomputed digest.
pub(crate) fn pss_sha256() -> Mechanism<'static> {
    Mechanism::RsaPkcsPss(PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: 32.into(),
    })
}

/// Probes the token: lists mechanisms and test-decrypts with OAEP on a temporary session key pair.
pub(crate) fn probe(ctx: &Pkcs11, slot: Slot, s: &Session) -> Result<Capabilities, OpError> {
    let list = ctx.get_mechanism_list(slot)?;
    let raw_rsa = list.contains(&MechanismType::RSA_X_509);
    let has_oaep = list.contains(&MechanismType::RSA_PKCS_OAEP);
    let mechanisms = list.iter().map(|m| m.to_string()).collect();
    let (mut oaep_sha256, mut oaep_sha1, mut oaep_label) = (false, false, false);
    if has_oaep {
        // A session object (CKA_TOKEN=false) vanishes with the session even if not destroyed.
        let public = [
            Attribute::Token(false),
            Attribute::ModulusBits(2048.into()),
            Attribute::PublicExponent(vec![1, 0, 1]),
            Attribute::Encrypt(true),
        ];
        let private = [
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Decrypt(true),
        ];
        let (pub_h, priv_h) =
            s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)?;
        let attrs = s.get_attributes(
            pub_h,
            &[AttributeType::Modulus, AttributeType::PublicExponent],
        )?;
        let (mut n, mut e) = (Vec::new(), Vec::new());
        for a in attrs {
            match a {
                Attribute::Modulus(m) => n = m,
                Attribute::PublicExponent(x) => e = x,
                _ => {}
            }
        }
        let key = RsaPublicKey::new(BigUint::from_bytes_be(&n), BigUint::from_bytes_be(&e));
        if let Ok(key) = key {
            oaep_sha256 = try_oaep(s, priv_h, &key, OaepHash::Sha256, "");
            oaep_sha1 = try_oaep(s, priv_h, &key, OaepHash::Sha1, "");
            let hash = if oaep_sha256 {
                Some(OaepHash::Sha256)
            } else if oaep_sha1 {
                Some(OaepHash::Sha1)
            } else {
                None
            };
            oaep_label = hash.is_some_and(|h| try_oaep(s, priv_h, &key, h, "\0"));
        }
        let _ = s.destroy_object(priv_h);
        let _ = s.destroy_object(pub_h);
    }
    Ok(Capabilities {
        mechanisms,
        oaep_sha256,
        oaep_sha1,
        oaep_label,
        raw_rsa,
    })
}

/// Encrypts in software, decrypts on the token, compares.
fn try_oaep(
    s: &Session,
    key: cryptoki::object::ObjectHandle,
    public: &RsaPublicKey,
    hash: OaepHash,
    label: &str,
) -> bool {
    let msg = b"custodyd oaep probe";
    let mut rng = rand::rngs::OsRng;
    {
        let padding = match hash {
            OaepHash::Sha1 => Oaep::new_with_label::<sha1::Sha1, _>(label),
            OaepHash::Sha256 => Oaep::new_with_label::<sha2::Sha256, _>(label),
        };
        let Ok(ct) = public.encrypt(&mut rng, padding, msg) else {
            return false;
        };
        match s.decrypt(&oaep(hash, label.as_bytes()), key, &ct) {
            Ok(pt) if pt == msg => {}
            Ok(_) => {
                tracing::warn!(?hash, "token RSA-OAEP probe returned a wrong plaintext");
                return false;
            }
            Err(e) => {
                tracing::debug!(?hash, label_len = label.len(), error = %describe(&e), "token RSA-OAEP probe failed");
                return false;
            }
        }
    }
    true
}
