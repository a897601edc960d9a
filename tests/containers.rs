//! Agents with `docker.enabled` run in containers, through the real daemon and a real engine: the one
//! `DOCKER_HOST` names (CI: podman's Docker API service from `.ci/podman-up`) and its local busybox image
//! (`HERDCTLD_TEST_IMAGE`, default `localhost/herdctld-test-busybox:latest`). Without an engine these tests
//! print SKIPPED, except under CI, where they fail; the unreachable-engine test needs none.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;
use serde_json::{json, Value};
use support::*;

fn test_image() -> String {
    std::env::var("HERDCTLD_TEST_IMAGE")
        .unwrap_or_else(|_| "localhost/herdctld-test-busybox:latest".to_owned())
}

/// The engine of `DOCKER_HOST`, if it answers; under CI its absence fails the test.
async fn engine(test: &str) -> Option<Docker> {
    let skip = |why: String| {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: CI needs a container engine (run .ci/podman-up): {why}"
        );
        println!("SKIPPED {test}: {why}");
        None
    };
    let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) else {
        return skip("DOCKER_HOST is not set".to_owned());
    };
    let docker = match Docker::connect_with_unix(&host, 60, bollard::API_DEFAULT_VERSION) {
        Ok(docker) => docker,
        Err(err) => return skip(format!("no engine at {host}: {err}")),
    };
    match docker.ping().await {
        Ok(_) => Some(docker),
        Err(err) => skip(format!("the engine at {host} does not answer: {err}")),
    }
}

/// A fleet of one agent, `boxed`, whose jobs run `script` (a `sh -c` script) in a container of the test image
/// without a network; `docker` and `agent` are more YAML for its `docker` section and for the agent. Its `.env`
/// sets `FROM_DOTENV=dotenv-value`.
fn write_boxed_fleet(dir: &std::path::Path, script: &str, docker: &str, agent: &str) {
    let agents = dir.join("agents");
    std::fs::create_dir_all(&agents).unwrap();
    let script = serde_json::to_string(script).unwrap();
    std::fs::write(
        agents.join("boxed.yaml"),
        format!(
            "name: boxed\nruntime: command\ncommand: [sh, -c, {script}]\ndefault_prompt: the prompt\n{agent}\ndocker:\n  enabled: true\n{docker}\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join(".env"), "FROM_DOTENV=dotenv-value\n").unwrap();
    std::fs::write(
        dir.join("herdctl.yaml"),
        format!(
            "version: 1\nfleet: {{name: boxes}}\ndefaults:\n  docker: {{image: '{}', network: none}}\nagents: [{{path: agents/boxed.yaml}}]\n",
            test_image()
        ),
    )
    .unwrap();
}

/// The binary on the fleet in `dir`, with `DOCKER_HOST` as the test has it.
async fn start_daemon(dir: TestDir) -> Daemon {
    let env = std::env::var("DOCKER_HOST")
        .map(|host| vec![("DOCKER_HOST".to_owned(), host)])
        .unwrap_or_default();
    Daemon::start_in(
        dir,
        DaemonOptions {
            keep_existing_fleet: true,
            env,
            ..DaemonOptions::default()
        },
    )
    .await
}

/// Every container carrying `label` (`key=value`), running or not.
async fn labelled(docker: &Docker, label: String) -> Vec<String> {
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([("label".to_owned(), vec![label])])),
        ..ListContainersOptions::default()
    };
    loop {
        match docker.list_containers(Some(options.clone())).await {
            Ok(found) => return found.into_iter().filter_map(|c| c.id).collect(),
            // podman lists a container whose process has just exited as "stopped", a state the client's
            // types cannot read; it lasts a moment (until podman's cleanup), so ask again.
            Err(bollard::errors::Error::JsonDataError { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(err) => panic!("listing containers: {err}"),
        }
    }
}

/// The containers the daemon of `state` owns, running or not.
async fn containers_of(docker: &Docker, state: &std::path::Path) -> Vec<String> {
    labelled(docker, format!("herdctld.state-dir={}", state.display())).await
}

/// The container of a running job.
async fn container_of_job(docker: &Docker, job_id: &str) -> ContainerInspectResponse {
    let found = labelled(docker, format!("herdctld.job-id={job_id}")).await;
    assert_eq!(found.len(), 1, "containers of {job_id}: {found:?}");
    docker.inspect_container(&found[0], None).await.unwrap()
}

/// What a test of a container job has: the engine, a daemon on the `boxed` fleet (see [`write_boxed_fleet`]),
/// a client subscribed to its job output and end events, and the id of the job just triggered.
struct Boxed {
    engine: Docker,
    daemon: Daemon,
    client: Client,
    events: Value,
    id: String,
}

/// Triggers a job of the `boxed` fleet; `None` (the test is skipped) without an engine.
async fn trigger_boxed(test: &str, script: &str, docker: &str, agent: &str) -> Option<Boxed> {
    let engine = engine(test).await?;
    let dir = TestDir::new();
    write_boxed_fleet(dir.path(), script, docker, agent);
    let daemon = start_daemon(dir).await;
    let mut client = daemon.ndjson().await;
    let events = client
        .subscribe(
            "subscribeEvents",
            json!({"types": ["job:output", "job:completed", "job:failed"]}),
        )
        .await;
    let job = client.call("trigger", json!({"agentName": "boxed"})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    Some(Boxed {
        engine,
        daemon,
        client,
        events,
        id,
    })
}

/// Waits for the output line of job `id` that contains `text`, among `job:output` events.
async fn wait_for_output(client: &mut Client, events: &Value, id: &str, text: &str) -> Value {
    loop {
        let event = wait_for_event(client, events, "job:output", Some(id)).await;
        if event.to_string().contains(text) {
            return event;
        }
    }
}

/// The text of every stored output line of job `id`.
async fn output_text(client: &mut Client, id: &str) -> String {
    let job = client
        .call("getJob", json!({"id": id, "includeOutput": true}))
        .await;
    job["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|line| line["chunk"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_in_a_container_and_its_output_streams_live() {
    let Some(Boxed {
        engine: docker,
        daemon,
        mut client,
        events,
        id,
    }) = trigger_boxed(
        "a_job_runs_in_a_container_and_its_output_streams_live",
        "read prompt; echo \"first: $prompt in $(pwd) as job $HERDCTL_JOB_ID with $FROM_DOTENV\"; \
         while [ ! -e /workspace/gate ]; do sleep 0.05; done; echo second",
        "",
        "",
    )
    .await
    else {
        return;
    };
    let first = wait_for_output(&mut client, &events, &id, "first:").await;
    assert_eq!(
        first["line"]["chunk"],
        format!("first: the prompt in /workspace as job {id} with dotenv-value"),
        "{first}"
    );
    // The first line arrived while the job waits for its gate: it streams live, not at the end.
    let running = client.call("getJob", json!({"id": id})).await;
    assert_eq!(running["status"], "running", "{running}");
    assert_eq!(running["pid"], Value::Null, "no host process: {running}");
    assert_eq!(containers_of(&docker, &daemon.state).await.len(), 1);

    std::fs::write(daemon.agents_dir().join("gate"), "").unwrap();
    let done = wait_for_event(&mut client, &events, "job:completed", Some(&id)).await;
    assert_eq!(done["job"]["exitCode"], 0, "{done}");
    assert!(output_text(&mut client, &id).await.contains("second"));
    assert!(
        containers_of(&docker, &daemon.state).await.is_empty(),
        "the job's container is removed when it ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cpu_and_pids_limits_are_set_on_the_container() {
    let Some(Boxed {
        engine: docker,
        daemon,
        mut client,
        events,
        id,
    }) = trigger_boxed("memory_cpu_and_pids_limits_are_set_on_the_container", "echo ready; while [ ! -e /workspace/gate ]; do sleep 0.05; done",
        "  memory: 96m\n  cpu_shares: 512\n  cpu_period: 100000\n  cpu_quota: 50000\n  pids_limit: 64\n  tmpfs: ['/scratch:size=8m']\n  labels: {team: boxes}\n",
        "",).await
    else {
        return;
    };
    wait_for_output(&mut client, &events, &id, "ready").await;

    let container = container_of_job(&docker, &id).await;
    let host = container.host_config.clone().unwrap();
    assert_eq!(host.memory, Some(96 * 1024 * 1024), "{host:?}");
    assert_eq!(host.cpu_shares, Some(512), "{host:?}");
    assert_eq!(host.cpu_period, Some(100_000), "{host:?}");
    assert_eq!(host.cpu_quota, Some(50_000), "{host:?}");
    assert_eq!(host.pids_limit, Some(64), "{host:?}");
    assert_eq!(host.network_mode.as_deref(), Some("none"), "{host:?}");
    assert!(
        host.tmpfs
            .as_ref()
            .is_some_and(|tmpfs| tmpfs.contains_key("/scratch")),
        "{host:?}"
    );
    // Every capability is dropped: Docker shows `ALL`, podman the list it expanded.
    let dropped = host.cap_drop.clone().unwrap_or_default();
    assert!(
        dropped.iter().any(|cap| cap == "ALL" || cap == "CHOWN"),
        "{host:?}"
    );
    let labels = container.config.unwrap().labels.unwrap();
    assert_eq!(labels["team"], "boxes");
    assert_eq!(labels["herdctld.job-id"], id);

    std::fs::write(daemon.agents_dir().join("gate"), "").unwrap();
    wait_for_event(&mut client, &events, "job:completed", Some(&id)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_workspace_is_unwritable_from_inside() {
    let Some(Boxed {
        daemon,
        mut client,
        id,
        ..
    }) = trigger_boxed("a_read_only_workspace_is_unwritable_from_inside", "if touch /workspace/written 2>/dev/null; then echo wrote; else echo refused; fi; cat boxed.yaml >/dev/null && echo readable",
        "  workspace_mode: ro\n",
        "",).await
    else {
        return;
    };
    let done = wait_for_job_status(&mut client, &id, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    let output = output_text(&mut client, &id).await;
    assert!(output.contains("refused"), "{output}");
    assert!(output.contains("readable"), "{output}");
    assert!(!daemon.agents_dir().join("written").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_exits_without_reading_its_prompt_keeps_all_its_output() {
    // podman ends an attach whose stdin cannot be written any more (the job exited without reading it) at
    // once, before the rest of the output is copied, and writes its error into the stream. A prompt larger
    // than a pipe's buffer makes that certain here; a small one makes it a race (seen in CI).
    let test = "a_job_that_exits_without_reading_its_prompt_keeps_all_its_output";
    let Some(_engine) = engine(test).await else {
        return;
    };
    let dir = TestDir::new();
    write_boxed_fleet(
        dir.path(),
        "i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done; echo to-stderr >&2; echo last-line",
        "",
        "",
    );
    let daemon = start_daemon(dir).await;
    let mut client = daemon.ndjson().await;
    for round in 0..3 {
        let prompt = "p".repeat(256 * 1024);
        let job = client
            .call("trigger", json!({"agentName": "boxed", "prompt": prompt}))
            .await;
        let id = job["id"].as_str().unwrap().to_owned();
        let done = wait_for_job_status(&mut client, &id, &["completed", "failed"]).await;
        assert_eq!(done["status"], "completed", "round {round}: {done}");
        let job = client
            .call("getJob", json!({"id": id, "includeOutput": true}))
            .await;
        let of_stream = |stream: &str| -> Vec<String> {
            job["output"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|line| line["type"] == stream)
                .map(|line| line["chunk"].as_str().unwrap().to_owned())
                .collect()
        };
        let mut expected: Vec<String> = (0..3000).map(|i| format!("line-{i}")).collect();
        expected.push("last-line".to_owned());
        assert_eq!(of_stream("stdout"), expected, "round {round}: {job}");
        assert_eq!(of_stream("stderr"), ["to-stderr"], "round {round}: {job}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_holding_the_state_directory_shows_it_empty() {
    // The fleet's root as the workspace: the state directory (`state/`) is inside it.
    let Some(Boxed {
        daemon: _daemon,
        mut client,
        id,
        ..
    }) = trigger_boxed(
        "a_workspace_holding_the_state_directory_shows_it_empty",
        "if ls /workspace/state/jobs >/dev/null 2>&1; then echo sees-the-records; else echo state-hidden; fi; \
         if touch /workspace/state/x 2>/dev/null; then echo wrote-state; fi; \
         if [ -e /workspace/herdctl.yaml ]; then echo workspace-there; fi",
        "",
        "working_directory: ..",
    )
    .await
    else {
        return;
    };
    let done = wait_for_job_status(&mut client, &id, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    let output = output_text(&mut client, &id).await;
    assert!(output.contains("state-hidden"), "{output}");
    assert!(!output.contains("wrote-state"), "{output}");
    assert!(output.contains("workspace-there"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_term_ignoring_job_ends_it_after_the_grace_and_leaves_no_container() {
    let Some(Boxed {
        engine: docker,
        daemon,
        mut client,
        events,
        id,
    }) = trigger_boxed(
        "cancel_of_a_term_ignoring_job_ends_it_after_the_grace_and_leaves_no_container",
        "trap 'echo got TERM' TERM; echo ready; while :; do sleep 0.1; done",
        "",
        "stop_grace: 1s",
    )
    .await
    else {
        return;
    };
    wait_for_output(&mut client, &events, &id, "ready").await;

    let asked = Instant::now();
    let cancelled = client.call("cancelJob", json!({"id": id})).await;
    let took = asked.elapsed();
    assert_eq!(cancelled["terminationType"], "forced", "{cancelled}");
    assert!(
        took >= Duration::from_secs(1),
        "killed before the grace period: {took:?}"
    );
    let job = wait_for_job_status(&mut client, &id, &["cancelled"]).await;
    assert_eq!(job["exitReason"], "cancelled", "{job}");
    // SIGTERM reached the job in its container, which ignored it.
    assert!(output_text(&mut client, &id).await.contains("got TERM"));
    assert!(containers_of(&docker, &daemon.state).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_stops_the_container_job_and_leaves_no_container() {
    let Some(Boxed {
        engine: docker,
        daemon,
        mut client,
        id,
        ..
    }) = trigger_boxed(
        "a_timeout_stops_the_container_job_and_leaves_no_container",
        "trap '' TERM; echo ready; while :; do sleep 0.1; done",
        "",
        "timeout: 1s\nstop_grace: 1s",
    )
    .await
    else {
        return;
    };
    let done = wait_for_job_status(&mut client, &id, &["failed", "completed"]).await;
    assert_eq!(done["exitReason"], "timeout", "{done}");
    assert_eq!(done["error"]["code"], "TIMEOUT", "{done}");
    assert!(containers_of(&docker, &daemon.state).await.is_empty());
}

/// A container job running when its daemon is killed with `kill -9`: the engine, the dead daemon and the
/// job's id; `None` (the test is skipped) without an engine.
async fn container_left_by_a_killed_daemon(test: &str) -> Option<(Docker, Daemon, String)> {
    let Boxed {
        engine,
        mut daemon,
        mut client,
        events,
        id,
    } = trigger_boxed(test, "echo ready; while :; do sleep 0.1; done", "", "").await?;
    wait_for_output(&mut client, &events, &id, "ready").await;
    drop(client);
    daemon.kill9();
    assert_eq!(
        containers_of(&engine, &daemon.state).await.len(),
        1,
        "the container outlives the daemon that was killed"
    );
    Some((engine, daemon, id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_during_a_container_job_leaves_no_container_after_the_next_start() {
    let Some((docker, daemon, id)) = container_left_by_a_killed_daemon(
        "a_daemon_killed_during_a_container_job_leaves_no_container_after_the_next_start",
    )
    .await
    else {
        return;
    };
    let state = daemon.state.clone();
    let daemon = start_daemon(daemon.into_dir()).await;
    assert!(
        containers_of(&docker, &state).await.is_empty(),
        "the restarted daemon removed the container"
    );
    let mut client = daemon.ndjson().await;
    let job = client.call("getJob", json!({"id": id})).await;
    assert_eq!(job["exitReason"], "interrupted", "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_whose_fleet_no_longer_uses_containers_still_removes_a_dead_ones() {
    let Some((docker, daemon, _)) = container_left_by_a_killed_daemon(
        "a_daemon_whose_fleet_no_longer_uses_containers_still_removes_a_dead_ones",
    )
    .await
    else {
        return;
    };
    let state = daemon.state.clone();
    let dir = daemon.into_dir();
    std::fs::write(
        dir.path().join("agents/boxed.yaml"),
        "name: boxed\nruntime: command\ncommand: [\"true\"]\n",
    )
    .unwrap();
    let _daemon = start_daemon(dir).await;
    // Removed in the background: a fleet without containers does not wait for the engine to start.
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while !containers_of(&docker, &state).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the dead daemon's container stays"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_containers_holds_further_jobs_of_the_agent_in_the_queue() {
    let Some(Boxed {
        engine: docker,
        daemon,
        mut client,
        events,
        id,
    }) = trigger_boxed(
        "max_containers_holds_further_jobs_of_the_agent_in_the_queue",
        "echo ready; while [ ! -e /workspace/gate ]; do sleep 0.05; done",
        "  max_containers: 1\n",
        "concurrency: 2",
    )
    .await
    else {
        return;
    };
    wait_for_output(&mut client, &events, &id, "ready").await;
    // The agent may run two jobs, but only one container.
    let second = client.call("trigger", json!({"agentName": "boxed"})).await;
    assert_eq!(second["status"], "queued", "{second}");
    assert_eq!(containers_of(&docker, &daemon.state).await.len(), 1);
    std::fs::write(daemon.agents_dir().join("gate"), "").unwrap();
    let second = second["id"].as_str().unwrap();
    wait_for_event(&mut client, &events, "job:completed", Some(second)).await;
}

/// A stand-in for Claude Code inside the image: it reads the prompt, leaves a transcript where Claude keeps
/// them, prints stream-json, and says in its result what it was given.
const FAKE_CLAUDE: &str = r#"#!/bin/sh
prompt=$(cat)
touch /home/claude/.claude/projects/-workspace/sess-boxed.jsonl
echo '{"type":"system","subtype":"init","session_id":"sess-boxed"}'
printf '{"type":"result","subtype":"success","is_error":false,"result":"args: %s; prompt: %s; home: %s","session_id":"sess-boxed","num_turns":1,"total_cost_usd":0.01}\n' "$*" "$prompt" "$HOME"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_runs_in_the_container_with_its_arguments_prompt_and_session_directory() {
    let test = "claude_runs_in_the_container_with_its_arguments_prompt_and_session_directory";
    if engine(test).await.is_none() {
        return;
    }
    let dir = TestDir::new();
    write_boxed_fleet(dir.path(), "", "", "");
    let agents = dir.path().join("agents");
    std::fs::write(
        agents.join("boxed.yaml"),
        "name: boxed\nruntime: cli\nclaude_bin: /workspace/fake-claude\nmodel: some-model\ndefault_prompt: the prompt\ndocker: {enabled: true}\n",
    )
    .unwrap();
    std::fs::write(agents.join("fake-claude"), FAKE_CLAUDE).unwrap();
    std::fs::set_permissions(
        agents.join("fake-claude"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let daemon = start_daemon(dir).await;
    let mut client = daemon.ndjson().await;
    let job = client.call("trigger", json!({"agentName": "boxed"})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let done = wait_for_job_status(&mut client, &id, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["sessionId"], "sess-boxed", "{done}");
    let summary = done["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("args: -p --output-format stream-json --verbose --permission-mode acceptEdits --model some-model"),
        "{summary}"
    );
    assert!(
        summary.ends_with("prompt: the prompt; home: /home/claude"),
        "{summary}"
    );
    // The transcript landed in the state directory, where the next container's Claude finds it.
    assert!(daemon
        .state
        .join("docker-sessions/sess-boxed.jsonl")
        .exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_engine_fails_the_job_clearly_and_nothing_runs_on_the_host() {
    let dir = TestDir::new();
    let marker = dir.path().join("ran-on-host");
    write_boxed_fleet(dir.path(), &format!("touch {}", marker.display()), "", "");
    let socket = dir.path().join("no-engine.sock");
    let daemon = Daemon::start_in(
        dir,
        DaemonOptions {
            keep_existing_fleet: true,
            env: vec![(
                "DOCKER_HOST".to_owned(),
                format!("unix://{}", socket.display()),
            )],
            ..DaemonOptions::default()
        },
    )
    .await;
    let mut client = daemon.ndjson().await;
    let job = client.call("trigger", json!({"agentName": "boxed"})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let done = wait_for_job_status(&mut client, &id, &["failed", "completed"]).await;
    assert_eq!(done["exitReason"], "spawn_failed", "{done}");
    assert_eq!(done["error"]["code"], "ENGINE_UNREACHABLE", "{done}");
    let message = done["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&socket.display().to_string()) && message.contains("DOCKER_HOST"),
        "{message}"
    );
    assert!(!marker.exists(), "the job ran on the host");
}
