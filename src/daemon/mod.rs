//! daemon: the process concerns of `herdctld` (SPEC §3, §12).
//!
//! - [`socket`]: default socket path, safe creation (umask, mode, parent directory, stale/live socket),
//!   systemd socket activation.
//! - [`notify`]: sd_notify (`READY=1`, `STOPPING=1`, `RELOADING=1`, `WATCHDOG=1`, `STATUS=`) and the
//!   watchdog interval.
//! - [`signals`]: SIGTERM/SIGINT/SIGHUP as shutdown / shutdown-now / reload requests.
//! - [`logging`]: tracing-subscriber setup from the command line, with room for one extra layer.
//! - [`log_file`]: the `--log-file`, rotated by size with its path always the live file.
//!
//! - [`run`]: the command line and the daemon's life — the one place that ties these to the FleetManager and
//!   `rpc::transport`.

pub mod log_file;
pub mod logging;
pub mod notify;
pub mod run;
pub mod signals;
pub mod socket;
