//! Property tests for the format encoder/decoder pairs `roundtrip.rs` does not cover: idOS box
//! content (seal → parse → open), X25519/Ed25519 SubjectPublicKeyInfo (encode ↔ raw), public
//! keys in PEM and DER (RSA SPKI and certificates through `parse_public_key`), certificates
//! (`build_certificate` → `parse_certificate`, DER and PEM) and CSRs (`build_csr` → x509-cert's
//! parser, signature checked), and `TPMT_PUBLIC` (marshalled by tss-esapi, parsed by
//! `format::tpm_public`, converted to SPKI and back).

use std::sync::OnceLock;

use custody_daemon::backend::KeyKind;
use custody_daemon::crypto::idos;
use custody_daemon::format::{okp, tpm_public, x509};
use der::{Decode, Encode};
use proptest::prelude::*;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};

/// One fixed RSA-2048 key (generating keys per case would dominate the run).
fn key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        RsaPrivateKey::from_pkcs8_pem(include_str!(
            "../../../daemon/src/format/testdata/test-rsa2048.pem"
        ))
        .expect("test key")
    })
}

fn spki() -> Vec<u8> {
    RsaPublicKey::from(key())
        .to_public_key_der()
        .expect("SPKI")
        .as_bytes()
        .to_vec()
}

fn sign(digest: &[u8; 32]) -> Result<Vec<u8>, String> {
    key()
        .sign(Pkcs1v15Sign::new::<Sha256>(), digest)
        .map_err(|e| e.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn idos_boxes_round_trip(secret in any::<[u8; 32]>(), plain in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let public = idos::x25519_public(&secret).unwrap();
        let to = idos::Recipient::new(public);
        prop_assume!(to.is_ok());
        let sealed = idos::seal(&to.unwrap(), &plain).unwrap();
        prop_assert_eq!(sealed.content.len(), plain.len() + 40);
        let c = idos::parse_content(&sealed.content).unwrap();
        let back = idos::open(&secret, &sealed.encryptor_public_key, &c.nonce, c.boxed).unwrap();
        prop_assert_eq!(&back[..], &plain[..]);
        // Any flipped bit is refused.
        let mut bad = sealed.content.clone();
        let i = plain.len() % bad.len();
        bad[i] ^= 1;
        let c = idos::parse_content(&bad).unwrap();
        prop_assert!(idos::open(&secret, &sealed.encryptor_public_key, &c.nonce, c.boxed).is_err());
    }

    #[test]
    fn okp_public_keys_round_trip(raw in any::<[u8; 32]>(), ed in any::<bool>()) {
        let (kind, other) = if ed {
            (KeyKind::Ed25519, KeyKind::X25519)
        } else {
            (KeyKind::X25519, KeyKind::Ed25519)
        };
        let der = okp::spki_der(kind, &raw).unwrap();
        prop_assert_eq!(okp::raw_from_spki(kind, &der), Some(raw));
        prop_assert_eq!(okp::raw_from_spki(other, &der), None);
        // The generic parser reads the same SPKI, DER and PEM.
        let (spki, cert) = x509::parse_public_key(&der).unwrap();
        prop_assert!(cert.is_none());
        prop_assert_eq!(&spki, &der);
        let pem = x509::pem("PUBLIC KEY", &der).unwrap();
        prop_assert_eq!(x509::parse_public_key(pem.as_bytes()).unwrap().0, der);
    }

    #[test]
    fn certificates_round_trip(
        cn in "[A-Za-z0-9 ._-]{1,40}",
        org in proptest::option::of("[A-Za-z0-9 ]{1,20}"),
        not_before in 0i64..2_000_000_000,
        days in 1i64..36_500,
        serial in proptest::collection::vec(1u8..=0x7f, 1..20),
        usage in 0u8..3,
    ) {
        let subject_text = match &org {
            Some(o) => format!("CN={},O={}", cn.trim(), o.trim()),
            None => format!("CN={}", cn.trim()),
        };
        prop_assume!(!cn.trim().is_empty() && org.as_ref().is_none_or(|o| !o.trim().is_empty()));
        let subject = x509::parse_subject(&subject_text).unwrap();
        let spki = spki();
        let usage = [x509::Usage::Ca, x509::Usage::Signing, x509::Usage::Encryption][usage as usize];
        let not_after = not_before + days * 86_400;
        let spec = x509::CertSpec {
            subject: subject.clone(),
            spki_der: &spki,
            usage,
            not_before,
            not_after,
            serial: serial.clone(),
        };
        let made = x509::build_certificate(&spec, None, &sign).unwrap();
        for encoded in [made.der.clone(), x509::pem("CERTIFICATE", &made.der).unwrap().into_bytes()] {
            let back = x509::parse_certificate(&encoded).unwrap();
            prop_assert_eq!(&back.der, &made.der);
            prop_assert_eq!(back.thumbprint, <[u8; 32]>::from(Sha256::digest(&made.der)));
            prop_assert_eq!(&back.subject, &subject.to_string());
            prop_assert!(back.self_issued());
            prop_assert_eq!(back.serial.clone(), hex::encode(&serial));
            prop_assert_eq!((back.not_before, back.not_after), (not_before, not_after));
            prop_assert_eq!(back.is_ca, usage == x509::Usage::Ca);
            prop_assert_eq!(&back.spki_der, &spki);
            prop_assert!(back.ski.is_some());
            // As a public key: the certificate's SPKI and the certificate itself.
            let (k, c) = x509::parse_public_key(&encoded).unwrap();
            prop_assert_eq!(&k, &spki);
            prop_assert_eq!(c.map(|c| c.der), Some(made.der.clone()));
        }
    }

    #[test]
    fn csrs_round_trip(cn in "[A-Za-z0-9 ._-]{1,40}") {
        prop_assume!(!cn.trim().is_empty());
        let subject = x509::parse_subject(&format!("CN={}", cn.trim())).unwrap();
        let spki = spki();
        let der = x509::build_csr(subject.clone(), &spki, &sign).unwrap();
        let req = x509_cert::request::CertReq::from_der(&der).unwrap();
        prop_assert_eq!(req.info.subject.to_string(), subject.to_string());
        prop_assert_eq!(req.info.public_key.to_der().unwrap(), spki.clone());
        // The signature is the key's over the request info.
        let info = req.info.to_der().unwrap();
        let public = RsaPublicKey::from(key());
        prop_assert!(public
            .verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(&info), req.signature.raw_bytes())
            .is_ok());
        // PEM of it decodes to the same DER.
        let pem = x509::pem("CERTIFICATE REQUEST", &der).unwrap();
        let (label, back) = pem_rfc7468::decode_vec(pem.as_bytes()).unwrap();
        prop_assert_eq!(label, "CERTIFICATE REQUEST");
        prop_assert_eq!(back, der);
    }

    #[test]
    fn tpmt_public_round_trips(
        modulus in proptest::collection::vec(any::<u8>(), 256),
        exponent in prop_oneof![Just(0u32), Just(65537u32), Just(3u32), (3u32..).prop_map(|e| e | 1)],
        sign_key in any::<bool>(),
        sha256 in any::<bool>(),
    ) {
        use tss_esapi::attributes::ObjectAttributesBuilder;
        use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
        use tss_esapi::interface_types::key_bits::RsaKeyBits;
        use tss_esapi::structures::{
            Digest as TpmDigest, HashScheme, PublicBuilder, PublicKeyRsa,
            PublicRsaParametersBuilder, RsaExponent, RsaScheme, SymmetricDefinitionObject,
        };
        use tss_esapi::traits::Marshall;
        let mut modulus = modulus;
        modulus[0] |= 0x80; // a 2048-bit modulus
        modulus[255] |= 1;
        let hash = if sha256 { HashingAlgorithm::Sha256 } else { HashingAlgorithm::Sha1 };
        let attrs = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_sign_encrypt(sign_key)
            .with_decrypt(!sign_key)
            .build()
            .unwrap();
        let scheme = if sign_key {
            RsaScheme::RsaSsa(HashScheme::new(HashingAlgorithm::Sha256))
        } else {
            RsaScheme::Oaep(HashScheme::new(HashingAlgorithm::Sha256))
        };
        let params = PublicRsaParametersBuilder::new()
            .with_symmetric(SymmetricDefinitionObject::Null)
            .with_scheme(scheme)
            .with_key_bits(RsaKeyBits::Rsa2048)
            .with_exponent(RsaExponent::create(exponent).unwrap())
            .with_is_signing_key(sign_key)
            .with_is_decryption_key(!sign_key)
            .with_restricted(false)
            .build()
            .unwrap();
        let public = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Rsa)
            .with_name_hashing_algorithm(hash)
            .with_object_attributes(attrs)
            .with_auth_policy(TpmDigest::default())
            .with_rsa_parameters(params)
            .with_rsa_unique_identifier(PublicKeyRsa::try_from(modulus.clone()).unwrap())
            .build()
            .unwrap();
        let bytes = public.marshall().unwrap();
        let p = tpm_public::parse(&bytes).unwrap();
        prop_assert_eq!(&p.modulus, &modulus);
        prop_assert_eq!(p.key_bits, 2048);
        prop_assert_eq!(p.raw_exponent, exponent);
        prop_assert_eq!(p.exponent(), if exponent == 0 { 65537 } else { exponent });
        prop_assert_eq!(p.name_alg, if sha256 { tpm_public::TPM_ALG_SHA256 } else { tpm_public::TPM_ALG_SHA1 });
        prop_assert_eq!(p.scheme, if sign_key { tpm_public::TPM_ALG_RSASSA } else { tpm_public::TPM_ALG_OAEP });
        prop_assert_eq!(p.scheme_hash, Some(tpm_public::TPM_ALG_SHA256));
        prop_assert!(p.symmetric.is_none());
        // Its SPKI carries the same key.
        let spki = p.to_spki_der().unwrap();
        let k = x509::rsa2048(&spki).unwrap();
        prop_assert_eq!(k.n().to_bytes_be(), modulus);
        prop_assert_eq!(k.e().to_bytes_be(), rsa::BigUint::from(p.exponent()).to_bytes_be());
        // Nothing may follow the structure.
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert!(tpm_public::parse(&longer).is_err());
    }
}
