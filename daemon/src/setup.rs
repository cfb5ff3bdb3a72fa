//! Start-up: process hardening, backends from config, registry, declared keys.

use std::path::Path;
use std::sync::Arc;

use crate::audit::AuditLog;
use crate::auth::Policy;
use crate::backend::Backend;
use crate::config::Config;
use crate::keys::KeyManager;
use crate::state::App;

/// Refuses core dumps and ptrace attach by other processes of the same uid (PR_SET_DUMPABLE 0).
pub fn harden_process() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!("could not disable core dumps: {e}");
    }
}

/// Builds the configured backends.
pub fn backends(_cfg: &Config) -> Result<Vec<Arc<dyn Backend>>, String> {
    Ok(Vec::new())
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
    let backends = backends(&cfg)?;
    let keys = KeyManager::open(&cfg.storage.path, backends, cfg.keys.defaults)
        .map_err(|e| format!("{}: {e}", cfg.storage.path.display()))?;
    keys.ensure_declared(&cfg.keys.declare)
        .map_err(|e| format!("declared keys: {e}"))?;
    Ok(App::new(cfg, path.to_owned(), policy, audit, keys))
}
