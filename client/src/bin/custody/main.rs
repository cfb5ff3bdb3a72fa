//! `custody`: command-line client for custodyd.
//!
//! One file per command family; each declares its subcommands (a clap `Subcommand` enum) and
//! runs them with the typed client methods. This file parses the command line, connects,
//! dispatches to the family and reports failures with the exit codes in [`exit`].
#![forbid(unsafe_code)]

mod admin;
mod audit;
mod basic;
mod box_;
mod certs;
mod decrypt;
mod envelope;
mod exit;
mod io;
mod keys;
mod sign;
mod tpm;
mod zk;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use custody_client::{BlockingClient, ClientError};
use serde_json::json;

/// Command-line client for custodyd, the hardware-backed key custody daemon.
///
/// Binary inputs and outputs use `--in FILE` / `--out FILE`; `-` means stdin / stdout.
#[derive(Parser, Debug)]
#[command(
    name = "custody",
    version,
    after_help = exit::SHORT_HELP,
    after_long_help = exit::long_help()
)]
struct Cli {
    /// Daemon socket [default: $CUSTODY_SOCKET, else /run/custodyd/custodyd.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print results (and errors) as JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Refuse to talk to a socket not served by this uid (e.g. `$(id -u custodyd)`) [default:
    /// $CUSTODY_SERVER_UID, else not checked].
    #[arg(long, global = true, value_name = "UID")]
    server_uid: Option<u32>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Every command, by family. Families flattened here appear as top-level commands.
#[derive(Subcommand, Debug)]
enum Cmd {
    #[command(flatten)]
    Basic(basic::Cmd),
    /// Manage keys (create, list, show, rotate, retire, destroy, public) and their certificates
    /// (cert, csr, cert-import, cert-export, import).
    #[command(subcommand)]
    Keys(keys::Cmd),
    #[command(flatten)]
    Sign(sign::Cmd),
    #[command(flatten)]
    Decrypt(decrypt::Cmd),
    #[command(flatten)]
    Envelope(envelope::Cmd),
    /// idOS nacl.box: seal, open, reencrypt (access grants), derive (password keys).
    #[command(subcommand, name = "box")]
    Box(box_::Cmd),
    /// MOSIP's zero-knowledge key pool: init, encrypt/decrypt attributes, share and import
    /// pool keys, rotate the master, import a MOSIP export.
    #[command(subcommand)]
    Zk(zk::Cmd),
    /// Operate the daemon (backup).
    #[command(subcommand)]
    Admin(admin::Cmd),
    /// Operate the TPM (clear-lockout: end a dictionary-attack lockout).
    #[command(subcommand)]
    Tpm(tpm::Cmd),
    /// Check an audit file's hash chain and checkpoint signatures (offline: no daemon needed).
    #[command(subcommand)]
    Audit(audit::Cmd),
    /// Write the man page and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets {
        /// Output directory.
        dir: PathBuf,
    },
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
    if let Cmd::GenerateAssets { dir } = &cli.cmd {
        return match generate_assets(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("custody: cannot write to {}: {e}", dir.display());
                ExitCode::from(exit::USAGE)
            }
        };
    }
    let cli = match cli.cmd {
        Cmd::Audit(cmd) => return ExitCode::from(audit::run(cli.json, cmd)),
        cmd => Cli { cmd, ..cli },
    };
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(custody_client::default_socket);
    let json = cli.json;
    let server_uid = match cli
        .server_uid
        .map(Some)
        .map(Ok)
        .unwrap_or_else(custody_client::server_uid_from_env)
    {
        Ok(u) => u,
        Err(e) => {
            report(json, "usage", &e);
            return ExitCode::from(exit::USAGE);
        }
    };
    let result = BlockingClient::connect_checked(&socket, server_uid)
        .map_err(Failure::from)
        .and_then(|c| run(&c, json, cli.cmd));
    let code = match result {
        Ok(()) => exit::OK,
        Err(Failure::Usage(m)) => {
            report(json, "usage", &m);
            exit::USAGE
        }
        Err(Failure::Client(ClientError::Server(e))) => {
            report(json, &e.code, &e.message);
            exit::for_server_error(e.code())
        }
        Err(Failure::Client(ClientError::Io(e))) => {
            report(json, "connect", &e.to_string());
            exit::CONNECT
        }
        Err(Failure::Client(e)) => {
            report(json, "protocol", &e.to_string());
            exit::PROTOCOL
        }
    };
    ExitCode::from(code)
}

fn run(c: &BlockingClient, json: bool, cmd: Cmd) -> Out {
    match cmd {
        Cmd::Basic(cmd) => basic::run(c, json, cmd),
        Cmd::Keys(cmd) => keys::run(c, json, cmd),
        Cmd::Sign(cmd) => sign::run(c, json, cmd),
        Cmd::Decrypt(cmd) => decrypt::run(c, json, cmd),
        Cmd::Envelope(cmd) => envelope::run(c, json, cmd),
        Cmd::Box(cmd) => box_::run(c, json, cmd),
        Cmd::Zk(cmd) => zk::run(c, json, cmd),
        Cmd::Admin(cmd) => admin::run(c, json, cmd),
        Cmd::Tpm(cmd) => tpm::run(c, json, cmd),
        Cmd::GenerateAssets { .. } | Cmd::Audit(_) => Ok(()),
    }
}

/// The man page (section 1) and bash, zsh and fish completions, generated from the command
/// line definition.
fn generate_assets(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    std::fs::write(dir.join("custody.1"), page)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "custody", dir)?;
    }
    Ok(())
}

/// Reports a failure: `custody: CODE: message` on stderr, or a JSON error object on stdout.
/// Prints a failure: `custody: CODE: MESSAGE` on stderr, or `{"error": …}` on stdout with `--json`.
pub(crate) fn report(json: bool, code: &str, message: &str) {
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

    #[test]
    fn every_subcommand_says_what_it_does() {
        fn check(cmd: &clap::Command, path: &str) {
            for sub in cmd.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                assert!(
                    sub.get_about().is_some_and(|a| !a.to_string().is_empty()),
                    "`{path} --help` has no description"
                );
                check(sub, &path);
            }
        }
        check(&Cli::command(), "custody");
    }
}
