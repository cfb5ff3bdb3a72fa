//! [`Daemon`]: one custodyd process (or one that can be started) with its own directory, config,
//! registry, audit log, and optionally its own swtpm and SoftHSM token. The CLI runners are in
//! [`crate::cli`], the raw protocol in [`crate::raw`].

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use custody_client::{BlockingClient, Client};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::builder::toml_str;
use crate::hsm::Hsm;
use crate::process::{custodyd_bin, run_with_timeout};
use crate::raw::RawConn;
use crate::swtpm::Swtpm;
use crate::system::Account;

/// Default time to wait for the daemon to answer after start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Default time to wait for the daemon to exit after SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// libfaketime's multi-threaded preload library (Debian package `faketime`).
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// A custodyd process (or one that can be started) with its own directory. Made by
/// [`crate::DaemonBuilder`].
///
/// On a panic in the test thread, a dropped `Daemon` keeps its directory and prints its path and
/// the tail of the daemon's stderr, so failures can be inspected.
pub struct Daemon {
    pub(crate) root: PathBuf,
    pub(crate) dir: Option<tempfile::TempDir>,
    pub(crate) socket: PathBuf,
    pub(crate) audit: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) stderr_path: PathBuf,
    pub(crate) base_config: String,
    pub(crate) extra: String,
    pub(crate) roles: String,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) child: Option<Child>,
    pub(crate) swtpm: Option<Swtpm>,
    pub(crate) hsm: Option<Hsm>,
    /// Run as this account with the unit's restrictions, from this installed binary.
    pub(crate) run_as: Option<(Account, PathBuf)>,
}

impl Daemon {
    /// The daemon's directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The key registry file (`[storage] path`).
    pub fn registry_path(&self) -> PathBuf {
        self.root.join("keys.db")
    }

    /// Checks the registry file as SQLite sees it (read-only, beside a running daemon):
    /// `PRAGMA integrity_check` says `ok` and `PRAGMA foreign_key_check` finds nothing. Panics
    /// with what is wrong.
    pub fn assert_registry_intact(&self) {
        let conn = rusqlite::Connection::open_with_flags(
            self.registry_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the registry read-only");
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(ok, "ok", "registry integrity_check");
        let bad: Vec<String> = conn
            .prepare("PRAGMA foreign_key_check")
            .expect("foreign_key_check")
            .query_map([], |r| r.get::<_, String>(0))
            .expect("foreign_key_check rows")
            .collect::<Result<_, _>>()
            .expect("foreign_key_check rows");
        assert!(
            bad.is_empty(),
            "registry rows without their parent in {bad:?}"
        );
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

    /// The swtpm, if started with [`crate::DaemonBuilder::with_tpm`].
    pub fn swtpm(&mut self) -> Option<&mut Swtpm> {
        self.swtpm.as_mut()
    }

    /// The token, if set up with [`crate::DaemonBuilder::with_hsm`].
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

    pub(crate) fn write_config(&self) {
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

    /// A `custodyd --config FILE` command with the daemon's environment (for a daemon built with
    /// [`crate::DaemonBuilder::run_as`], wrapped in `prlimit`, `setpriv` and `umask 0077`: its
    /// pid is still the daemon's, every wrapper execs the next).
    pub fn command(&self) -> Command {
        let mut c = match &self.run_as {
            None => Command::new(custodyd_bin()),
            Some((account, bin)) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--memlock={}", memlock_limit()))
                    .arg("--core=0")
                    .arg("setpriv")
                    .arg(format!("--reuid={}", account.uid))
                    .arg(format!("--regid={}", account.gid))
                    .arg("--init-groups")
                    .args(["--no-new-privs", "--bounding-set=-all", "--inh-caps=-all"])
                    .args(["/bin/sh", "-c", "umask 0077 && exec \"$0\" \"$@\""])
                    .arg(bin);
                c
            }
        };
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

    /// The account the daemon runs as ([`crate::DaemonBuilder::run_as`]), if not root.
    pub fn account(&self) -> Option<&Account> {
        self.run_as.as_ref().map(|(a, _)| a)
    }

    /// Everything the CLI runs of [`Daemon::cli`] and [`Daemon::cli_stdin`] wrote to stderr.
    pub fn cli_stderr(&self) -> String {
        fs::read(self.root.join("cli.stderr"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub(crate) fn record_cli_stderr(&self, err: &[u8]) {
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("cli.stderr"))
        {
            let _ = f.write_all(err);
        }
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
        drop(self.swtpm.take());
    }
}

/// The unit's `LimitMEMLOCK=infinity` when this process may set it (an unlimited hard limit, or
/// CAP_SYS_RESOURCE), else the highest it may: the hard limit (the daemon then warns that it
/// runs with memory unlocked). See [`memlock_unlimited`].
fn memlock_limit() -> String {
    if memlock_unlimited() {
        "unlimited".into()
    } else {
        let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
            .expect("getrlimit");
        hard.to_string()
    }
}

/// Whether a daemon started by [`crate::DaemonBuilder::run_as`] gets an unlimited
/// RLIMIT_MEMLOCK (and so locks its memory): the hard limit here is unlimited, or this process
/// has CAP_SYS_RESOURCE to raise it (containers often lack it).
pub fn memlock_unlimited() -> bool {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
        .expect("getrlimit");
    if hard == nix::sys::resource::RLIM_INFINITY {
        return true;
    }
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_RESOURCE: u32 = 24;
    eff & (1 << CAP_SYS_RESOURCE) != 0
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).expect("create config");
    f.write_all(text.as_bytes()).expect("write config");
    f.sync_all().ok();
    fs::rename(&tmp, path).expect("rename config");
}
