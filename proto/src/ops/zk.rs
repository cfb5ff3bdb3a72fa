//! `zk.*` and `keys.adopt`: MOSIP's zero-knowledge key pool (K9 / K18 masters, ZKn pool keys),
//! byte-exact with MOSIP's keymanager and IDA, and taking over keys a MOSIP deployment already
//! holds in its HSM.
//!
//! An encrypted attribute is `index(4, BE) ‖ nonce(12) ‖ aad(32) ‖ AES-256-GCM ciphertext ‖
//! tag(16)` under ZKn' = AES-256-ECB(ZKn, SHA-256(utf8 id)); on the wire it is a CBOR byte string
//! (MOSIP's text form is its base64url without padding). A share string is MOSIP's
//! `encryptedRandomKey`: `base64url(thumbprint(32) ‖ RSA-OAEP-SHA256(ZKn))` per recipient, joined
//! with `.`.

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// `zk.init` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct ZkInitArgs {
    /// Pool name (same rules as key names; roles match it against their `keys` patterns).
    pub pool: String,
    /// The `aes256` master key in hardware the pool keys are wrapped under (K9, K18).
    pub master: String,
    /// Number of pool keys: indices `0..size` (default 10,000; at most 100,000; 0 for a pool that
    /// only receives keys by `zk.import`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    /// Recipient keys (`rsa2048-oaep`, e.g. IDA's K22 imported from its certificate) every
    /// encryption's share string is made for; replaces the pool's list when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_to: Option<Vec<String>>,
}

/// `zk.show` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct ZkShowArgs {
    /// Pool name.
    pub pool: String,
    /// Unwrap every pool key and report the ones that fail.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify: bool,
}

/// Pool keys wrapped under one master version.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct ZkMasterCount {
    /// Master key version.
    pub version: u32,
    /// Pool keys wrapped under it.
    pub keys: u64,
}

/// A pool: `zk.init`, `zk.show`, `zk.rotate-master` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct ZkPoolInfo {
    /// Pool name.
    pub pool: String,
    /// Master key name.
    pub master: String,
    /// Number of pool keys.
    pub size: u64,
    /// Lowest index present (absent for an empty pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_index: Option<u32>,
    /// Highest index present (absent for an empty pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_index: Option<u32>,
    /// Pool keys per master version.
    pub masters: Vec<ZkMasterCount>,
    /// Share recipients.
    pub share_to: Vec<String>,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// The master version an unfinished rotation moves keys to (absent when none is under way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotating_to: Option<u32>,
    /// `zk.show` with `verify`: pool keys that unwrapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<u64>,
    /// `zk.show` with `verify`: indices whose key did not unwrap (at most 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Vec<u32>>,
    /// Share segments the daemon holds ready for this pool (made once per pool index and
    /// recipient version, then reused; `zk.init` makes them in the background).
    #[serde(default)]
    pub shares_cached: u64,
    /// `zk.rotate-master`: keys re-wrapped by this call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrapped: Option<u64>,
}

/// One attribute: MOSIP's `{identifier, value}`.
#[derive(Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct ZkAttribute {
    /// The attribute's name (free text, returned as given).
    pub identifier: String,
    /// Plaintext (to `zk.encrypt`, from `zk.decrypt`) or the encrypted attribute (raw layout).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

impl std::fmt::Debug for ZkAttribute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkAttribute")
            .field("identifier", &self.identifier)
            .field("value", &format_args!("{} bytes", self.value.len()))
            .finish()
    }
}

impl Zeroize for ZkAttribute {
    fn zeroize(&mut self) {
        self.value.zeroize();
    }
}

/// `zk.encrypt` and `zk.decrypt` arguments. Their `Debug` shows neither the id (knowing it is
/// what lets one decrypt) nor the values.
#[derive(Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct ZkCryptArgs {
    /// Pool name.
    pub pool: String,
    /// The person's id (UIN or VID), 1 to 256 bytes of UTF-8.
    pub id: String,
    /// 1 to 1,024 attributes.
    pub attributes: Vec<ZkAttribute>,
}

impl std::fmt::Debug for ZkCryptArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkCryptArgs")
            .field("pool", &self.pool)
            .field("id", &"(redacted)")
            .field("attributes", &self.attributes)
            .finish()
    }
}

/// `zk.encrypt` result: MOSIP's `zkEncrypt` response.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct ZkEncryptResult {
    /// The pool index used for every attribute (MOSIP's `rankomKeyIndex`).
    pub index: u32,
    /// MOSIP's `encryptedRandomKey`: one segment per share recipient, joined with `.`; empty
    /// when the pool has no recipients.
    pub share: String,
    /// The encrypted attributes, in request order.
    pub attributes: Vec<ZkAttribute>,
}

/// `zk.decrypt` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct ZkDecryptResult {
    /// The plaintexts, in request order.
    pub attributes: Vec<ZkAttribute>,
}

/// `zk.share` arguments: exactly one of `to` and `to_public_key`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct ZkShareArgs {
    /// Pool name.
    pub pool: String,
    /// Pool index.
    pub index: u32,
    /// Recipient key name (`rsa2048-oaep`; addressed by its newest certificate's thumbprint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Recipient public key: DER SubjectPublicKeyInfo of an RSA-2048 key.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub to_public_key: Option<Vec<u8>>,
}

/// `zk.share` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct ZkShareResult {
    /// The share segment: `base64url(thumbprint ‖ RSA-OAEP-SHA256(ZKn))`.
    pub share: String,
    /// The recipient thumbprint written into it.
    #[serde(with = "serde_bytes")]
    pub thumbprint: Vec<u8>,
    /// Recipient key version, when named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// `zk.import` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct ZkImportArgs {
    /// The (IDA-side) pool to store the key in, under its master (K18).
    pub pool: String,
    /// The `rsa2048-oaep` key (K22) whose version the share is addressed to.
    pub key: String,
    /// MOSIP's whole share string (`.`-joined segments); the segment whose thumbprint matches a
    /// version of `key` (certificate or SPKI) is used.
    pub share: String,
    /// The pool index the key belongs at (MOSIP's `rankomKeyIndex`).
    pub index: u32,
}

/// `zk.import` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct ZkImportResult {
    /// The index.
    pub index: u32,
    /// False when the pool already held this very key at the index (nothing changed).
    pub imported: bool,
    /// Thumbprint of the segment used.
    #[serde(with = "serde_bytes")]
    pub thumbprint: Vec<u8>,
    /// Version of `key` that decrypted it.
    pub version: u32,
}

/// `zk.rotate-master` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct ZkPoolArgs {
    /// Pool name.
    pub pool: String,
}

/// `zk.import-mosip` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct ZkImportMosipArgs {
    /// Pool name; created (size 0, under `master`) when it does not exist.
    pub pool: String,
    /// The `aes256` key the export's keys are AES-ECB-wrapped under (MOSIP's K9, adopted).
    pub master: String,
    /// The export: CSV lines `id,key` from MOSIP's `data_encrypt_keystore` (`key` = base64 of
    /// AES-ECB-nopad(K9, ZKn)); an `id,key` header and blank lines are allowed.
    pub export: String,
}

/// `zk.import-mosip` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct ZkImportMosipResult {
    /// Pool name.
    pub pool: String,
    /// Rows in the export.
    pub rows: u64,
    /// Keys added (rows whose index already held the same key are not counted).
    pub imported: u64,
}

/// `keys.adopt` arguments: exactly one of `label` and `id`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct KeyAdoptArgs {
    /// Name to register the key under.
    pub name: String,
    /// `aes256`, `rsa2048-oaep` or `rsa2048-sign`.
    pub kind: String,
    /// The object's `CKA_LABEL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The object's `CKA_ID`.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub id: Option<Vec<u8>>,
}
