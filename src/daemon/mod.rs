//! daemon: the process concerns of `herdctld` (SPEC §3, §12) — nothing about fleets or JSON-RPC.
//!
//! - [`socket`]: default socket path, safe creation (umask, mode, parent directory, stale/live socket),
//!   systemd socket activation.
//! - [`notify`]: sd_notify (`READY=1`, `STOPPING=1`, `RELOADING=1`, `WATCHDOG=1`, `STATUS=`) and the
//!   watchdog interval.
//! - [`signals`]: SIGTERM/SIGINT/SIGHUP as shutdown / shutdown-now / reload requests.
//! - [`logging`]: tracing-subscriber setup from the command line, with room for one extra layer.
//!
//! The command line and `main` (which tie these to the FleetManager and `rpc::transport`) live in the binary.

pub mod logging;
pub mod notify;
pub mod signals;
pub mod socket;
