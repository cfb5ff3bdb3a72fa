//! Creating the listening socket: from systemd (LISTEN_FDS) or a path with the configured mode.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;

/// Where the listener came from.
pub enum Origin {
    /// Passed by systemd socket activation.
    Systemd,
    /// Bound by us at this path (removed again on shutdown).
    Path,
}

/// Takes the systemd-activated socket if there is one, else binds `path` with `mode`.
///
/// The socket's directory is created 0750 when missing. A leftover socket file is removed only
/// when nothing accepts connections on it; a live one or a non-socket file is an error.
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
    }
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
    // Bind under a restrictive umask so the socket is never briefly wider than `mode`.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let res = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = res?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok((listener, Origin::Path))
}
