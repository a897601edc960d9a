//! Container runs against the real engine `DOCKER_HOST` names (CI: podman's Docker API service, started by
//! `.ci/podman-up`, and its local busybox image). Without an engine they print SKIPPED, except under CI, where
//! they fail.

use std::path::Path;
use std::time::Instant as StdInstant;

use super::*;
use crate::job::TerminationType;
use crate::runner::{start, OutputLimits, RunStatus, RuntimeSpec};

/// The image the tests run: busybox with sh, cat, sleep, yes, seq, touch, id.
fn test_image() -> String {
    std::env::var("HERDCTLD_TEST_IMAGE")
        .unwrap_or_else(|_| "localhost/herdctld-test-busybox:latest".to_owned())
}

/// Whether the engine answers; under CI its absence fails the test.
async fn engine_answers(test: &str) -> bool {
    match Engine::connect().await {
        Ok(_) => true,
        Err(err) if std::env::var_os("CI").is_some() => {
            panic!("{test}: CI needs a container engine (run .ci/podman-up): {err}")
        }
        Err(err) => {
            println!("SKIPPED {test}: no container engine: {err}");
            false
        }
    }
}

fn owner() -> String {
    format!("/test/runner-{}", fastrand::u64(..))
}

fn container_spec(owner: &str) -> ContainerSpec {
    ContainerSpec {
        image: test_image(),
        user: None,
        network: ContainerNetwork::None,
        memory_bytes: 256 * 1024 * 1024,
        cpu_shares: None,
        cpu_period: None,
        cpu_quota: None,
        pids_limit: None,
        workspace_read_only: false,
        mounts: Vec::new(),
        tmpfs: Vec::new(),
        ports: Vec::new(),
        env: vec![("FROM_CONTAINER".to_owned(), "yes".to_owned())],
        labels: BTreeMap::new(),
        host_config: None,
        owner: owner.to_owned(),
    }
}

fn spec(argv: &[&str], workspace: &Path, owner: &str) -> RunSpec {
    RunSpec {
        job_id: format!("job-test-{}", fastrand::u64(..)),
        agent: "boxed".to_owned(),
        schedule: None,
        prompt: "the prompt\n".to_owned(),
        runtime: RuntimeSpec::Command {
            argv: argv.iter().map(|arg| arg.to_string()).collect(),
            env: Vec::new(),
        },
        cwd: workspace.to_path_buf(),
        env: Vec::new(),
        timeout: None,
        stop_grace: Duration::from_millis(500),
        limits: OutputLimits::default(),
        container: Some(Box::new(container_spec(owner))),
    }
}

/// Every output line of the run, as text, and its outcome.
async fn run(spec: RunSpec) -> (RunOutcome, Vec<String>) {
    let (tx, mut rx) = mpsc::channel::<OutputEvent>(4);
    let collect = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(event) = rx.recv().await {
            lines.extend(
                event
                    .into_lines(0, chrono::Utc::now())
                    .into_iter()
                    .map(|line| format!("{}: {}", line.kind, line.chunk)),
            );
        }
        lines
    });
    let outcome = start(spec, tx).wait().await;
    (outcome, collect.await.unwrap())
}

/// The containers labelled with `owner`.
async fn containers_of(owner: &str) -> Vec<String> {
    let engine = Engine::connect().await.unwrap();
    let owned = engine.owned_by(owner).await.unwrap();
    owned.into_iter().map(|listed| listed.id).collect()
}

#[tokio::test]
async fn a_command_runs_in_its_container_with_prompt_env_and_workspace() {
    if !engine_answers("a_command_runs_in_its_container_with_prompt_env_and_workspace").await {
        return;
    }
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(workspace.path().join("on-host.txt"), "from the host\n").unwrap();
    let owner = owner();
    let script =
        "read line; echo \"stdin=$line\"; echo \"env=$FROM_CONTAINER job=$HERDCTL_JOB_ID\"; \
                  echo \"pwd=$(pwd)\"; cat on-host.txt; echo oops >&2; exit 3";
    let spec = spec(&["sh", "-c", script], workspace.path(), &owner);
    let job_id = spec.job_id.clone();
    let (outcome, lines) = run(spec).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?} {lines:?}");
    assert_eq!(outcome.exit_code, Some(3));
    assert_eq!(outcome.error.as_ref().unwrap().code, "EXIT_CODE");
    assert!(
        lines.contains(&"stdout: stdin=the prompt".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("stdout: env=yes job={job_id}")),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"stdout: pwd=/workspace".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"stdout: from the host".to_owned()),
        "{lines:?}"
    );
    assert!(lines.contains(&"stderr: oops".to_owned()), "{lines:?}");
    assert!(
        containers_of(&owner).await.is_empty(),
        "the container stays"
    );
}

#[tokio::test]
async fn cancel_stops_a_term_ignoring_container_after_the_grace_and_removes_it() {
    if !engine_answers("cancel_stops_a_term_ignoring_container_after_the_grace_and_removes_it")
        .await
    {
        return;
    }
    let workspace = tempfile::tempdir().unwrap();
    let owner = owner();
    let script = "trap '' TERM; echo ready; while :; do sleep 1; done";
    let spec = spec(&["sh", "-c", script], workspace.path(), &owner);
    let (tx, mut rx) = mpsc::channel(4);
    let handle = start(spec, tx);
    let canceller = handle.canceller();
    let first = rx.recv().await.unwrap().into_lines(0, chrono::Utc::now());
    assert_eq!(first[0].chunk, "ready");
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let asked = StdInstant::now();
    let termination = canceller.cancel(Duration::from_millis(500)).await;
    let took = asked.elapsed();
    assert_eq!(termination, TerminationType::Forced);
    assert!(
        took >= Duration::from_millis(500),
        "killed before the grace: {took:?}"
    );
    let outcome = handle.wait().await;
    drain.await.unwrap();
    assert_eq!(outcome.status, RunStatus::Cancelled, "{outcome:?}");
    assert_eq!(outcome.signal, Some(9), "{outcome:?}");
    assert!(
        containers_of(&owner).await.is_empty(),
        "the container stays"
    );
}

#[tokio::test]
async fn a_missing_image_fails_the_job_naming_the_image_and_how_to_get_it() {
    if !engine_answers("a_missing_image_fails_the_job_naming_the_image_and_how_to_get_it").await {
        return;
    }
    let workspace = tempfile::tempdir().unwrap();
    let owner = owner();
    let mut spec = spec(&["true"], workspace.path(), &owner);
    if let Some(container) = spec.container.as_mut() {
        container.image = "localhost/herdctld-no-such-image:1".to_owned();
    }
    let (outcome, _) = run(spec).await;
    assert_eq!(outcome.exit_reason, ExitReason::SpawnFailed, "{outcome:?}");
    let error = outcome.error.unwrap();
    assert_eq!(error.code, "IMAGE_MISSING");
    assert!(
        error
            .message
            .contains("podman pull localhost/herdctld-no-such-image:1"),
        "{}",
        error.message
    );
    assert!(containers_of(&owner).await.is_empty());
}

#[test]
fn a_container_exit_above_128_is_the_signal_that_ended_it() {
    assert_eq!(
        Exit::of_container(137),
        Exit {
            code: None,
            signal: Some(9)
        }
    );
    assert_eq!(
        Exit::of_container(3),
        Exit {
            code: Some(3),
            signal: None
        }
    );
}

#[test]
fn host_config_fields_are_laid_over_the_derived_ones_and_binds_added() {
    let mut container = container_spec("/o");
    container.host_config = Some(
        serde_json::json!({"Binds": ["/data:/data:ro"], "Memory": 1024, "ShmSize": 64})
            .as_object()
            .unwrap()
            .clone(),
    );
    let config = host_config(Path::new("/work"), &container).unwrap();
    assert_eq!(config.memory, Some(1024));
    assert_eq!(config.shm_size, Some(64));
    assert_eq!(
        config.binds,
        Some(vec![
            "/work:/workspace:rw".to_owned(),
            "/data:/data:ro".to_owned()
        ])
    );
    assert_eq!(config.cap_drop, Some(vec!["ALL".to_owned()]));
}

#[test]
fn a_later_environment_entry_shadows_an_earlier_one() {
    let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        without_shadowed(env(&[("A", "1"), ("B", "2"), ("A", "3")])),
        env(&[("B", "2"), ("A", "3")])
    );
}

#[tokio::test]
async fn a_limit_the_engine_refuses_and_a_missing_program_fail_the_job_before_it_runs() {
    if !engine_answers(
        "a_limit_the_engine_refuses_and_a_missing_program_fail_the_job_before_it_runs",
    )
    .await
    {
        return;
    }
    let workspace = tempfile::tempdir().unwrap();
    let owner = owner();
    let mut tiny = spec(&["true"], workspace.path(), &owner);
    if let Some(container) = tiny.container.as_mut() {
        container.memory_bytes = 1024;
    }
    let (outcome, _) = run(tiny).await;
    assert_eq!(outcome.exit_reason, ExitReason::SpawnFailed, "{outcome:?}");
    let error = outcome.error.unwrap();
    assert_eq!(error.code, "CONTAINER_REJECTED", "{}", error.message);
    assert!(error.message.contains("memory"), "{}", error.message);

    let (outcome, _) = run(spec(
        &["herdctld-no-such-program"],
        workspace.path(),
        &owner,
    ))
    .await;
    assert_eq!(outcome.exit_reason, ExitReason::SpawnFailed, "{outcome:?}");
    let error = outcome.error.unwrap();
    assert_eq!(error.code, "CONTAINER_REJECTED", "{}", error.message);
    assert!(
        error.message.contains("herdctld-no-such-program"),
        "{}",
        error.message
    );
    assert!(
        containers_of(&owner).await.is_empty(),
        "a container that did not start stays"
    );
}

#[test]
fn a_socket_the_daemon_may_not_use_is_permission_denied_naming_the_socket() {
    let denied = EngineError::IOError {
        err: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
    };
    let error = classify("/var/run/docker.sock", "reach", denied);
    assert_eq!(error.code(), "ENGINE_PERMISSION_DENIED");
    assert!(
        error.to_string().contains("/var/run/docker.sock"),
        "{error}"
    );
    let refused = EngineError::IOError {
        err: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
    };
    assert_eq!(
        classify("/s", "reach", refused).code(),
        "ENGINE_UNREACHABLE"
    );
}

#[tokio::test]
async fn a_socket_nobody_listens_on_and_a_tcp_host_are_unreachable_saying_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("dead.sock");
    // Bound and closed: the file stays, and connecting to it is refused.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let Err(error) = Engine::connect_to(format!("unix://{}", socket.display())).await else {
        panic!("connected to a dead socket");
    };
    assert_eq!(error.code(), "ENGINE_UNREACHABLE", "{error}");
    let message = error.to_string();
    assert!(message.contains(&socket.display().to_string()) && message.contains("DOCKER_HOST"));
    let Err(error) = Engine::connect_to("tcp://127.0.0.1:2375".to_owned()).await else {
        panic!("connected over TCP");
    };
    assert_eq!(error.code(), "ENGINE_UNREACHABLE", "{error}");
    assert!(error.to_string().contains("unix://"), "{error}");
}

#[test]
fn a_list_in_podmans_stopped_state_is_read_as_sent() {
    let sent = r#"[{"Id":"c1","Names":["/herdctl-a-job-1"],"Labels":{"herdctld.job-id":"job-1"},"State":"stopped"},
                  {"Id":"c2","Names":null,"Labels":null,"State":"exited"}]"#;
    let listed: Vec<Listed> = serde_json::from_str(sent).unwrap();
    assert_eq!(listed[0].id, "c1");
    assert_eq!(listed[0].labels.as_ref().unwrap()[JOB_ID_LABEL], "job-1");
    assert!(listed[1].names.is_none() && listed[1].labels.is_none());
}
