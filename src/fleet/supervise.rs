//! Job execution inside the fleet: admission (start now, queue, or refuse), spawning through the runner,
//! the output pump (disk first, then subscribers), and finalization (record, schedule state, events,
//! pruning, starting queued work).
//!
//! Order of events for one job: `job:created` → (`job:queued`) → `job:started` + `agent:started` →
//! `job:output`* → `agent:stopped` + `job:completed|failed|cancelled`. The pump finishes before the job is
//! finalized, so no output event follows the final one.

use std::path::PathBuf;
use std::sync::{Arc, Weak};

use chrono::Utc;
use tokio::sync::{mpsc, watch};

use crate::executor::{Executor, Progress, ProgressFn, Run, RunFiles};
use crate::job::{
    timestamp_json, ExitReason, Job, JobId, JobStatus, OutputLine, SerializedLines, TerminationType,
};
use crate::runner::{self, OutputEvent, RunOutcome};
use crate::state::{Durability, OutputWriter, PrunedFiles, StagedRecord};

use super::core::{may_start, Core, Shared, WhenFull};
use super::error::FleetState;
use super::events::{report_state_error, EventBus, FleetEvent};
use super::followup;
use super::job_table::RunContext;
use super::manager::FleetManager;
use super::output::OutputHub;
use super::record_writer::{Landing, RecordWrite};
use super::records;
use super::sessions;
use super::spec;

/// Handed out by finalization: wakes whoever waits for the job once its final record is written and the
/// history its end pruned is deleted, and the caller has let go of the fleet (so that a waiter that drops
/// its FleetManager really releases the state directory).
pub(super) struct JobFinished {
    finished: watch::Sender<Option<Job>>,
    job: Job,
    landing: Option<Landing>,
    pruned: Option<Pruned>,
    /// A cluster run's exchange files, removed once the final record is written (until then they are the
    /// run's record).
    run_files: Option<RunFiles>,
    /// The job's output hub: its readers end when it is dropped, once the final record is written, so that
    /// a client told by its stream that the job ended (`herdctl trigger --wait`) finds it ended after a
    /// crash too.
    hub: OutputHub,
    fleet: Weak<Shared>,
    jobs_changed: Arc<tokio::sync::Notify>,
}

impl JobFinished {
    /// Also removes a cluster run's exchange files once the final record is written.
    fn with_run_files(self, run_files: Option<RunFiles>) -> JobFinished {
        JobFinished { run_files, ..self }
    }

    /// Waits, in a task of its own, for the final record to land and the pruned history to be deleted
    /// (in the blocking pool, outside the fleet lock), then tells the job's waiters it has ended. Until
    /// then the job table answers for the job (a waiter then never finds files of a pruned job, nor a
    /// record older than the one it is told).
    pub(super) fn signal(self) {
        tokio::spawn(self.tell_when_written());
    }

    async fn tell_when_written(self) {
        let JobFinished {
            finished,
            job,
            landing,
            pruned,
            run_files,
            hub,
            fleet,
            jobs_changed,
        } = self;
        let landed = match landing {
            Some(landing) => landing.wait().await,
            None => None,
        };
        drop(hub);
        if let Some(files) = run_files {
            files.remove().await;
        }
        let released = match pruned {
            Some(pruned) => pruned.delete().await,
            None => Vec::new(),
        };
        if let Some(shared) = fleet.upgrade() {
            let manager = FleetManager { shared };
            let mut core = manager.core();
            if let Some(landed) = landed {
                records::vouch(&mut core, landed);
            }
            for id in &released {
                core.release_job_id(id);
            }
            core.jobs.ended(&job.id);
        }
        finished.send_replace(Some(job));
        jobs_changed.notify_waiters();
    }
}

/// Jobs pruning took out of the index under the fleet lock; their files are still to be deleted.
pub(super) struct Pruned {
    /// Reserved until their files are gone, so that no new job is given one of these ids meanwhile.
    ids: Vec<JobId>,
    files: PrunedFiles,
    events: EventBus,
}

impl Pruned {
    /// Deletes the files; returns the ids to release.
    async fn delete(self) -> Vec<JobId> {
        let Pruned { ids, files, events } = self;
        let deleted = tokio::task::spawn_blocking(move || files.delete()).await;
        let problem = match deleted {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(format!("the deleting task failed: {e}")),
        };
        if let Some(problem) = problem {
            report_state_error(&events, &format!("pruning job history: {problem}"));
        }
        ids
    }
}

/// Spawns the process of a job that is in `core.active` and not yet running.
pub(super) fn start_job(manager: &FleetManager, core: &mut Core, id: &JobId) {
    let agent = core
        .config
        .as_ref()
        .and_then(|c| Some(c.agent(core.jobs.get(id)?.agent_name())?.clone()));
    let Some(agent) = agent else {
        finish_without_running(manager, core, id, "its agent is no longer configured");
        return;
    };
    let Some(executors) = core.executors.clone() else {
        finish_without_running(manager, core, id, "the fleet is not initialized");
        return;
    };
    let executor = Executor::for_config(&agent.executor, &executors);
    let agent = Arc::new(agent);
    let output_cap = spec::stored_output_cap(&agent);
    let (output_tx, output_rx) = mpsc::channel(OUTPUT_QUEUE);
    let mut first_seq = 0;
    if core.jobs.get(id).is_some_and(|a| a.context.resume_latest) {
        let resumption = core.sessions.resume(&agent, Utc::now());
        core.save_session(resumption.write);
        if let Some(notice) = resumption.notice {
            // The channel is new and empty: the notice is the job's first line.
            let _ = output_tx.try_send(system_notice("session_reset", notice));
            first_seq = 1;
        }
        core.jobs.set_resume_session(id, resumption.session_id);
    }
    let Some(active) = core.jobs.get(id) else {
        return;
    };
    let dotenv = core.config.as_ref().map(|config| &config.dotenv);
    let spec = spec::run_spec(
        &agent,
        &active.record(),
        &active.context,
        dotenv,
        &state_root(core),
    );
    let in_container = spec.container.is_some();
    let hub = active.hub.clone();
    // Started here, on a runtime worker thread: a local child's parent-death signal is tied to this thread.
    let run = executor.start(spec, first_seq, output_tx, progress_of(manager, id));
    let Some(job) = core.jobs.start(id, agent, &run) else {
        return;
    };
    // Not fsynced: the pid matters only if the daemon dies, and the page cache survives that; after a
    // machine crash the process is gone anyway. Creation and the final record are fsynced.
    if let Err(e) = records::put(core, &job, Durability::Process) {
        tracing::error!(job_id = %id, "job runs but its record could not be saved: {e}");
    }
    let output_path = core.store.as_ref().map(|s| s.output_path(id));
    // A root span: a queued job starts while another job is being finalized, and a child of that job's span
    // would chain every later job to it (each log line naming all of them, none ever freed).
    let span = tracing::info_span!(parent: None, "job", agent = %job.agent, job_id = %id);
    span.in_scope(|| match (job.pid, run.cluster()) {
        (Some(pid), _) => tracing::info!(pid, "job started"),
        (None, Some(executor)) => tracing::info!(executor, "job submitted"),
        (None, None) if in_container => tracing::info!("job starting in a container"),
        (None, None) => tracing::debug!("job did not spawn"),
    });
    // A cluster run starts when its engine says so (`progress_of`).
    if run.cluster().is_none() {
        announce_start(manager, &job);
    }
    tokio::spawn(tracing::Instrument::instrument(
        supervise(
            manager.clone(),
            id.clone(),
            run,
            output_rx,
            output_path.map(|path| (path, output_cap)),
            hub,
        ),
        span,
    ));
}

/// `job:started` and `agent:started` for a job whose processes just started.
fn announce_start(manager: &FleetManager, job: &Job) {
    manager.metrics().job_started(&job.agent);
    manager.events().emit(FleetEvent::JobStarted {
        job: Box::new(job.clone()),
    });
    manager.events().emit(FleetEvent::AgentStarted {
        agent_name: job.agent.clone(),
        job_id: job.id.to_string(),
    });
}

/// What a cluster run's moves do to its job: the engine's id is recorded (so a restarted daemon re-attaches
/// to it), a reason to wait in the engine's queue is told as `job:queued` (position 0: not the fleet's
/// queue), and the start of its processes as `job:started` (before its first output line, which the run
/// delivers only after this returns).
pub(super) fn progress_of(manager: &FleetManager, id: &JobId) -> ProgressFn {
    let fleet = Arc::downgrade(&manager.shared);
    let id = id.clone();
    Arc::new(move |progress: Progress| {
        let Some(shared) = fleet.upgrade() else {
            return;
        };
        let manager = FleetManager { shared };
        let mut core = manager.core();
        let Some((job, started_now)) = core.jobs.progress(&id, &progress) else {
            return;
        };
        match progress {
            Progress::Submitted(_) => {
                if let Err(e) = records::put(&mut core, &job, Durability::Process) {
                    tracing::error!(job_id = %id, "the cluster run's id could not be saved: {e}");
                }
            }
            Progress::Pending(reason) => {
                tracing::info!(job_id = %id, reason, "job waits in its cluster engine's queue");
                manager.events().emit(FleetEvent::JobQueued {
                    job: Box::new(job),
                    position: 0,
                });
            }
            Progress::Running if started_now => {
                if let Err(e) = records::put(&mut core, &job, Durability::Process) {
                    tracing::error!(job_id = %id, "job runs but its record could not be saved: {e}");
                }
                tracing::info!(job_id = %id, "job started on its cluster engine");
                announce_start(&manager, &job);
            }
            Progress::Running => {}
        }
    })
}

/// The state directory, which owns the fleet's containers (empty before the fleet is initialized).
fn state_root(core: &Core) -> PathBuf {
    core.state_dir
        .as_ref()
        .map(|dir| dir.root().to_path_buf())
        .unwrap_or_default()
}

/// Output events (each up to a pipe read of lines) queued between a run and its pump; small, so that a
/// pump held back by its readers holds the job back instead of buffering its output.
pub(super) const OUTPUT_QUEUE: usize = 16;

/// Pumps a running job's output and finalizes it when both the process and its output have ended. A run
/// that resumed a session Claude no longer has is run again once, fresh, under the same job.
pub(super) async fn supervise(
    manager: FleetManager,
    id: JobId,
    run: Run,
    output: mpsc::Receiver<OutputEvent>,
    output_file: Option<(PathBuf, u64)>,
    hub: OutputHub,
) {
    let writer = match output_file {
        Some((path, cap)) => open_output(manager.events(), &id, path, cap).await,
        None => None,
    };
    // A run taken up after a daemon restart continues the job's output after what the file has.
    let next_seq = writer
        .as_ref()
        .and_then(OutputWriter::last_seq)
        .map_or(0, |last| last + 1);
    let mut pump = Pump {
        events: manager.events().clone(),
        metrics: manager.metrics().clone(),
        job_id: id.to_string(),
        next_seq,
        writer,
        write_failed: false,
        hub,
    };
    let mut run_files = run.files();
    let mut run = (run, output);
    let outcome = loop {
        let (handle, mut output) = run;
        let (outcome, ()) = tokio::join!(handle.wait(), pump.drain(&mut output));
        match restart_fresh(&manager, &id, outcome, pump.next_seq) {
            AfterRun::Again(next) => {
                run_files = run_files.or_else(|| next.0.files());
                run = *next;
            }
            AfterRun::Stands(outcome) => break outcome,
        }
    };
    let output_truncated = pump.finish().await;
    // The final record is staged (written and fsynced) in the blocking pool before the lock is taken, so
    // that jobs ending together fsync in parallel; the record writer only renames it into place.
    let prepared = {
        let core = manager.core();
        match (core.jobs.get(&id), core.jobs_dir()) {
            (Some(active), Ok(dir)) => Some((active.final_record(&outcome, output_truncated), dir)),
            _ => None,
        }
    };
    let staged = match prepared {
        // A failure is reported; finalization queues the whole write instead.
        Some((job, dir)) => records::stage_record(&manager, &dir, job).await.ok(),
        None => None,
    };
    let finished = finalize_locked(
        &manager,
        &mut manager.core(),
        &id,
        outcome,
        output_truncated,
        staged,
    )
    .map(|finished| finished.with_run_files(run_files));
    drop(manager);
    if let Some(finished) = finished {
        finished.signal();
    }
}

/// Opens the appender of a job's output file, in the blocking pool; a failure is reported and the job
/// runs with its output delivered live but not kept.
async fn open_output(
    events: &EventBus,
    id: &JobId,
    path: PathBuf,
    cap: u64,
) -> Option<OutputWriter> {
    let opened = tokio::task::spawn_blocking(move || OutputWriter::open(path, Some(cap)))
        .await
        .map_err(|e| format!("the opening task failed: {e}"))
        .and_then(|opened| opened.map_err(|e| e.to_string()));
    match opened {
        Ok(writer) => Some(writer),
        Err(e) => {
            report_state_error(events, &format!("job {id}: output not persisted: {e}"));
            None
        }
    }
}

/// Where a job's output goes: a `seq` each, the output file first, then the job's readers and the events.
struct Pump {
    events: super::events::EventBus,
    metrics: Arc<crate::metrics::Metrics>,
    job_id: String,
    next_seq: u64,
    writer: Option<OutputWriter>,
    write_failed: bool,
    hub: OutputHub,
}

/// Output events a pump takes at once: together they get one timestamp, one buffer, one write.
const PUMP_BATCH: usize = 16;

impl Pump {
    /// Takes every event of one run until its output ends.
    async fn drain(&mut self, output: &mut mpsc::Receiver<OutputEvent>) {
        let mut events = Vec::with_capacity(PUMP_BATCH);
        loop {
            events.clear();
            if output.recv_many(&mut events, PUMP_BATCH).await == 0 {
                break;
            }
            // Serialised once: the same bytes are the file's lines and every reader's notifications.
            let lines = self.serialize(events.drain(..));
            if lines.is_empty() {
                continue;
            }
            // Disk first, then subscribers: readers rely on it to join history and live without a gap.
            if let Some(w) = self.writer.as_mut() {
                let written = w.append_lines(&lines).and_then(|()| w.flush());
                if let Err(e) = written {
                    self.report_write_failure(&e);
                }
            }
            // Counted per batch, not per line: two atomic additions whatever the batch's size.
            // Without the newlines, as the metric is documented.
            let json_bytes = lines.as_bytes().len() - lines.len();
            self.metrics.output(lines.len() as u64, json_bytes as u64);
            let lines = Arc::new(lines);
            // Building an event per line costs a parse of it: only when someone listens to them.
            if self.events.wants_output() {
                for index in 0..lines.len() {
                    match serde_json::from_slice::<OutputLine>(lines.json(index)) {
                        Ok(line) => self.events.emit(FleetEvent::JobOutput {
                            job_id: self.job_id.clone(),
                            line: Box::new(line),
                        }),
                        Err(e) => {
                            tracing::error!(seq = lines.seq(index), "output line unreadable: {e}")
                        }
                    }
                }
            }
            self.hub.publish(lines).await;
        }
    }

    /// The lines of `events`, numbered from the next seq, with one timestamp.
    fn serialize(&mut self, events: impl Iterator<Item = OutputEvent>) -> SerializedLines {
        let now = Utc::now();
        let stamp = timestamp_json(&now);
        let mut lines = SerializedLines::default();
        for event in events {
            match event {
                OutputEvent::Text {
                    stream,
                    lines: text,
                } => {
                    for (line, truncated) in text.iter() {
                        lines.push_text(self.next_seq, &stamp, stream.as_str(), line, truncated);
                        self.next_seq += 1;
                    }
                }
                OutputEvent::Message { kind, message } => {
                    let line = OutputLine::structured(self.next_seq, now, kind, message);
                    match lines.push_line(&line) {
                        Ok(()) => self.next_seq += 1,
                        Err(e) => {
                            tracing::error!(seq = line.seq, "output line not serialisable: {e}")
                        }
                    }
                }
                // Numbered by the exec-shim: a seq the output already has was relayed before a restart.
                OutputEvent::Relayed(relayed) => {
                    for line in &relayed {
                        if line.seq < self.next_seq {
                            continue;
                        }
                        match lines.push_line(line) {
                            Ok(()) => self.next_seq = line.seq + 1,
                            Err(e) => {
                                tracing::error!(seq = line.seq, "output line not serialisable: {e}")
                            }
                        }
                    }
                }
            }
        }
        lines
    }

    fn report_write_failure(&mut self, e: &crate::state::StateError) {
        if !self.write_failed {
            self.write_failed = true;
            report_state_error(
                &self.events,
                &format!("job {}: cannot write output: {e}", self.job_id),
            );
        }
    }

    /// Ends the job's output: the storage cap's kept tail joins the file. True when lines were dropped.
    async fn finish(mut self) -> bool {
        let Some(writer) = self.writer.take() else {
            return false;
        };
        let finished = tokio::task::spawn_blocking(move || writer.finish())
            .await
            .map_err(|e| format!("the finishing task failed: {e}"))
            .and_then(|finished| finished.map_err(|e| e.to_string()));
        match finished {
            Ok(dropped) => dropped.is_some(),
            Err(e) => {
                report_state_error(
                    &self.events,
                    &format!("job {}: cannot finish its output file: {e}", self.job_id),
                );
                false
            }
        }
    }
}

/// herdctl's notice when a resumed session is gone and the run starts again without it.
const SESSION_GONE_NOTICE: &str = "Session not found. Retrying with fresh session.";

/// What follows a run of a job.
enum AfterRun {
    /// The job ends with this outcome.
    Stands(RunOutcome),
    /// The job runs again: its new run.
    Again(Box<(Run, mpsc::Receiver<OutputEvent>)>),
}

/// Whether a run that ended with `outcome` is run again, fresh: it resumed a session (not as a fork)
/// that Claude did not find. A cancel that came before that run ends the job cancelled instead.
fn run_again_fresh(context: &RunContext, cancel_requested: bool, outcome: &mut RunOutcome) -> bool {
    if context.fork_session
        || context.resume_session.is_none()
        || outcome.status != runner::RunStatus::Failed
        || !sessions::names_dead_session(outcome.error.as_ref())
    {
        return false;
    }
    if cancel_requested {
        outcome.status = runner::RunStatus::Cancelled;
        outcome.exit_reason = ExitReason::Cancelled;
        outcome.termination = Some(TerminationType::Graceful);
        return false;
    }
    true
}

/// After a run that resumed a session Claude did not find (and was not cancelled): the agent's pointer
/// is cleared and the job runs again, fresh, once, on the same executor; its output follows the run
/// before's, whose next seq is `next_seq`.
fn restart_fresh(
    manager: &FleetManager,
    id: &JobId,
    mut outcome: RunOutcome,
    next_seq: u64,
) -> AfterRun {
    let mut core = manager.core();
    let core = &mut *core;
    let Some(active) = core.jobs.get(id) else {
        return AfterRun::Stands(outcome);
    };
    let Some(agent) = active.agent.clone() else {
        return AfterRun::Stands(outcome);
    };
    if !run_again_fresh(&active.context, active.cancel_requested, &mut outcome) {
        return AfterRun::Stands(outcome);
    }
    let gone = core.jobs.take_resume_session(id);
    tracing::warn!(job_id = %id, session = gone.as_deref().unwrap_or(""), "resumed session not found; running again with a fresh session");
    let (Some(active), Some(executors)) = (core.jobs.get(id), core.executors.as_ref()) else {
        return AfterRun::Stands(outcome);
    };
    let spec = spec::run_spec(
        &agent,
        &active.record(),
        &active.context,
        core.config.as_ref().map(|config| &config.dotenv),
        &state_root(core),
    );
    let (output_tx, output_rx) = mpsc::channel(OUTPUT_QUEUE);
    let _ = output_tx.try_send(system_notice(
        "session_reset",
        SESSION_GONE_NOTICE.to_owned(),
    ));
    let executor = Executor::for_config(&agent.executor, executors);
    let run = executor.start(spec, next_seq + 1, output_tx, progress_of(manager, id));
    let Some(job) = core.jobs.restart(id, &run) else {
        return AfterRun::Stands(outcome);
    };
    let write = gone
        .as_deref()
        .and_then(|session| core.sessions.forget(&agent.name, session));
    core.save_session(write);
    if let Err(e) = records::put(core, &job, Durability::Process) {
        tracing::error!(job_id = %id, "job runs again but its record could not be saved: {e}");
    }
    AfterRun::Again(Box::new((run, output_rx)))
}

/// Makes a job's record final from its run outcome, and does everything that follows a job's end. The
/// record is `staged` already (written and fsynced outside the lock) or written whole; either way the
/// record writer lands it, and until then the job table answers for the job as ending. The caller
/// signals the returned [`JobFinished`] after releasing the lock.
#[must_use]
fn finalize_locked(
    manager: &FleetManager,
    core: &mut Core,
    id: &JobId,
    outcome: RunOutcome,
    output_truncated: bool,
    staged: Option<StagedRecord>,
) -> Option<JobFinished> {
    let active = core.jobs.finish(id)?;
    let (job, write) = match staged {
        Some(staged) => (staged.job().clone(), RecordWrite::Publish(staged)),
        None => {
            let job = active.final_record(&outcome, output_truncated);
            (job.clone(), RecordWrite::Put(job, Durability::Machine))
        }
    };
    let landing = match records::queue(core, write) {
        Ok(landing) => Some(landing),
        Err(e) => {
            tracing::error!(job_id = %id, "final record not saved: {e}");
            None
        }
    };
    core.jobs.ending(job.clone(), active.finished.subscribe());
    manager.metrics().job_finished(&job);
    if record_in_fleet_state(core, &job) {
        core.save_persisted();
    }
    if let Some(agent) = active.agent.as_ref() {
        let resumed = active.context.resume_session.as_deref();
        let write = core.sessions.finished(agent, &job, resumed, Utc::now());
        core.save_session(write);
    }

    let level_failed = job.status == JobStatus::Failed;
    if level_failed {
        tracing::warn!(agent = %job.agent, job_id = %id, exit_reason = ?job.exit_reason,
            error = job.error.as_ref().map(|e| e.message.as_str()).unwrap_or(""), "job failed");
    } else {
        tracing::info!(agent = %job.agent, job_id = %id, status = %job.status, "job finished");
    }
    let events = manager.events();
    if active.has_started() {
        events.emit(FleetEvent::AgentStopped {
            agent_name: job.agent.clone(),
            job_id: id.to_string(),
            reason: job.status.to_string(),
        });
    }
    let boxed = Box::new(job.clone());
    match job.status {
        JobStatus::Completed => events.emit(FleetEvent::JobCompleted {
            job_id: id.to_string(),
            result: job.result.clone(),
            job: boxed,
        }),
        JobStatus::Cancelled => events.emit(FleetEvent::JobCancelled {
            job_id: id.to_string(),
            termination_type: outcome.termination.unwrap_or(TerminationType::Graceful),
            job: boxed,
        }),
        _ => events.emit(FleetEvent::JobFailed {
            job_id: id.to_string(),
            error: job.error.clone(),
            job: boxed,
        }),
    }
    if let Some(work) = active.context.work {
        followup::report_work(work, &job);
    }
    if let (Some(agent), Some(config)) = (active.agent.as_ref(), core.config.as_ref()) {
        followup::run_hooks(agent, config, &job);
    }
    let pruned = prune(manager, core);
    dispatch_queue(manager, core);
    // Waiters of `finished` get the final record (which pruning may already have deleted from the store).
    Some(JobFinished {
        finished: active.finished,
        job,
        landing,
        pruned,
        run_files: None,
        hub: active.hub,
        fleet: Arc::downgrade(&manager.shared),
        jobs_changed: manager.shared.jobs_changed.clone(),
    })
}

/// Ends a job that never ran (cancelled while queued, fleet stopped, agent removed).
pub(super) fn finish_without_running(
    manager: &FleetManager,
    core: &mut Core,
    id: &JobId,
    reason: &str,
) {
    let outcome = RunOutcome {
        termination: Some(TerminationType::Graceful),
        ..RunOutcome::without_process(
            runner::RunStatus::Cancelled,
            ExitReason::Cancelled,
            "CANCELLED",
            reason.to_string(),
        )
    };
    if let Some(finished) = finalize_locked(manager, core, id, outcome, false, None) {
        finished.signal();
    }
}

/// A line of herdctld's own in a job's output: a `system` line whose message is `{subtype, content}`, as
/// herdctl writes its notices.
fn system_notice(subtype: &str, content: String) -> OutputEvent {
    let mut data = serde_json::Map::new();
    data.insert("subtype".into(), subtype.into());
    data.insert("content".into(), content.into());
    OutputEvent::Message {
        kind: "system".into(),
        message: data,
    }
}

/// Updates schedule state from a finished job; returns whether anything changed.
fn record_in_fleet_state(core: &mut Core, job: &Job) -> bool {
    let mut changed = false;
    if let Some(schedule) = job.schedule.as_deref() {
        changed = true;
        let state = core.persisted.schedule_mut(&job.agent, schedule);
        state.last_status = Some(job.status);
        match job.status {
            JobStatus::Failed => {
                state.failed += 1;
                state.last_error = job.error.as_ref().map(|e| e.message.clone());
            }
            JobStatus::Completed => state.last_error = None,
            _ => {}
        }
    }
    changed
}

/// Applies the history limits after a job's end: what goes leaves the index now, and its files are
/// deleted once the lock is released ([`JobFinished::signal`]). Jobs the table holds are kept: their
/// records may still be being written.
fn prune(manager: &FleetManager, core: &mut Core) -> Option<Pruned> {
    let retention = manager.options().history.retention(core.config.as_deref());
    let Core { store, jobs, .. } = core;
    let store = store.as_mut()?;
    let plan = store.plan_prune(&retention, Utc::now(), &|id| jobs.holds(id));
    if plan.doomed.is_empty() {
        return None;
    }
    tracing::debug!(removed = plan.doomed.len(), "pruned job history");
    let files = store.forget(&plan.doomed);
    for id in &plan.doomed {
        jobs.reserve(id.clone());
    }
    Some(Pruned {
        ids: plan.doomed,
        files,
        events: manager.events().clone(),
    })
}

/// Starts queued jobs, in priority/FIFO order, while their agents and the fleet have free slots.
pub(super) fn dispatch_queue(manager: &FleetManager, core: &mut Core) {
    if matches!(
        core.lifecycle,
        FleetState::Stopping | FleetState::Uninitialized
    ) || !core.jobs.begin_dispatch()
    {
        return;
    }
    let options = manager.options();
    loop {
        let config = core.config.clone();
        let next = core.jobs.pop_runnable(|agent, jobs| {
            may_start(config.as_deref(), options, jobs, agent, WhenFull::Queue)
        });
        let Some(next) = next else {
            break;
        };
        start_job(manager, core, &next.job_id);
    }
    core.jobs.end_dispatch();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_session_failure() -> RunOutcome {
        RunOutcome::without_process(
            runner::RunStatus::Failed,
            ExitReason::Error,
            "RESULT_ERROR",
            "No conversation found with session ID: s-1".into(),
        )
    }

    fn resuming(session: &str) -> RunContext {
        RunContext {
            resume_session: Some(session.into()),
            ..RunContext::default()
        }
    }

    #[test]
    fn a_resumed_session_claude_did_not_find_runs_again_unless_cancelled_or_forked() {
        let mut outcome = dead_session_failure();
        assert!(run_again_fresh(&resuming("s-1"), false, &mut outcome));

        let mut cancelled = dead_session_failure();
        assert!(!run_again_fresh(&resuming("s-1"), true, &mut cancelled));
        assert_eq!(cancelled.status, runner::RunStatus::Cancelled);
        assert_eq!(cancelled.exit_reason, ExitReason::Cancelled);

        let fork = RunContext {
            fork_session: true,
            ..resuming("s-1")
        };
        let mut stands = dead_session_failure();
        assert!(!run_again_fresh(&fork, false, &mut stands));
        assert_eq!(stands.status, runner::RunStatus::Failed);
        let mut fresh = dead_session_failure();
        assert!(!run_again_fresh(&RunContext::default(), false, &mut fresh));
        assert_eq!(fresh.status, runner::RunStatus::Failed);
    }
}
