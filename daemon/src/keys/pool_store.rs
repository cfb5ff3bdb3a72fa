//! The zero-knowledge pools in the registry: `zk_pools` (one row per pool) and `zk_keys` (one row
//! per pool key, wrapped under the master version the row names). Every change is one
//! transaction.

use rusqlite::params;

use super::store::{Store, StoreError};

/// A `zk_pools` row.
#[derive(Clone, Debug)]
pub struct PoolRow {
    /// Pool name.
    pub name: String,
    /// Master key name.
    pub master: String,
    /// Recipient key names for shares.
    pub share_to: Vec<String>,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// The master version an unfinished rotation is moving keys to.
    pub rotating_to: Option<u32>,
}

/// A `zk_keys` row.
#[derive(Clone, Debug)]
pub struct KeyRow {
    /// Pool index.
    pub index: u32,
    /// Master version the blob is wrapped under.
    pub master_version: u32,
    /// The wrapped pool key.
    pub blob: Vec<u8>,
    /// Where the key came from: `generated`, `shared` or `mosip`.
    pub origin: &'static str,
}

fn origin(s: &str) -> Option<&'static str> {
    ["generated", "shared", "mosip"]
        .into_iter()
        .find(|o| *o == s)
}

impl Store {
    /// Every pool with its keys.
    pub fn load_pools(&self) -> Result<Vec<(PoolRow, Vec<KeyRow>)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, master, share_to, created, rotating_to FROM zk_pools")?;
        let pools = stmt
            .query_map([], |r| {
                let share: String = r.get(2)?;
                Ok(PoolRow {
                    name: r.get(0)?,
                    master: r.get(1)?,
                    share_to: share
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    created: r.get(3)?,
                    rotating_to: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(pools.len());
        let mut keys = self.conn.prepare(
            "SELECT idx, master_version, blob, origin FROM zk_keys WHERE pool = ?1 ORDER BY idx",
        )?;
        for p in pools {
            let rows = keys
                .query_map([&p.name], |r| {
                    Ok((
                        r.get::<_, u32>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut k = Vec::with_capacity(rows.len());
            for (index, master_version, blob, o) in rows {
                k.push(KeyRow {
                    index,
                    master_version,
                    blob,
                    origin: origin(&o).ok_or_else(|| {
                        StoreError::Corrupt(format!("pool {} key {index}", p.name), "origin".into())
                    })?,
                });
            }
            out.push((p, k));
        }
        Ok(out)
    }

    /// Creates a pool (when `new`) and adds keys, in one transaction.
    pub fn add_pool_keys(
        &mut self,
        pool: &PoolRow,
        new: bool,
        keys: &[KeyRow],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        if new {
            tx.execute(
                "INSERT INTO zk_pools (name, master, share_to, created, rotating_to)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    pool.name,
                    pool.master,
                    pool.share_to.join(","),
                    pool.created,
                    pool.rotating_to
                ],
            )?;
        } else {
            tx.execute(
                "UPDATE zk_pools SET share_to = ?2 WHERE name = ?1",
                params![pool.name, pool.share_to.join(",")],
            )?;
        }
        {
            let mut ins = tx.prepare(
                "INSERT INTO zk_keys (pool, idx, master_version, blob, origin)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for k in keys {
                ins.execute(params![
                    pool.name,
                    k.index,
                    k.master_version,
                    k.blob,
                    k.origin
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records (or clears) the master version a rotation moves a pool's keys to.
    pub fn set_pool_rotation(&mut self, pool: &str, to: Option<u32>) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE zk_pools SET rotating_to = ?2 WHERE name = ?1",
            params![pool, to],
        )?;
        Ok(())
    }

    /// Replaces the blobs of some keys (re-wrapped under another master version), in one
    /// transaction.
    pub fn rewrap_pool_keys(&mut self, pool: &str, keys: &[KeyRow]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut up = tx.prepare(
                "UPDATE zk_keys SET master_version = ?3, blob = ?4 WHERE pool = ?1 AND idx = ?2",
            )?;
            for k in keys {
                up.execute(params![pool, k.index, k.master_version, k.blob])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}
