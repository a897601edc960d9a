//! A herdctl project switches to herdctld and loses nothing (issue 13): herdctld started on a state
//! directory in herdctl's formats reads its history, schedules and sessions in place, moves nothing aside,
//! and leaves files herdctl reads back; `.env` reaches jobs; Docker agents never run on the host; sessions
//! expire and die as herdctl handles them.
//!
//! The herdctl files here are this project's own fixtures, written field for field in herdctl 5.33's
//! layout (`state.yaml`, `jobs/<id>.yaml`, `jobs/<id>.jsonl`, `sessions/<agent>.json`). The state
//! directory the real herdctl wrote (`../shared/compat/herdctl-state`) is used too when it is there.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use support::*;

/// A `claude` that answers in stream-json: it resumes the session `--resume` names (or starts
/// `fresh-session`), says "No conversation found" for sessions named `dead-*`, and prints its argv.
const FAKE_CLAUDE: &str = r#"#!/bin/sh
session=fresh-session
while [ $# -gt 0 ]; do
  case "$1" in --resume) session="$2"; shift ;; esac
  shift
done
cat >/dev/null
case "$session" in
  dead-*)
    printf '{"type":"result","subtype":"success","is_error":true,"result":"No conversation found with session ID: %s","session_id":"%s"}\n' "$session" "$session"
    exit 1 ;;
esac
printf '{"type":"system","subtype":"init","session_id":"%s"}\n' "$session"
printf '{"type":"result","subtype":"success","is_error":false,"result":"ran in %s","session_id":"%s","num_turns":1,"total_cost_usd":0.01,"modelUsage":{"claude-test":{"inputTokens":3,"outputTokens":2,"cacheReadInputTokens":0,"cacheCreationInputTokens":0}}}\n' "$session" "$session"
"#;

fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The fleet of these tests: `alpha` (Claude through the fake, resumes on `tick`), `beta` (a command with
/// two 1 s interval schedules, `nightly` and `pulse`).
fn write_dropin_fleet(dir: &Path, alpha_extra: &str) {
    let fake = dir.join("fake-claude");
    write(&fake, FAKE_CLAUDE);
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for agent in ["alpha", "beta"] {
        std::fs::create_dir_all(dir.join("workspaces").join(agent)).unwrap();
    }
    write(
        &dir.join("herdctl.yaml"),
        "version: 1\nfleet:\n  name: dropin\ndefaults:\n  session:\n    timeout: 24h\nagents:\n  \
         - path: ./agents/alpha.yaml\n  - path: ./agents/beta.yaml\n",
    );
    write(
        &dir.join("agents/alpha.yaml"),
        &format!(
            "name: alpha\nruntime: cli\nclaude_bin: {}\nworking_directory: ../workspaces/alpha\n\
             schedules:\n  tick:\n    type: interval\n    interval: 1h\n    prompt: tick\n    \
             resume_session: true\n{alpha_extra}",
            fake.display()
        ),
    );
    write(
        &dir.join("agents/beta.yaml"),
        "name: beta\nruntime: command\ncommand: [sh, -c, 'echo beta $HERDCTL_SCHEDULE']\n\
         working_directory: ../workspaces/beta\nschedules:\n  nightly:\n    type: interval\n    \
         interval: 1s\n  pulse:\n    type: interval\n    interval: 1s\n",
    );
}

fn alpha_workspace(dir: &Path) -> String {
    dir.join("workspaces/alpha").display().to_string()
}

/// herdctl's `sessions/<agent>.json`.
fn session_pointer(
    agent: &str,
    session: &str,
    workspace: &str,
    last_used: DateTime<Utc>,
) -> String {
    format!(
        "{{\n  \"agent_name\": \"{agent}\",\n  \"session_id\": \"{session}\",\n  \"created_at\": \"{}\",\n  \
         \"last_used_at\": \"{}\",\n  \"job_count\": 4,\n  \"mode\": \"autonomous\",\n  \
         \"working_directory\": \"{workspace}\",\n  \"runtime_type\": \"cli\",\n  \"docker_enabled\": false\n}}\n",
        iso(last_used),
        iso(last_used)
    )
}

/// A herdctl job record.
#[allow(clippy::too_many_arguments)]
fn herdctl_record(
    id: &str,
    agent: &str,
    schedule: Option<&str>,
    trigger: &str,
    status: &str,
    exit_reason: Option<&str>,
    started: DateTime<Utc>,
    output_file: Option<&Path>,
) -> String {
    let null_or = |value: Option<&str>| value.map_or("null".to_owned(), str::to_owned);
    let finished = exit_reason.map(|_| iso(started + chrono::Duration::milliseconds(1500)));
    format!(
        "id: {id}\nagent: {agent}\nschedule: {}\ntrigger_type: {trigger}\nstatus: {status}\nexit_reason: {}\n\
         session_id: {}\nforked_from: null\nstarted_at: {}\nfinished_at: {}\nduration_seconds: {}\n\
         prompt: Scheduled tick from {agent}\nsummary: {}\noutput_file: {}\nusage: null\n",
        null_or(schedule),
        null_or(exit_reason),
        if exit_reason.is_some() { "seeded-session-1" } else { "null" },
        iso(started),
        null_or(finished.as_deref()),
        if exit_reason.is_some() { "2" } else { "null" },
        if status == "completed" { "\"Done: tick\"" } else { "null" },
        output_file.map_or("null".to_owned(), |path| path.display().to_string()),
    )
}

fn herdctl_output(lines: &[(&str, &str)], at: DateTime<Utc>) -> String {
    lines
        .iter()
        .map(|(kind, content)| {
            format!(
                "{}\n",
                json!({"type": kind, "content": content, "timestamp": iso(at)})
            )
        })
        .collect()
}

const COMPLETED: &str = "job-2026-11-30-comp01";
const FAILED: &str = "job-2026-11-30-fail01";
const PENDING: &str = "job-2026-11-30-pend01";
const RUNNING: &str = "job-2026-11-30-runn01";

/// A state directory as a herdctl that ran `alpha` and `beta` and then died leaves it.
fn write_herdctl_state(dir: &Path) -> PathBuf {
    let state = dir.join("state");
    let jobs = state.join("jobs");
    let now = Utc::now();
    let earlier = now - chrono::Duration::minutes(10);
    write(
        &state.join("state.yaml"),
        &format!(
            "fleet: {{}}\nagents:\n  alpha:\n    status: idle\n    schedules:\n      tick:\n        \
             last_run_at: {}\n        next_run_at: {}\n        status: idle\n        last_error: null\n  \
             beta:\n    status: idle\n    schedules:\n      nightly:\n        last_run_at: null\n        \
             next_run_at: null\n        status: disabled\n        last_error: null\nsession_wakes:\n  \
             wake-1:\n    id: wake-1\n    agent: alpha\n    recurring: false\n",
            iso(earlier),
            iso(earlier + chrono::Duration::hours(1))
        ),
    );
    let record = |id: &str, text: String| write(&jobs.join(format!("{id}.yaml")), &text);
    let output = |id: &str| jobs.join(format!("{id}.jsonl"));
    record(
        COMPLETED,
        herdctl_record(
            COMPLETED,
            "alpha",
            Some("tick"),
            "schedule",
            "completed",
            Some("success"),
            earlier,
            Some(&output(COMPLETED)),
        ),
    );
    write(
        &output(COMPLETED),
        &herdctl_output(
            &[
                ("system", "CLI session initialized"),
                ("assistant", "Done: tick"),
                ("tool_result", "Done: tick"),
            ],
            earlier,
        ),
    );
    record(
        FAILED,
        herdctl_record(
            FAILED,
            "alpha",
            None,
            "manual",
            "failed",
            Some("error"),
            earlier + chrono::Duration::minutes(1),
            Some(&output(FAILED)),
        ),
    );
    write(
        &output(FAILED),
        &herdctl_output(&[("error", "Claude CLI exited with code 3")], earlier),
    );
    record(
        PENDING,
        herdctl_record(
            PENDING,
            "alpha",
            None,
            "fork",
            "pending",
            None,
            earlier + chrono::Duration::minutes(2),
            None,
        ),
    );
    // A field herdctl (or one of its connectors) wrote that herdctld does not know: kept on rewrite.
    record(
        RUNNING,
        herdctl_record(
            RUNNING,
            "beta",
            Some("pulse"),
            "discord",
            "running",
            None,
            earlier + chrono::Duration::minutes(3),
            None,
        ) + "discord_channel: '4242'\n",
    );
    write(
        &output(RUNNING),
        &herdctl_output(&[("system", "CLI session initialized")], earlier),
    );
    write(
        &state.join("sessions/alpha.json"),
        &session_pointer(
            "alpha",
            "seeded-session-1",
            &alpha_workspace(dir),
            now - chrono::Duration::hours(1),
        ),
    );
    state
}

fn files_moved_aside(state: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for dir in [
        state.to_path_buf(),
        state.join("jobs"),
        state.join("sessions"),
    ] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.contains(".corrupt-") {
                found.push(name);
            }
        }
    }
    found
}

fn is_iso_datetime(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|text| DateTime::parse_from_rfc3339(text).is_ok())
}

fn is_job_id(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 21
        && text.starts_with("job-")
        && bytes[4..8].iter().all(u8::is_ascii_digit)
        && bytes[8] == b'-'
        && bytes[9..11].iter().all(u8::is_ascii_digit)
        && bytes[11] == b'-'
        && bytes[12..14].iter().all(u8::is_ascii_digit)
        && bytes[14] == b'-'
        && bytes[15..]
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// herdctl's `JobMetadataSchema` rules (reference §4.1): required fields, enums, the id pattern, types of
/// the nullable fields. Returns what is wrong.
fn herdctl_job_schema_violations(record: &Value) -> Vec<String> {
    let mut wrong = Vec::new();
    let one_of = |key: &str, allowed: &[&str], nullable: bool| {
        let value = &record[key];
        (value.is_null() && nullable) || value.as_str().is_some_and(|v| allowed.contains(&v))
    };
    if !record["id"].as_str().is_some_and(is_job_id) {
        wrong.push(format!("id {}", record["id"]));
    }
    if record["agent"].as_str().is_none_or(str::is_empty) {
        wrong.push("agent".into());
    }
    let triggers = [
        "manual", "schedule", "webhook", "chat", "discord", "slack", "web", "fork", "spawned",
    ];
    if !one_of("trigger_type", &triggers, false) {
        wrong.push(format!("trigger_type {}", record["trigger_type"]));
    }
    let statuses = ["pending", "running", "completed", "failed", "cancelled"];
    if !one_of("status", &statuses, false) {
        wrong.push(format!("status {}", record["status"]));
    }
    let reasons = ["success", "error", "timeout", "cancelled", "max_turns"];
    if !one_of("exit_reason", &reasons, true) {
        wrong.push(format!("exit_reason {}", record["exit_reason"]));
    }
    if !is_iso_datetime(&record["started_at"]) {
        wrong.push(format!("started_at {}", record["started_at"]));
    }
    if !(record["finished_at"].is_null() || is_iso_datetime(&record["finished_at"])) {
        wrong.push("finished_at".into());
    }
    if !(record["forked_from"].is_null() || record["forked_from"].as_str().is_some_and(is_job_id)) {
        wrong.push("forked_from".into());
    }
    for key in ["schedule", "session_id", "prompt", "summary", "output_file"] {
        if !(record[key].is_null() || record[key].is_string()) {
            wrong.push(key.into());
        }
    }
    if !(record["duration_seconds"].is_null() || record["duration_seconds"].is_number()) {
        wrong.push("duration_seconds".into());
    }
    if !(record["usage"].is_null() || record["usage"]["per_model"].is_object()) {
        wrong.push(format!("usage {}", record["usage"]));
    }
    wrong
}

fn read_yaml(path: &Path) -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every record, `state.yaml` and every session pointer of `state` as herdctl's schemas would check them.
fn assert_herdctl_reads_back(state: &Path) {
    for entry in std::fs::read_dir(state.join("jobs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let wrong = herdctl_job_schema_violations(&read_yaml(&path));
            assert!(wrong.is_empty(), "{}: {wrong:?}", path.display());
        }
    }
    let fleet_state = read_yaml(&state.join("state.yaml"));
    assert!(fleet_state["fleet"].is_object(), "{fleet_state}");
    assert!(fleet_state.get("schedules").is_none(), "{fleet_state}");
    for (agent, agent_state) in fleet_state["agents"].as_object().unwrap() {
        for (name, schedule) in agent_state["schedules"].as_object().unwrap() {
            let status = schedule["status"].as_str().unwrap_or("idle");
            assert!(
                ["idle", "running", "disabled"].contains(&status),
                "{agent}/{name}: {schedule}"
            );
            for key in ["last_run_at", "next_run_at"] {
                assert!(
                    schedule[key].is_null() || is_iso_datetime(&schedule[key]),
                    "{agent}/{name}.{key}"
                );
            }
        }
    }
    for entry in std::fs::read_dir(state.join("sessions")).unwrap() {
        let path = entry.unwrap().path();
        let pointer: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for key in ["agent_name", "session_id", "mode", "runtime_type"] {
            assert!(pointer[key].is_string(), "{}: {key}", path.display());
        }
        for key in ["created_at", "last_used_at"] {
            assert!(is_iso_datetime(&pointer[key]), "{}: {key}", path.display());
        }
        assert!(pointer["job_count"].is_u64() && pointer["docker_enabled"].is_boolean());
    }
}

/// Triggers a job, waits for its end and returns its record with its output.
async fn run_job(client: &mut Client, params: Value) -> Value {
    let job = client.call("trigger", params).await;
    let id = job["id"].as_str().unwrap().to_owned();
    wait_for_job_status(client, &id, &["completed", "failed"]).await;
    client
        .call("getJob", json!({"id": id, "includeOutput": true}))
        .await
}

fn tick() -> Value {
    json!({"agentName": "alpha", "scheduleName": "tick"})
}

async fn stop(daemon: &mut Daemon) {
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}; stderr:\n{}", daemon.stderr());
}

fn keep_fleet() -> DaemonOptions {
    DaemonOptions {
        keep_existing_fleet: true,
        ..DaemonOptions::default()
    }
}

/// The fleet without its scheduler: only the test's triggers run (`tick` would fire at start).
fn keep_fleet_unscheduled() -> DaemonOptions {
    DaemonOptions {
        args: vec!["--no-start".into()],
        ..keep_fleet()
    }
}

#[tokio::test]
async fn a_herdctl_state_directory_is_read_in_place_kept_and_left_readable_by_herdctl() {
    let dir = TestDir::new();
    write_dropin_fleet(dir.path(), "");
    let state = write_herdctl_state(dir.path());
    let mut daemon = Daemon::start_in(dir, keep_fleet()).await;
    let mut client = daemon.ndjson().await;
    let events = client
        .subscribe("subscribeEvents", json!({"types": ["schedule:triggered"]}))
        .await;

    // The whole history (beside what `pulse` ran since the start), with herdctl's output numbered in
    // file order.
    let jobs = client.call("getJobs", json!({"limit": 100})).await;
    let ids: Vec<&str> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap())
        .collect();
    for id in [COMPLETED, FAILED, PENDING, RUNNING] {
        assert!(ids.contains(&id), "{id} missing from {jobs}");
    }
    let completed = client
        .call("getJob", json!({"id": COMPLETED, "includeOutput": true}))
        .await;
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["triggerType"], "schedule");
    assert_eq!(completed["durationMs"], 2000);
    let output = completed["output"].as_array().unwrap();
    let seqs: Vec<u64> = output.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [0, 1, 2], "{completed}");
    assert_eq!(output[1]["type"], "assistant");
    assert_eq!(output[1]["chunk"], "Done: tick");
    assert_eq!(
        client.call("getJob", json!({"id": FAILED})).await["exitReason"],
        "error"
    );
    // What the dead herdctl left pending or running is interrupted, like our own.
    for id in [PENDING, RUNNING] {
        let job = client.call("getJob", json!({"id": id})).await;
        assert_eq!(
            (job["status"].as_str(), job["exitReason"].as_str()),
            (Some("failed"), Some("interrupted")),
            "{job}"
        );
        let said = job["error"]["message"].as_str().unwrap_or_default();
        let started = id == RUNNING;
        assert_eq!(said.contains("not resumed"), started, "{said}");
        assert_eq!(said.contains("not run"), !started, "{said}");
    }
    assert_eq!(files_moved_aside(&state), Vec::<String>::new());

    // The schedule disabled in herdctl stays disabled.
    let schedules = client.call("getSchedules", json!({})).await;
    let nightly = schedules
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["agentName"] == "beta" && s["name"] == "nightly")
        .unwrap_or_else(|| panic!("{schedules}"));
    assert_eq!(nightly["enabled"], false, "{nightly}");

    // A manual run of the resuming schedule resumes herdctl's session.
    let done = run_job(&mut client, tick()).await;
    let job_id = done["id"].as_str().unwrap().to_owned();
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["summary"], "ran in seeded-session-1");
    assert_eq!(done["sessionId"], "seeded-session-1");
    assert_eq!(
        done["usage"]["perModel"]["claude-test"]["inputTokens"], 3,
        "{done}"
    );

    // Silent: `pulse`, due at the same times, fires twice while `nightly` never does.
    let mut pulses = 0;
    while pulses < 2 {
        let event = client.notification(&events).await;
        assert_eq!(event["agentName"], "beta", "{event}");
        assert_ne!(
            event["scheduleName"], "nightly",
            "a disabled schedule fired"
        );
        if event["scheduleName"] == "pulse" {
            pulses += 1;
        }
    }
    drop(client);
    stop(&mut daemon).await;

    // After a stop everything is still in herdctl's layout, with what herdctl wrote kept.
    assert_eq!(files_moved_aside(&state), Vec::<String>::new());
    let fleet_state = read_yaml(&state.join("state.yaml"));
    assert_eq!(
        fleet_state["agents"]["beta"]["schedules"]["nightly"]["status"],
        "disabled"
    );
    assert_eq!(fleet_state["session_wakes"]["wake-1"]["agent"], "alpha");
    assert_eq!(fleet_state["agents"]["alpha"]["status"], "idle");
    let running = read_yaml(&state.join(format!("jobs/{RUNNING}.yaml")));
    assert_eq!(running["discord_channel"], "4242");
    assert_eq!(running["trigger_type"], "discord");
    assert_eq!(running["status"], "failed");
    let ours = read_yaml(&state.join(format!("jobs/{job_id}.yaml")));
    assert_eq!(ours["trigger_type"], "manual");
    assert!(ours["output_file"]
        .as_str()
        .is_some_and(|path| path.ends_with(&format!("{job_id}.jsonl"))));
    let pointer: Value =
        serde_json::from_slice(&std::fs::read(state.join("sessions/alpha.json")).unwrap()).unwrap();
    assert_eq!(pointer["session_id"], "seeded-session-1");
    assert_eq!(pointer["job_count"], 5);
    assert_herdctl_reads_back(&state);
}

/// The drop-in fleet unscheduled, with `alpha`'s pointer naming `session`, just used; returns the
/// daemon and its state directory.
async fn start_with_alphas_session(session: &str) -> (Daemon, std::path::PathBuf) {
    let dir = TestDir::new();
    write_dropin_fleet(dir.path(), "");
    let state = dir.path().join("state");
    write(
        &state.join("sessions/alpha.json"),
        &session_pointer("alpha", session, &alpha_workspace(dir.path()), Utc::now()),
    );
    (Daemon::start_in(dir, keep_fleet_unscheduled()).await, state)
}

#[tokio::test]
async fn a_session_past_its_timeout_is_not_resumed_and_the_run_says_so() {
    let dir = TestDir::new();
    write_dropin_fleet(dir.path(), "session:\n  timeout: 30m\n");
    let state = dir.path().join("state");
    let workspace = alpha_workspace(dir.path());
    write(
        &state.join("sessions/alpha.json"),
        &session_pointer(
            "alpha",
            "old-session",
            &workspace,
            Utc::now() - chrono::Duration::hours(2),
        ),
    );
    let mut daemon = Daemon::start_in(dir, keep_fleet_unscheduled()).await;
    let mut client = daemon.ndjson().await;
    let with_output = run_job(&mut client, tick()).await;
    assert_eq!(
        with_output["summary"], "ran in fresh-session",
        "{with_output}"
    );
    let first = &with_output["output"][0];
    assert_eq!(first["type"], "system", "{with_output}");
    assert!(first["chunk"]
        .as_str()
        .is_some_and(|c| c.starts_with("No valid session found")));
    // Pointers are written just after a job ends; a stopped daemon has written them.
    drop(client);
    stop(&mut daemon).await;
    let pointer: Value =
        serde_json::from_slice(&std::fs::read(state.join("sessions/alpha.json")).unwrap()).unwrap();
    assert_eq!(pointer["session_id"], "fresh-session");
    assert_eq!(pointer["working_directory"], workspace.as_str());
}

#[tokio::test]
async fn a_resumed_session_claude_no_longer_has_is_cleared_and_the_run_starts_fresh() {
    let (mut daemon, state) = start_with_alphas_session("dead-session").await;
    let mut client = daemon.ndjson().await;
    for round in 0..2 {
        let done = run_job(&mut client, tick()).await;
        assert_eq!(done["status"], "completed", "round {round}: {done}");
        assert_eq!(done["sessionId"], "fresh-session", "round {round}");
        let output = &done["output"];
        let retried = output
            .as_array()
            .unwrap()
            .iter()
            .any(|line| line["chunk"] == "Session not found. Retrying with fresh session.");
        // Only the first run met the dead session; the second resumes the fresh one.
        assert_eq!(retried, round == 0, "round {round}: {output}");
    }
    // Pointers are written just after a job ends; a stopped daemon has written them.
    drop(client);
    stop(&mut daemon).await;
    let pointer: Value =
        serde_json::from_slice(&std::fs::read(state.join("sessions/alpha.json")).unwrap()).unwrap();
    assert_eq!(pointer["session_id"], "fresh-session");
}

#[tokio::test]
async fn values_from_the_fleets_dotenv_reach_jobs_without_overriding_the_environment() {
    let dir = TestDir::new();
    write_dropin_fleet(dir.path(), "");
    write(
        &dir.path().join(".env"),
        "FROM_DOTENV=bar\nALREADY_SET=from-file\nAGENT_SETS=from-file\n",
    );
    write(
        &dir.path().join("agents/beta.yaml"),
        "name: beta\nruntime: command\n\
         command: [sh, -c, 'echo \"dotenv=$FROM_DOTENV set=$ALREADY_SET agent=$AGENT_SETS\"']\n\
         env:\n  AGENT_SETS: from-agent\nworking_directory: ../workspaces/beta\n",
    );
    let options = DaemonOptions {
        env: vec![("ALREADY_SET".into(), "from-daemon".into())],
        ..keep_fleet_unscheduled()
    };
    let daemon = Daemon::start_in(dir, options).await;
    let mut client = daemon.ndjson().await;
    let output = run_job(&mut client, json!({"agentName": "beta"})).await;
    assert_eq!(
        output["output"][0]["chunk"], "dotenv=bar set=from-daemon agent=from-agent",
        "{output}"
    );
}

#[tokio::test]
async fn herdctls_own_state_directory_is_read_in_place() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/compat/herdctl-state");
    if !corpus.is_dir() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have {} (the state directory herdctl 5.33 wrote)",
            corpus.display()
        );
        // Straight to the stderr handle: the test harness captures `eprintln!`, and this must be seen.
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!("SKIPPED: {} is not there\n", corpus.display()),
        );
        return;
    }
    let dir = TestDir::new();
    copy_dir(&corpus.join("fleet"), &dir.path().join("fleet"));
    copy_dir(&corpus.join("state"), &dir.path().join("state"));
    for agent in ["alpha", "beta", "gamma"] {
        std::fs::create_dir_all(dir.path().join("workspaces").join(agent)).unwrap();
    }
    let fleet = dir.path().join("fleet/herdctl.yaml");
    let state = dir.path().join("state");
    let original_state_yaml = read_yaml(&state.join("state.yaml"));
    let records: Vec<String> = std::fs::read_dir(state.join("jobs"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".yaml").map(str::to_owned)
        })
        .collect();
    let socket = dir.path().join("run/herdctld.sock");
    let mut child = std::process::Command::new(BINARY)
        .arg("--config")
        .arg(&fleet)
        .arg("--state")
        .arg(&state)
        .arg("--socket")
        .arg(&socket)
        .arg("--no-start")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("daemon.stderr")).unwrap())
        .spawn()
        .unwrap();
    wait_until("the socket", Duration::from_secs(30), || socket.exists()).await;
    let mut client = Client::connect(&socket, Framing::Ndjson).await;
    let jobs = client.call("getJobs", json!({"limit": 100})).await;
    assert_eq!(jobs["total"], records.len(), "{jobs}");
    let pending = client
        .call("getJob", json!({"id": "job-2026-12-02-gqgjxo"}))
        .await;
    assert_eq!(pending["exitReason"], "interrupted", "{pending}");
    let with_output = client
        .call(
            "getJob",
            json!({"id": "job-2026-12-02-x6re3a", "includeOutput": true}),
        )
        .await;
    assert_eq!(with_output["output"].as_array().map(Vec::len), Some(4));
    assert_eq!(with_output["usage"]["numTurns"], 1);
    let schedules = client.call("getSchedules", json!({})).await;
    let nightly = schedules
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["agentName"] == "beta" && s["name"] == "nightly")
        .unwrap();
    assert_eq!(nightly["enabled"], false);
    let alpha = client.call("getAgent", json!({"name": "alpha"})).await;
    assert_eq!(
        alpha["lastSessionId"],
        "862690ed-12d3-4f7d-83d6-9d1ad9334920"
    );
    drop(client);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(files_moved_aside(&state), Vec::<String>::new());
    let after = read_yaml(&state.join("state.yaml"));
    assert_eq!(after["fleet"], original_state_yaml["fleet"]);
    assert_eq!(after["session_wakes"], original_state_yaml["session_wakes"]);
    assert_eq!(
        after["agents"]["alpha"]["schedules"]["tick"]["last_run_at"],
        original_state_yaml["agents"]["alpha"]["schedules"]["tick"]["last_run_at"]
    );
    assert_herdctl_reads_back(&state);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test]
async fn an_agent_that_asks_for_docker_never_runs_on_the_host() {
    let dir = TestDir::new();
    write_dropin_fleet(dir.path(), "");
    let marker = dir.path().join("ran-on-the-host");
    write(
        &dir.path().join("agents/beta.yaml"),
        &format!(
            "name: beta\nruntime: command\ncommand: [touch, {}]\nworking_directory: ../workspaces/beta\n\
             permission_mode: bypassPermissions\ndocker:\n  enabled: true\n",
            marker.display()
        ),
    );
    let daemon = Daemon::start_in(dir, keep_fleet_unscheduled()).await;
    let mut client = daemon.ndjson().await;
    let done = run_job(&mut client, json!({"agentName": "beta"})).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["exitReason"], "spawn_failed");
    // Its container could not run: no engine here, or (under CI) herdctl's default image is not on the
    // machine. Either way the job failed rather than run on the host.
    let code = done["error"]["code"].as_str().unwrap_or_default();
    assert!(
        [
            "ENGINE_UNREACHABLE",
            "ENGINE_PERMISSION_DENIED",
            "IMAGE_MISSING"
        ]
        .contains(&code),
        "{done}"
    );
    assert!(!marker.exists(), "the job ran on the host");
}

#[tokio::test]
async fn a_manual_run_continues_the_agents_session_unless_asked_for_a_fresh_one() {
    let (mut daemon, state) = start_with_alphas_session("stored-session").await;
    let mut client = daemon.ndjson().await;
    let resumed = run_job(&mut client, json!({"agentName": "alpha"})).await;
    assert_eq!(resumed["summary"], "ran in stored-session", "{resumed}");
    let fresh = run_job(
        &mut client,
        json!({"agentName": "alpha", "freshSession": true}),
    )
    .await;
    assert_eq!(fresh["summary"], "ran in fresh-session", "{fresh}");
    drop(client);
    stop(&mut daemon).await;
    let pointer: Value =
        serde_json::from_slice(&std::fs::read(state.join("sessions/alpha.json")).unwrap()).unwrap();
    assert_eq!(pointer["session_id"], "fresh-session");
}

/// herdctl never prunes its history, and herdctld shares its state directory: under herdctld's implicit
/// default (100 jobs per agent) the records herdctl wrote all stay, and the daemon says so once at start;
/// a limit set explicitly prunes them like herdctld's own.
#[tokio::test]
async fn herdctls_history_survives_the_default_limit_and_goes_only_under_an_explicit_one() {
    let dir = TestDir::new();
    write_dropin_fleet(dir.path(), "");
    let jobs_dir = dir.path().join("state/jobs");
    let first = Utc::now() - chrono::Duration::days(1);
    let herdctl_ids: Vec<String> = (0..105)
        .map(|n| format!("job-2026-11-29-h{n:05}"))
        .collect();
    for (n, id) in herdctl_ids.iter().enumerate() {
        let started = first + chrono::Duration::minutes(n as i64);
        write(
            &jobs_dir.join(format!("{id}.yaml")),
            &herdctl_record(
                id,
                "alpha",
                Some("tick"),
                "schedule",
                "completed",
                Some("success"),
                started,
                None,
            ),
        );
    }
    let mut daemon = Daemon::start_in(dir, keep_fleet_unscheduled()).await;
    assert!(
        daemon.stderr().contains(
            "keeping 5 job records herdctl wrote beyond the default history limit of 100 per agent"
        ),
        "{}",
        daemon.stderr()
    );
    let mut client = daemon.ndjson().await;
    // A job's end applies the limits.
    assert_eq!(run_job(&mut client, tick()).await["status"], "completed");
    let alpha = json!({"agentName": "alpha", "limit": 1});
    assert_eq!(client.call("getJobs", alpha.clone()).await["total"], 106);
    for id in &herdctl_ids {
        assert!(jobs_dir.join(format!("{id}.yaml")).exists(), "{id} deleted");
    }
    stop(&mut daemon).await;

    let options = DaemonOptions {
        args: vec![
            "--no-start".into(),
            "--max-jobs-per-agent".into(),
            "100".into(),
        ],
        ..keep_fleet()
    };
    let daemon = Daemon::start_in(daemon.into_dir(), options).await;
    assert!(!daemon.stderr().contains("keeping"), "{}", daemon.stderr());
    let mut client = daemon.ndjson().await;
    assert_eq!(client.call("getJobs", alpha).await["total"], 100);
    let (gone, kept) = herdctl_ids.split_at(6);
    for id in gone {
        assert!(!jobs_dir.join(format!("{id}.yaml")).exists(), "{id} kept");
    }
    for id in kept {
        assert!(jobs_dir.join(format!("{id}.yaml")).exists(), "{id} deleted");
    }
}
