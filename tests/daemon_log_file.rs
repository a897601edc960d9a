//! `--log-file PATH` (issue 19): the daemon logs to PATH itself, rotates it by size into PATH.1 … PATH.<keep>,
//! keeps no more than that, and creates nothing else (no dated files, no `<state>/logs/`).

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

#[tokio::test]
async fn the_log_file_is_the_named_path_and_rotates_into_a_bounded_number_of_files() {
    let dir = TestDir::new();
    let log = dir.path().join("log").join("herdctld.log");
    let numbered = |n: u32| dir.path().join("log").join(format!("herdctld.log.{n}"));
    let (first, second, third) = (numbered(1), numbered(2), numbered(3));
    let daemon = Daemon::start_in(
        dir,
        DaemonOptions {
            args: vec![
                "--log-file".into(),
                log.display().to_string(),
                "--log-file-max-size".into(),
                "1K".into(),
                "--log-file-keep".into(),
                "2".into(),
            ],
            ..DaemonOptions::default()
        },
    )
    .await;
    wait_until(
        "the ready line in the log file",
        Duration::from_secs(10),
        || std::fs::read_to_string(&log).is_ok_and(|text| text.contains("herdctld ready")),
    )
    .await;
    assert!(
        !daemon.stderr().contains("herdctld ready"),
        "logs go to the file, not stderr: {}",
        daemon.stderr()
    );

    // Each job logs a few lines: run jobs until the log has rotated twice (more than 3 KiB of lines).
    let mut client = daemon.ndjson().await;
    for _ in 0..200 {
        if second.exists() {
            break;
        }
        let job = client.call("trigger", json!({"agentName": "echo"})).await;
        wait_for_job_status(&mut client, job["id"].as_str().unwrap(), &["completed"]).await;
    }
    assert!(second.exists(), "the log never rotated twice");
    // One more rotation's worth of lines: PATH.2 is replaced, and no PATH.3 appears.
    let rotated_before = std::fs::read_to_string(&first).unwrap();
    for _ in 0..200 {
        if std::fs::read_to_string(&second).is_ok_and(|text| text == rotated_before) {
            break;
        }
        let job = client.call("trigger", json!({"agentName": "echo"})).await;
        wait_for_job_status(&mut client, job["id"].as_str().unwrap(), &["completed"]).await;
    }
    assert_eq!(std::fs::read_to_string(&second).unwrap(), rotated_before);
    assert!(!third.exists(), "more rotated files than --log-file-keep");
    for file in [&log, &first, &second] {
        let size = std::fs::metadata(file).unwrap().len();
        assert!(size <= 1024, "{} holds {size} bytes", file.display());
    }
    let mut names: Vec<String> = std::fs::read_dir(log.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["herdctld.log", "herdctld.log.1", "herdctld.log.2"]);
    assert!(
        !daemon.state.join("logs").exists(),
        "nothing writes <state>/logs/"
    );
}

#[tokio::test]
async fn bad_rotation_options_are_refused_at_the_command_line() {
    for args in [
        vec!["--log-file", "x.log", "--log-file-max-size", "10X"],
        vec!["--log-file", "x.log", "--log-file-max-size", "100"],
        vec!["--log-file-keep", "2"],
    ] {
        let mut daemon = Daemon::spawn_in(
            TestDir::new(),
            DaemonOptions {
                args: args.iter().map(|a| a.to_string()).collect(),
                ..DaemonOptions::default()
            },
        );
        let status = daemon.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(2), "{args:?}: {}", daemon.stderr());
        assert!(
            daemon.stderr().contains("--log-file"),
            "{}",
            daemon.stderr()
        );
    }
}
