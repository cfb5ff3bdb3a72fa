//! Minimal parser of a marshalled `TPMT_PUBLIC` holding an RSA key (TPM 2.0 Library, Part 2),
//! used to cross-check a TPM key against its SubjectPublicKeyInfo.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! type u16 (TPM_ALG_RSA = 0x0001)
//! nameAlg u16
//! objectAttributes u32
//! authPolicy: TPM2B_DIGEST = size u16 ‖ bytes
//! parameters: TPMS_RSA_PARMS =
//!     symmetric: algorithm u16 [‖ keyBits u16 ‖ mode u16 unless TPM_ALG_NULL]
//!     scheme:    scheme u16 [‖ hashAlg u16 for RSASSA / RSAPSS / OAEP; nothing for NULL / RSAES]
//!     keyBits u16
//!     exponent u32 (0 means 65537)
//! unique: TPM2B_PUBLIC_KEY_RSA = size u16 ‖ modulus
//! ```

use rsa::pkcs8::EncodePublicKey;
use rsa::{BigUint, RsaPublicKey};

/// `TPM_ALG_RSA`.
pub const TPM_ALG_RSA: u16 = 0x0001;
/// `TPM_ALG_SHA1`.
pub const TPM_ALG_SHA1: u16 = 0x0004;
/// `TPM_ALG_AES`.
pub const TPM_ALG_AES: u16 = 0x0006;
/// `TPM_ALG_SHA256`.
pub const TPM_ALG_SHA256: u16 = 0x000B;
/// `TPM_ALG_NULL`.
pub const TPM_ALG_NULL: u16 = 0x0010;
/// `TPM_ALG_RSASSA`.
pub const TPM_ALG_RSASSA: u16 = 0x0014;
/// `TPM_ALG_RSAES`.
pub const TPM_ALG_RSAES: u16 = 0x0015;
/// `TPM_ALG_RSAPSS`.
pub const TPM_ALG_RSAPSS: u16 = 0x0016;
/// `TPM_ALG_OAEP`.
pub const TPM_ALG_OAEP: u16 = 0x0017;
/// `TPM_ALG_SM4`.
pub const TPM_ALG_SM4: u16 = 0x0013;
/// `TPM_ALG_CAMELLIA`.
pub const TPM_ALG_CAMELLIA: u16 = 0x0026;

/// The public exponent a zero `exponent` field stands for.
pub const DEFAULT_EXPONENT: u32 = 65537;

/// Why a `TPMT_PUBLIC` could not be parsed or converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TpmPublicError {
    /// The input ends inside a field.
    #[error("TPMT_PUBLIC truncated while reading {field}")]
    Truncated {
        /// Field being read.
        field: &'static str,
    },
    /// Bytes left after the `unique` field.
    #[error("TPMT_PUBLIC has {len} trailing bytes")]
    TrailingBytes {
        /// Number of extra bytes.
        len: usize,
    },
    /// The object is not an RSA key.
    #[error("unsupported TPMT_PUBLIC type 0x{0:04x} (only TPM_ALG_RSA)")]
    UnsupportedType(u16),
    /// A symmetric algorithm this parser does not know.
    #[error("unsupported symmetric algorithm 0x{0:04x}")]
    UnsupportedSymmetric(u16),
    /// An RSA scheme this parser does not know.
    #[error("unsupported RSA scheme 0x{0:04x}")]
    UnsupportedScheme(u16),
    /// keyBits is zero or not a multiple of 8.
    #[error("unsupported RSA key size {0} bits")]
    UnsupportedKeyBits(u16),
    /// The modulus length does not match keyBits (an empty `unique` is a template, not a key).
    #[error("RSA modulus is {found} bytes, keyBits says {expected}")]
    ModulusLength {
        /// keyBits / 8.
        expected: usize,
        /// Length of `unique`.
        found: usize,
    },
    /// The modulus/exponent do not form a usable RSA public key.
    #[error("invalid RSA public key")]
    InvalidKey,
    /// DER encoding of the SubjectPublicKeyInfo failed.
    #[error("SubjectPublicKeyInfo encoding failed")]
    Encoding,
}

/// Symmetric algorithm of a (storage) key: `TPMT_SYM_DEF_OBJECT` other than NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymDef {
    /// Algorithm (e.g. `TPM_ALG_AES`).
    pub algorithm: u16,
    /// Key size in bits.
    pub key_bits: u16,
    /// Block cipher mode (e.g. `TPM_ALG_CFB`).
    pub mode: u16,
}

/// The fields of an RSA `TPMT_PUBLIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmRsaPublic {
    /// Name algorithm (e.g. `TPM_ALG_SHA1`, `TPM_ALG_SHA256`).
    pub name_alg: u16,
    /// `TPMA_OBJECT` bits.
    pub object_attributes: u32,
    /// Authorization policy digest (empty when none).
    pub auth_policy: Vec<u8>,
    /// Symmetric definition; `None` for `TPM_ALG_NULL`.
    pub symmetric: Option<SymDef>,
    /// RSA scheme (`TPM_ALG_NULL`, `TPM_ALG_RSASSA`, …).
    pub scheme: u16,
    /// Hash of the scheme, for schemes that carry one.
    pub scheme_hash: Option<u16>,
    /// Modulus size in bits.
    pub key_bits: u16,
    /// Exponent field as stored (0 means 65537; see [`TpmRsaPublic::exponent`]).
    pub raw_exponent: u32,
    /// Modulus, big-endian, `key_bits / 8` bytes.
    pub modulus: Vec<u8>,
}

impl TpmRsaPublic {
    /// The public exponent, with 0 mapped to 65537.
    pub fn exponent(&self) -> u32 {
        if self.raw_exponent == 0 {
            DEFAULT_EXPONENT
        } else {
            self.raw_exponent
        }
    }

    /// The key as DER SubjectPublicKeyInfo.
    pub fn to_spki_der(&self) -> Result<Vec<u8>, TpmPublicError> {
        to_spki_der(&self.modulus, self.exponent())
    }
}

/// DER SubjectPublicKeyInfo (rsaEncryption) for a big-endian modulus and an exponent
/// (0 means 65537).
pub fn to_spki_der(modulus: &[u8], exponent: u32) -> Result<Vec<u8>, TpmPublicError> {
    let e = if exponent == 0 {
        DEFAULT_EXPONENT
    } else {
        exponent
    };
    let key = RsaPublicKey::new(BigUint::from_bytes_be(modulus), BigUint::from(e))
        .map_err(|_| TpmPublicError::InvalidKey)?;
    key.to_public_key_der()
        .map(|doc| doc.into_vec())
        .map_err(|_| TpmPublicError::Encoding)
}

/// Big-endian reader over the input that reports truncation by field name.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], TpmPublicError> {
        let (head, tail) = self
            .rest
            .split_at_checked(n)
            .ok_or(TpmPublicError::Truncated { field })?;
        self.rest = tail;
        Ok(head)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, TpmPublicError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<2>()
            .ok_or(TpmPublicError::Truncated { field })?;
        self.rest = tail;
        Ok(u16::from_be_bytes(*head))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, TpmPublicError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<4>()
            .ok_or(TpmPublicError::Truncated { field })?;
        self.rest = tail;
        Ok(u32::from_be_bytes(*head))
    }

    fn tpm2b(&mut self, field: &'static str) -> Result<&'a [u8], TpmPublicError> {
        let size = self.u16(field)?;
        self.take(usize::from(size), field)
    }
}

/// Parses a marshalled `TPMT_PUBLIC` of an RSA key; the whole input must be consumed.
pub fn parse(bytes: &[u8]) -> Result<TpmRsaPublic, TpmPublicError> {
    let mut r = Reader { rest: bytes };
    let ty = r.u16("type")?;
    if ty != TPM_ALG_RSA {
        return Err(TpmPublicError::UnsupportedType(ty));
    }
    let name_alg = r.u16("nameAlg")?;
    let object_attributes = r.u32("objectAttributes")?;
    let auth_policy = r.tpm2b("authPolicy")?.to_vec();

    let sym_alg = r.u16("symmetric.algorithm")?;
    let symmetric = match sym_alg {
        TPM_ALG_NULL => None,
        TPM_ALG_AES | TPM_ALG_SM4 | TPM_ALG_CAMELLIA => Some(SymDef {
            algorithm: sym_alg,
            key_bits: r.u16("symmetric.keyBits")?,
            mode: r.u16("symmetric.mode")?,
        }),
        other => return Err(TpmPublicError::UnsupportedSymmetric(other)),
    };

    let scheme = r.u16("scheme.scheme")?;
    let scheme_hash = match scheme {
        TPM_ALG_NULL | TPM_ALG_RSAES => None,
        TPM_ALG_RSASSA | TPM_ALG_RSAPSS | TPM_ALG_OAEP => Some(r.u16("scheme.hashAlg")?),
        other => return Err(TpmPublicError::UnsupportedScheme(other)),
    };

    let key_bits = r.u16("keyBits")?;
    if key_bits == 0 || key_bits % 8 != 0 {
        return Err(TpmPublicError::UnsupportedKeyBits(key_bits));
    }
    let raw_exponent = r.u32("exponent")?;
    let modulus = r.tpm2b("unique")?.to_vec();
    if !r.rest.is_empty() {
        return Err(TpmPublicError::TrailingBytes { len: r.rest.len() });
    }
    let expected = usize::from(key_bits / 8);
    if modulus.len() != expected {
        return Err(TpmPublicError::ModulusLength {
            expected,
            found: modulus.len(),
        });
    }
    Ok(TpmRsaPublic {
        name_alg,
        object_attributes,
        auth_policy,
        symmetric,
        scheme,
        scheme_hash,
        key_bits,
        raw_exponent,
        modulus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::traits::PublicKeyParts;

    // TPMA_OBJECT bits.
    const FIXED_TPM: u32 = 1 << 1;
    const FIXED_PARENT: u32 = 1 << 4;
    const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    const USER_WITH_AUTH: u32 = 1 << 6;
    const DECRYPT: u32 = 1 << 17;
    const SIGN: u32 = 1 << 18;

    const EK_POLICY: &str = "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa";

    fn test_public() -> RsaPublicKey {
        crate::format::envelope::tests::test_key().to_public_key()
    }

    /// Hand-marshals a TPMT_PUBLIC.
    fn build(
        name_alg: u16,
        attrs: u32,
        policy: &[u8],
        sym: &[u8],
        scheme: &[u8],
        exponent: u32,
        modulus: &[u8],
    ) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&TPM_ALG_RSA.to_be_bytes());
        v.extend_from_slice(&name_alg.to_be_bytes());
        v.extend_from_slice(&attrs.to_be_bytes());
        v.extend_from_slice(&(policy.len() as u16).to_be_bytes());
        v.extend_from_slice(policy);
        v.extend_from_slice(sym);
        v.extend_from_slice(scheme);
        v.extend_from_slice(&2048u16.to_be_bytes());
        v.extend_from_slice(&exponent.to_be_bytes());
        v.extend_from_slice(&(modulus.len() as u16).to_be_bytes());
        v.extend_from_slice(modulus);
        v
    }

    /// The registration client's signing key (K10) template filled with the test key's modulus.
    fn mosip_signing_key(exponent: u32) -> Vec<u8> {
        let mut scheme = TPM_ALG_RSASSA.to_be_bytes().to_vec();
        scheme.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        build(
            TPM_ALG_SHA1,
            FIXED_TPM | FIXED_PARENT | SIGN | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH,
            &[],
            &TPM_ALG_NULL.to_be_bytes(),
            &scheme,
            exponent,
            &test_public().n().to_bytes_be(),
        )
    }

    #[test]
    fn parses_mosip_signing_key_and_matches_spki() {
        let bytes = mosip_signing_key(65537);
        // Hand-checked prefix: type RSA, nameAlg SHA1, attrs 0x00040072, empty policy, sym NULL,
        // RSASSA/SHA256, 2048 bits, exponent 0x00010001, unique size 0x0100.
        assert_eq!(
            hex::encode(&bytes[..24]),
            "0001000400040072000000100014000b0800000100010100"
        );
        let p = parse(&bytes).expect("parse");
        assert_eq!(p.name_alg, TPM_ALG_SHA1);
        assert_eq!(p.object_attributes, 0x0004_0072);
        assert!(p.auth_policy.is_empty());
        assert_eq!(p.symmetric, None);
        assert_eq!(p.scheme, TPM_ALG_RSASSA);
        assert_eq!(p.scheme_hash, Some(TPM_ALG_SHA256));
        assert_eq!(p.key_bits, 2048);
        assert_eq!(p.exponent(), 65537);
        assert_eq!(p.modulus.len(), 256);
        let expected = test_public().to_public_key_der().expect("der").into_vec();
        assert_eq!(p.to_spki_der().expect("spki"), expected);
    }

    #[test]
    fn zero_exponent_means_65537() {
        let p = parse(&mosip_signing_key(0)).expect("parse");
        assert_eq!(p.raw_exponent, 0);
        assert_eq!(p.exponent(), 65537);
        let expected = test_public().to_public_key_der().expect("der").into_vec();
        assert_eq!(p.to_spki_der().expect("spki"), expected);
    }

    #[test]
    fn parses_mosip_encryption_key_and_storage_style_symmetric() {
        let policy = hex::decode(EK_POLICY).expect("hex");
        let mut scheme = TPM_ALG_OAEP.to_be_bytes().to_vec();
        scheme.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        let modulus = test_public().n().to_bytes_be();
        let attrs = FIXED_TPM | FIXED_PARENT | DECRYPT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH;
        let bytes = build(
            TPM_ALG_SHA256,
            attrs,
            &policy,
            &TPM_ALG_NULL.to_be_bytes(),
            &scheme,
            0,
            &modulus,
        );
        let p = parse(&bytes).expect("parse");
        assert_eq!(p.auth_policy, policy);
        assert_eq!(p.scheme, TPM_ALG_OAEP);
        assert_eq!(p.scheme_hash, Some(TPM_ALG_SHA256));
        assert_eq!(p.object_attributes, attrs);

        // AES-128-CFB symmetric, NULL scheme (a storage key).
        let sym = [0x00, 0x06, 0x00, 0x80, 0x00, 0x43];
        let bytes = build(
            TPM_ALG_SHA256,
            attrs,
            &[],
            &sym,
            &TPM_ALG_NULL.to_be_bytes(),
            0,
            &modulus,
        );
        let p = parse(&bytes).expect("parse");
        assert_eq!(
            p.symmetric,
            Some(SymDef {
                algorithm: TPM_ALG_AES,
                key_bits: 128,
                mode: 0x0043
            })
        );
        assert_eq!(p.scheme_hash, None);
    }

    #[test]
    fn truncation_at_every_length() {
        let bytes = mosip_signing_key(65537);
        for len in 0..bytes.len() {
            assert!(
                matches!(parse(&bytes[..len]), Err(TpmPublicError::Truncated { .. })),
                "len {len}"
            );
        }
        assert_eq!(
            parse(&bytes[..0]),
            Err(TpmPublicError::Truncated { field: "type" })
        );
        assert_eq!(
            parse(&bytes[..30]),
            Err(TpmPublicError::Truncated { field: "unique" })
        );
    }

    #[test]
    fn rejects_unsupported_and_inconsistent() {
        let good = mosip_signing_key(65537);
        // ECC object.
        let mut ecc = good.clone();
        ecc[..2].copy_from_slice(&0x0023u16.to_be_bytes());
        assert_eq!(parse(&ecc), Err(TpmPublicError::UnsupportedType(0x0023)));
        // Unknown symmetric algorithm (offset 10).
        let mut sym = good.clone();
        sym[10..12].copy_from_slice(&0x0099u16.to_be_bytes());
        assert_eq!(
            parse(&sym),
            Err(TpmPublicError::UnsupportedSymmetric(0x0099))
        );
        // ECDSA scheme (offset 12).
        let mut sch = good.clone();
        sch[12..14].copy_from_slice(&0x0018u16.to_be_bytes());
        assert_eq!(parse(&sch), Err(TpmPublicError::UnsupportedScheme(0x0018)));
        // keyBits not a byte multiple (offset 16).
        let mut kb = good.clone();
        kb[16..18].copy_from_slice(&2047u16.to_be_bytes());
        assert_eq!(parse(&kb), Err(TpmPublicError::UnsupportedKeyBits(2047)));
        // keyBits 1024 with a 256-byte modulus.
        let mut kb = good.clone();
        kb[16..18].copy_from_slice(&1024u16.to_be_bytes());
        assert_eq!(
            parse(&kb),
            Err(TpmPublicError::ModulusLength {
                expected: 128,
                found: 256
            })
        );
        // Trailing bytes.
        let mut trail = good.clone();
        trail.push(0);
        assert_eq!(parse(&trail), Err(TpmPublicError::TrailingBytes { len: 1 }));
        // Template with empty unique.
        let mut scheme = TPM_ALG_RSASSA.to_be_bytes().to_vec();
        scheme.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        let template = build(
            TPM_ALG_SHA1,
            0,
            &[],
            &TPM_ALG_NULL.to_be_bytes(),
            &scheme,
            0,
            &[],
        );
        assert_eq!(
            parse(&template),
            Err(TpmPublicError::ModulusLength {
                expected: 256,
                found: 0
            })
        );
    }

    #[test]
    fn to_spki_der_rejects_invalid_key() {
        assert_eq!(to_spki_der(&[], 65537), Err(TpmPublicError::InvalidKey));
        assert_eq!(
            to_spki_der(&test_public().n().to_bytes_be(), 1),
            Err(TpmPublicError::InvalidKey)
        );
    }
}
