//! Reliability promises of SPEC §6, §8 and §12, checked against the real `herdctld` binary
//! (the harness's [`Daemon`] in binary mode):
//!
//! - `kill -9` of the daemon with jobs running and queued, three times over one state directory: after each
//!   restart every job is still there, none is left queued or running (they become failed/interrupted),
//!   every output file parses line by line (a torn last line tolerated), and no process of an old job
//!   survives — not even one that escaped with `setsid` (found by its `HERDCTL_JOB_ID` environment marker).
//! - The state directory failing under a running daemon: reported as an `error` event and a log line, the
//!   daemon keeps serving, and it works again once the directory is back. We run as root, for whom
//!   `chmod 0500` changes nothing, so the failure is made by moving `jobs/` away and putting a plain file
//!   in its place (every write under it then fails with ENOTDIR), then moving it back.
//! - `soak`: chatty agents for `HERDCTL_SOAK_SECS` seconds, reporting RSS, open fds and CPU at start and
//!   end. It returns at once (printing that it was skipped) unless that variable is set:
//!   `HERDCTL_SOAK_SECS=600 cargo test --release --test reliability soak -- --nocapture`.

mod support;

use std::fs;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// A fleet of `agents`, as (name, YAML), in a new directory.
fn fleet(agents: &[(&str, &str)]) -> TestDir {
    let dir = TestDir::new();
    write_agents(dir.path(), "reliability", agents);
    dir
}

/// Starts the binary on the fleet already in `dir`.
async fn start(dir: TestDir) -> Daemon {
    let options = DaemonOptions {
        keep_existing_fleet: true,
        ..DaemonOptions::default()
    };
    Daemon::start_in(dir, options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_jobs_running_and_queued_loses_nothing_and_leaves_no_process() {
    // The job leaves a `setsid` grandchild behind, which the daemon's death signal does not reach.
    let agent = "name: sleeper\nruntime: command\ncommand: [sh, -c, 'setsid sleep 30 & sleep 30']\nconcurrency: 1\n";
    let mut dir = fleet(&[("sleeper", agent)]);
    let mut triggered: Vec<String> = Vec::new();
    for round in 0..3 {
        let daemon = start(dir).await;
        let mut client = daemon.ndjson().await;
        check_recovered(&daemon, &mut client, &triggered).await;
        for n in 0..3 {
            let job = client
                .call("trigger", json!({"agentName": "sleeper"}))
                .await;
            let expected = if n == 0 { "running" } else { "queued" };
            assert_eq!(job["status"], expected, "round {round}, trigger {n}: {job}");
            triggered.push(job["id"].as_str().expect("job id").to_string());
        }
        let running = &triggered[triggered.len() - 3];
        wait_until(
            "the job and its escaped grandchild",
            Duration::from_secs(5),
            || processes_of_job(running).len() >= 3,
        )
        .await;
        dir = daemon.into_dir();
    }
    let daemon = start(dir).await;
    let mut client = daemon.ndjson().await;
    check_recovered(&daemon, &mut client, &triggered).await;
}

/// What a restart after `kill -9` must have done for the jobs `triggered` before it.
async fn check_recovered(daemon: &Daemon, client: &mut Client, triggered: &[String]) {
    let listed = client.call("getJobs", json!({"limit": 1000})).await;
    let jobs = listed["jobs"].as_array().expect("jobs array");
    for id in triggered {
        let job = jobs
            .iter()
            .find(|j| j["id"] == id.as_str())
            .unwrap_or_else(|| panic!("job {id} lost after kill -9; listed: {listed}"));
        assert!(
            !matches!(job["status"].as_str(), Some("running" | "queued")),
            "job {id} still {} after the restart",
            job["status"]
        );
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["exitReason"], "interrupted", "{job}");
    }
    let records = fs::read_dir(daemon.state.join("jobs"))
        .expect("jobs dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".yaml"))
        })
        .count();
    assert_eq!(
        records,
        triggered.len(),
        "one record per job, no more, no less"
    );
    for entry in fs::read_dir(daemon.state.join("jobs")).expect("jobs dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            let text = fs::read_to_string(&path).expect("read output");
            // Every complete line parses; what follows the last newline is a torn line and may not.
            for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
                serde_json::from_str::<Value>(line)
                    .unwrap_or_else(|e| panic!("{}: bad line {line:?}: {e}", path.display()));
            }
        }
    }
    for id in triggered {
        wait_until(
            "old job processes to be gone",
            Duration::from_secs(5),
            || processes_of_job(id).is_empty(),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_state_directory_is_reported_and_the_daemon_recovers_when_it_returns() {
    let agent = "name: echo\nruntime: command\ncommand: [sh, -c, 'echo hello']\n";
    let daemon = start(fleet(&[("echo", agent)])).await;
    let mut events = daemon.ndjson().await;
    let errors = events
        .subscribe("subscribeEvents", json!({"types": ["error"]}))
        .await;
    let mut client = daemon.ndjson().await;

    let jobs_dir = daemon.state.join("jobs");
    let moved = daemon.state.join("jobs.away");
    fs::rename(&jobs_dir, &moved).expect("move jobs away");
    fs::write(&jobs_dir, "not a directory").expect("file in its place");

    // A job cannot be created without its record.
    let refused = client
        .call_err("trigger", json!({"agentName": "echo"}))
        .await;
    assert_eq!(refused["data"]["code"], "STATE_ERROR", "{refused}");
    let event = events.notification(&errors).await;
    assert_eq!(event["type"], "error", "{event}");
    assert_eq!(event["source"], "state", "{event}");
    let status = client.call("getStatus", json!({})).await;
    assert_eq!(status["state"], "running", "still serving");
    wait_until("the failure in the log", Duration::from_secs(5), || {
        let log = daemon.stderr();
        log.contains("ERROR") && log.contains("jobs")
    })
    .await;

    fs::remove_file(&jobs_dir).expect("remove the file");
    fs::rename(&moved, &jobs_dir).expect("move jobs back");
    let job = client.call("trigger", json!({"agentName": "echo"})).await;
    let id = job["id"].as_str().expect("job id").to_string();
    wait_for_job_status(&mut client, &id, &["completed"]).await;
    let output = client
        .call("getJob", json!({"id": id, "includeOutput": true}))
        .await;
    assert_eq!(output["output"][0]["chunk"], "hello", "{output}");
    assert!(jobs_dir.join(format!("{id}.yaml")).is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    let Some(seconds) = std::env::var("HERDCTL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        println!("soak skipped (set HERDCTL_SOAK_SECS)");
        return;
    };
    let chatty = |name: &str, every: &str| {
        format!(
            "name: {name}\nruntime: command\ncommand: [sh, -c, 'for i in $(seq 2000); do echo \"line $i of a chatty job\"; done; echo oops >&2']\n\
             concurrency: 2\nschedules:\n  often:\n    type: interval\n    interval: {every}\n"
        )
    };
    let agents: Vec<(String, String)> =
        [("chatty-a", "1s"), ("chatty-b", "2s"), ("chatty-c", "3s")]
            .iter()
            .map(|(name, every)| (name.to_string(), chatty(name, every)))
            .collect();
    let borrowed: Vec<(&str, &str)> = agents
        .iter()
        .map(|(n, y)| (n.as_str(), y.as_str()))
        .collect();
    let daemon = start(fleet(&borrowed)).await;
    let mut client = daemon.ndjson().await;
    // A soak measures over time: the pauses are the point, not a wait for something.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start = Sample::of(&daemon);
    println!("soak start: {start}");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        // A client that comes and goes, like a UI polling.
        let mut poller = daemon.ndjson().await;
        poller.call("getStatus", json!({})).await;
        poller.call("getJobs", json!({"limit": 20})).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let end = Sample::of(&daemon);
    let status = client.call("getStatus", json!({})).await;
    println!("soak end after {seconds} s: {end}; jobs {}", status["jobs"]);
    assert!(
        end.fds <= start.fds + 16,
        "file descriptors grew: {start} → {end}"
    );
    assert!(
        end.rss_kb <= start.rss_kb * 2 + 16 * 1024,
        "memory grew: {start} → {end}"
    );
}

/// Resource use of the daemon at one instant.
struct Sample {
    rss_kb: u64,
    fds: usize,
    cpu: Duration,
}

impl Sample {
    fn of(daemon: &Daemon) -> Sample {
        Sample {
            rss_kb: vm_rss_kib(daemon.pid),
            fds: open_fds(daemon.pid),
            cpu: cpu_time(daemon.pid),
        }
    }
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {} kB, {} open fds, CPU {:.2} s",
            self.rss_kb,
            self.fds,
            self.cpu.as_secs_f64()
        )
    }
}
