//! Bytes and files: hashes, base64url, random bytes, files in a daemon's directory.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::daemon::Daemon;

/// SHA-256.
pub fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// MOSIP's key index: SHA-256 of `bytes` as lowercase hex pairs joined by `:`.
pub fn key_index(bytes: &[u8]) -> String {
    sha256(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// base64url without padding.
pub fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Decodes base64url without padding (surrounding whitespace ignored); panics on bad input.
pub fn b64url_decode(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim())
        .unwrap_or_else(|e| panic!("not base64url ({e}): {s}"))
}

/// Standard base64 with padding (idOS's storage encoding).
pub fn b64std(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Decodes standard base64 with padding (surrounding whitespace ignored), panicking otherwise.
pub fn b64std_decode(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .unwrap_or_else(|e| panic!("not standard base64 ({e}): {s:?}"))
}

/// `n` random bytes from `/dev/urandom`.
pub fn random(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let mut f = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    f.read_exact(&mut buf).expect("urandom");
    buf
}

/// `b` with bit 0 of byte `i` flipped.
pub fn flip(mut b: Vec<u8>, i: usize) -> Vec<u8> {
    b[i] ^= 0x01;
    b
}

/// A path as `&str` (test paths are UTF-8).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Reads a whole file; panics with its path.
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `DIR/name` in the daemon's directory.
pub fn file(d: &Daemon, name: &str) -> PathBuf {
    d.dir().join(name)
}

/// Writes `data` to `DIR/name` in the daemon's directory; its path.
pub fn write(d: &Daemon, name: &str, data: &[u8]) -> PathBuf {
    let f = file(d, name);
    std::fs::write(&f, data).expect("write test file");
    f
}
