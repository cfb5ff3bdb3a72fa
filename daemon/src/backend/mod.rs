//! Key backends: where private key material lives (TPM, PKCS#11 HSM, or wrapped in software).
//!
//! Every backend is reached through the small, blocking [`Backend`] trait. Operation code calls it
//! from a blocking worker thread (never from the async runtime) and never knows which backend holds a
//! key. A key is addressed by its opaque `backend_ref`, a string the backend produced when the key was
//! created and the registry stores.

pub mod pkcs11;
pub mod tpm;

use std::fmt;

use zeroize::Zeroizing;

/// What a key is and what it may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// RSA-2048 signing key (RSASSA-PKCS1-v1_5 or PSS, SHA-256).
    Rsa2048Sign,
    /// RSA-2048 decryption key (RSA-OAEP, SHA-256, MGF1-SHA-256).
    Rsa2048Oaep,
    /// AES-256 secret key (master key for wrapping, data encryption).
    Aes256,
}

impl KeyKind {
    /// The name used in config, on the wire and in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Rsa2048Sign => "rsa2048-sign",
            KeyKind::Rsa2048Oaep => "rsa2048-oaep",
            KeyKind::Aes256 => "aes256",
        }
    }

    /// Parses a kind name; `None` for an unknown name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "rsa2048-sign" => Some(KeyKind::Rsa2048Sign),
            "rsa2048-oaep" => Some(KeyKind::Rsa2048Oaep),
            "aes256" => Some(KeyKind::Aes256),
            _ => None,
        }
    }

    /// True for kinds that have a public key.
    pub fn is_asymmetric(self) -> bool {
        matches!(self, KeyKind::Rsa2048Sign | KeyKind::Rsa2048Oaep)
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which backend holds a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// The machine's TPM 2.0 (tss-esapi).
    Tpm,
    /// A PKCS#11 token (cryptoki).
    Pkcs11,
    /// A software key stored AES-wrapped under a named HSM master key.
    Wrapped,
}

impl BackendKind {
    /// The name used in config, on the wire and in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Tpm => "tpm",
            BackendKind::Pkcs11 => "pkcs11",
            BackendKind::Wrapped => "wrapped",
        }
    }

    /// Parses a backend name; `None` for an unknown name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tpm" => Some(BackendKind::Tpm),
            "pkcs11" => Some(BackendKind::Pkcs11),
            "wrapped" => Some(BackendKind::Wrapped),
            _ => None,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a key is derived inside its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Template {
    /// The backend's own choice (TPM: child of an owner-hierarchy storage primary, persisted).
    #[default]
    Default,
    /// MOSIP registration-client template (TPM only): endorsement-hierarchy primary recreated from
    /// MOSIP's exact template, so the same TPM yields the key the registration client registered.
    Mosip,
}

impl Template {
    /// The name used in config and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Template::Default => "default",
            Template::Mosip => "mosip",
        }
    }

    /// Parses a template name; `None` for an unknown name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "default" => Some(Template::Default),
            "mosip" => Some(Template::Mosip),
            _ => None,
        }
    }
}

/// RSA signature scheme; the hash is always SHA-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SignScheme {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (MOSIP's and JWS RS256's scheme).
    #[default]
    Pkcs1v15,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, salt length 32.
    Pss,
}

/// Longest wait for a backend to generate a key: RSA key generation on a TPM can take up to a
/// minute, far longer than the operation timeout meant for signatures and decryptions.
pub const KEYGEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// What the registry needs to create a key version in a backend.
#[derive(Clone, Debug)]
pub struct NewKey<'a> {
    /// Registry name of the key (e.g. `machine-sign`); backends may use it in labels.
    pub name: &'a str,
    /// Version number being created (1 for a new key).
    pub version: u32,
    /// Kind of key to create.
    pub kind: KeyKind,
    /// Template to derive it with.
    pub template: Template,
}

/// Public half of an asymmetric key, in the encodings the daemon hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeyInfo {
    /// DER `SubjectPublicKeyInfo`.
    pub spki_der: Vec<u8>,
    /// Marshalled `TPMT_PUBLIC` (TPM keys only): what MOSIP registers for a machine.
    pub tpmt: Option<Vec<u8>>,
}

/// A key version the backend has just created.
#[derive(Clone, Debug)]
pub struct CreatedKey {
    /// Opaque reference the backend uses to find the key again (stored in the registry).
    pub backend_ref: String,
    /// Public key for asymmetric kinds.
    pub public: Option<PublicKeyInfo>,
}

/// Health of a backend as reported by `status`.
#[derive(Clone, Debug)]
pub struct Health {
    /// True when the backend answered its last probe.
    pub ok: bool,
    /// One line for humans: the token label, the TCTI, the last error.
    pub detail: String,
}

/// Errors a backend reports; mapped to wire error codes by the operation layer.
///
/// Messages never contain key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The device or token cannot be reached right now (retryable).
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// No object for this reference.
    #[error("key not found in backend: {0}")]
    NotFound(String),
    /// The backend cannot do this with this key or kind.
    #[error("unsupported by backend: {0}")]
    Unsupported(String),
    /// Decryption or authentication failed (wrong key, tampered data, bad padding).
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// The input is malformed for this operation (e.g. ciphertext of the wrong length).
    #[error("bad input: {0}")]
    BadInput(String),
    /// Anything else; the message says what.
    #[error("backend error: {0}")]
    Internal(String),
}

/// A place that holds private keys and performs operations with them.
///
/// Methods block (device I/O); call them from a blocking worker thread. Implementations are
/// shared across threads and must serialise device access themselves.
pub trait Backend: Send + Sync + 'static {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// Probes the device and reports its health.
    fn health(&self) -> Health;

    /// Creates a new key (version) and returns its reference and public key.
    fn create(&self, spec: &NewKey<'_>) -> Result<CreatedKey, BackendError>;

    /// Reads the public key of an existing asymmetric key from the device.
    fn public_key(&self, backend_ref: &str, kind: KeyKind) -> Result<PublicKeyInfo, BackendError>;

    /// Signs a SHA-256 digest with an `rsa2048-sign` key; returns the raw 256-byte signature.
    fn sign(
        &self,
        backend_ref: &str,
        digest: &[u8; 32],
        scheme: SignScheme,
    ) -> Result<Vec<u8>, BackendError>;

    /// RSA-OAEP-SHA256 (MGF1-SHA-256) decryption with an `rsa2048-oaep` key and the given label
    /// (empty for MOSIP's envelope; one 0x00 byte for the registration client's TPM convention).
    fn decrypt_oaep(
        &self,
        backend_ref: &str,
        ciphertext: &[u8],
        label: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError>;

    /// Encrypts (wraps) a software secret under an `aes256` master key held in this backend.
    fn wrap_secret(&self, master_ref: &str, secret: &[u8]) -> Result<Vec<u8>, BackendError>;

    /// Decrypts a secret wrapped by [`Backend::wrap_secret`] with the same master key.
    fn unwrap_secret(
        &self,
        master_ref: &str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError>;

    /// Destroys the key object in the device (irreversible).
    fn destroy(&self, backend_ref: &str) -> Result<(), BackendError>;
}
