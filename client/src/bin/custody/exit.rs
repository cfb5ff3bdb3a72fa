//! Exit codes: one fixed table, documented in `custody --help` and README.md. A number, once
//! given, never changes meaning; a new server error code gets a new number here (the `match` in
//! [`server`] is exhaustive, so it does not compile until it has one).

use custody_client::proto::ErrorCode;

/// Success.
pub const OK: u8 = 0;
/// The daemon's answer did not follow the protocol, or carried an error code this CLI does not
/// know.
pub const PROTOCOL: u8 = 1;
/// A bad command line (clap exits with 2 too), or a file that cannot be read or written.
pub const USAGE: u8 = 2;
/// The daemon cannot be reached: connecting to, or talking on, its socket failed.
pub const CONNECT: u8 = 3;

/// The exit code for a server error code, and what it means (for the help text).
pub fn server(code: ErrorCode) -> (u8, &'static str) {
    match code {
        ErrorCode::BadRequest => (10, "the request is malformed (a missing or bad argument)"),
        ErrorCode::UnsupportedVersion => (11, "the daemon does not speak this protocol version"),
        ErrorCode::UnknownOp => (12, "the daemon does not know this operation"),
        ErrorCode::PermissionDenied => (
            13,
            "no role of yours allows this operation on this key (or the TPM refused the \
             authorization value given)",
        ),
        ErrorCode::NotFound => (14, "no such key or key version"),
        ErrorCode::AlreadyExists => (15, "a key with that name already exists"),
        ErrorCode::KeyExpired => (16, "the current version expired and auto-rotation is off"),
        ErrorCode::KeyRetired => (17, "the key version is retired or destroyed"),
        ErrorCode::WrongKind => (18, "the key's kind does not support this operation"),
        ErrorCode::Integrity => (
            19,
            "authentication or decryption failed (tampered, wrong key)",
        ),
        ErrorCode::BackendUnavailable => (20, "the TPM or HSM cannot be reached now; retry later"),
        ErrorCode::Busy => (21, "the daemon's connection limit was reached; retry later"),
        ErrorCode::TooLarge => (22, "the request or response is larger than the frame limit"),
        ErrorCode::Internal => (
            23,
            "an unexpected failure in the daemon; the message says what",
        ),
    }
}

/// The exit code for a server error whose code this CLI may not know.
pub fn for_server_error(code: Option<ErrorCode>) -> u8 {
    code.map(|c| server(c).0).unwrap_or(PROTOCOL)
}

/// Every row: exit code, the code in the `custody: CODE: message` line (`None` for success),
/// meaning; sorted by exit code.
fn rows() -> Vec<(u8, Option<&'static str>, &'static str)> {
    let mut rows = vec![
        (OK, None, "success"),
        (
            PROTOCOL,
            Some("protocol"),
            "the daemon's answer broke the protocol, or has an error code unknown here",
        ),
        (
            USAGE,
            Some("usage"),
            "bad command line, or a file that cannot be read or written",
        ),
        (
            CONNECT,
            Some("connect"),
            "the daemon cannot be reached (connecting or talking on its socket failed)",
        ),
    ];
    for c in ErrorCode::ALL {
        let (n, meaning) = server(c);
        rows.push((n, Some(c.as_str()), meaning));
    }
    rows.sort_by_key(|r| r.0);
    rows
}

/// The one-line summary for `custody -h`.
pub const SHORT_HELP: &str = "Exit codes: 0 success, 1 protocol, 2 usage, 3 connect, \
                              10 and up: the daemon's error code (`custody --help` lists them).";

/// The table for `custody --help`.
pub fn long_help() -> String {
    let mut s = String::from(
        "Exit codes. On failure stderr says `custody: CODE: message`\n\
         (with --json, stdout says {\"error\": {\"code\": CODE, \"message\": …}}).\n\n",
    );
    s.push_str(&row_line("exit", "CODE", "meaning"));
    for (n, code, meaning) in rows() {
        s.push('\n');
        s.push_str(&row_line(&n.to_string(), code.unwrap_or("-"), meaning));
    }
    s
}

fn row_line(n: &str, code: &str, meaning: &str) -> String {
    format!("  {n:>4}  {code:<20} {meaning}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented numbers. Changing one breaks scripts: add new numbers, never renumber.
    const PINNED: [(ErrorCode, u8); 14] = [
        (ErrorCode::BadRequest, 10),
        (ErrorCode::UnsupportedVersion, 11),
        (ErrorCode::UnknownOp, 12),
        (ErrorCode::PermissionDenied, 13),
        (ErrorCode::NotFound, 14),
        (ErrorCode::AlreadyExists, 15),
        (ErrorCode::KeyExpired, 16),
        (ErrorCode::KeyRetired, 17),
        (ErrorCode::WrongKind, 18),
        (ErrorCode::Integrity, 19),
        (ErrorCode::BackendUnavailable, 20),
        (ErrorCode::Busy, 21),
        (ErrorCode::TooLarge, 22),
        (ErrorCode::Internal, 23),
    ];

    #[test]
    fn exit_codes_are_pinned() {
        assert_eq!((OK, PROTOCOL, USAGE, CONNECT), (0, 1, 2, 3));
        for (code, n) in PINNED {
            assert_eq!(server(code).0, n, "{code}");
            assert_eq!(for_server_error(Some(code)), n, "{code}");
        }
        assert_eq!(for_server_error(None), PROTOCOL);
        // Every code the protocol defines is pinned here.
        for code in ErrorCode::ALL {
            assert!(
                PINNED.iter().any(|(c, _)| *c == code),
                "{code} is not pinned"
            );
        }
    }

    #[test]
    fn exit_codes_are_distinct() {
        let rows = rows();
        let mut seen = std::collections::HashSet::new();
        for (n, code, _) in &rows {
            assert!(seen.insert(*n), "exit code {n} ({code:?}) used twice");
        }
        assert_eq!(rows.len(), 4 + ErrorCode::ALL.len());
    }

    #[test]
    fn help_and_readme_list_every_exit_code() {
        let help = long_help();
        let readme = include_str!("../../../../README.md");
        for (n, code, meaning) in rows() {
            let code = code.unwrap_or("-");
            let line = row_line(&n.to_string(), code, meaning);
            assert!(help.lines().any(|l| l == line), "help lacks {line:?}");
            let row = if code == "-" {
                format!("| {n} | — |")
            } else {
                format!("| {n} | `{code}` |")
            };
            assert!(readme.contains(&row), "README.md lacks the row {row:?}");
        }
    }
}
