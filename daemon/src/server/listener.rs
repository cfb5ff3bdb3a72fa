//! Creating the listening socket: from systemd (LISTEN_FDS) or a path with the configured mode.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use tokio::net::UnixListener;

/// Where the listener came from.
pub enum Origin {
    /// Passed by systemd socket activation.
    Systemd,
    /// Bound by us at this path (removed again on shutdown), with `<socket>.lock` held so that
    /// no other custodyd checks, removes or binds this path meanwhile.
    Path(#[allow(dead_code)] Flock<std::fs::File>),
}

/// Refuses a socket directory someone else could change: owned by a user other than root and
/// the daemon's, or writable by group or others (without the sticky bit, which keeps others
/// from removing or renaming the daemon's socket).
fn check_dir(dir: &Path) -> io::Result<()> {
    let meta = std::fs::metadata(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    let mode = meta.mode() & 0o7777;
    if meta.uid() != 0 && meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "socket directory {} is owned by uid {}, neither root nor custodyd's uid {me}",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "socket directory {} is writable by group or others (mode {mode:04o}): others \
                 could replace the socket; `chmod go-w` it",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Takes `<socket>.lock` (exclusive, not waiting).
fn lock(path: &Path) -> io::Result<Flock<std::fs::File>> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&name)?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        if e == nix::errno::Errno::EWOULDBLOCK {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{}: another process is listening there (it holds {})",
                    path.display(),
                    std::path::PathBuf::from(&name).display()
                ),
            )
        } else {
            io::Error::from(e)
        }
    })
}

/// Takes the systemd-activated socket if there is one, else binds `path` with `mode`.
///
/// The socket's directory is created 0750 when missing, and checked when it exists. A leftover
/// socket file is removed only when nothing accepts connections on it; a live one or a
/// non-socket file is an error. The socket is created with `mode` (under the matching umask: no
/// chmod of a path afterwards).
pub fn bind(path: &Path, mode: u32) -> io::Result<(UnixListener, Origin)> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 0 {
        if let Some(std_listener) = fds.take_unix_listener(0)? {
            std_listener.set_nonblocking(true)?;
            return Ok((UnixListener::from_std(std_listener)?, Origin::Systemd));
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)?;
        }
        check_dir(dir)?;
    }
    let held = lock(path)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{}: another process is listening there", path.display()),
                    ))
                }
                Err(_) => std::fs::remove_file(path)?,
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // The socket is created with 0777 & !umask: bound under the umask that yields `mode`, it is
    // never wider, and no chmod (which would follow a symlink put in its place) is needed.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(!mode & 0o777));
    let res = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = res?;
    Ok((listener, Origin::Path(held)))
}
