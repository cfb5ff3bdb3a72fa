//! `decrypt`, `unwrap`: RSA-OAEP-SHA256 with a version of a decryption key.

use serde::{Deserialize, Serialize};

/// `decrypt` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct DecryptArgs {
    /// Key name (an `rsa2048-oaep` key).
    pub key: String,
    /// RSA-OAEP-SHA256 ciphertext (256 bytes).
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
    /// OAEP label (default empty; MOSIP's TPM convention is one 0x00 byte).
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub label: Option<Vec<u8>>,
    /// Version (default: current).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// `decrypt` / `unwrap` / `envelope.open` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct PlaintextResult {
    /// Key name.
    pub key: String,
    /// Version that decrypted.
    pub version: u32,
    /// The plaintext.
    #[serde(with = "serde_bytes")]
    pub plaintext: Vec<u8>,
}

/// `unwrap` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct UnwrapArgs {
    /// Key name (an `rsa2048-oaep` key).
    pub key: String,
    /// RSA-OAEP-SHA256 wrapped data key (256 bytes), optionally preceded by the 32-byte
    /// thumbprint of the key version it was wrapped to (288 bytes then).
    #[serde(with = "serde_bytes")]
    pub wrapped: Vec<u8>,
    /// Prefix (1–32 bytes) of the thumbprint of the version to use.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub thumbprint: Option<Vec<u8>>,
    /// Version to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}
