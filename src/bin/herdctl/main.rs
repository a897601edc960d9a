//! `herdctl`, the command-line client of herdctld (SPEC §3): every command is one or a few JSON-RPC calls
//! or subscriptions on the daemon's socket, rendered for people or, with `--json`, passed through raw.
//!
//! It holds no business logic: the daemon validates, decides and reports; this program only asks and shows.
//! Modules: `commands` (what each command asks and prints), `render` and `job_output` (human views), `style`
//! (colours, times, tables); the connection is the library's `herdctld::rpc::client`.
//!
//! Exit codes: 0 success; 1 a domain or connection error (the daemon's message is printed); 2 a usage error
//! (bad arguments, or parameters the daemon rejected); `trigger --wait` exits 0/1/130 for a job that
//! completed/failed/was cancelled, and 130 on Ctrl-C.

mod commands;
mod job_output;
mod render;
mod style;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use herdctld::config::FLEET_FILE_NAMES;
use herdctld::daemon::socket::default_socket_path;

#[derive(Debug, Parser)]
#[command(
    name = "herdctl",
    version,
    about = "Control a running herdctld: fleet status, agents, jobs, schedules, logs and events",
    after_help = "Examples:\n  herdctl status\n  herdctl trigger greeter --wait\n  herdctl logs -f --agent greeter\n  herdctl --json jobs --status failed | jq '.jobs[].id'\n\nThe socket is --socket or $HERDCTL_SOCKET if given; else the first that exists of\n$RUNTIME_DIRECTORY/herdctld.sock, $XDG_RUNTIME_DIR/herdctl/herdctld.sock, .herdctl/herdctld.sock beside\nthe nearest herdctl.yaml (the daemon's own defaults) and /run/herdctld/herdctld.sock (the systemd\nservice). herdctld prints the path it listens on at start."
)]
pub struct Cli {
    /// Path of the daemon's socket.
    #[arg(long, global = true, env = "HERDCTL_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print the daemon's raw JSON result on stdout (streams: one JSON object per line).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fleet state, uptime, agent and job counts, the next scheduled run, and what jobs cost today and in
    /// the last 7 days.
    #[command(after_help = "Example:\n  herdctl status")]
    Status,
    /// All agents with their state, running and queued jobs, schedules, last job, and cost today (against
    /// the daily budget) and in the last 7 days.
    #[command(after_help = "Example:\n  herdctl agents")]
    Agents,
    /// One agent in detail, with its schedules.
    #[command(after_help = "Example:\n  herdctl agent greeter")]
    Agent {
        /// Agent name (qualified for sub-fleets: `sub.agent`).
        name: String,
    },
    /// Jobs, newest first.
    #[command(
        after_help = "Examples:\n  herdctl jobs --agent greeter --limit 5\n  herdctl jobs --status failed --since 1d\n  herdctl jobs --since 2025-06-01"
    )]
    Jobs {
        /// Only this agent's jobs.
        #[arg(long)]
        agent: Option<String>,
        /// Only jobs in this status.
        #[arg(long, value_parser = ["queued", "running", "completed", "failed", "cancelled"])]
        status: Option<String>,
        /// Only jobs created since then: a duration back from now (30m, 6h, 2d), a date (2025-06-01) or an
        /// RFC 3339 time.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// How many jobs to show.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
    },
    /// One job in detail; with --output, also what it printed.
    #[command(
        after_help = "Examples:\n  herdctl job job-2025-06-01-a1b2c3\n  herdctl job job-2025-06-01-a1b2c3 --output"
    )]
    Job {
        /// Job id (job-YYYY-MM-DD-xxxxxx).
        id: String,
        /// Include the job's output.
        #[arg(long, short = 'o')]
        output: bool,
    },
    /// Start a job of an agent now (it queues when the agent is at its concurrency limit).
    #[command(
        after_help = "Examples:\n  herdctl trigger greeter\n  herdctl trigger greeter hello --wait\n  herdctl trigger slow-worker --prompt 'Work on the backlog' --priority 1\n  herdctl trigger coder --over-budget\n\nWith --wait the job's output streams live and the exit code is the job's outcome:\n0 completed, 1 failed, 130 cancelled. Ctrl-C stops waiting and leaves the job running.\nWith --json --wait, stdout gets the finished job record."
    )]
    Trigger {
        agent: String,
        /// Run as this schedule (its prompt and settings).
        schedule: Option<String>,
        /// Prompt for this run instead of the schedule's or agent's.
        #[arg(long)]
        prompt: Option<String>,
        /// Queue priority, 1 (highest) to 10 (lowest); default 5.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=10))]
        priority: Option<u8>,
        /// Start a new Claude session instead of continuing the agent's last one.
        #[arg(long)]
        fresh: bool,
        /// Run even though the agent's jobs already cost its daily budget today.
        #[arg(long)]
        over_budget: bool,
        /// Stream the job's output and exit with its outcome.
        #[arg(long, short = 'w')]
        wait: bool,
    },
    /// Cancel a queued or running job (SIGTERM to its process group, then SIGKILL after the grace period).
    #[command(
        after_help = "Examples:\n  herdctl cancel job-2025-06-01-a1b2c3\n  herdctl cancel job-2025-06-01-a1b2c3 --grace 0"
    )]
    Cancel {
        id: String,
        /// Seconds to wait after SIGTERM before SIGKILL (default: the agent's stop_grace).
        #[arg(long, value_name = "SECS")]
        grace: Option<f64>,
    },
    /// Run a job again as a new job, resuming its Claude session when it has one.
    #[command(
        after_help = "Example:\n  herdctl fork job-2025-06-01-a1b2c3 --prompt 'Now write the tests'"
    )]
    Fork {
        id: String,
        /// Prompt for the new job.
        #[arg(long)]
        prompt: Option<String>,
        /// Run the new job as this schedule.
        #[arg(long)]
        schedule: Option<String>,
        /// Run even though the agent's jobs already cost its daily budget today.
        #[arg(long)]
        over_budget: bool,
    },
    /// Every schedule with its next and last run.
    #[command(after_help = "Example:\n  herdctl schedules")]
    Schedules,
    /// Enable a schedule (persists across restarts).
    #[command(after_help = "Example:\n  herdctl enable greeter hello")]
    Enable { agent: String, schedule: String },
    /// Disable a schedule (persists across restarts).
    #[command(after_help = "Example:\n  herdctl disable greeter hello")]
    Disable { agent: String, schedule: String },
    /// Reload the configuration; running jobs keep the configuration they started with.
    #[command(after_help = "Example:\n  herdctl reload")]
    Reload,
    /// Start the fleet (after `herdctld --no-start` or `herdctl stop`).
    #[command(after_help = "Example:\n  herdctl start")]
    Start,
    /// Stop the fleet: stop the scheduler and wait for running jobs (the daemon keeps serving).
    #[command(
        after_help = "Examples:\n  herdctl stop\n  herdctl stop --timeout 120\n  herdctl stop --no-wait"
    )]
    Stop {
        /// Do not wait for running jobs: cancel them now.
        #[arg(long)]
        no_wait: bool,
        /// Seconds to wait for running jobs before cancelling them.
        #[arg(long, value_name = "SECS", default_value_t = 30.0)]
        timeout: f64,
    },
    /// The daemon's log entries, or one job's output with --job; -f follows.
    #[command(
        after_help = "Examples:\n  herdctl logs -n 20\n  herdctl logs -f --agent greeter --level warn\n  herdctl logs -f --job job-2025-06-01-a1b2c3"
    )]
    Logs {
        /// Keep printing new entries until Ctrl-C (with --job: until the job ends).
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only this agent's entries.
        #[arg(long, conflicts_with = "job")]
        agent: Option<String>,
        /// Show this job's output instead of log entries.
        #[arg(long, value_name = "ID")]
        job: Option<String>,
        /// Minimum level: trace, debug, info, warn or error.
        #[arg(long, conflicts_with = "job", value_parser = ["trace", "debug", "info", "warn", "error"])]
        level: Option<String>,
        /// How many past entries to show first (default 100; with --job: all of its output).
        #[arg(short = 'n', long = "lines", value_name = "N")]
        lines: Option<usize>,
    },
    /// Follow fleet events until Ctrl-C.
    #[command(
        after_help = "Examples:\n  herdctl events\n  herdctl events --type job:completed --type job:failed\n  herdctl --json events --type schedule:skipped"
    )]
    Events {
        /// Only events of this type (repeatable): job:created, job:started, job:completed, job:failed,
        /// job:cancelled, schedule:triggered, schedule:skipped, config:reloaded, error, …
        #[arg(long = "type", short = 't', value_name = "TYPE")]
        types: Vec<String>,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  herdctl completions bash > ~/.local/share/bash-completion/completions/herdctl\n  herdctl completions zsh > ~/.zfunc/_herdctl"
    )]
    Completions { shell: clap_complete::Shell },
}

/// The socket of the system service (`systemd/herdctld.service` and `herdctld.socket`).
const SYSTEM_SOCKET: &str = "/run/herdctld/herdctld.sock";

/// Where to look for the daemon when neither --socket nor HERDCTL_SOCKET says, in order (the first that
/// exists is used; see [`herdctld::rpc::client::Client::connect`]):
/// 1. the daemon's own default for a fleet found from the current directory (`$RUNTIME_DIRECTORY`, else
///    `$XDG_RUNTIME_DIR/herdctl`, else `.herdctl` beside the nearest herdctl.yaml, else `./.herdctl`), so a
///    herdctl run next to its daemon talks to that one;
/// 2. the places the same daemon would have used without `$RUNTIME_DIRECTORY` or `$XDG_RUNTIME_DIR` (a
///    person's own daemon, e.g. the `systemd --user` unit, seen from a shell inside another unit, or one
///    started from a session without `$XDG_RUNTIME_DIR`);
/// 3. the system service's socket, last, so a person's own daemon wins over the shared one and an
///    operator's shell still finds the system daemon.
fn socket_candidates(
    runtime_directory: Option<&OsStr>,
    xdg_runtime_dir: Option<&OsStr>,
    state_dir: &Path,
) -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    for candidate in [
        default_socket_path(runtime_directory, xdg_runtime_dir, state_dir),
        default_socket_path(None, xdg_runtime_dir, state_dir),
        default_socket_path(None, None, state_dir),
        PathBuf::from(SYSTEM_SOCKET),
    ] {
        if !candidates.contains(&candidate) {
            candidates.push(candidate);
        }
    }
    candidates
}

/// [`socket_candidates`] from the process environment and the current directory.
fn default_sockets() -> Vec<PathBuf> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let fleet_dir = nearest_fleet_dir(&cwd).unwrap_or(cwd);
    let runtime = std::env::var_os("RUNTIME_DIRECTORY");
    let xdg = std::env::var_os("XDG_RUNTIME_DIR");
    socket_candidates(
        runtime.as_deref(),
        xdg.as_deref(),
        &fleet_dir.join(".herdctl"),
    )
}

fn nearest_fleet_dir(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|dir| FLEET_FILE_NAMES.iter().any(|name| dir.join(name).is_file()))
        .map(Path::to_path_buf)
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`herdctl logs | head`) like other Unix tools, instead of a write error.
    // SAFETY: called first thing, before any other thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "herdctl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    // An explicit socket is the only one tried: probing others could reach a daemon the user did not name.
    let sockets = match cli.socket.clone() {
        Some(socket) => vec![socket],
        None => default_sockets(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("herdctl: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(commands::run(cli.command, &sockets, cli.json));
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_an_example() {
        for command in Cli::command().get_subcommands() {
            let help = command.get_after_help().map(|h| h.to_string());
            assert!(
                help.is_some_and(|h| h.contains("herdctl ")),
                "{} has no example",
                command.get_name()
            );
        }
    }

    #[test]
    fn the_socket_candidates_end_with_the_system_service() {
        let state = Path::new("/fleet/.herdctl");
        let paths = |runtime: Option<&str>, xdg: Option<&str>| {
            socket_candidates(runtime.map(OsStr::new), xdg.map(OsStr::new), state)
        };
        assert_eq!(
            paths(Some("/run/unit"), Some("/run/user/1000")),
            [
                "/run/unit/herdctld.sock",
                "/run/user/1000/herdctl/herdctld.sock",
                "/fleet/.herdctl/herdctld.sock",
                "/run/herdctld/herdctld.sock",
            ]
            .map(PathBuf::from)
        );
        // An operator's shell: no RUNTIME_DIRECTORY.
        assert_eq!(
            paths(None, Some("/run/user/1000")),
            [
                "/run/user/1000/herdctl/herdctld.sock",
                "/fleet/.herdctl/herdctld.sock",
                "/run/herdctld/herdctld.sock",
            ]
            .map(PathBuf::from)
        );
        // Neither (cron, su): the fleet's directory, then the system service.
        assert_eq!(
            paths(None, None),
            [
                "/fleet/.herdctl/herdctld.sock",
                "/run/herdctld/herdctld.sock"
            ]
            .map(PathBuf::from)
        );
        // Inside the system service itself the first candidate is the system socket; it is not repeated.
        assert_eq!(
            paths(Some("/run/herdctld"), None),
            [
                "/run/herdctld/herdctld.sock",
                "/fleet/.herdctl/herdctld.sock"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn the_fleet_directory_is_found_upward() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("herdctl.yaml"), "agents: []\n").unwrap();
        let deep = root.path().join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(nearest_fleet_dir(&deep).as_deref(), Some(root.path()));
    }
}
