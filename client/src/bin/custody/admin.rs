//! `admin backup`: operating the daemon itself.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use custody_client::proto::ops::BackupArgs;
use custody_client::{BlockingClient, ClientError};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{Failure, Out};

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Copy the key registry while the daemon serves (SQLite online backup) into a file (mode
    /// 0600). It holds public data and HSM-wrapped secrets only; restore it with the daemon
    /// stopped: `custodyd --restore FILE --config CONFIG`.
    Backup {
        /// File to write the backup to (`-` for stdout).
        #[arg(long = "out", value_name = "FILE")]
        out: PathBuf,
    },
}

pub fn run(c: &BlockingClient, json: bool, cmd: Cmd) -> Out {
    match cmd {
        Cmd::Backup { out } => backup(c, json, &out),
    }
}

fn backup(c: &BlockingClient, json: bool, out: &Path) -> Out {
    let r = c.admin_backup(&BackupArgs {})?;
    if Sha256::digest(&r.registry).as_slice() != r.sha256.as_slice() {
        return Err(Failure::Client(ClientError::Protocol(
            "the backup's bytes do not match the SHA-256 the daemon sent".into(),
        )));
    }
    write_private(out, &r.registry)?;
    let sha = hex::encode(&r.sha256);
    if json {
        println!(
            "{}",
            json!({
                "file": out.to_string_lossy(),
                "bytes": r.registry.len(),
                "schema_version": r.schema_version,
                "keys": r.keys,
                "versions": r.versions,
                "sha256": sha,
            })
        );
    } else if out.as_os_str() != "-" {
        println!(
            "backup of {} keys, {} versions (schema {}, {} bytes, sha256 {sha}) written to {}",
            r.keys,
            r.versions,
            r.schema_version,
            r.registry.len(),
            out.display()
        );
    }
    Ok(())
}

/// Writes a file readable by its owner only (or stdout for `-`), synced to disk.
fn write_private(path: &Path, data: &[u8]) -> Out {
    if path.as_os_str() == "-" {
        return crate::io::write_output(path, data);
    }
    crate::io::write_private(path, data)
        .and_then(|()| std::fs::File::open(path)?.sync_all())
        .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))
}
