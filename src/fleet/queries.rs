//! Read-only views of the fleet: status, agents, jobs, schedules, the queue, and the output and log streams.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;

use crate::config::{AgentConfig, ScheduleConfig, ScheduleKind};
use crate::job::{Job, JobId};
use crate::scheduler::ScheduleKey;
use crate::state::{read_output_page, JobFilter, JobStore, OutputPage, PageLimit, PagePlan};

use super::budget;
use super::core::{state_error, Core};
use super::error::FleetError;
use super::info::*;
use super::logs::{LogFilter, LogLevel, LogSubscription};
use super::manager::{find_agent, find_schedule, parse_job_id, FleetManager, JobQuery};
use super::output::JobOutputStream;
use super::schedules::{effective_enabled, Plan};
use super::spec;

/// The most output (bytes of its `.jsonl`) `job` returns inline: well under the socket's 10 MiB response
/// limit, with room for the record and the JSON-RPC envelope.
pub const MAX_INLINE_OUTPUT_BYTES: u64 = 8 * 1024 * 1024;

/// Which of a job's output lines [`FleetManager::job`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputRequest {
    /// The record alone.
    Omit,
    /// Every line, or an error when they are more than one reply carries.
    Whole,
    /// Lines from `from_seq` on, at most `limit` of them and at most one reply's worth.
    Page { from_seq: u64, limit: Option<usize> },
}

impl FleetManager {
    pub async fn status(&self) -> FleetStatus {
        let plan = self.scheduler_plan().await;
        let core = self.core();
        let (total_agents, running_agents) = core.config.as_ref().map_or((0, 0), |c| {
            let running = c
                .agents
                .iter()
                .filter(|a| core.running_count(Some(&a.name)) > 0)
                .count();
            (c.agents.len(), running)
        });
        let mut jobs = JobCounts {
            active: core.running_count(None),
            queued: core.jobs.queue().len(),
            ..JobCounts::default()
        };
        if let Some(store) = core.store.as_ref() {
            let counts = store.counts();
            jobs.completed = counts.completed;
            jobs.failed = counts.failed;
            jobs.cancelled = counts.cancelled;
        }
        let uptime = core.started_at.map(|start| {
            let end = core.stopped_at.unwrap_or_else(Utc::now);
            (end - start).num_milliseconds().max(0) as u64
        });
        let retention = self.options().history.retention(core.config.as_deref());
        let limits = Limits {
            per_agent: self.options().per_agent,
            max_concurrent: core.fleet_limit(self.options()),
            max_queued: self.options().max_queued,
            max_jobs_per_agent: retention.max_per_agent,
            max_jobs_total: retention.max_total,
            max_job_age: retention
                .max_age
                .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
        };
        let schedules = self.schedule_infos(&core, &plan, None);
        let active_schedules = schedules
            .iter()
            .filter(|s| s.enabled && matches!(s.kind, "interval" | "cron"))
            .count();
        let next_trigger = schedules
            .into_iter()
            .filter_map(|s| s.next_trigger)
            .min_by_key(|n| n.at);
        let now = self.options().clock.now();
        let usage = core
            .store
            .as_ref()
            .map(|store| budget::report(store, None, core.host_timezone, now));
        FleetStatus {
            state: core.lifecycle,
            uptime,
            started_at: core.started_at,
            config_path: core
                .config
                .as_ref()
                .map(|c| c.config_path.display().to_string()),
            state_dir: core
                .state_dir
                .as_ref()
                .map(|d| d.root().display().to_string()),
            agents: AgentCounts {
                total: total_agents,
                running: running_agents,
                idle: total_agents - running_agents,
            },
            jobs,
            scheduler: SchedulerStatus {
                running: core.scheduler.is_some(),
                next_trigger,
                active_schedules,
            },
            limits,
            usage,
        }
    }

    pub async fn agents(&self) -> Result<Vec<AgentInfo>, FleetError> {
        let plan = self.scheduler_plan().await;
        let (mut infos, last_jobs) = {
            let core = self.core();
            let config = core.config()?.clone();
            let store = core.store()?;
            let infos: Vec<(AgentInfo, PagePlan)> = config
                .agents
                .iter()
                .map(|agent| self.agent_info(&core, store, &plan, agent))
                .collect();
            infos.into_iter().unzip::<_, _, Vec<_>, Vec<_>>()
        };
        for (info, last_job) in infos.iter_mut().zip(last_jobs) {
            info.last_job = last_job.read().jobs.into_iter().next().map(Box::new);
        }
        Ok(infos)
    }

    pub async fn agent(&self, name: &str) -> Result<AgentInfo, FleetError> {
        let plan = self.scheduler_plan().await;
        let (mut info, last_job) = {
            let core = self.core();
            let config = core.config()?.clone();
            let agent = find_agent(&config, name)?;
            self.agent_info(&core, core.store()?, &plan, agent)
        };
        info.last_job = last_job.read().jobs.into_iter().next().map(Box::new);
        Ok(info)
    }

    /// Next due instant of every schedule that will fire (empty when the scheduler is not running).
    async fn scheduler_plan(&self) -> Plan {
        let handle = self.core().scheduler.clone();
        match handle {
            Some(handle) => handle.plan().await.unwrap_or_default(),
            None => HashMap::new(),
        }
    }

    /// An agent's view, with where its last job's record is: the caller reads it after the lock.
    fn agent_info(
        &self,
        core: &Core,
        store: &JobStore,
        plan: &Plan,
        agent: &AgentConfig,
    ) -> (AgentInfo, PagePlan) {
        let current_jobs: Vec<String> = core
            .jobs
            .iter()
            .filter(|a| a.agent_name() == agent.name && a.holds_slot())
            .map(|a| a.id().to_string())
            .collect();
        let last_job = store
            .page(&JobFilter {
                agent: Some(agent.name.clone()),
                limit: 1,
                ..JobFilter::default()
            })
            .known(|id| core.jobs.current(id));
        let now = self.options().clock.now();
        let timezone = budget::agent_timezone(agent, core.host_timezone);
        let info = AgentInfo {
            name: agent.name.clone(),
            local_name: agent.local_name.clone(),
            fleet_path: agent.fleet_path.clone(),
            description: agent.description.clone(),
            model: agent.model.clone(),
            runtime: spec::runtime_name(agent),
            working_directory: agent.working_directory.display().to_string(),
            state: if current_jobs.is_empty() {
                "idle"
            } else {
                "running"
            },
            concurrency: agent.concurrency.unwrap_or(self.options().per_agent),
            current_jobs,
            queued_jobs: core.jobs.queue().count_for(&agent.name),
            last_job: None,
            last_session_id: core.sessions.current(&agent.name).map(str::to_owned),
            schedules: self.schedule_infos(core, plan, Some(&agent.name)),
            usage: budget::report(store, Some(&agent.name), timezone, now),
            budget: budget::Spend::of(store, agent, core.host_timezone, now).map(|s| s.info()),
        };
        (info, last_job)
    }

    pub fn jobs(&self, query: &JobQuery) -> Result<JobList, FleetError> {
        // Located under the lock, read after it; the jobs the table holds are taken from it.
        let plan = {
            let core = self.core();
            let filter = JobFilter {
                agent: query
                    .agent
                    .as_deref()
                    .map(|name| history_agent_name(&core, name))
                    .transpose()?,
                status: query.status,
                since: query.since,
                until: query.until,
                limit: query.limit.unwrap_or(50),
                offset: query.offset.unwrap_or(0),
            };
            core.store()?
                .page(&filter)
                .known(|id| core.jobs.current(id))
        };
        let page = plan.read();
        for unreadable in &page.unreadable {
            tracing::warn!("job record unreadable, skipped in the listing: {unreadable}");
        }
        Ok(JobList {
            jobs: page.jobs,
            total: page.total,
        })
    }

    /// A job record, with its persisted output lines as `output` asks. A reply stays under the transport's
    /// response limit: a page holds at most [`MAX_INLINE_OUTPUT_BYTES`] of lines (as stored) and says where
    /// the next begins; the whole output, when larger, is refused with [`FleetError::OutputTooLarge`], which
    /// names the paging and the stream that read any size.
    pub fn job(
        &self,
        id: &str,
        output: OutputRequest,
    ) -> Result<(Job, Option<OutputPage>), FleetError> {
        let job_id = parse_job_id(id)?;
        let job = self.record(&job_id)?;
        let (from_seq, lines) = match output {
            OutputRequest::Omit => return Ok((job, None)),
            OutputRequest::Whole => (0, usize::MAX),
            OutputRequest::Page { from_seq, limit } => (from_seq, limit.unwrap_or(usize::MAX)),
        };
        let path = self.core().store()?.output_path(&job_id);
        if output == OutputRequest::Whole {
            let output_bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
            if output_bytes > MAX_INLINE_OUTPUT_BYTES {
                return Err(FleetError::OutputTooLarge {
                    job_id: job_id.to_string(),
                    output_bytes,
                    limit: MAX_INLINE_OUTPUT_BYTES,
                });
            }
        }
        let limit = PageLimit {
            lines,
            bytes: MAX_INLINE_OUTPUT_BYTES,
        };
        let page = read_output_page(&path, from_seq, limit).map_err(|e| state_error(&path, e))?;
        Ok((job, Some(page)))
    }

    /// A job's record: one the job table holds (active, or ending) from memory, any other's read from its
    /// file after the lock is released.
    pub(super) fn record(&self, id: &JobId) -> Result<Job, FleetError> {
        let not_found = || FleetError::JobNotFound {
            job_id: id.to_string(),
        };
        let path = {
            let core = self.core();
            if let Some(job) = core.jobs.current(id) {
                return Ok(job);
            }
            let store = core.store()?;
            if !store.contains(id) {
                return Err(not_found());
            }
            store.record_path(id)
        };
        JobStore::read_record(&path)
            .map_err(|e| state_error(&path, e))?
            .ok_or_else(not_found)
    }

    pub async fn schedules(&self) -> Result<Vec<ScheduleInfo>, FleetError> {
        let plan = self.scheduler_plan().await;
        let core = self.core();
        core.config()?;
        Ok(self.schedule_infos(&core, &plan, None))
    }

    pub async fn schedule(&self, agent: &str, schedule: &str) -> Result<ScheduleInfo, FleetError> {
        let plan = self.scheduler_plan().await;
        let core = self.core();
        let config = core.config()?.clone();
        let agent_config = find_agent(&config, agent)?;
        let schedule_config = find_schedule(agent_config, schedule)?;
        Ok(self.schedule_info(&core, &plan, agent_config, schedule_config))
    }

    fn schedule_infos(&self, core: &Core, plan: &Plan, agent: Option<&str>) -> Vec<ScheduleInfo> {
        let Some(config) = core.config.as_ref() else {
            return Vec::new();
        };
        config
            .agents
            .iter()
            .filter(|a| agent.is_none_or(|name| a.name == name))
            .flat_map(|a| a.schedules.iter().map(move |s| (a, s)))
            .map(|(a, s)| self.schedule_info(core, plan, a, s))
            .collect()
    }

    fn schedule_info(
        &self,
        core: &Core,
        plan: &Plan,
        agent: &AgentConfig,
        schedule: &ScheduleConfig,
    ) -> ScheduleInfo {
        let persisted = core.persisted.schedule(&agent.name, &schedule.name);
        let enabled = effective_enabled(schedule, persisted);
        let key = ScheduleKey::new(&agent.name, &schedule.name);
        let next_trigger = if !enabled {
            None
        } else if core.scheduler.is_some() {
            plan.get(&key).copied()
        } else {
            // Not running: what the scheduler would plan on start (without jitter).
            spec::timing_of(agent, schedule).and_then(|timing| {
                crate::scheduler::first_due(
                    &timing,
                    persisted.and_then(|p| p.last_run_at),
                    self.options().clock.now(),
                    &mut crate::scheduler::SeededJitter::new(0),
                )
                .map(|due| due.occurrence)
            })
        };
        let (kind, interval, cron) = match &schedule.kind {
            ScheduleKind::Interval(d) => {
                ("interval", Some(crate::timespec::format_duration(*d)), None)
            }
            ScheduleKind::Cron(expr) => ("cron", None, Some(expr.to_string())),
            ScheduleKind::Webhook => ("webhook", None, None),
            ScheduleKind::Chat => ("chat", None, None),
        };
        ScheduleInfo {
            agent_name: agent.name.clone(),
            name: schedule.name.clone(),
            kind,
            enabled,
            interval,
            cron,
            timezone: schedule.timezone.map(|tz| tz.name().to_string()),
            next_trigger: next_trigger.map(|at| NextTrigger {
                agent_name: agent.name.clone(),
                schedule_name: schedule.name.clone(),
                at,
            }),
            last_run_at: persisted.and_then(|p| p.last_run_at),
            last_status: persisted.and_then(|p| p.last_status),
            last_error: persisted.and_then(|p| p.last_error.clone()),
            runs: persisted.map_or(0, |p| p.runs),
            skipped: persisted.map_or(0, |p| p.skipped),
            failed: persisted.map_or(0, |p| p.failed),
            running_jobs: core
                .jobs
                .iter()
                .filter(|a| {
                    a.agent_name() == agent.name
                        && a.schedule_name() == Some(&schedule.name)
                        && a.holds_slot()
                })
                .count(),
        }
    }

    pub fn queue(&self) -> Result<QueueInfo, FleetError> {
        let core = self.core();
        let config = core.config()?.clone();
        let queued = core
            .jobs
            .queue()
            .iter()
            .map(|q| QueuedJobInfo {
                job_id: q.job_id.to_string(),
                agent_name: q.agent.clone(),
                priority: q.priority,
                position: core.jobs.queue().position(&q.job_id).unwrap_or(0),
            })
            .collect();
        let agents = config
            .agents
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    AgentQueueInfo {
                        running: core.running_count(Some(&a.name)),
                        queued: core.jobs.queue().count_for(&a.name),
                        limit: a.concurrency.unwrap_or(self.options().per_agent),
                    },
                )
            })
            .collect();
        Ok(QueueInfo {
            queued,
            agents,
            fleet: FleetQueueInfo {
                running: core.running_count(None),
                queued: core.jobs.queue().len(),
                limit: core.fleet_limit(self.options()),
                max_queued: self.options().max_queued,
            },
        })
    }

    /// A job's output from `from_seq`: history, then live lines, then `eof` with the final status.
    pub fn stream_job_output(
        &self,
        id: &str,
        from_seq: u64,
    ) -> Result<JobOutputStream, FleetError> {
        let job_id = parse_job_id(id)?;
        let core = self.core();
        let path = core.jobs_dir()?.join(format!("{job_id}.jsonl"));
        let live = match core.jobs.get(&job_id) {
            Some(active) => Some(active.hub.subscribe()),
            None if core.store()?.contains(&job_id) => None,
            None => {
                return Err(FleetError::JobNotFound {
                    job_id: id.to_string(),
                })
            }
        };
        // A reader must not keep the fleet (and its state directory lock) alive.
        let shared = Arc::downgrade(&self.shared);
        let status = Box::new(move || {
            let manager = FleetManager {
                shared: shared.upgrade()?,
            };
            manager
                .job(job_id.as_str(), OutputRequest::Omit)
                .ok()
                .map(|(j, _)| j.status)
        });
        Ok(JobOutputStream::new(path, from_seq, live, status))
    }

    /// Fleet log entries: the newest `tail` matching ones, then live.
    pub fn stream_logs(
        &self,
        mut filter: LogFilter,
        tail: usize,
    ) -> Result<LogSubscription, FleetError> {
        if let Some(name) = filter.agent_name {
            filter.agent_name = Some(history_agent_name(&self.core(), &name)?);
        }
        Ok(self.log_bus().subscribe(filter, tail))
    }

    /// Log entries of one agent (which must exist).
    pub fn stream_agent_logs(
        &self,
        agent: &str,
        min_level: Option<LogLevel>,
        tail: usize,
    ) -> Result<LogSubscription, FleetError> {
        let name = {
            let core = self.core();
            let config = core.config()?.clone();
            find_agent(&config, agent)?.name.clone()
        };
        Ok(self.log_bus().subscribe(
            LogFilter {
                min_level,
                agent_name: Some(name),
                job_id: None,
            },
            tail,
        ))
    }

    /// Waits until the job is final (finished, failed or cancelled) and returns its record. The wait
    /// begins when this is called, not when the future is first polled: a job that ends (and is pruned)
    /// before the caller gets to await still answers with its final record.
    pub fn wait_for_job(
        &self,
        id: &str,
    ) -> impl std::future::Future<Output = Result<Job, FleetError>> + Send + 'static {
        let job_id = parse_job_id(id);
        let finished = job_id
            .as_ref()
            .ok()
            .and_then(|job_id| self.core().jobs.waiter(job_id));
        let manager = self.clone();
        async move {
            let job_id = job_id?;
            if let Some(mut finished) = finished {
                // The final record from the job itself: history pruning may already have deleted its file.
                if let Ok(job) = finished.wait_for(Option::is_some).await {
                    if let Some(job) = job.clone() {
                        return Ok(job);
                    }
                }
            }
            manager
                .job(job_id.as_str(), OutputRequest::Omit)
                .map(|(job, _)| job)
        }
    }
}

/// The agent `name` means in a query of history (`getJobs`, `streamLogs`): a configured agent's qualified
/// name, resolved as every method resolves it, or else `name` itself when it is exactly the name of an
/// agent no longer configured that still has job records (a removed agent's history stays listable).
fn history_agent_name(core: &Core, name: &str) -> Result<String, FleetError> {
    match find_agent(core.config()?, name) {
        Ok(agent) => Ok(agent.name.clone()),
        Err(FleetError::AgentNotFound { .. }) if core.store()?.has_records_of(name) => {
            Ok(name.to_owned())
        }
        Err(e) => Err(e),
    }
}
