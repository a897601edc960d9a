//! The life of one run: spawn, feed the prompt, collect output, watch for exit/timeout/cancel, terminate, sweep
//! leftovers, and decide the outcome.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::future::pending;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};

use super::claude::{self, judge_result, parse_message, result_text, StreamState, Verdict};
use super::output::{ChunkReader, TextLines};
use super::process::{self, JobScan};
use super::spawn::{self, Child, JobCommand};
use super::{
    ExitReason, JobError, OutputEvent, OutputStream, ProcessInfo, RunOutcome, RunSpec, RunStatus,
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
/// Lines of stderr quoted in an error.
const STDERR_TAIL_LINES: usize = 20;
/// Bytes of one stderr line quoted in an error.
const STDERR_TAIL_LINE_BYTES: usize = 1000;
/// Longest prompt also passed in `HERDCTL_PROMPT` (the kernel's limit per environment string is 128 KiB).
const MAX_ENV_PROMPT_BYTES: usize = 100 * 1024;
/// Batches of lines (each up to a read chunk) buffered between the pipe readers and the collector.
const BATCH_QUEUE: usize = 16;

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

struct CancelRequest {
    grace: Duration,
    reply: oneshot::Sender<TerminationType>,
}

impl Canceller {
    /// SIGTERM to the job's process group and escaped descendants, up to `grace` for all of them to exit, then
    /// SIGKILL. Returns once every job process is gone. A second cancel with a shorter grace shortens the wait.
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

/// Starts a run. Must be called from within a tokio runtime, from a long-lived thread (a runtime worker, not a
/// `spawn_blocking` thread): the child's parent-death signal fires when the spawning thread exits.
///
/// `output` receives every output event in order; it is bounded and the run waits when it is full, so consume it
/// in a task of its own (not in the task that awaits [`Canceller::cancel`] or [`RunHandle::wait`]).
pub fn start(spec: RunSpec, output: mpsc::Sender<OutputEvent>) -> RunHandle {
    let (requests, cancels) = mpsc::channel(16);
    let canceller = Canceller { requests };
    let finished = |outcome: RunOutcome| RunHandle {
        process: None,
        canceller: canceller.clone(),
        state: HandleState::Finished(Box::new(outcome)),
    };
    let command = match build_command(&spec) {
        Ok(command) => command,
        Err(message) => return finished(failed(ExitReason::SpawnFailed, "SPAWN_FAILED", message)),
    };
    let child = match spawn::spawn(&command) {
        Ok(child) => child,
        Err(err) => {
            let message = spawn_error_message(&spec.runtime, &err);
            return finished(failed(ExitReason::SpawnFailed, "SPAWN_FAILED", message));
        }
    };
    let pid = child.id();
    process::register_leader(pid);
    let info = ProcessInfo {
        pid,
        pgid: pid,
        start_time: process::process_start_time(pid),
    };
    let task = tokio::spawn(supervise(spec, info, child, cancels, output));
    RunHandle {
        process: Some(info),
        canceller,
        state: HandleState::Running(task),
    }
}

fn build_command(spec: &RunSpec) -> Result<JobCommand, String> {
    if !spec.cwd.is_dir() {
        return Err(format!(
            "working directory {} does not exist or is not a directory; fix the agent's working_directory",
            spec.cwd.display()
        ));
    }
    let env_pair = |(k, v): &(String, String)| (OsString::from(k), OsString::from(v));
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    let (program, args) = match &spec.runtime {
        RuntimeSpec::Claude(claude) => (
            claude.program().into_os_string(),
            claude::claude_args(claude)
                .into_iter()
                .map(OsString::from)
                .collect(),
        ),
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
            env.extend(command_env.iter().map(env_pair));
            // The kernel refuses to exec with one environment string over 128 KiB (E2BIG); a longer prompt is
            // only on stdin.
            if spec.prompt.len() <= MAX_ENV_PROMPT_BYTES {
                env.push(("HERDCTL_PROMPT".into(), spec.prompt.clone().into()));
            }
            (
                OsString::from(program),
                args.iter().map(OsString::from).collect(),
            )
        }
    };
    env.extend(spec.env.iter().map(env_pair));
    env.push((process::JOB_ID_ENV.into(), spec.job_id.clone().into()));
    env.push(("HERDCTL_AGENT".into(), spec.agent.clone().into()));
    env.push((
        "HERDCTL_SCHEDULE".into(),
        spec.schedule.clone().unwrap_or_default().into(),
    ));
    Ok(JobCommand {
        program,
        args,
        env,
        cwd: spec.cwd.clone(),
    })
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

fn failed(exit_reason: ExitReason, code: &str, message: String) -> RunOutcome {
    RunOutcome::without_process(RunStatus::Failed, exit_reason, code, message)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Timeout(Duration),
    Cancelled,
}

/// State of the termination sequence of one run.
struct Termination {
    job_id: String,
    pgid: u32,
    leader_start_time: Option<u64>,
    /// When SIGKILL follows (set once SIGTERM has been sent).
    kill_at: Option<Instant>,
    /// SIGKILL was sent.
    forced: bool,
    /// Job processes seen alive, for the reaper and for unregistering.
    seen: Vec<(u32, u64)>,
}

impl Termination {
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

    async fn signal_all(&mut self, signal: Signal) {
        process::signal_group(self.pgid, signal);
        let pids: Vec<u32> = self.scan().await.live.iter().map(|p| p.pid).collect();
        process::signal_pids(&pids, signal);
    }

    /// SIGTERM now (the first time), SIGKILL after `grace` (or sooner if already scheduled sooner).
    async fn begin(&mut self, grace: Duration) {
        let kill_at = Instant::now() + grace;
        match self.kill_at {
            Some(existing) => self.kill_at = Some(existing.min(kill_at)),
            None => {
                self.kill_at = Some(kill_at);
                self.signal_all(Signal::SIGTERM).await;
            }
        }
    }

    async fn kill(&mut self) {
        self.forced = true;
        self.signal_all(Signal::SIGKILL).await;
    }
}

async fn sleep_until_maybe(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => pending().await,
    }
}

async fn supervise(
    spec: RunSpec,
    leader: ProcessInfo,
    mut child: Child,
    mut cancels: mpsc::Receiver<CancelRequest>,
    output: mpsc::Sender<OutputEvent>,
) -> RunOutcome {
    let ProcessInfo {
        pid,
        start_time: leader_start_time,
        ..
    } = leader;
    let stdin_task = child.stdin.take().map(|mut stdin| {
        let prompt = spec.prompt.clone();
        tokio::spawn(async move {
            // A child that exits without reading its stdin makes this fail with EPIPE: nothing to report.
            let _ = stdin.write_all(prompt.as_bytes()).await;
            let _ = stdin.shutdown().await;
        })
    });
    let (line_tx, mut lines) = mpsc::channel(BATCH_QUEUE);
    let max_line = spec.limits.max_line_bytes;
    let mut readers = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        readers.push(tokio::spawn(read_lines(
            stdout,
            OutputStream::Stdout,
            max_line,
            line_tx.clone(),
        )));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(tokio::spawn(read_lines(
            stderr,
            OutputStream::Stderr,
            max_line,
            line_tx.clone(),
        )));
    }
    drop(line_tx);

    let mut collector = Collector::new(output);
    let mut termination = Termination {
        job_id: spec.job_id.clone(),
        pgid: pid,
        leader_start_time,
        kill_at: None,
        forced: false,
        seen: Vec::new(),
    };
    let mut stop: Option<Stop> = None;
    let mut waiters: Vec<oneshot::Sender<TerminationType>> = Vec::new();
    let mut lines_open = true;
    let mut cancels_open = true;
    let timeout_at = spec.timeout.map(|t| Instant::now() + t);

    // One future for the whole loop: a fresh `wait()` per iteration would call wait4 once per output line.
    let leader_exit = child.wait();
    tokio::pin!(leader_exit);
    let exit = loop {
        tokio::select! {
            status = &mut leader_exit => break status,
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
    process::leader_reaped(pid);

    // Sweep what the leader left behind (Claude leaves MCP servers running), still delivering output. Cancels
    // that arrive now find the job already ended.
    let mut late: Vec<oneshot::Sender<TerminationType>> = Vec::new();
    let mut give_up_at: Option<Instant> = None;
    let mut undetermined_give_up_at: Option<Instant> = None;
    let sweep = termination.kill_at.is_some() || process::may_have_leftovers(pid);
    if sweep {
        loop {
            let JobScan {
                live, undetermined, ..
            } = termination.scan().await;
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
        tokio::task::spawn_blocking(process::reap_adopted_zombies)
            .await
            .unwrap_or_default();
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
    for reader in readers {
        reader.abort();
    }
    if let Some(task) = stdin_task {
        task.abort();
    }
    process::unregister_job(pid, &termination.seen);

    let terminated = stop.map(|_| {
        if termination.forced {
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

    let runtime = match spec.runtime {
        RuntimeSpec::Claude(_) => Runtime::Claude,
        RuntimeSpec::Command { .. } => Runtime::Command,
    };
    let collected = collector.finish();
    let exit = match exit {
        Ok(status) => Exit::from(status),
        Err(err) => {
            tracing::warn!(job_id = %spec.job_id, error = %err, "could not read the job's exit status");
            Exit {
                code: None,
                signal: None,
            }
        }
    };
    let mut outcome = decide(runtime, exit, stop, collected);
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

/// Turns batches of lines into output events and remembers what the outcome needs.
struct Collector {
    output: mpsc::Sender<OutputEvent>,
    stream: StreamState,
    /// The last non-blank stdout line, raw: kept in one reused buffer, made text once at the end.
    last_stdout: Vec<u8>,
    stderr_tail: VecDeque<String>,
}

/// What the output of a run said, for [`decide`].
#[derive(Debug, Default)]
struct Collected {
    stream: StreamState,
    last_stdout: Option<String>,
    stderr_tail: VecDeque<String>,
}

/// Whether a line may be a stream-json message: only a line whose first visible byte is `{` is parsed.
fn may_be_message(line: &[u8], cut: bool) -> bool {
    !cut && line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Whether a line is empty or only whitespace once read as text.
fn is_blank(bytes: &[u8]) -> bool {
    // Most lines have a visible ASCII character: answered without decoding the line.
    if bytes
        .iter()
        .any(|b| b.is_ascii() && !char::from(*b).is_whitespace())
    {
        return false;
    }
    String::from_utf8_lossy(bytes).trim().is_empty()
}

fn clip(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

impl Collector {
    fn new(output: mpsc::Sender<OutputEvent>) -> Self {
        Collector {
            output,
            stream: StreamState::default(),
            last_stdout: Vec::new(),
            stderr_tail: VecDeque::new(),
        }
    }

    async fn push(&mut self, stream: OutputStream, lines: TextLines) {
        match stream {
            OutputStream::Stderr => {
                let newest: Vec<&[u8]> = lines
                    .iter()
                    .rev()
                    .take(STDERR_TAIL_LINES)
                    .map(|(line, _)| line)
                    .collect();
                for line in newest.into_iter().rev() {
                    if self.stderr_tail.len() == STDERR_TAIL_LINES {
                        self.stderr_tail.pop_front();
                    }
                    let text = String::from_utf8_lossy(line).into_owned();
                    self.stderr_tail
                        .push_back(clip(text, STDERR_TAIL_LINE_BYTES));
                }
                deliver(&self.output, OutputEvent::Text { stream, lines }).await;
            }
            // Plain text is passed on as read, in one event; only where a line may be a message is the
            // batch taken apart, every message parsed here so that the outcome sees all of them.
            OutputStream::Stdout if !lines.iter().any(|(line, cut)| may_be_message(line, cut)) => {
                self.remember_stdout(&lines);
                deliver(&self.output, OutputEvent::Text { stream, lines }).await;
            }
            OutputStream::Stdout => {
                let mut text = TextLines::default();
                for (line, cut) in lines.iter() {
                    let message = if may_be_message(line, cut) {
                        parse_message(line)
                    } else {
                        None
                    };
                    let Some(message) = message else {
                        text.push(line, cut);
                        continue;
                    };
                    if !text.is_empty() {
                        self.remember_stdout(&text);
                        let lines = std::mem::take(&mut text);
                        deliver(&self.output, OutputEvent::Text { stream, lines }).await;
                    }
                    self.stream.observe(&message);
                    deliver(&self.output, message_event(message)).await;
                }
                if !text.is_empty() {
                    self.remember_stdout(&text);
                    deliver(
                        &self.output,
                        OutputEvent::Text {
                            stream,
                            lines: text,
                        },
                    )
                    .await;
                }
            }
        }
    }

    /// Keeps the last non-blank line of `lines` as the last stdout line.
    fn remember_stdout(&mut self, lines: &TextLines) {
        if let Some((line, _)) = lines.iter().rev().find(|(line, _)| !is_blank(line)) {
            self.last_stdout.clear();
            self.last_stdout.extend_from_slice(line);
        }
    }

    fn finish(self) -> Collected {
        let last_stdout = (!self.last_stdout.is_empty()).then(|| {
            clip(
                String::from_utf8_lossy(&self.last_stdout).into_owned(),
                STDERR_TAIL_LINE_BYTES * 4,
            )
        });
        Collected {
            stream: self.stream,
            last_stdout,
            stderr_tail: self.stderr_tail,
        }
    }
}

/// The event of a stream-json message: its `type` is its kind.
fn message_event(message: Map<String, Value>) -> OutputEvent {
    let kind = message
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("stdout")
        .to_owned();
    OutputEvent::Message { kind, message }
}

async fn deliver(output: &mpsc::Sender<OutputEvent>, event: OutputEvent) {
    // A caller that stopped listening does not stop the run; the outcome is still computed.
    let _ = output.send(event).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runtime {
    Claude,
    Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exit {
    code: Option<i32>,
    signal: Option<i32>,
}

impl From<ExitStatus> for Exit {
    fn from(status: ExitStatus) -> Self {
        Exit {
            code: status.code(),
            signal: status.signal(),
        }
    }
}

fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs >= 1.0 && duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// The outcome rules (see `RunOutcome`): cancel and timeout first, then Claude's `result` message, then the exit.
fn decide(runtime: Runtime, exit: Exit, stop: Option<Stop>, collected: Collected) -> RunOutcome {
    let Collected {
        stream,
        last_stdout,
        stderr_tail,
    } = collected;
    let result_message = stream.result.as_ref();
    let summary = result_message.and_then(result_text).or_else(|| {
        (runtime == Runtime::Command)
            .then_some(last_stdout)
            .flatten()
    });
    let mut outcome = RunOutcome {
        status: RunStatus::Completed,
        exit_reason: ExitReason::Success,
        exit_code: exit.code,
        signal: exit.signal,
        summary,
        result: stream.result.clone().map(Value::Object),
        session_id: stream.session_id.clone(),
        error: None,
        termination: None,
    };
    let program = match runtime {
        Runtime::Claude => "claude",
        Runtime::Command => "the command",
    };
    let with_stderr = |message: String| {
        if stderr_tail.is_empty() {
            message
        } else {
            let tail: Vec<&str> = stderr_tail.iter().map(String::as_str).collect();
            format!("{message}; stderr:\n{}", tail.join("\n"))
        }
    };
    let exit_failure = || match (exit.code, exit.signal) {
        (_, Some(signal)) => (
            "SIGNAL",
            with_stderr(format!("{program} was killed by signal {signal}")),
        ),
        (Some(code), None) => (
            "EXIT_CODE",
            with_stderr(format!("{program} exited with code {code}")),
        ),
        (None, None) => (
            "EXIT_CODE",
            with_stderr(format!("{program} ended with an unknown exit status")),
        ),
    };
    let (status, reason, error) = match stop {
        Some(Stop::Cancelled) => (RunStatus::Cancelled, ExitReason::Cancelled, None),
        Some(Stop::Timeout(limit)) => (
            RunStatus::Failed,
            ExitReason::Timeout,
            Some((
                "TIMEOUT",
                format!(
                    "timed out after {}; the job was stopped",
                    format_duration(limit)
                ),
            )),
        ),
        None => match (runtime, result_message.map(judge_result)) {
            (Runtime::Claude, Some(Verdict::Success)) => {
                (RunStatus::Completed, ExitReason::Success, None)
            }
            (Runtime::Claude, Some(Verdict::MaxTurns(message))) => (
                RunStatus::Failed,
                ExitReason::MaxTurns,
                Some(("MAX_TURNS", message)),
            ),
            (Runtime::Claude, Some(Verdict::Error(message))) => (
                RunStatus::Failed,
                ExitReason::Error,
                Some(("RESULT_ERROR", message)),
            ),
            (Runtime::Claude, None) if exit.code == Some(0) => (
                RunStatus::Failed,
                ExitReason::Error,
                Some((
                    "NO_RESULT",
                    with_stderr("claude exited without a result".to_owned()),
                )),
            ),
            (Runtime::Command, _) if exit.code == Some(0) => {
                (RunStatus::Completed, ExitReason::Success, None)
            }
            _ => {
                let (code, message) = exit_failure();
                (RunStatus::Failed, ExitReason::Error, Some((code, message)))
            }
        },
    };
    outcome.status = status;
    outcome.exit_reason = reason;
    outcome.error = error.map(|(code, message)| JobError {
        code: code.to_owned(),
        message,
    });
    outcome
}

#[cfg(test)]
mod tests;
