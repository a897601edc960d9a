//! The life of one run: start it on the host (in a container: `container`), feed the prompt, collect output,
//! watch for exit/timeout/cancel, terminate, sweep leftovers, and decide the outcome. The steps after the start
//! are the same wherever the job runs; a [`Target`] is what differs (how its processes are signalled, found and
//! let go of). The handle a caller holds is `handle`'s.

use std::ffi::OsString;
use std::future::{pending, Future};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};

use super::claude::{self, ClaudeSpec};
use super::collect::{decide, Collector, Exit, Program, Stop};
use super::output::{ChunkReader, TextLines};
use super::process::{self, JobScan};
use super::spawn::{self, JobCommand};
use super::{
    ExitReason, OutputEvent, OutputStream, ProcessInfo, RunOutcome, RunSpec, RunStatus,
    RuntimeSpec, TerminationType,
};

/// How often leftovers are re-checked while sweeping.
const SWEEP_POLL: Duration = Duration::from_millis(20);
/// How long to wait for processes to disappear after SIGKILL (uninterruptible sleep) before giving up on them.
const UNKILLABLE_WAIT: Duration = Duration::from_secs(5);
/// How long the sweep waits for processes that may be the job's to finish an exec (or exit) so that it can
/// tell; exec takes milliseconds, so only a process stuck in one (and likely no job's) lasts this long.
const UNDETERMINED_WAIT: Duration = Duration::from_secs(5);
/// After the sweep, stop reading when the pipes stay silent this long (an unidentified process holds them open).
const DRAIN_IDLE: Duration = Duration::from_secs(1);
/// After the sweep, stop reading after this long in any case.
const DRAIN_MAX: Duration = Duration::from_secs(5);
/// Longest prompt also passed in `HERDCTL_PROMPT` (the kernel's limit per environment string is 128 KiB).
const MAX_ENV_PROMPT_BYTES: usize = 100 * 1024;
/// Batches of lines (each up to a read chunk) buffered between the pipe readers and the collector.
const BATCH_QUEUE: usize = 16;

/// A cancel of a run: the grace before SIGKILL, and who is told how the run ended.
pub(super) struct CancelRequest {
    pub(super) grace: Duration,
    pub(super) reply: oneshot::Sender<TerminationType>,
}

/// Spawns the job's leader on the host and supervises it in a task.
pub(super) fn start_on_host(
    spec: RunSpec,
    cancels: mpsc::Receiver<CancelRequest>,
    output: mpsc::Sender<OutputEvent>,
) -> Result<(ProcessInfo, JoinHandle<RunOutcome>), Box<RunOutcome>> {
    let spawn_failed = |message| Box::new(failed(ExitReason::SpawnFailed, "SPAWN_FAILED", message));
    let invocation = invocation(&spec).map_err(spawn_failed)?;
    let command = host_command(&spec, invocation);
    let mut child = spawn::spawn(&command)
        .map_err(|err| spawn_failed(spawn_error_message(&spec.runtime, &err)))?;
    let pid = child.id();
    process::register_leader(pid);
    let info = ProcessInfo {
        pid,
        pgid: pid,
        start_time: process::process_start_time(pid),
    };
    let io = JobIo::new(
        &spec,
        child.stdin.take(),
        [
            child.stdout.take().map(|out| (OutputStream::Stdout, out)),
            child.stderr.take().map(|err| (OutputStream::Stderr, err)),
        ],
    );
    let target = ProcessGroup {
        job_id: spec.job_id.clone(),
        pgid: pid,
        leader_start_time: info.start_time,
        seen: Vec::new(),
    };
    let exit = async move {
        let status = child.wait().await;
        process::leader_reaped(pid);
        match status {
            Ok(status) => Exit::from(status),
            Err(err) => {
                tracing::warn!(pid, error = %err, "could not read the job's exit status");
                Exit::default()
            }
        }
    };
    let program = Program::of(&spec.runtime, false);
    let task = tokio::spawn(supervise(spec, program, target, exit, io, cancels, output));
    Ok((info, task))
}

/// Which executable a job runs; the host and a container name Claude's differently.
pub(super) enum Executable<'a> {
    Claude(&'a ClaudeSpec),
    Named(&'a str),
}

/// A job's executable, its arguments and the environment it gets on top of what it runs in: the same on the
/// host and in a container.
pub(super) struct Invocation<'a> {
    pub executable: Executable<'a>,
    pub args: Vec<String>,
    /// In order; a later entry wins.
    pub env: Vec<(String, String)>,
}

pub(super) fn invocation(spec: &RunSpec) -> Result<Invocation<'_>, String> {
    if !spec.cwd.is_dir() {
        return Err(format!(
            "working directory {} does not exist or is not a directory; fix the agent's working_directory",
            spec.cwd.display()
        ));
    }
    let mut env: Vec<(String, String)> = Vec::new();
    let (executable, args) = match &spec.runtime {
        RuntimeSpec::Claude(claude) => (Executable::Claude(claude), claude::claude_args(claude)),
        RuntimeSpec::Command {
            argv,
            env: command_env,
        } => {
            let Some((program, args)) = argv.split_first() else {
                return Err(
                    "the command runtime needs a program: set `command: [program, args...]`"
                        .to_owned(),
                );
            };
            env.extend(command_env.iter().cloned());
            // The kernel refuses to exec with one environment string over 128 KiB (E2BIG); a longer prompt is
            // only on stdin.
            if spec.prompt.len() <= MAX_ENV_PROMPT_BYTES {
                env.push(("HERDCTL_PROMPT".into(), spec.prompt.clone()));
            }
            (Executable::Named(program), args.to_vec())
        }
    };
    env.extend(spec.env.iter().cloned());
    env.push((process::JOB_ID_ENV.into(), spec.job_id.clone()));
    env.push(("HERDCTL_AGENT".into(), spec.agent.clone()));
    env.push((
        "HERDCTL_SCHEDULE".into(),
        spec.schedule.clone().unwrap_or_default(),
    ));
    Ok(Invocation {
        executable,
        args,
        env,
    })
}

/// The host command of an invocation: the daemon's environment under the job's.
fn host_command(spec: &RunSpec, invocation: Invocation<'_>) -> JobCommand {
    let program = match invocation.executable {
        Executable::Claude(claude) => claude.program().into_os_string(),
        Executable::Named(program) => OsString::from(program),
    };
    JobCommand {
        program,
        args: invocation.args.into_iter().map(OsString::from).collect(),
        env: invocation
            .env
            .into_iter()
            .map(|(key, value)| (key.into(), value.into()))
            .collect(),
        cwd: spec.cwd.clone(),
    }
}

fn spawn_error_message(runtime: &RuntimeSpec, err: &std::io::Error) -> String {
    match runtime {
        RuntimeSpec::Claude(spec) => format!(
            "could not start Claude Code (`{}`): {err}; {}",
            spec.program().display(),
            claude::INSTALL_HINT
        ),
        RuntimeSpec::Command { argv, .. } => format!(
            "could not start `{}`: {err}; check the agent's `command` (the program must be on PATH or a path)",
            argv.first().map(String::as_str).unwrap_or_default()
        ),
    }
}

pub(super) fn failed(exit_reason: ExitReason, code: &str, message: String) -> RunOutcome {
    RunOutcome::without_process(RunStatus::Failed, exit_reason, code, message)
}

/// Where a job's processes run, as its supervision needs it: signalled together, looked for after the leader
/// ended, and let go of once the job is over.
pub(super) trait Target {
    /// Sends `signal` to every process of the job.
    async fn signal(&mut self, signal: Signal);
    /// Whether processes of the job may outlive its leader, so that the sweep must look for them.
    fn may_have_leftovers(&self) -> bool;
    /// The job's processes still alive after its leader ended.
    async fn leftovers(&mut self) -> JobScan;
    /// Lets go of what the job used once nothing of it runs; `swept` says the sweep ran.
    async fn release(self, swept: bool);
}

/// A host job: its process group, and descendants that escaped it (found by the job id in their environment).
struct ProcessGroup {
    job_id: String,
    pgid: u32,
    leader_start_time: Option<u64>,
    /// Job processes seen alive, for the reaper and for unregistering.
    seen: Vec<(u32, u64)>,
}

impl ProcessGroup {
    async fn scan(&mut self) -> JobScan {
        let job_id = self.job_id.clone();
        let pgid = self.pgid;
        let not_before = self.leader_start_time;
        let scan =
            tokio::task::spawn_blocking(move || process::scan_job(&job_id, Some(pgid), not_before))
                .await
                .unwrap_or_default();
        process::remember_seen(&scan.live);
        self.seen
            .extend(scan.live.iter().map(|p| (p.pid, p.start_time)));
        scan
    }
}

impl Target for ProcessGroup {
    async fn signal(&mut self, signal: Signal) {
        process::signal_group(self.pgid, signal);
        let pids: Vec<u32> = self.scan().await.live.iter().map(|p| p.pid).collect();
        process::signal_pids(&pids, signal);
    }

    fn may_have_leftovers(&self) -> bool {
        process::may_have_leftovers(self.pgid)
    }

    async fn leftovers(&mut self) -> JobScan {
        self.scan().await
    }

    async fn release(self, swept: bool) {
        if swept {
            tokio::task::spawn_blocking(process::reap_adopted_zombies)
                .await
                .unwrap_or_default();
        }
        process::unregister_job(self.pgid, &self.seen);
    }
}

/// State of the termination sequence of one run.
struct Termination<T> {
    target: T,
    /// When SIGKILL follows (set once SIGTERM has been sent).
    kill_at: Option<Instant>,
    /// SIGKILL was sent.
    forced: bool,
}

impl<T: Target> Termination<T> {
    /// SIGTERM now (the first time), SIGKILL after `grace` (or sooner if already scheduled sooner).
    async fn begin(&mut self, grace: Duration) {
        let kill_at = Instant::now() + grace;
        match self.kill_at {
            Some(existing) => self.kill_at = Some(existing.min(kill_at)),
            None => {
                self.kill_at = Some(kill_at);
                self.target.signal(Signal::SIGTERM).await;
            }
        }
    }

    async fn kill(&mut self) {
        self.forced = true;
        self.target.signal(Signal::SIGKILL).await;
    }
}

async fn sleep_until_maybe(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => pending().await,
    }
}

/// A started job's input and output: the prompt being written to its stdin, and its stdout and stderr read in
/// batches of lines.
pub(super) struct JobIo {
    lines: mpsc::Receiver<(OutputStream, TextLines)>,
    /// The prompt writer, the readers and whatever feeds them: ended when the run is over.
    tasks: Vec<JoinHandle<()>>,
}

impl JobIo {
    pub(super) fn new<W, R>(
        spec: &RunSpec,
        stdin: Option<W>,
        streams: [Option<(OutputStream, R)>; 2],
    ) -> JobIo
    where
        W: AsyncWrite + Unpin + Send + 'static,
        R: AsyncRead + Unpin + Send + 'static,
    {
        let mut tasks = Vec::new();
        if let Some(mut stdin) = stdin {
            let prompt = spec.prompt.clone();
            tasks.push(tokio::spawn(async move {
                // A job that exits without reading its stdin makes this fail with EPIPE: nothing to report.
                let _ = stdin.write_all(prompt.as_bytes()).await;
                let _ = stdin.shutdown().await;
            }));
        }
        let (line_tx, lines) = mpsc::channel(BATCH_QUEUE);
        let max_line = spec.limits.max_line_bytes;
        for (stream, reader) in streams.into_iter().flatten() {
            tasks.push(tokio::spawn(read_lines(
                reader,
                stream,
                max_line,
                line_tx.clone(),
            )));
        }
        JobIo { lines, tasks }
    }

    /// Also ends `task` when the run is over.
    pub(super) fn with_task(mut self, task: JoinHandle<()>) -> JobIo {
        self.tasks.push(task);
        self
    }
}

/// Supervises a started job until it has ended and its output is delivered: its exit (`exit`), cancels, the
/// timeout, the kill after the grace period, the sweep of what the leader left behind; then the outcome.
pub(super) async fn supervise<T: Target>(
    spec: RunSpec,
    program: Program,
    target: T,
    exit: impl Future<Output = Exit>,
    io: JobIo,
    mut cancels: mpsc::Receiver<CancelRequest>,
    output: mpsc::Sender<OutputEvent>,
) -> RunOutcome {
    let JobIo { mut lines, tasks } = io;
    let mut collector = Collector::new(output);
    let mut termination = Termination {
        target,
        kill_at: None,
        forced: false,
    };
    let mut stop: Option<Stop> = None;
    let mut waiters: Vec<oneshot::Sender<TerminationType>> = Vec::new();
    let mut lines_open = true;
    let mut cancels_open = true;
    let timeout_at = spec.timeout.map(|t| Instant::now() + t);

    // One future for the whole loop: a fresh wait per iteration would ask for the exit once per output line.
    tokio::pin!(exit);
    let exit = loop {
        tokio::select! {
            exit = &mut exit => break exit,
            line = lines.recv(), if lines_open => match line {
                Some((stream, line)) => collector.push(stream, line).await,
                None => lines_open = false,
            },
            request = cancels.recv(), if cancels_open => match request {
                Some(request) => {
                    stop.get_or_insert(Stop::Cancelled);
                    termination.begin(request.grace).await;
                    waiters.push(request.reply);
                }
                None => cancels_open = false,
            },
            () = sleep_until_maybe(timeout_at), if stop.is_none() => {
                if let Some(timeout) = spec.timeout {
                    stop = Some(Stop::Timeout(timeout));
                }
                termination.begin(spec.stop_grace).await;
            }
            () = sleep_until_maybe(termination.kill_at), if !termination.forced => termination.kill().await,
        }
    };

    // Sweep what the leader left behind (Claude leaves MCP servers running), still delivering output. Cancels
    // that arrive now find the job already ended.
    let mut late: Vec<oneshot::Sender<TerminationType>> = Vec::new();
    let mut give_up_at: Option<Instant> = None;
    let mut undetermined_give_up_at: Option<Instant> = None;
    let sweep = termination.kill_at.is_some() || termination.target.may_have_leftovers();
    if sweep {
        loop {
            let JobScan {
                live, undetermined, ..
            } = termination.target.leftovers().await;
            let now = Instant::now();
            if live.is_empty() {
                if undetermined.is_empty() {
                    break;
                }
                // Maybe a leftover caught inside exec, its marker unreadable for the moment (issue 13): look
                // again rather than conclude the job is gone.
                let give_up = *undetermined_give_up_at.get_or_insert(now + UNDETERMINED_WAIT);
                if now >= give_up {
                    tracing::warn!(
                        job_id = %spec.job_id,
                        pids = ?undetermined.iter().map(|p| p.pid).collect::<Vec<_>>(),
                        "processes stay inside exec or exit, so whether they belong to the job is unknown; leaving them"
                    );
                    break;
                }
            } else {
                match termination.kill_at {
                    None => termination.begin(spec.stop_grace).await,
                    Some(kill_at) if now >= kill_at => {
                        termination.kill().await;
                        let give_up = *give_up_at.get_or_insert(now + UNKILLABLE_WAIT);
                        if now >= give_up {
                            tracing::warn!(
                                job_id = %spec.job_id,
                                pids = ?live.iter().map(|p| p.pid).collect::<Vec<_>>(),
                                "job processes survive SIGKILL (uninterruptible sleep?); leaving them"
                            );
                            break;
                        }
                    }
                    Some(_) => {}
                }
            }
            tokio::select! {
                line = lines.recv(), if lines_open => match line {
                    Some((stream, line)) => collector.push(stream, line).await,
                    None => lines_open = false,
                },
                request = cancels.recv(), if cancels_open => match request {
                    Some(request) if stop.is_some() => {
                        termination.begin(request.grace).await;
                        waiters.push(request.reply);
                    }
                    Some(request) => late.push(request.reply),
                    None => cancels_open = false,
                },
                () = sleep(SWEEP_POLL) => {}
            }
        }
    }

    // Deliver what is still in the pipes.
    let drain_deadline = Instant::now() + DRAIN_MAX;
    while lines_open {
        tokio::select! {
            line = lines.recv() => match line {
                Some((stream, line)) => collector.push(stream, line).await,
                None => lines_open = false,
            },
            () = sleep(DRAIN_IDLE) => break,
            () = sleep_until(drain_deadline) => break,
        }
    }
    for task in tasks {
        task.abort();
    }
    let Termination { target, forced, .. } = termination;
    target.release(sweep).await;

    let terminated = stop.map(|_| {
        if forced {
            TerminationType::Forced
        } else {
            TerminationType::Graceful
        }
    });
    cancels.close();
    while let Ok(request) = cancels.try_recv() {
        late.push(request.reply);
    }
    for waiter in waiters {
        let _ = waiter.send(terminated.unwrap_or(TerminationType::AlreadyStopped));
    }
    for waiter in late {
        let _ = waiter.send(TerminationType::AlreadyStopped);
    }

    let mut outcome = decide(program, exit, stop, collector.finish());
    outcome.termination = terminated;
    outcome
}

async fn read_lines<R: AsyncRead + Unpin>(
    reader: R,
    stream: OutputStream,
    max_line_bytes: usize,
    batches: mpsc::Sender<(OutputStream, TextLines)>,
) {
    let mut reader = ChunkReader::new(reader, max_line_bytes);
    while let Some(lines) = reader.next_lines().await {
        if batches.send((stream, lines)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
