//! The driver of a cluster run, the same for every engine: submit (or take up a run already submitted), relay
//! the shim's framed output as it is written, follow the engine's state, cancel in two phases, and decide the
//! outcome from the shim's record and the engine's state.
//!
//! Relaying is by polling (the output every [`OUTPUT_POLL`], the engine less often): on a shared filesystem a
//! change notification from another node never arrives, and one poll of a file is cheap. Lines keep the seq the
//! shim gave them; the fleet's pump drops those its output already has, so relaying again from the start after
//! a daemon restart loses and duplicates nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, Instant};

use super::frame::{self, Parsed};
use super::shim::{ShimSpec, SHIM_MARGIN};
use super::{
    CancelRequest, EndKind, Engine, EngineEnd, EngineState, ProgressFn, Run, RunCanceller,
    RunFiles, RunWait,
};
use crate::job::{ExitReason, JobError, JobId, TerminationType};
use crate::runner::{OutputEvent, RunOutcome, RunStatus};

/// How often the shim's output is read for new lines.
const OUTPUT_POLL: Duration = Duration::from_millis(100);
/// How often the engine is asked about a run it has not started (its start usually shows first as output).
const PENDING_POLL: Duration = Duration::from_millis(500);
/// How often the engine is asked about a running run: its output says it lives; this catches an end without
/// an outcome (a lost node, the engine's time limit, a cancel from outside).
const RUNNING_POLL: Duration = Duration::from_secs(2);
/// How long after the shim's outcome the engine may still report the run as running (its cleanup) before the
/// outcome is taken as final anyway.
const SETTLE_MAX: Duration = Duration::from_secs(30);
/// How long after a forced stop an engine that cannot be asked about the run is asked again, before the
/// run counts as ended (cancelled) without its word.
const UNANSWERED_STOP_MAX: Duration = Duration::from_secs(60);
/// How long the output may lag behind the engine's report that the shim exited (a shared filesystem's
/// caches), looked at again before the run counts as ended without an outcome.
const FINAL_READ_MAX: Duration = Duration::from_secs(2);

/// How a cluster run moves, told to the fleet ([`ProgressFn`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The engine took the run: its id there.
    Submitted(String),
    /// The engine holds the run in its queue, for this reason (told again when the reason changes).
    Pending(String),
    /// The run's processes run.
    Running,
}

pub(super) fn start(
    engine: Arc<dyn Engine>,
    spec: ShimSpec,
    output: mpsc::Sender<OutputEvent>,
    progress: ProgressFn,
) -> Run {
    let job = JobId::parse(&spec.run.job_id);
    spawn_driver(engine, job, Start::Submit(Box::new(spec)), output, progress)
}

pub(super) fn reattach(
    engine: Arc<dyn Engine>,
    job: JobId,
    engine_id: String,
    output: mpsc::Sender<OutputEvent>,
    progress: ProgressFn,
) -> Run {
    spawn_driver(engine, Ok(job), Start::Attach(engine_id), output, progress)
}

enum Start {
    Submit(Box<ShimSpec>),
    Attach(String),
}

fn spawn_driver(
    engine: Arc<dyn Engine>,
    job: Result<JobId, crate::job::InvalidJobId>,
    start: Start,
    output: mpsc::Sender<OutputEvent>,
    progress: ProgressFn,
) -> Run {
    let (requests, cancels) = mpsc::channel(16);
    let cluster = engine.name();
    let files = job.as_ref().ok().map(|job| RunFiles {
        engine: engine.clone(),
        job: job.clone(),
    });
    let task = tokio::spawn(async move {
        let job = match job {
            Ok(job) => job,
            Err(e) => return failed(ExitReason::SpawnFailed, "SUBMIT_FAILED", e.to_string()),
        };
        let driver = Driver {
            engine,
            job,
            output,
            progress,
        };
        driver.drive(start, cancels).await
    });
    Run {
        process: None,
        cluster: Some(cluster),
        files,
        canceller: RunCanceller::Cluster(requests),
        outcome: RunWait::Cluster(task),
    }
}

fn failed(exit_reason: ExitReason, code: &str, message: String) -> RunOutcome {
    RunOutcome::without_process(RunStatus::Failed, exit_reason, code, message)
}

struct Driver {
    engine: Arc<dyn Engine>,
    job: JobId,
    output: mpsc::Sender<OutputEvent>,
    progress: ProgressFn,
}

/// What the fleet has been told about the run.
#[derive(Debug, Default, PartialEq, Eq)]
enum Told {
    #[default]
    Submitted,
    Pending(String),
    Running,
}

/// A cancel in progress.
#[derive(Default)]
struct Stop {
    requested: bool,
    /// When the engine is to stop the run by force.
    force_at: Option<Instant>,
    forced: bool,
    /// When the engine was last told to end the run by force.
    killed_at: Option<Instant>,
    /// The run had ended when the first request came.
    after_end: bool,
    /// When the shim, asked to stop, kills the job (it gives the job the grace it was told).
    shim_kill_at: Option<Instant>,
    waiters: Vec<oneshot::Sender<TerminationType>>,
}

impl Driver {
    async fn drive(self, start: Start, mut cancels: mpsc::Receiver<CancelRequest>) -> RunOutcome {
        let id = match start {
            Start::Attach(id) => id,
            Start::Submit(spec) => match self.submit(&spec).await {
                Ok(id) => id,
                Err(outcome) => return outcome,
            },
        };
        (self.progress)(Progress::Submitted(id.clone()));
        let mut relay = Relay::default();
        let mut told = Told::Submitted;
        let mut stop = Stop::default();
        let mut next_poll = Instant::now();
        let mut settle_until: Option<Instant> = None;
        let mut cancels_open = true;
        let mut error_logged = false;
        let end = loop {
            self.relay(&mut relay, &mut told).await;
            let now = Instant::now();
            if relay.outcome.is_some() && settle_until.is_none() {
                settle_until = Some(now + SETTLE_MAX);
            }
            if now >= next_poll || relay.outcome.is_some() {
                match self.engine.state(&id, relay.outcome.is_some()).await {
                    Ok(EngineState::Pending(reason)) => {
                        if reason != "None" && told != Told::Pending(reason.clone()) {
                            (self.progress)(Progress::Pending(reason.clone()));
                            told = Told::Pending(reason);
                        }
                        next_poll = now + PENDING_POLL;
                    }
                    Ok(EngineState::Running) => {
                        self.tell_running(&mut told);
                        next_poll = now + RUNNING_POLL;
                    }
                    Ok(EngineState::Ended(end)) => break Some(end),
                    Ok(EngineState::Unknown) => break None,
                    Err(e) => {
                        if !error_logged {
                            tracing::warn!(job_id = %self.job, engine_id = %id, "cannot read the run's state (asking again): {e}");
                            error_logged = true;
                        }
                        if stop
                            .killed_at
                            .is_some_and(|at| now >= at + UNANSWERED_STOP_MAX)
                        {
                            tracing::error!(job_id = %self.job, engine_id = %id, "the engine has not answered since the run was stopped by force; taking the run as ended");
                            break None;
                        }
                        next_poll = now + RUNNING_POLL;
                    }
                }
            }
            if settle_until.is_some_and(|until| now >= until) {
                tracing::warn!(job_id = %self.job, engine_id = %id, "the engine still reports the run {SETTLE_MAX:?} after its outcome; taking the outcome");
                break None;
            }
            if !stop.forced && stop.force_at.is_some_and(|at| now >= at) {
                self.kill(&id, &mut stop).await;
                stop.forced = true;
            }
            tokio::select! {
                request = cancels.recv(), if cancels_open => match request {
                    Some(request) => self.on_cancel(&id, request, &mut stop, &relay, &told).await,
                    None => cancels_open = false,
                },
                () = sleep(OUTPUT_POLL) => {}
            }
        };
        self.finish_relay(&mut relay, &mut told, end.as_ref()).await;
        let diagnostics = match relay.outcome {
            Some(_) => String::new(),
            None => self.engine.diagnostics(&self.job).await,
        };
        let outcome = decide(
            self.engine.name(),
            relay.outcome.map(|outcome| *outcome),
            end.as_ref(),
            &stop,
            &diagnostics,
        );
        cancels.close();
        let termination = if stop.after_end {
            TerminationType::AlreadyStopped
        } else {
            outcome
                .termination
                .unwrap_or(TerminationType::AlreadyStopped)
        };
        for waiter in stop.waiters {
            let _ = waiter.send(termination);
        }
        while let Ok(late) = cancels.try_recv() {
            let _ = late.reply.send(TerminationType::AlreadyStopped);
        }
        outcome
    }

    async fn submit(&self, spec: &ShimSpec) -> Result<String, RunOutcome> {
        let bytes = serde_json::to_vec(spec).map_err(|e| {
            failed(
                ExitReason::SpawnFailed,
                "SUBMIT_FAILED",
                format!("the run spec is not serialisable: {e}"),
            )
        })?;
        self.engine.submit(&self.job, &bytes).await.map_err(|e| {
            failed(
                ExitReason::SpawnFailed,
                "SUBMIT_FAILED",
                format!("could not submit the job to {}: {e}", self.engine.name()),
            )
        })
    }

    fn tell_running(&self, told: &mut Told) {
        if *told != Told::Running {
            (self.progress)(Progress::Running);
            *told = Told::Running;
        }
    }

    /// Reads what the shim wrote since the last read and delivers its lines (the run is running, if it was
    /// not said yet, before its first line).
    async fn relay(&self, relay: &mut Relay, told: &mut Told) {
        loop {
            let bytes = match self.engine.read_output(&self.job, relay.offset).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::debug!(job_id = %self.job, "cannot read the run's output yet: {e}");
                    return;
                }
            };
            if bytes.is_empty() {
                return;
            }
            self.tell_running(told);
            relay.offset += bytes.len() as u64;
            relay.pending.extend_from_slice(&bytes);
            let mut lines = Vec::new();
            for parsed in frame::take_complete(&mut relay.pending) {
                match parsed {
                    Parsed::Line(line) => lines.push(line),
                    Parsed::Outcome(outcome) => relay.outcome = Some(outcome),
                    Parsed::NotOurs => relay.not_ours += 1,
                }
            }
            if !lines.is_empty() {
                // A pump that stopped listening does not stop the run; the outcome is still decided.
                let _ = self.output.send(OutputEvent::Relayed(lines)).await;
            }
        }
    }

    /// The last reads once the engine says the run ended: what the shim wrote last, waiting briefly for an
    /// outcome a shim that exited normally must have written.
    async fn finish_relay(&self, relay: &mut Relay, told: &mut Told, end: Option<&EngineEnd>) {
        self.relay(relay, told).await;
        let exited_normally =
            end.is_some_and(|end| end.kind == EndKind::Exited && end.signal.is_none());
        let deadline = Instant::now() + FINAL_READ_MAX;
        while relay.outcome.is_none() && exited_normally && Instant::now() < deadline {
            sleep(OUTPUT_POLL).await;
            self.relay(relay, told).await;
        }
        if relay.not_ours > 0 {
            tracing::debug!(job_id = %self.job, lines = relay.not_ours, "skipped lines in the run's output that are not the shim's");
        }
    }

    async fn on_cancel(
        &self,
        id: &str,
        request: CancelRequest,
        stop: &mut Stop,
        relay: &Relay,
        told: &Told,
    ) {
        stop.waiters.push(request.reply);
        let now = Instant::now();
        if stop.requested {
            // Only a request that ends the job sooner changes anything. The shim is told (a grace file
            // never grows, so two signals that arrive as one still give the shortest), and so is the
            // backstop.
            let kill_at = now + request.grace;
            let force_at = match stop.shim_kill_at {
                Some(shim_kill_at) if !stop.forced => {
                    if kill_at >= shim_kill_at {
                        return;
                    }
                    match self.engine.stop(id, &self.job, request.grace).await {
                        Ok(()) => {
                            stop.shim_kill_at = Some(kill_at);
                            kill_at + SHIM_MARGIN
                        }
                        Err(_) => kill_at,
                    }
                }
                _ => kill_at,
            };
            stop.force_at = Some(
                stop.force_at
                    .map_or(force_at, |existing| existing.min(force_at)),
            );
            return;
        }
        stop.requested = true;
        if relay.outcome.is_some() {
            stop.after_end = true;
            return;
        }
        if *told != Told::Running {
            // Not started: nothing to stop gracefully; the engine drops it from its queue.
            self.kill(id, stop).await;
            return;
        }
        if let Err(e) = self.engine.stop(id, &self.job, request.grace).await {
            tracing::info!(job_id = %self.job, engine_id = %id, "could not ask the shim to stop ({e}); stopping the run by force");
            self.kill(id, stop).await;
            stop.forced = true;
            return;
        }
        stop.shim_kill_at = Some(now + request.grace);
        // The shim gives the job the caller's grace itself; the engine's forced stop is the backstop for a
        // shim that does not answer.
        stop.force_at = Some(now + request.grace + SHIM_MARGIN);
    }

    async fn kill(&self, id: &str, stop: &mut Stop) {
        stop.killed_at = Some(Instant::now());
        if let Err(e) = self.engine.kill(id).await {
            tracing::warn!(job_id = %self.job, engine_id = %id, "could not stop the run by force: {e}");
        }
    }
}

/// Where the relay of one run's output is.
#[derive(Default)]
struct Relay {
    /// Bytes of the shim's output read so far.
    offset: u64,
    /// Read bytes of a line not yet complete.
    pending: Vec<u8>,
    outcome: Option<Box<RunOutcome>>,
    not_ours: usize,
}

/// The outcome of a cluster run: the shim's when it wrote one (corrected for what only the engine knows: its
/// time limit, a forced stop), else what the engine's state says.
fn decide(
    engine: &str,
    shim: Option<RunOutcome>,
    end: Option<&EngineEnd>,
    stop: &Stop,
    diagnostics: &str,
) -> RunOutcome {
    let time_limit = end.is_some_and(|end| end.kind == EndKind::TimeLimit);
    let error = |code: &str, message: String| {
        Some(JobError {
            code: code.to_owned(),
            message,
        })
    };
    if let Some(mut outcome) = shim {
        if time_limit && !stop.requested {
            outcome.status = RunStatus::Failed;
            outcome.exit_reason = ExitReason::Timeout;
            outcome.error = error(
                "TIMEOUT",
                format!("{engine}'s time limit (executor.time) ended the job"),
            );
        }
        if stop.forced && outcome.status == RunStatus::Cancelled {
            outcome.termination = Some(TerminationType::Forced);
        }
        return outcome;
    }
    let mut outcome = RunOutcome {
        exit_code: end.and_then(|end| end.exit_code),
        signal: end.and_then(|end| end.signal),
        ..failed(ExitReason::Error, "", String::new())
    };
    let with_diagnostics = |message: String| {
        if diagnostics.trim().is_empty() {
            message
        } else {
            format!("{message}; its stderr:\n{}", diagnostics.trim_end())
        }
    };
    if stop.requested {
        outcome.status = RunStatus::Cancelled;
        outcome.exit_reason = ExitReason::Cancelled;
        outcome.error = None;
        outcome.termination = Some(if stop.forced {
            TerminationType::Forced
        } else {
            TerminationType::Graceful
        });
        return outcome;
    }
    let (status, reason, code, message) = match end {
        None => (
            RunStatus::Failed,
            ExitReason::Interrupted,
            "INTERRUPTED",
            format!("{engine} no longer knows the job's run and its exec-shim left no outcome"),
        ),
        Some(end) => match end.kind {
            EndKind::TimeLimit => (
                RunStatus::Failed,
                ExitReason::Timeout,
                "TIMEOUT",
                format!("{engine}'s time limit (executor.time) ended the job"),
            ),
            EndKind::Cancelled => (
                RunStatus::Cancelled,
                ExitReason::Cancelled,
                "ENGINE_CANCELLED",
                format!(
                    "the run was cancelled in {engine}, not through herdctld ({})",
                    end.state
                ),
            ),
            EndKind::OutOfMemory => (
                RunStatus::Failed,
                ExitReason::Error,
                "OUT_OF_MEMORY",
                format!("{engine} ended the job for using more memory than executor.mem allows"),
            ),
            EndKind::Lost => (
                RunStatus::Failed,
                ExitReason::Error,
                "ENGINE_LOST",
                with_diagnostics(format!("{engine} reports the run {}", end.state)),
            ),
            EndKind::Exited => (
                RunStatus::Failed,
                ExitReason::Error,
                "NO_OUTCOME",
                with_diagnostics(format!(
                    "the exec-shim ended ({} {}) without an outcome",
                    end.state,
                    exit_description(end)
                )),
            ),
        },
    };
    outcome.status = status;
    outcome.exit_reason = reason;
    outcome.error = error(code, message);
    outcome
}

fn exit_description(end: &EngineEnd) -> String {
    match (end.exit_code, end.signal) {
        (_, Some(signal)) => format!("killed by signal {signal}"),
        (Some(code), None) => format!("exit code {code}"),
        (None, None) => "exit status unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{EngineError, OwnedRun};
    use crate::job::OutputLine;

    /// An engine that has forgotten its run (Slurm after `MinJobAge`), whose shim left `output`.
    struct Forgetful {
        output: Vec<u8>,
    }

    #[async_trait::async_trait]
    impl Engine for Forgetful {
        fn name(&self) -> &'static str {
            "fake"
        }
        async fn submit(&self, _: &JobId, _: &[u8]) -> Result<String, EngineError> {
            Ok("1".into())
        }
        async fn state(&self, _: &str, _: bool) -> Result<EngineState, EngineError> {
            Ok(EngineState::Unknown)
        }
        async fn stop(&self, _: &str, _: &JobId, _: Duration) -> Result<(), EngineError> {
            Ok(())
        }
        async fn kill(&self, _: &str) -> Result<(), EngineError> {
            Ok(())
        }
        async fn read_output(&self, _: &JobId, offset: u64) -> Result<Vec<u8>, EngineError> {
            Ok(self.output[offset as usize..].to_vec())
        }
        async fn diagnostics(&self, _: &JobId) -> String {
            String::new()
        }
        async fn clean_up(&self, _: &JobId) {}
        async fn owned(&self) -> Result<Vec<OwnedRun>, EngineError> {
            Ok(Vec::new())
        }
    }

    fn frames(lines: u64, outcome: Option<&RunOutcome>) -> Vec<u8> {
        let mut bytes = Vec::new();
        for seq in 0..lines {
            let line = OutputLine {
                seq,
                timestamp: chrono::Utc::now(),
                kind: "stdout".into(),
                chunk: format!("line {seq}"),
                message: None,
                truncated: false,
            };
            bytes.extend(serde_json::to_vec(&frame::Frame::line(line)).unwrap());
            bytes.push(b'\n');
        }
        bytes.extend(b"slurmstepd: error: not the shim's\n");
        if let Some(outcome) = outcome {
            bytes.extend(serde_json::to_vec(&frame::Frame::outcome(outcome.clone())).unwrap());
            bytes.push(b'\n');
        }
        bytes
    }

    async fn reattached(output: Vec<u8>) -> (RunOutcome, Vec<u64>) {
        let (tx, mut rx) = mpsc::channel(16);
        let progress: ProgressFn = Arc::new(|_| {});
        let run = reattach(
            Arc::new(Forgetful { output }),
            JobId::parse("job-2026-12-07-abc123").unwrap(),
            "1".into(),
            tx,
            progress,
        );
        let outcome = run.wait().await;
        let mut seqs = Vec::new();
        while let Ok(OutputEvent::Relayed(lines)) = rx.try_recv() {
            seqs.extend(lines.iter().map(|line| line.seq));
        }
        (outcome, seqs)
    }

    #[tokio::test]
    async fn a_run_the_engine_forgot_is_finalized_from_its_shims_outcome_or_interrupted() {
        let completed = completed();
        let (outcome, seqs) = reattached(frames(3, Some(&completed))).await;
        assert_eq!((outcome, seqs), (completed, vec![0, 1, 2]));

        let (outcome, seqs) = reattached(frames(2, None)).await;
        assert_eq!(outcome.exit_reason, ExitReason::Interrupted);
        assert_eq!(seqs, vec![0, 1], "its output is still relayed");
    }

    fn completed() -> RunOutcome {
        RunOutcome {
            exit_code: Some(0),
            ..RunOutcome::without_process(
                RunStatus::Completed,
                ExitReason::Success,
                "",
                String::new(),
            )
        }
    }

    fn end(kind: EndKind, state: &str, code: i32, signal: Option<i32>) -> EngineEnd {
        EngineEnd {
            state: state.into(),
            kind,
            exit_code: Some(code),
            signal,
        }
    }

    fn cancelled_by_shim(termination: TerminationType) -> RunOutcome {
        RunOutcome {
            termination: Some(termination),
            ..RunOutcome::without_process(
                RunStatus::Cancelled,
                ExitReason::Cancelled,
                "CANCELLED",
                String::new(),
            )
        }
    }

    #[test]
    fn the_shims_outcome_stands_unless_the_engines_time_limit_or_a_forced_stop_says_more() {
        let completed = completed();
        let quiet = Stop::default();
        let done = end(EndKind::Exited, "COMPLETED", 0, None);
        assert_eq!(
            decide("slurm", Some(completed.clone()), Some(&done), &quiet, ""),
            completed
        );

        let timed_out = decide(
            "slurm",
            Some(cancelled_by_shim(TerminationType::Graceful)),
            Some(&end(EndKind::TimeLimit, "TIMEOUT", 0, Some(15))),
            &quiet,
            "",
        );
        assert_eq!(
            (timed_out.status, timed_out.exit_reason),
            (RunStatus::Failed, ExitReason::Timeout)
        );

        let forced = Stop {
            requested: true,
            forced: true,
            ..Stop::default()
        };
        let outcome = decide(
            "slurm",
            Some(cancelled_by_shim(TerminationType::Graceful)),
            None,
            &forced,
            "",
        );
        assert_eq!(outcome.termination, Some(TerminationType::Forced));
    }

    #[test]
    fn without_an_outcome_the_engines_state_decides() {
        let quiet = Stop::default();
        let cases = [
            (
                None,
                RunStatus::Failed,
                ExitReason::Interrupted,
                "INTERRUPTED",
            ),
            (
                Some(end(EndKind::TimeLimit, "TIMEOUT", 0, Some(15))),
                RunStatus::Failed,
                ExitReason::Timeout,
                "TIMEOUT",
            ),
            (
                Some(end(EndKind::Cancelled, "CANCELLED", 0, Some(15))),
                RunStatus::Cancelled,
                ExitReason::Cancelled,
                "ENGINE_CANCELLED",
            ),
            (
                Some(end(EndKind::OutOfMemory, "OUT_OF_MEMORY", 0, Some(9))),
                RunStatus::Failed,
                ExitReason::Error,
                "OUT_OF_MEMORY",
            ),
            (
                Some(end(EndKind::Lost, "NODE_FAIL", 0, None)),
                RunStatus::Failed,
                ExitReason::Error,
                "ENGINE_LOST",
            ),
            (
                Some(end(EndKind::Exited, "FAILED", 0, Some(9))),
                RunStatus::Failed,
                ExitReason::Error,
                "NO_OUTCOME",
            ),
        ];
        for (end, status, reason, code) in cases {
            let outcome = decide("slurm", None, end.as_ref(), &quiet, "boom\n");
            assert_eq!(
                (outcome.status, outcome.exit_reason),
                (status, reason),
                "{end:?}"
            );
            let error = outcome.error.expect("an error says why");
            assert_eq!(error.code, code);
            if code == "NO_OUTCOME" {
                assert!(
                    error
                        .message
                        .ends_with("killed by signal 9) without an outcome; its stderr:\nboom"),
                    "{}",
                    error.message
                );
            }
        }
        let cancelled = Stop {
            requested: true,
            ..Stop::default()
        };
        let outcome = decide(
            "slurm",
            None,
            Some(&end(EndKind::Cancelled, "CANCELLED", 0, None)),
            &cancelled,
            "",
        );
        assert_eq!(
            (outcome.status, outcome.termination, outcome.error),
            (RunStatus::Cancelled, Some(TerminationType::Graceful), None)
        );
    }
}
