//! systemd readiness and watchdog notifications (`sd_notify`) without libsystemd (SPEC §12).
//!
//! Owns: sending `READY=1`, `STOPPING=1`, `RELOADING=1`, `WATCHDOG=1` and `STATUS=` datagrams to
//! `$NOTIFY_SOCKET` (a path, or an abstract name written `@name`), and reading the watchdog interval.
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op.
//!
//! Public API:
//! - [`Notifier::from_env`]`()`, [`Notifier::to_socket`]`(addr)`, [`Notifier::disabled`]`()`,
//!   [`Notifier::is_enabled`]
//! - [`Notifier::ready`], [`Notifier::stopping`], [`Notifier::reloading`], [`Notifier::watchdog`],
//!   [`Notifier::status`]`(text)`, [`Notifier::notify`]`(raw)` — each `-> io::Result<()>`
//! - [`watchdog_interval`]`() -> Option<Duration>` — how often to call `watchdog()` (half of `WATCHDOG_USEC`)

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends notifications to systemd; cheap to keep for the life of the daemon.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    address: SocketAddr,
    display: OsString,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; disabled when it is unset or empty. An unusable value is logged once and
    /// disables notifications (the daemon still runs; systemd will report the missing READY=1).
    pub fn from_env() -> Notifier {
        match std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty()) {
            None => Notifier::disabled(),
            Some(address) => Notifier::to_socket(&address).unwrap_or_else(|err| {
                tracing::warn!(notify_socket = ?address, %err, "cannot use NOTIFY_SOCKET; systemd will not be notified");
                Notifier::disabled()
            }),
        }
    }

    /// Notifies nobody: for a daemon that no service manager supervises.
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// To the datagram socket at `address` (a path, or `@name` for an abstract socket).
    pub fn to_socket(address: &OsStr) -> io::Result<Notifier> {
        let bytes = address.as_bytes();
        let socket_address = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(address)?,
        };
        let socket = UnixDatagram::unbound()?;
        Ok(Notifier {
            target: Some(Target {
                socket,
                address: socket_address,
                display: address.to_owned(),
            }),
        })
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one raw notification, e.g. `"READY=1\nSTATUS=running"`.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        target
            .socket
            .send_to_addr(state.as_bytes(), &target.address)
            .map(|_| ())
            .map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("sd_notify to {}: {err}", target.display.to_string_lossy()),
                )
            })
    }

    /// Startup finished: state recovered and socket bound.
    pub fn ready(&self) -> io::Result<()> {
        self.notify("READY=1")
    }

    /// Graceful stop began.
    pub fn stopping(&self) -> io::Result<()> {
        self.notify("STOPPING=1")
    }

    /// A reload began; send [`ready`](Self::ready) when it is done.
    pub fn reloading(&self) -> io::Result<()> {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
    }

    /// The daemon is alive (call every [`watchdog_interval`]).
    pub fn watchdog(&self) -> io::Result<()> {
        self.notify("WATCHDOG=1")
    }

    /// A one-line status shown by `systemctl status`.
    pub fn status(&self, text: &str) -> io::Result<()> {
        let one_line: String = text
            .chars()
            .map(|c| if c == '\n' { ' ' } else { c })
            .collect();
        self.notify(&format!("STATUS={one_line}"))
    }
}

/// `CLOCK_MONOTONIC` in microseconds, as `RELOADING=1` wants it.
fn monotonic_usec() -> u64 {
    // CLOCK_MONOTONIC is always supported on Linux.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |now| {
        (now.tv_sec() as u64) * 1_000_000 + (now.tv_nsec() as u64) / 1_000
    })
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when the watchdog is enabled for this process
/// (`$WATCHDOG_PID` unset or our pid).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(our_pid) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notifications_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::to_socket(path.as_os_str()).unwrap();
        assert!(notifier.is_enabled());
        notifier.ready().unwrap();
        assert_eq!(receive(&systemd), "READY=1");
        notifier.status("running\n3 agents").unwrap();
        assert_eq!(receive(&systemd), "STATUS=running 3 agents");
        notifier.watchdog().unwrap();
        assert_eq!(receive(&systemd), "WATCHDOG=1");
        notifier.stopping().unwrap();
        assert_eq!(receive(&systemd), "STOPPING=1");
        notifier.reloading().unwrap();
        let reloading = receive(&systemd);
        let usec: u64 = reloading
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0);
    }

    #[test]
    fn notifications_reach_an_abstract_socket() {
        let name = format!("herdctld-test-notify-{}", std::process::id());
        let systemd =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let notifier = Notifier::to_socket(OsStr::new(&format!("@{name}"))).unwrap();
        notifier.ready().unwrap();
        assert_eq!(receive(&systemd), "READY=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let notifier = Notifier::disabled();
        assert!(!notifier.is_enabled());
        notifier.ready().unwrap();
    }

    #[test]
    fn a_missing_notify_socket_is_an_error_naming_it() {
        let notifier = Notifier::to_socket(OsStr::new("/nonexistent/notify.sock")).unwrap();
        let err = notifier.ready().unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/notify.sock"),
            "{err}"
        );
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_this_process() {
        assert_eq!(
            watchdog_interval_from(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("soon"), None, 7), None);
    }
}
