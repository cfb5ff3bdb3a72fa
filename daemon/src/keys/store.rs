//! The key registry in SQLite (WAL, synchronous=FULL). Every multi-row change is one transaction,
//! so a crash at any point leaves either the old or the new state, never half of one.
//!
//! The schema version is SQLite's `user_version`. Version 0 is the registry of the first release
//! (no `user_version`, backend `wrapped`, the master of a wrapped secret as the text `name:vN` in
//! `backend_ref`); version 1 added typed master references and the `software` name; version 2
//! the `certs` table; version 3 adopted versions and the zero-knowledge pools (`zk_pools`,
//! `zk_keys`). [`Store::open`] migrates an older file to [`SCHEMA_VERSION`] in one
//! transaction.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::record::{KeyRecord, MasterRef, SealedSecret, VersionRecord, VersionState};
use crate::backend::{BackendKind, KeyKind, Template};
use crate::format::x509::{parse_certificate, CertInfo};

/// The schema this daemon writes.
pub const SCHEMA_VERSION: i64 = 3;

/// Registry errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("key registry: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A row holds a value this version does not understand, or the file is unusable.
    #[error("key registry: `{0}`: {1}")]
    Corrupt(String, String),
}

/// The SQLite registry.
pub struct Store {
    pub(super) conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS keys (
    name            TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    backend         TEXT NOT NULL,
    template        TEXT NOT NULL,
    master          TEXT,
    validity_days   INTEGER NOT NULL,
    pre_expire_days INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    name        TEXT NOT NULL REFERENCES keys(name),
    version     INTEGER NOT NULL,
    state       TEXT NOT NULL,
    created     INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    backend_ref TEXT NOT NULL,
    public_der  BLOB,
    public_tpmt BLOB,
    thumbprint  BLOB,
    wrapped     BLOB,
    master_name    TEXT,
    master_version INTEGER,
    aad_bound      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (name, version)
);
";

/// Version 1 → 2: X.509 certificates of key versions.
const MIGRATE_1_TO_2: &str = "
CREATE TABLE certs (
    name     TEXT NOT NULL,
    version  INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    der      BLOB NOT NULL,
    PRIMARY KEY (name, version, seq),
    FOREIGN KEY (name, version) REFERENCES versions(name, version)
);
";

/// Version 2 → 3: versions adopted from a token (never destroyed there by custodyd), and the
/// zero-knowledge key pools: each pool key wrapped under a version of the pool's master, the
/// version recorded per row so a master rotation can be interrupted anywhere.
const MIGRATE_2_TO_3: &str = "
ALTER TABLE versions ADD COLUMN adopted INTEGER NOT NULL DEFAULT 0;
CREATE TABLE zk_pools (
    name        TEXT PRIMARY KEY,
    master      TEXT NOT NULL,
    share_to    TEXT NOT NULL,
    created     INTEGER NOT NULL,
    rotating_to INTEGER
);
CREATE TABLE zk_keys (
    pool           TEXT NOT NULL REFERENCES zk_pools(name),
    idx            INTEGER NOT NULL,
    master_version INTEGER NOT NULL,
    blob           BLOB NOT NULL,
    origin         TEXT NOT NULL,
    PRIMARY KEY (pool, idx)
);
";

/// Version 0 → 1: typed master reference columns, `wrapped` backend renamed `software`.
const MIGRATE_0_TO_1: &str = "
ALTER TABLE versions ADD COLUMN master_name TEXT;
ALTER TABLE versions ADD COLUMN master_version INTEGER;
ALTER TABLE versions ADD COLUMN aad_bound INTEGER NOT NULL DEFAULT 0;
UPDATE keys SET backend = 'software' WHERE backend = 'wrapped';
";

impl Store {
    /// Opens (creating if needed) the registry at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // The registry holds wrapped secrets: owner-only from the first byte (SQLite gives the
        // -wal and -shm files the database file's mode).
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    StoreError::Corrupt(path.display().to_string(), format!("cannot open: {e}"))
                })?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Deleted content (a destroyed version's wrapped secret) is overwritten, not left in
        // free pages.
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Store { conn };
        store.migrate(path)?;
        Ok(store)
    }

    /// Brings the schema to [`SCHEMA_VERSION`]: creates it in a new file, migrates an older one
    /// (one transaction per step), refuses a newer one.
    fn migrate(&mut self, path: &Path) -> Result<(), StoreError> {
        let corrupt = |m: String| StoreError::Corrupt(path.display().to_string(), m);
        let tx = self.conn.transaction()?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let has_tables = tx
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'keys'",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        match version {
            v if v > SCHEMA_VERSION => {
                return Err(corrupt(format!(
                    "registry schema {v} is newer than this daemon's ({SCHEMA_VERSION})"
                )))
            }
            SCHEMA_VERSION => return Ok(()),
            0 if !has_tables => {
                // A new file: the schema-1 tables, then every later step.
                tx.execute_batch(SCHEMA)?;
                tx.execute_batch(MIGRATE_1_TO_2)?;
                tx.execute_batch(MIGRATE_2_TO_3)?;
            }
            2 => {
                tx.execute_batch(MIGRATE_2_TO_3)?;
                tracing::info!(registry = %path.display(), "registry migrated from schema 2 to 3");
            }
            1 => {
                tx.execute_batch(MIGRATE_1_TO_2)?;
                tx.execute_batch(MIGRATE_2_TO_3)?;
                tracing::info!(registry = %path.display(), "registry migrated from schema 1 to 3");
            }
            0 => {
                tx.execute_batch(MIGRATE_0_TO_1)?;
                // The one place the old `name:vN` text is parsed: into typed columns.
                let rows: Vec<(String, u32, String)> = tx
                    .prepare(
                        "SELECT v.name, v.version, v.backend_ref FROM versions v
                         JOIN keys k ON k.name = v.name WHERE k.backend = 'software'",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<Result<_, _>>()?;
                for (name, version, reference) in rows {
                    let (master, mver) = reference
                        .rsplit_once(":v")
                        .and_then(|(n, v)| v.parse::<u32>().ok().map(|v| (n.to_owned(), v)))
                        .ok_or_else(|| {
                            corrupt(format!(
                                "`{name}` v{version}: master reference `{reference}` is not `name:vN`"
                            ))
                        })?;
                    tx.execute(
                        "UPDATE versions SET master_name = ?3, master_version = ?4, backend_ref = ''
                         WHERE name = ?1 AND version = ?2",
                        params![name, version, master, mver],
                    )?;
                }
                tx.execute_batch(MIGRATE_1_TO_2)?;
                tx.execute_batch(MIGRATE_2_TO_3)?;
                tracing::info!(registry = %path.display(), "registry migrated from schema 0 to 3");
            }
            v => return Err(corrupt(format!("unknown registry schema {v}"))),
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(())
    }

    /// Loads every key with its versions.
    pub fn load_all(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, kind, backend, template, master, validity_days, pre_expire_days
             FROM keys ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, u32>(5)?,
                r.get::<_, u32>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, kind, backend, template, master, validity_days, pre_expire_days) = row?;
            let corrupt = |what: &str| StoreError::Corrupt(name.clone(), what.to_owned());
            let rec = KeyRecord {
                kind: KeyKind::parse(&kind).ok_or_else(|| corrupt("kind"))?,
                backend: BackendKind::parse(&backend).ok_or_else(|| corrupt("backend"))?,
                template: Template::parse(&template).ok_or_else(|| corrupt("template"))?,
                master,
                validity_days,
                pre_expire_days,
                versions: self.load_versions(&name)?,
                name,
            };
            out.push(rec);
        }
        Ok(out)
    }

    fn load_versions(&self, name: &str) -> Result<Vec<VersionRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT version, state, created, not_after, backend_ref, public_der, public_tpmt,
                    thumbprint, wrapped, master_name, master_version, aad_bound, adopted
             FROM versions WHERE name = ?1 ORDER BY version",
        )?;
        let rows = stmt.query_map([name], |r| {
            Ok((
                (
                    r.get::<_, u32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<Vec<u8>>>(5)?,
                    r.get::<_, Option<Vec<u8>>>(6)?,
                    r.get::<_, Option<Vec<u8>>>(7)?,
                    r.get::<_, Option<Vec<u8>>>(8)?,
                    (
                        r.get::<_, Option<String>>(9)?,
                        r.get::<_, Option<u32>>(10)?,
                        r.get::<_, bool>(11)?,
                    ),
                ),
                r.get::<_, bool>(12)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (
                (version, state, created, not_after, backend_ref, der, tpmt, thumb, wrapped, m),
                adopted,
            ) = row?;
            let (master_name, master_version, aad_bound) = m;
            // A destroyed version keeps its master columns (history) but no secret.
            let sealed = match (wrapped, master_name, master_version) {
                (None, _, _) => None,
                (Some(blob), Some(m_name), Some(m_version)) => Some(SealedSecret {
                    blob,
                    master: MasterRef {
                        name: m_name,
                        version: m_version,
                    },
                    aad_bound,
                }),
                (Some(_), _, _) => {
                    return Err(StoreError::Corrupt(
                        name.to_owned(),
                        "wrapped secret without its master".into(),
                    ))
                }
            };
            let thumbprint = match thumb {
                None => None,
                Some(t) => Some(<[u8; 32]>::try_from(t.as_slice()).map_err(|_| {
                    StoreError::Corrupt(name.to_owned(), "thumbprint length".into())
                })?),
            };
            let certs = self.load_certs(name, version)?;
            out.push(VersionRecord {
                version,
                state: VersionState::parse(&state)
                    .ok_or_else(|| StoreError::Corrupt(name.to_owned(), "state".into()))?,
                created,
                not_after,
                backend_ref,
                public_der: der,
                public_tpmt: tpmt,
                thumbprint,
                sealed,
                certs,
                adopted,
            });
        }
        Ok(out)
    }

    fn load_certs(&self, name: &str, version: u32) -> Result<Vec<CertInfo>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT der FROM certs WHERE name = ?1 AND version = ?2 ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![name, version], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for der in rows {
            out.push(parse_certificate(&der?).map_err(|e| {
                StoreError::Corrupt(format!("{name} v{version}"), format!("certificate: {e}"))
            })?);
        }
        Ok(out)
    }

    /// Appends a certificate to a version.
    pub fn add_cert(&mut self, name: &str, version: u32, der: &[u8]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        insert_cert(&tx, name, version, der)?;
        tx.commit()?;
        Ok(())
    }

    /// Inserts a new key with its first version, atomically.
    pub fn insert_key(&mut self, key: &KeyRecord) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO keys (name, kind, backend, template, master, validity_days, pre_expire_days)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                key.name,
                key.kind.as_str(),
                key.backend.as_str(),
                key.template.as_str(),
                key.master,
                key.validity_days,
                key.pre_expire_days
            ],
        )?;
        for v in &key.versions {
            insert_version(&tx, &key.name, v)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Adds a version and marks the previous active versions `decrypt-only`, atomically.
    pub fn rotate(&mut self, name: &str, v: &VersionRecord) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE versions SET state = ?2 WHERE name = ?1 AND state = ?3",
            params![
                name,
                VersionState::DecryptOnly.as_str(),
                VersionState::Active.as_str()
            ],
        )?;
        insert_version(&tx, name, v)?;
        tx.commit()?;
        Ok(())
    }

    /// Sets the state of one version.
    pub fn set_state(
        &mut self,
        name: &str,
        version: u32,
        state: VersionState,
    ) -> Result<(), StoreError> {
        let sql = if state == VersionState::Destroyed {
            // A destroyed version's wrapped secret is gone for good.
            "UPDATE versions SET state = ?3, wrapped = NULL WHERE name = ?1 AND version = ?2"
        } else {
            "UPDATE versions SET state = ?3 WHERE name = ?1 AND version = ?2"
        };
        self.conn
            .execute(sql, params![name, version, state.as_str()])?;
        if state == VersionState::Destroyed {
            // Move the change out of the WAL into the main file (overwritten there). The state
            // change is already committed: a checkpoint that cannot finish now is reported, and
            // the next checkpoint completes it.
            match self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                }) {
                Ok(0) => {}
                Ok(_) => tracing::warn!(key = %name, "registry checkpoint busy after destroy"),
                Err(e) => tracing::warn!(key = %name, "registry checkpoint after destroy: {e}"),
            }
        }
        Ok(())
    }

    /// Replaces a version's wrapped secret with one bound to it by AAD.
    pub fn set_sealed(&mut self, name: &str, version: u32, blob: &[u8]) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE versions SET wrapped = ?3, aad_bound = 1 WHERE name = ?1 AND version = ?2",
            params![name, version, blob],
        )?;
        Ok(())
    }

    /// True if a key with this name exists.
    pub fn exists(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM keys WHERE name = ?1", [name], |_| Ok(()))
            .optional()?
            .is_some())
    }
}

fn insert_version(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    v: &VersionRecord,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO versions (name, version, state, created, not_after, backend_ref, public_der,
                               public_tpmt, thumbprint, wrapped, master_name, master_version,
                               aad_bound, adopted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            name,
            v.version,
            v.state.as_str(),
            v.created,
            v.not_after,
            v.backend_ref,
            v.public_der,
            v.public_tpmt,
            v.thumbprint.map(|t| t.to_vec()),
            v.sealed.as_ref().map(|s| &s.blob),
            v.sealed.as_ref().map(|s| &s.master.name),
            v.sealed.as_ref().map(|s| s.master.version),
            v.sealed.as_ref().is_some_and(|s| s.aad_bound),
            v.adopted,
        ],
    )?;
    for c in &v.certs {
        insert_cert(tx, name, v.version, &c.der)?;
    }
    Ok(())
}

fn insert_cert(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    version: u32,
    der: &[u8],
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO certs (name, version, seq, der)
         VALUES (?1, ?2, (SELECT COALESCE(MAX(seq), 0) + 1 FROM certs WHERE name = ?1 AND version = ?2), ?3)",
        params![name, version, der],
    )?;
    Ok(())
}
