//! Job history retention in the daemon (issue 19): limits by count (per agent, in total) and by age from
//! the fleet file's `defaults` and the command line (which wins), applied when a job ends and at start,
//! and reported by `getStatus`.

mod support;

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;
use support::*;

fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The test fleet with `defaults` added to its fleet file.
fn fleet_with_defaults(dir: &TestDir, defaults: &str) {
    let fleet = write_fleet(dir.path());
    let mut yaml = std::fs::read_to_string(&fleet).unwrap();
    yaml.push_str(&format!("defaults:\n{defaults}"));
    std::fs::write(fleet, yaml).unwrap();
}

fn options(args: &[&str]) -> DaemonOptions {
    DaemonOptions {
        args: args.iter().map(|a| a.to_string()).collect(),
        keep_existing_fleet: true,
        ..DaemonOptions::default()
    }
}

fn record_exists(state: &Path, id: &str) -> bool {
    state.join("jobs").join(format!("{id}.yaml")).exists()
}

#[tokio::test]
async fn by_count_the_command_line_wins_over_the_fleet_file_and_both_are_reported() {
    let dir = TestDir::new();
    fleet_with_defaults(&dir, "  max_jobs_per_agent: 5\n  max_jobs_total: 40\n");
    let daemon = Daemon::start_in(
        dir,
        options(&["--max-jobs-per-agent", "2", "--per-agent", "3"]),
    )
    .await;
    let mut client = daemon.ndjson().await;
    let status = client.call("getStatus", json!({})).await;
    assert_eq!(
        status["limits"],
        json!({"perAgent": 3, "maxConcurrent": null, "maxQueued": 1000, "maxJobsPerAgent": 2,
               "maxJobsTotal": 40, "maxJobAge": null}),
        "{status}"
    );
    // `echo` sets no concurrency, so the per-agent default applies; `gated` keeps its own.
    assert_eq!(
        client.call("getAgent", json!({"name": "echo"})).await["concurrency"],
        3
    );
    assert_eq!(
        client.call("getAgent", json!({"name": "gated"})).await["concurrency"],
        2
    );

    let mut ids = Vec::new();
    for _ in 0..3 {
        let job = client.call("trigger", json!({"agentName": "echo"})).await;
        let id = job["id"].as_str().unwrap().to_owned();
        wait_for_job_status(&mut client, &id, &["completed"]).await;
        ids.push(id);
    }
    let listed = client.call("getJobs", json!({"agentName": "echo"})).await;
    assert_eq!(listed["total"], 2, "{listed}");
    let oldest = ids[0].clone();
    let state = daemon.state.clone();
    wait_until(
        "the pruned job's files to go",
        Duration::from_secs(10),
        || !record_exists(&state, &oldest) && !state.join(format!("jobs/{oldest}.jsonl")).exists(),
    )
    .await;
    assert!(record_exists(&daemon.state, &ids[1]) && record_exists(&daemon.state, &ids[2]));
}

/// `maxJobsTotal` counts every agent's jobs: a job's end removes the finished ones beyond the newest
/// `maxJobsTotal`, whatever their agent; a running job is never removed, however old.
#[tokio::test]
async fn by_total_the_oldest_finished_jobs_of_any_agent_go() {
    let daemon = Daemon::start_with(DaemonOptions {
        args: vec!["--max-jobs-total".into(), "3".into()],
        ..DaemonOptions::default()
    })
    .await;
    let agents = daemon.agents_dir();
    let state = daemon.state.clone();
    let mut client = daemon.ndjson().await;
    assert_eq!(
        client.call("getStatus", json!({})).await["limits"]["maxJobsTotal"],
        3
    );
    let held = trigger(&mut client, "gated").await;
    wait_for_job_status(&mut client, &held, &["running"]).await;
    let mut echoes = Vec::new();
    for _ in 0..4 {
        let id = trigger(&mut client, "echo").await;
        wait_for_job_status(&mut client, &id, &["completed"]).await;
        echoes.push(id);
    }
    // The three newest stay, and the running job, older than all of them; the oldest echo goes.
    let newest: Vec<String> = echoes[1..].iter().rev().cloned().collect();
    let mut expected = newest.clone();
    expected.push(held.clone());
    assert_eq!(listed(&mut client).await, expected);
    let oldest = echoes[0].clone();
    wait_until(
        "the oldest echo's record to go",
        Duration::from_secs(10),
        || !record_exists(&state, &oldest),
    )
    .await;

    // Finished, the held job is beyond the limit, but its own end keeps it (its record is still being
    // written); the next end removes it with every other finished job beyond the newest three.
    open_gate(&agents, &held);
    wait_for_job_status(&mut client, &held, &["completed"]).await;
    assert_eq!(listed(&mut client).await, expected);
    let last = trigger(&mut client, "echo").await;
    wait_for_job_status(&mut client, &last, &["completed"]).await;
    assert_eq!(
        listed(&mut client).await,
        [last, echoes[3].clone(), echoes[2].clone()]
    );
    for gone in [&held, &echoes[1]] {
        wait_until(
            "a pruned job's record to go",
            Duration::from_secs(10),
            || !record_exists(&state, gone),
        )
        .await;
    }
}

/// The ids `getJobs` lists, newest first (all of them: `total` says so).
async fn listed(client: &mut Client) -> Vec<String> {
    let listed = client.call("getJobs", json!({})).await;
    let ids: Vec<String> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed["total"], ids.len(), "{listed}");
    ids
}

/// A record in herdctld's layout (it has `created_at`), finished `age` ago.
fn herdctld_record(id: &str, status: &str, age: chrono::Duration) -> String {
    let finished = Utc::now() - age;
    let created = finished - chrono::Duration::seconds(5);
    let end = if status == "pending" {
        "finished_at: null\nexit_reason: null\n".to_owned()
    } else {
        format!("finished_at: {}\nexit_reason: success\n", iso(finished))
    };
    format!(
        "id: {id}\nagent: echo\nschedule: null\ntrigger_type: manual\nstatus: {status}\nstarted_at: {}\n\
         created_at: {}\n{end}",
        iso(created),
        iso(created)
    )
}

#[tokio::test]
async fn by_age_finished_jobs_older_than_the_limit_go_at_start_and_live_ones_stay() {
    let dir = TestDir::new();
    fleet_with_defaults(&dir, "  max_job_age: 30d\n");
    let jobs = dir.path().join("state/jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    let days = chrono::Duration::days;
    let records = [
        ("job-2026-10-01-old001", "completed", days(40)),
        ("job-2026-10-02-old002", "failed", days(31)),
        ("job-2026-11-30-new001", "completed", days(29)),
        // Queued when its daemon died: never pruned as such; recovery ends it now, so it is young.
        ("job-2026-10-03-pend01", "pending", days(40)),
    ];
    for (id, status, age) in records {
        std::fs::write(
            jobs.join(format!("{id}.yaml")),
            herdctld_record(id, status, age),
        )
        .unwrap();
    }
    // A record herdctl wrote: an explicit limit applies to it too.
    let herdctl_started = iso(Utc::now() - days(45));
    std::fs::write(
        jobs.join("job-2026-10-04-hctl01.yaml"),
        format!(
            "id: job-2026-10-04-hctl01\nagent: echo\nschedule: null\ntrigger_type: manual\nstatus: completed\n\
             exit_reason: success\nstarted_at: {herdctl_started}\nfinished_at: {herdctl_started}\n"
        ),
    )
    .unwrap();

    let daemon = Daemon::start_in(dir, options(&["--no-start"])).await;
    let state = daemon.state.clone();
    for id in [
        "job-2026-10-01-old001",
        "job-2026-10-02-old002",
        "job-2026-10-04-hctl01",
    ] {
        assert!(!record_exists(&state, id), "{id} kept");
    }
    for id in ["job-2026-11-30-new001", "job-2026-10-03-pend01"] {
        assert!(record_exists(&state, id), "{id} deleted");
    }
    let mut client = daemon.ndjson().await;
    let status = client.call("getStatus", json!({})).await;
    assert_eq!(
        status["limits"]["maxJobAge"],
        30u64 * 86_400 * 1000,
        "{status}"
    );
    assert_eq!(status["limits"]["maxJobsPerAgent"], 100, "{status}");
    assert_eq!(client.call("getJobs", json!({})).await["total"], 2);
}

/// A job's end applies the limits too, as the configuration has them now: an age limit added by a
/// reload removes what has grown too old at the next end, not only at the next start.
#[tokio::test]
async fn by_age_a_jobs_end_prunes_with_the_limit_a_reload_brought() {
    let dir = TestDir::new();
    write_fleet(dir.path());
    let jobs = dir.path().join("state/jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    let old = "job-2026-10-01-old001";
    std::fs::write(
        jobs.join(format!("{old}.yaml")),
        herdctld_record(old, "completed", chrono::Duration::days(40)),
    )
    .unwrap();
    let daemon = Daemon::start_in(dir, options(&["--no-start"])).await;
    assert!(record_exists(&daemon.state, old), "no age limit yet");
    fleet_with_defaults(&daemon.dir, "  max_job_age: 30d\n");
    let mut client = daemon.ndjson().await;
    client.call("reload", json!({})).await;
    let status = client.call("getStatus", json!({})).await;
    assert_eq!(
        status["limits"]["maxJobAge"],
        30u64 * 86_400 * 1000,
        "{status}"
    );

    let job = client.call("trigger", json!({"agentName": "echo"})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    wait_for_job_status(&mut client, &id, &["completed"]).await;
    let state = daemon.state.clone();
    wait_until(
        "the old job's record to go",
        Duration::from_secs(10),
        || !record_exists(&state, old),
    )
    .await;
    assert!(record_exists(&daemon.state, &id), "the new job stays");
    assert_eq!(client.call("getJobs", json!({})).await["total"], 1);
}

#[tokio::test]
async fn invalid_limits_on_the_command_line_are_refused_with_the_fix() {
    for (flag, value, says) in [
        ("--max-job-age", "0s", "greater than zero"),
        ("--max-job-age", "30 days", "30 days"),
        ("--max-jobs-per-agent", "0", "0"),
        ("--per-agent", "0", "0"),
    ] {
        let mut daemon = Daemon::spawn_in(TestDir::new(), options(&[flag, value]));
        let status = daemon.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(
            status.code(),
            Some(2),
            "{flag} {value}: {}",
            daemon.stderr()
        );
        let stderr = daemon.stderr();
        assert!(stderr.contains(flag) && stderr.contains(says), "{stderr}");
    }
}
