//! What the registry records: keys, their versions, and the wrapped secrets of software keys.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::backend::{BackendKind, KeyKind, Template};
use crate::format::x509::CertInfo;

/// State of a key version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionState {
    /// The current version: signs, encrypts, decrypts.
    Active,
    /// Superseded by a rotation: still decrypts and verifies.
    DecryptOnly,
    /// Refused for every operation; the object still exists in the backend.
    Retired,
    /// Removed from the backend.
    Destroyed,
}

impl VersionState {
    /// Every state.
    pub const ALL: [VersionState; 4] = [
        VersionState::Active,
        VersionState::DecryptOnly,
        VersionState::Retired,
        VersionState::Destroyed,
    ];

    /// Name used in the registry and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Active => "active",
            VersionState::DecryptOnly => "decrypt-only",
            VersionState::Retired => "retired",
            VersionState::Destroyed => "destroyed",
        }
    }

    /// Parses a state name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// A version of a master key, by name and number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterRef {
    /// The master key's name.
    pub name: String,
    /// The master version that wrapped the secret.
    pub version: u32,
}

impl fmt::Display for MasterRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` v{}", self.name, self.version)
    }
}

/// A software key version's secret as stored: wrapped under a master key version.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    /// The wrapped secret, in the master backend's format.
    pub blob: Vec<u8>,
    /// The master version that wrapped it.
    pub master: MasterRef,
    /// True when the blob is bound by AAD to its key, version and kind
    /// ([`crate::backend::software::aad`]); false for a blob written before that binding existed
    /// (empty AAD), re-wrapped at start-up when the master is reachable.
    pub aad_bound: bool,
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedSecret")
            .field("blob", &format_args!("{} bytes", self.blob.len()))
            .field("master", &self.master)
            .field("aad_bound", &self.aad_bound)
            .finish()
    }
}

/// One version of a key as recorded.
#[derive(Clone, Debug)]
pub struct VersionRecord {
    /// Version number, from 1.
    pub version: u32,
    /// State.
    pub state: VersionState,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Expiry, Unix seconds.
    pub not_after: i64,
    /// Backend's reference to the object (empty for software keys).
    pub backend_ref: String,
    /// DER SubjectPublicKeyInfo (asymmetric kinds).
    pub public_der: Option<Vec<u8>>,
    /// Marshalled TPMT_PUBLIC (TPM keys).
    pub public_tpmt: Option<Vec<u8>>,
    /// SHA-256 of `public_der`.
    pub thumbprint: Option<[u8; 32]>,
    /// The wrapped secret and its master version (software keys; `None` once destroyed).
    pub sealed: Option<SealedSecret>,
    /// X.509 certificates of this version's public key, oldest first.
    pub certs: Vec<CertInfo>,
    /// Adopted from the token (`keys.adopt`), not generated: custodyd never destroys its object.
    pub adopted: bool,
}

impl VersionRecord {
    /// True unless destroyed.
    pub fn is_live(&self) -> bool {
        self.state != VersionState::Destroyed
    }

    /// Every thumbprint the version answers to: its SPKI's, then each certificate's.
    pub fn thumbprints(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.thumbprint
            .iter()
            .chain(self.certs.iter().map(|c| &c.thumbprint))
    }

    /// The thumbprint written when sealing to this version: the newest certificate's (MOSIP's
    /// rule), else the SPKI's.
    pub fn recipient_thumbprint(&self) -> Option<[u8; 32]> {
        self.certs.last().map(|c| c.thumbprint).or(self.thumbprint)
    }
}

/// A key and all its versions as recorded.
#[derive(Clone, Debug)]
pub struct KeyRecord {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: KeyKind,
    /// Backend.
    pub backend: BackendKind,
    /// Template.
    pub template: Template,
    /// Master key name new versions are wrapped under (software backend).
    pub master: Option<String>,
    /// Validity of each version, days.
    pub validity_days: u32,
    /// Days before expiry at which the version stops being current.
    pub pre_expire_days: u32,
    /// Versions, ascending.
    pub versions: Vec<VersionRecord>,
}

impl KeyRecord {
    /// The active version (the highest one that is `active`).
    pub fn current(&self) -> Option<&VersionRecord> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.state == VersionState::Active)
    }

    /// A version by number.
    pub fn version(&self, n: u32) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == n)
    }

    /// Version `n`, or the current one when `n` is `None` (any state; no expiry check).
    pub fn version_or_current(&self, n: Option<u32>) -> Option<&VersionRecord> {
        match n {
            Some(n) => self.version(n),
            None => self.current(),
        }
    }

    /// The number the next version gets.
    pub fn next_version(&self) -> u32 {
        self.versions.last().map_or(1, |v| v.version + 1)
    }
}

/// Unix time now, seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
