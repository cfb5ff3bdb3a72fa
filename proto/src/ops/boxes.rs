//! `box.*`: idOS's `nacl.box` (x25519-xsalsa20-poly1305) with custody keys: sealing to a public
//! key with a fresh ephemeral key, opening with an `x25519` key, re-encrypting for an access grant
//! without the plaintext reaching the caller, and idOS's password-derived key.
//!
//! Content is `nonce(24) ‖ tag(16) ‖ ciphertext`; the encryptor's (ephemeral) public key travels
//! beside it. Keys and content are CBOR byte strings (clients that speak idOS's storage encoding
//! convert standard base64 at their edge). Content hashes are SHA-256 of the plaintext as 64
//! lowercase hex digits (idOS's grant `content_hash`).

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::KeyInfo;
use crate::error::WireError;

/// A secret as it travels: `box.derive`'s password (UTF-8 bytes), `tpm.clear-lockout`'s
/// authorization value (raw bytes). Zeroized on drop, never printed.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(transparent)]
pub struct Password(#[serde(with = "serde_bytes")] Vec<u8>);

impl Password {
    /// A secret from its bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Password(bytes)
    }

    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(redacted)")
    }
}

/// `box.seal` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct BoxSealArgs {
    /// Recipient X25519 public key (32 bytes).
    #[serde(with = "serde_bytes")]
    pub to_public_key: Vec<u8>,
    /// The message.
    #[serde(with = "serde_bytes")]
    pub plaintext: Vec<u8>,
}

/// A sealed message: `box.seal` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct BoxSealResult {
    /// `nonce(24) ‖ tag(16) ‖ ciphertext`.
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
    /// The fresh ephemeral public key (32 bytes), stored beside the content.
    #[serde(with = "serde_bytes")]
    pub encryptor_public_key: Vec<u8>,
}

/// `box.open` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct BoxOpenArgs {
    /// Key name (an `x25519` key).
    pub key: String,
    /// Version (default: the current one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The encryptor's public key (32 bytes).
    #[serde(with = "serde_bytes")]
    pub encryptor_public_key: Vec<u8>,
    /// `nonce(24) ‖ tag(16) ‖ ciphertext`.
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
}

/// `box.reencrypt` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct BoxReencryptArgs {
    /// Key name (an `x25519` key the content is sealed to).
    pub key: String,
    /// Version (default: the current one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The encryptor's public key (32 bytes).
    #[serde(with = "serde_bytes")]
    pub encryptor_public_key: Vec<u8>,
    /// `nonce(24) ‖ tag(16) ‖ ciphertext`.
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
    /// The grantee's X25519 public key (32 bytes).
    #[serde(with = "serde_bytes")]
    pub to_public_key: Vec<u8>,
    /// The grant's `content_hash` (64 hex digits): refused with `integrity` unless the
    /// plaintext's SHA-256 matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_content_hash: Option<String>,
}

/// `box.reencrypt` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct BoxReencryptResult {
    /// Key name.
    pub key: String,
    /// Version that opened the content.
    pub version: u32,
    /// The new content, sealed to the grantee.
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
    /// Its fresh ephemeral public key (32 bytes).
    #[serde(with = "serde_bytes")]
    pub encryptor_public_key: Vec<u8>,
    /// SHA-256 of the plaintext, 64 lowercase hex digits.
    pub content_hash: String,
}

/// One credential of a `box.reencrypt.batch`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct BoxReencryptItem {
    /// The encryptor's public key (32 bytes).
    #[serde(with = "serde_bytes")]
    pub encryptor_public_key: Vec<u8>,
    /// `nonce(24) ‖ tag(16) ‖ ciphertext`.
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
    /// Expected SHA-256 of the plaintext (64 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_content_hash: Option<String>,
}

/// `box.reencrypt.batch` arguments: many credentials for one grantee.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct BoxReencryptBatchArgs {
    /// Key name (an `x25519` key).
    pub key: String,
    /// Version (default: the current one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The grantee's X25519 public key (32 bytes).
    #[serde(with = "serde_bytes")]
    pub to_public_key: Vec<u8>,
    /// 1 to 1024 credentials.
    pub items: Vec<BoxReencryptItem>,
}

/// One result of a `box.reencrypt.batch`: `content`, `encryptor_public_key` and
/// `content_hash`, or `err`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct BoxReencrypted {
    /// The new content.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<u8>>,
    /// Its ephemeral public key.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub encryptor_public_key: Option<Vec<u8>>,
    /// SHA-256 of the plaintext, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    /// The item's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<WireError>,
}

/// `box.reencrypt.batch` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct BoxReencryptBatchResult {
    /// Key name.
    pub key: String,
    /// Version that opened the contents.
    pub version: u32,
    /// One per item, in order.
    pub results: Vec<BoxReencrypted>,
}

/// `box.derive` arguments: idOS's password-derived X25519 key.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct BoxDeriveArgs {
    /// The user id: a UUID in hyphenated text form, used as given (UTF-8) as the scrypt salt.
    pub salt: String,
    /// The password, UTF-8 (NFKC-normalised by the daemon); not empty.
    pub password: Password,
    /// The public key (32 bytes) the password must yield; refused with `integrity` otherwise.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub check_public_key: Option<Vec<u8>>,
    /// Keep the derived secret as a new software `x25519` key of this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<String>,
    /// The master (an `aes256` key in hardware) to wrap an imported secret under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
}

/// `box.derive` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct BoxDeriveResult {
    /// The derived X25519 public key (32 bytes).
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
    /// The key created by `import`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyInfo>,
}
