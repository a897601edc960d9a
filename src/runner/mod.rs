//! Runs one job, on the host as a child process or in a container, and reports its output and outcome.
//!
//! Owns: building the command line of a runtime (Claude Code CLI, or any command), spawning it as its own process
//! group with the prompt on stdin (`spawn`: clone-and-exec without copying the daemon's memory), reading its
//! stdout/stderr a chunk of lines at a time under the line-length cap, parsing stream-json and deciding the
//! outcome (`collect`), timeouts, cancellation (SIGTERM to the group, grace, SIGKILL, and descendants that
//! escaped the group), sweeping what the leader leaves behind, reaping adopted orphans, and killing a dead
//! daemon's leftovers. `container` runs the same job in a container through the Docker Engine API (the
//! spec's [`ContainerSpec`]), with the same output pipeline, outcome rules and termination sequence; `run` holds
//! what both share and a `Target` (process group or container) is what differs.
//!
//! Must not: know about configuration files, the state directory, job records or the fleet. It takes a
//! self-contained [`RunSpec`], streams [`OutputEvent`]s (batches of lines) into a channel and returns a [`RunOutcome`]; the
//! FleetManager maps config → spec and outcome → job record. No shell anywhere: argv entries only.
//!
//! Public API:
//! - [`start`]`(RunSpec, Sender<OutputEvent>) -> RunHandle`; spawn failures (and a container that cannot be
//!   created or started) come back as an outcome with exit reason `spawn_failed`.
//! - [`RunHandle`]: [`RunHandle::process`] (pid, pgid, start time; `None` in a container),
//!   [`RunHandle::canceller`], [`RunHandle::wait`] → [`RunOutcome`].
//! - [`Canceller::cancel`]`(grace) -> TerminationType`.
//! - [`claude_args`], [`become_subreaper`], [`reap_adopted_zombies`], [`spawn_orphan_reaper`],
//!   [`process_start_time`], [`kill_stale_job`].
//! - [`remove_owned_containers`] (a dead daemon's containers, by their owner label), [`engine_configured`].
//!
//! Every job process gets `HERDCTL_JOB_ID`, `HERDCTL_AGENT`, `HERDCTL_SCHEDULE` (and `HERDCTL_PROMPT` for the
//! command runtime) on top of the daemon's environment on the host, or of the container's own environment; the
//! job id in the environment is how escaped descendants are found, so nothing else may carry a running job's id.

mod claude;
mod collect;
mod container;
mod handle;
mod output;
mod process;
mod run;
mod spawn;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::job::OutputLine;

pub use crate::job::{ExitReason, JobError, TerminationType};
pub use claude::{claude_args, ClaudeSpec, CLAUDE_BIN_ENV, INSTALL_HINT};
pub use container::{
    engine_configured, remove_owned_containers, BindMount, ContainerError, ContainerNetwork,
    ContainerSpec, PortBinding, AGENT_LABEL, DEFAULT_SOCKET, JOB_ID_LABEL, OWNER_LABEL, WORKSPACE,
};
pub use handle::{start, Canceller, RunHandle};
pub use output::{OutputLimits, TextLines};
pub use process::{
    become_subreaper, kill_stale_job, process_start_time, reap_adopted_zombies,
    spawn_orphan_reaper, StaleKill, JOB_ID_ENV,
};

/// Everything needed to run one job. Serialisable: an exec-shim reads it where a cluster engine runs the job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    pub job_id: String,
    pub agent: String,
    pub schedule: Option<String>,
    pub prompt: String,
    pub runtime: RuntimeSpec,
    /// Working directory; must exist.
    pub cwd: PathBuf,
    /// Extra environment on top of the daemon's (the `HERDCTL_*` variables always win).
    pub env: Vec<(String, String)>,
    /// Maximum run time; then SIGTERM, `stop_grace`, SIGKILL, exit reason `timeout`.
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL on timeout and when sweeping leftovers after the leader exits.
    pub stop_grace: Duration,
    pub limits: OutputLimits,
    /// Run the job in this container instead of on the host (`cwd` is mounted at [`WORKSPACE`]). Never
    /// sent to an exec-shim: a cluster executor refuses a spec that has one (isolation is not dropped on
    /// the way), and the configuration refuses `docker` with a cluster `executor` at load.
    #[serde(skip)]
    pub container: Option<Box<ContainerSpec>>,
}

/// Which program runs the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeSpec {
    Claude(Box<ClaudeSpec>),
    /// Any program: `argv[0]` is looked up on PATH; the prompt is on stdin and in `HERDCTL_PROMPT`.
    Command {
        argv: Vec<String>,
        env: Vec<(String, String)>,
    },
}

/// A job's output, in order: lines of text one stream printed, read together, or one structured line.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputEvent {
    /// Lines of text of `stream`, in order.
    Text {
        stream: OutputStream,
        lines: TextLines,
    },
    /// A structured line: a stream-json message as printed (`kind` is its `type`), or a notice of
    /// herdctld's (`kind` names it).
    Message {
        kind: String,
        message: Map<String, Value>,
    },
    /// Lines an exec-shim already numbered and stamped where a cluster engine ran the job, relayed: they
    /// keep their seq and time (a seq the job's output already has is a duplicate of a relay before).
    Relayed(Vec<OutputLine>),
}

impl OutputEvent {
    /// How many output lines this is.
    pub fn line_count(&self) -> usize {
        match self {
            OutputEvent::Text { lines, .. } => lines.len(),
            OutputEvent::Message { .. } => 1,
            OutputEvent::Relayed(lines) => lines.len(),
        }
    }

    /// Its lines as output lines, numbered from `first_seq`, for a caller that wants them one by one
    /// (the fleet's pump serialises batches without building these).
    pub fn into_lines(self, first_seq: u64, timestamp: DateTime<Utc>) -> Vec<OutputLine> {
        match self {
            OutputEvent::Text { stream, lines } => lines
                .iter()
                .zip(first_seq..)
                .map(|((line, truncated), seq)| OutputLine {
                    seq,
                    timestamp,
                    kind: stream.as_str().to_owned(),
                    chunk: String::from_utf8_lossy(line).into_owned(),
                    message: None,
                    truncated,
                })
                .collect(),
            OutputEvent::Message { kind, message } => {
                vec![OutputLine::structured(first_seq, timestamp, kind, message)]
            }
            OutputEvent::Relayed(lines) => lines
                .into_iter()
                .zip(first_seq..)
                .map(|(line, seq)| OutputLine { seq, ..line })
                .collect(),
        }
    }
}

/// Which pipe a line of text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    /// The line type of its text lines (`stdout`, `stderr`).
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Completed,
    Failed,
    Cancelled,
}

impl From<RunStatus> for crate::job::JobStatus {
    fn from(status: RunStatus) -> Self {
        match status {
            RunStatus::Completed => crate::job::JobStatus::Completed,
            RunStatus::Failed => crate::job::JobStatus::Failed,
            RunStatus::Cancelled => crate::job::JobStatus::Cancelled,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub exit_reason: ExitReason,
    pub exit_code: Option<i32>,
    /// Signal that ended the leader, if any.
    pub signal: Option<i32>,
    /// The final result text (Claude's `result`, a command's `result` line or last stdout line).
    pub summary: Option<String>,
    /// The final `result` message as emitted: cost, turns, usage, subtype…
    pub result: Option<Value>,
    pub session_id: Option<String>,
    pub error: Option<JobError>,
    /// Set when the run was ended by a cancel or a timeout.
    pub termination: Option<TerminationType>,
}

impl RunOutcome {
    /// The outcome of a run that ended without a process: `status` with `exit_reason`, and the error.
    pub fn without_process(
        status: RunStatus,
        exit_reason: ExitReason,
        code: &str,
        message: String,
    ) -> RunOutcome {
        RunOutcome {
            status,
            exit_reason,
            exit_code: None,
            signal: None,
            summary: None,
            result: None,
            session_id: None,
            error: Some(JobError {
                code: code.to_owned(),
                message,
            }),
            termination: None,
        }
    }
}

/// The leader of a running job: record these in the job so a restarted daemon can kill leftovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Equal to `pid`: every job leads its own process group.
    pub pgid: u32,
    /// Field 22 of `/proc/<pid>/stat`; guards [`kill_stale_job`] against pid reuse.
    pub start_time: Option<u64>,
}
