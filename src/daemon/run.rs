//! `herdctld`, the process: command line, logging, subreaper, fleet initialization, signals, the socket file,
//! exit codes. Serving and the stop are the library's [`Daemon`] (`daemon::service`), which this drives.
//!
//! Order at start: parse args → logging (with the fleet's log layer) → initialize the fleet (config validated,
//! state dir locked, interrupted jobs recovered) → signal handlers → bind `--metrics-listen` (if given) → bind
//! the socket → [`Daemon::start`]: start the fleet (unless `--no-start`), serve (the socket, and `GET /metrics`
//! on TCP) → [`Daemon::run`]: `READY=1`. Order at stop (SIGTERM/SIGINT, forwarded as [`Request`](super::Request)s):
//! `STOPPING=1` → stop the fleet (scheduler, wait for jobs up to the timeout, cancel the rest; a second signal
//! cancels at once) → stop serving → remove the socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::fleet::{FleetError, FleetManager, FleetManagerOptions, HistoryOptions, LogBus};

use super::log_file::{self, LogFileOptions};
use super::logging::{self, LogFormat, LogOptions};
use super::notify::{watchdog_interval, Notifier};
use super::service::{Daemon, DaemonOptions};
use super::signals::Signals;
use super::socket;

/// Exit code for an invalid configuration at start (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "herdctld",
    version,
    about = "Runs a fleet of coding agents on schedules and on demand; serves JSON-RPC on a Unix socket",
    after_help = "Examples:\n  herdctld --config examples/demo\n  herdctld --config /etc/herdctl/herdctl.yaml --state /var/lib/herdctld --log-format json",
    args_conflicts_with_subcommands = true
)]
pub struct DaemonArgs {
    #[command(subcommand)]
    pub command: Option<DaemonCommand>,
    /// Fleet file, directory with herdctl.yaml, directory of agent files, or one agent file.
    /// Default: herdctl.yaml in the working directory or a parent.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// State directory. Default: $STATE_DIRECTORY under systemd, else .herdctl beside the fleet file.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Socket path. Default: $RUNTIME_DIRECTORY/herdctld.sock, else $XDG_RUNTIME_DIR/herdctl/herdctld.sock,
    /// else herdctld.sock in the state directory.
    #[arg(long, env = "HERDCTL_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Permissions of the socket (octal). 0660 also admits the socket's group.
    #[arg(long, default_value = "0600")]
    pub socket_mode: String,
    /// Initialize but do not start the fleet; a client calls `start`.
    #[arg(long)]
    pub no_start: bool,
    /// Fleet-wide cap on running jobs (overrides defaults.max_concurrent).
    #[arg(long)]
    pub max_concurrent: Option<u32>,
    /// Manual triggers that may wait for a free slot, fleet-wide (default 1000); one more makes `trigger`
    /// fail with CONCURRENCY_LIMIT (1006).
    #[arg(long)]
    pub max_queued: Option<usize>,
    /// Running jobs per agent for agents whose configuration sets no `concurrency` (default 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub per_agent: Option<u32>,
    /// Newest jobs kept per agent (overrides defaults.max_jobs_per_agent; default 100).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_jobs_per_agent: Option<u64>,
    /// Newest jobs kept overall (overrides defaults.max_jobs_total; default: no cap).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_jobs_total: Option<u64>,
    /// Finished jobs older than this are deleted, e.g. 30d or 12h (overrides defaults.max_job_age;
    /// default: kept at any age).
    #[arg(long, value_parser = job_age)]
    pub max_job_age: Option<Duration>,
    /// trace, debug, info, warn or error (RUST_LOG, if set, wins).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// text (default) or json (one object per line).
    #[arg(long, default_value = "text")]
    pub log_format: LogFormat,
    /// Write logs to this file instead of stderr. It stays the live file: when it reaches
    /// --log-file-max-size it becomes PATH.1 (PATH.1 becomes PATH.2, …) and a new PATH starts.
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Size at which the log file is rotated: bytes, or with K, M or G (default 10M).
    #[arg(long, value_parser = log_file_size, requires = "log_file")]
    pub log_file_max_size: Option<u64>,
    /// Rotated log files kept beside it, PATH.1 newest (default 5; 0 keeps none).
    #[arg(long, requires = "log_file")]
    pub log_file_keep: Option<usize>,
    /// Also serve `GET /metrics` (Prometheus text format; nothing else) on this TCP address, e.g.
    /// 127.0.0.1:9464. The socket's HTTP framing serves /metrics regardless. A non-loopback address is
    /// logged as a warning: anyone who can reach it can read the fleet's metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

/// What the binary does instead of serving a fleet.
#[derive(Debug, clap::Subcommand)]
pub enum DaemonCommand {
    /// Runs one job where a cluster engine placed it, writing its output as framed lines on stdout. The
    /// daemon submits this for agents whose `executor` is a cluster; it is not for interactive use.
    ExecShim {
        /// The run spec the daemon wrote (`<state>/executor/<job-id>.spec.json`).
        #[arg(long)]
        spec: PathBuf,
    },
}

impl DaemonArgs {
    /// The fleet these arguments describe, logging to `logs`. `--state` defaults to systemd's
    /// `$STATE_DIRECTORY`; what is not given keeps the FleetManager's defaults.
    pub fn fleet_options(&self, logs: LogBus) -> FleetManagerOptions {
        let defaults = FleetManagerOptions::default();
        FleetManagerOptions {
            per_agent: self.per_agent.unwrap_or(defaults.per_agent),
            history: HistoryOptions {
                max_jobs_per_agent: self.max_jobs_per_agent.map(saturating_usize),
                max_jobs_total: self.max_jobs_total.map(saturating_usize),
                max_job_age: self.max_job_age,
            },
            config_path: self.config.clone(),
            state_dir: self
                .state
                .clone()
                .or_else(|| std::env::var_os("STATE_DIRECTORY").map(PathBuf::from)),
            concurrency: self.max_concurrent,
            max_queued: self.max_queued.unwrap_or(defaults.max_queued),
            logs,
            ..defaults
        }
    }
}

/// `--max-job-age`: a duration (`30d`, `12h`) greater than zero.
fn job_age(text: &str) -> Result<Duration, String> {
    match crate::timespec::parse_duration(text) {
        Ok(age) if age.is_zero() => Err("must be greater than zero, e.g. 30d".to_owned()),
        Ok(age) => Ok(age),
        Err(e) => Err(e.to_string()),
    }
}

fn log_file_size(text: &str) -> Result<u64, String> {
    log_file::parse_size(text).map_err(|e| e.to_string())
}

/// A count from the command line; beyond what this machine can address it means "no limit" anyway.
fn saturating_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Runs the daemon to completion; the binary's `main`.
pub fn main() -> ExitCode {
    let args = DaemonArgs::parse();
    if let Some(DaemonCommand::ExecShim { spec }) = &args.command {
        return crate::executor::shim::main(spec);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("herdctld: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: DaemonArgs) -> ExitCode {
    let logs = LogBus::new(10_000);
    let log_options = LogOptions {
        level: args.log_level.clone(),
        format: args.log_format,
        file: args.log_file.clone().map(|path| LogFileOptions {
            path,
            max_size: args.log_file_max_size.unwrap_or(log_file::DEFAULT_MAX_SIZE),
            keep: args.log_file_keep.unwrap_or(log_file::DEFAULT_KEEP),
        }),
    };
    let _log_guard = match logging::init(&log_options, Some(Box::new(logs.layer()))) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("herdctld: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = crate::runner::become_subreaper() {
        tracing::warn!(
            "cannot become a child subreaper; escaped job processes may outlive their job: {e}"
        );
    }
    let reaper = crate::runner::spawn_orphan_reaper();

    let fleet = FleetManager::new(args.fleet_options(logs));
    if let Err(e) = fleet.initialize().await {
        eprintln!("herdctld: {e}");
        return match e {
            FleetError::Configuration { .. } => ExitCode::from(EXIT_CONFIG),
            _ => ExitCode::from(1),
        };
    }
    if let Some(config) = fleet.config() {
        for warning in &config.warnings {
            eprintln!(
                "herdctld: warning: {}: {}: {}",
                warning.file.display(),
                warning.path,
                warning.message
            );
        }
    }

    let status = fleet.status().await;
    let state_dir = PathBuf::from(status.state_dir.unwrap_or_default());
    let socket_path = args
        .socket
        .clone()
        .unwrap_or_else(|| socket::default_socket_path_from_env(&state_dir));
    // Before the socket is bound and READY=1 is sent: from then on a client or systemd may send SIGHUP
    // (`systemctl reload`) or SIGTERM, and an uninstalled handler would let either kill the daemon.
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("herdctld: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let mode = match socket::parse_socket_mode(&args.socket_mode) {
        Ok(mode) => mode,
        Err(e) => {
            eprintln!("herdctld: {e}");
            return ExitCode::from(2);
        }
    };
    // Before the socket: a bad address fails the start with nothing to clean up.
    let metrics_listener = match args.metrics_listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                if !addr.ip().is_loopback() {
                    tracing::warn!(%addr, "serving metrics on a non-loopback address: whoever can reach it can read them");
                }
                Some(listener)
            }
            Err(e) => {
                eprintln!("herdctld: --metrics-listen {addr}: cannot listen there: {e}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .and_then(|listener| listener.local_addr().ok());
    let listener = match socket::open_listener(&socket_path, mode) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("herdctld: {e}");
            return ExitCode::from(1);
        }
    };
    let origin = listener.origin.clone();
    let listener = match tokio::net::UnixListener::from_std(listener.listener) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "herdctld: cannot use the socket {}: {e}",
                socket_path.display()
            );
            let _ = socket::remove_socket(&origin);
            return ExitCode::from(1);
        }
    };

    let options = DaemonOptions {
        start_fleet: !args.no_start,
        allowed_gid: socket::admitted_group(mode),
        metrics_listener,
        notifier: Notifier::from_env(),
        watchdog: watchdog_interval(),
    };
    // The state directory's lock goes with the fleet's last handle: hold one until the socket file is
    // removed, so a daemon starting on the same state cannot bind a socket there that we then remove.
    let _locked = fleet.clone();
    let daemon = match Daemon::start(fleet, listener, options).await {
        Ok(daemon) => daemon,
        Err(e) => {
            eprintln!("herdctld: {e}");
            let _ = socket::remove_socket(&origin);
            return ExitCode::from(1);
        }
    };
    if let Some(addr) = metrics_addr {
        println!("herdctld: metrics on http://{addr}/metrics");
    }
    println!("herdctld: listening on {}", socket_path.display());
    tracing::info!(socket = %socket_path.display(), state = %state_dir.display(), "herdctld ready");

    // The daemon acts on requests; here they are signals. A handful in flight is plenty: each is acted on
    // at once, and `Signals` itself coalesces a burst.
    let (requests, received) = tokio::sync::mpsc::channel(4);
    let forward =
        tokio::spawn(async move { while requests.send(signals.recv().await).await.is_ok() {} });
    let exit = match daemon.run(received).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    };

    forward.abort();
    if let Some(reaper) = reaper {
        reaper.abort();
    }
    if let Err(e) = socket::remove_socket(&origin) {
        tracing::warn!("{e}");
    }
    tracing::info!("herdctld exiting");
    exit
}
