//! The validated, fully resolved configuration that the rest of the daemon consumes.
//!
//! Every value here has been checked at load time: durations parsed, cron expressions compiled, time zones
//! looked up, paths made absolute, defaults and overrides merged, agent-level settings pushed down into each
//! schedule. Consumers never re-validate and never see YAML.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::timespec::CronExpr;

/// A loaded fleet: the root fleet file with every agent of every sub-fleet, in declaration order.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// The file (or, for a directory of agent files, the directory) that was loaded; absolute.
    pub config_path: PathBuf,
    /// The directory of `config_path`; the default state directory is `root_dir/.herdctl`.
    pub root_dir: PathBuf,
    pub name: Option<String>,
    pub description: Option<String>,
    pub agents: Vec<AgentConfig>,
    /// Fleet-wide cap on running jobs (herdctld extension: `defaults.max_concurrent` or `fleet.max_concurrent`).
    pub max_concurrent: Option<u32>,
    /// How much job history to keep (herdctld extension: `defaults.max_jobs_per_agent`, …).
    pub history: HistoryConfig,
    /// Variables read from the `.env` file beside the fleet file that were not already set in the process
    /// environment. The process environment is never modified; consumers that look up secrets by name
    /// (`auth.token_env`, hook `bot_token_env`) consult the environment first, then this.
    pub dotenv: DotEnv,
    /// The root fleet file's `docker` section.
    pub docker: Option<DockerConfig>,
    pub warnings: Vec<ConfigWarning>,
}

impl FleetConfig {
    /// The agent with this qualified name (`sub.agent` for sub-fleet agents).
    pub fn agent(&self, name: &str) -> Option<&AgentConfig> {
        self.agents.iter().find(|agent| agent.name == name)
    }
}

/// Job history limits of the root fleet file's `defaults`; `None` = not set there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryConfig {
    /// `max_jobs_per_agent`: newest jobs kept per agent.
    pub max_jobs_per_agent: Option<u32>,
    /// `max_jobs_total`: newest jobs kept overall.
    pub max_jobs_total: Option<u32>,
    /// `max_job_age` (`30d`): finished jobs older than this are deleted.
    pub max_job_age: Option<Duration>,
}

/// Values from a `.env` file. Its `Debug` shows only the keys, because the values are usually secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DotEnv(pub BTreeMap<String, String>);

impl DotEnv {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

impl fmt::Debug for DotEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Something accepted but worth telling the operator about (a section herdctld does not implement, an
/// ignored key). Never fatal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigWarning {
    pub file: PathBuf,
    /// Dotted path of the first occurrence inside `file`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.file.display(),
            self.path,
            self.message
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Qualified name: sub-fleet names and the local name joined by dots (`project.frontend.designer`).
    pub name: String,
    /// The agent file's `name`.
    pub local_name: String,
    /// Names of the sub-fleets from the root down to this agent's fleet; empty for root agents.
    pub fleet_path: Vec<String>,
    /// The agent YAML file, absolute.
    pub source_file: PathBuf,
    pub description: Option<String>,
    /// Absolute. Default: the agent file's directory.
    pub working_directory: PathBuf,
    pub system_prompt: Option<String>,
    pub default_prompt: Option<String>,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    /// `None` means the runtime's default (herdctl's effective default is `acceptEdits`).
    pub permission_mode: Option<PermissionMode>,
    pub tools: Option<Vec<String>>,
    pub allowed_tools: Option<Vec<String>>,
    pub denied_tools: Option<Vec<String>>,
    /// The `mcp_servers` map (server name → server definition) transformed as herdctl transforms it, ready for
    /// `--mcp-config '{"mcpServers": …}'`: `type: http` added when a server has a `url` and no `type`, empty
    /// `args` and `env` dropped.
    pub mcp_servers: Option<serde_json::Value>,
    pub setting_sources: Option<Vec<String>>,
    pub session: SessionConfig,
    /// The agent's own `timezone` (or `defaults.timezone`), before schedules override it: the default of
    /// its cron schedules and the day its budget counts in; `None` = the host's local time zone.
    pub timezone: Option<chrono_tz::Tz>,
    /// herdctld extension `budget`: what the agent's jobs may cost a day; `None` = no limit.
    pub budget: Option<BudgetConfig>,
    /// Jobs of this agent allowed to run at once (`concurrency`, alias `instances.max_concurrent`, or
    /// `defaults.concurrency`); `None` = the fleet's per-agent default (`--per-agent`, else 1).
    pub concurrency: Option<u32>,
    /// File order.
    pub schedules: Vec<ScheduleConfig>,
    pub runtime: RuntimeConfig,
    /// Maximum run time of a job of this agent not started by a schedule (schedules carry their own).
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when a job is stopped (default 10 s).
    pub stop_grace: Duration,
    /// herdctld extension `max_output_mb`: bytes of a job's output file (head and tail) before the middle
    /// is dropped; `None` = `fleet::spec`'s default (64 MiB). Live readers see every line whatever it is.
    pub max_output_bytes: Option<u64>,
    /// herdctld extension `executor`: where the agent's jobs run (default: as the daemon's children).
    pub executor: ExecutorConfig,
    pub work_source: Option<WorkSourceConfig>,
    pub hooks: HooksConfig,
    pub identity: Option<IdentityConfig>,
    pub repo: Option<String>,
    pub metadata_file: Option<String>,
    /// `docker`: `defaults.docker` deep-merged under the agent's own. With `enabled: true` the agent's jobs
    /// run in containers, never on the host.
    pub docker: Option<DockerConfig>,
}

impl AgentConfig {
    pub fn schedule(&self, name: &str) -> Option<&ScheduleConfig> {
        self.schedules.iter().find(|schedule| schedule.name == name)
    }

    /// The container settings its jobs run with: `None` when they run on the host (no `docker`, or
    /// `enabled: false`).
    pub fn container(&self) -> Option<&DockerConfig> {
        self.docker.as_ref().filter(|docker| docker.enabled)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermissionMode {
    #[serde(rename = "default")]
    Default,
    #[serde(rename = "acceptEdits")]
    AcceptEdits,
    #[serde(rename = "bypassPermissions")]
    BypassPermissions,
    #[serde(rename = "plan")]
    Plan,
    #[serde(rename = "delegate")]
    Delegate,
    #[serde(rename = "dontAsk")]
    DontAsk,
}

impl PermissionMode {
    pub const ALL: [PermissionMode; 6] = [
        PermissionMode::Default,
        PermissionMode::AcceptEdits,
        PermissionMode::BypassPermissions,
        PermissionMode::Plan,
        PermissionMode::Delegate,
        PermissionMode::DontAsk,
    ];

    /// The string Claude Code's `--permission-mode` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            PermissionMode::Default => "default",
            PermissionMode::AcceptEdits => "acceptEdits",
            PermissionMode::BypassPermissions => "bypassPermissions",
            PermissionMode::Plan => "plan",
            PermissionMode::Delegate => "delegate",
            PermissionMode::DontAsk => "dontAsk",
        }
    }

    pub fn parse(text: &str) -> Option<PermissionMode> {
        PermissionMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == text)
    }
}

impl fmt::Display for PermissionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// herdctld extension `budget: {daily_usd: N}` (agent or `defaults`; the agent's wins, `budget: null`
/// drops the defaults').
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// US dollars the agent's jobs may cost per calendar day of its time zone; finite and at least 0.
    pub daily_usd: f64,
}

/// herdctl's `session` block. `timeout` is how long a Claude session may be resumed, not a run limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionConfig {
    pub timeout: Option<Duration>,
    pub max_turns: Option<u32>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeConfig {
    /// Claude Code (`runtime: claude`, or herdctl's `sdk`/`cli`). `bin` is the herdctld extension `claude_bin`.
    Claude {
        bin: Option<PathBuf>,
        runtime_type: ClaudeRuntimeType,
    },
    /// Any program (herdctld extension `runtime: command`): `command[0]` with arguments `command[1..]`.
    Command {
        command: Vec<String>,
        env: BTreeMap<String, String>,
    },
}

/// herdctl's name of the runtime that runs Claude (`sdk`, its default, or `cli`; herdctld's `claude` is the
/// CLI). herdctld runs the CLI for both; the name is what session pointers record as `runtime_type`, and a
/// session made under the other one is not resumed (as herdctl does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaudeRuntimeType {
    Sdk,
    Cli,
}

impl ClaudeRuntimeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaudeRuntimeType::Sdk => "sdk",
            ClaudeRuntimeType::Cli => "cli",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    pub name: Option<String>,
    pub role: Option<String>,
    pub personality: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    pub name: String,
    pub kind: ScheduleKind,
    pub prompt: Option<String>,
    pub enabled: bool,
    /// The schedule's `work_source` merged over the agent's; the agent's when the schedule has none.
    pub work_source: Option<WorkSourceConfig>,
    pub resume_session: bool,
    /// Time zone for cron evaluation (schedule, else agent); `None` = the host's local time zone.
    pub timezone: Option<chrono_tz::Tz>,
    pub jitter: Option<Duration>,
    pub overlap: Overlap,
    pub catchup: Catchup,
    /// Maximum run time of a job fired by this schedule (schedule, else agent).
    pub timeout: Option<Duration>,
    /// SIGTERM-to-SIGKILL grace for this schedule's jobs (schedule, else agent, else 10 s).
    pub stop_grace: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleKind {
    /// Fires `interval` after the previous run started; always > 0.
    Interval(Duration),
    /// Boxed: a compiled expression is large and schedules are mostly intervals.
    Cron(Box<CronExpr>),
    /// Accepted for compatibility; herdctld never fires it.
    Webhook,
    /// Accepted for compatibility; herdctld never fires it.
    Chat,
}

impl ScheduleKind {
    /// The YAML `type` value.
    pub fn type_name(&self) -> &'static str {
        match self {
            ScheduleKind::Interval(_) => "interval",
            ScheduleKind::Cron(_) => "cron",
            ScheduleKind::Webhook => "webhook",
            ScheduleKind::Chat => "chat",
        }
    }
}

/// What a schedule does when it comes due while a previous run of its agent is still going.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Skip this fire (`schedule:skipped {reason: concurrency_limit}`).
    #[default]
    Skip,
    /// Queue the run behind the running one.
    Queue,
    /// Run anyway, beyond the agent's concurrency limit.
    Allow,
}

/// What happens to runs missed while the daemon was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Catchup {
    /// Run once for the most recent missed occurrence.
    #[default]
    Latest,
    /// Skip missed occurrences.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkSourceKind {
    Github,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkSourceConfig {
    pub kind: WorkSourceKind,
    /// `owner/repo`.
    pub repo: String,
    pub ready_label: String,
    pub in_progress_label: String,
    pub exclude_labels: Vec<String>,
    pub cleanup_on_failure: bool,
    /// Name of the environment variable holding the token (default `GITHUB_TOKEN`).
    pub token_env: String,
    /// GitHub Enterprise or a test fake; `None` = `https://api.github.com`.
    pub api_base_url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HooksConfig {
    /// Run after every finished (not cancelled) job.
    pub after_run: Vec<Hook>,
    /// Run after failed jobs only.
    pub on_error: Vec<Hook>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub name: Option<String>,
    pub action: HookAction,
    pub continue_on_error: bool,
    /// Events (`completed`, `failed`, `timeout`, `cancelled`) this hook runs for; `None` = all.
    pub on_events: Option<Vec<String>>,
    /// Dot path into the hook context (`metadata.shouldNotify`); the hook is skipped when it is falsy.
    pub when: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookAction {
    /// Run through `sh -c` in the agent's working directory, context JSON on stdin.
    Shell { command: String, timeout: Duration },
    /// POST/PUT the context JSON.
    Webhook {
        url: String,
        method: HttpMethod,
        headers: BTreeMap<String, String>,
        timeout: Duration,
    },
    Discord {
        channel_id: String,
        bot_token_env: String,
    },
    Slack {
        channel_id: String,
        bot_token_env: String,
    },
}

impl HookAction {
    /// The YAML `type` value.
    pub fn type_name(&self) -> &'static str {
        match self {
            HookAction::Shell { .. } => "shell",
            HookAction::Webhook { .. } => "webhook",
            HookAction::Discord { .. } => "discord",
            HookAction::Slack { .. } => "slack",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Post,
    Put,
}

/// herdctl's docker settings (`AgentDockerSchema` for an agent file, `FleetDockerSchema` for the fleet file and
/// `defaults.docker`), with herdctl's defaults applied. Fields an agent file may not set (image, network, user,
/// volumes, ports, env, host_config) come from the fleet file.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerConfig {
    /// Run this agent's jobs in a container (default false).
    pub enabled: bool,
    /// A fresh container per job (default true); `false` (one reused across jobs) is refused at load.
    pub ephemeral: bool,
    /// `image`, or its deprecated alias `base_image`; `None` = herdctl's default image.
    pub image: Option<String>,
    pub network: DockerNetwork,
    /// Memory limit in bytes, from `memory` as herdctl reads it (`2g`, `512m`, `1024k`, `2048`); default 2g;
    /// `0` sets none.
    pub memory_bytes: i64,
    pub cpu_shares: Option<u32>,
    /// Microseconds; with `cpu_quota` a hard CPU limit.
    pub cpu_period: Option<u32>,
    pub cpu_quota: Option<u32>,
    pub pids_limit: Option<u32>,
    /// `UID` or `UID:GID`; `None` = the host user.
    pub user: Option<String>,
    /// At most this many of the agent's containers at once (default 5): its jobs beyond wait in the queue.
    pub max_containers: u32,
    /// Extra mounts, `host:container[:ro|rw]`.
    pub volumes: Vec<String>,
    pub workspace_mode: WorkspaceMode,
    pub env: BTreeMap<String, String>,
    /// `hostPort:containerPort` or `containerPort`, each a port number (checked at load).
    pub ports: Vec<String>,
    /// `/path` or `/path:options`.
    pub tmpfs: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Raw Docker `HostConfig` passthrough, as written.
    pub host_config: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DockerNetwork {
    None,
    #[default]
    Bridge,
    Host,
}

/// How the working directory is mounted into the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkspaceMode {
    #[default]
    ReadWrite,
    ReadOnly,
}

/// herdctld extension `executor` (agent or `defaults`): which engine runs an agent's jobs. The fleet stays the
/// one control plane (queue, limits, records, output, events); only where the job's processes run changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ExecutorConfig {
    /// `type: local` (the default): the daemon runs the job as its own child.
    #[default]
    Local,
    /// `type: slurm`: the job is a Slurm batch job running `herdctld exec-shim`.
    Slurm(SlurmConfig),
}

impl ExecutorConfig {
    /// The `type` as written: `local`, `slurm`.
    pub fn type_name(&self) -> &'static str {
        match self {
            ExecutorConfig::Local => "local",
            ExecutorConfig::Slurm(_) => "slurm",
        }
    }
}

/// `executor: {type: slurm, …}`: what the job asks Slurm for; `None` leaves Slurm's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlurmConfig {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--cpus-per-task`.
    pub cpus: Option<u32>,
    /// `--mem`, as written (`4G`, `512M`, `2048`).
    pub mem: Option<String>,
    /// `--time`: Slurm ends the job after this long (herdctld's own `timeout` is enforced by the shim).
    pub time: Option<Duration>,
    /// `--gres` (`gpu:1`).
    pub gres: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// `--qos`.
    pub qos: Option<String>,
    /// Further `sbatch` arguments, one argv entry each (never those herdctld sets itself).
    pub extra_args: Vec<String>,
    /// The `herdctld` executable on the nodes; `None` = this daemon's own path (the same on a shared
    /// filesystem).
    pub herdctld_bin: Option<PathBuf>,
}
