//! The key registry in SQLite (WAL, synchronous=FULL). Every multi-row change is one transaction,
//! so a crash at any point leaves either the old or the new state, never half of one.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::{KeyRecord, VersionRecord, VersionState};
use crate::backend::{BackendKind, KeyKind, Template};

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
    conn: Connection,
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
    PRIMARY KEY (name, version)
);
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
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn })
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
                    thumbprint, wrapped
             FROM versions WHERE name = ?1 ORDER BY version",
        )?;
        let rows = stmt.query_map([name], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<Vec<u8>>>(5)?,
                r.get::<_, Option<Vec<u8>>>(6)?,
                r.get::<_, Option<Vec<u8>>>(7)?,
                r.get::<_, Option<Vec<u8>>>(8)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (version, state, created, not_after, backend_ref, der, tpmt, thumb, wrapped) = row?;
            let thumbprint = match thumb {
                None => None,
                Some(t) => Some(<[u8; 32]>::try_from(t.as_slice()).map_err(|_| {
                    StoreError::Corrupt(name.to_owned(), "thumbprint length".into())
                })?),
            };
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
                wrapped,
            });
        }
        Ok(out)
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
                               public_tpmt, thumbprint, wrapped)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
            v.wrapped
        ],
    )?;
    Ok(())
}
