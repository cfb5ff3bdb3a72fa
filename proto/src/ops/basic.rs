//! `hello`, `ping`, `status`: connection and server state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `hello` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct HelloArgs {
    /// Protocol version the client speaks.
    pub version: u32,
    /// Free-form client name (logged at debug level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// `hello` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
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
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct PingArgs {
    /// Bytes to echo back (at most 1 KiB).
    #[serde(default, with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// `ping` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PingResult {
    /// The bytes sent.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// `status` arguments (none).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct StatusArgs {}

/// Health of one backend.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
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
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct OpCounter {
    /// Successful requests.
    pub ok: u64,
    /// Failed requests (any error code).
    pub err: u64,
}

/// `status` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
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
    /// The backend scheduler's counters (absent from servers before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<SchedulerStatus>,
}

/// Counters of the daemon's backend scheduler (worker threads fed by per-uid queues).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary, PartialEq))]
pub struct SchedulerStatus {
    /// Worker threads.
    pub workers: u64,
    /// Requests waiting for a worker now.
    pub queued: u64,
    /// Requests running on a worker now.
    pub running: u64,
    /// Requests started on a worker since start.
    pub started: u64,
    /// Requests answered "timed out" without running: still queued at their deadline.
    pub expired: u64,
    /// Requests dropped unrun because their connection had closed.
    pub abandoned: u64,
    /// Requests refused `busy` because a queue was full.
    pub rejected: u64,
    /// Device calls refused because their request's deadline passed while it ran.
    pub late_refused: u64,
}
