//! Running the `custody` CLI against a [`Daemon`]: plain, with stdin, as another user; and the
//! checks every test uses (`cli_ok`, `cli_json`, `cli_err`, `cli_usage_err`, status).

use std::process::{Command, Output};
use std::time::Duration;

use custody_proto::ErrorCode;
use serde_json::Value as Json;

use crate::daemon::Daemon;
use crate::process::{custody_bin, run_with_input, run_with_timeout, stderr, stdout};

impl Daemon {
    /// `custody --socket SOCKET ARGS…`, with a 30 s timeout.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut c = self.cli_command(args);
        let out = run_with_timeout(&mut c, Duration::from_secs(30));
        self.record_cli_stderr(&out.stderr);
        out
    }

    /// `custody --socket SOCKET ARGS…` with `input` on stdin (e.g. `sign k --in -`).
    pub fn cli_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut c = self.cli_command(args);
        let out = run_with_input(&mut c, Some(input), Duration::from_secs(30)).1;
        self.record_cli_stderr(&out.stderr);
        out
    }

    /// `custody --socket SOCKET ARGS…` run as another user via
    /// `setpriv --reuid=USER --regid=GROUP --clear-groups` (the test runs as root). Returns the
    /// CLI's pid (as the daemon sees it in the audit log) and its output. The socket must be
    /// reachable by that user: see [`crate::DaemonBuilder::dir_mode`] and `socket_mode`.
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

/// `custody ARGS…`, asserting success.
pub fn cli_ok(d: &Daemon, args: &[&str]) -> Output {
    let out = d.cli(args);
    assert!(
        out.status.success(),
        "custody {args:?} failed ({}): {}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

/// `custody --json ARGS…`, asserting success; the parsed JSON.
pub fn cli_json(d: &Daemon, args: &[&str]) -> Json {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = cli_ok(d, &a);
    serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("custody {args:?}: not JSON ({e}): {}", stdout(&out)))
}

/// The CLI's exit code for a server error code, as documented: 10 for `bad_request` and on in
/// the order of `ErrorCode::ALL` (`unit test: exit_codes_follow_error_code_order`).
pub fn exit_code_of(code: ErrorCode) -> i32 {
    match code {
        ErrorCode::BadRequest => 10,
        ErrorCode::UnsupportedVersion => 11,
        ErrorCode::UnknownOp => 12,
        ErrorCode::PermissionDenied => 13,
        ErrorCode::NotFound => 14,
        ErrorCode::AlreadyExists => 15,
        ErrorCode::KeyExpired => 16,
        ErrorCode::KeyRetired => 17,
        ErrorCode::WrongKind => 18,
        ErrorCode::Integrity => 19,
        ErrorCode::BackendUnavailable => 20,
        ErrorCode::Busy => 21,
        ErrorCode::TooLarge => 22,
        ErrorCode::Internal => 23,
    }
}

/// `custody ARGS…` must fail with the server error `code`: checks the exit code
/// ([`exit_code_of`]) and that stderr is the line `custody: CODE: MESSAGE`. Returns the message.
pub fn cli_err(d: &Daemon, args: &[&str], code: ErrorCode) -> String {
    expect_failure(d.cli(args), args, exit_code_of(code), code.as_str())
}

/// `custody ARGS…` must be refused by the CLI itself (exit 2, `custody: usage: MESSAGE`), before
/// anything reaches the daemon. Returns the message.
pub fn cli_usage_err(d: &Daemon, args: &[&str]) -> String {
    expect_failure(d.cli(args), args, 2, "usage")
}

fn expect_failure(out: Output, args: &[&str], exit: i32, code: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(exit),
        "custody {args:?}: expected {code} (exit {exit}), got {}: {}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    let prefix = format!("custody: {code}: ");
    let err = stderr(&out);
    assert!(err.starts_with(&prefix), "custody {args:?}: stderr {err:?}");
    err[prefix.len()..].trim_end().to_owned()
}

/// `custody --json status`, asserting success; the parsed JSON.
pub fn status_json(d: &Daemon) -> Json {
    let out = d.cli(&["--json", "status"]);
    assert!(out.status.success(), "custody status failed: {out:?}");
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

/// The entry of backend `name` (`tpm`, `pkcs11`) in `status`: `{name, ok, detail}`.
pub fn status_backend(d: &Daemon, name: &str) -> Json {
    let s = status_json(d);
    s["backends"]
        .as_array()
        .unwrap_or_else(|| panic!("no backends: {s}"))
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name}: {s}"))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_error_code_order() {
        for (i, code) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(exit_code_of(code), 10 + i as i32, "{code:?}");
        }
    }
}
