//! Audit log: one JSON line per operation (time, peer, role, op, key, version, outcome, duration).
//! Never key material or plaintext: records hold only the fields below.
//!
//! Lines in a file form a hash chain (`seq`, `prev` = SHA-256 of the previous line; see
//! [`custody_proto::audit`]); every `checkpoint_every` lines and at shutdown a checkpoint line
//! signed by the configured audit key binds everything before it. A rotated file (renamed, then
//! SIGHUP) continues the chain from the last line written.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use custody_proto::audit::{checkpoint_message, CHECKPOINT_OP, GENESIS};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::auth::Peer;
use crate::config::{AuditConfig, AuditSync};

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
            ts_ms: now_ms(),
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

/// A checkpoint's signature, made by the configured audit key.
#[derive(Debug)]
pub struct CheckpointSig {
    /// Key name.
    pub key: String,
    /// Key version that signed.
    pub version: u32,
    /// Algorithm ([`custody_proto::audit::ALG_RSA`] or [`custody_proto::audit::ALG_ED25519`]).
    pub alg: &'static str,
    /// Signature bytes.
    pub sig: Vec<u8>,
}

/// Signs a checkpoint message (the daemon's audit key); `Err` says why it could not.
pub type Signer<'a> = &'a dyn Fn(&[u8]) -> Result<CheckpointSig, String>;

#[derive(Serialize)]
struct Chained<'a, T: Serialize> {
    seq: u64,
    prev: &'a str,
    #[serde(flatten)]
    rec: &'a T,
}

#[derive(Serialize)]
struct Checkpoint<'a> {
    ts_ms: u128,
    op: &'static str,
    key: &'a str,
    version: u32,
    alg: &'a str,
    /// Standard base64 with padding.
    sig: String,
}

/// The file sink and the head of its chain.
#[derive(Debug)]
pub struct Chain {
    file: File,
    path: PathBuf,
    /// `seq` of the next line.
    seq: u64,
    /// Hex SHA-256 of the last line written.
    prev: String,
    /// Bytes in the file (a failed write is cut back to this).
    len: u64,
    /// Lines since the last checkpoint.
    since_checkpoint: u64,
    every: u64,
    sync: AuditSync,
}

/// Where audit lines go.
#[derive(Debug)]
pub enum AuditLog {
    /// Appended to a file, one hash-chained line per write.
    File(Mutex<Chain>),
    /// Emitted as tracing events with target `audit` (journal under systemd); not chained.
    Tracing,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

fn open_append(p: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
}

/// The chain head of an existing file: `seq` of the next line and the hash of the last one.
/// A torn last line (no newline: a write cut short) is removed first.
fn head_of(file: &mut File) -> std::io::Result<Option<(u64, String, u64)>> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let from = len.saturating_sub(256 * 1024);
    file.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let mut end = tail.len();
    if tail.last() != Some(&b'\n') {
        end = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let keep = from + end as u64;
        tracing::warn!("audit file ends in a torn line: cut back to {keep} bytes");
        file.set_len(keep)?;
        if end == 0 {
            return Ok(None);
        }
    }
    let body = &tail[..end - 1];
    let start = body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let last = &body[start..];
    let seq = serde_json::from_slice::<serde_json::Value>(last)
        .ok()
        .and_then(|v| v.get("seq").and_then(|s| s.as_u64()))
        .unwrap_or(0);
    Ok(Some((seq + 1, line_hash(last), from + end as u64)))
}

impl AuditLog {
    /// Opens the audit file for appending (created 0640, never through a symlink) and takes up
    /// its chain where the last line left it, or selects tracing when no file is configured.
    pub fn open(cfg: &AuditConfig) -> std::io::Result<AuditLog> {
        let Some(p) = cfg.file.as_deref() else {
            return Ok(AuditLog::Tracing);
        };
        let mut file = open_append(p)?;
        let (seq, prev, len) = head_of(&mut file)?.unwrap_or((1, GENESIS.to_owned(), 0));
        Ok(AuditLog::File(Mutex::new(Chain {
            file,
            path: p.to_owned(),
            seq,
            prev,
            len,
            since_checkpoint: 0,
            every: cfg.checkpoint_every.max(1),
            sync: cfg.sync,
        })))
    }

    fn chain(&self) -> Option<std::sync::MutexGuard<'_, Chain>> {
        match self {
            AuditLog::Tracing => None,
            AuditLog::File(m) => Some(match m.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            }),
        }
    }

    /// Writes one record (and a checkpoint after it when one is due and `signer` is given).
    /// `Err` when the record could not be written whole: the file is cut back, nothing half
    /// written stays. A checkpoint that cannot be signed is logged and retried after another
    /// `checkpoint_every` lines (and at shutdown).
    pub fn write(&self, rec: &Record<'_>, signer: Option<Signer<'_>>) -> Result<(), String> {
        let Some(mut chain) = self.chain() else {
            let line = serde_json::to_string(rec)
                .map_err(|e| format!("audit record not serialisable: {e}"))?;
            tracing::info!(target: "audit", "{line}");
            return Ok(());
        };
        chain.append(rec)?;
        if chain.sync == AuditSync::Every {
            chain
                .file
                .sync_data()
                .map_err(|e| format!("audit sync failed: {e}"))?;
        }
        if let Some(sign) = signer {
            if chain.since_checkpoint >= chain.every {
                if let Err(e) = chain.checkpoint(sign) {
                    // Retried after another `checkpoint_every` lines, not on every op: a key
                    // whose device is down must not slow every request to its timeout.
                    chain.since_checkpoint = 0;
                    tracing::warn!(
                        "audit checkpoint not written (retried after {} more lines): {e}",
                        chain.every
                    );
                }
            }
        }
        Ok(())
    }

    /// Writes a checkpoint now if lines were written since the last one (at shutdown).
    pub fn checkpoint(&self, signer: Signer<'_>) -> Result<(), String> {
        match self.chain() {
            Some(mut c) if c.since_checkpoint > 0 => c.checkpoint(signer),
            _ => Ok(()),
        }
    }

    /// Opens the configured path again (after it was rotated away); the chain continues from the
    /// last line written, in the new file.
    pub fn reopen(&self) -> Result<(), String> {
        let Some(mut chain) = self.chain() else {
            return Ok(());
        };
        let _ = chain.file.sync_data();
        let mut file = open_append(&chain.path)
            .map_err(|e| format!("cannot reopen {}: {e}", chain.path.display()))?;
        // The same file (not rotated): keep its head; a new file continues the chain.
        chain.len = match head_of(&mut file).map_err(|e| e.to_string())? {
            Some((_, _, len)) => len,
            None => 0,
        };
        chain.file = file;
        Ok(())
    }
}

impl Chain {
    /// Appends one line of `rec` with the chain fields; all or nothing.
    fn append<T: Serialize>(&mut self, rec: &T) -> Result<(), String> {
        let chained = Chained {
            seq: self.seq,
            prev: &self.prev,
            rec,
        };
        let mut line = serde_json::to_vec(&chained)
            .map_err(|e| format!("audit record not serialisable: {e}"))?;
        let hash = line_hash(&line);
        line.push(b'\n');
        if let Err(e) = self.file.write_all(&line) {
            // Cut a torn line back off, so the file stays a valid chain.
            let _ = self.file.set_len(self.len);
            return Err(format!("audit write failed: {e}"));
        }
        self.len += line.len() as u64;
        self.seq += 1;
        self.prev = hash;
        self.since_checkpoint += 1;
        Ok(())
    }

    fn checkpoint(&mut self, sign: Signer<'_>) -> Result<(), String> {
        let ts_ms = now_ms();
        let s = sign(&checkpoint_message(self.seq, &self.prev, ts_ms))?;
        let rec = Checkpoint {
            ts_ms,
            op: CHECKPOINT_OP,
            key: &s.key,
            version: s.version,
            alg: s.alg,
            sig: base64::engine::general_purpose::STANDARD.encode(&s.sig),
        };
        self.append(&rec)?;
        self.since_checkpoint = 0;
        if self.sync != AuditSync::None {
            self.file
                .sync_data()
                .map_err(|e| format!("audit sync failed: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(path: &Path, every: u64) -> AuditConfig {
        AuditConfig {
            file: Some(path.to_owned()),
            checkpoint_every: every,
            ..AuditConfig::default()
        }
    }

    fn rec(peer: &Peer) -> Record<'_> {
        Record::new(peer, None, "ping", None, None, "ok", Duration::ZERO)
    }

    fn lines(p: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn chain_checkpoints_torn_lines_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let peer = Peer {
            uid: 1,
            gid: 1,
            pid: None,
            groups: vec![],
        };
        let signed = std::cell::RefCell::new(Vec::new());
        let signer = |msg: &[u8]| {
            signed.borrow_mut().push(msg.to_vec());
            Ok(CheckpointSig {
                key: "k".into(),
                version: 1,
                alg: custody_proto::audit::ALG_ED25519,
                sig: vec![7; 64],
            })
        };
        let log = AuditLog::open(&cfg(&p, 2)).unwrap();
        for _ in 0..3 {
            log.write(&rec(&peer), Some(&signer)).unwrap();
        }
        let l = lines(&p);
        // record, record, checkpoint, record
        assert_eq!(l.len(), 4);
        assert_eq!(l[0]["prev"], GENESIS);
        assert_eq!(l[2]["op"], CHECKPOINT_OP);
        let text = std::fs::read_to_string(&p).unwrap();
        let raw: Vec<&str> = text.lines().collect();
        assert_eq!(l[1]["prev"], line_hash(raw[0].as_bytes()));
        let ts = l[2]["ts_ms"].as_u64().unwrap();
        assert_eq!(
            signed.borrow()[0],
            checkpoint_message(3, l[2]["prev"].as_str().unwrap(), u128::from(ts))
        );
        drop(log);
        // A torn last line (a crash mid-write) is cut off; the chain continues after line 4.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"seq\":5,\"pr").unwrap();
        drop(f);
        let log = AuditLog::open(&cfg(&p, 100)).unwrap();
        log.write(&rec(&peer), None).unwrap();
        let l = lines(&p);
        assert_eq!(l.len(), 5);
        assert_eq!(l[4]["seq"], 5);
        let text = std::fs::read_to_string(&p).unwrap();
        let raw: Vec<&str> = text.lines().collect();
        assert_eq!(l[4]["prev"], line_hash(raw[3].as_bytes()));
        // At shutdown: a closing checkpoint.
        log.checkpoint(&signer).unwrap();
        assert_eq!(lines(&p)[5]["op"], CHECKPOINT_OP);
    }

    #[test]
    fn the_audit_file_is_not_opened_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"").unwrap();
        let p = dir.path().join("audit.log");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        assert!(AuditLog::open(&cfg(&p, 10)).is_err());
    }
}
