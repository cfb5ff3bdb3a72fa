//! Backups of the key registry: a consistent online copy while the daemon serves
//! (`admin.backup`), and restoring one with the daemon stopped (`custodyd --restore`).
//!
//! A backup is an SQLite database: the registry's pages copied with SQLite's online backup API in
//! one step (one read transaction, so one consistent state even while keys are rotated), switched
//! to a rollback journal so that it is one self-contained file, plus a table
//! `custody_backup` recording when it was made and a SHA-256 digest of every row of every
//! registry table. A restore checks SQLite's `integrity_check`, the schema version, that digest
//! (any changed row is refused), and that every key record parses, before it replaces the
//! registry. The registry holds only public data and secrets wrapped by HSM master keys: a
//! backup is useless without the HSM.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use sha2::{Digest, Sha256};

use super::store::{Store, StoreError, SCHEMA_VERSION};

/// The table a backup carries about itself (dropped again by a restore).
const INFO_TABLE: &str = "custody_backup";

/// What a registry (or a backup of one) holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegistrySummary {
    /// Schema version (SQLite `user_version`).
    pub schema_version: u32,
    /// Keys.
    pub keys: u32,
    /// Key versions, all states.
    pub versions: u32,
}

/// An online copy of the registry.
pub struct BackupCopy {
    /// The backup file's bytes (an SQLite database).
    pub bytes: Vec<u8>,
    /// What it holds.
    pub summary: RegistrySummary,
}

/// What a restore did.
#[derive(Debug)]
pub struct RestoreReport {
    /// What the restored registry holds (after any schema migration).
    pub summary: RegistrySummary,
    /// Where the registry that was replaced was moved (None when there was none).
    pub previous: Option<PathBuf>,
    /// False when the file carried no backup record (a plain copy of a registry file): its
    /// structure and rows were checked, but there was no digest to compare.
    pub digest_checked: bool,
}

fn corrupt(what: &Path, m: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.display().to_string(), m.into())
}

/// Copies the registry at `registry` while the daemon serves: a separate connection, all pages in
/// one backup step (one read transaction: in WAL mode writers go on meanwhile), into a temporary
/// file next to the registry (mode 0600, removed afterwards); checks the copy and records its
/// digest in it.
pub fn backup(registry: &Path) -> Result<BackupCopy, StoreError> {
    let src = Connection::open_with_flags(
        registry,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    src.busy_timeout(Duration::from_secs(5))?;
    let dir = registry
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".registry-backup-")
        .tempfile_in(dir)
        .map_err(|e| corrupt(dir, format!("cannot create a temporary file: {e}")))?;
    let summary = {
        let mut dst = Connection::open(tmp.path())?;
        copy_all(&src, &mut dst, registry)?;
        dst.pragma_update(None, "journal_mode", "DELETE")?;
        let summary = check(&dst).map_err(|m| corrupt(registry, m))?;
        let digest = content_digest(&dst)?;
        dst.execute_batch(&format!(
            "CREATE TABLE {INFO_TABLE} (created INTEGER NOT NULL, schema_version INTEGER NOT NULL,
                                        content_sha256 TEXT NOT NULL)"
        ))?;
        dst.execute(
            &format!(
                "INSERT INTO {INFO_TABLE} (created, schema_version, content_sha256)
                 VALUES (?1, ?2, ?3)"
            ),
            params![super::now(), summary.schema_version, hex::encode(digest)],
        )?;
        summary
    };
    let bytes = std::fs::read(tmp.path())
        .map_err(|e| corrupt(tmp.path(), format!("cannot read the copy: {e}")))?;
    Ok(BackupCopy { bytes, summary })
}

/// One backup step over every page; retried briefly while the source is busy (a WAL recovery).
fn copy_all(src: &Connection, dst: &mut Connection, registry: &Path) -> Result<(), StoreError> {
    let b = Backup::new(src, dst)?;
    for _ in 0..50 {
        match b.step(-1)? {
            StepResult::Done => return Ok(()),
            StepResult::Busy | StepResult::Locked | StepResult::More => {
                std::thread::sleep(Duration::from_millis(100))
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    Err(corrupt(
        registry,
        "the registry stayed busy; backup not made",
    ))
}

/// SQLite's integrity check, the schema version and the two registry tables; the counts.
fn check(conn: &Connection) -> Result<RegistrySummary, String> {
    let sql = |e: rusqlite::Error| e.to_string();
    let problems: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .map_err(sql)?
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(sql)?
        .collect::<Result<_, _>>()
        .map_err(sql)?;
    if problems != ["ok"] {
        let shown: Vec<&str> = problems.iter().take(3).map(String::as_str).collect();
        return Err(format!(
            "SQLite integrity check failed: {}",
            shown.join("; ")
        ));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if version > SCHEMA_VERSION {
        return Err(format!(
            "registry schema {version} is newer than this custodyd's ({SCHEMA_VERSION}): \
             restore it with the release that made it"
        ));
    }
    for table in ["keys", "versions"] {
        let found = conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |_| Ok(()),
            )
            .optional()
            .map_err(sql)?
            .is_some();
        if !found {
            return Err(format!("not a custodyd registry (no `{table}` table)"));
        }
    }
    let count = |t: &str| -> Result<u32, String> {
        conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
            .map_err(sql)
    };
    Ok(RegistrySummary {
        schema_version: u32::try_from(version).map_err(|_| "negative schema version")?,
        keys: count("keys")?,
        versions: count("versions")?,
    })
}

/// SHA-256 over the schema version and every row of every table (but the backup record), tables
/// by name, rows by rowid, each value with its type and length.
fn content_digest(conn: &Connection) -> Result<[u8; 32], StoreError> {
    let mut h = Sha256::new();
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    h.update(version.to_be_bytes());
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
             AND name != ?1 ORDER BY name",
        )?
        .query_map([INFO_TABLE], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for t in tables {
        let quoted = t.replace('"', "\"\"");
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{quoted}\" ORDER BY rowid"))?;
        let cols = stmt.column_count();
        h.update((t.len() as u64).to_be_bytes());
        h.update(t.as_bytes());
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            h.update(b"R");
            for i in 0..cols {
                match row.get_ref(i)? {
                    ValueRef::Null => h.update([0u8]),
                    ValueRef::Integer(n) => {
                        h.update([1u8]);
                        h.update(n.to_be_bytes());
                    }
                    ValueRef::Real(f) => {
                        h.update([2u8]);
                        h.update(f.to_bits().to_be_bytes());
                    }
                    ValueRef::Text(b) | ValueRef::Blob(b) => {
                        h.update([3u8]);
                        h.update((b.len() as u64).to_be_bytes());
                        h.update(b);
                    }
                }
            }
        }
    }
    Ok(h.finalize().into())
}

/// Checks a backup and, if it is sound, replaces the registry at `registry` with it. The daemon
/// must be stopped (the caller holds the registry lock). The previous registry is kept beside it
/// as `<registry>.pre-restore-<unix time>`. An older schema is migrated here, as the daemon's
/// start would; a newer one, a damaged file or changed rows are refused and nothing changes.
pub fn restore(file: &Path, registry: &Path) -> Result<RestoreReport, String> {
    let refuse = |m: String| {
        format!(
            "{} is not a usable registry backup: {m}; the registry was not changed",
            file.display()
        )
    };
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let dir = registry
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".registry-restore-")
        .tempfile_in(dir)
        .map_err(|e| format!("cannot create a temporary file in {}: {e}", dir.display()))?;
    tmp.write_all(&bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.path().display()))?;
    let digest_checked = {
        let conn = Connection::open(tmp.path()).map_err(|e| refuse(e.to_string()))?;
        check(&conn).map_err(refuse)?;
        let stored: Option<String> = match conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [INFO_TABLE],
                |_| Ok(()),
            )
            .optional()
            .map_err(|e| refuse(e.to_string()))?
        {
            None => None,
            Some(()) => Some(
                conn.query_row(
                    &format!("SELECT content_sha256 FROM {INFO_TABLE}"),
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| refuse(format!("backup record unreadable: {e}")))?,
            ),
        };
        if let Some(stored) = &stored {
            let actual = content_digest(&conn).map_err(|e| refuse(e.to_string()))?;
            if hex::encode(actual) != *stored {
                return Err(refuse(
                    "its contents do not match the digest recorded when it was made (the file \
                     was changed or damaged)"
                        .into(),
                ));
            }
            conn.execute_batch(&format!("DROP TABLE {INFO_TABLE}"))
                .map_err(|e| refuse(e.to_string()))?;
        }
        stored.is_some()
    };
    // Every key record must parse; an older schema is migrated (as the daemon's start would).
    let summary = {
        let store = Store::open(tmp.path()).map_err(|e| refuse(e.to_string()))?;
        let keys = store.load_all().map_err(|e| refuse(e.to_string()))?;
        RegistrySummary {
            schema_version: SCHEMA_VERSION as u32,
            keys: keys.len() as u32,
            versions: keys.iter().map(|k| k.versions.len() as u32).sum(),
        }
    };
    // One self-contained file (no -wal) before it moves into place.
    {
        let conn = Connection::open(tmp.path()).map_err(|e| refuse(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "DELETE")
            .map_err(|e| refuse(e.to_string()))?;
    }
    let previous = set_aside(registry)?;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", tmp.path().display()))?;
    if nix::unistd::geteuid().is_root() {
        // Restored by root for a daemon that runs as its own user: the file belongs to the
        // owner of the registry's directory.
        let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        nix::unistd::chown(
            tmp.path(),
            Some(nix::unistd::Uid::from_raw(meta.uid())),
            Some(nix::unistd::Gid::from_raw(meta.gid())),
        )
        .map_err(|e| format!("chown {}: {e}", tmp.path().display()))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| format!("sync {}: {e}", tmp.path().display()))?;
    tmp.persist(registry)
        .map_err(|e| format!("cannot move the backup to {}: {e}", registry.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(RestoreReport {
        summary,
        previous,
        digest_checked,
    })
}

/// Moves the current registry (checkpointed first when it opens) and its `-wal` out of the way as
/// `<registry>.pre-restore-<unix time>[-wal]`, and removes its `-shm`.
fn set_aside(registry: &Path) -> Result<Option<PathBuf>, String> {
    if !registry.exists() {
        return Ok(None);
    }
    if let Ok(conn) = Connection::open(registry) {
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
    let with = |suffix: &str| {
        let mut s = registry.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    let stamp = format!(".pre-restore-{}", super::now());
    let aside = with(&stamp);
    std::fs::rename(registry, &aside).map_err(|e| {
        format!(
            "cannot move {} to {}: {e}",
            registry.display(),
            aside.display()
        )
    })?;
    let wal = with("-wal");
    if wal.exists() {
        std::fs::rename(&wal, with(&format!("{stamp}-wal")))
            .map_err(|e| format!("cannot move {}: {e}", wal.display()))?;
    }
    let _ = std::fs::remove_file(with("-shm"));
    Ok(Some(aside))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry_with_rows(path: &Path) {
        let store = Store::open(path).unwrap();
        drop(store);
        let c = Connection::open(path).unwrap();
        c.execute_batch(
            "INSERT INTO keys VALUES ('k', 'aes256', 'pkcs11', 'default', NULL, 10, 1);
             INSERT INTO versions (name, version, state, created, not_after, backend_ref)
                VALUES ('k', 1, 'active', 1, 2, 'ref');",
        )
        .unwrap();
    }

    #[test]
    fn a_backup_restores_and_a_changed_row_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("registry.db");
        registry_with_rows(&reg);
        let copy = backup(&reg).unwrap();
        assert_eq!(
            copy.summary,
            RegistrySummary {
                schema_version: SCHEMA_VERSION as u32,
                keys: 1,
                versions: 1
            }
        );
        let file = dir.path().join("b.db");
        std::fs::write(&file, &copy.bytes).unwrap();
        let target = dir.path().join("new").join("registry.db");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let r = restore(&file, &target).unwrap();
        assert!(r.digest_checked && r.previous.is_none());
        assert_eq!(r.summary.versions, 1);
        // A changed row (same length, so SQLite's own check passes) is refused by the digest.
        let c = Connection::open(&file).unwrap();
        c.execute("UPDATE versions SET backend_ref = 'feh'", [])
            .unwrap();
        drop(c);
        let e = restore(&file, &target).unwrap_err();
        assert!(e.contains("digest"), "{e}");
        // Not a database at all.
        std::fs::write(&file, b"this is not a registry").unwrap();
        let e = restore(&file, &target).unwrap_err();
        assert!(e.contains("not a usable registry backup"), "{e}");
        // The registry restored first is still there, untouched by the refused ones.
        let again = Store::open(&target).unwrap().load_all().unwrap();
        assert_eq!(again[0].versions[0].backend_ref, "ref");
    }
}
