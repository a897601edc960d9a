//! What a job runs: an agent's configuration (and the fleet's `.env`) as the runner's spec, and when its
//! schedules fire, for the scheduler.

use serde_json::Value;

use crate::config::{AgentConfig, Catchup, DotEnv, RuntimeConfig, ScheduleConfig, ScheduleKind};
use crate::job::Job;
use crate::runner::{self, RunSpec};
use crate::scheduler::{self, Timing, TimingKind};

use super::job_table::RunContext;

/// The runner's spec for one job of `agent`. The fleet's `.env` reaches the job's environment as herdctl's
/// dotenv puts it in the process environment Claude inherits: under every variable already set (it holds
/// only those the daemon's environment lacks) and under the agent's own `env`.
pub(super) fn run_spec(
    agent: &AgentConfig,
    job: &Job,
    context: &RunContext,
    dotenv: Option<&DotEnv>,
) -> RunSpec {
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
        container: None,
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
