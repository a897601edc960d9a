//! The real Claude Code CLI, run through the runner against a local stub of the Messages API: proves our argv,
//! environment and stream-json parsing work with the program we ship for, offline.
//!
//! Skipped with a `SKIPPED:` line on stderr when `claude` is not installed (and `HERDCTL_CLAUDE_BIN` is unset),
//! except under CI (`CI` set), which installs it, so there its absence fails the test.

mod claude_stub;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use claude_stub::{MessagesStub, Recorded, Reply};
use herdctld::job::OutputLine;
use herdctld::runner::{
    self, become_subreaper, ClaudeSpec, ExitReason, OutputLimits, RunOutcome, RunSpec, RunStatus,
    RuntimeSpec, CLAUDE_BIN_ENV,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// A run normally takes 1–2 s, but the CLI's first start in a new checkout (its caches cold) while the rest
/// of the suite runs took over 25 s on a 2-core machine; this bounds a CLI that waits on something
/// unreachable.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// Whether the CLI can be run; `false` means skip (after saying so). Panics under CI when it is missing.
fn claude_available() -> bool {
    if std::env::var_os(CLAUDE_BIN_ENV).is_some_and(|v| !v.is_empty()) {
        return true;
    }
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| is_executable(&dir.join("claude")))
    });
    if on_path {
        return true;
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    assert!(
        !in_ci,
        "claude CLI not installed, and CI is set: CI must install it (npm install -g @anthropic-ai/claude-code)"
    );
    // Straight to the stderr handle: the test harness captures `eprintln!`, and this must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: claude CLI not installed (npm install -g @anthropic-ai/claude-code)"
    );
    false
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where one run lives: a working directory and a HOME of its own, so the CLI never touches the real `~/.claude`.
struct Sandbox {
    _dir: tempfile::TempDir,
    cwd: PathBuf,
    home: PathBuf,
}

fn sandbox() -> Sandbox {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("work");
    let home = dir.path().join("home");
    std::fs::create_dir(&cwd).unwrap();
    std::fs::create_dir(&home).unwrap();
    Sandbox {
        _dir: dir,
        cwd,
        home,
    }
}

/// The environment the CLI needs to run against the stub and nothing else.
fn offline_env(stub: &MessagesStub, home: &Path) -> Vec<(String, String)> {
    [
        ("ANTHROPIC_BASE_URL", stub.base_url()),
        ("ANTHROPIC_API_KEY", "test-key"),
        ("HOME", &home.to_string_lossy()),
        // Without this the CLI resolves api.anthropic.com (telemetry, feature flags) besides the base URL.
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("DISABLE_AUTOUPDATER", "1"),
        ("DISABLE_TELEMETRY", "1"),
        ("DISABLE_ERROR_REPORTING", "1"),
        // A stub that misbehaves fails the run quickly instead of being retried for minutes.
        ("API_TIMEOUT_MS", "15000"),
        ("CLAUDE_CODE_MAX_RETRIES", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn run_spec(prompt: &str, claude: ClaudeSpec, sandbox: &Sandbox, stub: &MessagesStub) -> RunSpec {
    RunSpec {
        job_id: format!("job-claude-cli-{}", fastrand::u64(..)),
        agent: "cli-tester".to_owned(),
        schedule: None,
        prompt: prompt.to_owned(),
        runtime: RuntimeSpec::Claude(Box::new(claude)),
        cwd: sandbox.cwd.clone(),
        env: offline_env(stub, &sandbox.home),
        timeout: Some(RUN_TIMEOUT),
        stop_grace: Duration::from_secs(2),
        limits: OutputLimits::default(),
        container: None,
    }
}

/// Runs to the end, collecting every output line.
async fn run(spec: RunSpec) -> (RunOutcome, Vec<OutputLine>) {
    // As in the daemon: escaped descendants of the CLI are ours to find and reap.
    become_subreaper().unwrap();
    let (tx, mut rx) = mpsc::channel::<runner::OutputEvent>(64);
    let collect = tokio::spawn(async move {
        let mut lines: Vec<OutputLine> = Vec::new();
        while let Some(event) = rx.recv().await {
            let first = lines.len() as u64;
            lines.extend(event.into_lines(first, chrono::Utc::now()));
        }
        lines
    });
    let outcome = runner::start(spec, tx).wait().await;
    (outcome, collect.await.unwrap())
}

/// What to look at when an assertion fails: the outcome, the CLI's stderr and what the stub was asked.
fn diagnosis(outcome: &RunOutcome, events: &[OutputLine], stub: &MessagesStub) -> String {
    let stderr: Vec<String> = events
        .iter()
        .filter(|e| e.kind == "stderr")
        .map(|e| e.chunk.clone())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let requests: Vec<String> = stub
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    format!(
        "outcome: {outcome:?}\noutput kinds: {kinds:?}\nstderr:\n{}\nstub requests: {requests:?}",
        stderr.join("\n")
    )
}

fn events_of<'a>(events: &'a [OutputLine], kind: &'a str) -> impl Iterator<Item = &'a OutputLine> {
    events.iter().filter(move |e| e.kind == kind)
}

/// The content blocks of the messages of one output kind (`assistant`, `user`).
fn content_blocks<'a>(events: &'a [OutputLine], kind: &'a str) -> Vec<&'a Value> {
    events_of(events, kind)
        .filter_map(|e| {
            e.message
                .as_ref()?
                .get("message")?
                .get("content")?
                .as_array()
        })
        .flatten()
        .collect()
}

fn messages_requests(stub: &MessagesStub) -> Vec<Recorded> {
    stub.requests()
        .into_iter()
        .filter(Recorded::is_messages)
        .collect()
}

/// The blocks of every message of one request body, with string contents as text blocks.
fn request_blocks(body: &Value) -> Vec<Value> {
    body.get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|message| match message.get("content") {
            Some(Value::Array(blocks)) => blocks.clone(),
            Some(Value::String(text)) => vec![json!({"type": "text", "text": text})],
            _ => Vec::new(),
        })
        .collect()
}

/// The text of a `tool_result` block, whose content is a string or a list of text blocks.
fn tool_result_text(block: &Value) -> String {
    match block.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

fn assert_completed_with(
    outcome: &RunOutcome,
    events: &[OutputLine],
    stub: &MessagesStub,
    answer: &str,
) {
    let why = diagnosis(outcome, events, stub);
    assert_eq!(outcome.status, RunStatus::Completed, "{why}");
    assert_eq!(outcome.exit_reason, ExitReason::Success, "{why}");
    assert_eq!(outcome.exit_code, Some(0), "{why}");
    assert_eq!(outcome.summary.as_deref(), Some(answer), "{why}");
    let init = events_of(events, "system")
        .find(|e| {
            let subtype = e.message.as_ref().and_then(|m| m.get("subtype"));
            subtype.and_then(Value::as_str) == Some("init")
        })
        .unwrap_or_else(|| panic!("no system init event\n{why}"));
    let init_session = init
        .message
        .as_ref()
        .and_then(|m| m.get("session_id"))
        .and_then(Value::as_str);
    assert!(init_session.is_some_and(|s| !s.is_empty()), "{why}");
    assert_eq!(outcome.session_id.as_deref(), init_session, "{why}");
    assert_eq!(events_of(events, "result").count(), 1, "{why}");
}

#[tokio::test]
async fn real_cli_completes_with_the_stubs_answer() {
    if !claude_available() {
        return;
    }
    const ANSWER: &str = "Hello from the stub: all is well.";
    const PROMPT: &str = "Say hello to herdctld.";
    let stub = MessagesStub::start(|_| Reply::Text(ANSWER.to_owned()))
        .await
        .unwrap();
    let sandbox = sandbox();
    let spec = run_spec(PROMPT, ClaudeSpec::default(), &sandbox, &stub);

    let (outcome, events) = run(spec).await;

    assert_completed_with(&outcome, &events, &stub, ANSWER);
    let why = diagnosis(&outcome, &events, &stub);
    let turns = messages_requests(&stub);
    assert_eq!(turns.len(), 1, "{why}");
    let turn = &turns[0];
    assert_eq!(turn.header("x-api-key"), Some("test-key"), "{why}");
    let body = turn.json().unwrap();
    assert_eq!(body.get("stream"), Some(&json!(true)), "{why}");
    let prompt_arrived = request_blocks(&body).iter().any(|block| {
        block
            .get("text")
            .and_then(Value::as_str)
            .is_some_and(|t| t.contains(PROMPT))
    });
    assert!(prompt_arrived, "the prompt is not in the request\n{why}");
    let answered = content_blocks(&events, "assistant")
        .iter()
        .any(|b| b.get("text").and_then(Value::as_str) == Some(ANSWER));
    assert!(answered, "no assistant event carries the answer\n{why}");
    // The CLI kept its transcript under our HOME, named by the session id we report (what `--resume` needs).
    let transcript = format!(
        "{}.jsonl",
        outcome.session_id.as_deref().unwrap_or_default()
    );
    let projects = sandbox.home.join(".claude").join("projects");
    let kept = std::fs::read_dir(&projects)
        .into_iter()
        .flatten()
        .flatten()
        .any(|project| project.path().join(&transcript).is_file());
    assert!(kept, "no {transcript} under {}\n{why}", projects.display());
}

#[tokio::test]
async fn real_cli_runs_a_tool_and_completes() {
    if !claude_available() {
        return;
    }
    const TOOL_ID: &str = "toolu_herdctld_1";
    // Not one of the commands the CLI runs unasked (plain `echo hi` is), and it reads the job's environment.
    const COMMAND: &str = r#"sh -c 'echo "hi from $HERDCTL_AGENT"'"#;
    const TOOL_OUTPUT: &str = "hi from cli-tester";
    const ANSWER: &str = "The tool said hi.";
    let stub = MessagesStub::start(|body| {
        let has_tool_result = request_blocks(body).iter().any(|block| {
            block.get("type").and_then(Value::as_str) == Some("tool_result")
                && block.get("tool_use_id").and_then(Value::as_str) == Some(TOOL_ID)
        });
        if has_tool_result {
            Reply::Text(ANSWER.to_owned())
        } else {
            Reply::ToolUse {
                id: TOOL_ID.to_owned(),
                name: "Bash".to_owned(),
                input: json!({"command": COMMAND, "description": "Greet from the agent"}),
            }
        }
    })
    .await
    .unwrap();
    let sandbox = sandbox();
    // `-p` mode asks no one, so the command must be allowed up front (without this rule the tool result is "This
    // command requires approval"); `bypassPermissions` would not do: the CLI refuses it as root.
    let claude = ClaudeSpec {
        allowed_tools: Some(vec!["Bash(sh -c *)".to_owned()]),
        ..ClaudeSpec::default()
    };
    let spec = run_spec("Greet me from a shell, please.", claude, &sandbox, &stub);

    let (outcome, events) = run(spec).await;

    assert_completed_with(&outcome, &events, &stub, ANSWER);
    let why = diagnosis(&outcome, &events, &stub);
    let tool_use = content_blocks(&events, "assistant")
        .into_iter()
        .find(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
        .unwrap_or_else(|| panic!("no tool_use in the output\n{why}"));
    assert_eq!(tool_use.get("id"), Some(&json!(TOOL_ID)), "{why}");
    assert_eq!(tool_use.get("name"), Some(&json!("Bash")), "{why}");
    let tool_result = content_blocks(&events, "user")
        .into_iter()
        .find(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        .unwrap_or_else(|| panic!("no tool_result in the output\n{why}"));
    assert_eq!(
        tool_result.get("tool_use_id"),
        Some(&json!(TOOL_ID)),
        "{why}"
    );
    assert_ne!(tool_result.get("is_error"), Some(&json!(true)), "{why}");
    assert_eq!(tool_result_text(tool_result).trim(), TOOL_OUTPUT, "{why}");
    // The CLI ran the command in the job's environment and sent its output back to the model.
    let turns = messages_requests(&stub);
    assert_eq!(turns.len(), 2, "{why}");
    let sent_back = request_blocks(&turns[1].json().unwrap())
        .into_iter()
        .find(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        .unwrap_or_else(|| panic!("the second request has no tool_result\n{why}"));
    assert_eq!(tool_result_text(&sent_back).trim(), TOOL_OUTPUT, "{why}");
}

#[tokio::test]
async fn real_cli_api_error_fails_the_job_with_the_apis_message() {
    if !claude_available() {
        return;
    }
    const REFUSAL: &str = "the stub refuses this request";
    let stub = MessagesStub::start(|_| Reply::Error {
        status: 400,
        message: REFUSAL.to_owned(),
    })
    .await
    .unwrap();
    let sandbox = sandbox();
    let spec = run_spec("Say hello.", ClaudeSpec::default(), &sandbox, &stub);

    let (outcome, events) = run(spec).await;

    let why = diagnosis(&outcome, &events, &stub);
    assert_eq!(outcome.status, RunStatus::Failed, "{why}");
    assert_eq!(outcome.exit_reason, ExitReason::Error, "{why}");
    let error = outcome.error.as_ref().unwrap_or_else(|| panic!("{why}"));
    assert_eq!(error.code, "RESULT_ERROR", "{why}");
    assert!(error.message.contains(REFUSAL), "{why}");
    assert!(outcome.session_id.is_some(), "{why}");
    // A 400 is not retried.
    assert_eq!(messages_requests(&stub).len(), 1, "{why}");
}

/// What the fleet's fresh-session retry (`fleet::sessions`) recognises: resuming a session the CLI does not
/// have fails with "No conversation found" (audit 2026-12, finding 4), before any request to the API.
#[tokio::test]
async fn real_cli_resuming_a_session_it_does_not_have_says_no_conversation_found() {
    if !claude_available() {
        return;
    }
    let stub = MessagesStub::start(|_| Reply::Error {
        status: 500,
        message: "the stub was asked although the session does not exist".to_owned(),
    })
    .await
    .unwrap();
    let sandbox = sandbox();
    let gone = "6f1c2d3e-0000-4000-8000-000000000001";
    let claude = ClaudeSpec {
        resume_session: Some(gone.to_owned()),
        ..ClaudeSpec::default()
    };
    let (outcome, events) = run(run_spec("Continue.", claude, &sandbox, &stub)).await;

    let why = diagnosis(&outcome, &events, &stub);
    assert_eq!(outcome.status, RunStatus::Failed, "{why}");
    let error = outcome.error.as_ref().unwrap_or_else(|| panic!("{why}"));
    assert!(
        error.message.contains("No conversation found") && error.message.contains(gone),
        "{why}"
    );
}
