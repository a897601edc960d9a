//! daemon: hosting a FleetManager on its socket (SPEC §3, §12) — as a library ([`Daemon`]) and as the
//! `herdctld` process.
//!
//! - [`service`]: the library: [`Daemon::start`] serves an initialized fleet on a listener the caller bound,
//!   [`Daemon::run`] acts on [`Request`]s (reload, stop, stop now) and sd_notify until it has stopped. Nothing
//!   process-wide, so tests run it in-process.
//! - [`socket`]: default socket path, safe creation (umask, mode, parent directory, stale/live socket),
//!   systemd socket activation.
//! - [`notify`]: sd_notify (`READY=1`, `STOPPING=1`, `RELOADING=1`, `WATCHDOG=1`, `STATUS=`) and the
//!   watchdog interval.
//! - [`signals`]: SIGTERM/SIGINT/SIGHUP as shutdown / shutdown-now / reload requests.
//! - [`logging`]: tracing-subscriber setup from the command line, with room for one extra layer.
//! - [`log_file`]: the `--log-file`, rotated by size with its path always the live file.
//!
//! - [`run`]: the process — command line, logging, subreaper, signals, the socket file, exit codes — around a
//!   [`Daemon`].

pub mod log_file;
pub mod logging;
pub mod notify;
pub mod run;
pub mod service;
pub mod signals;
pub mod socket;

pub use service::{Daemon, DaemonError, DaemonOptions, Request};
