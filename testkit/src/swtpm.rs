//! A swtpm TPM 2.0 simulator started with `swtpm/swtpm-start` on a free TCP port.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::process::{run_with_timeout, stderr, stdout, workspace_file};

/// A running swtpm simulator (state in `dir/tpm`). Stopped on drop (state kept on disk).
pub struct Swtpm {
    dir: PathBuf,
    tcti: String,
    running: bool,
}

impl Swtpm {
    /// Starts swtpm with `swtpm/swtpm-start DIR` and remembers its TCTI string. Panics (it does
    /// not skip) when swtpm is missing or does not answer.
    pub fn start(dir: impl AsRef<Path>) -> Swtpm {
        let dir = dir.as_ref().to_path_buf();
        let tcti = Self::run_start(&dir);
        Swtpm {
            dir,
            tcti,
            running: true,
        }
    }

    fn run_start(dir: &Path) -> String {
        let out = run_with_timeout(
            Command::new(workspace_file("swtpm/swtpm-start")).arg(dir),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "swtpm-start {} failed (is swtpm installed? `make deps`): {}",
            dir.display(),
            stderr(&out)
        );
        let tcti = stdout(&out).trim().to_string();
        assert!(tcti.starts_with("swtpm:"), "unexpected TCTI `{tcti}`");
        tcti
    }

    fn run_stop(&self) -> Output {
        run_with_timeout(
            Command::new(workspace_file("swtpm/swtpm-stop")).arg(&self.dir),
            Duration::from_secs(30),
        )
    }

    /// The TCTI string, e.g. `swtpm:host=127.0.0.1,port=23456`.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// The TPM command port (from the TCTI string).
    pub fn port(&self) -> u16 {
        self.tcti
            .rsplit("port=")
            .next()
            .and_then(|p| p.split(',').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in TCTI {}", self.tcti))
    }

    /// The swtpm directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops swtpm cleanly with `swtpm/swtpm-stop` (state is saved) and asserts the script
    /// succeeded; idempotent.
    pub fn stop(&mut self) {
        if self.running {
            let out = self.run_stop();
            self.running = false;
            assert!(out.status.success(), "swtpm-stop failed: {}", stderr(&out));
        }
    }

    /// Starts swtpm again on the same state (the script reuses the previous port when it can;
    /// the TCTI string is updated).
    pub fn start_again(&mut self) {
        self.tcti = Self::run_start(&self.dir);
        self.running = true;
    }

    /// Stops and starts the same TPM (state kept); the TCTI is re-read (normally unchanged).
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Whether [`Swtpm::stop`] has not been called since the last start.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Runs a tpm2-tools command (`args[0]` is the tool) in `dir` against this TPM
    /// (`TPM2TOOLS_TCTI`, TSS error logging silenced).
    pub fn tool(&self, dir: &Path, args: &[&str]) -> Output {
        let mut c = Command::new(args[0]);
        c.args(&args[1..])
            .current_dir(dir)
            .env("TPM2TOOLS_TCTI", &self.tcti)
            .env("TSS2_LOG", "all+none");
        run_with_timeout(&mut c, Duration::from_secs(60))
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if self.running {
            self.running = false;
            let _ = self.run_stop();
        }
    }
}
