//! `keys.cert`, `keys.csr`, `keys.cert-import`, `keys.cert-export`, `keys.import`: X.509
//! certificates on key versions, and public-only keys for outside recipients.

use serde::{Deserialize, Serialize};

/// `keys.cert` arguments: a certificate for a version's public key, signed inside the TPM/HSM by
/// the issuer key (exactly one of `issuer` and `self_signed`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct CertArgs {
    /// Key whose version gets the certificate.
    pub name: String,
    /// Version (default: current).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Issuer: an `rsa2048-sign` key whose current version has a CA certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Self-signed by the key itself (an `rsa2048-sign` key).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub self_signed: bool,
    /// A CA certificate (`cA=true`, `keyCertSign`, `cRLSign`; `rsa2048-sign` keys only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ca: bool,
    /// Subject, RFC 4514 (e.g. `CN=IDA partner,O=MOSIP,C=IN`).
    pub subject: String,
    /// Validity in days from now (default: until the version's `not_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<u32>,
}

/// A certificate on a key version.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct CertResult {
    /// Key name.
    pub name: String,
    /// Version the certificate belongs to.
    pub version: u32,
    /// The DER certificate.
    #[serde(with = "serde_bytes")]
    pub certificate: Vec<u8>,
    /// SHA-256 of `certificate` (MOSIP's certificate thumbprint).
    #[serde(with = "serde_bytes")]
    pub thumbprint: Vec<u8>,
}

/// `keys.csr` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct CsrArgs {
    /// An `rsa2048-sign` key.
    pub name: String,
    /// Version (default: current).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Subject, RFC 4514.
    pub subject: String,
}

/// `keys.csr` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct CsrResult {
    /// Key name.
    pub name: String,
    /// Version that signed the request.
    pub version: u32,
    /// The DER PKCS#10 certification request.
    #[serde(with = "serde_bytes")]
    pub csr: Vec<u8>,
}

/// `keys.cert-import` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct CertImportArgs {
    /// Key whose version gets the certificate.
    pub name: String,
    /// Version (default: current).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The certificate, PEM or DER; its public key must be the version's.
    #[serde(with = "serde_bytes")]
    pub certificate: Vec<u8>,
}

/// `keys.cert-export` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct CertExportArgs {
    /// Key name.
    pub name: String,
    /// Version (default: current).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Also the issuers' certificates the daemon knows, up to a self-issued one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chain: bool,
}

/// `keys.cert-export` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct CertExportResult {
    /// Key name.
    pub name: String,
    /// Version.
    pub version: u32,
    /// DER certificates: the version's newest first, then (with `chain`) its issuer's, and so on.
    #[cfg_attr(feature = "arbitrary", arbitrary(with = super::arbitrary_byte_bufs))]
    pub certificates: Vec<serde_bytes::ByteBuf>,
}

/// `keys.import` arguments: a public-only key (backend `external`) for an outside recipient.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct KeyImportArgs {
    /// Key name; importing again adds a version.
    pub name: String,
    /// `rsa2048-oaep` (default: a recipient) or `rsa2048-sign` (e.g. a partner's CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A certificate or a public key (SubjectPublicKeyInfo), PEM or DER.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}
