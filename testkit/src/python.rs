//! The independent Python implementations in `tests/interop/`: the MOSIP envelope
//! (`mosip_envelope.py`, package `cryptography`), a raw-TPM CreatePrimary with MOSIP's
//! templates (`tpm_mosip_primary.py`) and idOS's encryption with PyNaCl (`idos_nacl.py`).

use std::process::{Command, Output};
use std::time::Duration;

use crate::process::{run_ok, run_with_timeout, stderr, stdout, workspace_file};

/// The MOSIP `VER_R2` envelope in Python (`seal`/`open`, `--base64`).
pub const MOSIP_ENVELOPE_PY: &str = "tests/interop/mosip_envelope.py";
/// An independent certificate authority (`ca`, `issue`, `ec`), Python `cryptography`.
pub const X509_CA_PY: &str = "tests/interop/x509_ca.py";
/// The independent MOSIP zero-knowledge implementation.
pub const MOSIP_ZK_PY: &str = "tests/interop/mosip_zk.py";
/// A raw TPM2_CreatePrimary with MOSIP's templates: `PORT sign|encrypt [--template]`.
pub const TPM_PRIMARY_PY: &str = "tests/interop/tpm_mosip_primary.py";

/// idOS's `nacl.box`, password-derived keys and Ed25519 verification with PyNaCl (libsodium).
pub const IDOS_NACL_PY: &str = "tests/interop/idos_nacl.py";

/// `python3 tests/interop/idos_nacl.py ARGS…` with `stdin`; its output, successful or not.
pub fn py_idos(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut c = Command::new("python3");
    c.arg(workspace_file(IDOS_NACL_PY)).args(args);
    crate::process::run_with_input(&mut c, stdin, Duration::from_secs(60)).1
}

/// `idos_nacl.py ARGS…` asserting success; its stdout parsed as JSON (`null` when empty).
pub fn py_idos_json(args: &[&str], stdin: Option<&[u8]>) -> serde_json::Value {
    let out = py_idos(args, stdin);
    assert!(
        out.status.success(),
        "idos_nacl.py {args:?}: {}",
        stderr(&out)
    );
    let text = stdout(&out);
    if text.trim().is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("idos_nacl.py {args:?}: {e}: {text}"))
}

/// Fails (does not skip) unless `python3` can import PyNaCl (`make deps` installs it).
pub fn require_pynacl() {
    let mut c = Command::new("python3");
    c.args(["-c", "import nacl.public, nacl.signing"]);
    let out = run_with_timeout(&mut c, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "python3 with PyNaCl is required (make deps; pip install pynacl): {}",
        stderr(&out)
    );
}

/// `python3 SCRIPT ARGS…` for a script of the workspace (60 s limit); its output, successful or
/// not.
pub fn python(script: &str, args: &[&str]) -> Output {
    let mut c = Command::new("python3");
    c.arg(workspace_file(script)).args(args);
    run_with_timeout(&mut c, Duration::from_secs(60))
}

/// `python3 tests/interop/mosip_envelope.py ARGS…`, asserting success.
pub fn py_envelope(args: &[&str]) -> Output {
    let mut c = Command::new("python3");
    c.arg(workspace_file(MOSIP_ENVELOPE_PY)).args(args);
    run_ok(&mut c)
}

/// Fails (does not skip) unless `python3` can import the `cryptography` package.
pub fn require_python_cryptography() {
    let mut c = Command::new("python3");
    c.args(["-c", "import cryptography"]);
    let out = run_with_timeout(&mut c, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "python3 with the `cryptography` package is required (pip install cryptography): {}",
        stderr(&out)
    );
}

/// The `TPMT_PUBLIC` of MOSIP's `which` (`sign`, `encrypt`) primary, created directly on the
/// TPM at `port` by `tpm_mosip_primary.py` (which flushes it again).
pub fn python_tpm_primary(port: u16, which: &str) -> Vec<u8> {
    let out = python(TPM_PRIMARY_PY, &[&port.to_string(), which]);
    assert!(
        out.status.success(),
        "tpm_mosip_primary.py {which}: {}",
        stderr(&out)
    );
    hex::decode(stdout(&out).trim()).expect("hex TPMT_PUBLIC")
}

/// `python3 tests/interop/mosip_zk.py ARGS…` (MOSIP's zero-knowledge formats), asserting
/// success.
pub fn py_zk(args: &[&str]) -> Output {
    let mut c = Command::new("python3");
    c.arg(workspace_file(MOSIP_ZK_PY)).args(args);
    run_ok(&mut c)
}

/// `python3 tests/interop/x509_ca.py ARGS…`, asserting success.
pub fn py_ca(args: &[&str]) -> Output {
    let mut c = Command::new("python3");
    c.arg(workspace_file(X509_CA_PY)).args(args);
    run_ok(&mut c)
}
