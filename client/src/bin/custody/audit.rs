//! `audit verify`: checks an audit file offline (no daemon needed).

use std::path::PathBuf;

use clap::Subcommand;
use custody_client::audit::{verify as verify_chain, AuditPublicKey};
use serde_json::json;

use crate::{exit, report};

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Check an audit file's hash chain (every line's `seq` and `prev`) and, with `--pubkey`,
    /// every checkpoint's signature. Names the first line altered, removed or reordered (exit 19,
    /// `integrity`). Lines after the last checkpoint are chained but not yet signed: the output
    /// says how many.
    Verify {
        /// The audit file (`audit.file` of the daemon's config).
        file: PathBuf,
        /// The audit key's public key, PEM (`custody keys public AUDIT_KEY --format pem`).
        #[arg(long, value_name = "PEM")]
        pubkey: Option<PathBuf>,
    },
}

/// Runs the command; returns the exit code.
pub fn run(json: bool, cmd: Cmd) -> u8 {
    let Cmd::Verify { file, pubkey } = cmd;
    let key = match pubkey.map(|p| {
        std::fs::read_to_string(&p)
            .map_err(|e| format!("cannot read {}: {e}", p.display()))
            .and_then(|t| AuditPublicKey::from_pem(&t).map_err(|e| format!("{}: {e}", p.display())))
    }) {
        None => None,
        Some(Ok(k)) => Some(k),
        Some(Err(e)) => {
            report(json, "usage", &e);
            return exit::USAGE;
        }
    };
    let text = match std::fs::read(&file) {
        Ok(t) => t,
        Err(e) => {
            report(
                json,
                "usage",
                &format!("cannot read {}: {e}", file.display()),
            );
            return exit::USAGE;
        }
    };
    match verify_chain(&text, key.as_ref()) {
        Ok(s) => {
            if json {
                println!(
                    "{}",
                    json!({
                        "ok": true,
                        "lines": s.lines,
                        "first_seq": s.first_seq,
                        "last_seq": s.last_seq,
                        "checkpoints": s.checkpoints,
                        "verified_checkpoints": s.verified,
                        "unsigned_tail": s.unsigned_tail,
                        "continues_from": s.continues_from,
                    })
                );
            } else {
                println!(
                    "{}: chain intact: {} lines (seq {}..{}), {} checkpoints{}; {} lines after \
                     the last checkpoint{}",
                    file.display(),
                    s.lines,
                    s.first_seq,
                    s.last_seq,
                    s.checkpoints,
                    if key.is_some() {
                        format!(", {} signatures verified", s.verified)
                    } else {
                        " (signatures not checked: give --pubkey)".into()
                    },
                    s.unsigned_tail,
                    s.continues_from
                        .map(|h| format!(
                            "; continues a rotated file whose last line hashes to {h}"
                        ))
                        .unwrap_or_default()
                );
            }
            exit::OK
        }
        Err(f) => {
            if json {
                println!(
                    "{}",
                    json!({"ok": false, "line": f.line, "error": {"code": "integrity", "message": f.problem}})
                );
            } else {
                eprintln!("custody: integrity: {}: {}", file.display(), f.problem);
            }
            exit::server(custody_client::proto::ErrorCode::Integrity).0
        }
    }
}
