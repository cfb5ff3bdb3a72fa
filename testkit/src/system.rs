//! The machine's accounts, for tests that run the daemon unprivileged: the `custodyd` system user
//! (created as the package's sysusers.d snippet would, if missing), and handing a test directory
//! to it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::unistd::{Group, User};

use crate::process::{run_with_timeout, stderr};

/// A system account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// User name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

/// The system user `name` with a group of the same name, created with `useradd --system
/// --user-group` (no home, no login shell) if missing, like `systemd/custodyd.sysusers`; the
/// group `custody` (socket access) too. Tests run as root. Several tests may race to create it:
/// a failed `useradd` is fine when the user exists afterwards.
pub fn ensure_system_user(name: &str) -> Account {
    if Group::from_name("custody").ok().flatten().is_none() {
        let _ = run_with_timeout(
            Command::new("groupadd").args(["--system", "custody"]),
            Duration::from_secs(30),
        );
    }
    if User::from_name(name).ok().flatten().is_none() {
        let out = run_with_timeout(
            Command::new("useradd").args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ]),
            Duration::from_secs(30),
        );
        if User::from_name(name).ok().flatten().is_none() {
            panic!("useradd {name} failed: {}", stderr(&out));
        }
    }
    let u = User::from_name(name)
        .expect("getpwnam")
        .expect("user exists");
    assert_ne!(u.uid.as_raw(), 0, "{name} must not be root");
    Account {
        name: name.to_owned(),
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    }
}

/// `chown -R uid:gid dir` (symlinks themselves, not their targets).
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", dir.display()));
    if dir.is_dir() && !dir.is_symlink() {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            chown_tree(&entry.expect("entry").path(), uid, gid);
        }
    }
}

/// A small tmpfs mounted at a directory (tests run as root), unmounted when dropped: for a
/// file system that runs full.
pub struct Tmpfs {
    dir: std::path::PathBuf,
}

impl Tmpfs {
    /// Creates `dir` and mounts a tmpfs of `size` (as `mount -o size=`, e.g. `"64k"`) on it.
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        assert!(
            nix::unistd::geteuid().is_root(),
            "mounting a tmpfs needs root (the tests run as root)"
        );
        std::fs::create_dir_all(dir).expect("mount point");
        let out = run_with_timeout(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0755"),
                    "tmpfs",
                ])
                .arg(dir),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "mount tmpfs: {}", stderr(&out));
        Tmpfs {
            dir: dir.to_owned(),
        }
    }

    /// Fills the file system up with the file `name` until writing fails (ENOSPC).
    pub fn fill(&self, name: &str) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.join(name)).expect("filler");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        let mut byte_at_a_time = true;
        while byte_at_a_time {
            byte_at_a_time = f.write_all(&[0]).is_ok();
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run_with_timeout(
            Command::new("umount").arg("-l").arg(&self.dir),
            Duration::from_secs(30),
        );
    }
}
