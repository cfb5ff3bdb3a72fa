//! End-to-end test harness for custodyd: real daemon processes, real swtpm, real SoftHSM.
//!
//! Everything a test needs to drive the daemon from the outside:
//!
//! * [`bin_path`] finds `custodyd` / `custody` next to the test executable
//!   (`target/<profile>/`); run `cargo build --workspace` before the tests.
//! * [`Swtpm`] starts a swtpm simulator with `swtpm/swtpm-start` and stops it on drop.
//! * [`Hsm`] initialises a SoftHSM2 token with `hsm-config/init-token`.
//! * [`DaemonBuilder`] writes a config into a fresh temporary directory and starts a [`Daemon`],
//!   waiting until it answers `hello`. A [`Daemon`] hands out clients, runs the CLI, sends
//!   signals, restarts on the same state, and reads the audit file and stderr.
//! * [`RawConn`] speaks the wire protocol by hand on a plain `UnixStream`, for tests that need to
//!   misbehave (garbage, truncated frames, bad CBOR…).
//!
//! ```no_run
//! use custody_e2e::DaemonBuilder;
//! let mut d = DaemonBuilder::new().server(&["max_connections = 8"]).start();
//! let out = d.cli(&["ping"]);
//! assert!(out.status.success());
//! assert_eq!(d.terminate().code(), Some(0));
//! ```
//!
//! On a panic in the test thread, a dropped [`Daemon`] keeps its directory and prints its path
//! and the tail of the daemon's stderr, so failures can be inspected.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub use custody_client::{BlockingClient, Client, ClientError};
pub use custody_proto as proto;
use custody_proto::ops::{names, HelloArgs};
use custody_proto::{frame, Request, Response, PROTOCOL_VERSION};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// Default time to wait for the daemon to answer after start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Default time to wait for the daemon to exit after SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Roles used when the builder is not given any: root (uid 0) may do everything on every key.
pub const DEFAULT_ROLES: &str = r#"[[roles]]
name = "admin"
unix_users = [0]
ops = ["*"]
keys = ["*"]
"#;

/// The workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of a workspace binary (`custodyd`, `custody`) built next to the running test executable:
/// `target/<profile>/deps/<test>` → `target/<profile>/<name>`. Panics if it is missing.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    if !p.is_file() {
        panic!(
            "{} not found: run `cargo build --workspace` first",
            p.display()
        );
    }
    p
}

/// Path of the `custodyd` binary.
pub fn custodyd_bin() -> PathBuf {
    bin_path("custodyd")
}

/// Path of the `custody` CLI binary.
pub fn custody_bin() -> PathBuf {
    bin_path("custody")
}

/// Polls `f` every 20 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command (stdin empty), killing it after `timeout`. Panics if it cannot be started
/// or times out.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    run_with_input(cmd, None, timeout).1
}

/// Runs a command feeding `input` (if any) on its stdin, killing it after `timeout`; returns its
/// pid and output. Panics if it cannot be started or times out.
pub fn run_with_input(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> (u32, Output) {
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id();
    let feeder = child.stdin.take().map(|mut w| {
        let data = input.unwrap_or_default().to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        })
    });
    // Read pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let out = Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    };
    (pid, out)
}

fn script(rel: &str) -> PathBuf {
    workspace_root().join(rel)
}

// ---------------------------------------------------------------------------------------------
// swtpm

/// A running swtpm simulator (state in `dir/tpm`). Stopped on drop.
pub struct Swtpm {
    dir: PathBuf,
    tcti: String,
    running: bool,
}

impl Swtpm {
    /// Starts swtpm with `swtpm/swtpm-start DIR` and remembers its TCTI string.
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
            Command::new(script("swtpm/swtpm-start")).arg(dir),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "swtpm-start {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let tcti = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(tcti.starts_with("swtpm:"), "unexpected TCTI `{tcti}`");
        tcti
    }

    /// The TCTI string, e.g. `swtpm:host=127.0.0.1,port=23456`.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// The swtpm directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops swtpm (state is saved); idempotent.
    pub fn stop(&mut self) {
        if self.running {
            let _ = run_with_timeout(
                Command::new(script("swtpm/swtpm-stop")).arg(&self.dir),
                Duration::from_secs(30),
            );
            self.running = false;
        }
    }

    /// Starts swtpm again on the same state (the script reuses the previous port when it can;
    /// the TCTI string is updated).
    pub fn start_again(&mut self) {
        self.tcti = Self::run_start(&self.dir);
        self.running = true;
    }

    /// Whether [`Swtpm::stop`] has not been called since the last start.
    pub fn is_running(&self) -> bool {
        self.running
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// SoftHSM

/// A SoftHSM2 token initialised by `hsm-config/init-token DIR [LABEL]`.
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

/// libfaketime's multi-threaded preload library (Debian package `faketime`).
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// The SoftHSM2 PKCS#11 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

impl Hsm {
    /// Initialises a token labelled `custody` under `dir` (idempotent).
    pub fn init(dir: impl AsRef<Path>) -> Hsm {
        Self::init_with_label(dir, "custody")
    }

    /// Initialises a token with `label` under `dir` (idempotent).
    pub fn init_with_label(dir: impl AsRef<Path>, label: &str) -> Hsm {
        let dir = dir.as_ref().to_path_buf();
        let out = run_with_timeout(
            Command::new(script("hsm-config/init-token"))
                .arg(&dir)
                .arg(label),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "init-token {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
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
            toml_str(SOFTHSM_MODULE),
            toml_str(&self.label),
            toml_str(&self.pin_file.to_string_lossy())
        )
    }
}

/// Quotes a string as a TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------------
// Daemon

/// Builds and starts a [`Daemon`] in a fresh temporary directory.
///
/// The config always has `[server] socket = DIR/custodyd.sock`, `[storage] path = DIR/keys.db`
/// and `[audit] file = DIR/audit.log`; lines given to [`DaemonBuilder::server`] are added to
/// `[server]`, [`DaemonBuilder::roles`] replaces [`DEFAULT_ROLES`], and
/// [`DaemonBuilder::extra`] is appended verbatim (e.g. `[keys]` or `[[keys.declare]]`).
#[derive(Default)]
pub struct DaemonBuilder {
    server: Vec<String>,
    roles: Option<String>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    tpm: bool,
    hsm: bool,
    dir_mode: Option<u32>,
    socket_name: Option<String>,
    pkcs11: Vec<String>,
}

impl DaemonBuilder {
    /// A builder with defaults: no backends, [`DEFAULT_ROLES`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Start a swtpm in `DIR/swtpm` and configure `[tpm] tcti`.
    pub fn with_tpm(mut self) -> Self {
        self.tpm = true;
        self
    }

    /// Initialise a SoftHSM token in `DIR/hsm`, configure `[pkcs11]` and set `SOFTHSM2_CONF`.
    pub fn with_hsm(mut self) -> Self {
        self.hsm = true;
        self
    }

    /// Adds lines (`key = value`) to the `[server]` section.
    pub fn server(mut self, lines: &[&str]) -> Self {
        self.server.extend(lines.iter().map(|s| s.to_string()));
        self
    }

    /// Replaces the default roles with this TOML (`[[roles]]` tables; may be empty for none).
    pub fn roles(mut self, toml: &str) -> Self {
        self.roles = Some(toml.to_owned());
        self
    }

    /// Appends TOML verbatim at the end of the config (e.g. `[keys.defaults]`, `[[keys.declare]]`).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push(toml.to_owned());
        self
    }

    /// Sets an environment variable for the daemon.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Sets the mode of the temporary directory (default 0700), e.g. 0o755 so that other users
    /// can reach a socket inside it.
    pub fn dir_mode(mut self, mode: u32) -> Self {
        self.dir_mode = Some(mode);
        self
    }

    /// Puts the socket at `DIR/<rel>` instead of `DIR/custodyd.sock` (`rel` may name
    /// subdirectories that do not exist yet: the daemon creates them).
    pub fn socket_name(mut self, rel: &str) -> Self {
        self.socket_name = Some(rel.to_owned());
        self
    }

    /// Adds lines (`key = value`) to the `[pkcs11]` section written by
    /// [`DaemonBuilder::with_hsm`] (e.g. `max_sessions = 4`, `oaep = "software"`). Do not repeat
    /// `module`, `token_label` or `pin_file`, which the harness writes itself.
    pub fn pkcs11(mut self, lines: &[&str]) -> Self {
        self.pkcs11.extend(lines.iter().map(|s| s.to_string()));
        self
    }

    /// Writes the config and starts the daemon; panics (with the daemon's stderr) if it does not
    /// answer `hello` within [`READY_TIMEOUT`].
    pub fn start(self) -> Daemon {
        let d = self.prepare();
        let mut d = d;
        d.spawn();
        d.wait_ready(READY_TIMEOUT);
        d
    }

    /// Writes the config (starting swtpm / initialising the token if asked) but does not start
    /// the daemon. Use [`Daemon::spawn`] and [`Daemon::wait_ready`], or
    /// [`Daemon::run_to_exit`] for a daemon expected to fail.
    pub fn prepare(self) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("custodyd-e2e-")
            .tempdir()
            .expect("tempdir");
        if let Some(m) = self.dir_mode {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(m)).expect("chmod dir");
        }
        let root = dir.path().to_path_buf();
        let swtpm = self.tpm.then(|| Swtpm::start(root.join("swtpm")));
        let hsm = self.hsm.then(|| Hsm::init(root.join("hsm")));
        let socket = root.join(self.socket_name.as_deref().unwrap_or("custodyd.sock"));
        let audit = root.join("audit.log");
        let mut cfg = String::new();
        cfg.push_str("[server]\n");
        cfg.push_str(&format!(
            "socket = {}\n",
            toml_str(&socket.to_string_lossy())
        ));
        for l in &self.server {
            cfg.push_str(l);
            cfg.push('\n');
        }
        cfg.push_str(&format!(
            "\n[storage]\npath = {}\n\n[audit]\nfile = {}\n\n",
            toml_str(&root.join("keys.db").to_string_lossy()),
            toml_str(&audit.to_string_lossy())
        ));
        if let Some(t) = &swtpm {
            cfg.push_str(&format!("[tpm]\ntcti = {}\n\n", toml_str(t.tcti())));
        }
        if let Some(h) = &hsm {
            cfg.push_str(&h.config_section());
            for l in &self.pkcs11 {
                cfg.push_str(l);
                cfg.push('\n');
            }
            cfg.push('\n');
        }
        let mut env = self.env;
        if let Some(h) = &hsm {
            env.push((
                "SOFTHSM2_CONF".into(),
                h.conf.to_string_lossy().into_owned(),
            ));
        }
        let body_end = cfg.len();
        for e in &self.extra {
            cfg.push_str(e);
            cfg.push('\n');
        }
        let roles = self.roles.unwrap_or_else(|| DEFAULT_ROLES.to_owned());
        let d = Daemon {
            socket,
            audit,
            config: root.join("custodyd.toml"),
            stderr_path: root.join("custodyd.stderr"),
            base_config: cfg[..body_end].to_owned(),
            extra: cfg[body_end..].to_owned(),
            roles,
            env,
            child: None,
            swtpm,
            hsm,
            dir: Some(dir),
            root,
        };
        d.write_config();
        d
    }
}

/// A custodyd process (or one that can be started) with its own directory.
pub struct Daemon {
    root: PathBuf,
    dir: Option<tempfile::TempDir>,
    socket: PathBuf,
    audit: PathBuf,
    config: PathBuf,
    stderr_path: PathBuf,
    base_config: String,
    extra: String,
    roles: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
    swtpm: Option<Swtpm>,
    hsm: Option<Hsm>,
}

impl Daemon {
    /// The daemon's directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The config file path.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The audit file path.
    pub fn audit_path(&self) -> &Path {
        &self.audit
    }

    /// The swtpm, if started with [`DaemonBuilder::with_tpm`].
    pub fn swtpm(&mut self) -> Option<&mut Swtpm> {
        self.swtpm.as_mut()
    }

    /// The token, if set up with [`DaemonBuilder::with_hsm`].
    pub fn hsm(&self) -> Option<&Hsm> {
        self.hsm.as_ref()
    }

    /// The pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The full config text the daemon was (or will be) started with.
    pub fn config_text(&self) -> String {
        format!("{}{}\n{}", self.base_config, self.extra, self.roles)
    }

    fn write_config(&self) {
        write_atomic(&self.config, &self.config_text());
    }

    /// Replaces the roles in the config file (does not signal; see [`Daemon::reload`]).
    pub fn set_roles(&mut self, toml: &str) {
        self.roles = toml.to_owned();
        self.write_config();
    }

    /// Overwrites the config file with arbitrary text (e.g. a broken file).
    pub fn write_raw_config(&self, text: &str) {
        write_atomic(&self.config, text);
    }

    /// Sends SIGHUP (reload roles). The daemon reloads asynchronously: poll for the effect.
    pub fn reload(&self) {
        self.signal(Signal::SIGHUP);
    }

    /// Sends a signal to the running daemon.
    pub fn signal(&self, sig: Signal) {
        let pid = self.pid().expect("daemon is not running");
        signal::kill(Pid::from_raw(pid as i32), sig).expect("kill");
    }

    /// A `custodyd --config FILE` command with the daemon's environment.
    pub fn command(&self) -> Command {
        let mut c = Command::new(custodyd_bin());
        c.arg("--config").arg(&self.config);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Sets (or replaces) an environment variable for the next start of the daemon.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Moves the daemon's clock (only the daemon process) by `offset`, e.g. `"+30h"` or
    /// `"+1200d"`, from its next start on, with libfaketime (installed by `make deps`). The
    /// monotonic clock is left alone so timeouts behave.
    pub fn shift_clock(&mut self, offset: &str) {
        assert!(
            Path::new(FAKETIME_LIB).exists(),
            "{FAKETIME_LIB} missing: run `make deps` (installs faketime)"
        );
        self.set_env("LD_PRELOAD", FAKETIME_LIB);
        self.set_env("FAKETIME", offset);
        self.set_env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    }

    /// Removes an environment variable for the next start of the daemon.
    pub fn remove_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    /// Starts the process (stderr appended to [`Daemon::stderr`]'s file), without waiting.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let err = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("stderr file");
        let out = err.try_clone().expect("dup");
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn custodyd");
        self.child = Some(child);
    }

    /// Runs the daemon with its config and expects it to exit on its own within `timeout`
    /// (e.g. a config error); returns its output.
    pub fn run_to_exit(&self, timeout: Duration) -> Output {
        run_with_timeout(&mut self.command(), timeout)
    }

    /// Polls the socket with `hello` until the daemon answers; panics with the daemon's stderr
    /// if it exits or does not answer within `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "custodyd exited during start-up ({st})\nconfig:\n{}\nstderr:\n{}",
                    self.config_text(),
                    self.stderr()
                );
            }
            if let Ok(mut c) = RawConn::connect(&self.socket) {
                if c.hello().map(|r| r.result.is_ok()).unwrap_or(false) {
                    return;
                }
            }
            if Instant::now() > end {
                panic!(
                    "custodyd did not answer on {} within {timeout:?}\nstderr:\n{}",
                    self.socket.display(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => c.try_wait().expect("try_wait").is_none(),
        }
    }

    /// Asserts that the process is still running (with its stderr otherwise).
    pub fn assert_running(&mut self) {
        if !self.is_running() {
            panic!("custodyd is not running; stderr:\n{}", self.stderr());
        }
    }

    /// Sends SIGTERM and waits up to [`EXIT_TIMEOUT`] for the exit (then SIGKILL and panic).
    pub fn terminate(&mut self) -> ExitStatus {
        self.terminate_within(EXIT_TIMEOUT)
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit (then SIGKILL and panic).
    pub fn terminate_within(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit; SIGKILL and panic after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("daemon is not running");
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "custodyd did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the process (leaves the socket file behind) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the daemon if it runs (SIGTERM, expecting exit 0), then starts it again in the
    /// same directory with the same config, registry, swtpm and token, and waits until ready.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let st = self.terminate();
            assert!(st.success(), "custodyd exited with {st} on SIGTERM");
        }
        if let Some(t) = self.swtpm.as_mut() {
            if !t.is_running() {
                t.start_again();
            }
            // The script reuses the old port when it can; if not, point the config at the new one.
            let line = format!("tcti = {}", toml_str(t.tcti()));
            let start = self.base_config.find("\n[tpm]\ntcti = ").map(|i| i + 7);
            if let Some(start) = start {
                let end = start + self.base_config[start..].find('\n').unwrap_or(0);
                self.base_config.replace_range(start..end, &line);
                self.write_config();
            }
        }
        self.spawn();
        self.wait_ready(READY_TIMEOUT);
    }

    /// Everything the daemon wrote to stderr (and stdout) so far, across restarts.
    pub fn stderr(&self) -> String {
        fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The audit file, one parsed JSON value per line (panics on a line that is not JSON).
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        let text = fs::read_to_string(&self.audit).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }

    /// A blocking client connected to the socket (after `hello`).
    pub fn client(&self) -> BlockingClient {
        BlockingClient::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect: {e}\nstderr:\n{}", self.stderr()))
    }

    /// An async client connected to the socket (after `hello`).
    pub async fn async_client(&self) -> Client {
        Client::connect(&self.socket)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"))
    }

    /// A raw protocol connection (no `hello` sent yet).
    pub fn raw(&self) -> RawConn {
        RawConn::connect(&self.socket).expect("connect")
    }

    /// `custody --socket SOCKET ARGS…`, with a 30 s timeout.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut c = self.cli_command(args);
        run_with_timeout(&mut c, Duration::from_secs(30))
    }

    /// `custody --socket SOCKET ARGS…` with `input` on stdin (e.g. `sign k --in -`).
    pub fn cli_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut c = self.cli_command(args);
        run_with_input(&mut c, Some(input), Duration::from_secs(30)).1
    }

    /// `custody --socket SOCKET ARGS…` run as another user via
    /// `setpriv --reuid=USER --regid=GROUP --clear-groups` (the test runs as root). Returns the
    /// CLI's pid (as the daemon sees it in the audit log) and its output. The socket must be
    /// reachable by that user: see [`DaemonBuilder::dir_mode`] and `socket_mode`.
    pub fn cli_as(&self, user: &str, group: &str, args: &[&str]) -> (u32, Output) {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={user}"))
            .arg(format!("--regid={group}"))
            .arg("--clear-groups")
            .arg(custody_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args);
        run_with_input(&mut c, None, Duration::from_secs(30))
    }

    /// The `custody --socket SOCKET ARGS…` command, to customise (stdin, uid wrappers…).
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(custody_bin());
        c.arg("--socket").arg(&self.socket).args(args);
        c
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                let p = d.keep();
                let err = self.stderr();
                let tail: String = {
                    let lines: Vec<&str> = err.lines().collect();
                    lines[lines.len().saturating_sub(40)..].join("\n")
                };
                eprintln!(
                    "custodyd test directory kept at {}\n--- custodyd stderr (tail) ---\n{tail}",
                    p.display()
                );
            }
        }
        // swtpm (if any) is stopped by its own Drop, before the directory goes away.
        if let Some(mut t) = self.swtpm.take() {
            t.stop();
        }
    }
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).expect("create config");
    f.write_all(text.as_bytes()).expect("write config");
    f.sync_all().ok();
    fs::rename(&tmp, path).expect("rename config");
}

// ---------------------------------------------------------------------------------------------
// Raw protocol connection

/// A hand-driven protocol connection on a blocking `UnixStream`: send arbitrary bytes or frames,
/// read response frames one by one, detect a closed connection.
pub struct RawConn {
    /// The stream (public for tests that want to do something unusual).
    pub stream: UnixStream,
}

/// What reading a response frame produced.
#[derive(Debug)]
pub enum Reply {
    /// A decoded response.
    Frame(Response),
    /// The server closed the connection (EOF or reset) before a whole frame arrived.
    Closed,
    /// Nothing arrived within the timeout.
    Timeout,
}

impl RawConn {
    /// Connects (default read timeout 10 s).
    pub fn connect(path: &Path) -> std::io::Result<RawConn> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(RawConn { stream })
    }

    /// Writes raw bytes.
    pub fn send_bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(b)
    }

    /// Writes a frame: 4-byte big-endian length, then `body`.
    pub fn send_frame(&mut self, body: &[u8]) -> std::io::Result<()> {
        self.send_bytes(&frame_bytes(body))
    }

    /// Sends a request with serde-serialisable args.
    pub fn send<A: serde::Serialize>(
        &mut self,
        id: u64,
        op: &str,
        args: &A,
    ) -> std::io::Result<()> {
        self.send_frame(&request_body(id, op, args))
    }

    /// Sends `hello {version}` with id 0xfeed.
    pub fn send_hello(&mut self, version: u32) -> std::io::Result<()> {
        self.send(
            0xfeed,
            names::HELLO,
            &HelloArgs {
                version,
                client: Some("custody-e2e raw".into()),
            },
        )
    }

    /// Sends `hello {version: PROTOCOL_VERSION}` and reads the response.
    pub fn hello(&mut self) -> std::io::Result<Response> {
        self.send_hello(PROTOCOL_VERSION)?;
        match self.read(Duration::from_secs(10)) {
            Reply::Frame(r) => Ok(r),
            other => Err(std::io::Error::other(format!("hello: {other:?}"))),
        }
    }

    /// Reads one response frame, waiting up to `timeout`.
    pub fn read(&mut self, timeout: Duration) -> Reply {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("set_read_timeout");
        let mut header = [0u8; frame::HEADER_LEN];
        match read_full(&mut self.stream, &mut header) {
            Ok(true) => {}
            Ok(false) => return Reply::Closed,
            Err(e) if is_timeout(&e) => return Reply::Timeout,
            Err(_) => return Reply::Closed,
        }
        let len = u32::from_be_bytes(header) as usize;
        let mut body = vec![0u8; len];
        match read_full(&mut self.stream, &mut body) {
            Ok(true) => {}
            Ok(false) => return Reply::Closed,
            Err(e) if is_timeout(&e) => return Reply::Timeout,
            Err(_) => return Reply::Closed,
        }
        Reply::Frame(Response::decode(&body).expect("server sent an undecodable response"))
    }

    /// Reads one response frame; panics unless one arrives within `timeout`.
    pub fn expect_frame(&mut self, timeout: Duration) -> Response {
        match self.read(timeout) {
            Reply::Frame(r) => r,
            other => panic!("expected a response frame, got {other:?}"),
        }
    }

    /// Panics unless the server closes the connection within `timeout` (no frame before).
    pub fn expect_closed(&mut self, timeout: Duration) {
        match self.read(timeout) {
            Reply::Closed => {}
            other => panic!("expected the connection to be closed, got {other:?}"),
        }
    }
}

/// Encodes a request body (CBOR `{id, op, args}`).
pub fn request_body<A: serde::Serialize>(id: u64, op: &str, args: &A) -> Vec<u8> {
    Request::new(id, op, args)
        .and_then(|r| r.encode())
        .expect("encode request")
}

/// Prefixes `body` with its 4-byte big-endian length.
pub fn frame_bytes(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Fills `buf`; Ok(false) on EOF before it is full.
fn read_full(s: &mut UnixStream, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) => return Ok(false),
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
