//! Running a job in a container, through the Docker Engine API on its Unix socket (`DOCKER_HOST`, default
//! `/var/run/docker.sock`; Docker, or podman's Docker-compatible service).
//!
//! One container per job, created from the spec's image with the job's argv as its first process, the agent's
//! working directory mounted at [`WORKSPACE`], every limit in its `HostConfig`, and labels naming the job and
//! its owner (the state directory) so that a later daemon can remove what a dead one left. The job's output
//! comes from an attach made before the start (stdout and stderr demultiplexed into the same line readers as a
//! host job's pipes), its prompt goes to a second attach's stdin, and it is stopped like a host job: SIGTERM to the
//! container's first process, SIGKILL after the grace period. The container is removed when the job ends.
//!
//! Failures before the job runs (engine unreachable, permission denied on the socket, image missing, a setting
//! the engine refuses) fail the job `spawn_failed` with a [`ContainerError`] code; nothing runs on the host.

use std::collections::{BTreeMap, HashMap};
use std::future::pending;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bollard::container::{AttachContainerResults, LogOutput};
use bollard::errors::Error as EngineError;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding as EnginePortBinding};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, InspectContainerOptions, KillContainerOptions,
    ListContainersOptions, RemoveContainerOptions, WaitContainerOptions,
};
use bollard::{ClientVersion, Docker};
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use serde_json::{Map, Value};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, Instant};

use super::collect::{Exit, Program};
use super::process::JobScan;
use super::run::{failed, invocation, supervise, CancelRequest, Executable, JobIo, Target};
use super::{ExitReason, OutputEvent, OutputStream, RunOutcome, RunSpec};

/// Where the agent's working directory is mounted in its container (herdctl's path).
pub const WORKSPACE: &str = "/workspace";
/// Label with the id of the job a container runs.
pub const JOB_ID_LABEL: &str = "herdctld.job-id";
/// Label with the qualified name of the agent whose job a container runs.
pub const AGENT_LABEL: &str = "herdctld.agent";
/// Label with the owner of a container ([`ContainerSpec::owner`]: the state directory).
pub const OWNER_LABEL: &str = "herdctld.state-dir";
/// The engine's socket when `DOCKER_HOST` is not set.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Variables of the daemon's environment that a Claude job in a container gets too (herdctl passes the same):
/// Claude needs its credentials, and a container does not inherit the daemon's environment.
const CLAUDE_CREDENTIALS: &[&str] = &["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"];
/// How long one engine request may take (creating a container on a busy machine takes seconds).
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// Bytes of a job's output buffered between the attach stream and its line reader, per stream.
const DEMUX_BUFFER: usize = 64 * 1024;
/// Once a container's output has ended, how often its state is asked for until it shows the exit.
const EXIT_POLL: Duration = Duration::from_millis(20);
/// How long that is asked for before only the engine's wait is relied on (a process that closed its output and
/// runs on).
const EXIT_POLL_MAX: Duration = Duration::from_secs(2);

/// How a job runs in a container: everything the engine needs besides the job's argv, environment and
/// working directory (mounted at [`WORKSPACE`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    pub image: String,
    /// `UID` or `UID:GID`; `None` = the daemon's own uid and gid, so that files written to the workspace stay
    /// the user's.
    pub user: Option<String>,
    pub network: ContainerNetwork,
    /// Memory limit in bytes; swap is not added to it.
    pub memory_bytes: i64,
    pub cpu_shares: Option<i64>,
    /// Microseconds; with `cpu_quota` a hard CPU limit.
    pub cpu_period: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub pids_limit: Option<i64>,
    /// Mount the working directory read-only.
    pub workspace_read_only: bool,
    /// Further host paths mounted into the container.
    pub mounts: Vec<BindMount>,
    /// tmpfs mounts: container path and mount options (empty for none).
    pub tmpfs: Vec<(String, String)>,
    pub ports: Vec<PortBinding>,
    /// The container's own environment, under the job's (`HERDCTL_*`, the runtime's, the spec's `env`).
    pub env: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    /// Raw Docker `HostConfig` fields, laid over the ones derived here (`Binds` are added to, not replaced).
    pub host_config: Option<Map<String, Value>>,
    /// Who owns the container, in [`OWNER_LABEL`]: [`remove_owned_containers`] finds it by this.
    pub owner: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerNetwork {
    None,
    Bridge,
    Host,
}

impl ContainerNetwork {
    fn mode(self) -> &'static str {
        match self {
            ContainerNetwork::None => "none",
            ContainerNetwork::Bridge => "bridge",
            ContainerNetwork::Host => "host",
        }
    }
}

/// A host path mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub host: PathBuf,
    pub container: String,
    pub read_only: bool,
    /// A directory of the daemon's own, created (0700) when missing; any other host path must exist.
    pub create: bool,
}

/// A container port published on the host; `host: None` lets the engine choose the host port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortBinding {
    pub host: Option<u16>,
    pub container: u16,
}

/// Why a container could not be run (or found): each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("DOCKER_HOST={host} is not a unix:// socket; herdctld reaches the container engine only through its local Unix socket (e.g. DOCKER_HOST=unix:///var/run/docker.sock)")]
    UnsupportedHost { host: String },
    #[error("cannot reach the container engine at {socket}: {reason}; start Docker (or `podman system service`), or point DOCKER_HOST at the engine's socket (DOCKER_HOST=unix:///path/to/docker.sock)")]
    Unreachable { socket: String, reason: String },
    #[error("permission denied on the container engine's socket {socket}: the user herdctld runs as may not use it; add that user to the socket's group (usually `docker`), or point DOCKER_HOST at a socket it may use (rootless podman: unix://$XDG_RUNTIME_DIR/podman/podman.sock)")]
    PermissionDenied { socket: String },
    #[error("the container image {image} is not on this machine; get it with `docker pull {image}` (or `podman pull {image}`), or set docker.image to an image that is")]
    ImageMissing { image: String },
    #[error("the container engine refused to {action} the container: {message}; check the agent's docker settings (memory, cpu_*, pids_limit, tmpfs, volumes, ports, user, image, host_config)")]
    Rejected {
        action: &'static str,
        message: String,
    },
    #[error("the container engine failed to {action} the container: {message}")]
    Engine {
        action: &'static str,
        message: String,
    },
    #[error("the container's settings cannot be used: {0}")]
    Settings(String),
}

impl ContainerError {
    /// The job error code of this failure.
    pub fn code(&self) -> &'static str {
        match self {
            ContainerError::UnsupportedHost { .. } | ContainerError::Unreachable { .. } => {
                "ENGINE_UNREACHABLE"
            }
            ContainerError::PermissionDenied { .. } => "ENGINE_PERMISSION_DENIED",
            ContainerError::ImageMissing { .. } => "IMAGE_MISSING",
            ContainerError::Rejected { .. } | ContainerError::Settings(_) => "CONTAINER_REJECTED",
            ContainerError::Engine { .. } => "CONTAINER_FAILED",
        }
    }
}

/// What an attach connects to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attach {
    Input,
    Output,
}

/// The engine `DOCKER_HOST` names: its client, and its socket for messages.
#[derive(Clone)]
struct Engine {
    docker: Docker,
    socket: String,
}

impl Engine {
    /// A client of the engine, its API version agreed with it (so that an engine older or newer than this
    /// client is spoken to in a version it knows). Fails when the engine does not answer.
    async fn connect() -> Result<Engine, ContainerError> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|host| !host.is_empty())
            .unwrap_or_else(|| format!("unix://{DEFAULT_SOCKET}"));
        Engine::connect_to(host).await
    }

    async fn connect_to(host: String) -> Result<Engine, ContainerError> {
        let Some(socket) = host.strip_prefix("unix://") else {
            return Err(ContainerError::UnsupportedHost { host });
        };
        let socket = socket.to_owned();
        let known = agreed_version(&host);
        let version = known.as_ref().unwrap_or(bollard::API_DEFAULT_VERSION);
        let docker = Docker::connect_with_unix(&socket, REQUEST_TIMEOUT_SECS, version)
            .map_err(|err| classify(&socket, "reach", err))?;
        if known.is_some() {
            return Ok(Engine { docker, socket });
        }
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|err| classify(&socket, "reach", err))?;
        remember_version(host, docker.client_version());
        Ok(Engine { docker, socket })
    }

    fn error(&self, action: &'static str, err: EngineError) -> ContainerError {
        classify(&self.socket, action, err)
    }

    async fn create(
        &self,
        name: &str,
        body: ContainerCreateBody,
        image: &str,
    ) -> Result<String, ContainerError> {
        let options = CreateContainerOptions {
            name: Some(name.to_owned()),
            ..CreateContainerOptions::default()
        };
        match self.docker.create_container(Some(options), body).await {
            Ok(created) => Ok(created.id),
            Err(EngineError::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(ContainerError::ImageMissing {
                image: image.to_owned(),
            }),
            Err(err) => Err(self.error("create", err)),
        }
    }

    /// An attach to the container's stdin alone (`Input`) or to its stdout and stderr (`Output`).
    async fn attach(&self, id: &str, to: Attach) -> Result<AttachContainerResults, ContainerError> {
        let options = AttachContainerOptions {
            stdin: to == Attach::Input,
            stdout: to == Attach::Output,
            stderr: to == Attach::Output,
            stream: true,
            logs: false,
            detach_keys: None,
        };
        self.docker
            .attach_container(id, Some(options))
            .await
            .map_err(|err| self.error("attach to", err))
    }

    async fn start(&self, id: &str) -> Result<(), ContainerError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(|err| self.error("start", err))
    }

    /// Sends `signal` to the container's first process; a container that has already stopped is no error.
    async fn kill(&self, id: &str, signal: Signal) {
        let options = KillContainerOptions {
            signal: signal.as_str().to_owned(),
        };
        if let Err(err) = self.docker.kill_container(id, Some(options)).await {
            tracing::debug!(container = id, %signal, error = %err, "signal not delivered (the container has stopped?)");
        }
    }

    /// The exit status once the engine says the container's first process has exited; `None` while it does
    /// not (yet).
    async fn exit_status(&self, id: &str) -> Option<i64> {
        match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspected) => {
                let state = inspected.state?;
                (state.running == Some(false)).then_some(state.exit_code?)
            }
            // podman reports a container whose process has exited as "stopped" until its cleanup is done
            // (for a third of a second), a state the Docker API does not have and this client's types cannot
            // read: the exit code is read from the answer as sent.
            Err(EngineError::JsonDataError { contents, .. }) => {
                let answer: Value = serde_json::from_str(&contents).ok()?;
                let state = answer.get("State")?;
                (state.get("Running")? == &Value::Bool(false))
                    .then_some(state.get("ExitCode")?.as_i64()?)
            }
            Err(_) => None,
        }
    }

    /// Waits for the container to stop; its exit status.
    async fn wait(&self, id: &str) -> Option<i64> {
        let options = WaitContainerOptions {
            condition: "not-running".to_owned(),
        };
        match self.docker.wait_container(id, Some(options)).next().await {
            Some(Ok(response)) => Some(response.status_code),
            // The client reports a non-zero status as an error.
            Some(Err(EngineError::DockerContainerWaitError { code, .. })) => Some(code),
            Some(Err(err)) => {
                tracing::warn!(container = id, error = %err, "could not wait for the container");
                None
            }
            None => None,
        }
    }

    /// Every container labelled with `owner`, running or not.
    async fn owned_by(&self, owner: &str) -> Result<Vec<Listed>, ContainerError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("{OWNER_LABEL}={owner}")],
            )])),
            ..ListContainersOptions::default()
        };
        match self.docker.list_containers(Some(options)).await {
            Ok(found) => Ok(found
                .into_iter()
                .filter_map(|summary| {
                    Some(Listed {
                        id: summary.id?,
                        names: summary.names,
                        labels: summary.labels,
                    })
                })
                .collect()),
            // podman lists a container whose process has just exited as "stopped" (see `exit_status`): the
            // list is read as sent.
            Err(EngineError::JsonDataError { contents, .. }) => serde_json::from_str(&contents)
                .map_err(|err| ContainerError::Engine {
                    action: "list",
                    message: err.to_string(),
                }),
            Err(err) => Err(self.error("list", err)),
        }
    }

    /// Removes the container, running or not; one that is already gone is no error.
    async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(EngineError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(err) => Err(self.error("remove", err)),
        }
    }
}

/// The API version agreed with the engine at each `DOCKER_HOST` this process has used: agreeing costs a
/// `/version` request, which podman answers in a third of a second (it asks its runtimes for theirs).
static AGREED_VERSIONS: Mutex<Vec<(String, ClientVersion)>> = Mutex::new(Vec::new());

fn agreed_version(host: &str) -> Option<ClientVersion> {
    let agreed = AGREED_VERSIONS
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    agreed
        .iter()
        .find(|(known, _)| known == host)
        .map(|(_, version)| *version)
}

fn remember_version(host: String, version: ClientVersion) {
    let mut agreed = AGREED_VERSIONS
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    agreed.retain(|(known, _)| *known != host);
    agreed.push((host, version));
}

/// A container as the engine lists it: what finding a dead daemon's containers needs.
#[derive(Debug, serde::Deserialize)]
struct Listed {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Names")]
    names: Option<Vec<String>>,
    #[serde(rename = "Labels")]
    labels: Option<HashMap<String, String>>,
}

/// A [`ContainerError`] for an engine request that failed: why, in the user's terms.
fn classify(socket: &str, action: &'static str, err: EngineError) -> ContainerError {
    let unreachable = |reason: String| ContainerError::Unreachable {
        socket: socket.to_owned(),
        reason,
    };
    match err {
        EngineError::SocketNotFoundError(_) => unreachable("no such socket".to_owned()),
        EngineError::RequestTimeoutError => {
            unreachable(format!("it did not answer within {REQUEST_TIMEOUT_SECS}s"))
        }
        EngineError::DockerResponseServerError {
            status_code,
            message,
        } if (400..500).contains(&status_code) || message_names_a_setting(&message) => {
            ContainerError::Rejected { action, message }
        }
        EngineError::DockerResponseServerError { message, .. } => {
            ContainerError::Engine { action, message }
        }
        other => {
            // The client's own I/O error is transparent (its `source` skips the I/O error itself); a
            // connection's is in the chain of the HTTP client's error.
            let mut source: Option<&(dyn std::error::Error + 'static)> = match &other {
                EngineError::IOError { err } => Some(err),
                _ => Some(&other),
            };
            while let Some(error) = source {
                if let Some(io) = error.downcast_ref::<std::io::Error>() {
                    match io.kind() {
                        std::io::ErrorKind::PermissionDenied => {
                            return ContainerError::PermissionDenied {
                                socket: socket.to_owned(),
                            }
                        }
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
                            return unreachable(io.to_string())
                        }
                        _ => {}
                    }
                }
                source = error.source();
            }
            ContainerError::Engine {
                action,
                message: other.to_string(),
            }
        }
    }
}

/// Whether an engine error (podman answers 500 where Docker answers 400) is about the container's settings
/// rather than the engine itself.
fn message_names_a_setting(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "executable file",
        "no such file or directory",
        "invalid",
        "memory",
        "cpu",
        "pids",
        "tmpfs",
        "mount",
        "permission denied",
        "unable to find user",
        "no users found",
    ]
    .iter()
    .any(|word| message.contains(word))
}

/// The name of a job's container: herdctl's `herdctl-<agent>-` prefix, then the job id (unique, and found
/// again by a later run of the same job).
fn container_name(spec: &RunSpec) -> String {
    let agent: String = spec
        .agent
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("herdctl-{agent}-{}", spec.job_id)
}

/// Runs a job in a container, from creating it to removing it: the task behind a container job's `RunHandle`.
pub(super) async fn run(
    spec: RunSpec,
    cancels: mpsc::Receiver<CancelRequest>,
    output: mpsc::Sender<OutputEvent>,
) -> RunOutcome {
    let started = match start(&spec).await {
        Ok(started) => started,
        Err(err) => {
            tracing::warn!(job_id = %spec.job_id, code = err.code(), "the job's container did not start: {err}");
            return failed(ExitReason::SpawnFailed, err.code(), err.to_string());
        }
    };
    let Started {
        engine,
        id,
        output: attached_output,
        input,
    } = started;
    let (output_ended_tx, output_ended) = oneshot::channel();
    let (stdout_reader, stdout) = tokio::io::simplex(DEMUX_BUFFER);
    let (stderr_reader, stderr) = tokio::io::simplex(DEMUX_BUFFER);
    let demux = tokio::spawn(async move {
        demultiplex(attached_output.output, stdout, stderr).await;
        let _ = output_ended_tx.send(());
    });
    let io = JobIo::new(
        &spec,
        Some(input.input),
        [
            Some((OutputStream::Stdout, stdout_reader)),
            Some((OutputStream::Stderr, stderr_reader)),
        ],
    )
    .with_task(demux);
    let exit = exited(engine.clone(), id.clone(), output_ended);
    let target = Container { engine, id };
    let program = Program::of(&spec.runtime, true);
    supervise(spec, program, target, exit, io, cancels, output).await
}

/// A started container, attached before it started, so that no output is missed: its output and its stdin
/// through two attaches, because podman ends an attach whose stdin it cannot write to (the job exited without
/// reading its prompt) at once, dropping the output not yet copied and writing its error amid it.
struct Started {
    engine: Engine,
    id: String,
    output: AttachContainerResults,
    input: AttachContainerResults,
}

async fn start(spec: &RunSpec) -> Result<Started, ContainerError> {
    let Some(container) = spec.container.as_ref() else {
        return Err(ContainerError::Settings(
            "the job has no container settings".to_owned(),
        ));
    };
    let invocation = invocation(spec).map_err(ContainerError::Settings)?;
    let body = create_body(spec, container, invocation)?;
    create_own_directories(&container.mounts).await?;
    let engine = Engine::connect().await?;
    let id = engine
        .create(&container_name(spec), body, &container.image)
        .await?;
    let output = match engine.attach(&id, Attach::Output).await {
        Ok(attached) => attached,
        Err(err) => return Err(removed_after(&engine, &id, err).await),
    };
    let input = match engine.attach(&id, Attach::Input).await {
        Ok(attached) => attached,
        Err(err) => return Err(removed_after(&engine, &id, err).await),
    };
    if let Err(err) = engine.start(&id).await {
        return Err(removed_after(&engine, &id, err).await);
    }
    Ok(Started {
        engine,
        id,
        output,
        input,
    })
}

/// Creates the host directories of `mounts` that are the daemon's own, in the blocking pool.
async fn create_own_directories(mounts: &[BindMount]) -> Result<(), ContainerError> {
    let dirs: Vec<PathBuf> = mounts
        .iter()
        .filter(|mount| mount.create)
        .map(|mount| mount.host.clone())
        .collect();
    if dirs.is_empty() {
        return Ok(());
    }
    let created = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::DirBuilderExt;
        for dir in &dirs {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
        }
        Ok::<(), String>(())
    })
    .await
    .map_err(|err| ContainerError::Settings(format!("creating mount directories: {err}")))?;
    created.map_err(ContainerError::Settings)
}

/// Removes a container that could not be started; `err` is why.
async fn removed_after(engine: &Engine, id: &str, err: ContainerError) -> ContainerError {
    if let Err(removal) = engine.remove(id).await {
        tracing::warn!(
            container = id,
            "a container that did not start stays: {removal}"
        );
    }
    err
}

/// The engine's description of a job's container.
fn create_body(
    spec: &RunSpec,
    container: &ContainerSpec,
    invocation: super::run::Invocation<'_>,
) -> Result<ContainerCreateBody, ContainerError> {
    let program = match invocation.executable {
        // The host's HERDCTL_CLAUDE_BIN names a host path: inside the image Claude is the agent's `bin` or
        // `claude` on the image's PATH.
        Executable::Claude(claude) => claude
            .bin
            .as_ref()
            .map_or_else(|| "claude".to_owned(), |bin| bin.display().to_string()),
        Executable::Named(program) => program.to_owned(),
    };
    let mut env: Vec<(String, String)> = Vec::new();
    if matches!(invocation.executable, Executable::Claude(_)) {
        env.extend(CLAUDE_CREDENTIALS.iter().filter_map(|name| {
            let value = std::env::var(name).ok()?;
            Some(((*name).to_owned(), value))
        }));
    }
    env.extend(container.env.iter().cloned());
    env.extend(invocation.env);
    let mut labels: HashMap<String, String> = container
        .labels
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    labels.insert(JOB_ID_LABEL.to_owned(), spec.job_id.clone());
    labels.insert(AGENT_LABEL.to_owned(), spec.agent.clone());
    labels.insert(OWNER_LABEL.to_owned(), container.owner.clone());
    let user = container.user.clone().unwrap_or_else(|| {
        format!(
            "{}:{}",
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw()
        )
    });
    let exposed: Vec<String> = container
        .ports
        .iter()
        .map(|port| format!("{}/tcp", port.container))
        .collect();
    Ok(ContainerCreateBody {
        image: Some(container.image.clone()),
        // The entrypoint is the program, so that an image's own entrypoint does not run in front of it.
        entrypoint: Some(vec![program]),
        cmd: Some(invocation.args),
        env: Some(
            without_shadowed(env)
                .into_iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect(),
        ),
        working_dir: Some(WORKSPACE.to_owned()),
        user: Some(user),
        labels: Some(labels),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(true),
        tty: Some(false),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(host_config(&spec.cwd, container)?),
        ..ContainerCreateBody::default()
    })
}

/// Environment entries with only the last of each name (the engine's handling of repeats is its own).
fn without_shadowed(env: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (index, (key, _)) in env.iter().enumerate() {
        last.insert(key, index);
    }
    let keep: Vec<bool> = (0..env.len())
        .map(|index| last.get(env[index].0.as_str()) == Some(&index))
        .collect();
    env.into_iter()
        .zip(keep)
        .filter_map(|(entry, keep)| keep.then_some(entry))
        .collect()
}

/// The container's `HostConfig`: mounts, limits, network, hardening (herdctl's: every capability dropped, no
/// new privileges), then the spec's raw fields laid over it.
fn host_config(workspace: &Path, container: &ContainerSpec) -> Result<HostConfig, ContainerError> {
    let mode = |read_only: bool| if read_only { "ro" } else { "rw" };
    let mut binds = vec![format!(
        "{}:{WORKSPACE}:{}",
        workspace.display(),
        mode(container.workspace_read_only)
    )];
    binds.extend(container.mounts.iter().map(|mount| {
        format!(
            "{}:{}:{}",
            mount.host.display(),
            mount.container,
            mode(mount.read_only)
        )
    }));
    let port_bindings: HashMap<String, Option<Vec<EnginePortBinding>>> = container
        .ports
        .iter()
        .map(|port| {
            let binding = EnginePortBinding {
                host_ip: None,
                host_port: Some(port.host.map(|p| p.to_string()).unwrap_or_default()),
            };
            (format!("{}/tcp", port.container), Some(vec![binding]))
        })
        .collect();
    let derived = HostConfig {
        memory: Some(container.memory_bytes),
        memory_swap: Some(container.memory_bytes),
        cpu_shares: container.cpu_shares,
        cpu_period: container.cpu_period,
        cpu_quota: container.cpu_quota,
        pids_limit: container.pids_limit,
        network_mode: Some(container.network.mode().to_owned()),
        binds: Some(binds),
        tmpfs: (!container.tmpfs.is_empty()).then(|| container.tmpfs.iter().cloned().collect()),
        port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        ..HostConfig::default()
    };
    let Some(raw) = container.host_config.as_ref() else {
        return Ok(derived);
    };
    let mut merged = match serde_json::to_value(&derived) {
        Ok(Value::Object(map)) => map,
        _ => {
            return Err(ContainerError::Settings(
                "HostConfig is not an object".to_owned(),
            ))
        }
    };
    for (key, value) in raw {
        match (key.as_str(), merged.get_mut(key), value) {
            ("Binds", Some(Value::Array(ours)), Value::Array(theirs)) => {
                ours.extend(theirs.iter().cloned())
            }
            _ => {
                merged.insert(key.clone(), value.clone());
            }
        }
    }
    serde_json::from_value(Value::Object(merged))
        .map_err(|err| ContainerError::Settings(format!("docker.host_config: {err}")))
}

/// Copies the attach stream's frames to the job's stdout and stderr readers until the container's output ends.
async fn demultiplex<S>(
    mut frames: S,
    mut stdout: WriteHalf<tokio::io::SimplexStream>,
    mut stderr: WriteHalf<tokio::io::SimplexStream>,
) where
    S: futures_util::Stream<Item = Result<LogOutput, EngineError>> + Unpin,
{
    while let Some(frame) = frames.next().await {
        let written = match frame {
            Ok(LogOutput::StdErr { message }) => stderr.write_all(&message).await,
            // Console is output without a stream header (a terminal); stdin is never echoed with Tty off.
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                stdout.write_all(&message).await
            }
            Ok(LogOutput::StdIn { .. }) => Ok(()),
            Err(err) => {
                tracing::debug!(error = %err, "the container's output stream ended with an error");
                break;
            }
        };
        if written.is_err() {
            break;
        }
    }
    let _ = stdout.shutdown().await;
    let _ = stderr.shutdown().await;
}

/// The exit of a started container. Its wait is asked from the start; once the output has ended, its state is
/// asked for too, because podman answers the wait only after its cleanup, up to a second after the exit.
async fn exited(engine: Engine, id: String, output_ended: oneshot::Receiver<()>) -> Exit {
    let wait = engine.wait(&id);
    let after_output = async {
        let _ = output_ended.await;
        let give_up = Instant::now() + EXIT_POLL_MAX;
        while Instant::now() < give_up {
            if let Some(status) = engine.exit_status(&id).await {
                return Some(status);
            }
            sleep(EXIT_POLL).await;
        }
        pending().await
    };
    let status = tokio::select! {
        status = wait => status,
        status = after_output => status,
    };
    status.map_or_else(Exit::default, Exit::of_container)
}

/// A container job: signals go to the container's first process; when that ends, the container's other
/// processes end with it (the kernel kills a PID namespace's processes when its first one exits).
struct Container {
    engine: Engine,
    id: String,
}

impl Target for Container {
    async fn signal(&mut self, signal: Signal) {
        self.engine.kill(&self.id, signal).await;
    }

    fn may_have_leftovers(&self) -> bool {
        false
    }

    async fn leftovers(&mut self) -> JobScan {
        JobScan::default()
    }

    async fn release(self, _swept: bool) {
        if let Err(err) = self.engine.remove(&self.id).await {
            tracing::warn!(container = %self.id, "the job's container could not be removed: {err}");
        }
    }
}

/// Removes every container labelled with `owner` (running or not) except those of the jobs `keep` names, and
/// returns their names. For a daemon starting up: the containers of its own running jobs are kept, and every
/// other one is a dead daemon's leftover. An engine that cannot be reached is an error.
pub async fn remove_owned_containers(
    owner: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<String>, ContainerError> {
    let engine = Engine::connect().await?;
    let found = engine.owned_by(owner).await?;
    let mut removed = Vec::new();
    for listed in found {
        let job = listed
            .labels
            .as_ref()
            .and_then(|labels| labels.get(JOB_ID_LABEL));
        if job.is_some_and(|job| keep(job)) {
            continue;
        }
        // One that cannot be removed does not keep the others running: they are removed, and it is said.
        if let Err(e) = engine.remove(&listed.id).await {
            tracing::warn!(container = %listed.id, "could not remove a container a stopped daemon left: {e}");
            continue;
        }
        let name = listed
            .names
            .and_then(|names| names.into_iter().next())
            .unwrap_or(listed.id);
        removed.push(name.trim_start_matches('/').to_owned());
    }
    Ok(removed)
}

/// Whether an engine socket is configured at all: `DOCKER_HOST` is set, or the default socket exists.
pub fn engine_configured() -> bool {
    std::env::var_os("DOCKER_HOST").is_some_and(|host| !host.is_empty())
        || Path::new(DEFAULT_SOCKET).exists()
}

#[cfg(test)]
mod tests;
