//! The executor conformance suite (issue 18): one set of cases, run against every executor this machine has,
//! through the real `herdctld` binary. `local`: the daemon's own children. `slurm`: a real Slurm cluster
//! (`.ci/slurm-up` starts a one-node one on loopback); its jobs run `herdctld exec-shim` under `slurmstepd`.
//!
//! Each case says what every executor must do: output streamed live (a line arrives while the job still
//! waits for the test) and complete, in order, tagged; exit codes and failures; a job that ignores SIGTERM
//! is cancelled by force after its grace and nothing it started survives it, not even an escaped `setsid`
//! descendant; the agent's timeout; the daemon killed with `kill -9` mid-job and restarted, with no line lost
//! or repeated. A local job dies with its daemon (`interrupted`, its output kept); a cluster job is taken up
//! again, and one that ended while the daemon was down is finalized with its output and outcome. Slurm only:
//! a job Slurm holds in its queue is `queued` with Slurm's reason, still holds its fleet slot, and is taken
//! up again, still held, by the daemon after a `kill -9`.
//!
//! The Slurm cases say `SKIPPED` and pass when no cluster answers (`sinfo`), except under CI (`CI` set),
//! which starts one, so there its absence fails them. They wait on events and on files the jobs write, never
//! on sleeps; a Slurm job takes about a second to start, so there are few of them.

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// Where the cases' jobs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Local,
    Slurm,
}

impl Target {
    /// The Slurm target when a cluster answers; otherwise `None` after saying SKIPPED (panics under CI).
    fn slurm() -> Option<Target> {
        let answers = std::process::Command::new("sinfo")
            .args(["--noheader", "--format=%T"])
            .output()
            .is_ok_and(|out| out.status.success() && !out.stdout.is_empty());
        if answers {
            return Some(Target::Slurm);
        }
        let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
        assert!(
            !in_ci,
            "no Slurm cluster answers `sinfo`, and CI is set: .ci/run must start one with .ci/slurm-up"
        );
        // Straight to the stderr handle: the test harness captures `eprintln!`, and this must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no Slurm cluster answers `sinfo` (start one with .ci/slurm-up, as root)"
        );
        None
    }

    /// An agent's YAML, run on this target.
    fn agent(self, yaml: &str) -> String {
        match self {
            Target::Local => yaml.to_owned(),
            Target::Slurm => format!("{yaml}executor: {{type: slurm}}\n"),
        }
    }

    /// Whether a job outlives its daemon's death (and is taken up by the next daemon).
    fn survives_daemon(self) -> bool {
        self == Target::Slurm
    }
}

/// How long a case waits for one job to get somewhere (a Slurm job starts in about a second; the machine is
/// busy).
const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts the binary on the fleet already in `dir`.
async fn start(dir: TestDir) -> Daemon {
    let options = DaemonOptions {
        keep_existing_fleet: true,
        ..DaemonOptions::default()
    };
    Daemon::start_in(dir, options).await
}

/// A fleet of `agents` (name, YAML) on `target`, started.
async fn fleet(target: Target, agents: &[(&str, &str)]) -> Daemon {
    let dir = TestDir::new();
    let agents: Vec<(&str, String)> = agents
        .iter()
        .map(|(name, yaml)| (*name, target.agent(yaml)))
        .collect();
    let agents: Vec<(&str, &str)> = agents.iter().map(|(n, y)| (*n, y.as_str())).collect();
    write_agents(dir.path(), "conformance", &agents);
    start(dir).await
}

/// The job events of a daemon, as the cases wait for them: the events of other jobs than the one awaited
/// are kept for later.
struct Events {
    client: Client,
    subscription: Value,
    backlog: std::collections::VecDeque<Value>,
}

impl Events {
    async fn of(daemon: &Daemon) -> Events {
        let mut client = daemon.ndjson().await;
        let subscription = client
            .subscribe(
                "subscribeEvents",
                json!({"types": ["job:queued", "job:started", "job:output", "job:completed", "job:failed", "job:cancelled"]}),
            )
            .await;
        Events {
            client,
            subscription,
            backlog: std::collections::VecDeque::new(),
        }
    }

    /// The events of job `id` up to the first that `accept` takes, within [`JOB_TIMEOUT`].
    async fn until(&mut self, id: &str, accept: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + JOB_TIMEOUT;
        let mut seen = Vec::new();
        let mut kept = std::collections::VecDeque::new();
        let mut backlog = std::mem::take(&mut self.backlog);
        loop {
            assert!(
                Instant::now() < deadline,
                "job {id}: the awaited event did not come; got {seen:#?}"
            );
            let event = match backlog.pop_front() {
                Some(event) => event,
                None => self.client.notification(&self.subscription).await,
            };
            if event_job_id(&event) != Some(id) {
                kept.push_back(event);
                continue;
            }
            let done = accept(&event);
            seen.push(event);
            if done {
                kept.extend(backlog);
                self.backlog = kept;
                return seen;
            }
        }
    }

    /// Job `id`'s final record, once it has ended.
    async fn final_job(&mut self, id: &str) -> Value {
        let events = self.until(id, is_end).await;
        events.last().expect("the end event")["job"].clone()
    }
}

/// A fleet of one agent `name` running `script` on `target`, its events, a client and the job just triggered.
async fn one_job(
    target: Target,
    name: &str,
    script: &str,
    extra: &str,
) -> (Daemon, Events, Client, String) {
    let daemon = fleet(target, &[(name, &shell_agent(name, script, extra))]).await;
    let events = Events::of(&daemon).await;
    let mut client = daemon.ndjson().await;
    let id = trigger(&mut client, name).await;
    (daemon, events, client, id)
}

/// Shell that waits until the file `<gate>-<job id>` exists in the job's directory (the fleet's `agents/`;
/// [`open_gate`] opens `gate`).
fn wait_for(gate: &str) -> String {
    format!("while [ ! -e {gate}-$HERDCTL_JOB_ID ]; do sleep 0.05; done")
}

fn is_line(event: &Value, chunk: &str) -> bool {
    event["type"] == "job:output" && event["line"]["chunk"] == chunk
}

fn is_end(event: &Value) -> bool {
    matches!(
        event["type"].as_str(),
        Some("job:completed" | "job:failed" | "job:cancelled")
    )
}

/// Every output line of job `id`, checked to be numbered 0, 1, 2… without gap or repeat.
async fn output(client: &mut Client, id: &str) -> Vec<Value> {
    let job = client
        .call("getJob", json!({"id": id, "includeOutput": true}))
        .await;
    let lines = job["output"].as_array().expect("output lines").clone();
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (0..lines.len() as u64).collect::<Vec<_>>(),
        "seqs of {id}"
    );
    lines
}

fn chunks(lines: &[Value], kind: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["type"] == kind)
        .map(|l| l["chunk"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// `sh -c` lines printing `line FROM` … `line TO`.
fn print_lines(from: u32, to: u32) -> String {
    format!("i={from}; while [ $i -le {to} ]; do echo \"line $i\"; i=$((i+1)); done")
}

/// A command agent named `name` running the shell `script` (single-quoted in YAML: no `'` inside).
fn shell_agent(name: &str, script: &str, extra: &str) -> String {
    format!("name: {name}\nruntime: command\ncommand: [sh, -c, '{script}']\n{extra}")
}

fn expected_lines(from: u32, to: u32) -> Vec<String> {
    (from..=to).map(|i| format!("line {i}")).collect()
}

// -------------------------------------------------------------------------------------------------
// The cases
// -------------------------------------------------------------------------------------------------

async fn output_is_streamed_live_and_complete(target: Target) {
    let script = format!(
        "echo first; {}; {}; echo oops >&2; \
         echo \"{{\\\"type\\\":\\\"result\\\",\\\"subtype\\\":\\\"success\\\",\\\"is_error\\\":false,\\\"result\\\":\\\"talked\\\"}}\"",
        wait_for("gate"),
        print_lines(1, 300)
    );
    let (daemon, mut events, mut client, id) = one_job(target, "talker", &script, "").await;

    // Live: the first line arrives while the job still waits at its gate.
    let before = events.until(&id, |e| is_line(e, "first")).await;
    assert!(
        before.iter().any(|e| e["type"] == "job:started"),
        "job:started comes before the first line: {before:#?}"
    );
    open_gate(&daemon.agents_dir(), &id);
    let job = events.final_job(&id).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["exitCode"], 0, "{job}");
    assert_eq!(job["summary"], "talked", "{job}");

    let lines = output(&mut client, &id).await;
    let mut expected = vec!["first".to_owned()];
    expected.extend(expected_lines(1, 300));
    assert_eq!(chunks(&lines, "stdout"), expected);
    assert_eq!(chunks(&lines, "stderr"), ["oops"]);
    let result = lines
        .iter()
        .find(|l| l["type"] == "result")
        .expect("the result line");
    assert_eq!(result["message"]["result"], "talked", "{result}");
    assert_eq!(lines.len(), 303);
}

async fn exit_codes_and_failures_are_reported(target: Target) {
    let daemon = fleet(
        target,
        &[
            (
                "failer",
                &shell_agent("failer", "echo about to fail; exit 3", ""),
            ),
            (
                "missing",
                "name: missing\nruntime: command\ncommand: [herdctld-no-such-program]\n",
            ),
        ],
    )
    .await;
    let mut events = Events::of(&daemon).await;
    let mut client = daemon.ndjson().await;
    let failer = trigger(&mut client, "failer").await;
    let missing = trigger(&mut client, "missing").await;

    let job = events.final_job(&failer).await;
    assert_eq!(
        (&job["status"], &job["exitReason"], &job["exitCode"]),
        (&json!("failed"), &json!("error"), &json!(3)),
        "{job}"
    );
    assert_eq!(job["error"]["code"], "EXIT_CODE", "{job}");
    assert_eq!(
        chunks(&output(&mut client, &failer).await, "stdout"),
        ["about to fail"]
    );

    let job = events.final_job(&missing).await;
    assert_eq!(
        (&job["status"], &job["exitReason"]),
        (&json!("failed"), &json!("spawn_failed")),
        "{job}"
    );
    assert_eq!(job["error"]["code"], "SPAWN_FAILED", "{job}");
    assert!(
        job["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("herdctld-no-such-program")),
        "{job}"
    );
}

async fn a_job_ignoring_sigterm_is_forced_after_its_grace_and_nothing_it_started_survives(
    target: Target,
) {
    // It ignores SIGTERM, and so does the descendant it sends off into a session of its own.
    let script = "trap \"\" TERM; setsid sh -c \"trap \\\"\\\" TERM; exec sleep 300\" & echo started; while :; do sleep 0.1; done";
    let (_daemon, mut events, mut client, id) =
        one_job(target, "stubborn", script, "stop_grace: 1s\n").await;
    events.until(&id, |e| is_line(e, "started")).await;
    wait_until("the job and its escaped descendant", JOB_TIMEOUT, || {
        processes_of_job(&id).len() >= 2
    })
    .await;

    let asked = Instant::now();
    let cancelled = client.call("cancelJob", json!({"id": id})).await;
    assert_eq!(cancelled["terminationType"], "forced", "{cancelled}");
    assert!(
        asked.elapsed() >= Duration::from_secs(1),
        "forced only after the 1 s grace"
    );
    let job = client.call("getJob", json!({"id": id})).await;
    assert_eq!(
        (&job["status"], &job["exitReason"]),
        (&json!("cancelled"), &json!("cancelled")),
        "{job}"
    );
    wait_until(
        "every process of the job gone",
        Duration::from_secs(10),
        || processes_of_job(&id).is_empty(),
    )
    .await;
}

async fn a_cancel_gives_the_job_the_grace_it_asks_for_also_beyond_its_own(target: Target) {
    let script = "trap \"echo got TERM\" TERM; echo started; while :; do sleep 0.1; done";
    let (_daemon, mut events, mut client, id) =
        one_job(target, "patient", script, "stop_grace: 1s\n").await;
    events.until(&id, |e| is_line(e, "started")).await;

    let asked = Instant::now();
    let cancelled = client
        .call("cancelJob", json!({"id": id, "graceMs": 4000}))
        .await;
    let waited = asked.elapsed();
    assert_eq!(cancelled["terminationType"], "forced", "{cancelled}");
    assert!(
        waited >= Duration::from_millis(3500),
        "forced after the 4 s asked for, not the agent's 1 s: {waited:?}"
    );
    let lines = output(&mut client, &id).await;
    assert!(
        chunks(&lines, "stdout").contains(&"got TERM".to_owned()),
        "SIGTERM first: {lines:?}"
    );
}

async fn the_agents_timeout_ends_the_job(target: Target) {
    let (_daemon, mut events, mut client, id) = one_job(
        target,
        "sleeper",
        "echo sleeping; exec sleep 300",
        "timeout: 1s\nstop_grace: 1s\n",
    )
    .await;
    let job = events.final_job(&id).await;
    assert_eq!(
        (&job["status"], &job["exitReason"]),
        (&json!("failed"), &json!("timeout")),
        "{job}"
    );
    assert_eq!(job["error"]["code"], "TIMEOUT", "{job}");
    assert_eq!(
        chunks(&output(&mut client, &id).await, "stdout"),
        ["sleeping"]
    );
    wait_until(
        "every process of the job gone",
        Duration::from_secs(10),
        || processes_of_job(&id).is_empty(),
    )
    .await;
}

/// The relay agent: 40 lines, gate `a`, 40 more, a marker file, gate `b`, 40 more.
fn relay_agent() -> String {
    let script = format!(
        "{}; {}; {}; touch printed-80-$HERDCTL_JOB_ID; {}; {}",
        print_lines(1, 40),
        wait_for("gate-a"),
        print_lines(41, 80),
        wait_for("gate-b"),
        print_lines(81, 120)
    );
    shell_agent("relay", &script, "")
}

fn touch(daemon_dir: &std::path::Path, name: &str) {
    std::fs::write(daemon_dir.join("agents").join(name), "").unwrap();
}

async fn the_daemon_killed_mid_job_loses_and_repeats_no_line(target: Target) {
    let daemon = fleet(target, &[("relay", &relay_agent())]).await;
    let mut events = Events::of(&daemon).await;
    let mut client = daemon.ndjson().await;
    let id = trigger(&mut client, "relay").await;
    events.until(&id, |e| is_line(e, "line 40")).await;
    drop((events, client));
    let dir = daemon.into_dir();
    // While no daemon relays, the job goes on (on a cluster) and prints 40 more lines.
    touch(dir.path(), &format!("gate-a-{id}"));
    if target.survives_daemon() {
        let marker = dir.path().join("agents").join(format!("printed-80-{id}"));
        wait_until("the job to print while no daemon runs", JOB_TIMEOUT, || {
            marker.exists()
        })
        .await;
    }

    let daemon = start(dir).await;
    let mut events = Events::of(&daemon).await;
    let mut client = daemon.ndjson().await;
    if !target.survives_daemon() {
        let job = client.call("getJob", json!({"id": id})).await;
        assert_eq!(
            (&job["status"], &job["exitReason"]),
            (&json!("failed"), &json!("interrupted")),
            "{job}"
        );
        assert_eq!(
            chunks(&output(&mut client, &id).await, "stdout"),
            expected_lines(1, 40)
        );
        return;
    }
    let job = client.call("getJob", json!({"id": id})).await;
    assert_eq!(job["status"], "running", "re-attached: {job}");
    touch(daemon.dir.path(), &format!("gate-b-{id}"));
    let job = events.final_job(&id).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(
        chunks(&output(&mut client, &id).await, "stdout"),
        expected_lines(1, 120)
    );
}

async fn a_job_that_ended_while_the_daemon_was_down_is_finalized_with_its_output(target: Target) {
    let script = format!("echo before; {}; {}", wait_for("gate"), print_lines(1, 20));
    let (daemon, mut events, client, id) = one_job(target, "ender", &script, "").await;
    let started = events.until(&id, |e| is_line(e, "before")).await;
    let engine_id = started
        .iter()
        .find(|e| e["type"] == "job:started")
        .and_then(|e| e["job"]["executorRun"]["id"].as_str())
        .expect("the started job names its Slurm job")
        .to_owned();
    drop((events, client));
    let dir = daemon.into_dir();
    touch(dir.path(), &format!("gate-{id}"));
    wait_until("Slurm to report the job completed", JOB_TIMEOUT, || {
        slurm_state(&engine_id) == "COMPLETED"
    })
    .await;

    let daemon = start(dir).await;
    let mut client = daemon.ndjson().await;
    let job = wait_for_job_status(&mut client, &id, &["completed", "failed"]).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["executorRun"]["id"], engine_id.as_str(), "{job}");
    let mut expected = vec!["before".to_owned()];
    expected.extend(expected_lines(1, 20));
    assert_eq!(chunks(&output(&mut client, &id).await, "stdout"), expected);
    let exchange = daemon.state.join("executor");
    wait_until("the run's exchange files removed", JOB_TIMEOUT, || {
        std::fs::read_dir(&exchange).is_ok_and(|mut files| files.next().is_none())
    })
    .await;
}

/// Submits a run that this state directory's daemon would own (the owner tag as its comment) for a job no
/// record names: what a daemon leaves behind when it dies between Slurm's answer and its own record, or when
/// the job's record was lost. Its Slurm id.
fn submit_orphan(state: &std::path::Path) -> String {
    let out = std::process::Command::new("sbatch")
        .args([
            "--parsable",
            "--job-name=job-2026-01-01-orphan",
            &format!("--comment=herdctld:{}", state.display()),
            "--output=/dev/null",
            "--wrap=sleep 600",
        ])
        .output()
        .expect("sbatch runs");
    assert!(out.status.success(), "sbatch: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until Slurm has stopped run `engine_id` (or forgotten it).
async fn wait_until_stopped(what: &str, engine_id: &str) {
    wait_until(what, JOB_TIMEOUT, || {
        matches!(slurm_state(engine_id).as_str(), "" | "CANCELLED")
    })
    .await;
}

/// Puts a `bin/` into `dir` whose `squeue` and `scontrol` append each call (`squeue ARGS…`) to `dir/calls`
/// and run the real tools, except that `squeue` fails like one whose controller does not answer while
/// `dir/down` exists. Returns the `PATH` that puts it first.
fn logged_slurm_tools(dir: &std::path::Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["squeue", "scontrol"] {
        let real = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .expect("sh runs");
        let real = String::from_utf8_lossy(&real.stdout).trim().to_owned();
        assert!(!real.is_empty(), "{tool} is on PATH");
        let fail = if tool == "squeue" {
            format!(
                "if [ -e '{}' ]; then echo 'squeue: error: Unable to contact slurm controller' >&2; exit 1; fi\n",
                dir.join("down").display()
            )
        } else {
            String::new()
        };
        let wrapper = bin.join(tool);
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho \"{tool} $*\" >> '{}'\n{fail}exec '{real}' \"$@\"\n",
                dir.join("calls").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Starts the binary on the fleet already in `dir`, with the Slurm tools of [`logged_slurm_tools`].
async fn start_with_logged_slurm_tools(dir: TestDir) -> Daemon {
    let path = logged_slurm_tools(dir.path());
    let options = DaemonOptions {
        keep_existing_fleet: true,
        env: vec![("PATH".to_owned(), path)],
        ..DaemonOptions::default()
    };
    Daemon::start_in(dir, options).await
}

/// The calls of `tool` in a log of [`logged_slurm_tools`].
fn calls_of(log: &str, tool: &str) -> usize {
    log.lines()
        .filter(|line| line.split(' ').next() == Some(tool))
        .count()
}

async fn the_runs_of_several_jobs_are_watched_with_one_listing_not_a_call_each(target: Target) {
    let dir = TestDir::new();
    let script = format!("echo started; {}", wait_for("gate"));
    write_agents(
        dir.path(),
        "conformance",
        &[(
            "pair",
            &target.agent(&shell_agent("pair", &script, "concurrency: 2\n")),
        )],
    );
    let daemon = start_with_logged_slurm_tools(dir).await;
    let mut events = Events::of(&daemon).await;
    let mut client = daemon.ndjson().await;
    let first = trigger(&mut client, "pair").await;
    let second = trigger(&mut client, "pair").await;
    events.until(&first, |e| is_line(e, "started")).await;
    events.until(&second, |e| is_line(e, "started")).await;
    // From now on, while both run: every two seconds each driver asks for its run's state.
    let calls = daemon.dir.path().join("calls");
    std::fs::write(&calls, "").unwrap();
    wait_until("four listings of the running runs", JOB_TIMEOUT, || {
        calls_of(
            &std::fs::read_to_string(&calls).unwrap_or_default(),
            "squeue",
        ) >= 4
    })
    .await;
    let log = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(calls_of(&log, "scontrol"), 0, "{log}");
    assert!(
        log.lines()
            .filter(|line| line.starts_with("squeue"))
            .all(|line| line.contains("--jobs=") && line.contains(',')),
        "each listing asks for both runs: {log}"
    );
    for id in [&first, &second] {
        touch(daemon.dir.path(), &format!("gate-{id}"));
    }
    for id in [&first, &second] {
        assert_eq!(events.final_job(id).await["status"], "completed");
    }
}

/// A fleet whose agent runs on `target`, not started, and the Slurm id of an orphaned run of its state
/// directory ([`submit_orphan`]).
fn fleet_with_an_orphan(target: Target) -> (TestDir, String) {
    let dir = TestDir::new();
    write_agents(
        dir.path(),
        "conformance",
        &[("idle", &target.agent(&shell_agent("idle", "true", "")))],
    );
    let orphan = submit_orphan(&dir.path().join("state"));
    (dir, orphan)
}

async fn a_run_of_this_state_directory_without_an_active_job_is_stopped_at_start(target: Target) {
    let (dir, orphan) = fleet_with_an_orphan(target);
    let _daemon = start(dir).await;
    wait_until_stopped("the orphaned run stopped by the starting daemon", &orphan).await;
}

async fn an_orphaned_run_is_stopped_once_the_cluster_answers_after_a_failed_start_up_listing(
    target: Target,
) {
    let (dir, orphan) = fleet_with_an_orphan(target);
    std::fs::write(dir.path().join("down"), "").unwrap();
    let daemon = start_with_logged_slurm_tools(dir).await;
    // Ready, yet the listing failed: the run still goes on.
    assert!(
        matches!(slurm_state(&orphan).as_str(), "PENDING" | "RUNNING"),
        "{}",
        slurm_state(&orphan)
    );
    std::fs::remove_file(daemon.dir.path().join("down")).unwrap();
    wait_until_stopped("the orphaned run stopped once the cluster answers", &orphan).await;
}

/// Slurm's state of job `engine_id` (empty when it does not know it).
fn slurm_state(engine_id: &str) -> String {
    std::process::Command::new("squeue")
        .args([
            "--noheader",
            "--states=all",
            "--format=%T",
            "--jobs",
            engine_id,
        ])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

async fn a_job_slurm_holds_is_queued_with_its_reason_and_keeps_its_slot(target: Target) {
    let agent = shell_agent(
        "held",
        "echo never",
        "concurrency: 1\nexecutor: {type: slurm, extra_args: [--hold]}\n",
    );
    // Written as is: the executor is part of the agent.
    let dir = TestDir::new();
    write_agents(dir.path(), "conformance", &[("held", &agent)]);
    assert_eq!(target, Target::Slurm);
    let daemon = start(dir).await;
    let mut events = Events::of(&daemon).await;
    let mut client = daemon.ndjson().await;
    let first = trigger(&mut client, "held").await;
    let queued = events
        .until(&first, |e| e["type"] == "job:queued" && e["position"] == 0)
        .await;
    let job = &queued.last().expect("job:queued")["job"];
    assert_eq!(job["status"], "queued", "{job}");
    assert_eq!(job["executorRun"]["pendingReason"], "JobHeldUser", "{job}");
    let engine_id = job["executorRun"]["id"].clone();
    assert!(engine_id.is_string(), "{job}");

    // A daemon killed while Slurm holds the job: the next one takes the held run up again.
    drop((events, client));
    let daemon = start(daemon.into_dir()).await;
    let mut events = Events::of(&daemon).await;
    let mut client = daemon.ndjson().await;
    let queued = events
        .until(&first, |e| e["type"] == "job:queued" && e["position"] == 0)
        .await;
    let job = &queued.last().expect("job:queued")["job"];
    assert_eq!(
        (
            &job["executorRun"]["id"],
            &job["executorRun"]["pendingReason"]
        ),
        (&engine_id, &json!("JobHeldUser")),
        "{job}"
    );

    // The held job has the agent's one slot: the next waits in the fleet's queue.
    let second = client.call("trigger", json!({"agentName": "held"})).await;
    assert_eq!(second["status"], "queued", "{second}");
    assert!(
        second["executorRun"].is_null(),
        "not handed to Slurm: {second}"
    );
    let queue = client.call("getQueue", json!({})).await;
    assert_eq!(queue["agents"]["held"]["running"], 1, "{queue}");
    assert_eq!(queue["agents"]["held"]["queued"], 1, "{queue}");

    let cancelled = client.call("cancelJob", json!({"id": first})).await;
    assert_eq!(cancelled["terminationType"], "graceful", "{cancelled}");
    let job = client.call("getJob", json!({"id": first})).await;
    assert_eq!(
        (&job["status"], &job["startedAt"]),
        (&json!("cancelled"), &Value::Null),
        "{job}"
    );
    assert_eq!(job["executorRun"]["id"], engine_id, "{job}");
    assert_eq!(
        slurm_state(engine_id.as_str().unwrap_or_default()),
        "CANCELLED"
    );
    let second = second["id"].as_str().expect("an id").to_owned();
    client.call("cancelJob", json!({"id": second})).await;
}

#[test]
fn the_exec_shim_without_a_readable_spec_writes_a_failed_outcome_and_nothing_else() {
    let out = std::process::Command::new(BINARY)
        .args(["exec-shim", "--spec", "/nonexistent/job.spec.json"])
        .output()
        .expect("run the shim");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let frame: Value = serde_json::from_str(stdout.trim_end()).expect("one JSON frame");
    assert_eq!(frame["herdctl"], 1, "{stdout}");
    assert_eq!(frame["outcome"]["exit_reason"], "spawn_failed", "{stdout}");
    assert_eq!(frame["outcome"]["error"]["code"], "SHIM_SPEC", "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
}

async fn a_job_slurm_refuses_fails_to_spawn_saying_why(target: Target) {
    assert_eq!(target, Target::Slurm);
    let dir = TestDir::new();
    let agent = shell_agent(
        "refused",
        "echo never",
        "executor: {type: slurm, partition: herdctld-no-such-partition}\n",
    );
    write_agents(dir.path(), "conformance", &[("refused", &agent)]);
    let daemon = start(dir).await;
    let mut events = Events::of(&daemon).await;
    let mut client = daemon.ndjson().await;
    let id = trigger(&mut client, "refused").await;
    let job = events.final_job(&id).await;
    assert_eq!(
        (&job["status"], &job["exitReason"], &job["error"]["code"]),
        (
            &json!("failed"),
            &json!("spawn_failed"),
            &json!("SUBMIT_FAILED")
        ),
        "{job}"
    );
    let message = job["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("sbatch") && message.contains("herdctld-no-such-partition"),
        "{message}"
    );
    assert!(job["startedAt"].is_null(), "{job}");
}

// -------------------------------------------------------------------------------------------------
// The suite, per executor
// -------------------------------------------------------------------------------------------------

macro_rules! local_cases {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Target::Local).await;
                }
            )*
        }
    };
}

macro_rules! slurm_cases {
    ($($case:ident),* $(,)?) => {
        mod slurm {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(target) = super::Target::slurm() {
                        super::$case(target).await;
                    }
                }
            )*
        }
    };
}

local_cases!(
    output_is_streamed_live_and_complete,
    exit_codes_and_failures_are_reported,
    a_job_ignoring_sigterm_is_forced_after_its_grace_and_nothing_it_started_survives,
    a_cancel_gives_the_job_the_grace_it_asks_for_also_beyond_its_own,
    the_agents_timeout_ends_the_job,
    the_daemon_killed_mid_job_loses_and_repeats_no_line,
);

slurm_cases!(
    output_is_streamed_live_and_complete,
    exit_codes_and_failures_are_reported,
    a_job_ignoring_sigterm_is_forced_after_its_grace_and_nothing_it_started_survives,
    a_cancel_gives_the_job_the_grace_it_asks_for_also_beyond_its_own,
    the_agents_timeout_ends_the_job,
    the_daemon_killed_mid_job_loses_and_repeats_no_line,
    a_job_that_ended_while_the_daemon_was_down_is_finalized_with_its_output,
    a_run_of_this_state_directory_without_an_active_job_is_stopped_at_start,
    an_orphaned_run_is_stopped_once_the_cluster_answers_after_a_failed_start_up_listing,
    the_runs_of_several_jobs_are_watched_with_one_listing_not_a_call_each,
    a_job_slurm_holds_is_queued_with_its_reason_and_keeps_its_slot,
    a_job_slurm_refuses_fails_to_spawn_saying_why,
);
