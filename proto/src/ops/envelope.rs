//! `envelope.seal`, `envelope.open`, `rewrap`: MOSIP `VER_R2` envelopes and re-targeting.

use serde::{Deserialize, Serialize};

/// `envelope.seal` arguments: exactly one of `key` and `public_key`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct SealArgs {
    /// Key name (current version of an `rsa2048-oaep` key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// External recipient: DER SubjectPublicKeyInfo of an RSA-2048 key.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub public_key: Option<Vec<u8>>,
    /// Data to seal.
    #[serde(with = "serde_bytes")]
    pub plaintext: Vec<u8>,
}

/// `envelope.seal` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct SealResult {
    /// The `VER_R2` envelope, raw bytes.
    #[serde(with = "serde_bytes")]
    pub envelope: Vec<u8>,
    /// Thumbprint of the recipient key.
    #[serde(with = "serde_bytes")]
    pub thumbprint: Vec<u8>,
    /// Key version used, when sealed to a named key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// `envelope.open` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct OpenArgs {
    /// Key name; the version is chosen by the thumbprint inside the envelope.
    pub key: String,
    /// The `VER_R2` envelope, raw bytes.
    #[serde(with = "serde_bytes")]
    pub envelope: Vec<u8>,
}

/// `rewrap` arguments: exactly one of `to_key` and `to_public_key`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct RewrapArgs {
    /// Key that can open `input` now.
    pub key: String,
    /// A `VER_R2` envelope, or a wrapped data key (256 bytes, or thumbprint ‖ 256 bytes).
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
    /// Target key name (its current version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_key: Option<String>,
    /// Target external public key (DER SubjectPublicKeyInfo, RSA-2048).
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub to_public_key: Option<Vec<u8>>,
}

/// `rewrap` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct RewrapResult {
    /// `envelope` or `wrapped_key`: what `input` was and `output` is.
    pub form: String,
    /// The re-targeted envelope, or `thumbprint(32) ‖ RSA-OAEP-SHA256(data key)(256)`.
    #[serde(with = "serde_bytes")]
    pub output: Vec<u8>,
    /// Thumbprint of the target key.
    #[serde(with = "serde_bytes")]
    pub thumbprint: Vec<u8>,
    /// Target version, when re-targeted to a named key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}
