//! `sign`, `sign.batch`, `sign.jwt`: signatures with the current version of a signing key.

use serde::{Deserialize, Serialize};

use crate::error::WireError;

/// `sign` arguments: exactly one of `data` and `digest`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct SignArgs {
    /// Key name.
    pub key: String,
    /// Data to hash with SHA-256 and sign.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<u8>>,
    /// A 32-byte SHA-256 digest to sign as is.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub digest: Option<Vec<u8>>,
    /// `pkcs1v15` (default) or `pss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
}

/// `sign` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct SignResult {
    /// Key name.
    pub key: String,
    /// Version that signed.
    pub version: u32,
    /// Raw signature (256 bytes for RSA-2048).
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// `sign.batch` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct SignBatchArgs {
    /// Key name.
    pub key: String,
    /// SHA-256 digests, 32 bytes each (at most 1024 items).
    #[cfg_attr(feature = "arbitrary", arbitrary(with = super::arbitrary_byte_bufs))]
    pub digests: Vec<serde_bytes::ByteBuf>,
    /// `pkcs1v15` (default) or `pss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
}

/// One item of a batch result: `signature` or `err`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct BatchItem {
    /// Signature, on success.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub signature: Option<Vec<u8>>,
    /// Error, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<WireError>,
}

/// `sign.batch` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct SignBatchResult {
    /// Key name.
    pub key: String,
    /// Version that signed.
    pub version: u32,
    /// One item per digest, in order.
    pub results: Vec<BatchItem>,
}

/// `sign.jwt` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct SignJwtArgs {
    /// Key name (an `rsa2048-sign` key).
    pub key: String,
    /// JWT claims: a JSON object, UTF-8; embedded byte for byte.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// `sign.jwt` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct SignJwtResult {
    /// Key name.
    pub key: String,
    /// Version that signed.
    pub version: u32,
    /// `kid` put in the header: the key index of that version.
    pub kid: String,
    /// Compact JWS: `b64url(header).b64url(payload).b64url(signature)`.
    pub jwt: String,
}
