//! `zk init | show | encrypt | decrypt | share | import | rotate-master | import-mosip`: MOSIP's
//! zero-knowledge key pool. Encrypted attributes are written raw or, with `--text`, as MOSIP's
//! base64url text; inputs take either.

use std::path::PathBuf;

use clap::Subcommand;
use custody_client::proto::ops::{
    ZkAttribute, ZkCryptArgs, ZkImportArgs, ZkImportMosipArgs, ZkInitArgs, ZkPoolArgs, ZkPoolInfo,
    ZkShareArgs, ZkShowArgs,
};
use custody_client::BlockingClient;
use serde_json::json;
use zeroize::Zeroizing;

use crate::io::{b64url, read_b64_or_raw, read_input, read_pem_spki, write_output};
use crate::{Failure, Out};

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a pool of random AES-256 keys wrapped under a master key in the HSM (admin).
    /// Idempotent: an existing pool of the same master is completed to SIZE keys.
    Init {
        /// Pool name: 1–64 of A-Z a-z 0-9 . _ -
        pool: String,
        /// The aes256 master key (MOSIP's K9; K18 on IDA's side).
        #[arg(long)]
        master: String,
        /// Keys at indices 0..SIZE; 0 for a pool that only receives shared keys (IDA).
        #[arg(long, default_value_t = 10_000)]
        size: u32,
        /// Recipient key (rsa2048-oaep, e.g. IDA's K22) every encryption's share is made for;
        /// repeat for several. Replaces the pool's list.
        #[arg(long = "share-to", value_name = "KEY")]
        share_to: Vec<String>,
    },
    /// Show a pool: size, index range, keys per master version, share recipients.
    Show {
        /// Pool name.
        pool: String,
        /// Also unwrap every pool key and report the ones that fail.
        #[arg(long)]
        verify: bool,
    },
    /// Encrypt a file as one attribute for a person's id (UIN/VID); writes the attribute and
    /// prints the pool index and the share string (MOSIP's encryptedRandomKey).
    Encrypt {
        /// Pool name.
        pool: String,
        /// The person's UIN or VID.
        #[arg(long)]
        id: String,
        /// Attribute value (`-` for stdin).
        #[arg(long = "in", value_name = "FILE", default_value = "-")]
        input: PathBuf,
        /// Encrypted attribute output (`-` for stdout).
        #[arg(long = "out", value_name = "FILE", default_value = "-")]
        output: PathBuf,
        /// The attribute's identifier (free text).
        #[arg(long, default_value = "value")]
        identifier: String,
        /// Write MOSIP's base64url text instead of raw bytes.
        #[arg(long)]
        text: bool,
        /// Where to write the share string (default: printed on stderr; with --json, in the JSON).
        #[arg(long, value_name = "FILE")]
        share_out: Option<PathBuf>,
    },
    /// Decrypt an attribute with the person's id; writes the plaintext (needs `zk.decrypt`).
    Decrypt {
        /// Pool name.
        pool: String,
        /// The person's UIN or VID.
        #[arg(long)]
        id: String,
        /// The encrypted attribute: raw, or MOSIP's base64url text (`-` for stdin).
        #[arg(long = "in", value_name = "FILE", default_value = "-")]
        input: PathBuf,
        /// Plaintext output (`-` for stdout).
        #[arg(long = "out", value_name = "FILE", default_value = "-")]
        output: PathBuf,
    },
    /// Make a share segment of one pool key for a recipient (admin): writes
    /// base64url(thumbprint ‖ RSA-OAEP-SHA256(pool key)).
    Share {
        /// Pool name.
        pool: String,
        /// Pool index.
        #[arg(long)]
        index: u32,
        /// Recipient key name (rsa2048-oaep).
        #[arg(long, conflicts_with = "to_pem", required_unless_present = "to_pem")]
        to: Option<String>,
        /// Recipient public key, PEM SubjectPublicKeyInfo (RSA-2048).
        #[arg(long, value_name = "FILE")]
        to_pem: Option<PathBuf>,
        /// Output (`-` for stdout).
        #[arg(long = "out", value_name = "FILE", default_value = "-")]
        output: PathBuf,
    },
    /// Import a pool key from MOSIP's share string, addressed to a version of KEY, into the
    /// pool at INDEX, re-wrapped under the pool's master (IDA's zkReEncryptRandomKey).
    Import {
        /// Pool name (IDA: created with `zk init POOL --master K18 --size 0`).
        pool: String,
        /// The rsa2048-oaep key (K22) the share is addressed to.
        #[arg(long = "with", value_name = "KEY")]
        key: String,
        /// The share string (`-` for stdin).
        #[arg(long = "in", value_name = "FILE", default_value = "-")]
        input: PathBuf,
        /// The pool index (MOSIP's rankomKeyIndex).
        #[arg(long)]
        index: u32,
    },
    /// Rotate the pool's master key and re-wrap every pool key under the new version (admin).
    /// Crash-safe: run it again after an interruption to finish.
    RotateMaster {
        /// Pool name.
        pool: String,
    },
    /// Load a pool exported from MOSIP's data_encrypt_keystore table (CSV `id,key`, key =
    /// base64(AES-ECB(K9, pool key))) with the adopted K9 (admin). All rows or none.
    ImportMosip {
        /// Pool name (created under MASTER when it does not exist).
        pool: String,
        /// The aes256 key the export is wrapped under (MOSIP's K9, see `keys adopt`).
        #[arg(long)]
        master: String,
        /// The CSV export (`-` for stdin).
        #[arg(long = "in", value_name = "FILE", default_value = "-")]
        input: PathBuf,
    },
}

fn show(json: bool, p: &ZkPoolInfo) {
    if json {
        println!("{}", serde_json::to_string_pretty(p).unwrap_or_default());
        return;
    }
    let range = match (p.min_index, p.max_index) {
        (Some(a), Some(b)) => format!("indices {a}..={b}"),
        _ => "empty".into(),
    };
    println!("{}  master {}  {} keys ({range})", p.pool, p.master, p.size);
    for m in &p.masters {
        println!("  master v{}: {} keys", m.version, m.keys);
    }
    if !p.share_to.is_empty() {
        println!("  shares to: {}", p.share_to.join(", "));
    }
    if let Some(v) = p.rotating_to {
        println!(
            "  rotation to master v{v} unfinished: run `custody zk rotate-master {}`",
            p.pool
        );
    }
    if let Some(n) = p.rewrapped {
        println!("  re-wrapped now: {n}");
    }
    if let (Some(ok), Some(failed)) = (p.verified, &p.failed) {
        println!("  verified: {ok} unwrap, {} fail {failed:?}", failed.len());
    }
}

fn text_arg(path: &std::path::Path, what: &str) -> Result<String, Failure> {
    String::from_utf8(read_input(path)?)
        .map_err(|_| Failure::Usage(format!("{what}: not UTF-8 text")))
}

pub fn run(c: &BlockingClient, json: bool, cmd: Cmd) -> Out {
    match cmd {
        Cmd::Init {
            pool,
            master,
            size,
            share_to,
        } => show(
            json,
            &c.zk_init(&ZkInitArgs {
                pool,
                master,
                size: Some(size),
                share_to: (!share_to.is_empty()).then_some(share_to),
            })?,
        ),
        Cmd::Show { pool, verify } => show(json, &c.zk_show(&ZkShowArgs { pool, verify })?),
        Cmd::Encrypt {
            pool,
            id,
            input,
            output,
            identifier,
            text,
            share_out,
        } => {
            let value = Zeroizing::new(read_input(&input)?);
            let r = c.zk_encrypt(&ZkCryptArgs {
                pool,
                id,
                attributes: vec![ZkAttribute {
                    identifier,
                    value: value.to_vec(),
                }],
            })?;
            let attr = r
                .attributes
                .first()
                .ok_or_else(|| Failure::Usage("the daemon returned no attribute".into()))?;
            if let Some(f) = &share_out {
                write_output(f, r.share.as_bytes())?;
            }
            if json {
                println!(
                    "{}",
                    json!({
                        "index": r.index,
                        "share": r.share,
                        "attributes": r.attributes.iter().map(|a| json!({
                            "identifier": a.identifier,
                            "value": b64url(&a.value),
                        })).collect::<Vec<_>>(),
                    })
                );
                if output.as_os_str() != "-" {
                    write_output(&output, &attr.value)?;
                }
            } else {
                if text {
                    write_output(&output, b64url(&attr.value).as_bytes())?;
                } else {
                    write_output(&output, &attr.value)?;
                }
                eprintln!("index {}", r.index);
                if share_out.is_none() && !r.share.is_empty() {
                    eprintln!("share {}", r.share);
                }
            }
        }
        Cmd::Decrypt {
            pool,
            id,
            input,
            output,
        } => {
            let value = read_b64_or_raw(&input)?;
            let r = c.zk_decrypt(&ZkCryptArgs {
                pool,
                id,
                attributes: vec![ZkAttribute {
                    identifier: "value".into(),
                    value,
                }],
            })?;
            let plain = Zeroizing::new(
                r.attributes
                    .into_iter()
                    .next()
                    .map(|a| a.value)
                    .unwrap_or_default(),
            );
            if json {
                println!("{}", json!({ "value": b64url(&plain) }));
            } else {
                write_output(&output, &plain)?;
            }
        }
        Cmd::Share {
            pool,
            index,
            to,
            to_pem,
            output,
        } => {
            let r = c.zk_share(&ZkShareArgs {
                pool,
                index,
                to,
                to_public_key: to_pem.as_deref().map(read_pem_spki).transpose()?,
            })?;
            if json {
                println!(
                    "{}",
                    json!({"share": r.share, "thumbprint": hex::encode(&r.thumbprint), "version": r.version})
                );
            } else {
                write_output(&output, r.share.as_bytes())?;
            }
        }
        Cmd::Import {
            pool,
            key,
            input,
            index,
        } => {
            let share = text_arg(&input, "share")?;
            let r = c.zk_import(&ZkImportArgs {
                pool,
                key,
                share: share.trim().to_owned(),
                index,
            })?;
            if json {
                println!(
                    "{}",
                    json!({"index": r.index, "imported": r.imported, "thumbprint": hex::encode(&r.thumbprint), "version": r.version})
                );
            } else if r.imported {
                println!("imported index {} (v{} of the key)", r.index, r.version);
            } else {
                println!("index {} already holds this key: unchanged", r.index);
            }
        }
        Cmd::RotateMaster { pool } => show(json, &c.zk_rotate_master(&ZkPoolArgs { pool })?),
        Cmd::ImportMosip {
            pool,
            master,
            input,
        } => {
            let export = text_arg(&input, "export")?;
            let r = c.zk_import_mosip(&ZkImportMosipArgs {
                pool,
                master,
                export,
            })?;
            if json {
                println!(
                    "{}",
                    json!({"pool": r.pool, "rows": r.rows, "imported": r.imported})
                );
            } else {
                println!("{}: {} rows, {} keys imported", r.pool, r.rows, r.imported);
            }
        }
    }
    Ok(())
}
