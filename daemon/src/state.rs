//! Shared daemon state: configuration, policy (reloadable), audit sink, counters, keys.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use custody_proto::ops::{names, OpCounter};

use crate::audit::{AuditLog, CheckpointSig, Record};
use crate::auth::Policy;
use crate::backend::KeyKind;
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
    /// Bumped by every policy reload: connections look their caller's groups up again.
    generation: AtomicU64,
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
            generation: AtomicU64::new(0),
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

    /// Writes an audit record (and a signed checkpoint when one is due); `Err` when the record
    /// could not be written.
    pub fn audit(&self, rec: &Record<'_>) -> Result<(), String> {
        let sign = |msg: &[u8]| self.sign_checkpoint(msg);
        let signer = self.config.audit.sign_key.as_ref().map(|_| &sign as _);
        self.audit.write(rec, signer)
    }

    /// Writes a closing checkpoint (at shutdown), when an audit key is configured.
    pub fn audit_checkpoint(&self) {
        if self.config.audit.sign_key.is_some() {
            if let Err(e) = self
                .audit
                .checkpoint(&|msg: &[u8]| self.sign_checkpoint(msg))
            {
                tracing::warn!("closing audit checkpoint not written: {e}");
            }
        }
    }

    /// Signs a checkpoint message with the configured audit key (its current version).
    fn sign_checkpoint(&self, msg: &[u8]) -> Result<CheckpointSig, String> {
        use custody_proto::audit::{ALG_ED25519, ALG_RSA, CHECKPOINT_OP};
        use sha2::{Digest, Sha256};
        let name = self
            .config
            .audit
            .sign_key
            .as_deref()
            .ok_or("no audit.sign_key")?;
        let kind = self.keys.get(name).map_err(|e| e.message)?.kind;
        let sel = crate::keys::Selector::Current;
        let (alg, k, sig) = match kind {
            KeyKind::Rsa2048Sign => {
                let k = self
                    .keys
                    .resolve(name, kind, CHECKPOINT_OP, sel)
                    .map_err(|e| e.message)?;
                let digest: [u8; 32] = Sha256::digest(msg).into();
                let sig = k
                    .sign(&digest, crate::backend::SignScheme::Pkcs1v15)
                    .map_err(|e| e.to_string())?;
                (ALG_RSA, k, sig)
            }
            KeyKind::Ed25519 => {
                let k = self
                    .keys
                    .resolve(name, kind, CHECKPOINT_OP, sel)
                    .map_err(|e| e.message)?;
                let sig = k.sign_ed25519(msg).map_err(|e| e.to_string())?;
                (ALG_ED25519, k, sig)
            }
            other => {
                return Err(format!(
                    "audit key `{name}` is {other}: it must be rsa2048-sign or ed25519"
                ))
            }
        };
        Ok(CheckpointSig {
            key: name.to_owned(),
            version: k.number(),
            alg,
            sig,
        })
    }

    /// The number of policy reloads so far.
    pub fn policy_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
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
        self.generation.fetch_add(1, Ordering::AcqRel);
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
