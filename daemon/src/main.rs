//! `custodyd`: the key custody daemon.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use custody_daemon::keys::backup;
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
    /// Configuration file (TOML); examples in /usr/share/doc/custodyd/examples (the package) or
    /// hsm-config/ (the source). Refused if group or others can write it.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        required_unless_present = "generate_assets"
    )]
    config: Option<PathBuf>,
    /// Check the configuration file and exit (0 if valid).
    #[arg(long)]
    check: bool,
    /// With the daemon stopped: check a backup made by `custody admin backup` (SQLite integrity,
    /// schema version, the digest recorded in it, every key record) and replace the configured
    /// registry with it; the previous registry is kept beside it as `<registry>.pre-restore-<time>`.
    /// Exits 0 when restored, 1 when refused (nothing changed).
    #[arg(long, value_name = "FILE", conflicts_with = "check")]
    restore: Option<PathBuf>,
    /// Write the man page and shell completions into DIR and exit (for packaging).
    #[arg(long, value_name = "DIR", hide = true)]
    generate_assets: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(dir) = &args.generate_assets {
        return match generate_assets(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("custodyd: cannot write to {}: {e}", dir.display());
                ExitCode::from(1)
            }
        };
    }
    let Some(config_path) = args.config.clone() else {
        eprintln!("custodyd: --config FILE is required");
        return ExitCode::from(2);
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CUSTODYD_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,cryptoki::mechanism=off,tss_esapi=off")
            }),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: not in the journal or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = setup::check_file_trusted(&config_path, "config file") {
        eprintln!("custodyd: config error: {e}");
        return ExitCode::from(2);
    }
    let cfg = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("custodyd: config error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("{}: OK", config_path.display());
        return ExitCode::SUCCESS;
    }
    if let Some(file) = &args.restore {
        return restore(file, &cfg.storage.path);
    }
    // Before anything secret (the PIN, the backends) is read.
    setup::harden_process();
    if let Err(e) = setup::check_user(&cfg, &config_path) {
        eprintln!("custodyd: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = setup::raise_fd_limit(&cfg, &config_path) {
        eprintln!("custodyd: {e}");
        return ExitCode::from(2);
    }
    // One daemon per registry; held until the process exits.
    let _registry_lock = match setup::lock_registry(&cfg.storage.path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("custodyd: {e}");
            return ExitCode::from(2);
        }
    };
    // Backends first: they touch the process environment, which is safe only before other
    // threads (the runtime's) exist.
    let app = match setup::build(cfg, &config_path) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("custodyd: {e}");
            return ExitCode::from(2);
        }
    };
    custody_daemon::stages::init_from_env();
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
    if let Some(r) = custody_daemon::stages::report() {
        eprintln!("custodyd stage timing: {r}");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("custodyd: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--restore FILE`: with the registry lock (the daemon stopped), check the backup and replace
/// the registry.
fn restore(file: &Path, registry: &Path) -> ExitCode {
    let _lock = match setup::lock_registry(registry) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("custodyd: restore: {e}");
            return ExitCode::from(1);
        }
    };
    match backup::restore(file, registry) {
        Ok(r) => {
            println!(
                "restored {} keys, {} versions (schema {}) from {} to {}",
                r.summary.keys,
                r.summary.versions,
                r.summary.schema_version,
                file.display(),
                registry.display()
            );
            if !r.digest_checked {
                println!(
                    "note: {} carries no backup record (not made by `custody admin backup`): \
                     its structure and rows were checked, there was no digest to compare",
                    file.display()
                );
            }
            if let Some(p) = r.previous {
                println!("the previous registry was kept as {}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("custodyd: restore: {e}");
            ExitCode::from(1)
        }
    }
}

/// The man page (section 8) and bash, zsh and fish completions, generated from the command
/// line definition.
fn generate_assets(dir: &Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let cmd = Args::command();
    let man = clap_mangen::Man::new(cmd.clone()).section("8");
    let mut page = Vec::new();
    man.render(&mut page)?;
    std::fs::write(dir.join("custodyd.8"), page)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "custodyd", dir)?;
    }
    Ok(())
}
