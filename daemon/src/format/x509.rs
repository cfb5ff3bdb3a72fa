//! X.509 certificates and PKCS#10 requests for RSA-2048 keys, with RustCrypto's `x509-cert`
//! (builder, DER, PEM): parsing what callers bring (certificates, public keys), building
//! certificates and requests whose signature comes from a callback (the TPM or HSM signs; this
//! module never holds a private key), and the facts the registry needs (subject, issuer, validity,
//! CA flag, key identifiers, thumbprint = SHA-256 of the DER certificate, MOSIP's rule).

use std::cell::RefCell;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::asn1::BitString;
use der::referenced::OwnedToRef;
use der::{Decode, Encode};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::RsaPublicKey;
use sha2::{Digest, Sha256};
use spki::{AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, SubjectPublicKeyInfoOwned};
use x509_cert::builder::{Builder, CertificateBuilder, Profile, RequestBuilder};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::Certificate;

/// The device's signature: given the SHA-256 of the to-be-signed bytes, the RSASSA-PKCS1-v1_5
/// signature, or the device's error message.
pub type SignFn<'a> = dyn Fn(&[u8; 32]) -> Result<Vec<u8>, String> + 'a;

/// What can go wrong; messages name the problem, never key material.
#[derive(Debug, thiserror::Error)]
pub enum X509Error {
    /// Neither PEM nor DER of the expected structure.
    #[error("{what} does not parse: {detail}")]
    Parse {
        /// What was expected (certificate, public key).
        what: &'static str,
        /// The parser's words.
        detail: String,
    },
    /// Not an RSA-2048 key.
    #[error("{0}")]
    NotRsa2048(String),
    /// A subject that is not an RFC 4514 name such as `CN=IDA,O=MOSIP`.
    #[error("subject `{0}` is not a distinguished name like \"CN=IDA partner,O=MOSIP,C=IN\"")]
    Subject(String),
    /// The signing callback failed (the message is the backend's).
    #[error("{0}")]
    Signer(String),
    /// Encoding or building failed.
    #[error("certificate encoding failed: {0}")]
    Build(String),
}

/// A certificate as the registry keeps it: the DER and what is read from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The DER certificate (what the thumbprint is over).
    pub der: Vec<u8>,
    /// SHA-256 of `der`: MOSIP's certificate thumbprint.
    pub thumbprint: [u8; 32],
    /// Subject, RFC 4514 text.
    pub subject: String,
    /// Issuer, RFC 4514 text.
    pub issuer: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Validity, Unix seconds.
    pub not_before: i64,
    /// Validity, Unix seconds.
    pub not_after: i64,
    /// basicConstraints cA.
    pub is_ca: bool,
    /// DER SubjectPublicKeyInfo of the certified key.
    pub spki_der: Vec<u8>,
    /// subjectKeyIdentifier, if present.
    pub ski: Option<Vec<u8>>,
    /// keyIdentifier of authorityKeyIdentifier, if present.
    pub aki: Option<Vec<u8>>,
}

impl CertInfo {
    /// True when the issuer is the subject (self-issued).
    pub fn self_issued(&self) -> bool {
        self.subject == self.issuer
    }
}

fn unix(t: &Time) -> i64 {
    t.to_unix_duration().as_secs() as i64
}

/// The DER body of a PEM document with `label`, decoded whole before any DER parsing: `der`'s
/// streaming PEM reader loops forever on a body shorter than its DER header announces (found
/// by fuzzing: `fuzz/artifacts/public_key/`).
fn pem_body(bytes: &[u8], label: &str) -> Result<Vec<u8>, String> {
    let (got, der) = pem_rfc7468::decode_vec(bytes).map_err(|e| format!("PEM: {e}"))?;
    if got != label {
        return Err(format!("PEM label is {got:?}, not {label:?}"));
    }
    Ok(der)
}

/// Parses a certificate, PEM (`-----BEGIN CERTIFICATE-----`) or DER.
pub fn parse_certificate(bytes: &[u8]) -> Result<CertInfo, X509Error> {
    let parse = |detail: String| X509Error::Parse {
        what: "certificate",
        detail,
    };
    let cert = if bytes.starts_with(b"-----BEGIN") {
        let der = pem_body(bytes, "CERTIFICATE").map_err(parse)?;
        Certificate::from_der(&der).map_err(|e| parse(e.to_string()))?
    } else {
        Certificate::from_der(bytes).map_err(|e| parse(e.to_string()))?
    };
    info(&cert).map_err(|e| parse(e.to_string()))
}

fn info(cert: &Certificate) -> Result<CertInfo, der::Error> {
    let der = cert.to_der()?;
    let tbs = &cert.tbs_certificate;
    let mut is_ca = false;
    let mut ski = None;
    let mut aki = None;
    for ext in tbs.extensions.iter().flatten() {
        let value = ext.extn_value.as_bytes();
        if ext.extn_id == const_oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS {
            is_ca = BasicConstraints::from_der(value)?.ca;
        } else if ext.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER {
            ski = Some(SubjectKeyIdentifier::from_der(value)?.0.as_bytes().to_vec());
        } else if ext.extn_id == const_oid::db::rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER {
            aki = AuthorityKeyIdentifier::from_der(value)?
                .key_identifier
                .map(|k| k.as_bytes().to_vec());
        }
    }
    Ok(CertInfo {
        thumbprint: Sha256::digest(&der).into(),
        subject: tbs.subject.to_string(),
        issuer: tbs.issuer.to_string(),
        serial: hex::encode(tbs.serial_number.as_bytes()),
        not_before: unix(&tbs.validity.not_before),
        not_after: unix(&tbs.validity.not_after),
        is_ca,
        spki_der: tbs.subject_public_key_info.to_der()?,
        ski,
        aki,
        der,
    })
}

/// Parses a public key: a PEM `PUBLIC KEY` or DER SubjectPublicKeyInfo, or a certificate (PEM or
/// DER), returning the SPKI DER and the certificate if it was one.
pub fn parse_public_key(bytes: &[u8]) -> Result<(Vec<u8>, Option<CertInfo>), X509Error> {
    if let Ok(c) = parse_certificate(bytes) {
        return Ok((c.spki_der.clone(), Some(c)));
    }
    let parse = |detail: String| X509Error::Parse {
        what: "public key or certificate",
        detail,
    };
    let spki = if bytes.starts_with(b"-----BEGIN") {
        let der = pem_body(bytes, "PUBLIC KEY").map_err(parse)?;
        SubjectPublicKeyInfoOwned::from_der(&der).map_err(|e| parse(e.to_string()))?
    } else {
        SubjectPublicKeyInfoOwned::from_der(bytes).map_err(|e| parse(e.to_string()))?
    };
    let der = spki.to_der().map_err(|e| parse(e.to_string()))?;
    Ok((der, None))
}

/// The RSA-2048 public key of a DER SubjectPublicKeyInfo, or why it is not one.
pub fn rsa2048(spki_der: &[u8]) -> Result<RsaPublicKey, X509Error> {
    let key = RsaPublicKey::from_public_key_der(spki_der)
        .map_err(|_| X509Error::NotRsa2048("the key is not an RSA key".into()))?;
    if key.size() != 256 {
        return Err(X509Error::NotRsa2048(format!(
            "the key is RSA-{}; RSA-2048 is required",
            key.size() * 8
        )));
    }
    Ok(key)
}

/// True when two SubjectPublicKeyInfos carry the same RSA key (encodings may differ).
pub fn same_rsa_key(a: &[u8], b: &[u8]) -> bool {
    match (
        RsaPublicKey::from_public_key_der(a),
        RsaPublicKey::from_public_key_der(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Parses an RFC 4514 subject such as `CN=IDA partner,O=MOSIP,C=IN`.
pub fn parse_subject(s: &str) -> Result<Name, X509Error> {
    let name = Name::from_str(s).map_err(|_| X509Error::Subject(s.escape_default().to_string()))?;
    if name.0.is_empty() {
        return Err(X509Error::Subject(s.escape_default().to_string()));
    }
    Ok(name)
}

/// What a certificate says about its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A CA: basicConstraints cA=true, keyUsage keyCertSign + cRLSign.
    Ca,
    /// A signing key: keyUsage digitalSignature.
    Signing,
    /// An encryption (RSA-OAEP) key: keyUsage keyEncipherment.
    Encryption,
}

/// The issuer of a certificate being built: its subject name and public key (for the authority
/// key identifier and the signature algorithm).
pub struct Issuer<'a> {
    /// Issuer name (the issuer certificate's subject).
    pub name: Name,
    /// The issuer's DER SubjectPublicKeyInfo.
    pub spki_der: &'a [u8],
}

/// Everything a new certificate needs but the signature.
pub struct CertSpec<'a> {
    /// Subject name.
    pub subject: Name,
    /// The certified key's DER SubjectPublicKeyInfo.
    pub spki_der: &'a [u8],
    /// Key usage profile.
    pub usage: Usage,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// Serial number bytes (positive, at most 20 bytes).
    pub serial: Vec<u8>,
}

/// A signer for the x509-cert builders whose signature comes from a callback (the device):
/// RSASSA-PKCS1-v1_5 with SHA-256 over the to-be-signed bytes.
struct DeviceSigner<'a> {
    verifying: VerifyingKey<Sha256>,
    sign: &'a SignFn<'a>,
    failure: RefCell<Option<String>>,
}

impl signature::Keypair for DeviceSigner<'_> {
    type VerifyingKey = VerifyingKey<Sha256>;
    fn verifying_key(&self) -> Self::VerifyingKey {
        self.verifying.clone()
    }
}

impl DynSignatureAlgorithmIdentifier for DeviceSigner<'_> {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(AlgorithmIdentifierOwned {
            oid: const_oid::db::rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
            parameters: Some(der::asn1::Null.into()),
        })
    }
}

impl signature::Signer<Signature> for DeviceSigner<'_> {
    fn try_sign(&self, msg: &[u8]) -> Result<Signature, signature::Error> {
        let digest: [u8; 32] = Sha256::digest(msg).into();
        match (self.sign)(&digest) {
            Ok(sig) => Signature::try_from(sig.as_slice()),
            Err(e) => {
                *self.failure.borrow_mut() = Some(e);
                Err(signature::Error::new())
            }
        }
    }
}

impl<'a> DeviceSigner<'a> {
    fn new(spki_der: &[u8], sign: &'a SignFn<'a>) -> Result<Self, X509Error> {
        Ok(DeviceSigner {
            verifying: VerifyingKey::new(rsa2048(spki_der)?),
            sign,
            failure: RefCell::new(None),
        })
    }

    /// The builder's error, or the device's when the signature is what failed.
    fn error(&self, e: x509_cert::builder::Error) -> X509Error {
        match self.failure.borrow_mut().take() {
            Some(m) => X509Error::Signer(m),
            None => X509Error::Build(e.to_string()),
        }
    }
}

fn time(secs: i64) -> Result<Time, X509Error> {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    Time::try_from(t).map_err(|e| X509Error::Build(format!("validity: {e}")))
}

/// Builds a certificate for `spec`, signed by the issuer (`None`: self-signed, by the key being
/// certified) through `sign`, which gets the SHA-256 of the to-be-signed bytes and returns the
/// RSASSA-PKCS1-v1_5 signature. Extensions: subjectKeyIdentifier, authorityKeyIdentifier (when
/// issued by another key), basicConstraints and keyUsage as [`Usage`] says.
pub fn build_certificate(
    spec: &CertSpec<'_>,
    issuer: Option<&Issuer<'_>>,
    sign: &SignFn<'_>,
) -> Result<CertInfo, X509Error> {
    let subject_spki = SubjectPublicKeyInfoOwned::from_der(spec.spki_der)
        .map_err(|e| X509Error::Build(e.to_string()))?;
    rsa2048(spec.spki_der)?;
    let signer_spki = issuer.map_or(spec.spki_der, |i| i.spki_der);
    let signer = DeviceSigner::new(signer_spki, sign)?;
    let serial = SerialNumber::new(&spec.serial).map_err(|e| X509Error::Build(e.to_string()))?;
    let validity = Validity {
        not_before: time(spec.not_before)?,
        not_after: time(spec.not_after)?,
    };
    let profile = Profile::Manual {
        issuer: issuer.map(|i| i.name.clone()),
    };
    let mut b = CertificateBuilder::new(
        profile,
        serial,
        validity,
        spec.subject.clone(),
        subject_spki.clone(),
        &signer,
    )
    .map_err(|e| X509Error::Build(e.to_string()))?;
    let ext = |e: x509_cert::builder::Error| X509Error::Build(e.to_string());
    b.add_extension(
        &SubjectKeyIdentifier::try_from(subject_spki.owned_to_ref())
            .map_err(|e| X509Error::Build(e.to_string()))?,
    )
    .map_err(ext)?;
    if let Some(i) = issuer {
        let issuer_spki = SubjectPublicKeyInfoOwned::from_der(i.spki_der)
            .map_err(|e| X509Error::Build(e.to_string()))?;
        b.add_extension(
            &AuthorityKeyIdentifier::try_from(issuer_spki.owned_to_ref())
                .map_err(|e| X509Error::Build(e.to_string()))?,
        )
        .map_err(ext)?;
    }
    b.add_extension(&BasicConstraints {
        ca: spec.usage == Usage::Ca,
        path_len_constraint: None,
    })
    .map_err(ext)?;
    let usage = match spec.usage {
        Usage::Ca => KeyUsages::KeyCertSign | KeyUsages::CRLSign,
        Usage::Signing => KeyUsages::DigitalSignature.into(),
        Usage::Encryption => KeyUsages::KeyEncipherment.into(),
    };
    b.add_extension(&KeyUsage(usage)).map_err(ext)?;
    let cert = b.build::<Signature>().map_err(|e| signer.error(e))?;
    info(&cert).map_err(|e| X509Error::Build(e.to_string()))
}

/// Builds a PKCS#10 certification request for `subject` and the key `spki_der`, signed by that key
/// through `sign`. Returns the DER request.
pub fn build_csr(subject: Name, spki_der: &[u8], sign: &SignFn<'_>) -> Result<Vec<u8>, X509Error> {
    let signer = DeviceSigner::new(spki_der, sign)?;
    let b = RequestBuilder::new(subject, &signer).map_err(|e| X509Error::Build(e.to_string()))?;
    let req = b.build::<Signature>().map_err(|e| signer.error(e))?;
    req.to_der().map_err(|e| X509Error::Build(e.to_string()))
}

/// PEM text of DER bytes under `label` (`CERTIFICATE`, `CERTIFICATE REQUEST`).
pub fn pem(label: &'static str, der: &[u8]) -> Result<String, X509Error> {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der)
        .map_err(|e| X509Error::Build(e.to_string()))
}

/// Unix seconds now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The bit string type the builders use, re-exported for callers that check signatures.
pub type SignatureBits = BitString;

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1v15::SigningKey;
    use rsa::pkcs8::EncodePublicKey;
    use rsa::RsaPrivateKey;
    use signature::{SignatureEncoding, Signer, Verifier};

    fn key() -> (RsaPrivateKey, Vec<u8>) {
        let k = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let spki = k.to_public_key().to_public_key_der().unwrap().to_vec();
        (k, spki)
    }

    #[test]
    fn self_signed_ca_and_leaf_round_trip() {
        let (root_key, root_spki) = key();
        let sk = SigningKey::<Sha256>::new(root_key.clone());
        // The callback gets the digest: sign it as prehashed PKCS#1 v1.5 with the software key.
        let sign = |d: &[u8; 32]| -> Result<Vec<u8>, String> {
            use rsa::Pkcs1v15Sign;
            root_key
                .sign(Pkcs1v15Sign::new::<Sha256>(), d)
                .map_err(|e| e.to_string())
        };
        let root = build_certificate(
            &CertSpec {
                subject: parse_subject("CN=Root,O=Test").unwrap(),
                spki_der: &root_spki,
                usage: Usage::Ca,
                not_before: now(),
                not_after: now() + 86_400,
                serial: vec![0x11; 16],
            },
            None,
            &sign,
        )
        .unwrap();
        assert!(root.is_ca && root.self_issued());
        assert_eq!(root.subject, "CN=Root,O=Test");
        let parsed = parse_certificate(&root.der).unwrap();
        assert_eq!(parsed, root);
        let pem_text = pem("CERTIFICATE", &root.der).unwrap();
        assert_eq!(parse_certificate(pem_text.as_bytes()).unwrap(), root);
        // The signature verifies with the root key over the TBS bytes.
        let cert = Certificate::from_der(&root.der).unwrap();
        let tbs = cert.tbs_certificate.to_der().unwrap();
        let sig = Signature::try_from(cert.signature.raw_bytes()).unwrap();
        VerifyingKey::<Sha256>::new(root_key.to_public_key())
            .verify(&tbs, &sig)
            .unwrap();
        // Same signature as the software signer would make (deterministic PKCS#1 v1.5).
        assert_eq!(sk.sign(&tbs).to_vec(), sig.to_vec());

        let (_, leaf_spki) = key();
        let root_name = parse_subject(&root.subject).unwrap();
        let leaf = build_certificate(
            &CertSpec {
                subject: parse_subject("CN=Leaf").unwrap(),
                spki_der: &leaf_spki,
                usage: Usage::Encryption,
                not_before: now(),
                not_after: now() + 3600,
                serial: vec![0x22; 8],
            },
            Some(&Issuer {
                name: root_name,
                spki_der: &root_spki,
            }),
            &sign,
        )
        .unwrap();
        assert!(!leaf.is_ca);
        assert_eq!(leaf.issuer, "CN=Root,O=Test");
        assert_eq!(leaf.aki, root.ski);
        assert!(same_rsa_key(&leaf.spki_der, &leaf_spki));
        assert_eq!(leaf.thumbprint, <[u8; 32]>::from(Sha256::digest(&leaf.der)));
    }

    #[test]
    fn bad_inputs_are_typed() {
        assert!(matches!(
            parse_certificate(b"nope"),
            Err(X509Error::Parse { .. })
        ));
        assert!(matches!(
            parse_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
            Err(X509Error::Parse { .. })
        ));
        assert!(matches!(
            parse_subject("not a name"),
            Err(X509Error::Subject(_))
        ));
        let k = RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).unwrap();
        let spki = k.to_public_key().to_public_key_der().unwrap();
        assert!(matches!(
            rsa2048(spki.as_bytes()),
            Err(X509Error::NotRsa2048(_))
        ));
        let failing = |_: &[u8; 32]| -> Result<Vec<u8>, String> { Err("device gone".into()) };
        let (_, spki) = key();
        let e = build_csr(parse_subject("CN=x").unwrap(), &spki, &failing).unwrap_err();
        assert_eq!(e.to_string(), "device gone");
    }

    /// Found by `make fuzz`: a PEM body shorter than its DER header announces made `der`'s PEM
    /// reader loop forever (a daemon thread spinning on `keys.import`). Now refused at once.
    #[test]
    fn truncated_pem_bodies_are_refused_not_looped_on() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let key =
                parse_public_key(b"-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n");
            let cert = parse_certificate(
                b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            );
            let _ = tx.send((key.is_err(), cert.is_err()));
        });
        let r = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(
            r,
            Ok((true, true)),
            "parsing a truncated PEM body must end with an error"
        );
    }
}
