//! Start-up: process hardening, backends from config, registry, declared keys.

use std::path::Path;
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::mman::{mlockall, MlockAllFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

use crate::audit::AuditLog;
use crate::auth::Policy;
use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::backend::external::ExternalBackend;
use crate::backend::pkcs11::{Pkcs11Backend, Pkcs11Config};
use crate::backend::software::SoftwareBackend;
use crate::backend::tpm::{TpmBackend, TpmConfig};

use crate::backend::Backend;
use crate::config::{Config, Pkcs11Section};
use crate::keys::KeyManager;
use crate::state::App;

/// Protects the process before anything secret is read: no core dumps (PR_SET_DUMPABLE 0, which
/// also refuses ptrace attach by other processes of the same uid, and RLIMIT_CORE 0), and all
/// memory locked (never swapped) when RLIMIT_MEMLOCK allows it. Failures are warnings, once each:
/// the daemon still runs, with what it could not get named in the log.
pub fn harden_process() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!("could not disable core dumps (PR_SET_DUMPABLE): {e}");
    }
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        tracing::warn!("could not set RLIMIT_CORE to 0: {e}");
    }
    lock_memory();
}

/// File descriptors kept for everything but client connections: the listening socket, the
/// TPM, PKCS#11 sessions, the registry, the audit file, blocking threads' files.
pub const FD_RESERVE: u64 = 64;

/// Raises the open-file limit to its hard limit and checks that `server.max_connections` (plus
/// one uid's quota of connections without a role, plus [`FD_RESERVE`] and the PKCS#11 sessions)
/// fits under it: otherwise accept would hit EMFILE and the token and the registry could not
/// open files. Returns the limit now in force.
pub fn raise_fd_limit(cfg: &Config, path: &Path) -> Result<u64, String> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| format!("cannot read RLIMIT_NOFILE: {e}"))?;
    let limit = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!("could not raise RLIMIT_NOFILE from {soft} to {hard}: {e}");
                soft
            }
        }
    } else {
        soft
    };
    let s = &cfg.server;
    let sessions = cfg.pkcs11.as_ref().map_or(0, |p| p.max_sessions as u64);
    let need = s.max_connections as u64 + s.max_connections_per_uid as u64 + FD_RESERVE + sessions;
    if need > limit {
        return Err(format!(
            "{}: key `server.max_connections`: {} connections + {} per uid + {} reserved \
             descriptors need {need} open files, but the limit (RLIMIT_NOFILE, the unit's \
             LimitNOFILE) is {limit}: raise the limit or lower max_connections",
            path.display(),
            s.max_connections,
            s.max_connections_per_uid,
            FD_RESERVE + sessions
        ));
    }
    Ok(limit)
}

/// Locks every page of the process, present and future, as it is first touched
/// (`mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`), so PINs, unwrapped software keys and
/// plaintexts never reach swap. Only with an unlimited RLIMIT_MEMLOCK (the unit's
/// `LimitMEMLOCK=infinity`): under a finite limit, future mappings beyond it would fail, so the
/// daemon warns once instead and runs unlocked.
fn lock_memory() {
    match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) if soft == RLIM_INFINITY => {
            let flags = MlockAllFlags::MCL_CURRENT
                | MlockAllFlags::MCL_FUTURE
                | MlockAllFlags::from_bits_retain(libc::MCL_ONFAULT);
            match mlockall(flags) {
                Ok(()) => tracing::debug!("memory locked (mlockall)"),
                Err(e) => tracing::warn!(
                    "memory not locked: mlockall failed ({e}); secrets may be written to swap"
                ),
            }
        }
        Ok((soft, _)) => tracing::warn!(
            "memory not locked: RLIMIT_MEMLOCK is {} KiB (the unit's LimitMEMLOCK=infinity \
             allows locking); secrets may be written to swap",
            soft / 1024
        ),
        Err(e) => tracing::warn!("memory not locked: cannot read RLIMIT_MEMLOCK: {e}"),
    }
}

/// Refuses to run as root unless the config says `server.allow_root = true` (development and
/// tests): in production custodyd runs as the unprivileged `custodyd` user.
pub fn check_user(cfg: &Config, path: &Path) -> Result<(), String> {
    if nix::unistd::geteuid().is_root() && !cfg.server.allow_root {
        return Err(format!(
            "refusing to run as root: run custodyd as its own user (the systemd unit uses \
             User=custodyd), or set `allow_root = true` in [server] of {} for development",
            path.display()
        ));
    }
    Ok(())
}

/// Refuses a file (the config, the PIN file) that someone other than root and the daemon's own
/// user could change: a symbolic link, not a regular file, writable by group or others, or owned
/// by another user.
pub fn check_file_trusted(file: &Path, what: &str) -> Result<(), String> {
    open_trusted(file, what, false).map(|_| ())
}

/// Opens `file` for reading without following a symbolic link and checks the opened file (not
/// the path again) as [`check_file_trusted`] says; a `secret` (the PIN file) must moreover be
/// readable by no one but the daemon's user: not by others, and by a group only if it is the
/// daemon's own.
pub fn open_trusted(file: &Path, what: &str, secret: bool) -> Result<std::fs::File, String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(file)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                format!(
                    "{what} {} is a symbolic link: refusing it; give the file's real path",
                    file.display()
                )
            } else {
                format!("{what} {}: cannot read: {e}", file.display())
            }
        })?;
    let meta = f
        .metadata()
        .map_err(|e| format!("{what} {}: cannot read: {e}", file.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "{what} {} is not a regular file: refusing it",
            file.display()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "{what} {} is writable by group or others (mode {mode:04o}): refusing it; \
             `chmod go-w` it",
            file.display()
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "{what} {} is owned by uid {}, neither root nor custodyd's uid {me}: refusing it",
            file.display(),
            meta.uid()
        ));
    }
    if secret {
        if mode & 0o004 != 0 {
            return Err(format!(
                "{what} {} is readable by others (mode {mode:04o}): refusing it; \
                 `chmod o-r` it",
                file.display()
            ));
        }
        let my_gid = nix::unistd::getegid().as_raw();
        if mode & 0o040 != 0 && meta.gid() != my_gid {
            return Err(format!(
                "{what} {} is readable by group {} (mode {mode:04o}), which is not custodyd's \
                 group {my_gid}: refusing it; `chmod g-r` or `chgrp` it",
                file.display(),
                meta.gid()
            ));
        }
    }
    Ok(f)
}

/// Takes the registry's lock file (`<registry>.lock`, exclusive, not waiting): one daemon per
/// registry, and `--restore` refuses to run while a daemon holds it. Held until the returned
/// value is dropped (or the process exits).
pub fn lock_registry(registry: &Path) -> Result<Flock<std::fs::File>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = registry.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = std::path::PathBuf::from(name);
    if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        if e == nix::errno::Errno::EWOULDBLOCK {
            format!(
                "the registry {} is in use by a running custodyd (it holds {}): stop it first",
                registry.display(),
                lock_path.display()
            )
        } else {
            format!("cannot lock {}: {e}", lock_path.display())
        }
    })
}

/// Reads the PKCS#11 user PIN from the configured file (first line) or environment variable.
fn read_pin(p: &Pkcs11Section, path: &Path) -> Result<SecretString, String> {
    if let Some(f) = &p.pin_file {
        use std::io::Read;
        let mut file = open_trusted(f, "PIN file", true)
            .map_err(|e| format!("{}: key `pkcs11.pin_file`: {e}", path.display()))?;
        let mut text = Zeroizing::new(String::new());
        file.read_to_string(&mut text).map_err(|e| {
            format!(
                "{}: key `pkcs11.pin_file`: cannot read {}: {e}",
                path.display(),
                f.display()
            )
        })?;
        let line = text.lines().next().unwrap_or_default().trim_end();
        return Ok(SecretString::from(line.to_owned()));
    }
    if let Some(var) = &p.pin_env {
        let pin = std::env::var(var).map(SecretString::from).map_err(|_| {
            format!(
                "{}: key `pkcs11.pin_env`: environment variable `{var}` is not set",
                path.display()
            )
        })?;
        // Removed from the environment so nothing later in the process (or a child) sees it.
        // The kernel keeps the exec-time copy in /proc/PID/environ (readable by the same uid
        // only), so `pin_file` is the better choice. Called before any other thread exists.
        std::env::remove_var(var);
        return Ok(pin);
    }
    Err(format!(
        "{}: key `pkcs11.pin_file`: no PIN source",
        path.display()
    ))
}

/// Builds the configured backends. Neither fails because its device is absent: they report
/// `backend_unavailable` until it answers.
pub fn backends(cfg: &Config, path: &Path) -> Result<Vec<Arc<dyn Backend>>, String> {
    let mut out: Vec<Arc<dyn Backend>> = Vec::new();
    let op_timeout = cfg.server.op_timeout();
    // Read the PIN (and drop it from the environment) before any backend thread exists.
    let pin = cfg.pkcs11.as_ref().map(|p| read_pin(p, path)).transpose()?;
    if let Some(t) = &cfg.tpm {
        let mut tc = TpmConfig::new(t.tcti.clone());
        tc.persistent_base = t.persistent_base;
        tc.op_timeout = op_timeout;
        out.push(Arc::new(TpmBackend::start(tc)));
    }
    if let Some(p) = &cfg.pkcs11 {
        let backend = Pkcs11Backend::start(Pkcs11Config {
            module: p.module.clone(),
            token_label: p.token_label.clone(),
            pin: pin.clone().ok_or("no PIN")?,
            max_sessions: p.max_sessions,
            op_timeout,
            oaep: p.oaep,
        })
        .map_err(|e| format!("{}: [pkcs11]: {e}", path.display()))?;
        out.push(Arc::new(backend));
    }
    out.push(Arc::new(SoftwareBackend));
    out.push(Arc::new(ExternalBackend));
    Ok(out)
}

/// Builds the whole daemon state from a loaded config: backends, registry, policy, audit, and
/// creates the declared keys that are missing.
pub fn build(cfg: Config, path: &Path) -> Result<App, String> {
    let policy = Policy::from_config(&cfg.roles).map_err(|e| format!("{}: {e}", path.display()))?;
    let audit = AuditLog::open(&cfg.audit).map_err(|e| {
        format!(
            "{}: key `audit.file`: cannot open {}: {e}",
            path.display(),
            cfg.audit.file.as_deref().unwrap_or(Path::new("")).display()
        )
    })?;
    if let Some(dir) = cfg
        .storage
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let backends = backends(&cfg, path)?;
    let mut keys = KeyManager::open(&cfg.storage.path, backends, cfg.keys.defaults)
        .map_err(|e| format!("{}: {e}", cfg.storage.path.display()))?;
    keys.set_pool_cache(
        cfg.zk.cache_size,
        std::time::Duration::from_secs(cfg.zk.cache_ttl_secs),
    );
    keys.ensure_declared(&cfg.keys.declare)
        .map_err(|e| format!("declared keys: {e}"))?;
    App::new(cfg, path.to_owned(), policy, audit, keys)
        .map_err(|e| format!("cannot start worker threads: {e}"))
}
