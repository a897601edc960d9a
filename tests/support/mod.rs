//! Harness for the `daemon_*` integration tests: the real `herdctld` binary on a temporary socket, driven
//! by tiny hand-written clients of its three framings.
//!
//! - [`TestDir`]: a temporary directory, kept (and printed) when `HERDCTL_KEEP_TEST_DIRS=1`.
//! - [`write_fleet`]: writes the small test fleet ([`AGENTS`]) into a directory.
//! - [`Daemon`]: starts `herdctld` on a fleet in a temp dir, waits for its socket with a deadline, and kills
//!   it (SIGKILL, then reaps it) when dropped. Its stdout and stderr go to files in the temp dir.
//! - [`Client`]: one connection in one framing (NDJSON, WebSocket, HTTP) with `call` / `call_err` /
//!   `subscribe` / `notification`; raw access for protocol tests.
//! - [`http_post`], [`http_get`], [`http_exchange`]: one raw HTTP/1.1 exchange (socket or any stream).
//!
//! Not every test binary uses every helper.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

/// How long any single reply may take before a test fails.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the daemon may take to bind its socket (a debug build on a busy 2-core box).
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

/// A fleet file listing `agent_files` (paths relative to the fleet directory).
pub fn fleet_yaml(agent_files: &[&str]) -> String {
    let mut yaml = String::from("version: 1\nfleet:\n  name: itest\nagents:\n");
    for file in agent_files {
        yaml.push_str(&format!("  - path: agents/{file}\n"));
    }
    yaml
}

/// Writes the test fleet into `dir` (`herdctl.yaml` + `agents/*.yaml`); returns the fleet file.
pub fn write_fleet(dir: &Path) -> PathBuf {
    let agents = dir.join("agents");
    std::fs::create_dir_all(&agents).unwrap();
    for (file, yaml) in AGENTS {
        std::fs::write(agents.join(file), yaml).unwrap();
    }
    let names: Vec<&str> = AGENTS.iter().map(|(file, _)| *file).collect();
    let fleet = dir.join("herdctl.yaml");
    std::fs::write(&fleet, fleet_yaml(&names)).unwrap();
    fleet
}

// -------------------------------------------------------------------------------------------------
// The daemon
// -------------------------------------------------------------------------------------------------

/// How to start a daemon; `Default` = the test fleet, no extra arguments.
#[derive(Default)]
pub struct DaemonOptions {
    /// Extra command-line arguments after `--config --state --socket`.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Do not write the test fleet (the test wrote its own into the directory).
    pub keep_existing_fleet: bool,
}

/// A running `herdctld`. Dropping it kills the process (SIGKILL) and reaps it.
pub struct Daemon {
    pub dir: TestDir,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub fleet_file: PathBuf,
    child: Option<Child>,
    pub pid: u32,
}

impl Daemon {
    /// The test fleet with default options.
    pub async fn start() -> Daemon {
        Daemon::start_with(DaemonOptions::default()).await
    }

    pub async fn start_with(options: DaemonOptions) -> Daemon {
        Daemon::start_in(TestDir::new(), options).await
    }

    /// Starts in an existing directory (e.g. to restart on the same state dir) and waits for the socket.
    pub async fn start_in(dir: TestDir, options: DaemonOptions) -> Daemon {
        let mut daemon = Daemon::spawn_in(dir, options);
        daemon.wait_for_socket().await;
        daemon
    }

    /// Starts without waiting for anything (for tests of what happens during startup).
    pub fn spawn_in(dir: TestDir, options: DaemonOptions) -> Daemon {
        let fleet_file = dir.path().join("herdctl.yaml");
        if !options.keep_existing_fleet {
            write_fleet(dir.path());
        }
        let state = dir.path().join("state");
        let socket = dir.path().join("run").join("herdctld.sock");
        let child = spawn_daemon(dir.path(), &fleet_file, &state, &socket, &options);
        let pid = child.id();
        Daemon {
            dir,
            socket,
            state,
            fleet_file,
            child: Some(child),
            pid,
        }
    }

    /// Stops this daemon (SIGKILL) and hands back its directory, for a restart on the same state.
    pub fn into_dir(mut self) -> TestDir {
        self.kill9();
        std::mem::take(&mut self.dir)
    }

    async fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if UnixStream::connect(&self.socket).await.is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "herdctld exited with {status} before binding its socket; stderr:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "herdctld did not bind {} within {START_TIMEOUT:?}; stderr:\n{}",
                self.socket.display(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.stderr")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.stdout")).unwrap_or_default()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), signal).unwrap();
    }

    /// SIGKILL and reap, like a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the daemon to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("daemon already reaped");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "herdctld did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory of the daemon in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        vm_rss_kib(self.pid)
    }

    pub async fn connect(&self, framing: Framing) -> Client {
        Client::connect(&self.socket, framing).await
    }

    pub async fn ndjson(&self) -> Client {
        self.connect(Framing::Ndjson).await
    }

    /// Rewrites the fleet file (for reload tests).
    pub fn write_fleet_file(&self, yaml: &str) {
        std::fs::write(&self.fleet_file, yaml).unwrap();
    }

    pub fn agents_dir(&self) -> PathBuf {
        self.dir.path().join("agents")
    }
}

impl Drop for Daemon {
    /// Kills the daemon, then whatever its jobs left running (a job's children do not die with the
    /// daemon: only the job's leader gets PDEATHSIG).
    fn drop(&mut self) {
        self.kill9();
        kill_processes_working_in(self.dir.path());
    }
}

/// SIGKILLs every process whose working directory is under `dir` (the test fleet's jobs run in
/// `dir/agents`).
pub fn kill_processes_working_in(dir: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let in_dir =
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir));
        if in_dir {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Starts `herdctld` on `fleet_file`; its output goes to `daemon.stdout` / `daemon.stderr` in `dir`.
pub fn spawn_daemon(
    dir: &Path,
    fleet_file: &Path,
    state: &Path,
    socket: &Path,
    options: &DaemonOptions,
) -> Child {
    let stdout = std::fs::File::create(dir.join("daemon.stdout")).unwrap();
    let stderr = std::fs::File::create(dir.join("daemon.stderr")).unwrap();
    let mut command = Command::new(BINARY);
    command
        .arg("--config")
        .arg(fleet_file)
        .arg("--state")
        .arg(state)
        .arg("--socket")
        .arg(socket)
        .args(&options.args)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    for (key, value) in &options.env {
        command.env(key, value);
    }
    command.spawn().expect("spawn herdctld")
}

pub fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Whether a process exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
    }
}

/// Live (non-zombie) processes whose process group is `pgid`.
pub fn processes_in_group(pgid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the command: state, ppid, pgrp.
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            found.push(pid);
        }
    }
    found
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lets the `gated` agent's job `job_id` finish.
pub fn open_gate(agents_dir: &Path, job_id: &str) {
    std::fs::write(agents_dir.join(format!("gate-{job_id}")), "").unwrap();
}

/// Raises this process's soft RLIMIT_NOFILE to at least `wanted` (capped at the hard limit); the daemon
/// started afterwards inherits it. Returns the new soft limit.
pub fn raise_nofile_limit(wanted: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft >= wanted {
        return soft;
    }
    // Raising the soft limit up to the hard limit needs no privilege.
    let raised = wanted.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, raised, hard).expect("setrlimit");
    raised
}

// -------------------------------------------------------------------------------------------------
// Clients
// -------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Ndjson,
    WebSocket,
    Http,
}

pub const ALL_FRAMINGS: [Framing; 3] = [Framing::Ndjson, Framing::WebSocket, Framing::Http];

type WsSender = soketto::connection::Sender<Compat<UnixStream>>;
type WsReceiver = soketto::connection::Receiver<Compat<UnixStream>>;

enum Connection {
    Ndjson {
        lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
        writer: OwnedWriteHalf,
    },
    /// A task reads messages into `incoming` (soketto's `receive_data` is not cancel-safe, and reads here
    /// time out); an error ends the channel after being printed.
    WebSocket {
        sender: WsSender,
        incoming: tokio::sync::mpsc::UnboundedReceiver<String>,
    },
    /// HTTP opens one connection per request (`Connection: close`).
    Http { socket: PathBuf },
}

/// One client connection. Notifications that arrive while waiting for a reply are kept for
/// [`Client::notification`].
pub struct Client {
    pub framing: Framing,
    connection: Connection,
    next_id: u64,
    stash: VecDeque<Value>,
}

impl Client {
    pub async fn connect(socket: &Path, framing: Framing) -> Client {
        let connection = match framing {
            Framing::Ndjson => {
                let (reader, writer) = UnixStream::connect(socket).await.unwrap().into_split();
                Connection::Ndjson {
                    lines: BufReader::new(reader).lines(),
                    writer,
                }
            }
            Framing::WebSocket => {
                let stream = UnixStream::connect(socket).await.unwrap().compat();
                let mut handshake = soketto::handshake::Client::new(stream, "localhost", "/");
                match handshake.handshake().await.unwrap() {
                    soketto::handshake::ServerResponse::Accepted { .. } => {}
                    other => panic!("websocket handshake refused: {other:?}"),
                }
                let (sender, receiver) = handshake.into_builder().finish();
                let (forward, incoming) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(read_websocket(receiver, forward));
                Connection::WebSocket { sender, incoming }
            }
            Framing::Http => Connection::Http {
                socket: socket.to_owned(),
            },
        };
        Client {
            framing,
            connection,
            next_id: 1,
            stash: VecDeque::new(),
        }
    }

    /// Sends one message as is (NDJSON: plus a newline). Over HTTP the reply is stashed for [`recv`].
    pub async fn send_raw(&mut self, text: &str) {
        match &mut self.connection {
            Connection::Ndjson { writer, .. } => {
                writer
                    .write_all(format!("{text}\n").as_bytes())
                    .await
                    .unwrap();
            }
            Connection::WebSocket { sender, .. } => {
                sender.send_text(text).await.unwrap();
                sender.flush().await.unwrap();
            }
            Connection::Http { socket } => {
                let (_, body) = http_post(socket, text).await;
                if !body.trim().is_empty() {
                    let value = serde_json::from_str(&body)
                        .unwrap_or_else(|e| panic!("HTTP reply {body:?} is not JSON: {e}"));
                    self.stash.push_back(value);
                }
            }
        }
    }

    /// The next message (reply or notification), failing the test after [`REPLY_TIMEOUT`].
    pub async fn recv(&mut self) -> Value {
        if let Some(value) = self.stash.pop_front() {
            return value;
        }
        self.recv_within(REPLY_TIMEOUT)
            .await
            .expect("no message in time")
    }

    /// The next message not yet stashed, or `None` if nothing arrives within `timeout` (or the
    /// connection closed).
    pub async fn recv_within(&mut self, timeout: Duration) -> Option<Value> {
        let text = match &mut self.connection {
            Connection::Ndjson { lines, .. } => {
                match tokio::time::timeout(timeout, lines.next_line()).await {
                    Err(_) => return None,
                    Ok(line) => line.ok().flatten()?,
                }
            }
            Connection::WebSocket { incoming, .. } => {
                tokio::time::timeout(timeout, incoming.recv())
                    .await
                    .ok()
                    .flatten()?
            }
            Connection::Http { .. } => return None,
        };
        Some(
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("message {text:?} is not JSON: {e}")),
        )
    }

    /// Sends a request and returns the whole response object; notifications met meanwhile are stashed.
    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({"jsonrpc": "2.0", "id": id, "method": method});
        if !params.is_null() {
            request["params"] = params;
        }
        self.send_raw(&request.to_string()).await;
        if self.framing == Framing::Http {
            return self.stash.pop_back().expect("HTTP request got no reply");
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let message = self.recv_within(remaining).await.unwrap_or_else(|| {
                panic!("no reply to {method} within {REPLY_TIMEOUT:?} (or the connection closed)")
            });
            if message.get("id") == Some(&json!(id)) {
                return message;
            }
            self.stash.push_back(message);
        }
    }

    /// The result of a call; fails the test on an error reply.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let response = self.request(method, params.clone()).await;
        match response.get("result") {
            Some(result) => result.clone(),
            None => panic!(
                "{method}({params}) over {:?} failed: {response}",
                self.framing
            ),
        }
    }

    /// The error object of a call; fails the test on success.
    pub async fn call_err(&mut self, method: &str, params: Value) -> Value {
        let response = self.request(method, params.clone()).await;
        match response.get("error") {
            Some(error) => error.clone(),
            None => panic!(
                "{method}({params}) over {:?} should fail: {response}",
                self.framing
            ),
        }
    }

    /// Subscribes; returns the subscription id.
    pub async fn subscribe(&mut self, method: &str, params: Value) -> Value {
        self.call(method, params).await
    }

    /// Unsubscribes and asserts it worked. jsonrpsee 0.26 sends the subscribe reply *before* it registers
    /// the subscription (`PendingSubscriptionSink::accept`), so an unsubscribe sent the instant the reply
    /// arrives can get `false`; retry briefly instead of failing on that known race.
    pub async fn unsubscribe(&mut self, method: &str, subscription: &Value) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.call(method, json!([subscription])).await != json!(true) {
            assert!(
                Instant::now() < deadline,
                "{method}({subscription}) never returned true"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The `result` of the next notification of `subscription`; other messages stay stashed.
    pub async fn notification(&mut self, subscription: &Value) -> Value {
        let is_ours = |m: &Value| m["params"]["subscription"] == *subscription;
        if let Some(index) = self.stash.iter().position(is_ours) {
            return self.stash.remove(index).unwrap()["params"]["result"].clone();
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let message = self.recv_within(remaining).await.unwrap_or_else(|| {
                panic!("no notification for subscription {subscription} in time")
            });
            if is_ours(&message) {
                return message["params"]["result"].clone();
            }
            self.stash.push_back(message);
        }
    }

    /// Everything stashed plus whatever arrives until `quiet` passes without a message.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut messages: Vec<Value> = self.stash.drain(..).collect();
        while let Some(message) = self.recv_within(quiet).await {
            messages.push(message);
        }
        messages
    }

    /// The raw NDJSON line reader and writer, for byte-level tests.
    pub fn ndjson_parts(
        &mut self,
    ) -> (
        &mut tokio::io::Lines<BufReader<OwnedReadHalf>>,
        &mut OwnedWriteHalf,
    ) {
        match &mut self.connection {
            Connection::Ndjson { lines, writer } => (lines, writer),
            _ => panic!("not an NDJSON client"),
        }
    }

    /// NDJSON: the next raw line, `None` on EOF or after `timeout`.
    pub async fn recv_line_within(&mut self, timeout: Duration) -> Option<String> {
        let (lines, _) = self.ndjson_parts();
        tokio::time::timeout(timeout, lines.next_line())
            .await
            .ok()
            .and_then(|line| line.ok().flatten())
    }
}

async fn read_websocket(
    mut receiver: WsReceiver,
    forward: tokio::sync::mpsc::UnboundedSender<String>,
) {
    loop {
        let mut data = Vec::new();
        match receiver.receive_data(&mut data).await {
            Ok(_) => {
                if forward.send(String::from_utf8(data).unwrap()).is_err() {
                    return;
                }
            }
            Err(soketto::connection::Error::Closed) => return,
            Err(e) => {
                eprintln!("websocket receive failed: {e}");
                return;
            }
        }
    }
}

/// One HTTP/1.1 POST of `body` to `/`; returns the status line and the body.
pub async fn http_post(socket: &Path, body: &str) -> (String, String) {
    let request = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let stream = UnixStream::connect(socket).await.unwrap();
    let response = http_exchange(stream, &request).await;
    (response.status, response.body)
}

/// A response read by [`http_exchange`]: status line, headers (names lowercased) and body.
pub struct HttpResponse {
    pub status: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 GET of `path` on the socket (`Connection: close`).
pub async fn http_get(socket: &Path, path: &str) -> HttpResponse {
    let stream = UnixStream::connect(socket).await.unwrap();
    http_exchange(stream, &get_request(path)).await
}

/// The text of a `GET path` that asks the server to close the connection after answering.
pub fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
}

/// Writes `request` on `stream` and reads the response to the end (the request must ask for
/// `Connection: close`). The body is taken as sent: the daemon's answers have a `content-length`.
pub async fn http_exchange(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    request: &str,
) -> HttpResponse {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(REPLY_TIMEOUT, stream.read_to_end(&mut response))
        .await
        .expect("no HTTP reply in time")
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {response:?}"));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
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

/// The job id an event is about (`job.id` or `jobId`).
pub fn event_job_id(event: &Value) -> Option<&str> {
    event["jobId"]
        .as_str()
        .or_else(|| event["job"]["id"].as_str())
}

/// Polls `getJob` until the job has one of the final statuses.
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
