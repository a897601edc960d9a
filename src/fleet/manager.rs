//! `FleetManager`: lifecycle, queries and actions. Job execution details live in `run`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::config::{self, AgentConfig, FleetConfig, ScheduleConfig, ScheduleKind};
use crate::job::{ExitReason, Job, JobError, JobId, JobStatus, TerminationType, TriggerType};
use crate::scheduler::{Fire, ScheduleKey, Scheduler, SchedulerHandle};
use crate::state::{DirSync, FleetState as PersistedState, JobFilter, JobStore, StateDir};

use super::budget;
use super::error::{FleetError, FleetState, ValidationIssue};
use super::events::{EventBus, EventSubscription, FleetEvent, SkipReason};
use super::followup;
use super::info::*;
use super::logs::{LogBus, LogFilter, LogLevel, LogSubscription};
use super::options::FleetManagerOptions;
use super::output::{JobOutputStream, OutputHub};
use super::queue::JobQueue;
use super::run::{self, RunContext};
use super::sessions::{SessionBook, SessionWrite};
use super::state_writer::StateWriter;

/// The prompt used when neither the call, the schedule nor the agent gives one (herdctl's default).
const FALLBACK_PROMPT: &str = "Execute your configured task";

#[derive(Debug, Clone, Default)]
pub struct TriggerOptions {
    pub schedule: Option<String>,
    pub prompt: Option<String>,
    pub work_items: Option<Vec<Value>>,
    /// 1 (highest) … 10 (lowest); default 5.
    pub priority: Option<u8>,
    /// Start a new Claude session instead of continuing the agent's stored one (herdctl's `resume:
    /// null`). Without it a manual run resumes the agent's session while it is valid, as herdctl does.
    pub fresh_session: bool,
    /// Run even though the agent's jobs already cost its daily budget today (otherwise refused with
    /// [`FleetError::BudgetExceeded`]).
    pub over_budget: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ForkOptions {
    pub prompt: Option<String>,
    pub schedule: Option<String>,
    /// As [`TriggerOptions::over_budget`]: the fork is a new run of the agent.
    pub over_budget: bool,
}

#[derive(Debug, Clone)]
pub struct StopOptions {
    pub wait_for_jobs: bool,
    pub timeout: Duration,
    pub cancel_on_timeout: bool,
}

impl Default for StopOptions {
    fn default() -> Self {
        StopOptions {
            wait_for_jobs: true,
            timeout: Duration::from_secs(30),
            cancel_on_timeout: true,
        }
    }
}

/// Filter of `getJobs`.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    pub agent: Option<String>,
    pub status: Option<JobStatus>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: Option<usize>,
    pub offset: Option<usize>,
}

/// A cheap handle; clones share one fleet.
#[derive(Clone)]
pub struct FleetManager {
    pub(super) shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) options: FleetManagerOptions,
    pub(super) events: EventBus,
    pub(super) core: Mutex<Core>,
    /// Signalled whenever a job finishes, so `stop` can wait without polling.
    pub(super) jobs_changed: Arc<Notify>,
}

/// Everything mutable about the fleet, behind one lock.
pub(super) struct Core {
    pub(super) lifecycle: FleetState,
    pub(super) config: Option<Arc<FleetConfig>>,
    /// The host's time zone, resolved outside the lock at initialize and reload: the day of budgets and
    /// totals of agents without a `timezone`, and of the fleet's totals.
    pub(super) host_timezone: chrono_tz::Tz,
    /// Writes `state.yaml` and session pointers outside the lock; set with `state_dir`, and declared
    /// before it so that what it has pending is written before the directory's lock is released.
    pub(super) writer: Option<StateWriter>,
    pub(super) state_dir: Option<StateDir>,
    pub(super) store: Option<JobStore>,
    pub(super) persisted: PersistedState,
    /// The agents' session pointers (`sessions/`).
    pub(super) sessions: SessionBook,
    pub(super) queue: JobQueue,
    /// Queued and running jobs.
    pub(super) active: HashMap<JobId, ActiveJob>,
    /// Ids of jobs being created whose records are not committed yet.
    pub(super) reserved_ids: HashSet<JobId>,
    /// Running jobs per agent, kept in step with `active` so limit checks cost O(1) however long the
    /// queue is.
    pub(super) running: HashMap<String, usize>,
    pub(super) started_at: Option<DateTime<Utc>>,
    pub(super) stopped_at: Option<DateTime<Utc>>,
    pub(super) scheduler: Option<SchedulerHandle>,
    /// The work source of every schedule that has one, built at load.
    pub(super) work_sources: HashMap<ScheduleKey, Arc<dyn crate::work_sources::WorkSource>>,
    pub(super) fire_task: Option<JoinHandle<()>>,
    /// The queue is being dispatched: a job that ends as it starts (no container engine, agent gone)
    /// frees its slot for that loop instead of dispatching again inside it, one stack frame per job.
    pub(super) dispatching: bool,
}

/// A job that has not finished yet.
pub(super) struct ActiveJob {
    pub(super) job: Job,
    /// The configuration the job runs with; fixed when it starts (reload does not change a running job).
    pub(super) agent: Option<Arc<AgentConfig>>,
    pub(super) context: RunContext,
    pub(super) hub: OutputHub,
    pub(super) canceller: Option<crate::runner::Canceller>,
    /// A cancel was asked for: the job is not run again (a resumed session that was gone).
    pub(super) cancel_requested: bool,
    /// The final record, once there is one; `cancelJob` and `wait_for_job` wait on it so they reply after
    /// the effect.
    pub(super) finished: watch::Sender<Option<Job>>,
}

impl Core {
    fn store(&self) -> Result<&JobStore, FleetError> {
        self.store.as_ref().ok_or_else(not_initialized)
    }

    fn config(&self) -> Result<&Arc<FleetConfig>, FleetError> {
        self.config.as_ref().ok_or_else(not_initialized)
    }

    pub(super) fn running_count(&self, agent: Option<&str>) -> usize {
        match agent {
            Some(name) => self.running.get(name).copied().unwrap_or(0),
            None => self.running.values().sum(),
        }
    }

    /// Counts a job of `agent` that has just started running.
    pub(super) fn count_started(&mut self, agent: &str) {
        *self.running.entry(agent.to_string()).or_default() += 1;
    }

    /// Uncounts a running job of `agent` that has ended.
    pub(super) fn count_ended(&mut self, agent: &str) {
        if let Some(count) = self.running.get_mut(agent) {
            *count -= 1;
            if *count == 0 {
                self.running.remove(agent);
            }
        }
    }

    pub(super) fn fleet_limit(&self, options: &FleetManagerOptions) -> Option<u32> {
        options
            .concurrency
            .or_else(|| self.config.as_ref().and_then(|c| c.max_concurrent))
    }

    /// Jobs of `agent` allowed to run at once: its configuration's, else the fleet's per-agent default.
    pub(super) fn agent_limit(&self, options: &FleetManagerOptions, agent: &str) -> u32 {
        self.config
            .as_ref()
            .and_then(|c| c.agent(agent))
            .and_then(|a| a.concurrency)
            .unwrap_or(options.per_agent)
    }

    /// Whether a new job of `agent` may start now under the fleet-wide limit and, unless `when_full` says
    /// to go beyond it, the agent's own.
    pub(super) fn may_start(
        &self,
        options: &FleetManagerOptions,
        agent: &str,
        when_full: run::WhenFull,
    ) -> bool {
        let agent_ok = when_full == run::WhenFull::SkipAtFleetLimit
            || self.running_count(Some(agent)) < self.agent_limit(options, agent) as usize;
        let fleet_ok = self
            .fleet_limit(options)
            .is_none_or(|limit| self.running_count(None) < limit as usize);
        agent_ok && fleet_ok
    }

    /// The group commit of the jobs directory, for syncing committed records outside the lock.
    pub(super) fn jobs_dir_sync(&self) -> Option<Arc<DirSync>> {
        self.store.as_ref().map(JobStore::dir_sync)
    }

    /// A new job id used by no stored, active or reserved job (the suffix space is 36^6 a day, so at
    /// thousands of jobs a day two draws do collide now and then).
    pub(super) fn new_job_id(&self, now: DateTime<Utc>) -> JobId {
        first_free_id(
            || JobId::generate(now),
            |id| {
                self.store.as_ref().is_some_and(|store| store.contains(id))
                    || self.active.contains_key(id)
                    || self.reserved_ids.contains(id)
            },
        )
    }

    /// [`new_job_id`](Self::new_job_id) for a job whose record is written outside the lock: the id stays
    /// taken until [`release_job_id`](Self::release_job_id), which admission calls.
    pub(super) fn reserve_job_id(&mut self, now: DateTime<Utc>) -> JobId {
        let id = self.new_job_id(now);
        self.reserved_ids.insert(id.clone());
        id
    }

    pub(super) fn release_job_id(&mut self, id: &JobId) {
        self.reserved_ids.remove(id);
    }

    pub(super) fn jobs_dir(&self) -> Result<PathBuf, FleetError> {
        Ok(self
            .state_dir
            .as_ref()
            .ok_or_else(not_initialized)?
            .jobs_dir()
            .to_path_buf())
    }

    /// Queues a change to the session pointers' files.
    pub(super) fn save_session(&self, write: Option<SessionWrite>) {
        if let (Some(writer), Some(write)) = (self.writer.as_ref(), write) {
            writer.session(write);
        }
    }

    /// Queues a write of `state.yaml` as it is now.
    pub(super) fn save_persisted(&self) {
        if let Some(writer) = self.writer.as_ref() {
            writer.fleet_state(&self.persisted);
        }
    }
}

/// The first id `draw` gives that is not `taken`: a collision is drawn again, never overwritten.
fn first_free_id(mut draw: impl FnMut() -> JobId, taken: impl Fn(&JobId) -> bool) -> JobId {
    loop {
        let id = draw();
        if !taken(&id) {
            return id;
        }
    }
}

fn not_initialized() -> FleetError {
    FleetError::invalid_state(
        "query",
        FleetState::Uninitialized,
        &[
            FleetState::Initialized,
            FleetState::Running,
            FleetState::Stopped,
        ],
    )
}

/// What retention did to the history at initialization.
struct Retained {
    pruned: usize,
    herdctl_kept: usize,
}

impl Retained {
    fn log(&self) {
        if self.pruned > 0 {
            tracing::info!(
                removed = self.pruned,
                "pruned job history beyond the retention limits"
            );
        }
        if self.herdctl_kept > 0 {
            tracing::info!(
                kept = self.herdctl_kept,
                "keeping {} job records herdctl wrote beyond the default history limit of {} per agent: \
                 herdctl never prunes its history, so herdctld's default does not either; to prune them, \
                 set defaults.max_jobs_per_agent in the fleet file or --max-jobs-per-agent",
                self.herdctl_kept,
                super::options::DEFAULT_MAX_JOBS_PER_AGENT
            );
        }
    }
}

pub(super) fn report_state_error(events: &EventBus, message: &str) {
    tracing::error!("{message}");
    events.emit(FleetEvent::Error {
        message: message.to_string(),
        source: "state".into(),
    });
}

fn state_error(path: &std::path::Path, error: impl std::fmt::Display) -> FleetError {
    FleetError::State {
        path: path.display().to_string(),
        message: error.to_string(),
    }
}

fn config_error(error: config::ConfigError) -> FleetError {
    match error {
        config::ConfigError::Invalid {
            config_path,
            errors,
        } => FleetError::Configuration {
            config_path: config_path.display().to_string(),
            validation_errors: errors
                .into_iter()
                .map(|e| ValidationIssue {
                    file: e.file.display().to_string(),
                    path: e.path,
                    message: e.message,
                })
                .collect(),
        },
        not_found @ config::ConfigError::NotFound { .. } => FleetError::Configuration {
            config_path: String::new(),
            validation_errors: vec![ValidationIssue {
                file: String::new(),
                path: String::new(),
                message: not_found.to_string(),
            }],
        },
    }
}

impl FleetManager {
    /// Creates a manager; does no I/O (`initialize` loads the configuration and opens the state).
    pub fn new(options: FleetManagerOptions) -> FleetManager {
        let events = EventBus::new(options.event_buffer);
        FleetManager {
            shared: Arc::new(Shared {
                options,
                events,
                core: Mutex::new(Core {
                    lifecycle: FleetState::Uninitialized,
                    config: None,
                    // Replaced at initialize, before anything is counted in it.
                    host_timezone: chrono_tz::Tz::UTC,
                    writer: None,
                    state_dir: None,
                    store: None,
                    persisted: PersistedState::default(),
                    sessions: SessionBook::default(),
                    queue: JobQueue::default(),
                    active: HashMap::new(),
                    reserved_ids: HashSet::new(),
                    running: HashMap::new(),
                    started_at: None,
                    stopped_at: None,
                    scheduler: None,
                    work_sources: HashMap::new(),
                    fire_task: None,
                    dispatching: false,
                }),
                jobs_changed: Arc::new(Notify::new()),
            }),
        }
    }

    pub(super) fn core(&self) -> MutexGuard<'_, Core> {
        // Every critical section leaves Core consistent before any call that could panic, so a poisoned
        // lock (a bug elsewhere) must not take the whole fleet down with it.
        self.shared
            .core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn options(&self) -> &FleetManagerOptions {
        &self.shared.options
    }

    pub(super) fn events(&self) -> &EventBus {
        &self.shared.events
    }

    pub fn subscribe_events(&self, types: Option<Vec<String>>) -> EventSubscription {
        self.shared.events.subscribe(types)
    }

    pub fn log_bus(&self) -> &LogBus {
        &self.shared.options.logs
    }

    pub fn state(&self) -> FleetState {
        self.core().lifecycle
    }

    /// The loaded configuration, if initialized.
    pub fn config(&self) -> Option<Arc<FleetConfig>> {
        self.core().config.clone()
    }

    fn require(
        &self,
        core: &Core,
        operation: &str,
        allowed: &[FleetState],
    ) -> Result<(), FleetError> {
        if allowed.contains(&core.lifecycle) {
            Ok(())
        } else {
            Err(FleetError::invalid_state(
                operation,
                core.lifecycle,
                allowed,
            ))
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Lifecycle
    // ---------------------------------------------------------------------------------------------

    /// Loads and validates the configuration, opens (and locks) the state directory, and recovers jobs a
    /// previous daemon left unfinished.
    pub async fn initialize(&self) -> Result<(), FleetError> {
        {
            let core = self.core();
            self.require(&core, "initialize", &[FleetState::Uninitialized])?;
        }
        let requested = self.options().config_path.clone();
        let state_override = self.options().state_dir.clone();
        let history = self.options().history.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let config = config::load(requested.as_deref()).map_err(config_error)?;
            let host_timezone = crate::scheduler::host_timezone();
            // Before the state directory is touched: a configuration refused must not have pruned.
            let work_sources = followup::work_sources(&config).map_err(|validation_errors| {
                FleetError::Configuration {
                    config_path: config.config_path.display().to_string(),
                    validation_errors,
                }
            })?;
            let root = state_override.unwrap_or_else(|| config.root_dir.join(".herdctl"));
            let state_dir = StateDir::open(&root).map_err(|e| state_error(&root, e))?;
            let (mut store, issues) =
                JobStore::open(state_dir.jobs_dir()).map_err(|e| state_error(&root, e))?;
            // Also at start, not only when a job ends: a lowered limit applies at once, and retention by
            // age must not wait for the next job of an idle fleet. Nothing runs yet, so nothing is active.
            let retention = history.retention(Some(&config));
            let pruning = store.plan_prune(&retention, Utc::now(), &|_| false);
            let pruned_at_start = pruning.doomed.len();
            let deleted = store.forget(&pruning.doomed).delete();
            let state_file = state_dir.state_file();
            let (persisted, corrupt) =
                PersistedState::load(&state_file).map_err(|e| state_error(&state_file, e))?;
            let loaded_sessions = state_dir
                .sessions()
                .load_all()
                .map_err(|e| state_error(state_dir.sessions().dir(), e))?;
            let mut sessions = SessionBook::new(loaded_sessions.pointers);
            let legacy = persisted.agents.iter().filter_map(|(agent, state)| {
                Some((agent.clone(), state.legacy_session_id.clone()?))
            });
            // Written now: the next save of state.yaml no longer has the old key.
            let adopted = sessions.adopt_legacy(legacy, &config, Utc::now());
            let mut state_issues: Vec<String> = loaded_sessions
                .corrupt
                .iter()
                .map(ToString::to_string)
                .collect();
            if let Err(e) = deleted {
                state_issues.push(format!("pruning job history: {e}"));
            }
            for write in adopted {
                if let Err(e) = write.apply(state_dir.sessions()) {
                    state_issues.push(e.to_string());
                }
            }
            let retained = Retained {
                pruned: pruned_at_start,
                herdctl_kept: pruning.herdctl_kept_beyond_default,
            };
            Ok::<_, FleetError>((
                config,
                host_timezone,
                state_dir,
                store,
                issues,
                persisted,
                corrupt,
                sessions,
                state_issues,
                retained,
                work_sources,
            ))
        })
        .await
        .map_err(|e| FleetError::State {
            path: String::new(),
            message: format!("initialization task failed: {e}"),
        })??;
        let (
            config,
            host_timezone,
            state_dir,
            store,
            issues,
            persisted,
            corrupt,
            sessions,
            session_issues,
            retained,
            work_sources,
        ) = loaded;

        for warning in &config.warnings {
            tracing::warn!(file = %warning.file.display(), path = %warning.path, "{}", warning.message);
        }
        warn_about_root(&config);
        for issue in issues {
            report_state_error(self.events(), &issue.to_string());
        }
        if let Some(corrupt) = corrupt {
            report_state_error(self.events(), &corrupt.to_string());
        }
        for issue in session_issues {
            report_state_error(self.events(), &issue);
        }
        retained.log();

        {
            let mut core = self.core();
            self.require(&core, "initialize", &[FleetState::Uninitialized])?;
            core.config = Some(Arc::new(config));
            core.host_timezone = host_timezone;
            core.writer = Some(StateWriter::start(&state_dir, self.events().clone()));
            core.state_dir = Some(state_dir);
            core.store = Some(store);
            core.persisted = persisted;
            core.sessions = sessions;
            core.work_sources = work_sources;
            self.recover_interrupted(&mut core);
            core.lifecycle = FleetState::Initialized;
        }
        tracing::info!("fleet initialized");
        self.events().emit(FleetEvent::Initialized);
        if self.options().auto_start {
            self.start().await?;
        }
        Ok(())
    }

    /// Jobs a dead daemon left queued or running: end any process still alive (guarding against pid
    /// reuse) and mark the record failed with exit reason `interrupted`.
    fn recover_interrupted(&self, core: &mut Core) {
        let Some(store) = core.store.as_mut() else {
            return;
        };
        let sources = &core.work_sources;
        for id in store.non_terminal() {
            let Ok(Some(mut job)) = store.get(&id) else {
                continue;
            };
            if let (Some(pid), Some(pgid), Some(start_time)) =
                (job.pid, job.pgid, job.process_start_time)
            {
                let outcome = crate::runner::kill_stale_job(id.as_str(), pid, pgid, start_time);
                tracing::warn!(job_id = %id, ?outcome, "ended processes of an interrupted job");
            }
            let now = Utc::now();
            job.status = JobStatus::Failed;
            job.exit_reason = Some(ExitReason::Interrupted);
            job.duration_ms = job
                .started_at
                .map(|s| (now - s).num_milliseconds().max(0) as u64);
            job.finished_at = Some(now);
            job.pid = None;
            job.pgid = None;
            let message = if job.started_at.is_some() {
                "the daemon stopped before this job finished; it was not resumed"
            } else {
                // Also herdctl's forks: its forkJob writes a pending record and never runs it.
                "the job had not started when the daemon that owned it stopped; it was not run \
                 (trigger or fork it again)"
            };
            job.error = Some(JobError {
                code: "INTERRUPTED".into(),
                message: message.into(),
            });
            if let Err(e) = store.put(&job) {
                report_state_error(&self.shared.events, &e.to_string());
            }
            tracing::warn!(job_id = %id, agent = %job.agent, "job marked interrupted after a daemon restart");
            // Its work item is still labelled in progress: give it back.
            let claimed = job.schedule.as_ref().and_then(|schedule| {
                let source = sources.get(&ScheduleKey::new(&job.agent, schedule))?;
                let item = serde_json::from_value(job.work_item.clone()?).ok()?;
                Some((source.clone(), item))
            });
            if let Some(work) = claimed {
                followup::report_work(work, &job);
            }
        }
    }

    /// Starts the scheduler; from `initialized` or `stopped`.
    pub async fn start(&self) -> Result<(), FleetError> {
        let (handle, plans) = {
            let mut core = self.core();
            self.require(
                &core,
                "start",
                &[FleetState::Initialized, FleetState::Stopped],
            )?;
            let config = core.config()?.clone();
            let (handle, mut fires) = Scheduler::spawn(self.options().clock.clone());
            let manager = self.clone();
            core.fire_task = Some(tokio::spawn(async move {
                while let Some(fire) = fires.recv().await {
                    manager.on_fire(fire).await;
                }
            }));
            core.scheduler = Some(handle.clone());
            core.lifecycle = FleetState::Running;
            core.started_at = Some(Utc::now());
            core.stopped_at = None;
            let plans = schedule_plans(&core, &config);
            run::dispatch_queue(self, &mut core);
            (handle, plans)
        };
        apply_plans(&handle, plans).await;
        tracing::info!("fleet started");
        self.events().emit(FleetEvent::Started);
        Ok(())
    }

    /// Stops the scheduler, waits for running jobs up to the timeout, then cancels what remains.
    pub async fn stop(&self, options: StopOptions) -> Result<(), FleetError> {
        let (pending, fire_task) = {
            let mut core = self.core();
            self.require(&core, "stop", &[FleetState::Running])?;
            core.lifecycle = FleetState::Stopping;
            // Dropping the last handle ends the scheduler task.
            core.scheduler = None;
            let fire_task = core.fire_task.take();
            if let Some(task) = fire_task.as_ref() {
                task.abort();
            }
            // Queued work would start after the fleet says it stopped: cancel it now.
            let queued: Vec<JobId> = core.queue.iter().map(|q| q.job_id.clone()).collect();
            for id in queued {
                core.queue.remove(&id);
                run::finish_without_running(
                    self,
                    &mut core,
                    &id,
                    "the fleet stopped before the job started",
                );
            }
            (core.running_count(None), fire_task)
        };
        // The fire task holds a clone of this manager: once stop returns, dropping the manager must release
        // the state directory.
        if let Some(task) = fire_task {
            let _ = task.await;
        }
        tracing::info!(pending_jobs = pending, "stopping fleet");
        self.events().emit(FleetEvent::StopProgress {
            pending_jobs: pending,
        });

        if options.wait_for_jobs && pending > 0 {
            let deadline = tokio::time::Instant::now() + options.timeout;
            let mut last_reported = pending;
            loop {
                let notified = self.shared.jobs_changed.notified();
                let running = self.core().running_count(None);
                if running != last_reported {
                    last_reported = running;
                    self.events().emit(FleetEvent::StopProgress {
                        pending_jobs: running,
                    });
                }
                if running == 0 {
                    break;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    break;
                }
            }
        }
        if !options.wait_for_jobs || options.cancel_on_timeout {
            self.cancel_running(None).await;
        }

        {
            let mut core = self.core();
            core.save_persisted();
            core.lifecycle = FleetState::Stopped;
            core.stopped_at = Some(Utc::now());
        }
        // Stopped means on disk: a caller may read the files or hand the directory to herdctl.
        self.flush().await;
        tracing::info!("fleet stopped");
        self.events().emit(FleetEvent::Stopped {
            reason: "requested".into(),
        });
        Ok(())
    }

    /// Waits until `state.yaml` and the session pointers hold every change made so far (they are
    /// written shortly after each change, outside the fleet lock). `stop` does this; a host that ends
    /// without stopping the fleet calls it before it exits.
    pub async fn flush(&self) {
        let flusher = self.core().writer.as_ref().map(StateWriter::flusher);
        if let Some(flusher) = flusher {
            flusher.flush().await;
        }
    }

    /// Re-reads the configuration. On error the old one stays and every validation error is returned.
    pub async fn reload(&self) -> Result<ReloadResult, FleetError> {
        let old = {
            let core = self.core();
            self.require(
                &core,
                "reload",
                &[
                    FleetState::Initialized,
                    FleetState::Running,
                    FleetState::Stopped,
                ],
            )?;
            core.config()?.clone()
        };
        let path = self
            .options()
            .config_path
            .clone()
            .unwrap_or_else(|| old.config_path.clone());
        let (new, host_timezone) = tokio::task::spawn_blocking(move || {
            (config::load(Some(&path)), crate::scheduler::host_timezone())
        })
        .await
        .map_err(|e| FleetError::State {
            path: String::new(),
            message: format!("reload task failed: {e}"),
        })?;
        let built = new.map_err(config_error).and_then(|new| {
            let sources = followup::work_sources(&new).map_err(|validation_errors| {
                FleetError::Configuration {
                    config_path: new.config_path.display().to_string(),
                    validation_errors,
                }
            })?;
            Ok((Arc::new(new), sources))
        });
        let (new, work_sources) = match built {
            Ok(built) => built,
            Err(error) => {
                tracing::error!("reload refused, keeping the running configuration: {error}");
                return Err(error);
            }
        };
        for warning in &new.warnings {
            tracing::warn!(file = %warning.file.display(), path = %warning.path, "{}", warning.message);
        }
        let changes: Vec<String> = config::diff(&old, &new)
            .iter()
            .map(ToString::to_string)
            .collect();

        let (scheduler, removed, plans) = {
            let mut core = self.core();
            core.config = Some(new.clone());
            core.host_timezone = host_timezone;
            core.work_sources = work_sources;
            // Queued jobs of removed agents can never run.
            let orphaned: Vec<JobId> = core
                .queue
                .iter()
                .filter(|q| new.agent(&q.agent).is_none())
                .map(|q| q.job_id.clone())
                .collect();
            for id in orphaned {
                core.queue.remove(&id);
                run::finish_without_running(
                    self,
                    &mut core,
                    &id,
                    "its agent was removed by a reload",
                );
            }
            let scheduler = core.scheduler.clone();
            let removed: Vec<ScheduleKey> = old
                .agents
                .iter()
                .flat_map(|a| a.schedules.iter().map(move |s| (a, s)))
                .filter(|(a, s)| {
                    !new.agent(&a.name)
                        .is_some_and(|n| n.schedules.iter().any(|ns| ns.name == s.name))
                })
                .map(|(a, s)| ScheduleKey::new(&a.name, &s.name))
                .collect();
            let plans = schedule_plans(&core, &new);
            run::dispatch_queue(self, &mut core);
            (scheduler, removed, plans)
        };
        if let Some(handle) = scheduler {
            for key in removed {
                let _ = handle.remove(key).await;
            }
            apply_plans(&handle, plans).await;
        }
        tracing::info!(changes = changes.len(), "configuration reloaded");
        self.events().emit(FleetEvent::ConfigReloaded {
            changes: changes.clone(),
            agent_count: new.agents.len(),
        });
        Ok(ReloadResult { changes })
    }

    // ---------------------------------------------------------------------------------------------
    // Queries
    // ---------------------------------------------------------------------------------------------

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
            queued: core.queue.len(),
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
            .iter()
            .filter_map(|s| {
                s.next_trigger.map(|at| NextTrigger {
                    agent_name: s.agent_name.clone(),
                    schedule_name: s.name.clone(),
                    at,
                })
            })
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
        let core = self.core();
        let config = core.config()?.clone();
        let store = core.store()?;
        Ok(config
            .agents
            .iter()
            .map(|agent| self.agent_info(&core, store, &plan, agent))
            .collect())
    }

    pub async fn agent(&self, name: &str) -> Result<AgentInfo, FleetError> {
        let plan = self.scheduler_plan().await;
        let core = self.core();
        let config = core.config()?.clone();
        let agent = find_agent(&config, name)?;
        Ok(self.agent_info(&core, core.store()?, &plan, agent))
    }

    /// Next due instant of every schedule that will fire (empty when the scheduler is not running).
    async fn scheduler_plan(&self) -> Plan {
        let handle = self.core().scheduler.clone();
        match handle {
            Some(handle) => handle.plan().await.unwrap_or_default(),
            None => HashMap::new(),
        }
    }

    fn agent_info(
        &self,
        core: &Core,
        store: &JobStore,
        plan: &Plan,
        agent: &AgentConfig,
    ) -> AgentInfo {
        let current_jobs: Vec<String> = core
            .active
            .values()
            .filter(|a| a.job.agent == agent.name && a.job.status == JobStatus::Running)
            .map(|a| a.job.id.to_string())
            .collect();
        let last_job = store
            .list(&JobFilter {
                agent: Some(agent.name.clone()),
                limit: 1,
                ..JobFilter::default()
            })
            .jobs
            .into_iter()
            .next()
            .map(Box::new);
        let now = self.options().clock.now();
        let timezone = budget::agent_timezone(agent, core.host_timezone);
        AgentInfo {
            name: agent.name.clone(),
            local_name: agent.local_name.clone(),
            fleet_path: agent.fleet_path.clone(),
            description: agent.description.clone(),
            model: agent.model.clone(),
            runtime: run::runtime_name(agent),
            working_directory: agent.working_directory.display().to_string(),
            state: if current_jobs.is_empty() {
                "idle"
            } else {
                "running"
            },
            concurrency: agent.concurrency.unwrap_or(self.options().per_agent),
            current_jobs,
            queued_jobs: core.queue.count_for(&agent.name),
            last_job,
            last_session_id: core.sessions.current(&agent.name).map(str::to_owned),
            schedules: self.schedule_infos(core, plan, Some(&agent.name)),
            usage: budget::report(store, Some(&agent.name), timezone, now),
            budget: budget::Spend::of(store, agent, core.host_timezone, now).map(|s| s.info()),
        }
    }

    pub fn jobs(&self, query: &JobQuery) -> Result<JobList, FleetError> {
        let core = self.core();
        let store = core.store()?;
        let filter = JobFilter {
            agent: query.agent.clone(),
            status: query.status,
            since: query.since,
            until: query.until,
            limit: query.limit.unwrap_or(50),
            offset: query.offset.unwrap_or(0),
        };
        let page = store.list(&filter);
        for unreadable in &page.unreadable {
            tracing::warn!("job record unreadable, skipped in the listing: {unreadable}");
        }
        Ok(JobList {
            jobs: page.jobs,
            total: page.total,
        })
    }

    /// A job record, optionally with its persisted output lines.
    pub fn job(
        &self,
        id: &str,
        include_output: bool,
    ) -> Result<(Job, Option<Vec<crate::job::OutputLine>>), FleetError> {
        let job_id = parse_job_id(id)?;
        let core = self.core();
        let job = match core.active.get(&job_id) {
            Some(active) => active.job.clone(),
            None => core
                .store()?
                .get(&job_id)
                .map_err(|e| state_error(std::path::Path::new(id), e))?
                .ok_or_else(|| FleetError::JobNotFound {
                    job_id: id.to_string(),
                })?,
        };
        let output = if include_output {
            Some(
                core.store()?
                    .read_output(&job_id, 0, None)
                    .map_err(|e| state_error(std::path::Path::new(id), e))?,
            )
        } else {
            None
        };
        Ok((job, output))
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
            run::timing_of(agent, schedule).and_then(|timing| {
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
            next_trigger,
            last_run_at: persisted.and_then(|p| p.last_run_at),
            last_status: persisted.and_then(|p| p.last_status),
            last_error: persisted.and_then(|p| p.last_error.clone()),
            runs: persisted.map_or(0, |p| p.runs),
            skipped: persisted.map_or(0, |p| p.skipped),
            failed: persisted.map_or(0, |p| p.failed),
            running_jobs: core
                .active
                .values()
                .filter(|a| {
                    a.job.agent == agent.name
                        && a.job.schedule.as_deref() == Some(&schedule.name)
                        && a.job.status == JobStatus::Running
                })
                .count(),
        }
    }

    pub fn queue(&self) -> Result<QueueInfo, FleetError> {
        let core = self.core();
        let config = core.config()?.clone();
        let queued = core
            .queue
            .iter()
            .map(|q| QueuedJobInfo {
                job_id: q.job_id.to_string(),
                agent_name: q.agent.clone(),
                priority: q.priority,
                position: core.queue.position(&q.job_id).unwrap_or(0),
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
                        queued: core.queue.count_for(&a.name),
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
                queued: core.queue.len(),
                limit: core.fleet_limit(self.options()),
                max_queued: self.options().max_queued,
            },
        })
    }

    // ---------------------------------------------------------------------------------------------
    // Actions
    // ---------------------------------------------------------------------------------------------

    /// Creates a job and starts it now, or queues it when a limit is reached; returns at once.
    pub async fn trigger(&self, agent: &str, options: TriggerOptions) -> Result<Job, FleetError> {
        let priority = options.priority.unwrap_or(crate::job::DEFAULT_PRIORITY);
        if !(1..=10).contains(&priority) {
            return Err(FleetError::InvalidParams {
                message: format!("priority must be 1 (highest) to 10 (lowest), got {priority}"),
            });
        }
        const TRIGGERABLE: [FleetState; 3] = [
            FleetState::Initialized,
            FleetState::Running,
            FleetState::Stopped,
        ];
        let (job, context, jobs_dir) = {
            let mut core = self.core();
            self.require(&core, "trigger", &TRIGGERABLE)?;
            let config = core.config()?.clone();
            let agent_config = find_agent(&config, agent)?;
            let jobs_dir = core.jobs_dir()?;
            let schedule = match options.schedule.as_deref() {
                Some(name) => Some(find_schedule(agent_config, name)?),
                None => None,
            };
            budget::admit_manual(
                core.store()?,
                agent_config,
                core.host_timezone,
                self.options().clock.now(),
                options.over_budget,
            )?;
            let mut prompt = options
                .prompt
                .clone()
                .or_else(|| schedule.and_then(|s| s.prompt.clone()))
                .or_else(|| agent_config.default_prompt.clone())
                .unwrap_or_else(|| FALLBACK_PROMPT.to_string());
            let work_item = options.work_items.as_ref().map(|items| {
                prompt.push_str(&run::work_items_section(items));
                Value::Array(items.clone())
            });
            let mut job = Job::new(
                core.reserve_job_id(Utc::now()),
                agent_config.name.clone(),
                schedule.map(|s| s.name.clone()),
                TriggerType::Manual,
                Some(prompt),
                priority,
                Utc::now(),
            );
            job.work_item = work_item;
            let context = RunContext {
                resume_latest: !options.fresh_session,
                resume_session: None,
                fork_session: false,
                schedule: schedule.cloned(),
                work: None,
            };
            (job, context, jobs_dir)
        };
        let id = job.id.clone();
        let staged = run::stage_record(self, &jobs_dir, job).await;
        let (job, dir_sync) = {
            let mut core = self.core();
            core.release_job_id(&id);
            let staged = staged?;
            self.require(&core, "trigger", &TRIGGERABLE)?;
            let job = run::admit_staged(self, &mut core, staged, context, run::WhenFull::Queue)?;
            (job, core.jobs_dir_sync())
        };
        if let Some(dir_sync) = dir_sync {
            run::sync_jobs_dir(self, dir_sync).await;
        }
        Ok(job)
    }

    /// Cancels a queued job (dequeued) or a running one (SIGTERM, grace, SIGKILL of its whole process tree).
    /// Replies once the job's record is final.
    pub async fn cancel_job(
        &self,
        id: &str,
        grace: Option<Duration>,
    ) -> Result<CancelResult, FleetError> {
        let job_id = parse_job_id(id)?;
        let (canceller, mut finished, grace) = {
            let mut core = self.core();
            if core.lifecycle == FleetState::Uninitialized {
                return Err(FleetError::invalid_state(
                    "cancelJob",
                    core.lifecycle,
                    &[
                        FleetState::Initialized,
                        FleetState::Running,
                        FleetState::Stopping,
                        FleetState::Stopped,
                    ],
                ));
            }
            let Some(active) = core.active.get(&job_id) else {
                // Not active: finished already, or unknown.
                return match core.store()?.get(&job_id) {
                    Ok(Some(_)) => Ok(CancelResult {
                        job_id: id.to_string(),
                        termination_type: TerminationType::AlreadyStopped,
                    }),
                    _ => Err(FleetError::JobNotFound {
                        job_id: id.to_string(),
                    }),
                };
            };
            if active.job.status == JobStatus::Queued {
                core.queue.remove(&job_id);
                run::finish_without_running(self, &mut core, &job_id, "cancelled while queued");
                return Ok(CancelResult {
                    job_id: id.to_string(),
                    termination_type: TerminationType::Graceful,
                });
            }
            let grace = grace
                .or_else(|| active.agent.as_ref().map(|a| a.stop_grace))
                .unwrap_or(self.options().default_stop_grace);
            let Some(active) = core.active.get_mut(&job_id) else {
                return Err(FleetError::JobNotFound {
                    job_id: id.to_string(),
                });
            };
            active.cancel_requested = true;
            (active.canceller.clone(), active.finished.subscribe(), grace)
        };
        let termination = match canceller {
            Some(canceller) => canceller.cancel(grace).await,
            None => TerminationType::AlreadyStopped,
        };
        // The supervisor finalizes the record when the process is gone; reply after that.
        let _ = finished.wait_for(Option::is_some).await;
        tracing::info!(job_id = %job_id, ?termination, "job cancelled");
        Ok(CancelResult {
            job_id: id.to_string(),
            termination_type: termination,
        })
    }

    /// Cancels every running job, each with `grace` or its agent's own, and waits until all are final.
    /// Works in any state (jobs can run while the fleet is `initialized` or `stopped`).
    pub async fn cancel_running(&self, grace: Option<Duration>) {
        let running: Vec<JobId> = self
            .core()
            .active
            .iter()
            .filter(|(_, a)| a.job.status == JobStatus::Running)
            .map(|(id, _)| id.clone())
            .collect();
        let cancels = running.into_iter().map(|id| {
            let manager = self.clone();
            async move {
                let _ = manager.cancel_job(id.as_str(), grace).await;
            }
        });
        futures_join_all(cancels).await;
    }

    /// Runs a new job from an earlier one: same agent, schedule and work item, the modifications applied,
    /// resuming the original's Claude session as a fork when it has one.
    pub async fn fork_job(&self, id: &str, options: ForkOptions) -> Result<Job, FleetError> {
        let original_id = parse_job_id(id)?;
        let mut core = self.core();
        self.require(
            &core,
            "forkJob",
            &[
                FleetState::Initialized,
                FleetState::Running,
                FleetState::Stopped,
            ],
        )?;
        let original = match core.active.get(&original_id) {
            Some(active) => active.job.clone(),
            None => core
                .store()?
                .get(&original_id)
                .map_err(|e| state_error(std::path::Path::new(id), e))?
                .ok_or_else(|| FleetError::JobNotFound {
                    job_id: id.to_string(),
                })?,
        };
        if original.status == JobStatus::Queued {
            return Err(FleetError::JobNotRunning {
                job_id: id.to_string(),
                status: original.status.to_string(),
                reason: "it has not run yet, so there is nothing to fork; wait for it to start"
                    .into(),
            });
        }
        let config = core.config()?.clone();
        let agent = find_agent(&config, &original.agent)?;
        let schedule_name = options.schedule.clone().or(original.schedule.clone());
        let schedule = match schedule_name.as_deref() {
            Some(name) => Some(find_schedule(agent, name)?),
            None => None,
        };
        budget::admit_manual(
            core.store()?,
            agent,
            core.host_timezone,
            self.options().clock.now(),
            options.over_budget,
        )?;
        let prompt = options
            .prompt
            .clone()
            .or(original.prompt.clone())
            .unwrap_or_else(|| FALLBACK_PROMPT.to_string());
        let mut job = Job::new(
            core.new_job_id(Utc::now()),
            agent.name.clone(),
            schedule.map(|s| s.name.clone()),
            TriggerType::Fork,
            Some(prompt),
            original.priority,
            Utc::now(),
        );
        job.forked_from = Some(original.id.clone());
        job.work_item = original.work_item.clone();
        let context = RunContext {
            resume_latest: false,
            fork_session: original.session_id.is_some(),
            resume_session: original.session_id.clone(),
            schedule: schedule.cloned(),
            work: None,
        };
        let job = run::admit(self, &mut core, job, context, run::WhenFull::Queue)?;
        drop(core);
        self.events().emit(FleetEvent::JobForked {
            job: Box::new(job.clone()),
            forked_from: original.id.to_string(),
        });
        Ok(job)
    }

    pub async fn enable_schedule(
        &self,
        agent: &str,
        schedule: &str,
    ) -> Result<ScheduleInfo, FleetError> {
        self.set_schedule_enabled(agent, schedule, true).await
    }

    pub async fn disable_schedule(
        &self,
        agent: &str,
        schedule: &str,
    ) -> Result<ScheduleInfo, FleetError> {
        self.set_schedule_enabled(agent, schedule, false).await
    }

    async fn set_schedule_enabled(
        &self,
        agent: &str,
        schedule: &str,
        enabled: bool,
    ) -> Result<ScheduleInfo, FleetError> {
        let (key, scheduler) = {
            let mut core = self.core();
            let config = core.config()?.clone();
            let agent_config = find_agent(&config, agent)?;
            let schedule_config = find_schedule(agent_config, schedule)?;
            core.persisted
                .schedule_mut(&agent_config.name, &schedule_config.name)
                .enabled = Some(enabled);
            core.save_persisted();
            tracing::info!(agent = %agent_config.name, schedule = %schedule_config.name, enabled,
                "schedule {}", if enabled { "enabled" } else { "disabled" });
            (
                ScheduleKey::new(&agent_config.name, &schedule_config.name),
                core.scheduler.clone(),
            )
        };
        if let Some(handle) = scheduler {
            let _ = handle.set_enabled(key.clone(), enabled).await;
        }
        // An operator's change is on disk when it is acknowledged.
        self.flush().await;
        self.schedule(&key.agent, &key.schedule).await
    }

    // ---------------------------------------------------------------------------------------------
    // Streams
    // ---------------------------------------------------------------------------------------------

    /// A job's output from `from_seq`: history, then live lines, then `eof` with the final status.
    pub fn stream_job_output(
        &self,
        id: &str,
        from_seq: u64,
    ) -> Result<JobOutputStream, FleetError> {
        let job_id = parse_job_id(id)?;
        let core = self.core();
        let path = core.jobs_dir()?.join(format!("{job_id}.jsonl"));
        let live = match core.active.get(&job_id) {
            Some(active) => Some(active.hub.subscribe()),
            None => {
                core.store()?
                    .get(&job_id)
                    .map_err(|e| state_error(&path, e))?
                    .ok_or_else(|| FleetError::JobNotFound {
                        job_id: id.to_string(),
                    })?;
                None
            }
        };
        // A reader must not keep the fleet (and its state directory lock) alive.
        let shared = Arc::downgrade(&self.shared);
        let status = Box::new(move || {
            let manager = FleetManager {
                shared: shared.upgrade()?,
            };
            manager
                .job(job_id.as_str(), false)
                .ok()
                .map(|(j, _)| j.status)
        });
        Ok(JobOutputStream::new(path, from_seq, live, status))
    }

    /// Fleet log entries: the newest `tail` matching ones, then live.
    pub fn stream_logs(&self, filter: LogFilter, tail: usize) -> LogSubscription {
        self.log_bus().subscribe(filter, tail)
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

    // ---------------------------------------------------------------------------------------------
    // Schedule fires
    // ---------------------------------------------------------------------------------------------

    async fn on_fire(&self, fire: Fire) {
        let triggered = match self.decide_fire(&fire) {
            None => false,
            Some(prepared) => match prepared.work_source.clone() {
                None => self.launch_fire(&fire, prepared, None),
                // Fetching and claiming talk to GitHub (with retries): never under the fleet's lock.
                Some(source) => match followup::claim_next(&source).await {
                    Ok(Some(item)) => self.launch_fire(&fire, prepared, Some((source, item))),
                    Ok(None) => {
                        self.skip_fire(&fire.key, SkipReason::NoWork);
                        false
                    }
                    Err(e) => {
                        let message = format!("work source of {}: {e}", fire.key);
                        tracing::error!("{message}; the run is skipped");
                        self.events().emit(FleetEvent::Error {
                            message: message.clone(),
                            source: "work_source".into(),
                        });
                        let mut core = self.core();
                        let state = core
                            .persisted
                            .schedule_mut(&fire.key.agent, &fire.key.schedule);
                        state.skipped += 1;
                        state.last_error = Some(message);
                        core.save_persisted();
                        false
                    }
                },
            },
        };
        // Record when it fires next, now that the scheduler has planned it.
        let scheduler = self.core().scheduler.clone();
        if let (true, Some(handle)) = (triggered, scheduler) {
            let next = handle.next_due(fire.key.clone()).await.ok().flatten();
            let mut core = self.core();
            core.persisted
                .schedule_mut(&fire.key.agent, &fire.key.schedule)
                .next_run_at = next;
            core.save_persisted();
        }
    }

    fn skip_fire(&self, key: &ScheduleKey, reason: SkipReason) {
        let mut core = self.core();
        core.persisted
            .schedule_mut(&key.agent, &key.schedule)
            .skipped += 1;
        core.save_persisted();
        tracing::info!(agent = %key.agent, schedule = %key.schedule, ?reason, "schedule skipped");
        self.events().emit(FleetEvent::ScheduleSkipped {
            agent_name: key.agent.clone(),
            schedule_name: key.schedule.clone(),
            reason,
        });
    }

    /// Whether a fire should run: the fleet is running, the schedule exists and is enabled, its previous
    /// run and the limits allow it. Reports the skip when not.
    fn decide_fire(&self, fire: &Fire) -> Option<PreparedFire> {
        match self.check_fire(&fire.key) {
            Ok(prepared) => prepared,
            Err(reason) => {
                self.skip_fire(&fire.key, reason);
                None
            }
        }
    }

    /// `Ok(None)`: the schedule is gone (removed by a reload); nothing to report.
    fn check_fire(&self, key: &ScheduleKey) -> Result<Option<PreparedFire>, SkipReason> {
        let core = self.core();
        if core.lifecycle != FleetState::Running {
            return Err(SkipReason::Stopping);
        }
        let Ok(config) = core.config() else {
            return Ok(None);
        };
        let Some(agent) = config.agent(&key.agent) else {
            return Ok(None);
        };
        let Some(schedule) = agent.schedules.iter().find(|s| s.name == key.schedule) else {
            return Ok(None);
        };
        if !effective_enabled(schedule, core.persisted.schedule(&key.agent, &key.schedule)) {
            return Err(SkipReason::Disabled);
        }
        let spend = core.store.as_ref().and_then(|store| {
            budget::Spend::of(store, agent, core.host_timezone, self.options().clock.now())
        });
        if let Some(spend) = spend.filter(budget::Spend::reached) {
            tracing::info!(agent = %key.agent, schedule = %key.schedule, spent_usd = spend.spent_usd,
                daily_usd = spend.daily_usd, day = %spend.day, timezone = %spend.timezone,
                "the agent's daily budget is spent: the scheduled run waits for the next day");
            return Err(SkipReason::Budget);
        }
        let previous_still_going = core.active.values().any(|a| {
            a.job.agent == key.agent && a.job.schedule.as_deref() == Some(key.schedule.as_str())
        });
        let when_full = match schedule.overlap {
            config::Overlap::Skip if previous_still_going => {
                return Err(SkipReason::AlreadyRunning)
            }
            config::Overlap::Skip => run::WhenFull::Skip,
            config::Overlap::Queue => run::WhenFull::Queue,
            config::Overlap::Allow => run::WhenFull::SkipAtFleetLimit,
        };
        if when_full != run::WhenFull::Queue
            && !core.may_start(self.options(), &key.agent, when_full)
        {
            return Err(SkipReason::ConcurrencyLimit);
        }
        Ok(Some(PreparedFire {
            default_prompt: agent.default_prompt.clone(),
            schedule: schedule.clone(),
            when_full,
            work_source: core.work_sources.get(key).cloned(),
        }))
    }

    /// Creates and admits the job of a fire; returns whether a job was created.
    fn launch_fire(
        &self,
        fire: &Fire,
        prepared: PreparedFire,
        work: Option<followup::ClaimedWork>,
    ) -> bool {
        let mut core = self.core();
        let key = &fire.key;
        if core.lifecycle != FleetState::Running {
            drop(core);
            if let Some(work) = work {
                followup::release_unused(work, "the fleet stopped before the run started");
            }
            self.skip_fire(key, SkipReason::Stopping);
            return false;
        }
        let schedule = &prepared.schedule;
        let (prompt, trigger_type, work_item) = match &work {
            Some((_, item)) => (
                crate::work_sources::build_prompt(schedule.prompt.as_deref(), item),
                TriggerType::WorkItem,
                serde_json::to_value(item).ok(),
            ),
            None => (
                schedule
                    .prompt
                    .clone()
                    .or(prepared.default_prompt)
                    .unwrap_or_else(|| FALLBACK_PROMPT.to_string()),
                TriggerType::Schedule,
                None,
            ),
        };
        let mut job = Job::new(
            core.new_job_id(Utc::now()),
            key.agent.clone(),
            Some(key.schedule.clone()),
            trigger_type,
            Some(prompt),
            crate::job::DEFAULT_PRIORITY,
            Utc::now(),
        );
        job.work_item = work_item;
        {
            let state = core.persisted.schedule_mut(&key.agent, &key.schedule);
            state.last_run_at = Some(fire.fired_at);
            state.runs += 1;
        }
        tracing::info!(agent = %key.agent, schedule = %key.schedule, job_id = %job.id, "schedule fired");
        self.events().emit(FleetEvent::ScheduleTriggered {
            agent_name: key.agent.clone(),
            schedule_name: key.schedule.clone(),
            job_id: job.id.to_string(),
        });
        let context = RunContext {
            resume_latest: schedule.resume_session,
            resume_session: None,
            fork_session: false,
            schedule: Some(prepared.schedule.clone()),
            work: work.clone(),
        };
        if let Err(e) = run::admit(self, &mut core, job, context, prepared.when_full) {
            tracing::error!(agent = %key.agent, schedule = %key.schedule, "scheduled job not started: {e}");
            core.persisted
                .schedule_mut(&key.agent, &key.schedule)
                .last_error = Some(e.to_string());
            if let Some(work) = work {
                followup::release_unused(work, &format!("the run could not start: {e}"));
            }
        }
        core.save_persisted();
        true
    }

    /// Waits until the job is final (finished, failed or cancelled) and returns its record.
    pub async fn wait_for_job(&self, id: &str) -> Result<Job, FleetError> {
        let job_id = parse_job_id(id)?;
        let finished = self
            .core()
            .active
            .get(&job_id)
            .map(|a| a.finished.subscribe());
        if let Some(mut finished) = finished {
            // The final record from the job itself: history pruning may already have deleted its file.
            if let Ok(job) = finished.wait_for(Option::is_some).await {
                if let Some(job) = job.clone() {
                    return Ok(job);
                }
            }
        }
        self.job(id, false).map(|(job, _)| job)
    }
}

type Plan = HashMap<ScheduleKey, DateTime<Utc>>;

/// What the scheduler needs for one schedule: key, timing, last run and whether it is enabled.
type SchedulePlan = (
    ScheduleKey,
    crate::scheduler::Timing,
    Option<DateTime<Utc>>,
    bool,
);

/// The scheduler entries for every firing schedule of `config` (webhook and chat types never fire).
fn schedule_plans(core: &Core, config: &FleetConfig) -> Vec<SchedulePlan> {
    config
        .agents
        .iter()
        .flat_map(|a| a.schedules.iter().map(move |s| (a, s)))
        .filter_map(|(agent, schedule)| {
            let timing = run::timing_of(agent, schedule)?;
            let persisted = core.persisted.schedule(&agent.name, &schedule.name);
            Some((
                ScheduleKey::new(&agent.name, &schedule.name),
                timing,
                persisted.and_then(|p| p.last_run_at),
                effective_enabled(schedule, persisted),
            ))
        })
        .collect()
}

async fn apply_plans(handle: &SchedulerHandle, plans: Vec<SchedulePlan>) {
    for (key, timing, last_run_at, enabled) in plans {
        if let Err(e) = handle
            .upsert(key.clone(), timing, last_run_at, enabled)
            .await
        {
            tracing::error!(schedule = %key, "schedule not planned: {e}");
        }
    }
}

/// Claude refuses `bypassPermissions` when run as root (its jobs would all fail at once): say so at load.
fn warn_about_root(config: &FleetConfig) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    for agent in &config.agents {
        let claude = matches!(agent.runtime, config::RuntimeConfig::Claude { .. });
        if claude && agent.permission_mode == Some(config::PermissionMode::BypassPermissions) {
            tracing::warn!(agent = %agent.name,
                "claude refuses permission_mode bypassPermissions as root; run herdctld as another user \
                 (or set IS_SANDBOX=1 in its environment if this machine is a disposable sandbox)");
        }
    }
}

/// A fire that passed every check, waiting for its work item (if its schedule has a work source).
struct PreparedFire {
    schedule: ScheduleConfig,
    default_prompt: Option<String>,
    when_full: run::WhenFull,
    work_source: Option<Arc<dyn crate::work_sources::WorkSource>>,
}

/// Configured `enabled`, overridden by a persisted runtime enable/disable.
fn effective_enabled(
    schedule: &ScheduleConfig,
    persisted: Option<&crate::state::ScheduleState>,
) -> bool {
    persisted
        .and_then(|p| p.enabled)
        .unwrap_or(schedule.enabled)
}

fn parse_job_id(id: &str) -> Result<JobId, FleetError> {
    JobId::parse(id).map_err(|_| FleetError::JobNotFound {
        job_id: id.to_string(),
    })
}

fn find_agent<'a>(config: &'a FleetConfig, name: &str) -> Result<&'a AgentConfig, FleetError> {
    config
        .agent(name)
        .or_else(|| {
            // A local name is accepted when it is unambiguous across sub-fleets.
            let mut matches = config.agents.iter().filter(|a| a.local_name == name);
            match (matches.next(), matches.next()) {
                (Some(agent), None) => Some(agent),
                _ => None,
            }
        })
        .ok_or_else(|| FleetError::AgentNotFound {
            agent_name: name.to_string(),
            available_agents: config.agents.iter().map(|a| a.name.clone()).collect(),
        })
}

fn find_schedule<'a>(agent: &'a AgentConfig, name: &str) -> Result<&'a ScheduleConfig, FleetError> {
    agent
        .schedules
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| FleetError::ScheduleNotFound {
            agent_name: agent.name.clone(),
            schedule_name: name.to_string(),
            available_schedules: agent.schedules.iter().map(|s| s.name.clone()).collect(),
        })
}

/// Runs futures concurrently and waits for all (tokio has no join_all; a JoinSet needs 'static).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for future in futures {
        set.spawn(future);
    }
    while set.join_next().await.is_some() {}
}

impl std::fmt::Debug for FleetManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetManager")
            .field("state", &self.state())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drawn_id_that_is_taken_is_drawn_again() {
        let ids: Vec<JobId> = ["aaaaaa", "bbbbbb", "cccccc"]
            .iter()
            .map(|suffix| JobId::parse(&format!("job-2026-12-02-{suffix}")).unwrap())
            .collect();
        let mut draws = ids.clone().into_iter();
        let taken: HashSet<JobId> = ids[..2].iter().cloned().collect();
        let free = first_free_id(|| draws.next().unwrap(), |id| taken.contains(id));
        assert_eq!(free, ids[2]);
    }
}
