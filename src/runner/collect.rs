//! What a run's output says: batches of lines become output events (stream-json messages parsed on the
//! way), and the exit, the stop and what the output said decide the run's outcome. Shared by every place a
//! job runs (the host, a container): they differ in how they start and stop a job, not in what its output
//! means.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::claude::{judge_result, parse_message, result_text, StreamState, Verdict};
use super::output::TextLines;
use super::{ExitReason, JobError, OutputEvent, OutputStream, RunOutcome, RunStatus, RuntimeSpec};

/// Lines of stderr quoted in an error.
const STDERR_TAIL_LINES: usize = 20;
/// Bytes of one stderr line quoted in an error.
const STDERR_TAIL_LINE_BYTES: usize = 1000;

/// Why a run was stopped before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    Timeout(Duration),
    Cancelled,
}

/// Turns batches of lines into output events and remembers what the outcome needs.
pub(super) struct Collector {
    output: mpsc::Sender<OutputEvent>,
    stream: StreamState,
    /// The last non-blank stdout line, raw: kept in one reused buffer, made text once at the end.
    last_stdout: Vec<u8>,
    stderr_tail: VecDeque<String>,
}

/// What the output of a run said, for [`decide`].
#[derive(Debug, Default)]
pub(super) struct Collected {
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
    pub(super) fn new(output: mpsc::Sender<OutputEvent>) -> Self {
        Collector {
            output,
            stream: StreamState::default(),
            last_stdout: Vec::new(),
            stderr_tail: VecDeque::new(),
        }
    }

    pub(super) async fn push(&mut self, stream: OutputStream, lines: TextLines) {
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

    pub(super) fn finish(self) -> Collected {
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

/// What ran, for the outcome's rules and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Program {
    runtime: Runtime,
    in_container: bool,
}

impl Program {
    pub(super) fn of(runtime: &RuntimeSpec, in_container: bool) -> Program {
        let runtime = match runtime {
            RuntimeSpec::Claude(_) => Runtime::Claude,
            RuntimeSpec::Command { .. } => Runtime::Command,
        };
        Program {
            runtime,
            in_container,
        }
    }
}

/// How the job's leader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl From<ExitStatus> for Exit {
    fn from(status: ExitStatus) -> Self {
        Exit {
            code: status.code(),
            signal: status.signal(),
        }
    }
}

impl Exit {
    /// A container's exit status: engines report a first process killed by signal N as 128 + N.
    pub(super) fn of_container(status: i64) -> Exit {
        match i32::try_from(status) {
            Ok(code @ 129..=192) => Exit {
                code: None,
                signal: Some(code - 128),
            },
            Ok(code) => Exit {
                code: Some(code),
                signal: None,
            },
            Err(_) => Exit::default(),
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
pub(super) fn decide(
    program: Program,
    exit: Exit,
    stop: Option<Stop>,
    collected: Collected,
) -> RunOutcome {
    let runtime = program.runtime;
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
    let name = match (runtime, program.in_container) {
        (Runtime::Claude, false) => "claude",
        (Runtime::Command, false) => "the command",
        (Runtime::Claude, true) => "claude (in its container)",
        (Runtime::Command, true) => "the command (in its container)",
    };
    // An engine kills a container's process with SIGKILL when it reaches the memory limit; say so,
    // since the engine's own OOM flag is not reliable.
    let limit_hint = if program.in_container && exit.signal == Some(9) {
        "; in a container this is also how the memory limit (docker.memory) ends a process"
    } else {
        ""
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
            with_stderr(format!("{name} was killed by signal {signal}{limit_hint}")),
        ),
        (Some(code), None) => (
            "EXIT_CODE",
            with_stderr(format!("{name} exited with code {code}")),
        ),
        (None, None) => (
            "EXIT_CODE",
            with_stderr(format!("{name} ended with an unknown exit status")),
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
