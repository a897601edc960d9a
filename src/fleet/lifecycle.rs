//! The fleet's lifecycle: initialize (load, open the state, recover interrupted jobs, take up the cluster
//! runs a previous daemon left), start, stop, flush and reload.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use chrono::Utc;

use crate::config::{self, FleetConfig};
use crate::executor::ExecutorContext;
use crate::job::{ExitReason, JobError, JobId, JobStatus};
use crate::metrics::Metrics;
use crate::scheduler::{ScheduleKey, Scheduler};
use crate::state::{FleetState as PersistedState, JobStore, StateDir};
use crate::work_sources::WorkSource;

use super::core::{state_error, Shared};
use super::error::{FleetError, FleetState, ValidationIssue};
use super::events::{report_state_error, EventBus, FleetEvent};
use super::followup;
use super::info::ReloadResult;
use super::manager::{FleetManager, StopOptions};
use super::reattach::{Adoption, Listings};
use super::record_writer::RecordWriter;
use super::schedules::{apply_plans, schedule_plans};
use super::sessions::SessionBook;
use super::state_writer::StateWriter;
use super::supervise;

/// What initialization read and opened, off the fleet's lock, before the fleet takes it over.
struct Loaded {
    config: FleetConfig,
    host_timezone: chrono_tz::Tz,
    state_dir: StateDir,
    store: JobStore,
    store_issues: Vec<crate::state::StoreIssue>,
    persisted: PersistedState,
    corrupt: Option<crate::state::CorruptFile>,
    sessions: SessionBook,
    state_issues: Vec<String>,
    retained: Retained,
    work_sources: HashMap<ScheduleKey, Arc<dyn WorkSource>>,
    executors: ExecutorContext,
    adoptions: Vec<Adoption>,
    listings: Listings,
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
        let events = self.events().clone();
        let metrics = self.metrics().clone();
        let runtime = tokio::runtime::Handle::current();
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
            // Absolute: it labels the containers this directory owns (two daemons on `.herdctl` of two
            // directories must not take each other's) and is mounted into containers.
            let root = std::path::absolute(&root).map_err(|e| {
                state_error(
                    &root,
                    crate::state::StateError::Io {
                        action: "resolve the path of",
                        path: root.clone(),
                        source: e,
                    },
                )
            })?;
            let state_dir = StateDir::open(&root).map_err(|e| state_error(&root, e))?;
            let (mut store, issues) =
                JobStore::open(state_dir.jobs_dir()).map_err(|e| state_error(&root, e))?;
            // Also at start, not only when a job ends: a lowered limit applies at once, and retention by
            // age must not wait for the next job of an idle fleet. Nothing runs yet, so nothing is active.
            let retention = history.retention(Some(&config));
            let pruning = store.plan_prune(&retention, Utc::now(), &|_| false);
            let pruned_at_start = pruning.doomed.len();
            let deleted = store.forget(&pruning.doomed).delete();
            // Here, before the fleet's lock guards the store: recovery rewrites records. Cluster engines
            // are asked first which runs they have: those jobs are taken up again, not interrupted.
            let executors = ExecutorContext::new(state_dir.exchange(), state_dir.root());
            let cluster_records: Vec<_> = store
                .non_terminal()
                .into_iter()
                .filter_map(|id| store.get(&id).ok().flatten())
                .filter(|job| job.executor_run.is_some())
                .collect();
            let listings = Listings::gather(&runtime, &config, &cluster_records, &executors);
            let adoptions =
                recover_interrupted(&mut store, &work_sources, &listings, &events, &metrics);
            // The exchange files of runs nobody takes up again go (a spec holds the prompt and the
            // `.env`); while an engine did not answer they stay, its runs unknown.
            if listings.complete() {
                let taken_up: Vec<JobId> = adoptions.iter().map(|a| a.job.id.clone()).collect();
                if let Err(e) = executors.exchange.retain(&taken_up) {
                    report_state_error(&events, &e.to_string());
                }
            }
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
            Ok::<_, FleetError>(Loaded {
                config,
                host_timezone,
                state_dir,
                store,
                store_issues: issues,
                persisted,
                corrupt,
                sessions,
                state_issues,
                retained,
                work_sources,
                executors,
                adoptions,
                listings,
            })
        })
        .await
        .map_err(|e| FleetError::State {
            path: String::new(),
            message: format!("initialization task failed: {e}"),
        })??;
        let Loaded {
            config,
            host_timezone,
            state_dir,
            store,
            store_issues: issues,
            persisted,
            corrupt,
            sessions,
            state_issues: session_issues,
            retained,
            work_sources,
            executors,
            adoptions,
            listings,
        } = loaded;

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
        let leftovers = LeftoverContainers {
            owner: state_dir.root().display().to_string(),
            fleet: Arc::downgrade(&self.shared),
        };
        if uses_containers(&config) {
            // Before any job of this daemon runs: once it is ready, nothing of a dead one runs.
            leftovers.remove(true).await;
        } else if crate::runner::engine_configured() {
            // A fleet without containers does not wait for an engine (podman takes a third of a second to
            // answer a first request), but a dead daemon's containers from an earlier configuration still go.
            tokio::spawn(leftovers.remove(false));
        }

        {
            let mut core = self.core();
            self.require(&core, "initialize", &[FleetState::Uninitialized])?;
            core.config = Some(Arc::new(config));
            core.host_timezone = host_timezone;
            core.writer = Some(StateWriter::start(&state_dir, self.events().clone()));
            core.records = Some(RecordWriter::start(store.files(), self.events().clone()));
            core.executors = Some(executors);
            core.state_dir = Some(state_dir);
            core.store = Some(store);
            core.persisted = persisted;
            core.sessions = sessions;
            core.work_sources = work_sources;
            core.lifecycle = FleetState::Initialized;
        }
        self.reattach(adoptions, &listings);
        tracing::info!("fleet initialized");
        self.events().emit(FleetEvent::Initialized);
        if self.options().auto_start {
            self.start().await?;
        }
        Ok(())
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
            supervise::dispatch_queue(self, &mut core);
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
            for id in core.jobs.dequeue_all() {
                supervise::finish_without_running(
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
            reason: options.reason,
        });
        Ok(())
    }

    /// Waits until the job records, `state.yaml` and the session pointers hold every change made so far
    /// (they are written shortly after each change, outside the fleet lock). `stop` does this; a host that ends
    /// without stopping the fleet calls it before it exits.
    pub async fn flush(&self) {
        let (records, state) = {
            let core = self.core();
            (
                core.records.as_ref().map(RecordWriter::flusher),
                core.writer.as_ref().map(StateWriter::flusher),
            )
        };
        if let Some(records) = records {
            records.flush().await;
        }
        if let Some(state) = state {
            state.flush().await;
        }
    }

    /// Ends every event and log subscription once it has delivered what was emitted before, and waits
    /// up to `timeout` until none is left; returns whether none is. A host that shuts down calls this
    /// after `stop` and before it closes its connections, so the last events (`stopped` among them) reach
    /// every subscriber. Subscriptions opened afterwards end at once.
    pub async fn end_subscriptions(&self, timeout: std::time::Duration) -> bool {
        let (events, logs) = (self.events(), self.log_bus());
        events.end_subscriptions();
        logs.end_subscriptions();
        let both = async { tokio::join!(events.subscriptions_ended(), logs.subscriptions_ended()) };
        tokio::time::timeout(timeout, both).await.is_ok()
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
            let orphaned = core.jobs.dequeue_where(|q| new.agent(&q.agent).is_none());
            for id in orphaned {
                supervise::finish_without_running(
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
            supervise::dispatch_queue(self, &mut core);
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
}

/// Jobs a dead daemon left queued or running: end any process still alive (guarding against pid
/// reuse) and mark the record failed with exit reason `interrupted`; except a job on a cluster engine whose
/// run the engine has (`listings`): it is returned, to be taken up again.
fn recover_interrupted(
    store: &mut JobStore,
    sources: &HashMap<ScheduleKey, Arc<dyn WorkSource>>,
    listings: &Listings,
    events: &EventBus,
    metrics: &Metrics,
) -> Vec<Adoption> {
    let mut adoptions = Vec::new();
    for id in store.non_terminal() {
        let Ok(Some(mut job)) = store.get(&id) else {
            continue;
        };
        if let Some(engine_id) = listings.engine_id(&job) {
            adoptions.push(Adoption { job, engine_id });
            continue;
        }
        if let (Some(pid), Some(pgid), Some(start_time)) =
            (job.pid, job.pgid, job.process_start_time)
        {
            let outcome = crate::runner::kill_stale_job(id.as_str(), pid, pgid, start_time);
            tracing::warn!(job_id = %id, ?outcome, "ended processes of an interrupted job");
        }
        match store.join_output_tail(&id) {
            Ok(missing) => job.output_truncated |= missing,
            Err(e) => report_state_error(events, &e.to_string()),
        }
        job.end(Utc::now(), JobStatus::Failed, ExitReason::Interrupted);
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
            report_state_error(events, &e.to_string());
        }
        metrics.job_finished(&job);
        tracing::warn!(job_id = %id, agent = %job.agent, "job marked interrupted after a daemon restart");
        // Its work item is still labelled in progress: give it back.
        if let Some(work) = followup::claimed_work(sources, &job) {
            followup::report_work(work, &job);
        }
    }
    adoptions
}

/// How long a daemon starting up waits for the container engine to list and remove what a dead one left.
const LEFTOVER_CONTAINERS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn uses_containers(config: &FleetConfig) -> bool {
    config
        .agents
        .iter()
        .any(|agent| agent.container().is_some())
}

/// The containers a previous daemon of this state directory left: labelled with the directory, of jobs that
/// are not running (they were marked interrupted at start). None of them may keep running.
struct LeftoverContainers {
    owner: String,
    /// Weak: a sweep still waiting for the engine must not keep a dropped fleet (and its state directory's
    /// lock) alive.
    fleet: Weak<Shared>,
}

impl LeftoverContainers {
    /// Removes them; `needed` says the fleet uses containers, so that an engine it cannot reach is worth a
    /// warning.
    async fn remove(self, needed: bool) {
        let LeftoverContainers { owner, fleet } = self;
        let running = |job: &str| {
            // A fleet dropped meanwhile knows no longer which jobs run (a new one may, on the same
            // directory): keep everything, for the next start to sweep.
            let Some(shared) = fleet.upgrade() else {
                return true;
            };
            let manager = FleetManager { shared };
            let active = JobId::parse(job).is_ok_and(|id| manager.core().jobs.get(&id).is_some());
            active
        };
        let removal = tokio::time::timeout(
            LEFTOVER_CONTAINERS_TIMEOUT,
            crate::runner::remove_owned_containers(&owner, running),
        )
        .await;
        match removal {
            Ok(Ok(removed)) => {
                for name in removed {
                    tracing::warn!(container = %name, "removed a container a stopped daemon left behind");
                }
            }
            Ok(Err(e)) if needed => {
                tracing::warn!("could not look for containers a stopped daemon left behind: {e}")
            }
            Ok(Err(e)) => tracing::debug!("no container engine to look for leftovers in: {e}"),
            Err(_) => tracing::warn!(
                "the container engine did not list and remove leftover containers within {}s; some may still run",
                LEFTOVER_CONTAINERS_TIMEOUT.as_secs()
            ),
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
