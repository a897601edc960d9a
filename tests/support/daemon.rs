//! The daemon under test, started one way in one of two modes:
//!
//! - [`Mode::Binary`]: the real `herdctld` that Cargo built, as an operator runs it, with `NOTIFY_SOCKET`
//!   set to a datagram socket the harness binds: it is ready when it sends `READY=1` (what systemd waits
//!   for). Its stdout and stderr go to files in the temp dir. For what only a process has: exit codes,
//!   signals, logs, sd_notify, memory, `kill -9`.
//! - [`Mode::InProcess`]: the library's `herdctld::daemon::Daemon` on the test's own runtime, set up from the
//!   same command line as the binary would be (`DaemonArgs`): ready when its start returns. For what the
//!   protocol does; no process, so no logs of its own (the tracing subscriber is process-wide; a test can
//!   push entries into its log bus, [`Daemon::push_log_entries`]), signals or stdio. It can also serve a fleet not
//!   yet initialized ([`DaemonOptions::uninitialized`]), for `initialize` over the socket.
//!
//! Either way a temp dir holds the fleet (`herdctl.yaml`, `agents/`), `state/` and `run/herdctld.sock`, and
//! the daemon is stopped when dropped as an operator stops it — a shutdown request and a second one, which
//! cancels running jobs at once — with SIGKILL (binary) after [`STOP_TIMEOUT`] and, last, a sweep of any
//! process still working in the temp dir.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use clap::Parser;
use herdctld::daemon::run::DaemonArgs;
use herdctld::daemon::{
    self as library, socket, DaemonError, DaemonOptions as ServeOptions, Request,
};
use herdctld::fleet::{FleetManager, LogBus, LogEntry, LogLevel};
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{
    kill_processes_working_in, vm_rss_kib, write_fleet, Client, Framing, TestDir, BINARY,
    START_TIMEOUT,
};

/// How long a dropped daemon may take to stop before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Which daemon a test talks to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// The `herdctld` binary.
    #[default]
    Binary,
    /// The library's daemon, on the test's runtime (which must be multi-threaded: dropping the daemon waits
    /// for its stop).
    InProcess,
}

/// How to start a daemon; `Default` = the binary on the test fleet, no extra arguments.
#[derive(Default)]
pub struct DaemonOptions {
    pub mode: Mode,
    /// Extra command-line arguments after `--config --state --socket`.
    pub args: Vec<String>,
    /// Environment of the binary (in-process there is only the test's own).
    pub env: Vec<(String, String)>,
    /// Do not write the test fleet (the test wrote its own into the directory).
    pub keep_existing_fleet: bool,
    /// The state directory, if not `state/` in the temp dir.
    pub state: Option<PathBuf>,
    /// A program that runs the binary (`eatmydata`, for the bench); it must `exec` it, so that the pid is
    /// the daemon's.
    pub wrapper: Option<OsString>,
    /// How long the binary may take to be ready, if not [`START_TIMEOUT`] (the bench's first start on a
    /// history of 100,000 jobs takes longer).
    pub start_timeout: Option<Duration>,
    /// Serve the fleet before it is initialized (the test calls `initialize` and `start`); in-process
    /// only, as the binary initializes before it binds its socket.
    pub uninitialized: bool,
}

impl DaemonOptions {
    /// The library's daemon on the test fleet.
    pub fn in_process() -> DaemonOptions {
        DaemonOptions {
            mode: Mode::InProcess,
            ..DaemonOptions::default()
        }
    }
}

enum Running {
    Binary {
        // Boxed: a `Child` is large, and a daemon is moved around by value.
        child: Box<tokio::process::Child>,
        notify: UnixDatagram,
    },
    InProcess {
        requests: mpsc::Sender<Request>,
        task: JoinHandle<Result<(), DaemonError>>,
        logs: LogBus,
    },
    /// Exited, killed or stopped.
    Gone,
}

/// A running daemon.
pub struct Daemon {
    pub dir: TestDir,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub fleet_file: PathBuf,
    /// The daemon's process: the binary's, or this test's own in-process.
    pub pid: u32,
    running: Running,
}

impl Daemon {
    /// The binary on the test fleet with default options.
    pub async fn start() -> Daemon {
        Daemon::start_with(DaemonOptions::default()).await
    }

    /// The library's daemon on the test fleet, in this process.
    pub async fn in_process() -> Daemon {
        Daemon::start_with(DaemonOptions::in_process()).await
    }

    pub async fn start_with(options: DaemonOptions) -> Daemon {
        Daemon::start_in(TestDir::new(), options).await
    }

    /// Starts in an existing directory (e.g. to restart on the same state dir) and waits until it is ready.
    pub async fn start_in(dir: TestDir, options: DaemonOptions) -> Daemon {
        match options.mode {
            Mode::Binary => {
                let timeout = options.start_timeout.unwrap_or(START_TIMEOUT);
                let mut daemon = Daemon::spawn_in(dir, options);
                daemon.wait_until_ready(timeout).await;
                daemon
            }
            Mode::InProcess => Daemon::start_in_process(dir, options).await,
        }
    }

    /// Where a daemon in `dir` keeps its files; not started yet.
    fn layout(dir: TestDir, options: &DaemonOptions, pid: u32) -> Daemon {
        Daemon {
            socket: dir.path().join("run").join("herdctld.sock"),
            state: options
                .state
                .clone()
                .unwrap_or_else(|| dir.path().join("state")),
            fleet_file: dir.path().join("herdctl.yaml"),
            pid,
            running: Running::Gone,
            dir,
        }
    }

    /// The command line the daemon gets, in either mode.
    fn args(&self, options: &DaemonOptions) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--config".into(),
            self.fleet_file.clone().into(),
            "--state".into(),
            self.state.clone().into(),
            "--socket".into(),
            self.socket.clone().into(),
        ];
        args.extend(options.args.iter().map(OsString::from));
        args
    }

    /// Starts the binary without waiting for anything (for tests of what happens during startup).
    pub fn spawn_in(dir: TestDir, options: DaemonOptions) -> Daemon {
        assert_eq!(options.mode, Mode::Binary, "only the binary can be spawned");
        assert!(
            !options.uninitialized,
            "the binary initializes before it serves"
        );
        if !options.keep_existing_fleet {
            write_fleet(dir.path());
        }
        let notify_path = dir.path().join("notify.sock");
        // A daemon before this one in the same directory (a restart) left the file behind.
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
        let mut daemon = Daemon::layout(dir, &options, 0);
        let stdout = std::fs::File::create(daemon.dir.path().join("daemon.stdout")).unwrap();
        let stderr = std::fs::File::create(daemon.dir.path().join("daemon.stderr")).unwrap();
        let mut command = match &options.wrapper {
            Some(wrapper) => {
                let mut command = tokio::process::Command::new(wrapper);
                command.arg(BINARY);
                command
            }
            None => tokio::process::Command::new(BINARY),
        };
        command
            .args(daemon.args(&options))
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (key, value) in &options.env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn herdctld");
        daemon.pid = child.id().expect("a child that was just spawned has a pid");
        daemon.running = Running::Binary {
            child: Box::new(child),
            notify,
        };
        daemon
    }

    async fn start_in_process(dir: TestDir, options: DaemonOptions) -> Daemon {
        use tokio::runtime::{Handle, RuntimeFlavor};
        assert_eq!(
            Handle::current().runtime_flavor(),
            RuntimeFlavor::MultiThread,
            "an in-process daemon needs #[tokio::test(flavor = \"multi_thread\")]: dropping it waits for its stop"
        );
        assert!(
            options.env.is_empty() && options.wrapper.is_none(),
            "environment and wrapper are the binary's"
        );
        if !options.keep_existing_fleet {
            write_fleet(dir.path());
        }
        let mut daemon = Daemon::layout(dir, &options, std::process::id());
        let argv = std::iter::once(OsString::from("herdctld")).chain(daemon.args(&options));
        let args = DaemonArgs::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
        let logs = LogBus::new(10_000);
        let fleet = FleetManager::new(args.fleet_options(logs.clone()));
        if !options.uninitialized {
            fleet
                .initialize()
                .await
                .unwrap_or_else(|e| panic!("the fleet did not initialize: {e}"));
        }
        let mode = socket::parse_socket_mode(&args.socket_mode).unwrap_or_else(|e| panic!("{e}"));
        // A plain bind: the temp dir is private, and the binary's bind under a restrictive umask would
        // change the mode of files other tests of this process create meanwhile.
        std::fs::create_dir_all(daemon.dir.path().join("run")).unwrap();
        let listener = tokio::net::UnixListener::bind(&daemon.socket).unwrap();
        let metrics_listener = match args.metrics_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.unwrap()),
            None => None,
        };
        let serve = ServeOptions {
            start_fleet: !args.no_start && !options.uninitialized,
            allowed_gid: socket::admitted_group(mode),
            metrics_listener,
            ..ServeOptions::default()
        };
        let served = library::Daemon::start(fleet, listener, serve)
            .await
            .unwrap_or_else(|e| panic!("the daemon did not start: {e}"));
        let (requests, received) = mpsc::channel(4);
        daemon.running = Running::InProcess {
            requests,
            task: tokio::spawn(served.run(received)),
            logs,
        };
        daemon
    }

    /// Waits for `READY=1`, failing the test if the daemon exits first or takes too long.
    async fn wait_until_ready(&mut self, timeout: Duration) {
        let stderr = self.dir.path().join("daemon.stderr");
        let socket = self.socket.clone();
        let Running::Binary { child, notify } = &mut self.running else {
            panic!("not a running binary");
        };
        let mut buf = [0u8; 4096];
        let ready = async {
            loop {
                let n = notify.recv(&mut buf).await.expect("read the notify socket");
                if buf[..n]
                    .split(|b| *b == b'\n')
                    .any(|line| line == b"READY=1")
                {
                    return;
                }
            }
        };
        tokio::select! {
            () = ready => {}
            status = child.wait() => panic!(
                "herdctld exited with {} before it was ready; stderr:\n{}",
                status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                std::fs::read_to_string(&stderr).unwrap_or_default(),
            ),
            () = tokio::time::sleep(timeout) => panic!(
                "herdctld did not send READY=1 for {} within {timeout:?}; stderr:\n{}",
                socket.display(),
                std::fs::read_to_string(&stderr).unwrap_or_default(),
            ),
        }
    }

    /// The binary's next sd_notify message (after the `READY=1` that made it ready).
    pub async fn notification(&mut self) -> String {
        let Running::Binary { notify, .. } = &self.running else {
            panic!("only the binary notifies");
        };
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(START_TIMEOUT, notify.recv(&mut buf))
            .await
            .expect("no sd_notify message in time")
            .expect("read the notify socket");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// What the binary wrote to stderr (its log, by default); empty in-process, whose log goes nowhere.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.stderr")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.stdout")).unwrap_or_default()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        assert!(
            matches!(self.running, Running::Binary { .. }),
            "signals are for the binary"
        );
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), signal).unwrap();
    }

    /// SIGKILL and reap, like a crash.
    pub fn kill9(&mut self) {
        match std::mem::replace(&mut self.running, Running::Gone) {
            Running::Binary { child, .. } => kill_and_reap(*child),
            Running::InProcess { .. } => panic!("an in-process daemon cannot be killed"),
            Running::Gone => {}
        }
    }

    /// Kills this daemon (SIGKILL) and hands back its directory, for a restart on the same state.
    pub fn into_dir(mut self) -> TestDir {
        self.kill9();
        std::mem::take(&mut self.dir)
    }

    /// Waits for the binary to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let Running::Binary { child, .. } = &mut self.running else {
            panic!("only the binary exits");
        };
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .unwrap_or_else(|_| panic!("herdctld did not exit within {timeout:?}"))
            .expect("wait for herdctld");
        self.running = Running::Gone;
        status
    }

    /// Resident memory of the daemon's process in KiB.
    pub fn rss_kib(&self) -> u64 {
        vm_rss_kib(self.pid)
    }

    /// The in-process daemon's log bus: entries pushed here are what its log streams deliver.
    fn log_bus(&self) -> &LogBus {
        match &self.running {
            Running::InProcess { logs, .. } => logs,
            _ => panic!("only an in-process daemon's log bus is the test's"),
        }
    }

    /// Pushes `count` info entries (`entry N`, about no agent) into the in-process daemon's log bus, as
    /// its tracing layer would: more than a reader that does not read can be kept.
    pub fn push_log_entries(&self, count: usize) {
        for n in 0..count {
            self.log_bus().push(LogEntry {
                timestamp: chrono::Utc::now(),
                level: LogLevel::Info,
                source: "test".into(),
                agent_name: None,
                job_id: None,
                message: format!("entry {n}"),
                fields: serde_json::Map::new(),
            });
        }
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

    /// Stops the daemon as an operator would (see the module doc); returns once it is gone.
    fn stop(&mut self) {
        match std::mem::replace(&mut self.running, Running::Gone) {
            Running::Binary { child, .. } => stop_binary(*child),
            Running::InProcess { requests, task, .. } => stop_in_process(requests, task),
            Running::Gone => {}
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // Whatever a daemon that had to be killed left running: only a job's leader dies with it.
        kill_processes_working_in(self.dir.path());
    }
}

/// Two SIGTERMs 50 ms apart (the second cancels running jobs at once), then SIGKILL if the daemon still
/// runs after [`STOP_TIMEOUT`]. Synchronous: it runs in `Drop`.
fn stop_binary(mut child: tokio::process::Child) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        for sent in 0..2 {
            if sent > 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
    let started = std::time::Instant::now();
    while started.elapsed() < STOP_TIMEOUT {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_and_reap(child);
}

fn kill_and_reap(mut child: tokio::process::Child) {
    let _ = child.start_kill();
    // SIGKILL cannot be caught: the exit follows at once, so waiting here is short.
    while matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Asks the in-process daemon to stop now and waits for it, on the test's runtime (hence a multi-threaded
/// one: this blocks a thread of it).
fn stop_in_process(requests: mpsc::Sender<Request>, task: JoinHandle<Result<(), DaemonError>>) {
    let _ = requests.try_send(Request::Shutdown {
        reason: "the test ended",
    });
    let _ = requests.try_send(Request::ShutdownNow);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // Dropped outside its runtime: nothing can drive the stop, and the runtime's end drops the task.
        task.abort();
        return;
    };
    let stopped =
        tokio::task::block_in_place(|| runtime.block_on(tokio::time::timeout(STOP_TIMEOUT, task)));
    match stopped {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) if !std::thread::panicking() => {
            panic!("the daemon did not stop cleanly: {e}")
        }
        Ok(Err(e)) if !std::thread::panicking() => panic!("the daemon's task failed: {e}"),
        Err(_) if !std::thread::panicking() => {
            panic!("the daemon did not stop within {STOP_TIMEOUT:?}")
        }
        _ => {}
    }
}
