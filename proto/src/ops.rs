//! Typed arguments and results of every operation. Field names are the CBOR map keys; byte fields
//! are CBOR byte strings; optional fields may be omitted. PROTOCOL.md documents each one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::error::WireError;

/// Operation names.
pub mod names {
    /// Protocol version negotiation; must be the first request on a connection.
    pub const HELLO: &str = "hello";
    /// Liveness check; echoes `data`.
    pub const PING: &str = "ping";
    /// Server version, uptime, backend health, per-op counters.
    pub const STATUS: &str = "status";
    /// Create a key (admin).
    pub const KEYS_CREATE: &str = "keys.create";
    /// List keys.
    pub const KEYS_LIST: &str = "keys.list";
    /// Show one key with its versions.
    pub const KEYS_SHOW: &str = "keys.show";
    /// New current version (admin).
    pub const KEYS_ROTATE: &str = "keys.rotate";
    /// Retire a version (admin).
    pub const KEYS_RETIRE: &str = "keys.retire";
    /// Destroy a non-current version in the backend (admin).
    pub const KEYS_DESTROY: &str = "keys.destroy";
    /// Public key of a version.
    pub const KEYS_PUBLIC: &str = "keys.public";
    /// Sign data or a SHA-256 digest.
    pub const SIGN: &str = "sign";
    /// Sign many digests; each item succeeds or fails on its own.
    pub const SIGN_BATCH: &str = "sign.batch";
    /// Sign a JWT payload as compact JWS RS256.
    pub const SIGN_JWT: &str = "sign.jwt";
    /// RSA-OAEP-SHA256 decrypt.
    pub const DECRYPT: &str = "decrypt";
    /// RSA-OAEP-SHA256 unwrap of a data key, version chosen by thumbprint or number.
    pub const UNWRAP: &str = "unwrap";
    /// Seal a MOSIP `VER_R2` envelope.
    pub const ENVELOPE_SEAL: &str = "envelope.seal";
    /// Open a MOSIP `VER_R2` envelope.
    pub const ENVELOPE_OPEN: &str = "envelope.open";
    /// Re-target a wrapped key or an envelope to another key without revealing the data key.
    pub const REWRAP: &str = "rewrap";
    /// Not an op: the right, checked on the source key, to `rewrap` to an external public key.
    pub const REWRAP_EXTERNAL: &str = "rewrap.external";

    /// Every op the server knows.
    pub const ALL: &[&str] = &[
        HELLO,
        PING,
        STATUS,
        KEYS_CREATE,
        KEYS_LIST,
        KEYS_SHOW,
        KEYS_ROTATE,
        KEYS_RETIRE,
        KEYS_DESTROY,
        KEYS_PUBLIC,
        SIGN,
        SIGN_BATCH,
        SIGN_JWT,
        DECRYPT,
        UNWRAP,
        ENVELOPE_SEAL,
        ENVELOPE_OPEN,
        REWRAP,
    ];
}

/// `hello` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HelloArgs {
    /// Protocol version the client speaks.
    pub version: u32,
    /// Free-form client name (logged at debug level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// `hello` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HelloResult {
    /// The version both sides now speak.
    pub version: u32,
    /// Server name and version, e.g. `custodyd 0.1.0`.
    pub server: String,
    /// Largest frame body the server accepts.
    pub max_frame: u32,
    /// Requests the server processes at once per connection; more are read when one finishes.
    pub max_in_flight: u32,
}

/// `ping` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PingArgs {
    /// Bytes to echo back (at most 1 KiB).
    #[serde(default, with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// `ping` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PingResult {
    /// The bytes sent.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// `status` arguments (none).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatusArgs {}

/// Health of one backend.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendStatus {
    /// `tpm`, `pkcs11` or `wrapped`.
    pub name: String,
    /// True when it answered its last probe.
    pub ok: bool,
    /// One line for humans.
    pub detail: String,
}

/// Per-op counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OpCounter {
    /// Successful requests.
    pub ok: u64,
    /// Failed requests (any error code).
    pub err: u64,
}

/// `status` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusResult {
    /// Server name and version.
    pub server: String,
    /// Protocol version.
    pub protocol: u32,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// Open connections now.
    pub connections: u64,
    /// Configured backends and their health.
    pub backends: Vec<BackendStatus>,
    /// Counters by op name, since start.
    pub ops: BTreeMap<String, OpCounter>,
}

/// `keys.create` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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
pub struct KeyNameArgs {
    /// Key name.
    pub name: String,
}

/// Arguments naming a key version.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KeyVersionArgs {
    /// Key name.
    pub name: String,
    /// Version number.
    pub version: u32,
}

/// `keys.list` arguments (none).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KeyListArgs {}

/// One version of a key.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
}

/// A key and its versions.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
pub struct KeyListResult {
    /// All keys, by name.
    pub keys: Vec<KeyInfo>,
}

/// `keys.public` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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
}

/// `sign` arguments: exactly one of `data` and `digest`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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
pub struct SignBatchArgs {
    /// Key name.
    pub key: String,
    /// SHA-256 digests, 32 bytes each (at most 1024 items).
    pub digests: Vec<serde_bytes::ByteBuf>,
    /// `pkcs1v15` (default) or `pss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
}

/// One item of a batch result: `signature` or `err`.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
pub struct SignJwtArgs {
    /// Key name (an `rsa2048-sign` key).
    pub key: String,
    /// JWT claims: a JSON object, UTF-8; embedded byte for byte.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// `sign.jwt` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
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

/// `decrypt` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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

/// `envelope.seal` arguments: exactly one of `key` and `public_key`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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
pub struct OpenArgs {
    /// Key name; the version is chosen by the thumbprint inside the envelope.
    pub key: String,
    /// The `VER_R2` envelope, raw bytes.
    #[serde(with = "serde_bytes")]
    pub envelope: Vec<u8>,
}

/// `rewrap` arguments: exactly one of `to_key` and `to_public_key`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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
