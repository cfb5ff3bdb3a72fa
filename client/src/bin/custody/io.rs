//! Input and output files, base64 and hex arguments, PEM public keys.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use clap::Args;
use custody_client::proto::ops::PlaintextResult;
use serde_json::json;

use crate::{Failure, Out};

/// `--in FILE` / `--out FILE`, shared by the commands that take binary input and give binary
/// output.
#[derive(Args, Debug)]
pub struct Io {
    /// Input file (`-` for stdin).
    #[arg(long = "in", value_name = "FILE", default_value = "-")]
    pub input: PathBuf,
    /// Output file (`-` for stdout).
    #[arg(long = "out", value_name = "FILE", default_value = "-")]
    pub output: PathBuf,
}

/// Reads a whole file, or stdin for `-`.
pub fn read_input(path: &Path) -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut buf)?;
    } else {
        buf = std::fs::read(path)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    }
    Ok(buf)
}

/// Writes a whole file, or stdout for `-`.
pub fn write_output(path: &Path, data: &[u8]) -> Out {
    if path.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        out.write_all(data)?;
        out.flush()?;
    } else {
        write_private(path, data)
            .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

/// Writes `data` to a file readable by its owner only (mode 0600, also when a regular file
/// existed with a wider mode), never through a symbolic link: outputs may be plaintexts and data
/// keys.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // A regular file that existed with a wider mode is narrowed (through the descriptor);
    // devices and pipes (`/dev/null`) are left alone.
    if f.metadata()?.is_file() {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(data)?;
    f.flush()
}

/// Reads an input, decoding base64/base64url when `base64` is set.
pub fn read_binary(path: &Path, base64: bool) -> Result<Vec<u8>, Failure> {
    let raw = read_input(path)?;
    if base64 {
        b64_decode(&raw)
    } else {
        Ok(raw)
    }
}

/// Writes an output, as base64url without padding when `base64` is set.
pub fn write_binary(path: &Path, data: &[u8], base64: bool) -> Out {
    if base64 {
        write_output(path, b64url(data).as_bytes())
    } else {
        write_output(path, data)
    }
}

/// A hex command-line argument (`:` separators allowed); `what` names it in the error.
pub fn hex_arg(s: &str, what: &str) -> Result<Vec<u8>, Failure> {
    hex::decode(s.replace(':', "")).map_err(|_| Failure::Usage(format!("{what}: not hex")))
}

/// base64url without padding, as every JSON output uses for bytes.
pub fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Standard base64 with padding (idOS's storage encoding).
pub fn b64std(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A base64 command-line argument (standard or url alphabet, padding optional); `what` names it
/// in the error.
pub fn b64_arg(s: &str, what: &str) -> Result<Vec<u8>, Failure> {
    b64_decode(s.as_bytes()).map_err(|_| Failure::Usage(format!("{what}: not base64")))
}

/// Reads an input that is either base64 text (idOS's storage encoding, surrounding whitespace
/// allowed) or the raw bytes: text that decodes as base64 is decoded, anything else is taken as
/// raw.
pub fn read_b64_or_raw(path: &Path) -> Result<Vec<u8>, Failure> {
    let raw = read_input(path)?;
    let texty = !raw.is_empty()
        && raw.iter().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'+' | b'/' | b'-' | b'_' | b'=')
                || b.is_ascii_whitespace()
        });
    if texty {
        if let Ok(d) = b64_decode(&raw) {
            return Ok(d);
        }
    }
    Ok(raw)
}

/// Decodes base64url or standard base64, with or without padding, ignoring whitespace.
fn b64_decode(text: &[u8]) -> Result<Vec<u8>, Failure> {
    let t: String = String::from_utf8_lossy(text)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let t = t.trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t))
        .map_err(|_| Failure::Usage("input is not base64 / base64url".into()))
}

/// Reads a PEM SubjectPublicKeyInfo and returns its DER.
pub fn read_pem_spki(path: &Path) -> Result<Vec<u8>, Failure> {
    let text = String::from_utf8(read_input(path)?)
        .map_err(|_| Failure::Usage(format!("{}: not a PEM file", path.display())))?;
    if text.contains("BEGIN RSA PUBLIC KEY") {
        return Err(Failure::Usage(format!(
            "{}: PKCS#1 RSA PUBLIC KEY; convert with `openssl rsa -RSAPublicKey_in -pubout`",
            path.display()
        )));
    }
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    let start = text
        .find(BEGIN)
        .ok_or_else(|| Failure::Usage(format!("{}: no BEGIN PUBLIC KEY block", path.display())))?;
    let body: String = text[start + BEGIN.len()..]
        .lines()
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| Failure::Usage(format!("{}: PEM body is not base64", path.display())))
}

/// Writes a decrypted plaintext: to `out`, or as JSON (with key and version) on stdout.
pub fn plaintext_out(json: bool, out: &Path, r: &PlaintextResult) -> Out {
    if json {
        println!(
            "{}",
            json!({"key": r.key, "version": r.version, "plaintext": b64url(&r.plaintext)})
        );
        Ok(())
    } else {
        write_output(out, &r.plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_input_accepts_both_alphabets_with_or_without_padding() {
        let want = vec![0xfb, 0xff, 0x01];
        for text in ["-_8B", "+/8B", "+/8B\n", "-_8B=="] {
            assert_eq!(
                b64_decode(text.as_bytes()).ok(),
                Some(want.clone()),
                "{text}"
            );
        }
        assert!(b64_decode(b"not base64!").is_err());
    }

    #[test]
    fn hex_arguments_may_have_colons() {
        assert_eq!(hex_arg("ab:cd", "x").ok(), Some(vec![0xab, 0xcd]));
        assert!(hex_arg("zz", "x").is_err());
    }
}
