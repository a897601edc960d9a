//! herdctld as a process: the OpenRPC document, the socket's mode, the state-dir lock, exit codes,
//! sd_notify, signals and crash recovery (the systemd units are tests/systemd_units.rs).

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use herdctld::fleet::{FleetManager, FleetManagerOptions};
use herdctld::rpc::methods::{fleet_module, registered_method_names};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::*;

fn repo_file(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_discover_returns_the_bytes_of_openrpc_json() {
    let daemon = Daemon::start().await;
    let file = std::fs::read_to_string(repo_file("proto-docs/openrpc.json")).unwrap();
    let (status, body) = http_post(
        &daemon.socket,
        r#"{"jsonrpc":"2.0","id":1,"method":"rpc.discover"}"#,
    )
    .await;
    assert!(status.contains("200"), "{status}");
    // The file's trailing newline is not part of the JSON text (serde_json's RawValue drops it).
    let expected = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{}}}"#, file.trim_end());
    if body != expected {
        let at = body
            .bytes()
            .zip(expected.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        panic!(
            "rpc.discover differs from the file at byte {at} (lengths {} and {}): {:?} vs {:?}",
            body.len(),
            expected.len(),
            &body[at.saturating_sub(20)..(at + 20).min(body.len())],
            &expected[at.saturating_sub(20)..(at + 20).min(expected.len())]
        );
    }
}

#[test]
fn openrpc_documents_exactly_the_registered_methods() {
    let document: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("proto-docs/openrpc.json")).unwrap(),
    )
    .unwrap();
    assert!(document["openrpc"].as_str().unwrap().starts_with("1."));
    let documented: BTreeSet<String> = document["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    let module = fleet_module(FleetManager::new(FleetManagerOptions::default()));
    let registered: BTreeSet<String> = registered_method_names(&module).into_iter().collect();
    assert_eq!(documented, registered);
    // Each subscription names its notification and unsubscribe method; notifications are not methods.
    for method in document["methods"].as_array().unwrap() {
        if let Some(unsubscribe) = method.get("x-unsubscribe") {
            assert!(
                registered.contains(unsubscribe.as_str().unwrap()),
                "{method}"
            );
            let notification = method["x-notification"]["name"].as_str().unwrap();
            assert!(!registered.contains(notification), "{notification}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_0600_and_a_second_daemon_on_the_same_state_fails_fast() {
    let daemon = Daemon::start().await;
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o600);

    let second_socket = daemon.dir.path().join("second.sock");
    let started = std::time::Instant::now();
    let output = Command::new(BINARY)
        .arg("--config")
        .arg(&daemon.fleet_file)
        .arg("--state")
        .arg(&daemon.state)
        .arg("--socket")
        .arg(&second_socket)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(stderr.contains("herdctld.lock"), "{stderr}");
    assert!(
        stderr.contains(&daemon.pid.to_string()),
        "names the holder: {stderr}"
    );
    assert!(!second_socket.exists());
    // The first one is unharmed.
    assert_eq!(
        daemon.ndjson().await.call("getState", Value::Null).await,
        "running"
    );
}

#[test]
fn invalid_configuration_at_start_exits_78_with_every_error() {
    let dir = TestDir::new();
    write_fleet(dir.path());
    std::fs::write(
        dir.path().join("agents/broken.yaml"),
        "name: \"bad name\"\nschedules:\n  s:\n    type: interval\n    interval: 5x\n  c:\n    type: cron\n    cron: \"61 * * * *\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("herdctl.yaml"),
        fleet_yaml(&["echo.yaml", "broken.yaml", "missing.yaml"]),
    )
    .unwrap();
    let output = Command::new(BINARY)
        .arg("--config")
        .arg(dir.path())
        .arg("--state")
        .arg(dir.path().join("state"))
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    for expected in ["missing.yaml", "bad name", "5x", "61"] {
        assert!(
            stderr.contains(expected),
            "{expected} missing from:\n{stderr}"
        );
    }
    assert!(stderr.contains("herdctl.yaml"), "{stderr}");
    for forbidden in ["panicked", "backtrace", "RUST_BACKTRACE", "Error {"] {
        assert!(!stderr.contains(forbidden), "{forbidden} in:\n{stderr}");
    }
}

#[test]
fn bad_command_lines_exit_2() {
    let dir = TestDir::new();
    write_fleet(dir.path());
    for args in [
        vec!["--bogus"],
        vec!["--log-format", "xml"],
        vec!["--max-queued", "many"],
        vec!["--socket-mode", "0999"],
        vec!["--log-level", "loud"],
    ] {
        let output = Command::new(BINARY)
            .arg("--config")
            .arg(dir.path())
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.trim().is_empty(), "{args:?} explains itself");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Reads the daemon's sd_notify messages until one starts with `prefix`.
async fn expect_notification(daemon: &mut Daemon, prefix: &str, seen: &mut Vec<String>) {
    loop {
        let message = daemon.notification().await;
        seen.push(message.clone());
        if message.starts_with(prefix) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_sighup_reload_and_sigterm_stop() {
    // Started means the harness got READY=1 on the NOTIFY_SOCKET it gave the daemon.
    let mut daemon = Daemon::start().await;
    let (socket, fleet_file) = (daemon.socket.clone(), daemon.fleet_file.clone());
    let agents_dir = daemon.agents_dir();
    let mut seen = Vec::new();

    // READY=1 means the socket is bound and serving, and signals are handled (`systemctl reload` may
    // come at once).
    assert!(socket.exists(), "READY=1 before the socket exists");
    daemon.signal(Signal::SIGHUP);
    expect_notification(&mut daemon, "RELOADING=1", &mut seen).await;
    expect_notification(&mut daemon, "READY=1", &mut seen).await;
    let mut client = Client::connect(&socket, Framing::Ndjson).await;
    assert_eq!(client.call("getState", Value::Null).await, "running");

    // SIGHUP = reload.
    let events = client
        .subscribe("subscribeEvents", json!({"types": ["config:reloaded"]}))
        .await;
    std::fs::write(
        agents_dir.join("extra.yaml"),
        "name: extra\nruntime: command\ncommand: [\"true\"]\n",
    )
    .unwrap();
    std::fs::write(
        &fleet_file,
        fleet_yaml(&["echo.yaml", "gated.yaml", "blocker.yaml", "extra.yaml"]),
    )
    .unwrap();
    daemon.signal(Signal::SIGHUP);
    let reloaded = client.notification(&events).await;
    assert_eq!(reloaded["type"], "config:reloaded");
    assert!(
        reloaded["changes"].to_string().contains("agent:extra"),
        "{reloaded}"
    );
    expect_notification(&mut daemon, "RELOADING=1", &mut seen).await;
    expect_notification(&mut daemon, "READY=1", &mut seen).await;
    assert_eq!(
        client.call("getAgent", json!({"name": "extra"})).await["name"],
        "extra"
    );

    // SIGTERM = graceful stop, and the stopped event names it.
    let stops = client
        .subscribe("subscribeEvents", json!({"types": ["stopped"]}))
        .await;
    daemon.signal(Signal::SIGTERM);
    expect_notification(&mut daemon, "STOPPING=1", &mut seen).await;
    let stopped = client.notification(&stops).await;
    assert_eq!(stopped["reason"], "SIGTERM", "{stopped}");
    let status = daemon.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{}", daemon.stderr());
    assert!(!socket.exists(), "the socket is removed on exit");
    assert!(
        daemon.stdout().contains(&socket.display().to_string()),
        "it prints the socket path"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_running_when_the_daemon_is_killed_is_failed_interrupted_after_restart() {
    let mut daemon = Daemon::start().await;
    let mut client = daemon.ndjson().await;
    let job = client
        .call("trigger", json!({"agentName": "blocker"}))
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let running = wait_for_job_status(&mut client, &id, &["running"]).await;
    let pgid = running["pgid"].as_i64().expect("a running job has a pgid") as i32;
    // The job's shell has started its `sleep 60` child.
    wait_until(
        "the job's process group to hold two processes",
        REPLY_TIMEOUT,
        || processes_in_group(pgid).len() >= 2,
    )
    .await;
    drop(client);

    daemon.kill9();
    let daemon = Daemon::start_in(
        daemon.into_dir(),
        DaemonOptions {
            keep_existing_fleet: true,
            ..DaemonOptions::default()
        },
    )
    .await;
    let mut client = daemon.ndjson().await;
    let job = client.call("getJob", json!({"id": id})).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["exitReason"], "interrupted", "{job}");
    wait_until(
        "the interrupted job's processes to be gone",
        Duration::from_secs(5),
        || processes_in_group(pgid).is_empty(),
    )
    .await;
    // The agent is free again.
    let next = client
        .call("trigger", json!({"agentName": "blocker"}))
        .await;
    assert_eq!(next["status"], "running", "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cancels_jobs_that_run_while_the_fleet_is_not_started() {
    let mut daemon = Daemon::start_with(DaemonOptions {
        args: vec!["--no-start".into()],
        ..DaemonOptions::default()
    })
    .await;
    let mut client = daemon.ndjson().await;
    let job = client
        .call("trigger", json!({"agentName": "blocker"}))
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let running = wait_for_job_status(&mut client, &id, &["running"]).await;
    let pgid = running["pgid"].as_i64().expect("a running job has a pgid") as i32;
    drop(client);

    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{}", daemon.stderr());
    assert!(
        processes_in_group(pgid).is_empty(),
        "the job's processes are gone when the daemon exits"
    );
    let record = std::fs::read_to_string(daemon.state.join("jobs").join(format!("{id}.yaml")))
        .expect("the job record persists");
    assert!(
        record.contains("status: cancelled"),
        "the job was cancelled, not left to be found interrupted:\n{record}"
    );
}

/// The answers `proto-docs/README.md` shows (the ones given whole, not shortened with `…`) are what the
/// document's schemas say, as the daemon's own answers are in every test: the examples show the protocol
/// as it is.
#[test]
fn the_protocol_readmes_examples_have_the_documented_shapes() {
    let readme = std::fs::read_to_string(repo_file("proto-docs/README.md")).unwrap();
    let mut methods_by_id: std::collections::HashMap<String, String> = Default::default();
    let (mut checked, mut shortened) = (0, 0);
    for line in readme.lines() {
        // A request: the JSON between the quotes of `echo '…'` or `-d '…'`.
        for request in line.split('\'').skip(1).step_by(2) {
            if let Ok(request) = serde_json::from_str::<Value>(request) {
                if let (Some(id), Some(method)) = (request.get("id"), request["method"].as_str()) {
                    methods_by_id.insert(id.to_string(), method.to_owned());
                }
            }
        }
        let Some(shown) = line.strip_prefix("# ") else {
            continue;
        };
        // `request  →  answer` shows both on one line.
        for message in shown
            .split("  →  ")
            .filter(|m| m.starts_with("{\"jsonrpc\""))
        {
            let Ok(message) = serde_json::from_str::<Value>(message) else {
                shortened += 1;
                continue;
            };
            match (message.get("id"), message["method"].as_str()) {
                (Some(id), Some(method)) => {
                    methods_by_id.insert(id.to_string(), method.to_owned());
                    continue;
                }
                (None, Some(notification)) => {
                    schema::check_notification(notification, &message["params"]["result"]);
                }
                _ => match (message.get("result"), message.get("error")) {
                    (Some(result), _) => {
                        let method = &methods_by_id[&message["id"].to_string()];
                        schema::check_result(method, result);
                    }
                    (None, Some(error)) => {
                        schema::check_error(error);
                    }
                    (None, None) => panic!("neither an answer nor a notification: {message}"),
                },
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 30,
        "only {checked} whole answers checked ({shortened} shortened)"
    );
}
