//! SoftHSM 2 tokens initialised with `hsm-config/init-token`, and `pkcs11-tool` on them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::process::{run_with_timeout, stderr, stdout, workspace_file};

/// The SoftHSM2 PKCS#11 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSM2 token initialised by `hsm-config/init-token DIR [LABEL]`. Several tokens may share
/// one directory (one `softhsm2.conf`, one `tokens/`, one user PIN).
#[derive(Clone, Debug)]
pub struct Hsm {
    /// Directory holding `softhsm2.conf`, `tokens/`, `user.pin`.
    pub dir: PathBuf,
    /// Token label.
    pub label: String,
    /// Value for `SOFTHSM2_CONF`.
    pub conf: PathBuf,
    /// File holding the user PIN.
    pub pin_file: PathBuf,
}

impl Hsm {
    /// Initialises a token labelled `custody` under `dir` (idempotent).
    pub fn init(dir: impl AsRef<Path>) -> Hsm {
        Self::init_with_label(dir, "custody")
    }

    /// Initialises a token with `label` under `dir` (idempotent). Panics (it does not skip) when
    /// SoftHSM is missing.
    pub fn init_with_label(dir: impl AsRef<Path>, label: &str) -> Hsm {
        assert!(
            Path::new(SOFTHSM_MODULE).exists(),
            "SoftHSM module {SOFTHSM_MODULE} is missing: install softhsm2 (`make deps`)"
        );
        let dir = dir.as_ref().to_path_buf();
        let out = run_with_timeout(
            Command::new(workspace_file("hsm-config/init-token"))
                .arg(&dir)
                .arg(label),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "init-token {} {label} failed: {}",
            dir.display(),
            stderr(&out)
        );
        let dir = fs::canonicalize(&dir).expect("token dir");
        Hsm {
            conf: dir.join("softhsm2.conf"),
            pin_file: dir.join("user.pin"),
            label: label.to_owned(),
            dir,
        }
    }

    /// The user PIN.
    pub fn pin(&self) -> String {
        fs::read_to_string(&self.pin_file)
            .expect("user.pin")
            .trim()
            .to_owned()
    }

    /// The `[pkcs11]` config section for this token.
    pub fn config_section(&self) -> String {
        format!(
            "[pkcs11]\nmodule = {}\ntoken_label = {}\npin_file = {}\n",
            crate::toml_str(SOFTHSM_MODULE),
            crate::toml_str(&self.label),
            crate::toml_str(&self.pin_file.to_string_lossy())
        )
    }

    /// `pkcs11-tool --module SOFTHSM --token-label LABEL --login --pin PIN ARGS…` with this
    /// token's `SOFTHSM2_CONF`; its output, successful or not.
    ///
    /// SoftHSM's file store has no lock between processes: while the process under test rewrites
    /// the token's files, a second process scanning the token directory can miss the token
    /// ("No slot with token named …"). That answer is retried (up to 10 times, 100 ms apart);
    /// any other outcome is returned as it is.
    pub fn pkcs11_tool(&self, args: &[&str]) -> Output {
        let pin = self.pin();
        let mut attempt = 0;
        loop {
            let mut c = Command::new("pkcs11-tool");
            c.env("SOFTHSM2_CONF", &self.conf)
                .args([
                    "--module",
                    SOFTHSM_MODULE,
                    "--token-label",
                    &self.label,
                    "--login",
                    "--pin",
                    &pin,
                ])
                .args(args);
            let out = run_with_timeout(&mut c, Duration::from_secs(60));
            attempt += 1;
            if out.status.success()
                || attempt >= 10
                || !stderr(&out).contains("No slot with token named")
            {
                return out;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Writes a key made outside custodyd onto the token, as another application (MOSIP's
    /// keymanager) would have: `pkcs11-tool --write-object FILE --type TYPE` with a label and a
    /// `CKA_ID`, `CKA_SENSITIVE` set, and `CKA_EXTRACTABLE` only when `extractable`. `ty` is
    /// `secrkey` (FILE: the raw AES-256 key) or `privkey` (FILE: a DER private key); the key may
    /// decrypt. Asserts success.
    pub fn write_key(&self, file: &Path, ty: &str, label: &str, id_hex: &str, extractable: bool) {
        let file = file.to_str().expect("utf-8 path");
        let mut args = vec![
            "--write-object",
            file,
            "--type",
            ty,
            "--label",
            label,
            "--id",
            id_hex,
            "--sensitive",
            "--usage-decrypt",
        ];
        if ty == "secrkey" {
            args.extend(["--key-type", "AES:32"]);
        }
        if extractable {
            args.push("--extractable");
        }
        let out = self.pkcs11_tool(&args);
        assert!(
            out.status.success(),
            "pkcs11-tool --write-object: {}",
            stderr(&out)
        );
    }

    /// `pkcs11-tool --list-objects` on this token, asserting success; its stdout.
    pub fn list_objects(&self) -> String {
        let out = self.pkcs11_tool(&["--list-objects"]);
        assert!(out.status.success(), "pkcs11-tool: {}", stderr(&out));
        stdout(&out)
    }

    /// Labels of the objects on this token (`pkcs11-tool --list-objects`).
    pub fn object_labels(&self) -> Vec<String> {
        self.list_objects()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("label:"))
            .map(|l| l.trim().to_owned())
            .collect()
    }

    /// The directory of this token under `tokens/` (SoftHSM names it by a UUID; the label is
    /// found in its `token.object`).
    pub fn token_object_dir(&self) -> PathBuf {
        let needle = format!("{:<32}", self.label);
        for entry in fs::read_dir(self.dir.join("tokens")).expect("tokens dir") {
            let dir = entry.expect("entry").path();
            if let Ok(obj) = fs::read(dir.join("token.object")) {
                if obj.windows(32).any(|w| w == needle.as_bytes()) {
                    return dir;
                }
            }
        }
        panic!("no token directory for {}", self.label);
    }
}
