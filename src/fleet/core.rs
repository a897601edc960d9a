//! The fleet's shared state: [`Core`], everything mutable behind the one lock, and the limit policy jobs
//! are admitted under. The jobs that have not finished are its [`JobTable`], whose fields are private;
//! the other fields hold no invariant across each other and are set by the lifecycle directly.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::FleetConfig;
use crate::executor::ExecutorContext;
use crate::job::JobId;
use crate::metrics::Metrics;
use crate::scheduler::{ScheduleKey, SchedulerHandle};
use crate::state::{FleetState as PersistedState, JobStore, StateDir};

use super::error::{FleetError, FleetState};
use super::events::EventBus;
use super::job_table::JobTable;
use super::options::FleetManagerOptions;
use super::record_writer::RecordWriter;
use super::sessions::{SessionBook, SessionWrite};
use super::state_writer::StateWriter;

pub(super) struct Shared {
    pub(super) options: FleetManagerOptions,
    pub(super) events: EventBus,
    pub(super) core: Mutex<Core>,
    /// Signalled whenever a job finishes, so `stop` can wait without polling.
    pub(super) jobs_changed: Arc<Notify>,
    pub(super) metrics: Arc<Metrics>,
}

/// What to do with a job when its agent or the fleet is at its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WhenFull {
    Queue,
    Skip,
    /// Start beyond the agent's own limit (a schedule with `overlap: allow`); skip only when the fleet-wide
    /// limit is reached.
    SkipAtFleetLimit,
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
    /// Writes job records outside the lock; set with `store`, and declared before `state_dir` for the
    /// same reason as `writer`.
    pub(super) records: Option<RecordWriter>,
    pub(super) state_dir: Option<StateDir>,
    /// What every executor shares (the state directory's exchange files, the owner tag); set with
    /// `state_dir`.
    pub(super) executors: Option<ExecutorContext>,
    pub(super) store: Option<JobStore>,
    pub(super) persisted: PersistedState,
    /// The agents' session pointers (`sessions/`).
    pub(super) sessions: SessionBook,
    /// Queued and running jobs; their state changes only through its methods.
    pub(super) jobs: JobTable,
    pub(super) started_at: Option<DateTime<Utc>>,
    pub(super) stopped_at: Option<DateTime<Utc>>,
    pub(super) scheduler: Option<SchedulerHandle>,
    /// The work source of every schedule that has one, built at load.
    pub(super) work_sources: HashMap<ScheduleKey, Arc<dyn crate::work_sources::WorkSource>>,
    pub(super) fire_task: Option<JoinHandle<()>>,
}

impl Core {
    pub(super) fn store(&self) -> Result<&JobStore, FleetError> {
        self.store.as_ref().ok_or_else(not_initialized)
    }

    pub(super) fn config(&self) -> Result<&Arc<FleetConfig>, FleetError> {
        self.config.as_ref().ok_or_else(not_initialized)
    }

    pub(super) fn running_count(&self, agent: Option<&str>) -> usize {
        self.jobs.running_count(agent)
    }

    pub(super) fn fleet_limit(&self, options: &FleetManagerOptions) -> Option<u32> {
        fleet_limit(self.config.as_deref(), options)
    }

    pub(super) fn agent_limit(&self, options: &FleetManagerOptions, agent: &str) -> u32 {
        agent_limit(self.config.as_deref(), options, agent)
    }

    pub(super) fn may_start(
        &self,
        options: &FleetManagerOptions,
        agent: &str,
        when_full: WhenFull,
    ) -> bool {
        may_start(
            self.config.as_deref(),
            options,
            &self.jobs,
            agent,
            when_full,
        )
    }

    /// A new job id used by no stored, active or reserved job (the suffix space is 36^6 a day, so at
    /// thousands of jobs a day two draws do collide now and then).
    pub(super) fn new_job_id(&self, now: DateTime<Utc>) -> JobId {
        first_free_id(
            || JobId::generate(now),
            |id| {
                self.store.as_ref().is_some_and(|store| store.contains(id))
                    || self.jobs.is_taken(id)
            },
        )
    }

    /// [`new_job_id`](Self::new_job_id) for a job whose record is written outside the lock: the id stays
    /// taken until [`release_job_id`](Self::release_job_id), which admission calls.
    pub(super) fn reserve_job_id(&mut self, now: DateTime<Utc>) -> JobId {
        let id = self.new_job_id(now);
        self.jobs.reserve(id.clone());
        id
    }

    pub(super) fn release_job_id(&mut self, id: &JobId) {
        self.jobs.release(id);
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

/// Jobs allowed to run at once in the fleet: the command line's limit, else the fleet file's.
fn fleet_limit(config: Option<&FleetConfig>, options: &FleetManagerOptions) -> Option<u32> {
    options
        .concurrency
        .or_else(|| config.and_then(|c| c.max_concurrent))
}

/// Jobs of `agent` allowed to run at once: its configuration's, else the fleet's per-agent default.
fn agent_limit(config: Option<&FleetConfig>, options: &FleetManagerOptions, agent: &str) -> u32 {
    config
        .and_then(|c| c.agent(agent))
        .and_then(|a| a.concurrency)
        .unwrap_or(options.per_agent)
}

/// Whether a new job of `agent` may start now under the fleet-wide limit, its container limit and, unless
/// `when_full` says to go beyond it, the agent's own. A function of its parts, so the queue's dispatch can ask it while
/// it holds the job table.
pub(super) fn may_start(
    config: Option<&FleetConfig>,
    options: &FleetManagerOptions,
    jobs: &JobTable,
    agent: &str,
    when_full: WhenFull,
) -> bool {
    let running = jobs.running_count(Some(agent));
    let agent_ok = when_full == WhenFull::SkipAtFleetLimit
        || running < agent_limit(config, options, agent) as usize;
    let fleet_ok =
        fleet_limit(config, options).is_none_or(|limit| jobs.running_count(None) < limit as usize);
    let container_ok = container_limit(config, agent).is_none_or(|limit| running < limit as usize);
    agent_ok && fleet_ok && container_ok
}

/// Containers `agent` may have at once (`docker.max_containers`), when its jobs run in containers: a hard
/// limit, whatever a schedule's overlap says.
fn container_limit(config: Option<&FleetConfig>, agent: &str) -> Option<u32> {
    let docker = config?.agent(agent)?.docker.as_ref()?;
    docker.enabled.then_some(docker.max_containers)
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

pub(super) fn not_initialized() -> FleetError {
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

pub(super) fn state_error(path: &std::path::Path, error: impl std::fmt::Display) -> FleetError {
    FleetError::State {
        path: path.display().to_string(),
        message: error.to_string(),
    }
}

impl Core {
    pub(super) fn new() -> Core {
        Core {
            lifecycle: FleetState::Uninitialized,
            config: None,
            // Replaced at initialize, before anything is counted in it.
            host_timezone: chrono_tz::Tz::UTC,
            writer: None,
            records: None,
            state_dir: None,
            executors: None,
            store: None,
            persisted: PersistedState::default(),
            sessions: SessionBook::default(),
            jobs: JobTable::default(),
            started_at: None,
            stopped_at: None,
            scheduler: None,
            work_sources: HashMap::new(),
            fire_task: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

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
