//! Key backends: where private key material lives (TPM, PKCS#11 HSM, or in software wrapped under
//! a hardware master key).
//!
//! Every backend is reached through the blocking [`Backend`] capability trait. Operation code calls
//! it from a blocking worker thread (never from the async runtime) through a resolved key version
//! (`keys::KeyVersion`) and never knows which backend holds a key. A key is addressed by a
//! [`KeyRef`]: the opaque object reference the backend produced when the key was created, plus,
//! for software keys, the wrapped secret and its master.

pub mod deadline;
pub mod external;
pub mod pkcs11;
pub mod software;
pub mod tpm;

use std::fmt;

use zeroize::Zeroizing;

/// What a key is and what it may be used for. Config, wire and registry use the same names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
pub enum KeyKind {
    /// RSA-2048 signing key (RSASSA-PKCS1-v1_5 or PSS, SHA-256).
    #[serde(rename = "rsa2048-sign")]
    Rsa2048Sign,
    /// RSA-2048 decryption key (RSA-OAEP, SHA-256, MGF1-SHA-256).
    #[serde(rename = "rsa2048-oaep")]
    Rsa2048Oaep,
    /// AES-256 secret key (master key for wrapping, data encryption).
    #[serde(rename = "aes256")]
    Aes256,
    /// X25519 key agreement key for idOS's `nacl.box` (x25519-xsalsa20-poly1305); software
    /// backend only.
    #[serde(rename = "x25519")]
    X25519,
    /// Ed25519 signing key (pure Ed25519, RFC 8032): PKCS#11 (`CKM_EDDSA`) or software.
    #[serde(rename = "ed25519")]
    Ed25519,
}

impl KeyKind {
    /// Every kind, in documentation order.
    pub const ALL: [KeyKind; 5] = [
        KeyKind::Rsa2048Sign,
        KeyKind::Rsa2048Oaep,
        KeyKind::Aes256,
        KeyKind::X25519,
        KeyKind::Ed25519,
    ];

    /// The name used in config, on the wire and in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Rsa2048Sign => "rsa2048-sign",
            KeyKind::Rsa2048Oaep => "rsa2048-oaep",
            KeyKind::Aes256 => "aes256",
            KeyKind::X25519 => "x25519",
            KeyKind::Ed25519 => "ed25519",
        }
    }

    /// Parses a kind name; `None` for an unknown name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// True for kinds that have a public key.
    pub fn is_asymmetric(self) -> bool {
        !matches!(self, KeyKind::Aes256)
    }

    /// True for the kinds whose public key is a raw 32-byte string (RFC 8410: X25519, Ed25519).
    pub fn is_raw32(self) -> bool {
        matches!(self, KeyKind::X25519 | KeyKind::Ed25519)
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which backend holds a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
pub enum BackendKind {
    /// The machine's TPM 2.0 (tss-esapi).
    #[serde(rename = "tpm")]
    Tpm,
    /// A PKCS#11 token (cryptoki).
    #[serde(rename = "pkcs11")]
    Pkcs11,
    /// Secrets generated in the daemon and stored wrapped under an `aes256` master key held in
    /// hardware (`wrapped` is the name it had before, still accepted).
    #[serde(rename = "software", alias = "wrapped")]
    Software,
    /// Public-only keys of outside recipients, imported from a certificate or public key.
    #[serde(rename = "external")]
    External,
}

impl BackendKind {
    /// Every backend, in documentation order.
    pub const ALL: [BackendKind; 3] =
        [BackendKind::Tpm, BackendKind::Pkcs11, BackendKind::Software];

    /// The name used in config, on the wire and in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Tpm => "tpm",
            BackendKind::Pkcs11 => "pkcs11",
            BackendKind::Software => "software",
            BackendKind::External => "external",
        }
    }

    /// Parses a backend name (`wrapped` is the old name of `software`); `None` for an unknown
    /// name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "wrapped" => Some(BackendKind::Software),
            _ => Self::ALL.into_iter().find(|k| k.as_str() == s),
        }
    }

    /// The kinds this backend can create.
    pub fn kinds(self) -> &'static [KeyKind] {
        match self {
            BackendKind::Tpm => &[KeyKind::Rsa2048Sign, KeyKind::Rsa2048Oaep],
            BackendKind::Pkcs11 => &[
                KeyKind::Rsa2048Sign,
                KeyKind::Rsa2048Oaep,
                KeyKind::Aes256,
                KeyKind::Ed25519,
            ],
            BackendKind::Software => &[KeyKind::Aes256, KeyKind::X25519, KeyKind::Ed25519],
            BackendKind::External => &[KeyKind::Rsa2048Sign, KeyKind::Rsa2048Oaep],
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a key name: 1–64 characters of `A-Za-z0-9._-`.
pub fn validate_key_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("a key name has 1 to 64 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "key name `{}` may contain only A-Z a-z 0-9 . _ -",
            name.escape_default()
        ));
    }
    Ok(())
}

/// How a key is derived inside its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
pub enum Template {
    /// The backend's own choice (TPM: child of an owner-hierarchy storage primary, persisted).
    #[default]
    #[serde(rename = "default")]
    Default,
    /// MOSIP registration-client template (TPM only): endorsement-hierarchy primary recreated from
    /// MOSIP's exact template, so the same TPM yields the key the registration client registered.
    #[serde(rename = "mosip")]
    Mosip,
}

impl Template {
    /// Every template.
    pub const ALL: [Template; 2] = [Template::Default, Template::Mosip];

    /// The name used in config and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Template::Default => "default",
            Template::Mosip => "mosip",
        }
    }

    /// Parses a template name; `None` for an unknown name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
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

/// A key version as a backend addresses it.
#[derive(Clone, Copy, Debug)]
pub struct KeyRef<'a> {
    /// The backend's own reference to the object (persistent handle, `CKA_ID`, …), as it
    /// returned it from [`Backend::create`]; empty for software keys.
    pub object: &'a str,
    /// For software keys: the wrapped secret and the master that can unwrap it.
    pub sealed: Option<&'a Sealed>,
}

impl<'a> KeyRef<'a> {
    /// A key held in hardware, by the reference its backend gave it.
    pub fn object(object: &'a str) -> Self {
        KeyRef {
            object,
            sealed: None,
        }
    }
}

/// A hardware master key as another backend reaches it (to wrap or unwrap a software secret).
#[derive(Clone)]
pub struct Master {
    /// The backend holding the master.
    pub backend: std::sync::Arc<dyn Backend>,
    /// The master version's object reference in that backend.
    pub object: String,
}

impl fmt::Debug for Master {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Master")
            .field("backend", &self.backend.kind())
            .field("object", &self.object)
            .finish()
    }
}

/// A software secret as stored: wrapped under a master, bound by `aad` to the key version it
/// belongs to.
#[derive(Clone, Debug)]
pub struct Sealed {
    /// The wrapped secret (the master backend's format).
    pub blob: Vec<u8>,
    /// Additional authenticated data the blob was wrapped with.
    pub aad: Vec<u8>,
    /// The master that wrapped it.
    pub master: Master,
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
    /// For software keys: the master to wrap the new secret under, and the AAD binding it.
    pub master: Option<(&'a Master, &'a [u8])>,
}

/// How to find a key that already exists in a device (`keys.adopt`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExistingKey {
    /// By `CKA_LABEL`.
    Label(String),
    /// By `CKA_ID`.
    Id(Vec<u8>),
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
    /// For software keys: the new secret wrapped under the master.
    pub sealed: Option<Vec<u8>>,
}

/// Health of a backend as reported by `status`.
#[derive(Clone, Debug)]
pub struct Health {
    /// True when the backend answered its last probe.
    pub ok: bool,
    /// One line for humans: the token label, the TCTI, the last error.
    pub detail: String,
}

/// A TPM's dictionary-attack state (its variable properties).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaState {
    /// Failures counted now (`TPM_PT_LOCKOUT_COUNTER`).
    pub counter: u32,
    /// Failures that put the TPM into lockout (`TPM_PT_MAX_AUTH_FAIL`).
    pub max_tries: u32,
    /// `TPMA_PERMANENT.inLockout`.
    pub in_lockout: bool,
    /// Seconds after which one failure is forgotten (`TPM_PT_LOCKOUT_INTERVAL`).
    pub interval: u32,
    /// Seconds the lockout hierarchy stays locked after a wrong lockout authorization
    /// (`TPM_PT_LOCKOUT_RECOVERY`).
    pub lockout_recovery: u32,
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
    /// The device refused an authorization value the request carried (a wrong TPM lockout
    /// authorization).
    #[error("refused by the backend: {0}")]
    Refused(String),
    /// Anything else; the message says what.
    #[error("backend error: {0}")]
    Internal(String),
}

/// A place that holds private keys and performs operations with them.
///
/// Each capability defaults to [`BackendError::Unsupported`]: a backend implements only what it
/// can do. Methods block (device I/O); call them from a blocking worker thread. Implementations
/// are shared across threads and must serialise device access themselves.
pub trait Backend: Send + Sync + 'static {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// Probes the device and reports its health.
    fn health(&self) -> Health;

    /// Creates a new key (version) and returns its reference and public key.
    fn create(&self, spec: &NewKey<'_>) -> Result<CreatedKey, BackendError> {
        Err(unsupported(
            self.kind(),
            &format!("creating {} keys", spec.kind),
        ))
    }

    /// Reads the public key of an existing asymmetric key from the device.
    fn public_key(&self, key: &KeyRef<'_>, kind: KeyKind) -> Result<PublicKeyInfo, BackendError> {
        let _ = key;
        Err(unsupported(self.kind(), &format!("public keys of {kind}")))
    }

    /// Signs a SHA-256 digest with an `rsa2048-sign` key; returns the raw 256-byte signature.
    fn sign(
        &self,
        key: &KeyRef<'_>,
        digest: &[u8; 32],
        scheme: SignScheme,
    ) -> Result<Vec<u8>, BackendError> {
        let _ = (key, digest, scheme);
        Err(unsupported(self.kind(), "signing"))
    }

    /// RSA-OAEP-SHA256 (MGF1-SHA-256) decryption with an `rsa2048-oaep` key and the given label
    /// (empty for MOSIP's envelope; one 0x00 byte for the registration client's TPM convention).
    fn decrypt_oaep(
        &self,
        key: &KeyRef<'_>,
        ciphertext: &[u8],
        label: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let _ = (key, ciphertext, label);
        Err(unsupported(self.kind(), "RSA-OAEP decryption"))
    }

    /// Encrypts (wraps) a software secret under an `aes256` master key held in this backend,
    /// authenticating `aad` with it.
    fn wrap_secret(
        &self,
        master: &KeyRef<'_>,
        secret: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let _ = (master, secret, aad);
        Err(unsupported(self.kind(), "wrapping secrets"))
    }

    /// Decrypts a secret wrapped by [`Backend::wrap_secret`] with the same master key and AAD.
    fn unwrap_secret(
        &self,
        master: &KeyRef<'_>,
        wrapped: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let _ = (master, wrapped, aad);
        Err(unsupported(self.kind(), "unwrapping secrets"))
    }

    /// Registers a key that already exists in the device (made by other software, e.g. MOSIP's
    /// keymanager) as a key version of `kind`: checked to be of that kind, sensitive and
    /// non-extractable. Nothing is generated.
    fn adopt(&self, kind: KeyKind, at: &ExistingKey) -> Result<CreatedKey, BackendError> {
        let _ = at;
        Err(unsupported(self.kind(), &format!("adopting {kind} keys")))
    }

    /// AES-256-ECB decryption without padding with an `aes256` key (MOSIP's wrapping of pool keys
    /// under K9); `data` is a multiple of 16 bytes.
    fn ecb_decrypt(
        &self,
        key: &KeyRef<'_>,
        data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let _ = (key, data);
        Err(unsupported(self.kind(), "AES-ECB decryption"))
    }

    /// Creates a key version from a secret given by the caller (a password-derived X25519 key):
    /// the software backend wraps it under the master like a generated one.
    fn import(&self, spec: &NewKey<'_>, secret: &[u8]) -> Result<CreatedKey, BackendError> {
        let _ = secret;
        Err(unsupported(
            self.kind(),
            &format!("importing {} keys", spec.kind),
        ))
    }

    /// Pure Ed25519 (RFC 8032) signature of `data` with an `ed25519` key: 64 bytes.
    fn sign_ed25519(&self, key: &KeyRef<'_>, data: &[u8]) -> Result<Vec<u8>, BackendError> {
        let _ = (key, data);
        Err(unsupported(self.kind(), "Ed25519 signatures"))
    }

    /// Opens a `nacl.box` (X25519 + XSalsa20-Poly1305, libsodium `crypto_box_open_easy`) with an
    /// `x25519` key: `boxed` is `tag(16) ‖ ciphertext`, `encryptor` the sender's (ephemeral)
    /// public key. A wrong key or tampered box is [`BackendError::Integrity`].
    fn box_open(
        &self,
        key: &KeyRef<'_>,
        encryptor: &[u8; 32],
        nonce: &[u8; 24],
        boxed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let _ = (key, encryptor, nonce, boxed);
        Err(unsupported(self.kind(), "nacl.box"))
    }

    /// The secret of a software key, in daemon memory for one operation.
    fn secret(&self, key: &KeyRef<'_>) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let _ = key;
        Err(unsupported(self.kind(), "releasing a secret into memory"))
    }

    /// Destroys the key object in the device (irreversible).
    fn destroy(&self, key: &KeyRef<'_>) -> Result<(), BackendError>;

    /// Leaves dictionary-attack lockout (TPM2_DictionaryAttackLockReset) with the lockout
    /// hierarchy's authorization value; returns the state read back afterwards.
    fn clear_lockout(&self, lockout_auth: &[u8]) -> Result<DaState, BackendError> {
        let _ = lockout_auth;
        Err(unsupported(
            self.kind(),
            "clearing a dictionary-attack lockout",
        ))
    }
}

fn unsupported(backend: BackendKind, what: &str) -> BackendError {
    BackendError::Unsupported(format!("the {backend} backend does not support {what}"))
}
