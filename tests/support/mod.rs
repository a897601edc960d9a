//! The harness of every test (and the bench) that talks to a daemon: one way to start it, in two modes, and
//! one client.
//!
//! - [`TestDir`]: a temporary directory, kept (and printed) when `HERDCTL_KEEP_TEST_DIRS=1`.
//! - [`write_fleet`]: writes the small test fleet ([`AGENTS`]) into a directory; [`write_agents`] any other.
//! - [`Daemon`] (`daemon.rs`): a daemon on a fleet in a temp dir, either the real `herdctld` binary
//!   ([`Mode::Binary`], ready when it sends `READY=1` on the notify socket the harness binds) or the library's
//!   `herdctld::daemon::Daemon` on the test's own runtime ([`Mode::InProcess`], ready when its start returns).
//!   Either is stopped the way an operator stops it when dropped.
//! - [`Client`] (`client.rs`): the library's `rpc::client` over any of the socket's framings (NDJSON,
//!   WebSocket, HTTP), with test-friendly `call` / `call_err` / `subscribe` / `notification`; [`RawNdjson`]
//!   for tests of bytes no client would send. The client checks every result, notification and error
//!   data it receives against `proto-docs/openrpc.json` (`schema.rs`).
//! - `http.rs`: one raw HTTP/1.1 exchange (socket or any stream); `procs.rs`: what `/proc` says about
//!   processes.
//!
//! Not every test binary uses every helper.
#![allow(dead_code)]

mod client;
mod daemon;
mod http;
mod procs;
pub mod schema;

pub use client::*;
pub use daemon::*;
pub use http::*;
pub use procs::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long any single reply may take before a test fails.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the daemon may take to be ready (a debug build on a busy 2-core box).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

pub const BINARY: &str = env!("CARGO_BIN_EXE_herdctld");

// -------------------------------------------------------------------------------------------------
// Temporary directories
// -------------------------------------------------------------------------------------------------

/// A temporary directory removed on drop unless `HERDCTL_KEEP_TEST_DIRS=1`.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    pub fn new() -> TestDir {
        // Short prefix under /tmp: Unix socket paths are limited to 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("hd-")
            .tempdir_in("/tmp")
            .expect("create a temporary directory");
        let path = dir.path().to_owned();
        TestDir {
            dir: Some(dir),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("HERDCTL_KEEP_TEST_DIRS").is_some_and(|v| v == "1") {
            if let Some(dir) = self.dir.take() {
                eprintln!("keeping test directory {}", dir.keep().display());
            }
        }
    }
}

// -------------------------------------------------------------------------------------------------
// The test fleet
// -------------------------------------------------------------------------------------------------

/// `echo`: prints two lines and a result, at once. Schedules: `yearly` (cron, never due during a test),
/// `off` (disabled in the configuration).
pub const ECHO_AGENT: &str = r#"name: echo
description: Prints two lines and succeeds
runtime: command
command:
  - sh
  - -c
  - |
    echo "line one of $HERDCTL_JOB_ID"
    echo "prompt: $HERDCTL_PROMPT"
    echo '{"type":"result","subtype":"success","is_error":false,"result":"echoed","num_turns":1}'
default_prompt: Echo something.
schedules:
  yearly:
    type: cron
    cron: "0 0 1 1 *"
    prompt: The yearly echo.
  off:
    type: interval
    interval: 1h
    enabled: false
"#;

/// `gated`: prints `before gate`, waits until the file `gate-<job id>` exists in its working directory
/// (the fleet's `agents/` directory, see [`open_gate`]), prints `after gate` and succeeds.
pub const GATED_AGENT: &str = r#"name: gated
description: Waits for a gate file between two lines
runtime: command
command:
  - sh
  - -c
  - |
    echo "before gate"
    while [ ! -e "gate-$HERDCTL_JOB_ID" ]; do sleep 0.02; done
    echo "after gate"
    echo '{"type":"result","subtype":"success","is_error":false,"result":"gated","num_turns":1}'
concurrency: 2
stop_grace: 1s
"#;

/// `blocker`: prints `blocking`, then sleeps a minute in a child process (same process group); one at a
/// time. Tests cancel it.
pub const BLOCKER_AGENT: &str = r#"name: blocker
description: Sleeps in a child process until cancelled
runtime: command
command:
  - sh
  - -c
  - |
    echo "blocking"
    sleep 60
    echo "woke up"
concurrency: 1
stop_grace: 1s
schedules:
  nightly:
    type: cron
    cron: "0 3 * * *"
"#;

/// The agents of the test fleet, as (file name, YAML).
pub const AGENTS: &[(&str, &str)] = &[
    ("echo.yaml", ECHO_AGENT),
    ("gated.yaml", GATED_AGENT),
    ("blocker.yaml", BLOCKER_AGENT),
];

/// A fleet file named `itest` listing `agent_files` (paths relative to the fleet directory's `agents/`).
pub fn fleet_yaml(agent_files: &[&str]) -> String {
    fleet_named("itest", agent_files)
}

fn fleet_named(name: &str, agent_files: &[&str]) -> String {
    let mut yaml = format!("version: 1\nfleet:\n  name: {name}\nagents:\n");
    for file in agent_files {
        yaml.push_str(&format!("  - path: agents/{file}\n"));
    }
    yaml
}

/// Writes the test fleet into `dir` (`herdctl.yaml` + `agents/*.yaml`); returns the fleet file.
pub fn write_fleet(dir: &Path) -> PathBuf {
    write_agent_files(dir, "itest", AGENTS)
}

/// Writes a fleet named `fleet_name` of `agents`, as (agent name, YAML), into `dir`: `agents/<name>.yaml`
/// each, and `herdctl.yaml` listing them. Returns the fleet file.
pub fn write_agents(dir: &Path, fleet_name: &str, agents: &[(&str, &str)]) -> PathBuf {
    let files: Vec<(String, &str)> = agents
        .iter()
        .map(|(name, yaml)| (format!("{name}.yaml"), *yaml))
        .collect();
    let files: Vec<(&str, &str)> = files.iter().map(|(f, y)| (f.as_str(), *y)).collect();
    write_agent_files(dir, fleet_name, &files)
}

fn write_agent_files(dir: &Path, fleet_name: &str, files: &[(&str, &str)]) -> PathBuf {
    let agents = dir.join("agents");
    std::fs::create_dir_all(&agents).unwrap();
    for (file, yaml) in files {
        std::fs::write(agents.join(file), yaml).unwrap();
    }
    let names: Vec<&str> = files.iter().map(|(file, _)| *file).collect();
    let fleet = dir.join("herdctl.yaml");
    std::fs::write(&fleet, fleet_named(fleet_name, &names)).unwrap();
    fleet
}

/// Lets the `gated` agent's job `job_id` finish.
pub fn open_gate(agents_dir: &Path, job_id: &str) {
    std::fs::write(agents_dir.join(format!("gate-{job_id}")), "").unwrap();
}

// -------------------------------------------------------------------------------------------------
// Waiting
// -------------------------------------------------------------------------------------------------

/// Polls `condition` every 20 ms until it holds; panics with `what` after `timeout`. For what only `/proc`
/// or the file system can tell (the daemon announces the rest as events).
pub async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts a domain error: JSON-RPC `code` and `data.code`.
#[track_caller]
pub fn assert_error(error: &Value, code: i64, name: &str) {
    assert_eq!(error["code"], json!(code), "wrong code in {error}");
    assert_eq!(
        error["data"]["code"],
        json!(name),
        "wrong data.code in {error}"
    );
}

/// Waits for the `type`d event of a subscription whose job id is `job_id` (any job when `None`).
pub async fn wait_for_event(
    client: &mut Client,
    subscription: &Value,
    event_type: &str,
    job_id: Option<&str>,
) -> Value {
    loop {
        let event = client.notification(subscription).await;
        if event["type"] == event_type && job_id.is_none_or(|id| event_job_id(&event) == Some(id)) {
            return event;
        }
    }
}

/// Triggers a manual job of `agent`; its id.
pub async fn trigger(client: &mut Client, agent: &str) -> String {
    let job = client.call("trigger", json!({"agentName": agent})).await;
    job["id"].as_str().unwrap().to_owned()
}

/// The job id an event is about (`job.id` or `jobId`).
pub fn event_job_id(event: &Value) -> Option<&str> {
    event["jobId"]
        .as_str()
        .or_else(|| event["job"]["id"].as_str())
}

/// Polls `getJob` until the job has one of the `statuses`.
pub async fn wait_for_job_status(client: &mut Client, job_id: &str, statuses: &[&str]) -> Value {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let job = client.call("getJob", json!({"id": job_id})).await;
        if statuses.iter().any(|s| job["status"] == *s) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {job_id} never reached {statuses:?}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
