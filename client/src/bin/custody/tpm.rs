//! `tpm clear-lockout`: operating the TPM itself.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use custody_client::proto::ops::{Password, TpmClearLockoutArgs};
use custody_client::BlockingClient;
use serde_json::json;
use zeroize::Zeroizing;

use crate::{Failure, Out};

/// Largest TPM authorization value (TPM2B_AUTH holds a SHA-512 digest's worth).
const MAX_AUTH: usize = 64;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// End a dictionary-attack lockout at once (TPM2_DictionaryAttackLockReset) with the TPM's
    /// lockout authorization, read from FILE as `tpm2_dictionarylockout --clear-lockout -p
    /// file:FILE` reads it: trailing CR/LF stripped, `hex:` decodes hex, `str:` is dropped,
    /// else the bytes as they are (up to a NUL). An empty file is the empty authorization. A
    /// wrong authorization locks the lockout hierarchy for the TPM's lockout-recovery time.
    ClearLockout {
        /// File holding the lockout authorization (`-` for stdin).
        #[arg(long = "lockout-auth-file", value_name = "FILE")]
        lockout_auth_file: PathBuf,
    },
}

pub fn run(c: &BlockingClient, json: bool, cmd: Cmd) -> Out {
    match cmd {
        Cmd::ClearLockout { lockout_auth_file } => clear_lockout(c, json, &lockout_auth_file),
    }
}

fn clear_lockout(c: &BlockingClient, json: bool, file: &Path) -> Out {
    let raw = Zeroizing::new(if file.as_os_str() == "-" {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut v)?;
        v
    } else {
        std::fs::read(file)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?
    });
    let auth = parse_auth(&raw).map_err(Failure::Usage)?;
    let r = c.tpm_clear_lockout(&TpmClearLockoutArgs {
        lockout_auth: Password::new(auth.to_vec()),
    })?;
    if json {
        println!(
            "{}",
            json!({
                "counter": r.counter,
                "max_tries": r.max_tries,
                "in_lockout": r.in_lockout,
                "recovery_seconds": r.recovery_seconds,
                "lockout_recovery_seconds": r.lockout_recovery_seconds,
            })
        );
    } else {
        println!(
            "dictionary-attack lockout cleared: {} of {} failures, lockout {}",
            r.counter,
            r.max_tries,
            if r.in_lockout { "YES" } else { "no" }
        );
    }
    Ok(())
}

/// The authorization value in a lockout-auth file, read the way tpm2-tools reads `file:`
/// passwords: trailing `\n`/`\r` removed, the text ends at its first NUL, a `hex:` prefix means
/// hex digits, a `str:` prefix is dropped.
fn parse_auth(raw: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut end = raw.len();
    while end > 0 && matches!(raw[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    let text = &raw[..end];
    let text = text
        .iter()
        .position(|b| *b == 0)
        .map_or(text, |nul| &text[..nul]);
    let auth = if let Some(h) = text.strip_prefix(b"hex:") {
        Zeroizing::new(
            hex::decode(h)
                .map_err(|e| format!("the lockout authorization after `hex:` is not hex: {e}"))?,
        )
    } else {
        Zeroizing::new(text.strip_prefix(b"str:").unwrap_or(text).to_vec())
    };
    if auth.len() > MAX_AUTH {
        return Err(format!(
            "a TPM authorization value is at most {MAX_AUTH} bytes; the file gives {}",
            auth.len()
        ));
    }
    Ok(auth)
}

#[cfg(test)]
mod tests {
    use super::parse_auth;

    #[test]
    fn lockout_auth_files_read_like_tpm2_tools() {
        assert_eq!(&parse_auth(b"s3cret\n").unwrap()[..], b"s3cret");
        assert_eq!(&parse_auth(b"s3cret\r\n\n").unwrap()[..], b"s3cret");
        assert_eq!(&parse_auth(b"s3cret").unwrap()[..], b"s3cret");
        assert_eq!(&parse_auth(b"").unwrap()[..], b"");
        assert_eq!(&parse_auth(b"\n").unwrap()[..], b"");
        assert_eq!(&parse_auth(b"hex:00ff10\n").unwrap()[..], &[0, 0xff, 0x10]);
        assert_eq!(&parse_auth(b"str:hex:ab").unwrap()[..], b"hex:ab");
        assert_eq!(&parse_auth(b"ab\0cd").unwrap()[..], b"ab");
        assert_eq!(&parse_auth(b" spaced \n").unwrap()[..], b" spaced ");
        assert!(parse_auth(b"hex:zz").is_err());
        assert!(parse_auth(&[b'a'; 65]).is_err());
        assert_eq!(parse_auth(&[b'a'; 64]).unwrap().len(), 64);
    }
}
