//! The independent Python implementations in `tests/interop/`: the MOSIP envelope
//! (`mosip_envelope.py`, package `cryptography`) and a raw-TPM CreatePrimary with MOSIP's
//! templates (`tpm_mosip_primary.py`).

use std::process::{Command, Output};
use std::time::Duration;

use crate::process::{run_ok, run_with_timeout, stderr, stdout, workspace_file};

/// The MOSIP `VER_R2` envelope in Python (`seal`/`open`, `--base64`).
pub const MOSIP_ENVELOPE_PY: &str = "tests/interop/mosip_envelope.py";
/// An independent certificate authority (`ca`, `issue`, `ec`), Python `cryptography`.
pub const X509_CA_PY: &str = "tests/interop/x509_ca.py";
/// A raw TPM2_CreatePrimary with MOSIP's templates: `PORT sign|encrypt [--template]`.
pub const TPM_PRIMARY_PY: &str = "tests/interop/tpm_mosip_primary.py";

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

/// `python3 tests/interop/x509_ca.py ARGS…`, asserting success.
pub fn py_ca(args: &[&str]) -> Output {
    let mut c = Command::new("python3");
    c.arg(workspace_file(X509_CA_PY)).args(args);
    run_ok(&mut c)
}
