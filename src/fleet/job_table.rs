//! The fleet's jobs that have not finished: each active job, the queue, the running count per agent, the
//! jobs still ending (final record being written) and the ids reserved for records still being written.
//! Every change of a job's state is a method here, so the counts, the queue and the jobs themselves cannot
//! drift apart (the fields are private). An active job's life is a type (`Phase`: queued, or placed with
//! its run: running, or held in a cluster engine's queue); its record is made from it, so no field is set
//! or cleared by hand.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::config::{AgentConfig, ScheduleConfig};
use crate::executor::{Progress, Run, RunCanceller};
use crate::job::{ExecutorRun, Job, JobId, JobStatus};
use crate::runner::{ProcessInfo, RunOutcome};

use super::followup::ClaimedWork;
use super::output::OutputHub;
use super::queue::{JobQueue, QueuedJob};

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

/// A job that has not finished yet. Read through the table; changed only by the table's methods.
pub(super) struct ActiveJob {
    /// The record as the job was created (queued, no process): its status, start and process come from
    /// `phase` ([`record`](Self::record)), so no field of it is ever set or cleared by hand.
    created: Job,
    phase: Phase,
    /// The configuration the job runs with; fixed when it starts (reload does not change a running job).
    pub(super) agent: Option<Arc<AgentConfig>>,
    pub(super) context: RunContext,
    pub(super) hub: OutputHub,
    /// A cancel was asked for: the job is not run again (a resumed session that was gone).
    pub(super) cancel_requested: bool,
    /// The final record, once there is one; `cancelJob` and `wait_for_job` wait on it so they reply after
    /// the effect.
    pub(super) finished: watch::Sender<Option<Job>>,
}

/// Where an active job is in its life.
enum Phase {
    /// In the fleet's queue.
    Queued,
    /// Given a slot and handed to its executor.
    Placed(Placement),
}

/// A job's run, as its executor placed it.
struct Placement {
    /// When its processes started; `None` while a cluster engine holds it in its queue (the job is `queued`
    /// then, and holds its slot).
    started_at: Option<DateTime<Utc>>,
    /// The local leader; `None` on a cluster, or when the spawn failed (the supervisor finalizes that run
    /// from its outcome like any other).
    process: Option<ProcessInfo>,
    /// Where a cluster engine runs it.
    cluster: Option<ExecutorRun>,
    canceller: RunCanceller,
}

impl Placement {
    /// The placement of `run`: a local run has started; a cluster run starts when its engine says so.
    fn of(run: &Run, started_at: Option<DateTime<Utc>>) -> Placement {
        Placement {
            started_at: match run.cluster() {
                None => Some(started_at.unwrap_or_else(Utc::now)),
                Some(_) => started_at,
            },
            process: run.process(),
            cluster: run.cluster().map(|executor| ExecutorRun {
                executor: executor.to_owned(),
                id: None,
                pending_reason: None,
            }),
            canceller: run.canceller(),
        }
    }
}

impl ActiveJob {
    pub(super) fn id(&self) -> &JobId {
        &self.created.id
    }

    pub(super) fn agent_name(&self) -> &str {
        &self.created.agent
    }

    pub(super) fn schedule_name(&self) -> Option<&str> {
        self.created.schedule.as_deref()
    }

    /// Whether the job holds a slot of its agent and of the fleet: running, or handed to a cluster engine
    /// that holds it in its queue.
    pub(super) fn holds_slot(&self) -> bool {
        matches!(self.phase, Phase::Placed(_))
    }

    /// Whether its processes have started (`job:started` was told).
    pub(super) fn has_started(&self) -> bool {
        matches!(&self.phase, Phase::Placed(placed) if placed.started_at.is_some())
    }

    /// The job's record as it is now.
    pub(super) fn record(&self) -> Job {
        let mut job = self.created.clone();
        if let Phase::Placed(placed) = &self.phase {
            job.status = match placed.started_at {
                Some(_) => JobStatus::Running,
                None => JobStatus::Queued,
            };
            job.started_at = placed.started_at;
            job.pid = placed.process.map(|p| p.pid);
            job.pgid = placed.process.map(|p| p.pgid);
            job.process_start_time = placed.process.and_then(|p| p.start_time);
            job.executor_run = placed.cluster.clone();
        }
        job
    }

    /// The job's final record as its run's `outcome` leaves it (a job that never ran has no start);
    /// `output_truncated` when the storage cap dropped lines.
    pub(super) fn final_record(&self, outcome: &RunOutcome, output_truncated: bool) -> Job {
        let mut job = self.created.clone();
        if let Phase::Placed(placed) = &self.phase {
            job.started_at = placed.started_at;
            job.executor_run = placed.cluster.clone();
        }
        job.end(Utc::now(), outcome.status.into(), outcome.exit_reason);
        job.exit_code = outcome.exit_code;
        job.signal = outcome.signal;
        job.summary = outcome.summary.clone();
        job.result = outcome.result.clone();
        job.usage = outcome
            .result
            .as_ref()
            .and_then(crate::job::usage_from_result);
        if outcome.session_id.is_some() {
            job.session_id = outcome.session_id.clone();
        }
        job.error = outcome.error.clone();
        job.output_truncated = output_truncated;
        job
    }
}

/// What a cancel of a running job needs once the lock is released.
pub(super) struct CancelTicket {
    pub(super) canceller: Option<RunCanceller>,
    pub(super) finished: watch::Receiver<Option<Job>>,
    pub(super) agent: Option<Arc<AgentConfig>>,
}

#[derive(Default)]
pub(super) struct JobTable {
    active: HashMap<JobId, ActiveJob>,
    queue: JobQueue,
    /// Ids of jobs whose records are being written (or whose pruned files are being deleted).
    reserved: HashSet<JobId>,
    /// Running jobs per agent, kept in step with `active` so limit checks cost O(1) however long the
    /// queue is.
    running: HashMap<String, usize>,
    /// The queue is being dispatched: a job that ends as it starts (no container engine, agent gone)
    /// frees its slot for that loop instead of dispatching again inside it, one stack frame per job.
    dispatching: bool,
    /// Jobs that ended whose final record is still being written, or whose end pruned history not yet
    /// deleted: the fleet answers for them from here, and their waiters are told after both.
    ending: HashMap<JobId, Ending>,
}

/// A job that has ended, as its waiters will be told.
struct Ending {
    job: Job,
    finished: watch::Receiver<Option<Job>>,
}

impl JobTable {
    pub(super) fn get(&self, id: &JobId) -> Option<&ActiveJob> {
        self.active.get(id)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &ActiveJob> {
        self.active.values()
    }

    /// Whether `id` is an active job's or reserved: a new job must not get it.
    pub(super) fn is_taken(&self, id: &JobId) -> bool {
        self.holds(id) || self.reserved.contains(id)
    }

    /// Whether the table answers for `id`: an active job, or one still ending. Its record file may be
    /// older than the table's copy, so history must neither trust nor prune it.
    pub(super) fn holds(&self, id: &JobId) -> bool {
        self.active.contains_key(id) || self.ending.contains_key(id)
    }

    /// The record of a job the table [`holds`](Self::holds), as it is now.
    pub(super) fn current(&self, id: &JobId) -> Option<Job> {
        match self.active.get(id) {
            Some(active) => Some(active.record()),
            None => self.ending.get(id).map(|ending| ending.job.clone()),
        }
    }

    pub(super) fn queue(&self) -> &JobQueue {
        &self.queue
    }

    pub(super) fn running_count(&self, agent: Option<&str>) -> usize {
        match agent {
            Some(name) => self.running.get(name).copied().unwrap_or(0),
            None => self.running.values().sum(),
        }
    }

    pub(super) fn reserve(&mut self, id: JobId) {
        self.reserved.insert(id);
    }

    pub(super) fn release(&mut self, id: &JobId) {
        self.reserved.remove(id);
    }

    /// A new job, created and not started: queued next, or started.
    pub(super) fn insert(&mut self, job: Job, context: RunContext) {
        let (finished, _) = watch::channel(None);
        self.active.insert(
            job.id.clone(),
            ActiveJob {
                created: job,
                phase: Phase::Queued,
                agent: None,
                context,
                hub: OutputHub::new(),
                cancel_requested: false,
                finished,
            },
        );
    }

    /// Queues an active job that has not started; returns its position.
    pub(super) fn enqueue(&mut self, id: &JobId) -> Option<usize> {
        let job = &self.active.get(id)?.created;
        Some(self.queue.push(&job.agent, id.clone(), job.priority))
    }

    /// Takes every queued job out of the queue, in queue order.
    pub(super) fn dequeue_all(&mut self) -> Vec<JobId> {
        let ids: Vec<JobId> = self.queue.iter().map(|q| q.job_id.clone()).collect();
        for id in &ids {
            self.queue.remove(id);
        }
        ids
    }

    /// Takes the queued jobs `doomed` says to drop out of the queue.
    pub(super) fn dequeue_where(&mut self, doomed: impl Fn(&QueuedJob) -> bool) -> Vec<JobId> {
        let ids: Vec<JobId> = self
            .queue
            .iter()
            .filter(|q| doomed(q))
            .map(|q| q.job_id.clone())
            .collect();
        for id in &ids {
            self.queue.remove(id);
        }
        ids
    }

    /// The session a job is to resume, decided when it starts.
    pub(super) fn set_resume_session(&mut self, id: &JobId, session: Option<String>) {
        if let Some(active) = self.active.get_mut(id) {
            active.context.resume_session = session;
        }
    }

    /// Places an active job with the `run` its executor started for it, and counts it; returns the record
    /// as it is now.
    pub(super) fn start(&mut self, id: &JobId, agent: Arc<AgentConfig>, run: &Run) -> Option<Job> {
        let active = self.active.get_mut(id)?;
        active.agent = Some(agent);
        let placement = Placement::of(run, None);
        self.place(id, placement)
    }

    /// Takes up a cluster run a previous daemon left: its record as read (`queued` or `running`, its
    /// engine's id), its agent if still configured, and the `run` re-attached to it; counted like any run.
    pub(super) fn adopt(
        &mut self,
        job: Job,
        agent: Option<Arc<AgentConfig>>,
        context: RunContext,
        run: &Run,
    ) -> Option<Job> {
        let id = job.id.clone();
        let mut placement = Placement::of(run, job.started_at);
        placement.cluster = job.executor_run.clone();
        self.insert(job, context);
        if let Some(active) = self.active.get_mut(&id) {
            active.agent = agent;
        }
        self.place(&id, placement)
    }

    fn place(&mut self, id: &JobId, placement: Placement) -> Option<Job> {
        let active = self.active.get_mut(id)?;
        let was_placed = active.holds_slot();
        active.phase = Phase::Placed(placement);
        if !was_placed {
            *self
                .running
                .entry(active.created.agent.clone())
                .or_default() += 1;
        }
        Some(active.record())
    }

    /// A placed job's new run (fresh, after its resumed session was gone): its record with the new run.
    pub(super) fn restart(&mut self, id: &JobId, run: &Run) -> Option<Job> {
        let active = self.active.get_mut(id)?;
        let Phase::Placed(placed) = &mut active.phase else {
            return None;
        };
        let started_at = placed.started_at;
        *placed = Placement::of(run, started_at);
        Some(active.record())
    }

    /// A cluster run moved: its record as it is now, and whether its processes started just now.
    pub(super) fn progress(&mut self, id: &JobId, progress: &Progress) -> Option<(Job, bool)> {
        let active = self.active.get_mut(id)?;
        let Phase::Placed(placed) = &mut active.phase else {
            return None;
        };
        let cluster = placed.cluster.as_mut()?;
        let mut started_now = false;
        match progress {
            Progress::Submitted(engine_id) => cluster.id = Some(engine_id.clone()),
            Progress::Pending(reason) => cluster.pending_reason = Some(reason.clone()),
            Progress::Running => {
                cluster.pending_reason = None;
                if placed.started_at.is_none() {
                    placed.started_at = Some(Utc::now());
                    started_now = true;
                }
            }
        }
        Some((active.record(), started_now))
    }

    /// The session a running job resumed, forgotten before it runs again fresh.
    pub(super) fn take_resume_session(&mut self, id: &JobId) -> Option<String> {
        self.active.get_mut(id)?.context.resume_session.take()
    }

    /// Notes that a cancel of a running job was asked for; what the cancel needs after the lock.
    pub(super) fn request_cancel(&mut self, id: &JobId) -> Option<CancelTicket> {
        let active = self.active.get_mut(id)?;
        active.cancel_requested = true;
        let canceller = match &active.phase {
            Phase::Placed(placed) => Some(placed.canceller.clone()),
            Phase::Queued => None,
        };
        Some(CancelTicket {
            canceller,
            finished: active.finished.subscribe(),
            agent: active.agent.clone(),
        })
    }

    /// Removes a job that has ended (run or not) and uncounts it if it was running.
    pub(super) fn finish(&mut self, id: &JobId) -> Option<ActiveJob> {
        let active = self.active.remove(id)?;
        self.queue.remove(id);
        if active.holds_slot() {
            let agent = active.agent_name();
            if let Some(count) = self.running.get_mut(agent) {
                *count -= 1;
                if *count == 0 {
                    self.running.remove(agent);
                }
            }
        }
        Some(active)
    }

    /// A job that ended ([`finish`](Self::finish)) with the final record `job`, held until
    /// [`ended`](Self::ended): its waiters are told once that record is written and the history its end
    /// pruned is deleted.
    pub(super) fn ending(&mut self, job: Job, finished: watch::Receiver<Option<Job>>) {
        self.ending.insert(job.id.clone(), Ending { job, finished });
    }

    pub(super) fn ended(&mut self, id: &JobId) {
        self.ending.remove(id);
    }

    /// What waits for a job's end: an active job's, or one still ending.
    pub(super) fn waiter(&self, id: &JobId) -> Option<watch::Receiver<Option<Job>>> {
        match self.active.get(id) {
            Some(active) => Some(active.finished.subscribe()),
            None => self.ending.get(id).map(|ending| ending.finished.clone()),
        }
    }

    /// Starts a dispatch of the queue unless one is under way (see `dispatching`).
    pub(super) fn begin_dispatch(&mut self) -> bool {
        !std::mem::replace(&mut self.dispatching, true)
    }

    pub(super) fn end_dispatch(&mut self) {
        self.dispatching = false;
    }

    /// The first queued job (priority, then FIFO) whose agent `may_start` given this table's counts.
    pub(super) fn pop_runnable(
        &mut self,
        may_start: impl Fn(&str, &JobTable) -> bool,
    ) -> Option<QueuedJob> {
        let startable: HashSet<String> = self
            .queue
            .iter()
            .map(|q| q.agent.clone())
            .filter(|agent| may_start(agent, self))
            .collect();
        self.queue.pop_runnable(|agent| startable.contains(agent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::TriggerType;

    fn job(agent: &str, suffix: &str) -> Job {
        Job::new(
            JobId::parse(&format!("job-2026-12-03-{suffix}")).unwrap(),
            agent.into(),
            None,
            TriggerType::Manual,
            None,
            5,
            Utc::now(),
        )
    }

    #[test]
    fn a_queued_job_that_finishes_leaves_the_queue_and_no_count() {
        let mut table = JobTable::default();
        let queued = job("a", "aaaaaa");
        let id = queued.id.clone();
        table.insert(queued, RunContext::default());
        assert_eq!(table.enqueue(&id), Some(1));
        assert!(table.finish(&id).is_some());
        assert_eq!(table.queue().len(), 0);
        assert_eq!(table.running_count(None), 0);
        assert!(!table.is_taken(&id));
    }

    #[test]
    fn an_ending_job_is_answered_for_and_waited_for_until_it_has_ended() {
        let mut table = JobTable::default();
        let ended = job("a", "cccccc");
        let id = ended.id.clone();
        table.insert(ended, RunContext::default());
        let active = table.finish(&id).unwrap();
        assert!(table.waiter(&id).is_none() && !table.holds(&id));
        let mut last = active.record();
        last.status = JobStatus::Completed;
        table.ending(last, active.finished.subscribe());
        assert!(table.waiter(&id).is_some() && table.holds(&id) && table.is_taken(&id));
        assert_eq!(
            table.current(&id).map(|j| j.status),
            Some(JobStatus::Completed)
        );
        assert!(table.get(&id).is_none(), "no longer active");
        table.ended(&id);
        assert!(table.waiter(&id).is_none() && table.current(&id).is_none());
    }

    #[test]
    fn reserved_ids_are_taken_until_released() {
        let mut table = JobTable::default();
        let id = JobId::parse("job-2026-12-03-bbbbbb").unwrap();
        table.reserve(id.clone());
        assert!(table.is_taken(&id) && !table.holds(&id));
        table.release(&id);
        assert!(!table.is_taken(&id));
    }
}
