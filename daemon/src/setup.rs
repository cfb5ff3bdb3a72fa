//! Start-up: process hardening, backends from config, registry, declared keys.

use std::path::Path;
use std::sync::Arc;

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

/// Refuses core dumps and ptrace attach by other processes of the same uid (PR_SET_DUMPABLE 0).
pub fn harden_process() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!("could not disable core dumps: {e}");
    }
}

/// Reads the PKCS#11 user PIN from the configured file (first line) or environment variable.
fn read_pin(p: &Pkcs11Section, path: &Path) -> Result<SecretString, String> {
    if let Some(f) = &p.pin_file {
        let text = Zeroizing::new(std::fs::read_to_string(f).map_err(|e| {
            format!(
                "{}: key `pkcs11.pin_file`: cannot read {}: {e}",
                path.display(),
                f.display()
            )
        })?);
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
    let audit = AuditLog::open(cfg.audit.file.as_deref()).map_err(|e| {
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
    let keys = KeyManager::open(&cfg.storage.path, backends, cfg.keys.defaults)
        .map_err(|e| format!("{}: {e}", cfg.storage.path.display()))?;
    keys.ensure_declared(&cfg.keys.declare)
        .map_err(|e| format!("declared keys: {e}"))?;
    Ok(App::new(cfg, path.to_owned(), policy, audit, keys))
}
