//! Paths of the workspace and its binaries, running commands with a time limit, polling, and
//! re-running the current test executable as a helper process.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// One second, for readable timeouts (`5 * SEC`).
pub const SEC: Duration = Duration::from_secs(1);

/// The workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ has a parent")
        .to_path_buf()
}

/// A file of the workspace, e.g. `swtpm/swtpm-start`.
pub fn workspace_file(rel: &str) -> PathBuf {
    workspace_root().join(rel)
}

/// Path of a workspace binary (`custodyd`, `custody`) built next to the running executable:
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

/// Runs an external tool (60 s limit) and asserts it succeeded; its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

/// A command's stdout as (lossy) UTF-8.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command's stderr as (lossy) UTF-8.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs one test of the current test executable in a new process
/// (`--exact NAME --ignored --nocapture`) with `env` added, for tests that need a fresh process
/// (SoftHSM reads its token directory only at the first `C_Initialize` of a process). The helper
/// test is normally `#[ignore]`d and does nothing without its environment. Panics unless the
/// helper succeeds; returns its stdout and stderr.
pub fn run_helper_test(name: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args(["--exact", name, "--ignored", "--nocapture"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "helper process {name} failed: {text}");
    text
}

/// A helper test of the current test executable (see [`run_helper_test`]) running as another
/// user, with piped stdin and stdout: it reports on stdout and runs until its stdin closes.
pub struct HelperAs {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl HelperAs {
    /// Starts test `name` (`--exact NAME --ignored --nocapture`) as `uid:gid` with no
    /// supplementary groups and `env` added.
    pub fn spawn(name: &str, uid: u32, gid: u32, env: &[(&str, &str)]) -> HelperAs {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
        cmd.args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn helper");
        let out = child.stdout.take().expect("stdout");
        HelperAs {
            child,
            lines: std::io::BufReader::new(out).lines(),
        }
    }

    /// What follows `prefix` on the next line the helper prints that contains it (the test
    /// harness prints its own text too); panics if the helper ends first.
    pub fn line(&mut self, prefix: &str) -> String {
        for l in self.lines.by_ref() {
            let l = l.expect("helper stdout");
            // The harness prints `test NAME ... ` without a newline before the test runs.
            if let Some(i) = l.find(prefix) {
                return l[i + prefix.len()..].trim().to_owned();
            }
        }
        panic!("helper ended before printing {prefix:?}");
    }

    /// Writes a line to the helper's stdin.
    pub fn say(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to helper");
        stdin.flush().expect("flush");
    }

    /// Closes the helper's stdin and waits for it; panics unless it succeeded.
    pub fn finish(mut self) {
        drop(self.child.stdin.take());
        let st = self.child.wait().expect("wait helper");
        assert!(st.success(), "helper failed: {st}");
    }
}

impl Drop for HelperAs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
