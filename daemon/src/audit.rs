//! Audit log: one JSON line per operation (time, peer, role, op, key, version, outcome, duration).
//! Never key material or plaintext: records hold only the fields below.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::auth::Peer;

/// One audited operation.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// Unix time in milliseconds.
    pub ts_ms: u128,
    /// Peer uid.
    pub uid: u32,
    /// Peer gid.
    pub gid: u32,
    /// Peer pid, if known.
    pub pid: Option<i32>,
    /// Role that allowed the op, or null.
    pub role: Option<&'a str>,
    /// Op name.
    pub op: &'a str,
    /// Key name, when the op names one.
    pub key: Option<&'a str>,
    /// Key version used, when known.
    pub version: Option<u32>,
    /// A second key the op touched (`rewrap` target, `keys.create` master), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<&'a str>,
    /// `ok` or the error code.
    pub outcome: &'a str,
    /// Duration in microseconds.
    pub duration_us: u128,
}

impl<'a> Record<'a> {
    /// Builds a record for `peer` with the time taken from the clock now.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        peer: &Peer,
        role: Option<&'a str>,
        op: &'a str,
        key: Option<&'a str>,
        version: Option<u32>,
        outcome: &'a str,
        duration: Duration,
    ) -> Self {
        Record {
            ts_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
            uid: peer.uid,
            gid: peer.gid,
            pid: peer.pid,
            role,
            op,
            key,
            version,
            target: None,
            outcome,
            duration_us: duration.as_micros(),
        }
    }
}

/// Where audit lines go.
#[derive(Debug)]
pub enum AuditLog {
    /// Appended to a file, one line per write.
    File(Mutex<File>),
    /// Emitted as tracing events with target `audit` (journal under systemd).
    Tracing,
}

impl AuditLog {
    /// Opens the audit file for appending (created 0640), or selects tracing when `None`.
    pub fn open(path: Option<&Path>) -> std::io::Result<AuditLog> {
        match path {
            None => Ok(AuditLog::Tracing),
            Some(p) => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .open(p)?;
                Ok(AuditLog::File(Mutex::new(f)))
            }
        }
    }

    /// Writes one record. A failing audit write is reported in the log, not to the client.
    pub fn write(&self, rec: &Record<'_>) {
        let mut line = match serde_json::to_string(rec) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("audit record not serialisable: {e}");
                return;
            }
        };
        match self {
            AuditLog::Tracing => tracing::info!(target: "audit", "{line}"),
            AuditLog::File(f) => {
                let mut f = match f.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                // One write(2) per line (`writeln!` on a File makes two).
                line.push('\n');
                if let Err(e) = f.write_all(line.as_bytes()) {
                    tracing::error!("audit write failed: {e}");
                }
            }
        }
    }
}
