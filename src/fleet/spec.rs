//! What a job runs: an agent's configuration (and the fleet's `.env`) as the runner's spec, and when its
//! schedules fire, for the scheduler.

use std::path::Path;

use serde_json::Value;

use crate::config::{
    AgentConfig, Catchup, DockerConfig, DockerNetwork, DotEnv, RuntimeConfig, ScheduleConfig,
    ScheduleKind, WorkspaceMode,
};
use crate::job::Job;
use crate::runner::{self, BindMount, ContainerNetwork, ContainerSpec, PortBinding, RunSpec};
use crate::scheduler::{self, Timing, TimingKind};

use super::job_table::RunContext;

/// The runner's spec for one job of `agent`. The fleet's `.env` reaches the job's environment as herdctl's
/// dotenv puts it in the process environment Claude inherits: under every variable already set (it holds
/// only those the daemon's environment lacks) and under the agent's own `env` (and, in a container, its
/// `docker.env`). An agent with `docker.enabled` runs in a container owned by `state_dir`.
pub(super) fn run_spec(
    agent: &AgentConfig,
    job: &Job,
    context: &RunContext,
    dotenv: Option<&DotEnv>,
    state_dir: &Path,
) -> RunSpec {
    let docker = agent.container();
    let runtime = match &agent.runtime {
        RuntimeConfig::Claude { bin, .. } => {
            runner::RuntimeSpec::Claude(Box::new(runner::ClaudeSpec {
                bin: bin.clone(),
                model: agent.model.clone().or_else(|| agent.session.model.clone()),
                max_turns: agent.max_turns.or(agent.session.max_turns),
                permission_mode: agent.permission_mode.map(|m| m.as_str().to_string()),
                allowed_tools: agent.allowed_tools.clone(),
                denied_tools: agent.denied_tools.clone(),
                tools: agent.tools.clone(),
                system_prompt: agent.system_prompt.clone(),
                append_system_prompt: None,
                mcp_servers: agent.mcp_servers.clone(),
                setting_sources: agent.setting_sources.clone(),
                resume_session: context.resume_session.clone(),
                fork_session: context.fork_session,
            }))
        }
        RuntimeConfig::Command { command, env } => runner::RuntimeSpec::Command {
            argv: command.clone(),
            env: env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        },
    };
    RunSpec {
        job_id: job.id.to_string(),
        agent: agent.name.clone(),
        schedule: job.schedule.clone(),
        prompt: job.prompt.clone().unwrap_or_default(),
        runtime,
        cwd: agent.working_directory.clone(),
        env: dotenv
            .map(|dotenv| {
                dotenv
                    .0
                    .iter()
                    .filter(|(key, _)| match &agent.runtime {
                        RuntimeConfig::Command { env, .. } => !env.contains_key(*key),
                        RuntimeConfig::Claude { .. } => true,
                    })
                    .filter(|(key, _)| docker.is_none_or(|docker| !docker.env.contains_key(*key)))
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        timeout: context
            .schedule
            .as_ref()
            .and_then(|s| s.timeout)
            .or(agent.timeout),
        stop_grace: context
            .schedule
            .as_ref()
            .map_or(agent.stop_grace, |s| s.stop_grace),
        limits: runner::OutputLimits::default(),
        container: docker.map(|docker| {
            Box::new(container_spec(
                agent,
                docker,
                &agent.working_directory,
                state_dir,
            ))
        }),
    }
}

/// The empty directory mounted over the state directory where it would show inside a container.
const EMPTY_DIRECTORY: &str = "container-mask";

/// Where the state directory would show inside a container: under the workspace, or under a volume. Each
/// gets an empty read-only directory over it, so that a job never sees the records and output of other jobs,
/// nor the daemon's socket when it lies there (whose owner check a container running as the daemon's own
/// uid would pass: the job could then drive the fleet, host agents included).
fn state_dir_in_container(state_dir: &Path, cwd: &Path, mounts: &[BindMount]) -> Vec<String> {
    let places = std::iter::once((cwd, runner::WORKSPACE)).chain(
        mounts
            .iter()
            .map(|m| (m.host.as_path(), m.container.as_str())),
    );
    places
        .filter_map(|(host, inside)| {
            let below = state_dir.strip_prefix(host).ok()?;
            Some(Path::new(inside).join(below).display().to_string())
        })
        .collect()
}

/// Where Claude keeps the transcripts of a container's sessions: herdctl mounts its state directory's
/// `docker-sessions` there, so that a job in a new container can resume the session of an earlier one.
const CLAUDE_SESSIONS_IN_CONTAINER: &str = "/home/claude/.claude/projects/-workspace";
/// The home of herdctl's Claude image's user, which `CLAUDE_SESSIONS_IN_CONTAINER` is under.
const CLAUDE_HOME_IN_CONTAINER: &str = "/home/claude";
/// herdctl's image when `docker.image` is not set.
pub(super) const DEFAULT_IMAGE: &str = "anthropic/claude-code:latest";

/// The container a job of `agent` runs in, from its `docker` settings (formats checked at load). `cwd` is
/// mounted as the workspace.
fn container_spec(
    agent: &AgentConfig,
    docker: &DockerConfig,
    cwd: &Path,
    state_dir: &Path,
) -> ContainerSpec {
    let claude = matches!(agent.runtime, RuntimeConfig::Claude { .. });
    let mut mounts: Vec<BindMount> = docker
        .volumes
        .iter()
        .map(|volume| {
            let mut parts = volume.splitn(3, ':');
            let host = parts.next().unwrap_or_default();
            let container = parts.next().unwrap_or_default();
            BindMount {
                host: host.into(),
                container: container.to_owned(),
                read_only: parts.next() == Some("ro"),
                create: false,
            }
        })
        .collect();
    let mut env = Vec::new();
    if claude {
        mounts.push(BindMount {
            host: state_dir.join("docker-sessions"),
            container: CLAUDE_SESSIONS_IN_CONTAINER.to_owned(),
            read_only: false,
            create: true,
        });
        env.push(("HOME".to_owned(), CLAUDE_HOME_IN_CONTAINER.to_owned()));
    }
    env.extend(docker.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let ports = docker
        .ports
        .iter()
        .filter_map(|port| match port.split_once(':') {
            Some((host, container)) => Some(PortBinding {
                host: Some(host.parse().ok()?),
                container: container.parse().ok()?,
            }),
            None => Some(PortBinding {
                host: None,
                container: port.parse().ok()?,
            }),
        })
        .collect();
    // An empty directory of the daemon's own over each place (a tmpfs would do, but podman copies what it
    // covers into it).
    let masks: Vec<BindMount> = state_dir_in_container(state_dir, cwd, &mounts)
        .into_iter()
        .map(|inside| BindMount {
            host: state_dir.join(EMPTY_DIRECTORY),
            container: inside,
            read_only: true,
            create: true,
        })
        .collect();
    mounts.extend(masks);
    ContainerSpec {
        image: docker
            .image
            .clone()
            .unwrap_or_else(|| DEFAULT_IMAGE.to_owned()),
        user: docker.user.clone(),
        network: match docker.network {
            DockerNetwork::None => ContainerNetwork::None,
            DockerNetwork::Bridge => ContainerNetwork::Bridge,
            DockerNetwork::Host => ContainerNetwork::Host,
        },
        memory_bytes: docker.memory_bytes,
        cpu_shares: docker.cpu_shares.map(i64::from),
        cpu_period: docker.cpu_period.map(i64::from),
        cpu_quota: docker.cpu_quota.map(i64::from),
        pids_limit: docker.pids_limit.map(i64::from),
        workspace_read_only: docker.workspace_mode == WorkspaceMode::ReadOnly,
        mounts,
        tmpfs: docker
            .tmpfs
            .iter()
            .map(|mount| match mount.split_once(':') {
                Some((path, options)) => (path.to_owned(), options.to_owned()),
                None => (mount.clone(), String::new()),
            })
            .collect(),
        ports,
        env,
        labels: docker.labels.clone(),
        host_config: docker
            .host_config
            .as_ref()
            .and_then(Value::as_object)
            .cloned(),
        owner: state_dir.display().to_string(),
    }
}

/// Bytes of output a job keeps (`max_output_mb`) when its agent does not say.
pub(super) const DEFAULT_MAX_OUTPUT_BYTES: u64 = 64 * 1024 * 1024;

/// Bytes of output a job of `agent` keeps in its file: head and tail, the middle dropped beyond.
pub(super) fn stored_output_cap(agent: &AgentConfig) -> u64 {
    agent.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES)
}

/// When a schedule fires, for the scheduler; `None` for types herdctld does not fire (webhook, chat).
pub(super) fn timing_of(_agent: &AgentConfig, schedule: &ScheduleConfig) -> Option<Timing> {
    let kind = match &schedule.kind {
        ScheduleKind::Interval(every) => TimingKind::Interval(*every),
        ScheduleKind::Cron(expr) => TimingKind::Cron {
            expr: expr.clone(),
            tz: schedule.timezone.unwrap_or_else(scheduler::host_timezone),
        },
        ScheduleKind::Webhook | ScheduleKind::Chat => return None,
    };
    Some(Timing {
        kind,
        jitter: schedule.jitter,
        catchup: match schedule.catchup {
            Catchup::Latest => scheduler::Catchup::Latest,
            Catchup::None => scheduler::Catchup::None,
        },
    })
}

pub(super) fn runtime_name(agent: &AgentConfig) -> &'static str {
    match agent.runtime {
        RuntimeConfig::Claude { .. } => "claude",
        RuntimeConfig::Command { .. } => "command",
    }
}

/// The part of a prompt that hands explicitly given work items to the agent.
pub(super) fn work_items_section(items: &[Value]) -> String {
    let mut section = String::from("\n\n## Work items\n");
    for item in items {
        let text = match item {
            Value::String(s) => s.clone(),
            other => serde_json::to_string_pretty(other).unwrap_or_default(),
        };
        section.push_str("\n- ");
        section.push_str(&text.replace('\n', "\n  "));
    }
    section
}
