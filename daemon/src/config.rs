//! Daemon configuration (TOML). Errors name the file, the key and what is wrong.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::backend::pkcs11::OaepMode;
use crate::backend::{validate_key_name, BackendKind, KeyKind, Template};

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener and connection limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// Backend worker threads and their queues.
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// Key registry location.
    pub storage: StorageConfig,
    /// Where audit lines go.
    #[serde(default)]
    pub audit: AuditConfig,
    /// TPM backend; absent = no TPM.
    #[serde(default)]
    pub tpm: Option<TpmSection>,
    /// PKCS#11 backend; absent = no HSM.
    #[serde(default)]
    pub pkcs11: Option<Pkcs11Section>,
    /// Key policy defaults and declared keys.
    #[serde(default)]
    pub keys: KeysSection,
    /// Roles: who may do what on which keys. Default deny.
    #[serde(default)]
    pub roles: Vec<RoleConfig>,
    /// Zero-knowledge pools.
    #[serde(default)]
    pub zk: ZkSection,
}

/// `[zk]`: the optional cache of unwrapped pool keys. Off by default: every operation unwraps
/// its pool key with the master in hardware. With a cache, up to `cache_size` pool keys stay in
/// daemon memory (zeroizing, never swapped out when memory locking is on) for up to
/// `cache_ttl_secs` each — fewer token operations against more key material in memory.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZkSection {
    /// Most unwrapped pool keys kept; 0 = no cache.
    pub cache_size: usize,
    /// Seconds an unwrapped pool key may stay cached.
    pub cache_ttl_secs: u64,
}

impl Default for ZkSection {
    fn default() -> Self {
        ZkSection {
            cache_size: 0,
            cache_ttl_secs: 60,
        }
    }
}

/// `[server]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Socket path (ignored when systemd passes a socket).
    pub socket: PathBuf,
    /// Socket file mode, octal string.
    pub socket_mode: String,
    /// Simultaneous connections of callers with a role; more are answered `busy` and closed.
    pub max_connections: usize,
    /// Simultaneous connections of one uid (with a role or not); more are answered `busy`.
    pub max_connections_per_uid: usize,
    /// Bytes all connections together may hold in frames still arriving; a frame that does not
    /// fit into what is left is answered `busy` and its connection closed.
    pub max_buffered_bytes: u64,
    /// Requests processed at once per connection; the next is read when one finishes.
    pub max_in_flight: usize,
    /// Largest frame body accepted, bytes.
    pub max_frame: u32,
    /// A connection with nothing in flight and no bytes for this long is closed.
    pub idle_timeout_secs: u64,
    /// A frame must arrive whole within this long of its first byte.
    pub frame_timeout_secs: u64,
    /// Longest a backend operation may take before `backend_unavailable`.
    pub op_timeout_secs: u64,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout_secs: u64,
    /// Run even as root (development and tests only; production runs as the `custodyd` user).
    pub allow_root: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            socket: PathBuf::from("/run/custodyd/custodyd.sock"),
            socket_mode: "0660".into(),
            max_connections: 1024,
            max_connections_per_uid: 256,
            max_buffered_bytes: 256 * 1024 * 1024,
            max_in_flight: 64,
            max_frame: custody_proto::DEFAULT_MAX_FRAME,
            idle_timeout_secs: 300,
            frame_timeout_secs: 10,
            op_timeout_secs: 30,
            drain_timeout_secs: 30,
            allow_root: false,
        }
    }
}

impl ServerConfig {
    /// Socket mode as a number (validated at load).
    pub fn mode(&self) -> u32 {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8).unwrap_or(0o660)
    }
    /// Idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    /// Partial-frame timeout.
    pub fn frame_timeout(&self) -> Duration {
        Duration::from_secs(self.frame_timeout_secs)
    }
    /// Backend operation timeout.
    pub fn op_timeout(&self) -> Duration {
        Duration::from_secs(self.op_timeout_secs)
    }
}

/// `[scheduler]`: the worker threads that run backend work, and their per-uid queues
/// ([`crate::sched`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Worker threads; 0 (the default) = twice the CPUs, at least 4, at most 16.
    pub workers: usize,
    /// Most requests waiting for a worker, all uids together; more are refused `busy`.
    pub max_queued: usize,
    /// Most requests of one uid waiting for a worker; more are refused `busy`.
    pub max_queued_per_uid: usize,
    /// Budget of one uid's requests being decoded, run or answered at once, over all its
    /// connections, in KiB of request frames (each request counts 1 + its size in KiB); a
    /// further frame of that uid waits until the budget has room.
    pub uid_budget_kib: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            workers: 0,
            max_queued: 4096,
            max_queued_per_uid: 1024,
            uid_budget_kib: 4096,
        }
    }
}

impl SchedulerConfig {
    /// The scheduler's settings, with the worker count resolved.
    pub fn resolved(&self) -> crate::sched::SchedConfig {
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        let workers = if self.workers == 0 {
            (2 * cpus).clamp(4, 16)
        } else {
            self.workers
        };
        crate::sched::SchedConfig {
            workers,
            max_queued: self.max_queued,
            max_queued_per_uid: self.max_queued_per_uid,
            uid_budget_kib: self.uid_budget_kib,
        }
    }
}

/// `[storage]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// SQLite database file of the key registry.
    pub path: PathBuf,
}

/// `[audit]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Append hash-chained JSON lines to this file (mode 0640). Absent: lines go to the log
    /// (journal) under the tracing target `audit`, unchained.
    pub file: Option<PathBuf>,
    /// Refuse an op (`internal`, "audit unavailable") whose audit line cannot be written.
    pub required: bool,
    /// When the file is synced to disk.
    pub sync: AuditSync,
    /// A signed checkpoint line after this many lines (and at shutdown).
    pub checkpoint_every: u64,
    /// The key that signs checkpoints (`rsa2048-sign` or `ed25519`, in the TPM or HSM); none:
    /// the chain has no checkpoints.
    pub sign_key: Option<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            file: None,
            required: true,
            sync: AuditSync::default(),
            checkpoint_every: 1000,
            sign_key: None,
        }
    }
}

/// `audit.sync`: when audit lines are made durable (fdatasync).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuditSync {
    /// After every line, before the op is answered.
    Every,
    /// After every checkpoint and at shutdown.
    #[default]
    Checkpoint,
    /// Left to the kernel.
    None,
}

/// `[tpm]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmSection {
    /// TCTI: `device:/dev/tpmrm0`, or `swtpm:host=127.0.0.1,port=2321` in development.
    pub tcti: String,
    /// First persistent handle used for default-template keys.
    #[serde(default = "default_persistent_base")]
    pub persistent_base: u32,
}

fn default_persistent_base() -> u32 {
    0x8101_0100
}

/// `[pkcs11]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Section {
    /// Path of the PKCS#11 module.
    pub module: PathBuf,
    /// Token label; the slot is found by it.
    pub token_label: String,
    /// File holding the user PIN (first line).
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN.
    pub pin_env: Option<String>,
    /// Most sessions open at once.
    #[serde(default = "default_sessions")]
    pub max_sessions: usize,
    /// `auto` (probe), `token` or `software` OAEP-SHA256 decoding.
    #[serde(default)]
    pub oaep: OaepMode,
}

fn default_sessions() -> usize {
    8
}

/// `[keys]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// Defaults for new versions.
    #[serde(default)]
    pub defaults: KeyPolicy,
    /// Keys created at start-up when missing.
    #[serde(default)]
    pub declare: Vec<DeclaredKey>,
}

/// Validity policy (MOSIP: a version is current while created ≤ now < not_after − pre_expire).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyPolicy {
    /// Days a version is valid.
    pub validity_days: u32,
    /// Days before expiry at which a new version takes over.
    pub pre_expire_days: u32,
    /// Rotate an expired current version on next use instead of failing with `key_expired`.
    pub auto_rotate: bool,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        KeyPolicy {
            validity_days: 1095,
            pre_expire_days: 60,
            auto_rotate: false,
        }
    }
}

/// `[[keys.declare]]`: a key that must exist.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredKey {
    /// Key name.
    pub name: String,
    /// Kind.
    pub kind: KeyKind,
    /// Backend (`wrapped` is accepted as the old name of `software`).
    pub backend: BackendKind,
    /// Template (`default`, `mosip`).
    #[serde(default)]
    pub template: Template,
    /// Master key for the `software` backend.
    #[serde(default)]
    pub master: Option<String>,
    /// Overrides `keys.defaults.validity_days`.
    #[serde(default)]
    pub validity_days: Option<u32>,
    /// Overrides `keys.defaults.pre_expire_days`.
    #[serde(default)]
    pub pre_expire_days: Option<u32>,
}

/// A user named or numbered in a role.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Principal {
    /// Numeric uid or gid.
    Id(u32),
    /// User or group name, resolved at load and reload.
    Name(String),
}

/// `[[roles]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// Role name (shown in audit lines).
    pub name: String,
    /// Users (names or uids) in the role.
    #[serde(default)]
    pub unix_users: Vec<Principal>,
    /// Groups (names or gids); a member by primary or supplementary group is in the role.
    #[serde(default)]
    pub unix_groups: Vec<Principal>,
    /// Allowed ops (names or glob patterns like `keys.*`, `*`).
    pub ops: Vec<String>,
    /// Keys the ops may touch (names or glob patterns); ops without a key ignore this.
    #[serde(default)]
    pub keys: Vec<String>,
}

/// A configuration error; `Display` names the file, the key and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax or a field of the wrong type.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// The TOML error (names the key and line).
        message: String,
    },
    /// A value that parses but is not acceptable.
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Dotted key path.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` is used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            file: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        let s = &self.server;
        match u32::from_str_radix(s.socket_mode.trim_start_matches("0o"), 8) {
            Ok(m) if m <= 0o777 => {}
            _ => {
                return Err(bad(
                    "server.socket_mode",
                    format!(
                        "`{}` is not an octal file mode like \"0660\"",
                        s.socket_mode
                    ),
                ))
            }
        }
        for (key, v) in [
            ("server.max_connections", s.max_connections as u64),
            (
                "server.max_connections_per_uid",
                s.max_connections_per_uid as u64,
            ),
            ("server.max_in_flight", s.max_in_flight as u64),
            ("server.max_frame", u64::from(s.max_frame)),
            ("server.idle_timeout_secs", s.idle_timeout_secs),
            ("server.frame_timeout_secs", s.frame_timeout_secs),
            ("server.op_timeout_secs", s.op_timeout_secs),
            ("scheduler.max_queued", self.scheduler.max_queued as u64),
            (
                "scheduler.max_queued_per_uid",
                self.scheduler.max_queued_per_uid as u64,
            ),
            (
                "scheduler.uid_budget_kib",
                u64::from(self.scheduler.uid_budget_kib),
            ),
        ] {
            if v == 0 {
                return Err(bad(key, "must be greater than 0".into()));
            }
        }
        if s.max_frame < 1024 {
            return Err(bad("server.max_frame", "must be at least 1024".into()));
        }
        // One uid may hold a quarter of the budget, and must fit one whole frame in it.
        if s.max_buffered_bytes < 4 * u64::from(s.max_frame)
            || s.max_buffered_bytes > u64::from(u32::MAX)
        {
            return Err(bad(
                "server.max_buffered_bytes",
                format!(
                    "must be at least 4 × server.max_frame ({}) and below 4 GiB",
                    4 * u64::from(s.max_frame)
                ),
            ));
        }
        if self.audit.checkpoint_every == 0 {
            return Err(bad(
                "audit.checkpoint_every",
                "must be greater than 0".into(),
            ));
        }
        if let Some(k) = &self.audit.sign_key {
            validate_key_name(k).map_err(|m| bad("audit.sign_key", m))?;
        }
        if let Some(p) = &self.pkcs11 {
            if p.pin_file.is_none() && p.pin_env.is_none() {
                return Err(bad(
                    "pkcs11.pin_file",
                    "one of `pin_file` or `pin_env` is required".into(),
                ));
            }
            if p.max_sessions == 0 {
                return Err(bad("pkcs11.max_sessions", "must be greater than 0".into()));
            }
        }
        let d = self.keys.defaults;
        if d.validity_days == 0 || d.pre_expire_days >= d.validity_days {
            return Err(bad(
                "keys.defaults",
                "validity_days must be > 0 and greater than pre_expire_days".into(),
            ));
        }
        for (i, k) in self.keys.declare.iter().enumerate() {
            let key = |f: &str| format!("keys.declare[{i}].{f}");
            validate_key_name(&k.name).map_err(|m| bad(&key("name"), m))?;
            match k.backend {
                BackendKind::Tpm if self.tpm.is_none() => {
                    return Err(bad(&key("backend"), "no [tpm] section configured".into()))
                }
                BackendKind::Pkcs11 if self.pkcs11.is_none() => {
                    return Err(bad(
                        &key("backend"),
                        "no [pkcs11] section configured".into(),
                    ))
                }
                _ => {}
            }
            if !k.backend.kinds().contains(&k.kind) {
                return Err(bad(
                    &key("kind"),
                    format!("the {} backend does not hold {} keys", k.backend, k.kind),
                ));
            }
        }
        for (i, r) in self.roles.iter().enumerate() {
            if r.name.is_empty() {
                return Err(bad(&format!("roles[{i}].name"), "must not be empty".into()));
            }
            if r.ops.is_empty() {
                return Err(bad(
                    &format!("roles[{i}].ops"),
                    "must list at least one op".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[storage]\npath = \"/tmp/x.db\"\n";

    /// The sample configurations in hsm-config/ (README points users at them) parse: a key
    /// renamed or removed here must be changed there too.
    #[test]
    fn sample_configurations_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hsm-config");
        for name in ["custodyd.softhsm.toml", "custodyd.hardware.toml"] {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = Config::parse(&text, &path) {
                panic!("{name}: {e}");
            }
        }
    }

    #[test]
    fn minimal_config_has_defaults() {
        let c = Config::parse(MIN, Path::new("c.toml")).unwrap();
        assert_eq!(c.server.mode(), 0o660);
        assert_eq!(c.server.max_frame, custody_proto::DEFAULT_MAX_FRAME);
        assert!(c.roles.is_empty());
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = Config::parse(
            &format!("{MIN}[server]\nsocket_mode = \"abc\"\n"),
            Path::new("/etc/c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/etc/c.toml") && e.contains("server.socket_mode"),
            "{e}"
        );
        let e = Config::parse(&format!("{MIN}[server]\nbogus = 1\n"), Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = Config::parse("", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage"), "{e}");
        let e = Config::parse(
            &format!("{MIN}[[keys.declare]]\nname=\"a\"\nkind=\"rsa2048-sign\"\nbackend=\"tpm\"\n"),
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("keys.declare[0].backend"), "{e}");
    }

    #[test]
    fn enums_parse_once_and_name_the_allowed_values() {
        let e = Config::parse(
            &format!("{MIN}[[keys.declare]]\nname=\"a\"\nkind=\"rsa4096\"\nbackend=\"pkcs11\"\n"),
            Path::new("/etc/c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/etc/c.toml") && e.contains("kind") && e.contains("rsa2048-sign"),
            "{e}"
        );
        let e = Config::parse(
            &format!("{MIN}[pkcs11]\nmodule=\"/m.so\"\ntoken_label=\"t\"\npin_env=\"P\"\noaep=\"tokn\"\n"),
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("oaep") && e.contains("software"), "{e}");
        let c = Config::parse(
            &format!("{MIN}[pkcs11]\nmodule=\"/m.so\"\ntoken_label=\"t\"\npin_env=\"P\"\n\
                      [[keys.declare]]\nname=\"m\"\nkind=\"aes256\"\nbackend=\"pkcs11\"\n\
                      [[keys.declare]]\nname=\"d\"\nkind=\"aes256\"\nbackend=\"wrapped\"\nmaster=\"m\"\n"),
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(c.keys.declare[1].backend, BackendKind::Software);
        let e = Config::parse(
            &format!("{MIN}[tpm]\ntcti=\"x\"\n[[keys.declare]]\nname=\"a\"\nkind=\"aes256\"\nbackend=\"tpm\"\n"),
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("keys.declare[0].kind"), "{e}");
    }

    #[test]
    fn principals_accept_names_and_ids() {
        let c = Config::parse(
            &format!("{MIN}[[roles]]\nname=\"a\"\nunix_users=[\"root\", 1000]\nops=[\"*\"]\n"),
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(
            c.roles[0].unix_users,
            vec![Principal::Name("root".into()), Principal::Id(1000)]
        );
    }
}
