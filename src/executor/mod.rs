//! *Where* a job's processes run: as the daemon's own children (the local executor, today's runner
//! unchanged), or on a cluster engine (Slurm), while the FleetManager stays the one control plane (config,
//! schedules, queue, limits, records, output, events).
//!
//! Owns: the executor interface the fleet drives ([`Executor::start`] → [`Run`]: its placement, output
//! events into a channel, [`RunCanceller::cancel`] graceful then forced, [`Run::wait`] → the outcome;
//! [`Executor::list_owned`] and [`Executor::reattach`] after a daemon restart); the exec-shim (`shim`,
//! `herdctld exec-shim`), which runs the ordinary runner where an engine placed the job and writes framed,
//! numbered lines and a final outcome (`frame`); the driver every engine shares (`remote`: submit, relay
//! output without gap or duplicate, two-phase cancel, outcome from the shim's record and the engine's
//! state); and the engines, each only a thin adapter behind [`Engine`] (`slurm`: the standard Slurm client
//! tools).
//!
//! Must not: know the fleet, the job store or JSON-RPC. Files under the state directory are written through
//! `state::ExchangeDir`. Process control is the runner's, in the daemon and in the shim alike: nothing of it
//! is written twice.
//!
//! Adding an engine (the Kubernetes plan, README "Running jobs on a cluster"): implement [`Engine`] (submit a
//! Job running the shim with the spec delivered as a Secret, its state from the Job's pod, `stop` = a
//! signal to the shim's container, `kill` = delete with grace 0, `read_output` from the pod's log, `owned` by
//! label); the driver, the shim and the fleet stay as they are.

mod frame;
mod remote;
pub mod shim;
mod slurm;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::ExecutorConfig;
use crate::job::{ExitReason, JobId, TerminationType};
use crate::runner::{self, OutputEvent, ProcessInfo, RunHandle, RunOutcome, RunSpec, RunStatus};
use crate::state::ExchangeDir;

pub use remote::Progress;

/// What every executor of one daemon shares: its state directory's exchange files, and the tag that marks
/// the engine runs this state directory owns.
#[derive(Debug, Clone)]
pub struct ExecutorContext {
    pub exchange: ExchangeDir,
    /// `herdctld:<absolute state directory>`: a second daemon on another state directory never takes
    /// another's runs for its own.
    pub owner: String,
    /// This daemon's executable: the shim a job runs unless its executor names another.
    pub own_binary: PathBuf,
    /// The states of the daemon's Slurm runs, listed for all of them at once (each agent has its own
    /// engine value; the listing is the daemon's).
    slurm_states: Arc<slurm::StateListing>,
}

impl ExecutorContext {
    pub fn new(exchange: ExchangeDir, state_root: &std::path::Path) -> ExecutorContext {
        let root = std::path::absolute(state_root).unwrap_or_else(|_| state_root.to_path_buf());
        ExecutorContext {
            exchange,
            owner: format!("herdctld:{}", root.display()),
            own_binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("herdctld")),
            slurm_states: Arc::default(),
        }
    }
}

/// Called by a cluster run as it moves (submitted, held in the engine's queue, running): the fleet's record
/// and events follow. Called before any of the run's output is delivered, so that `job:started` precedes
/// the job's first line.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Where an agent's jobs run.
#[derive(Clone)]
pub enum Executor {
    /// The daemon's own children, through the runner.
    Local,
    /// A cluster engine, through the exec-shim.
    Cluster(Arc<dyn Engine>),
}

impl Executor {
    /// The executor of an agent's `executor` settings.
    pub fn for_config(config: &ExecutorConfig, context: &ExecutorContext) -> Executor {
        match config {
            ExecutorConfig::Local => Executor::Local,
            ExecutorConfig::Slurm(slurm) => {
                Executor::Cluster(Arc::new(slurm::Slurm::new(slurm.clone(), context.clone())))
            }
        }
    }

    /// The cluster engine of executor type `name` with default settings (for what a restarted daemon finds
    /// in its records: listing and re-attaching need no resources); `None` for `local` or a type not built.
    pub fn cluster_named(name: &str, context: &ExecutorContext) -> Option<Executor> {
        match name {
            slurm::NAME => Some(Executor::for_config(
                &ExecutorConfig::Slurm(Default::default()),
                context,
            )),
            _ => None,
        }
    }

    /// The executor type, as configured and recorded: `local`, `slurm`.
    pub fn name(&self) -> &'static str {
        match self {
            Executor::Local => "local",
            Executor::Cluster(engine) => engine.name(),
        }
    }

    /// Starts a run; `first_seq` is the seq its first output line will have. Returns at once: a cluster run
    /// is submitted in the background (a failed submit is an outcome `spawn_failed`), and `progress` tells
    /// how it moves. Call from a runtime worker thread (see [`runner::start`]).
    pub fn start(
        &self,
        spec: RunSpec,
        first_seq: u64,
        output: mpsc::Sender<OutputEvent>,
        progress: ProgressFn,
    ) -> Run {
        match self {
            Executor::Local => Run::local(runner::start(spec, output)),
            // The shim would run it on the node's host: isolation fails closed instead.
            Executor::Cluster(engine) if spec.container.is_some() => {
                Run::local(RunHandle::ended(RunOutcome::without_process(
                    RunStatus::Failed,
                    ExitReason::SpawnFailed,
                    "CONTAINER_UNAVAILABLE",
                    format!(
                        "the job asks for a container, and the {} executor does not run containers; \
                         give the agent the local executor, or docker.enabled: false",
                        engine.name()
                    ),
                )))
            }
            Executor::Cluster(engine) => remote::start(
                engine.clone(),
                shim::ShimSpec {
                    first_seq,
                    run: spec,
                },
                output,
                progress,
            ),
        }
    }

    /// The runs of this state directory the engine knows (running, queued, or ended and not yet forgotten).
    pub async fn list_owned(&self) -> Result<Vec<OwnedRun>, EngineError> {
        match self {
            Executor::Local => Ok(Vec::new()),
            Executor::Cluster(engine) => engine.owned().await,
        }
    }

    /// Stops a run of this state directory by force: one whose job is no longer active.
    pub async fn kill(&self, engine_id: &str) {
        if let Executor::Cluster(engine) = self {
            if let Err(e) = engine.kill(engine_id).await {
                tracing::warn!(
                    executor = engine.name(),
                    engine_id,
                    "could not stop the run: {e}"
                );
            }
        }
    }

    /// Takes up a cluster run a previous daemon started: its output is relayed again from the start of the
    /// shim's file (the pump skips the seqs the job's output already has), its outcome awaited. `None` for
    /// the local executor, whose runs die with their daemon.
    pub fn reattach(
        &self,
        job_id: JobId,
        engine_id: String,
        output: mpsc::Sender<OutputEvent>,
        progress: ProgressFn,
    ) -> Option<Run> {
        match self {
            Executor::Local => None,
            Executor::Cluster(engine) => Some(remote::reattach(
                engine.clone(),
                job_id,
                engine_id,
                output,
                progress,
            )),
        }
    }
}

/// A run of this state directory that the engine knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRun {
    /// The herdctld job it runs (the engine-side name).
    pub job_id: String,
    /// The engine's id of it.
    pub engine_id: String,
    /// It has not ended.
    pub active: bool,
}

/// Why an engine could not do what was asked. Messages say which command failed and what it said.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("could not run `{command}`: {reason}")]
    Unavailable { command: String, reason: String },
    #[error("`{command}` failed: {output}")]
    Refused { command: String, output: String },
    #[error("could not write the run spec: {0}")]
    Spec(String),
}

/// Where a cluster run is, as its engine says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineState {
    /// In the engine's queue, with the engine's reason.
    Pending(String),
    Running,
    Ended(EngineEnd),
    /// The engine does not know the id (never did, or forgot it after it ended).
    Unknown,
}

/// How a cluster run ended, as its engine says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineEnd {
    /// The engine's own name for it (Slurm's `COMPLETED`, `FAILED`, `TIMEOUT`…), for messages.
    pub state: String,
    pub kind: EndKind,
    /// The shim's exit code and the signal that ended it, as the engine recorded them.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndKind {
    /// The shim exited (with whatever code, or a signal it did not survive).
    Exited,
    /// Cancelled in the engine.
    Cancelled,
    /// The engine's own time limit (`executor.time`) ended it.
    TimeLimit,
    OutOfMemory,
    /// The engine lost it: node failure, preemption, a failed launch.
    Lost,
}

/// A cluster engine: only the calls that differ between engines. Everything else about a cluster run is
/// the shared driver's.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// The executor type: `slurm`.
    fn name(&self) -> &'static str;
    /// Hands the engine a run of the shim on `spec` (the serialised [`shim::ShimSpec`]) named by `job`,
    /// unless a run by that name exists already (then its id is returned: a retried submit never
    /// duplicates a job). Returns the engine's id of the run.
    async fn submit(&self, job: &JobId, spec: &[u8]) -> Result<String, EngineError>;
    /// The run's state. A `current` answer is asked for now (the driver waits for the end the shim has
    /// written); otherwise the engine may answer from a listing of every run being watched made up to a
    /// moment ago, so that a daemon with many runs asks the engine once for all of them.
    async fn state(&self, id: &str, current: bool) -> Result<EngineState, EngineError>;
    /// Asks the shim of `job`'s run `id` to stop: it cancels the job with `grace` and writes its outcome.
    async fn stop(&self, id: &str, job: &JobId, grace: Duration) -> Result<(), EngineError>;
    /// Ends the run by force (also a run still in the engine's queue).
    async fn kill(&self, id: &str) -> Result<(), EngineError>;
    /// The shim's output from byte `offset` on: what was written since the last read (empty when nothing).
    async fn read_output(&self, job: &JobId, offset: u64) -> Result<Vec<u8>, EngineError>;
    /// The last lines of what the shim and the engine wrote besides the output (the shim's stderr), for an
    /// error message when the run ended without an outcome.
    async fn diagnostics(&self, job: &JobId) -> String;
    /// Forgets the run's files once its outcome is recorded.
    async fn clean_up(&self, job: &JobId);
    async fn owned(&self) -> Result<Vec<OwnedRun>, EngineError>;
}

/// A run that an executor started: where it runs, how to stop it, and its outcome.
pub struct Run {
    process: Option<ProcessInfo>,
    cluster: Option<&'static str>,
    files: Option<RunFiles>,
    canceller: RunCanceller,
    outcome: RunWait,
}

/// The files a cluster run exchanges with its shim: the run's record until its outcome is recorded, then
/// removed.
pub struct RunFiles {
    engine: Arc<dyn Engine>,
    job: JobId,
}

impl RunFiles {
    pub async fn remove(self) {
        self.engine.clean_up(&self.job).await;
    }
}

enum RunWait {
    Local(RunHandle),
    Cluster(JoinHandle<RunOutcome>),
}

impl Run {
    fn local(handle: RunHandle) -> Run {
        Run {
            process: handle.process(),
            cluster: None,
            files: None,
            canceller: RunCanceller::Local(handle.canceller()),
            outcome: RunWait::Local(handle),
        }
    }

    /// The local leader process (pid, pgid, start time) for crash recovery; `None` on a cluster.
    pub fn process(&self) -> Option<ProcessInfo> {
        self.process
    }

    /// The executor type of a cluster run (`slurm`); `None` for a local one.
    pub fn cluster(&self) -> Option<&'static str> {
        self.cluster
    }

    pub fn canceller(&self) -> RunCanceller {
        self.canceller.clone()
    }

    /// A cluster run's files, to remove once its outcome is recorded.
    pub fn files(&self) -> Option<RunFiles> {
        self.files.as_ref().map(|files| RunFiles {
            engine: files.engine.clone(),
            job: files.job.clone(),
        })
    }

    /// Waits until the run has ended and its output is delivered.
    pub async fn wait(self) -> RunOutcome {
        match self.outcome {
            RunWait::Local(handle) => handle.wait().await,
            RunWait::Cluster(task) => task.await.unwrap_or_else(|err| {
                RunOutcome::without_process(
                    RunStatus::Failed,
                    ExitReason::Error,
                    "INTERNAL",
                    format!("the driver of this cluster run failed: {err}"),
                )
            }),
        }
    }
}

/// Stops a run, graceful then forced; cheap to clone.
#[derive(Clone)]
pub enum RunCanceller {
    Local(runner::Canceller),
    Cluster(mpsc::Sender<CancelRequest>),
}

/// A cancel of a cluster run, answered when the run has ended.
pub struct CancelRequest {
    grace: Duration,
    reply: oneshot::Sender<TerminationType>,
}

impl RunCanceller {
    /// Asks the job to stop, waits up to `grace`, then stops it by force; returns once the run has ended.
    pub async fn cancel(&self, grace: Duration) -> TerminationType {
        match self {
            RunCanceller::Local(canceller) => canceller.cancel(grace).await,
            RunCanceller::Cluster(requests) => {
                let (reply, answer) = oneshot::channel();
                if requests.send(CancelRequest { grace, reply }).await.is_err() {
                    return TerminationType::AlreadyStopped;
                }
                answer.await.unwrap_or(TerminationType::AlreadyStopped)
            }
        }
    }
}
