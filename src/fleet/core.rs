//! The fleet's shared state: [`Core`], everything mutable behind the one lock, and the jobs that have not
//! finished yet ([`ActiveJob`]), with the run context and limit policy they are admitted under.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::config::{AgentConfig, FleetConfig, ScheduleConfig};
use crate::job::{Job, JobId};
use crate::metrics::Metrics;
use crate::scheduler::{ScheduleKey, SchedulerHandle};
use crate::state::{DirSync, FleetState as PersistedState, JobStore, StateDir};

use super::error::{FleetError, FleetState};
use super::events::EventBus;
use super::followup::ClaimedWork;
use super::options::FleetManagerOptions;
use super::output::OutputHub;
use super::queue::JobQueue;
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

/// How a job runs beyond its agent's configuration.
#[derive(Debug, Clone, Default)]
pub(super) struct RunContext {
    /// Resume the agent's session pointer if it is still valid (`resume_session` schedules); decided when
    /// the job starts, into `resume_session`.
    pub(super) resume_latest: bool,
    pub(super) resume_session: Option<String>,
    pub(super) fork_session: bool,
    pub(super) schedule: Option<ScheduleConfig>,
    /// The work item this job works on, claimed from its schedule's work source; reported back when the
    /// job ends.
    pub(super) work: Option<ClaimedWork>,
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
    pub(super) fn store(&self) -> Result<&JobStore, FleetError> {
        self.store.as_ref().ok_or_else(not_initialized)
    }

    pub(super) fn config(&self) -> Result<&Arc<FleetConfig>, FleetError> {
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
        when_full: WhenFull,
    ) -> bool {
        let agent_ok = when_full == WhenFull::SkipAtFleetLimit
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
        }
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
