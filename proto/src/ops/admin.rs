//! `admin.*`: operating the daemon itself (today: an online backup of the key registry).

use serde::{Deserialize, Serialize};

/// `admin.backup` arguments (none).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct BackupArgs {}

/// `admin.backup` result: a consistent copy of the key registry, taken while the daemon serves.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct BackupResult {
    /// The registry as an SQLite database file (made with SQLite's online backup API). It holds
    /// only public data and secrets wrapped by HSM master keys.
    #[serde(with = "serde_bytes")]
    pub registry: Vec<u8>,
    /// The registry's schema version (SQLite `user_version`).
    pub schema_version: u32,
    /// Keys in the copy.
    pub keys: u32,
    /// Key versions in the copy (all states).
    pub versions: u32,
    /// SHA-256 of `registry`.
    #[serde(with = "serde_bytes")]
    pub sha256: Vec<u8>,
}
