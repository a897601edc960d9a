//! The handle of a run, and the one entry that starts one: on the host (`run`) or in a container
//! (`container`), whichever the spec asks for.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::run::{failed, start_on_host, CancelRequest};
use super::{
    container, ExitReason, OutputEvent, ProcessInfo, RunOutcome, RunSpec, TerminationType,
};

/// A running (or already failed) job.
pub struct RunHandle {
    process: Option<ProcessInfo>,
    canceller: Canceller,
    state: HandleState,
}

enum HandleState {
    Finished(Box<RunOutcome>),
    Running(JoinHandle<RunOutcome>),
}

impl RunHandle {
    /// The leader process; `None` when it could not be spawned.
    pub fn process(&self) -> Option<ProcessInfo> {
        self.process
    }

    pub fn canceller(&self) -> Canceller {
        self.canceller.clone()
    }

    /// Waits until the leader has exited, its leftovers are swept and its output is delivered. Dropping the handle
    /// instead lets the run go on to completion unobserved.
    pub async fn wait(self) -> RunOutcome {
        match self.state {
            HandleState::Finished(outcome) => *outcome,
            HandleState::Running(task) => task.await.unwrap_or_else(|err| {
                failed(
                    ExitReason::Error,
                    "INTERNAL",
                    format!("the runner task of this job failed: {err}"),
                )
            }),
        }
    }
}

/// Cancels a run; cheap to clone, usable from anywhere.
#[derive(Clone)]
pub struct Canceller {
    requests: mpsc::Sender<CancelRequest>,
}

impl Canceller {
    /// SIGTERM to the job's process group and escaped descendants (or to its container's first process), up to
    /// `grace` for all of them to exit, then SIGKILL. Returns once every job process is gone. A second cancel with a shorter grace shortens the wait.
    pub async fn cancel(&self, grace: Duration) -> TerminationType {
        let (reply, answer) = oneshot::channel();
        if self
            .requests
            .send(CancelRequest { grace, reply })
            .await
            .is_err()
        {
            return TerminationType::AlreadyStopped;
        }
        answer.await.unwrap_or(TerminationType::AlreadyStopped)
    }
}

/// Starts a run: on the host, or in a container when the spec has one. Must be called from within a tokio
/// runtime, from a long-lived thread (a runtime worker, not a `spawn_blocking` thread): a host job's
/// parent-death signal fires when the spawning thread exits.
///
/// `output` receives every output event in order; it is bounded and the run waits when it is full, so consume it
/// in a task of its own (not in the task that awaits [`Canceller::cancel`] or [`RunHandle::wait`]).
pub fn start(spec: RunSpec, output: mpsc::Sender<OutputEvent>) -> RunHandle {
    let (requests, cancels) = mpsc::channel(16);
    let canceller = Canceller { requests };
    let (process, state) = if spec.container.is_some() {
        let task = tokio::spawn(container::run(spec, cancels, output));
        (None, HandleState::Running(task))
    } else {
        match start_on_host(spec, cancels, output) {
            Ok((info, task)) => (Some(info), HandleState::Running(task)),
            Err(outcome) => (None, HandleState::Finished(outcome)),
        }
    };
    RunHandle {
        process,
        canceller,
        state,
    }
}

impl RunHandle {
    /// A run that ended before anything was started, with `outcome` (a cancel finds it already stopped).
    pub fn ended(outcome: RunOutcome) -> RunHandle {
        let (requests, _) = mpsc::channel(1);
        RunHandle {
            process: None,
            canceller: Canceller { requests },
            state: HandleState::Finished(Box::new(outcome)),
        }
    }
}
