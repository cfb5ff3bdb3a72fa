//! `custody`: command-line client for custodyd.
//!
//! One file per command family; each declares its subcommands (a clap `Subcommand` enum) and
//! runs them with the typed client methods. This file parses the command line, connects,
//! dispatches to the family and reports failures.
#![forbid(unsafe_code)]

mod basic;
mod decrypt;
mod envelope;
mod io;
mod keys;
mod sign;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use custody_client::proto::ErrorCode;
use custody_client::{BlockingClient, ClientError};
use serde_json::json;

/// Command-line client for custodyd, the hardware-backed key custody daemon.
///
/// Binary inputs and outputs use `--in FILE` / `--out FILE`; `-` means stdin / stdout.
/// Exit codes: 0 success; 1 other failure; 2 usage error; 3 cannot reach the daemon;
/// 10 bad_request, 11 unsupported_version, 12 unknown_op, 13 permission_denied, 14 not_found,
/// 15 already_exists, 16 key_expired, 17 key_retired, 18 wrong_kind, 19 integrity,
/// 20 backend_unavailable, 21 busy, 22 too_large, 23 internal.
#[derive(Parser, Debug)]
#[command(name = "custody", version)]
struct Cli {
    /// Daemon socket [default: $CUSTODY_SOCKET, else /run/custodyd/custodyd.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print results (and errors) as JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Every command, by family. Families flattened here appear as top-level commands.
#[derive(Subcommand, Debug)]
enum Cmd {
    #[command(flatten)]
    Basic(basic::Cmd),
    /// Manage keys (create, list, show, rotate, retire, destroy, public).
    #[command(subcommand)]
    Keys(keys::Cmd),
    #[command(flatten)]
    Sign(sign::Cmd),
    #[command(flatten)]
    Decrypt(decrypt::Cmd),
    #[command(flatten)]
    Envelope(envelope::Cmd),
}

/// Why a command failed.
pub enum Failure {
    /// A bad argument or an input/output file problem, found by the CLI itself.
    Usage(String),
    /// The client library's error: cannot connect, a server error, a protocol error.
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Usage(e.to_string())
    }
}

/// What a command returns.
pub type Out = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(custody_client::default_socket);
    let json = cli.json;
    let result = BlockingClient::connect(&socket)
        .map_err(Failure::from)
        .and_then(|c| run(&c, json, cli.cmd));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            report(json, "usage", &m);
            ExitCode::from(2)
        }
        Err(Failure::Client(ClientError::Server(e))) => {
            report(json, &e.code, &e.message);
            ExitCode::from(exit_code(e.code()))
        }
        Err(Failure::Client(ClientError::Io(e))) => {
            report(json, "connect", &e.to_string());
            ExitCode::from(3)
        }
        Err(Failure::Client(e)) => {
            report(json, "protocol", &e.to_string());
            ExitCode::from(1)
        }
    }
}

fn run(c: &BlockingClient, json: bool, cmd: Cmd) -> Out {
    match cmd {
        Cmd::Basic(cmd) => basic::run(c, json, cmd),
        Cmd::Keys(cmd) => keys::run(c, json, cmd),
        Cmd::Sign(cmd) => sign::run(c, json, cmd),
        Cmd::Decrypt(cmd) => decrypt::run(c, json, cmd),
        Cmd::Envelope(cmd) => envelope::run(c, json, cmd),
    }
}

fn exit_code(code: Option<ErrorCode>) -> u8 {
    code.and_then(|c| ErrorCode::ALL.iter().position(|x| *x == c))
        .map(|i| 10 + i as u8)
        .unwrap_or(1)
}

/// Reports a failure: `custody: CODE: message` on stderr, or a JSON error object on stdout.
fn report(json: bool, code: &str, message: &str) {
    if json {
        println!("{}", json!({"error": {"code": code, "message": message}}));
    } else {
        eprintln!("custody: {code}: {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
