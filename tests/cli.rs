//! `herdctl` against a real `herdctld`: every command in human and `--json` mode, exit codes (including
//! `trigger --wait`'s 0/1/130), the daemon's error messages, and the message when no daemon listens.

mod support;

#[path = "support/cli_daemon.rs"]
mod cli_daemon;

use std::time::{Duration, Instant};

use cli_daemon::{herdctl_at, lines_of, run_to_end, wait_with_deadline, TestDaemon, DEADLINE};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_read_well_and_pass_json_through() {
    let daemon = TestDaemon::start().await;

    let status = daemon.run(&["status"]);
    assert_eq!(status.code, 0, "{status:?}");
    // Labels are padded to the longest ("cost 7 days").
    assert!(
        status.stdout.contains("fleet        running"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("cost today   $0.00 (0 jobs;"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("4 total"), "{}", status.stdout);
    assert!(
        status.stdout.contains("next: quick/yearly in "),
        "{}",
        status.stdout
    );
    assert!(
        !status.stdout.contains('\x1b'),
        "no colour without a terminal"
    );
    assert_eq!(daemon.json(&["status"])["state"], "running");

    let agents = daemon.run(&["agents"]);
    let header = agents.stdout.lines().next().unwrap_or_default();
    assert!(header.starts_with("NAME "), "{}", agents.stdout);
    let sleeper_row = agents
        .stdout
        .lines()
        .find(|l| l.starts_with("sleeper "))
        .unwrap();
    assert!(sleeper_row.contains("idle"), "{sleeper_row}");
    assert_eq!(daemon.json(&["agents"]).as_array().map(Vec::len), Some(4));

    let agent = daemon.run(&["agent", "quick"]);
    assert!(
        agent.stdout.contains("Says what it was asked"),
        "{}",
        agent.stdout
    );
    assert!(agent.stdout.contains("0 0 1 1 *"), "{}", agent.stdout);
    assert_eq!(daemon.json(&["agent", "quick"])["name"], "quick");

    let schedules = daemon.run(&["schedules"]);
    assert!(schedules
        .stdout
        .lines()
        .any(|l| l.starts_with("quick ") && l.contains("yearly") && l.contains("yes")));
    assert_eq!(daemon.json(&["schedules"])[0]["name"], "yearly");

    let run = daemon.run(&["trigger", "quick", "--prompt", "ping", "--wait"]);
    assert_eq!(run.code, 0, "{run:?}");
    let id = daemon.json(&["jobs", "--agent", "quick"])["jobs"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let jobs = daemon.run(&["jobs", "--agent", "quick", "--since", "1h"]);
    let row = jobs
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{}", jobs.stdout));
    assert!(
        row.contains("completed") && row.contains("(manual)"),
        "{row}"
    );
    let none = daemon.run(&["jobs", "--status", "failed"]);
    assert!(none.stdout.contains("no jobs match"), "{}", none.stdout);

    let job = daemon.run(&["job", &id, "--output"]);
    assert_eq!(job.code, 0, "{job:?}");
    assert!(job.stdout.contains("completed"), "{}", job.stdout);
    assert!(job.stdout.contains("quick says ping"), "{}", job.stdout);
    let job_json = daemon.json(&["job", &id, "--output"]);
    assert_eq!(job_json["id"], id.as_str());
    assert_eq!(job_json["output"][0]["chunk"], "quick says ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_wait_exits_with_the_jobs_outcome() {
    let daemon = TestDaemon::start().await;

    let completed = daemon.run(&["trigger", "quick", "--wait"]);
    assert_eq!(completed.code, 0, "{completed:?}");
    assert!(
        completed.stdout.contains("quick says hello"),
        "{}",
        completed.stdout
    );
    assert!(
        completed
            .stdout
            .lines()
            .last()
            .unwrap()
            .contains("completed in"),
        "{}",
        completed.stdout
    );

    let failed = daemon.run(&["trigger", "broken", "--wait"]);
    assert_eq!(failed.code, 1, "{failed:?}");
    assert!(
        failed.stdout.contains("something broke"),
        "stderr of the job is shown: {}",
        failed.stdout
    );
    assert!(
        failed.stdout.lines().last().unwrap().contains("failed"),
        "{}",
        failed.stdout
    );

    let machine = daemon.run(&["--json", "trigger", "broken", "--wait"]);
    assert_eq!(machine.code, 1, "{machine:?}");
    let job: Value = serde_json::from_str(&machine.stdout).expect("the finished job as JSON");
    assert_eq!(job["status"], "failed");
    assert_eq!(job["exitCode"], 3);

    // A queued job is waited for through its start: `serial` runs one job at a time.
    let first = daemon.json(&["trigger", "serial"]);
    assert_eq!(first["status"], "running");
    let queued = daemon.run(&["trigger", "serial", "--wait"]);
    assert_eq!(queued.code, 0, "{queued:?}");
    assert!(
        queued.stdout.lines().next().unwrap().contains("queued"),
        "{}",
        queued.stdout
    );
    assert!(queued.stdout.contains("serial done"), "{}", queued.stdout);

    let plain = daemon.run(&["trigger", "quick"]);
    assert_eq!(plain.code, 0);
    assert!(
        plain.stdout.starts_with("triggered job-"),
        "{}",
        plain.stdout
    );
    assert!(
        plain.stdout.contains("herdctl logs -f --job job-"),
        "{}",
        plain.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_waited_job_exits_130_and_ctrl_c_leaves_it_running() {
    let daemon = TestDaemon::start().await;

    let waiting = daemon
        .herdctl(&["trigger", "sleeper", "--wait"])
        .spawn()
        .unwrap();
    let id = daemon.running_job_of("sleeper");
    let cancel = daemon.run(&["cancel", &id, "--grace", "0.2"]);
    assert_eq!(cancel.code, 0, "{cancel:?}");
    assert!(
        cancel.stdout.contains(&format!("cancelled {id}")),
        "{}",
        cancel.stdout
    );
    let waited = wait_with_deadline(waiting);
    assert_eq!(waited.code, 130, "{waited:?}");
    assert!(
        waited.stdout.contains("going to sleep"),
        "{}",
        waited.stdout
    );
    assert!(
        waited.stdout.contains("cancelled after"),
        "{}",
        waited.stdout
    );

    let again = daemon.json(&["cancel", &id]);
    assert_eq!(again["terminationType"], "already_stopped");

    let waiting = daemon
        .herdctl(&["trigger", "sleeper", "--wait"])
        .spawn()
        .unwrap();
    let id = daemon.running_job_of("sleeper");
    let pid = nix::unistd::Pid::from_raw(waiting.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let interrupted = wait_with_deadline(waiting);
    assert_eq!(interrupted.code, 130, "{interrupted:?}");
    assert!(
        interrupted.stderr.contains("still running"),
        "{}",
        interrupted.stderr
    );
    assert!(
        interrupted.stderr.contains(&format!("herdctl cancel {id}")),
        "{}",
        interrupted.stderr
    );
    assert_eq!(daemon.json(&["job", &id])["status"], "running");
    assert_eq!(daemon.run(&["cancel", &id, "--grace", "0"]).code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_the_daemons_message_and_exit_codes() {
    let daemon = TestDaemon::start().await;

    let unknown = daemon.run(&["trigger", "nobody"]);
    assert_eq!(unknown.code, 1);
    assert!(
        unknown
            .stderr
            .starts_with("herdctl: agent \"nobody\" not found"),
        "{}",
        unknown.stderr
    );
    assert!(
        unknown
            .stderr
            .contains("available agents: quick, broken, sleeper, serial"),
        "{}",
        unknown.stderr
    );
    assert!(unknown.stdout.is_empty());
    assert_eq!(daemon.run(&["--json", "agent", "nobody"]).code, 1);

    let no_job = daemon.run(&["job", "job-2020-01-01-aaaaaa"]);
    assert_eq!(no_job.code, 1);
    assert!(no_job.stderr.contains("not found"), "{}", no_job.stderr);

    let no_schedule = daemon.run(&["enable", "quick", "hourly"]);
    assert_eq!(no_schedule.code, 1);
    assert!(
        no_schedule.stderr.contains("available schedules: yearly"),
        "{}",
        no_schedule.stderr
    );

    assert_eq!(
        daemon.run(&["start"]).code,
        1,
        "starting a running fleet is refused"
    );
    assert_eq!(daemon.run(&["trigger"]).code, 2, "missing argument");
    assert_eq!(
        daemon.run(&["trigger", "quick", "--priority", "11"]).code,
        2
    );
    assert_eq!(daemon.run(&["jobs", "--since", "last tuesday"]).code, 2);

    let missing = daemon.dir().join("missing.sock");
    let nobody_home = run_to_end(herdctl_at(&missing, &["status"]));
    assert_eq!(nobody_home.code, 1);
    assert!(
        nobody_home
            .stderr
            .contains(&format!("no daemon listening on {}", missing.display())),
        "{}",
        nobody_home.stderr
    );
    assert!(
        nobody_home.stderr.contains("herdctld --config"),
        "{}",
        nobody_home.stderr
    );

    let help = daemon.run(&["trigger", "--help"]);
    assert_eq!(help.code, 0);
    assert!(
        help.stdout.contains("herdctl trigger greeter hello --wait"),
        "{}",
        help.stdout
    );
    let completions = daemon.run(&["completions", "bash"]);
    assert_eq!(completions.code, 0);
    assert!(
        completions.stdout.contains("herdctl"),
        "{}",
        completions.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_reload_and_fleet_lifecycle() {
    let daemon = TestDaemon::start().await;

    let disabled = daemon.run(&["disable", "quick", "yearly"]);
    assert_eq!(disabled.code, 0, "{disabled:?}");
    assert!(
        disabled.stdout.contains("disabled quick/yearly"),
        "{}",
        disabled.stdout
    );
    assert_eq!(daemon.json(&["schedules"])[0]["enabled"], false);
    let enabled = daemon.json(&["enable", "quick", "yearly"]);
    assert_eq!(enabled["enabled"], true);

    let reload = daemon.run(&["reload"]);
    assert_eq!(reload.code, 0, "{reload:?}");
    assert!(reload.stdout.contains("reloaded"), "{}", reload.stdout);
    assert!(daemon.json(&["reload"])["changes"].is_array());

    let stop = daemon.run(&["stop", "--timeout", "5"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(stop.stdout.contains("fleet stopped"), "{}", stop.stdout);
    assert_eq!(daemon.json(&["status"])["state"], "stopped");
    let start = daemon.json(&["start"]);
    assert_eq!(start["state"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_events_replay_then_follow() {
    let daemon = TestDaemon::start().await;
    assert_eq!(daemon.run(&["trigger", "quick", "--wait"]).code, 0);
    let id = daemon.json(&["jobs", "--agent", "quick"])["jobs"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Without -f: the replayed tail, then exit.
    let started = Instant::now();
    let logs = daemon.run(&["logs", "-n", "3"]);
    assert_eq!(logs.code, 0, "{logs:?}");
    assert_eq!(logs.stdout.lines().count(), 3, "{}", logs.stdout);
    assert!(started.elapsed() < Duration::from_secs(5));
    let agent_logs = daemon.run(&["--json", "logs", "--agent", "quick", "--level", "info"]);
    assert_eq!(agent_logs.code, 0, "{agent_logs:?}");
    let entries: Vec<Value> = agent_logs
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON entry per line"))
        .collect();
    assert!(!entries.is_empty());
    assert!(
        entries.iter().all(|e| e["agentName"] == "quick"),
        "{entries:?}"
    );
    assert_eq!(daemon.run(&["logs", "--agent", "nobody"]).code, 1);

    let output = daemon.run(&["logs", "--job", &id]);
    assert_eq!(output.stdout.trim(), "quick says hello", "{output:?}");

    // -f on a running job: its output so far, then live until it ends.
    let sleeper = daemon.json(&["trigger", "sleeper"]);
    let sleeper_id = sleeper["id"].as_str().unwrap().to_owned();
    let follow = daemon
        .herdctl(&["logs", "-f", "--job", &sleeper_id])
        .spawn()
        .unwrap();
    daemon.wait_for("the sleeper to print", || {
        let out = daemon.run(&["logs", "--job", &sleeper_id]);
        out.stdout.contains("going to sleep").then_some(())
    });
    assert_eq!(daemon.run(&["cancel", &sleeper_id, "--grace", "0"]).code, 0);
    let followed = wait_with_deadline(follow);
    assert_eq!(followed.code, 0, "{followed:?}");
    assert_eq!(
        followed.stdout.matches("going to sleep").count(),
        1,
        "{}",
        followed.stdout
    );

    // events: live until Ctrl-C.
    let mut events = daemon
        .herdctl(&["--json", "events", "--type", "job:completed"])
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(events.id() as i32);
    let stderr = lines_of(events.stderr.take().expect("piped stderr"));
    let stdout = lines_of(events.stdout.take().expect("piped stdout"));
    let said = stderr
        .recv_timeout(DEADLINE)
        .expect("herdctl events says when it is subscribed");
    assert_eq!(said, "herdctl: following events (Ctrl-C stops)");
    assert_eq!(daemon.run(&["trigger", "quick", "--wait"]).code, 0);
    let first: Value =
        serde_json::from_str(&stdout.recv_timeout(DEADLINE).expect("an event")).unwrap();
    assert_eq!(first["type"], "job:completed");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let seen = wait_with_deadline(events);
    assert_eq!(seen.code, 0, "{seen:?}");
}
