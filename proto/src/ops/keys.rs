//! `keys.*`: key administration and public keys.

use serde::{Deserialize, Serialize};

/// `keys.create` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct KeyCreateArgs {
    /// Key name: 1–64 characters of `A-Za-z0-9._-`.
    pub name: String,
    /// `rsa2048-sign`, `rsa2048-oaep` or `aes256`.
    pub kind: String,
    /// `tpm`, `pkcs11` or `wrapped`.
    pub backend: String,
    /// `default` or `mosip` (TPM only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Master key name for the `wrapped` backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// Validity of each version in days (default from config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_days: Option<u32>,
    /// Days before expiry at which a version stops being current (default from config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_expire_days: Option<u32>,
}

/// Arguments naming a key.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct KeyNameArgs {
    /// Key name.
    pub name: String,
}

/// Arguments naming a key version.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct KeyVersionArgs {
    /// Key name.
    pub name: String,
    /// Version number.
    pub version: u32,
}

/// `keys.list` arguments (none).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct KeyListArgs {}

/// One version of a key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct VersionInfo {
    /// Version number, from 1.
    pub version: u32,
    /// `active`, `decrypt-only`, `retired` or `destroyed`.
    pub state: String,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Expiry time, Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the DER SubjectPublicKeyInfo (asymmetric kinds).
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub thumbprint: Option<Vec<u8>>,
    /// Every thumbprint the version answers to: the SPKI's, then each certificate's, oldest
    /// first (omitted for kinds without a public key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thumbprints: Vec<ThumbprintInfo>,
    /// True for a version adopted from the token (`keys.adopt`): custodyd never destroys its
    /// object (omitted when false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
}

/// One thumbprint of a key version and what it is over.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct ThumbprintInfo {
    /// SHA-256 over `over`.
    #[serde(with = "serde_bytes")]
    pub thumbprint: Vec<u8>,
    /// `spki` (the DER SubjectPublicKeyInfo) or `certificate` (the DER certificate).
    pub over: String,
    /// For a certificate: its subject (RFC 4514).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// For a certificate: its issuer (RFC 4514).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// For a certificate: its notAfter, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
}

/// A key and its versions.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct KeyInfo {
    /// Key name.
    pub name: String,
    /// Kind name.
    pub kind: String,
    /// Backend name.
    pub backend: String,
    /// Template name.
    pub template: String,
    /// Version used for new signatures and encryptions.
    pub current_version: u32,
    /// Every version, oldest first.
    pub versions: Vec<VersionInfo>,
}

/// `keys.list` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct KeyListResult {
    /// All keys, by name.
    pub keys: Vec<KeyInfo>,
}

/// `keys.public` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct PublicKeyArgs {
    /// Key name.
    pub name: String,
    /// Version (default: current).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// `der` (SubjectPublicKeyInfo, default), `pem`, or `tpmt` (TPM keys: marshalled TPMT_PUBLIC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// `keys.public` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct PublicKeyResult {
    /// Key name.
    pub name: String,
    /// Version returned.
    pub version: u32,
    /// Format of `data`.
    pub format: String,
    /// The public key in that format (PEM as UTF-8 bytes).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// SHA-256 of the DER SubjectPublicKeyInfo.
    #[serde(with = "serde_bytes")]
    pub thumbprint: Vec<u8>,
    /// MOSIP key index: SHA-256 over the registered public key bytes (TPMT_PUBLIC for TPM keys,
    /// else the DER SPKI) as lowercase hex pairs joined by `:`.
    pub key_index: String,
    /// Every thumbprint the version answers to (SPKI, then certificates, oldest first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thumbprints: Vec<ThumbprintInfo>,
}
