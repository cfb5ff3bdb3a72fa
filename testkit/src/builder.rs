//! [`DaemonBuilder`]: a custodyd config in a fresh temporary directory, with its own swtpm and
//! SoftHSM token when asked, and the [`Daemon`] it starts.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::daemon::{Daemon, READY_TIMEOUT};
use crate::hsm::Hsm;
use crate::process::custodyd_bin;
use crate::swtpm::Swtpm;
use crate::system::{chown_tree, ensure_system_user};

/// Roles used when the builder is not given any: root (uid 0) may do everything on every key.
pub const DEFAULT_ROLES: &str = r#"[[roles]]
name = "admin"
unix_users = [0]
ops = ["*"]
keys = ["*"]
"#;

/// Quotes a string as a TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Builds and starts a [`Daemon`] in a fresh temporary directory.
///
/// The config always has `[server] socket = DIR/custodyd.sock` and `allow_root = true` (unless
/// [`DaemonBuilder::server`] sets `allow_root` itself), `[storage] path = DIR/keys.db`
/// and `[audit] file = DIR/audit.log`; lines given to [`DaemonBuilder::server`] are added to
/// `[server]`, [`DaemonBuilder::roles`] replaces [`DEFAULT_ROLES`], and
/// [`DaemonBuilder::extra`] is appended verbatim (e.g. `[keys]` or `[[keys.declare]]`).
#[derive(Default)]
pub struct DaemonBuilder {
    server: Vec<String>,
    audit: Vec<String>,
    roles: Option<String>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    tpm: bool,
    hsm: bool,
    dir_mode: Option<u32>,
    socket_name: Option<String>,
    pkcs11: Vec<String>,
    run_as: Option<String>,
}

impl DaemonBuilder {
    /// A builder with defaults: no backends, [`DEFAULT_ROLES`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Start a swtpm in `DIR/swtpm` and configure `[tpm] tcti`.
    pub fn with_tpm(mut self) -> Self {
        self.tpm = true;
        self
    }

    /// Initialise a SoftHSM token in `DIR/hsm`, configure `[pkcs11]` and set `SOFTHSM2_CONF`.
    pub fn with_hsm(mut self) -> Self {
        self.hsm = true;
        self
    }

    /// Adds lines (`key = value`) to the `[server]` section.
    pub fn server(mut self, lines: &[&str]) -> Self {
        self.server.extend(lines.iter().map(|s| s.to_string()));
        self
    }

    /// Adds lines (`key = value`) to the `[audit]` section (which always has `file`, unless a
    /// line given here sets `file` itself).
    pub fn audit(mut self, lines: &[&str]) -> Self {
        self.audit.extend(lines.iter().map(|s| s.to_string()));
        self
    }

    /// Replaces the default roles with this TOML (`[[roles]]` tables; may be empty for none).
    pub fn roles(mut self, toml: &str) -> Self {
        self.roles = Some(toml.to_owned());
        self
    }

    /// Appends TOML verbatim at the end of the config (e.g. `[keys.defaults]`, `[[keys.declare]]`).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push(toml.to_owned());
        self
    }

    /// Sets an environment variable for the daemon.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Sets the mode of the temporary directory (default 0700), e.g. 0o755 so that other users
    /// can reach a socket inside it.
    pub fn dir_mode(mut self, mode: u32) -> Self {
        self.dir_mode = Some(mode);
        self
    }

    /// Puts the socket at `DIR/<rel>` instead of `DIR/custodyd.sock` (`rel` may name
    /// subdirectories that do not exist yet: the daemon creates them).
    pub fn socket_name(mut self, rel: &str) -> Self {
        self.socket_name = Some(rel.to_owned());
        self
    }

    /// Adds lines (`key = value`) to the `[pkcs11]` section written by
    /// [`DaemonBuilder::with_hsm`] (e.g. `max_sessions = 4`, `oaep = "software"`). Do not repeat
    /// `module`, `token_label` or `pin_file`, which the kit writes itself.
    pub fn pkcs11(mut self, lines: &[&str]) -> Self {
        self.pkcs11.extend(lines.iter().map(|s| s.to_string()));
        self
    }

    /// Runs the daemon as the unprivileged system user `user` (created if missing, see
    /// [`ensure_system_user`]) with the restrictions of `systemd/custodyd.service` that can be
    /// had without systemd: the built `custodyd` is installed into `DIR/bin`, the directory
    /// (registry, token, PIN file, config) is given to that user, and the daemon is started as
    /// `prlimit --memlock=unlimited --core=0 setpriv --reuid --regid --init-groups --no-new-privs
    /// --bounding-set=-all --inh-caps=-all` with umask 0077. No `allow_root` is written.
    pub fn run_as(mut self, user: &str) -> Self {
        self.run_as = Some(user.to_owned());
        self
    }

    /// Writes the config and starts the daemon; panics (with the daemon's stderr) if it does not
    /// answer `hello` within [`READY_TIMEOUT`].
    pub fn start(self) -> Daemon {
        let mut d = self.prepare();
        d.spawn();
        d.wait_ready(READY_TIMEOUT);
        d
    }

    /// Writes the config (starting swtpm / initialising the token if asked) but does not start
    /// the daemon. Use [`Daemon::spawn`] and [`Daemon::wait_ready`], or
    /// [`Daemon::run_to_exit`] for a daemon expected to fail.
    pub fn prepare(self) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("custodyd-e2e-")
            .tempdir()
            .expect("tempdir");
        if let Some(m) = self.dir_mode {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(m)).expect("chmod dir");
        }
        let root = dir.path().to_path_buf();
        let swtpm = self.tpm.then(|| Swtpm::start(root.join("swtpm")));
        let hsm = self.hsm.then(|| Hsm::init(root.join("hsm")));
        let socket = root.join(self.socket_name.as_deref().unwrap_or("custodyd.sock"));
        let audit = root.join("audit.log");
        let mut cfg = String::new();
        cfg.push_str("[server]\n");
        cfg.push_str(&format!(
            "socket = {}\n",
            toml_str(&socket.to_string_lossy())
        ));
        // The tests run as root; production refuses that (`server.allow_root`).
        if self.run_as.is_none()
            && !self
                .server
                .iter()
                .any(|l| l.trim_start().starts_with("allow_root"))
        {
            cfg.push_str("allow_root = true\n");
        }
        for l in &self.server {
            cfg.push_str(l);
            cfg.push('\n');
        }
        cfg.push_str(&format!(
            "\n[storage]\npath = {}\n\n[audit]\n",
            toml_str(&root.join("keys.db").to_string_lossy()),
        ));
        if !self
            .audit
            .iter()
            .any(|l| l.trim_start().starts_with("file"))
        {
            cfg.push_str(&format!("file = {}\n", toml_str(&audit.to_string_lossy())));
        }
        for l in &self.audit {
            cfg.push_str(l);
            cfg.push('\n');
        }
        cfg.push('\n');
        if let Some(t) = &swtpm {
            cfg.push_str(&format!("[tpm]\ntcti = {}\n\n", toml_str(t.tcti())));
        }
        if let Some(h) = &hsm {
            cfg.push_str(&h.config_section());
            for l in &self.pkcs11 {
                cfg.push_str(l);
                cfg.push('\n');
            }
            cfg.push('\n');
        }
        let mut env = self.env;
        if let Some(h) = &hsm {
            env.push((
                "SOFTHSM2_CONF".into(),
                h.conf.to_string_lossy().into_owned(),
            ));
        }
        let body_end = cfg.len();
        for e in &self.extra {
            cfg.push_str(e);
            cfg.push('\n');
        }
        let roles = self.roles.unwrap_or_else(|| DEFAULT_ROLES.to_owned());
        let run_as = self.run_as.as_deref().map(|user| {
            let account = ensure_system_user(user);
            let bin = root.join("bin");
            fs::create_dir_all(&bin).expect("bin dir");
            let installed = bin.join("custodyd");
            fs::copy(custodyd_bin(), &installed).expect("install custodyd");
            fs::set_permissions(&installed, fs::Permissions::from_mode(0o755)).expect("chmod");
            (account, installed)
        });
        let d = Daemon {
            socket,
            audit,
            config: root.join("custodyd.toml"),
            stderr_path: root.join("custodyd.stderr"),
            base_config: cfg[..body_end].to_owned(),
            extra: cfg[body_end..].to_owned(),
            roles,
            env,
            child: None,
            swtpm,
            hsm,
            dir: Some(dir),
            root,
            run_as,
        };
        d.write_config();
        if let Some((account, _)) = &d.run_as {
            chown_tree(&d.root, account.uid, account.gid);
        }
        d
    }
}
