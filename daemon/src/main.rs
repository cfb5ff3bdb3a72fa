//! `custodyd`: the key custody daemon.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use custody_daemon::{config::Config, server, setup};

/// Hardware-backed key custody daemon: keeps keys in a TPM or a PKCS#11 HSM and signs, unwraps
/// and opens envelopes for local processes over a Unix socket.
///
/// Signals: SIGTERM/SIGINT stop accepting, finish in-flight requests and exit 0; SIGHUP re-reads
/// the roles from the config file (a bad file is rejected and the old roles stay).
/// Logging: `CUSTODYD_LOG` (default `info`; e.g. `debug`), to stderr (the journal under systemd).
/// The TPM and PKCS#11 libraries' own messages are off by default: custodyd reports failures
/// itself (`CUSTODYD_LOG=info,tss_esapi=debug` shows them).
#[derive(Parser, Debug)]
#[command(name = "custodyd", version)]
struct Args {
    /// Configuration file (TOML); examples in hsm-config/custodyd.softhsm.toml and custodyd.hardware.toml.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Check the configuration file and exit (0 if valid).
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CUSTODYD_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,cryptoki::mechanism=off,tss_esapi=off")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    setup::harden_process();
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("custodyd: config error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("{}: OK", args.config.display());
        return ExitCode::SUCCESS;
    }
    // Backends first: they touch the process environment, which is safe only before other
    // threads (the runtime's) exist.
    let app = match setup::build(cfg, &args.config) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("custodyd: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("custodyd: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(server::run(app));
    // The server has drained already; blocking work still running (a hung device call) must not
    // keep the process alive much longer.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("custodyd: {e}");
            ExitCode::from(1)
        }
    }
}
