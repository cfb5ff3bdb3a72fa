//! Shared daemon state: configuration, policy (reloadable), audit sink, counters, keys.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use custody_proto::ops::{names, OpCounter};

use crate::audit::AuditLog;
use crate::auth::Policy;
use crate::config::Config;
use crate::keys::KeyManager;
use crate::sched::Scheduler;

/// Everything request handlers share.
pub struct App {
    /// Configuration read at start (the server section is not reloaded).
    pub config: Config,
    /// Path it was read from, for reloads.
    pub config_path: PathBuf,
    /// Roles in force; swapped whole on SIGHUP.
    policy: RwLock<Arc<Policy>>,
    /// Audit sink.
    pub audit: AuditLog,
    /// Request counters.
    pub stats: Stats,
    /// Key registry and backends.
    pub keys: KeyManager,
    /// Start time, for uptime.
    pub started: Instant,
    /// Worker threads that run backend work, per-uid fair ([`crate::sched`]).
    pub sched: Scheduler,
}

impl App {
    /// Assembles the state and starts the worker threads.
    pub fn new(
        config: Config,
        config_path: PathBuf,
        policy: Policy,
        audit: AuditLog,
        keys: KeyManager,
    ) -> std::io::Result<Self> {
        let sched = Scheduler::start(config.scheduler.resolved())?;
        Ok(App {
            config,
            config_path,
            policy: RwLock::new(Arc::new(policy)),
            audit,
            stats: Stats::default(),
            keys,
            started: Instant::now(),
            sched,
        })
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Re-reads the config file and replaces the policy; on any error the old policy stays.
    pub fn reload_policy(&self) -> Result<(), String> {
        crate::setup::check_file_trusted(&self.config_path, "config file")?;
        let cfg = Config::load(&self.config_path).map_err(|e| e.to_string())?;
        let policy = Policy::from_config(&cfg.roles)
            .map_err(|e| format!("{}: {e}", self.config_path.display()))?;
        let n = cfg.roles.len();
        match self.policy.write() {
            Ok(mut g) => *g = Arc::new(policy),
            Err(p) => *p.into_inner() = Arc::new(policy),
        }
        tracing::info!("policy reloaded: {n} roles");
        Ok(())
    }
}

/// Counters reported by `status`.
#[derive(Default)]
pub struct Stats {
    /// Open connections.
    pub connections: AtomicU64,
    ops: Mutex<BTreeMap<&'static str, OpCounter>>,
}

impl Stats {
    /// Counts one request; unknown op names are counted as `unknown`.
    pub fn count(&self, op: &str, ok: bool) {
        let key = names::ALL
            .iter()
            .find(|n| **n == op)
            .copied()
            .unwrap_or("unknown");
        let mut m = match self.ops.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let c = m.entry(key).or_default();
        if ok {
            c.ok += 1;
        } else {
            c.err += 1;
        }
    }

    /// A snapshot of the per-op counters.
    pub fn snapshot(&self) -> BTreeMap<String, OpCounter> {
        let m = match self.ops.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        m.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    /// Open connections now.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}
