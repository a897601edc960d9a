//! The daemon's listening socket file (SPEC §3, §12): where it lives, how it is created, and systemd
//! socket activation.
//!
//! Owns: the default path, the parent directory check, stale-socket handling, binding under a restrictive
//! umask, chmod to the configured mode, and adopting an inherited listener (`LISTEN_FDS`). It does not
//! serve connections (`rpc::transport` does) and does not take the state-dir lock.
//!
//! Bind before starting the tokio runtime: the umask is process-wide.
//!
//! Public API:
//! - [`default_socket_path`]`(runtime_directory, xdg_runtime_dir, state_dir) -> PathBuf`, and
//!   [`default_socket_path_from_env`]`(state_dir)`
//! - [`parse_socket_mode`]`("0660") -> Result<u32, SocketError>`, [`admitted_group`]`(mode)`
//! - [`open_listener`]`(path, mode) -> Result<DaemonListener, SocketError>` — inherited or freshly bound
//! - [`bind_socket`]`(path, mode)`, [`inherited_listener`]`()`, [`remove_socket`]`(listener)`

use std::ffi::OsStr;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::stat::{umask, Mode};

/// The file name of the socket in the default directories.
pub const SOCKET_FILE_NAME: &str = "herdctld.sock";
/// The first file descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("invalid --socket-mode {value:?}: expected an octal mode such as 0600 or 0660 (at most 0777)")]
    InvalidMode { value: String },
    #[error("a live server already answers on {path}; stop it first or choose another --socket")]
    LiveServer { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it (remove it or choose another --socket)")]
    NotASocket { path: PathBuf },
    #[error(
        "the socket directory {path} is writable by everyone without the sticky bit, so any user could replace \
         the socket; use a private directory (e.g. $XDG_RUNTIME_DIR) or chmod o-w / +t it"
    )]
    UnsafeDirectory { path: PathBuf },
    #[error("the socket path {path} has no parent directory")]
    NoParent { path: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("systemd passed {count} sockets (LISTEN_FDS); herdctld expects exactly one Unix stream socket")]
    UnexpectedListenFds { count: String },
    #[error("the socket systemd passed (fd 3) is not a listening Unix stream socket: {reason}")]
    BadInheritedSocket { reason: String },
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The default socket path of SPEC §3: `$RUNTIME_DIRECTORY/herdctld.sock` under systemd (the first entry if
/// it lists several), else `$XDG_RUNTIME_DIR/herdctl/herdctld.sock`, else `<state>/herdctld.sock`.
pub fn default_socket_path(
    runtime_directory: Option<&OsStr>,
    xdg_runtime_dir: Option<&OsStr>,
    state_dir: &Path,
) -> PathBuf {
    if let Some(runtime) = runtime_directory.filter(|v| !v.is_empty()) {
        let first = runtime
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        if !first.is_empty() {
            return Path::new(&first).join(SOCKET_FILE_NAME);
        }
    }
    if let Some(xdg) = xdg_runtime_dir.filter(|v| !v.is_empty()) {
        return Path::new(xdg).join("herdctl").join(SOCKET_FILE_NAME);
    }
    state_dir.join(SOCKET_FILE_NAME)
}

/// [`default_socket_path`] from the process environment.
pub fn default_socket_path_from_env(state_dir: &Path) -> PathBuf {
    let runtime = std::env::var_os("RUNTIME_DIRECTORY");
    let xdg = std::env::var_os("XDG_RUNTIME_DIR");
    default_socket_path(runtime.as_deref(), xdg.as_deref(), state_dir)
}

/// Parses an octal mode as given to `--socket-mode` (`0600`, `600`, `0o660`).
pub fn parse_socket_mode(value: &str) -> Result<u32, SocketError> {
    let digits = value.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if !digits.is_empty() && mode <= 0o777 => Ok(mode),
        _ => Err(SocketError::InvalidMode {
            value: value.to_owned(),
        }),
    }
}

/// The group whose members may connect besides our own user (the peer check of `rpc::transport`): ours,
/// when the socket's `mode` grants the group anything (0660), else none.
pub fn admitted_group(mode: u32) -> Option<u32> {
    (mode & 0o070 != 0).then(|| nix::unistd::getegid().as_raw())
}

/// Where the listener came from; decides whether the daemon removes the file on exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerOrigin {
    /// We bound it at this path; remove it on shutdown.
    Bound(PathBuf),
    /// systemd passed it (socket activation); systemd owns the file.
    Inherited,
}

/// A non-blocking listener ready for `tokio::net::UnixListener::from_std`.
#[derive(Debug)]
pub struct DaemonListener {
    pub listener: UnixListener,
    pub origin: ListenerOrigin,
}

/// The inherited listener when socket-activated, else a freshly bound one at `path` (see [`bind_socket`]).
pub fn open_listener(path: &Path, mode: u32) -> Result<DaemonListener, SocketError> {
    if let Some(listener) = inherited_listener()? {
        return Ok(DaemonListener {
            listener,
            origin: ListenerOrigin::Inherited,
        });
    }
    let listener = bind_socket(path, mode)?;
    Ok(DaemonListener {
        listener,
        origin: ListenerOrigin::Bound(path.to_owned()),
    })
}

/// Binds a fresh socket at `path`: creates the parent (0700) if missing and refuses an unsafe one, replaces
/// a stale socket but refuses a live one, binds under umask 0177 (so the socket is never reachable by others,
/// not even briefly) and then chmods it to `mode`. Returns a non-blocking listener.
pub fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener, SocketError> {
    ensure_parent_dir(path)?;
    clear_stale_socket(path)?;
    let previous = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(previous);
    let listener = bound.map_err(io_error("bind the socket", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_error("set the mode of the socket", path))?;
    listener
        .set_nonblocking(true)
        .map_err(io_error("make non-blocking the socket", path))?;
    Ok(listener)
}

/// Removes the socket file of a listener we bound (nothing for an inherited one). Call it when shutting down,
/// so clients get "no such file" rather than "connection refused".
pub fn remove_socket(origin: &ListenerOrigin) -> Result<(), SocketError> {
    match origin {
        ListenerOrigin::Inherited => Ok(()),
        ListenerOrigin::Bound(path) => match std::fs::remove_file(path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                Err(io_error("remove the socket", path)(err))
            }
            _ => Ok(()),
        },
    }
}

fn ensure_parent_dir(path: &Path) -> Result<(), SocketError> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        Some(_) => Path::new("."),
        None => {
            return Err(SocketError::NoParent {
                path: path.to_owned(),
            })
        }
    };
    match std::fs::metadata(parent) {
        Ok(meta) => {
            let mode = meta.permissions().mode();
            // World-writable without sticky bit: another user could unlink our socket and put theirs there.
            if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                return Err(SocketError::UnsafeDirectory {
                    path: parent.to_owned(),
                });
            }
            Ok(())
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io_error("create the socket directory", parent))?;
            // The creation mode was masked by the umask; state the intended mode explicitly.
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))
                .map_err(io_error("set the mode of the socket directory", parent))
        }
        Err(err) => Err(io_error("inspect the socket directory", parent)(err)),
    }
}

fn clear_stale_socket(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(io_error("inspect", path)(err)),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_owned(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(SocketError::LiveServer {
            path: path.to_owned(),
        }),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing stale socket");
            match std::fs::remove_file(path) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => {
                    Err(io_error("remove the stale socket", path)(err))
                }
                _ => Ok(()),
            }
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io_error("probe the existing socket", path)(err)),
    }
}

/// The listener systemd passed (socket activation: `LISTEN_PID` is us and `LISTEN_FDS=1`), or `None`.
///
/// The variables are left in the environment (changing it is unsound once threads run); they cannot
/// mislead a child because `LISTEN_PID` names this process.
pub fn inherited_listener() -> Result<Option<UnixListener>, SocketError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    inherited_listener_from(pid.as_deref(), fds.as_deref(), std::process::id())
}

fn inherited_listener_from(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    our_pid: u32,
) -> Result<Option<UnixListener>, SocketError> {
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    if listen_pid.trim().parse::<u32>().ok() != Some(our_pid) {
        return Ok(None);
    }
    if listen_fds.trim() != "1" {
        return Err(SocketError::UnexpectedListenFds {
            count: listen_fds.to_owned(),
        });
    }
    check_listening_unix_stream(LISTEN_FDS_START)?;
    // SAFETY: systemd passed fd 3 to this process (LISTEN_PID matched) and nothing else owns it; it was
    // checked above to be an open listening Unix stream socket.
    let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
    let listener = UnixListener::from(fd);
    nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| SocketError::BadInheritedSocket {
        reason: format!("cannot set close-on-exec: {e}"),
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| SocketError::BadInheritedSocket {
            reason: format!("cannot make it non-blocking: {e}"),
        })?;
    Ok(Some(listener))
}

fn check_listening_unix_stream(fd: RawFd) -> Result<(), SocketError> {
    use nix::sys::socket::{
        getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, UnixAddr,
    };
    // SAFETY: only borrowed for the duration of these getsockopt/getsockname calls.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let bad = |reason: String| SocketError::BadInheritedSocket { reason };
    let sock_type = getsockopt(&borrowed, sockopt::SockType).map_err(|e| bad(e.to_string()))?;
    let listening = getsockopt(&borrowed, sockopt::AcceptConn).map_err(|e| bad(e.to_string()))?;
    let address: UnixAddr = getsockname(fd).map_err(|e| bad(format!("not a Unix socket ({e})")))?;
    if sock_type != SockType::Stream || !listening || address.family() != Some(AddressFamily::Unix)
    {
        return Err(bad(format!("type {sock_type:?}, listening {listening}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_path_prefers_systemd_then_xdg_then_state() {
        let state = Path::new("/srv/fleet/.herdctl");
        assert_eq!(
            default_socket_path(
                Some(OsStr::new("/run/herdctld:/run/other")),
                Some(OsStr::new("/run/user/1")),
                state
            ),
            Path::new("/run/herdctld/herdctld.sock")
        );
        assert_eq!(
            default_socket_path(None, Some(OsStr::new("/run/user/1")), state),
            Path::new("/run/user/1/herdctl/herdctld.sock")
        );
        assert_eq!(
            default_socket_path(Some(OsStr::new("")), Some(OsStr::new("")), state),
            Path::new("/srv/fleet/.herdctl/herdctld.sock")
        );
    }

    #[test]
    fn socket_modes_parse_as_octal() {
        assert_eq!(parse_socket_mode("0600").unwrap(), 0o600);
        assert_eq!(parse_socket_mode("660").unwrap(), 0o660);
        assert_eq!(parse_socket_mode("0o640").unwrap(), 0o640);
        for bad in ["", "0o", "0800", "rw", "01777", "-1"] {
            assert!(
                matches!(parse_socket_mode(bad), Err(SocketError::InvalidMode { .. })),
                "{bad}"
            );
        }
    }

    /// `bind_socket` changes the process-wide umask for an instant; tests that create files while another
    /// test binds could see it, so the binding tests take turns.
    static UMASK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener, SocketError> {
        let _turn = UMASK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        super::bind_socket(path, mode)
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn socket_is_created_0600_in_a_new_0700_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/herdctl/herdctld.sock");
        let _listener = bind_socket(&path, 0o600).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert!(std::fs::metadata(&path).unwrap().file_type().is_socket());
        assert_eq!(mode_of(path.parent().unwrap()), 0o700);
    }

    #[test]
    fn socket_mode_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _listener = bind_socket(&path, 0o660).unwrap();
        assert_eq!(mode_of(&path), 0o660);
    }

    #[test]
    fn stale_socket_is_replaced_and_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        drop(UnixListener::bind(&path).unwrap()); // leaves a stale socket file behind
        let live = bind_socket(&path, 0o600).unwrap();
        match bind_socket(&path, 0o600) {
            Err(SocketError::LiveServer { path: named }) => assert_eq!(named, path),
            other => panic!("expected LiveServer, got {other:?}"),
        }
        assert!(bind_socket(&path, 0o600)
            .unwrap_err()
            .to_string()
            .contains(&path.display().to_string()));
        drop(live);
        bind_socket(&path, 0o600).unwrap();
    }

    #[test]
    fn a_regular_file_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        std::fs::write(&path, "keep me").unwrap();
        assert!(matches!(
            bind_socket(&path, 0o600),
            Err(SocketError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }

    #[test]
    fn world_writable_directory_without_sticky_bit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            bind_socket(&open.join("s.sock"), 0o600),
            Err(SocketError::UnsafeDirectory { .. })
        ));
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        bind_socket(&open.join("s.sock"), 0o600).unwrap();
    }

    #[test]
    fn remove_socket_only_removes_what_we_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let bound = {
            let _turn = UMASK
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            open_listener(&path, 0o600).unwrap()
        };
        assert_eq!(bound.origin, ListenerOrigin::Bound(path.clone()));
        remove_socket(&ListenerOrigin::Inherited).unwrap();
        assert!(path.exists());
        remove_socket(&bound.origin).unwrap();
        assert!(!path.exists());
        remove_socket(&bound.origin).unwrap();
    }

    #[test]
    fn socket_activation_is_ignored_unless_meant_for_us() {
        assert!(inherited_listener_from(None, None, 10).unwrap().is_none());
        assert!(inherited_listener_from(Some("11"), Some("1"), 10)
            .unwrap()
            .is_none());
        assert!(matches!(
            inherited_listener_from(Some("10"), Some("2"), 10),
            Err(SocketError::UnexpectedListenFds { .. })
        ));
    }

    #[test]
    fn non_listening_descriptors_are_rejected() {
        let (a, _b) = UnixStream::pair().unwrap();
        use std::os::fd::AsRawFd;
        assert!(matches!(
            check_listening_unix_stream(a.as_raw_fd()),
            Err(SocketError::BadInheritedSocket { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("l.sock")).unwrap();
        check_listening_unix_stream(listener.as_raw_fd()).unwrap();
    }
}
