//! The daemon as a library: an initialized FleetManager served on a Unix socket until it is asked to stop
//! (SPEC §3, §12). `daemon::run::main` is one caller; the test harness runs it in-process.
//!
//! Owns: starting the fleet (unless told not to), serving `rpc::methods` on the listener (and `GET /metrics`
//! on an optional TCP listener), sd_notify (`READY=1`, `RELOADING=1`, `STOPPING=1`, `WATCHDOG=1`) and acting
//! on [`Request`]s. Must not: touch anything process-wide — logging, signal handlers, the umask, the socket
//! file, the subreaper — so that a caller can host several daemons in one process; that is the caller's part.
//!
//! Order: [`Daemon::start`] starts the fleet, then serves. [`Daemon::run`] sends `READY=1` and reloads on
//! request; at a shutdown request it sends `STOPPING=1`, stops the fleet (scheduler, wait for jobs up to the
//! timeout, cancel the rest; a further shutdown request cancels at once), lets every subscriber read what
//! its streams still hold (the `stopped` event among it), then stops serving.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::fleet::{FleetError, FleetManager, FleetState, StopOptions};
use crate::rpc::methods;
use crate::rpc::transport::{self, ServeReport, TransportConfig};

use super::notify::Notifier;

/// After the fleet stopped, how long subscribers get to read what is left of their streams (a client
/// that reads nothing holds its stream until then) before their connections close.
const SUBSCRIPTIONS_END_TIMEOUT: Duration = Duration::from_secs(3);

/// What a running daemon is asked to do: by signals in the binary (`daemon::signals`), by a channel in
/// a library caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Re-read the configuration (SIGHUP).
    Reload,
    /// Stop gracefully (the first SIGTERM/SIGINT); once stopping, cancel running jobs at once. `reason` is
    /// what the fleet's `stopped` event says (the signal's name).
    Shutdown { reason: &'static str },
    /// Stop, cancelling running jobs at once (a further SIGTERM/SIGINT).
    ShutdownNow,
}

/// How [`Daemon::start`] serves, besides the fleet and the socket.
#[derive(Debug)]
pub struct DaemonOptions {
    /// Start the fleet before serving; `false` leaves it initialized for a client's `start` (`--no-start`).
    pub start_fleet: bool,
    /// A group whose members may connect besides our own user (see `socket::admitted_group`).
    pub allowed_gid: Option<u32>,
    /// Serve `GET /metrics`, and nothing else, on this TCP listener (`--metrics-listen`).
    pub metrics_listener: Option<TcpListener>,
    /// Where readiness, reloads and the stop are reported (systemd's `NOTIFY_SOCKET`).
    pub notifier: Notifier,
    /// Send `WATCHDOG=1` this often.
    pub watchdog: Option<Duration>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            start_fleet: true,
            allowed_gid: None,
            metrics_listener: None,
            notifier: Notifier::disabled(),
            watchdog: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The fleet did not start; nothing was served.
    #[error(transparent)]
    Start(FleetError),
    /// Stopping the fleet failed; serving has stopped all the same.
    #[error("stop failed: {0}")]
    Stop(#[source] FleetError),
}

/// A daemon that serves its socket; [`Daemon::run`] it until a shutdown request.
pub struct Daemon {
    fleet: FleetManager,
    notifier: Arc<Notifier>,
    watchdog: Option<Duration>,
    stop_serving: oneshot::Sender<()>,
    server: JoinHandle<ServeReport>,
    metrics_server: Option<JoinHandle<()>>,
}

impl Daemon {
    /// Starts `fleet` (initialized by the caller, so a bad configuration fails before any socket exists;
    /// with `options.start_fleet` false it may also be left for a client to initialize), then serves
    /// `listener`. Connections that arrived before are
    /// served too: they wait in the listen backlog. Call from within a tokio runtime.
    pub async fn start(
        fleet: FleetManager,
        listener: UnixListener,
        options: DaemonOptions,
    ) -> Result<Daemon, DaemonError> {
        if options.start_fleet {
            fleet.start().await.map_err(DaemonError::Start)?;
        }
        let metrics_server = options.metrics_listener.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving metrics over TCP");
            }
            tokio::spawn(transport::metrics_http::serve_metrics(
                listener,
                fleet.metrics().clone(),
            ))
        });
        let (stop_serving, serving_stopped) = oneshot::channel::<()>();
        let config = TransportConfig {
            allowed_gid: options.allowed_gid,
            metrics: Some(fleet.metrics().clone()),
            ..TransportConfig::default()
        };
        let server = tokio::spawn(transport::serve(
            listener,
            methods::fleet_module(fleet.clone()),
            methods::fleet_raw_subscriptions(fleet.clone()),
            config,
            async move {
                let _ = serving_stopped.await;
            },
        ));
        Ok(Daemon {
            fleet,
            notifier: Arc::new(options.notifier),
            watchdog: options.watchdog,
            stop_serving,
            server,
            metrics_server,
        })
    }

    /// Reports `READY=1`, acts on `requests` until a shutdown (or until every sender is gone, which is a
    /// graceful shutdown), stops the fleet and then serving. Returns once nothing is served any more.
    pub async fn run(self, mut requests: mpsc::Receiver<Request>) -> Result<(), DaemonError> {
        let _ = self.notifier.ready();
        let watchdog = self.watchdog.map(|every| {
            let notifier = self.notifier.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                loop {
                    ticks.tick().await;
                    let _ = notifier.watchdog();
                }
            })
        });

        let stopped = serve_until_shutdown(&self.fleet, &self.notifier, &mut requests).await;

        if !self
            .fleet
            .end_subscriptions(SUBSCRIPTIONS_END_TIMEOUT)
            .await
        {
            tracing::warn!(
                "subscribers still reading after the fleet stopped; closing their connections"
            );
        }
        let _ = self.stop_serving.send(());
        if let Ok(report) = self.server.await {
            tracing::info!(?report, "stopped serving");
        }
        if let Some(watchdog) = watchdog {
            watchdog.abort();
        }
        if let Some(metrics_server) = self.metrics_server {
            metrics_server.abort();
        }
        stopped
    }
}

/// Reloads on request until a shutdown request, then stops the fleet.
async fn serve_until_shutdown(
    fleet: &FleetManager,
    notifier: &Notifier,
    requests: &mut mpsc::Receiver<Request>,
) -> Result<(), DaemonError> {
    let (now, reason) = loop {
        match requests.recv().await {
            Some(Request::Reload) => {
                let _ = notifier.reloading();
                match fleet.reload().await {
                    Ok(result) => tracing::info!(changes = ?result.changes, "reloaded on SIGHUP"),
                    Err(e) => tracing::error!("reload on SIGHUP refused: {e}"),
                }
                let _ = notifier.ready();
            }
            Some(Request::Shutdown { reason }) => break (false, reason),
            // Every sender gone: the host asked for the end.
            None => break (false, "requested"),
            Some(Request::ShutdownNow) => break (true, "requested"),
        }
    };
    let _ = notifier.stopping();
    tracing::info!("shutting down; a second SIGTERM/SIGINT cancels running jobs at once");
    // Requests keep coming while the fleet stops: a reload is ignored, any shutdown request cancels now.
    // Once every sender is gone none can come, and the stop simply runs to its end.
    let mut open = true;
    if fleet.state() != FleetState::Running {
        // Jobs can run without the scheduler (triggered after `stop`, or under --no-start): end them
        // with their grace period rather than leave them to be found interrupted at the next start.
        let cancelling = fleet.cancel_running(now.then_some(Duration::ZERO));
        tokio::pin!(cancelling);
        loop {
            tokio::select! {
                () = &mut cancelling => break,
                request = requests.recv(), if open => match request {
                    None => open = false,
                    Some(Request::Reload) => {}
                    Some(Request::Shutdown { .. } | Request::ShutdownNow) => {
                        tracing::warn!("second shutdown signal: cancelling running jobs now");
                        fleet.cancel_running(Some(Duration::ZERO)).await;
                        break;
                    }
                },
            }
        }
        fleet.flush().await;
        return Ok(());
    }
    if now {
        cancel_now(fleet);
    }
    let stop = fleet.stop(StopOptions {
        reason: reason.to_owned(),
        ..StopOptions::default()
    });
    tokio::pin!(stop);
    loop {
        tokio::select! {
            result = &mut stop => return result.map_err(DaemonError::Stop),
            request = requests.recv(), if open => match request {
                None => open = false,
                Some(Request::Reload) => {}
                Some(Request::Shutdown { .. } | Request::ShutdownNow) => {
                    tracing::warn!("second shutdown signal: cancelling running jobs now");
                    cancel_now(fleet);
                }
            },
        }
    }
}

/// Cancels every running job without a grace period, beside the stop that is waiting for them.
fn cancel_now(fleet: &FleetManager) {
    let fleet = fleet.clone();
    tokio::spawn(async move { fleet.cancel_running(Some(Duration::ZERO)).await });
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{UnixDatagram, UnixStream};

    use super::*;
    use crate::fleet::{FleetManagerOptions, OutputRequest, TriggerOptions};
    use crate::job::JobStatus;

    /// Generous for a debug build on a loaded machine, and well below the 30 s a graceful stop waits
    /// for jobs: a test that needs "at once" fails rather than waiting that out.
    const DEADLINE: Duration = Duration::from_secs(20);

    /// A one-agent fleet in `dir`, initialized; the agent runs `command` with the given stop grace.
    async fn fleet_in(dir: &Path, command: &str, stop_grace: &str) -> FleetManager {
        std::fs::write(
            dir.join("herdctl.yaml"),
            "version: 1\nfleet:\n  name: lib\nagents:\n  - path: a.yaml\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("a.yaml"),
            format!("name: a\nruntime: command\ncommand: [sh, -c, '{command}']\nstop_grace: {stop_grace}\n"),
        )
        .unwrap();
        let fleet = FleetManager::new(FleetManagerOptions {
            config_path: Some(dir.join("herdctl.yaml")),
            state_dir: Some(dir.join("state")),
            ..FleetManagerOptions::default()
        });
        fleet.initialize().await.unwrap();
        fleet
    }

    /// Starts a daemon for `fleet` on `dir/d.sock`, notifying `dir/notify.sock`, and runs it on a task.
    async fn serve(
        dir: &Path,
        fleet: &FleetManager,
    ) -> (
        UnixDatagram,
        mpsc::Sender<Request>,
        JoinHandle<Result<(), DaemonError>>,
    ) {
        let notify = UnixDatagram::bind(dir.join("notify.sock")).unwrap();
        let options = DaemonOptions {
            notifier: Notifier::to_socket(dir.join("notify.sock").as_os_str()).unwrap(),
            ..DaemonOptions::default()
        };
        let listener = UnixListener::bind(dir.join("d.sock")).unwrap();
        let daemon = Daemon::start(fleet.clone(), listener, options)
            .await
            .unwrap();
        let (requests, received) = mpsc::channel(4);
        (notify, requests, tokio::spawn(daemon.run(received)))
    }

    async fn notification(notify: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(DEADLINE, notify.recv(&mut buf))
            .await
            .expect("no notification in time")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    const GET_STATE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"getState"}"#;

    /// One request line on a new connection and the one reply line; `None` if nobody answers: the
    /// connection is refused, or closed without a reply.
    async fn exchange(socket: &Path, request: &str) -> Option<String> {
        let stream = UnixStream::connect(socket).await.ok()?;
        let (reader, mut writer) = stream.into_split();
        writer
            .write_all(format!("{request}\n").as_bytes())
            .await
            .ok()?;
        let mut lines = BufReader::new(reader).lines();
        tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("neither a reply nor a close in time")
            .ok()
            .flatten()
    }

    /// Nobody serves `socket`. A connect alone would not tell: a child that another test of this process
    /// forks holds the listening descriptor until it execs, and the connection waits in the backlog
    /// until that copy closes too — but it is never answered.
    async fn assert_not_served(socket: &Path) {
        assert_eq!(exchange(socket, GET_STATE).await, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_reloads_on_request_and_stops_when_the_requests_end() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = fleet_in(dir.path(), "true", "1s").await;
        let (notify, requests, running) = serve(dir.path(), &fleet).await;
        assert_eq!(notification(&notify).await, "READY=1");
        let reply = exchange(&dir.path().join("d.sock"), GET_STATE).await;
        assert_eq!(
            reply.as_deref(),
            Some(r#"{"jsonrpc":"2.0","id":1,"result":"running"}"#)
        );

        requests.send(Request::Reload).await.unwrap();
        assert!(notification(&notify).await.starts_with("RELOADING=1\n"));
        assert_eq!(notification(&notify).await, "READY=1");

        drop(requests);
        assert_eq!(notification(&notify).await, "STOPPING=1");
        tokio::time::timeout(DEADLINE, running)
            .await
            .expect("the daemon did not stop")
            .unwrap()
            .unwrap();
        assert_eq!(fleet.state(), FleetState::Stopped);
        // Serving has stopped; the socket file is the caller's to remove.
        assert_not_served(&dir.path().join("d.sock")).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_subscription_gets_the_stopped_event_before_its_connection_closes() {
        const SUBSCRIPTIONS: usize = 200;
        let dir = tempfile::tempdir().unwrap();
        let fleet = fleet_in(dir.path(), "true", "1s").await;
        let (notify, requests, running) = serve(dir.path(), &fleet).await;
        assert_eq!(notification(&notify).await, "READY=1");
        let stream = UnixStream::connect(dir.path().join("d.sock"))
            .await
            .unwrap();
        let (reader, mut writer) = stream.into_split();
        let subscribe =
            r#"{"jsonrpc":"2.0","id":1,"method":"subscribeEvents","params":{"types":["stopped"]}}"#;
        for _ in 0..SUBSCRIPTIONS {
            writer
                .write_all(format!("{subscribe}\n").as_bytes())
                .await
                .unwrap();
        }
        let mut lines = BufReader::new(reader).lines();
        for _ in 0..SUBSCRIPTIONS {
            let reply = lines.next_line().await.unwrap().unwrap();
            assert!(reply.contains(r#""result""#), "{reply}");
        }

        // Each subscription's pump is woken by the one event; the connection closes only after all ran.
        requests
            .send(Request::Shutdown { reason: "test" })
            .await
            .unwrap();
        let mut stopped = 0;
        while let Some(line) = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("the connection neither closed nor spoke")
            .unwrap()
        {
            stopped += usize::from(line.contains(r#""type":"stopped""#));
        }
        assert_eq!(
            stopped, SUBSCRIPTIONS,
            "subscriptions that got the stopped event"
        );
        tokio::time::timeout(DEADLINE, running)
            .await
            .expect("the daemon did not stop")
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_now_cancels_running_jobs_without_their_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        // A job that ignores SIGTERM and may take an hour to stop: only "now" ends it in time.
        let fleet = fleet_in(dir.path(), "trap \"\" TERM; sleep 600", "1h").await;
        let (notify, requests, running) = serve(dir.path(), &fleet).await;
        assert_eq!(notification(&notify).await, "READY=1");
        let job = fleet.trigger("a", TriggerOptions::default()).await.unwrap();
        assert_eq!(job.status, JobStatus::Running);

        requests.send(Request::ShutdownNow).await.unwrap();
        assert_eq!(notification(&notify).await, "STOPPING=1");
        tokio::time::timeout(DEADLINE, running)
            .await
            .expect("the daemon waited for the job's grace period")
            .unwrap()
            .unwrap();
        let (job, _) = fleet.job(&job.id.to_string(), OutputRequest::Omit).unwrap();
        assert_eq!(job.status, JobStatus::Cancelled, "{job:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fleet_that_cannot_start_is_an_error_and_nothing_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = fleet_in(dir.path(), "true", "1s").await;
        fleet.start().await.unwrap();
        let listener = UnixListener::bind(dir.path().join("d.sock")).unwrap();
        let started = Daemon::start(fleet.clone(), listener, DaemonOptions::default()).await;
        assert!(matches!(started, Err(DaemonError::Start(_))));
        assert_not_served(&dir.path().join("d.sock")).await;
        fleet.stop(StopOptions::default()).await.unwrap();
    }
}
