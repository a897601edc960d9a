//! `herdctl` driven against a real `herdctld` (the harness's [`Daemon`], binary mode) on a fleet of its own.
//!
//! The fleet has command-runtime agents only: `quick` (prints its prompt, completes), `broken` (writes to
//! stderr, exits 3), `sleeper` (prints a line, then sleeps 30 s: something to cancel) and `serial` (half a
//! second of work, one at a time: its second job queues). The only schedule is a yearly cron, so nothing
//! fires during a test. The daemon is stopped (and its jobs with it) when the guard drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{write_agents, Daemon, DaemonOptions, TestDir};

pub const DEADLINE: Duration = Duration::from_secs(15);

const AGENTS: [(&str, &str); 4] = [
    (
        "quick",
        r#"
name: quick
description: Says what it was asked
runtime: command
command: [sh, -c, 'echo "quick says $HERDCTL_PROMPT"']
default_prompt: hello
schedules:
  yearly:
    type: cron
    cron: "0 0 1 1 *"
    prompt: happy new year
"#,
    ),
    (
        "broken",
        r#"
name: broken
runtime: command
command: [sh, -c, 'echo "something broke" >&2; exit 3']
"#,
    ),
    (
        "sleeper",
        r#"
name: sleeper
runtime: command
command: [sh, -c, 'echo "going to sleep"; exec sleep 30']
stop_grace: 1s
"#,
    ),
    (
        "serial",
        r#"
name: serial
runtime: command
command: [sh, -c, 'sleep 0.5; echo "serial done"']
concurrency: 1
"#,
    ),
];

pub struct TestDaemon {
    daemon: Daemon,
    pub socket: PathBuf,
}

impl TestDaemon {
    /// Writes the fleet and starts the daemon; returns once it is ready.
    pub async fn start() -> TestDaemon {
        assert_real_client();
        let dir = TestDir::new();
        write_agents(dir.path(), "cli-test", &AGENTS);
        let daemon = Daemon::start_in(
            dir,
            DaemonOptions {
                keep_existing_fleet: true,
                ..DaemonOptions::default()
            },
        )
        .await;
        let socket = daemon.socket.clone();
        TestDaemon { daemon, socket }
    }

    /// The temporary directory of the fleet, its state and socket.
    pub fn dir(&self) -> &Path {
        self.daemon.dir.path()
    }

    /// What the daemon logged.
    pub fn log(&self) -> String {
        self.daemon.stderr()
    }

    /// `herdctl --socket <ours> ARGS…`, ready to spawn, with colours off by environment (not a TTY anyway).
    pub fn herdctl(&self, args: &[&str]) -> Command {
        herdctl_at(&self.socket, args)
    }

    /// Runs `herdctl ARGS…` to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        run_to_end(self.herdctl(args))
    }

    /// Runs `herdctl --json ARGS…`, expects success and parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let run = self.run(&full);
        assert_eq!(run.code, 0, "herdctl {full:?} failed: {}", run.stderr);
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("herdctl {full:?} printed no JSON ({e}): {}", run.stdout))
    }

    /// Polls `check` until it gives `Some`, or fails the test at the deadline.
    pub fn wait_for<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "timed out waiting for {what}; daemon log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The id of the first running job of `agent`, once there is one.
    pub fn running_job_of(&self, agent: &str) -> String {
        self.wait_for(&format!("a running job of {agent}"), || {
            let page = self.json(&["jobs", "--agent", agent, "--status", "running"]);
            page["jobs"][0]["id"].as_str().map(str::to_owned)
        })
    }
}

/// What a finished `herdctl` printed and how it exited.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Fails clearly when the `herdctl` binary is not a real client (e.g. replaced by a concurrent build of
/// another checkout sharing the target directory), instead of letting every assertion fail on empty output.
fn assert_real_client() {
    let version = Command::new(env!("CARGO_BIN_EXE_herdctl"))
        .arg("--version")
        .output()
        .expect("run herdctl --version");
    let printed = String::from_utf8_lossy(&version.stdout);
    assert!(
        printed.starts_with("herdctl "),
        "{} is not the herdctl client (`--version` printed {printed:?}); rebuild it",
        env!("CARGO_BIN_EXE_herdctl")
    );
}

pub fn herdctl_at(socket: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herdctl"));
    command
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("HERDCTL_SOCKET")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

pub fn run_to_end(mut command: Command) -> Run {
    let child = command.spawn().expect("spawn herdctl");
    wait_with_deadline(child)
}

/// The lines of a child's pipe as they come, read on a thread so a test can wait for one with a deadline.
pub fn lines_of(pipe: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)).map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Waits for a spawned `herdctl` to exit (its output is small, so the pipes cannot fill), killing it at the
/// deadline.
pub fn wait_with_deadline(mut child: Child) -> Run {
    let started = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("herdctl output").into();
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let run: Run = child.wait_with_output().expect("herdctl output").into();
            panic!("herdctl did not exit in time: {run:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
