//! # herdctld — architecture map
//!
//! herdctld runs a *fleet* of autonomous coding agents (Claude Code processes, or any program) on schedules
//! and on demand, persists every job and its output, and exposes every operation as JSON-RPC 2.0 on one
//! local Unix socket. The [`fleet::FleetManager`] is the product; the daemon and the socket are one way to
//! host it (it can also be embedded in-process).
//!
//! The product contract the code cites as "SPEC §N" is `docs/SPEC.md`.
//!
//! ## Bird's eye view
//!
//! Inputs: a fleet configuration (herdctl's YAML files), RPC calls from clients, the clock, and the job
//! processes' output. Outputs: child processes, job records and output files in the state directory,
//! events, log entries and RPC replies.
//!
//! ## Code map (one concern per module)
//!
//! - [`timespec`] — durations (`5m`) and crontab expressions: parsing with field-named errors, evaluation in
//!   a time zone. Pure.
//! - [`config`] — locate, read, interpolate (`${VAR}`), merge (`defaults`, `overrides`, sub-fleets) and
//!   validate the configuration completely at load; `diff` for reload. Produces [`config::FleetConfig`].
//!   Knows nothing of jobs or processes.
//! - [`job`] — the job model shared by everyone: ids, statuses, exit reasons, one output line, what a
//!   job's usage adds up to. No I/O.
//!   (Its on-disk layout, shared with herdctl, is `state::record`.)
//! - [`state`] — the state directory: single-instance lock, atomic durable writes, `state.yaml`, the job
//!   store (records + JSONL output) with an in-memory index (which also orders every finished job's usage
//!   by agent and end, for cost totals), session pointers. The directory is herdctl's
//!   (`.herdctl/`): files in herdctl's layouts are read in place and written in them. Synchronous file I/O
//!   only.
//! - [`scheduler`] — *when* schedules are due: a timer task behind a handle, an injectable clock. Sends
//!   `Fire`s; never decides what a fire does.
//! - [`runner`] — *how* a job runs: spawns `claude` or a command in its own process group, or runs it in a
//!   container through the Docker Engine API on `DOCKER_HOST`'s socket (`runner::container`, bollard); parses
//!   stream-json output, enforces timeouts, cancels the whole process tree (or stops the container). Both
//!   places share one supervision, output pipeline and outcome rules. Knows nothing of config files, the
//!   store or the fleet.
//! - [`executor`] — *where* a job runs: as the daemon's child (the local executor: the runner, unchanged) or
//!   on a cluster engine (Slurm, through its client tools), behind one interface (start, output, cancel
//!   graceful then forced, outcome, list the runs a state directory owns, re-attach). On a cluster the job
//!   runs `herdctld exec-shim`, which runs the same runner there and writes framed, numbered output lines
//!   and a final outcome; a driver shared by every engine relays them and follows the engine's state.
//!   Knows nothing of the fleet or the store.
//! - [`hooks`] — `after_run`/`on_error` hooks: which run for a job's end, and running them with a timeout.
//! - [`work_sources`] — where scheduled agents get work: GitHub issues fetched, claimed by label, completed
//!   or released over the REST API with retries. Knows nothing of the fleet.
//! - [`fleet`] — the FleetManager: lifecycle, queue and concurrency, job supervision, schedule fires,
//!   reload, cost totals and daily budgets, events, log bus, output streaming. The only module that wires
//!   the ones above together.
//! - [`metrics`] — the Prometheus registry, one per fleet (`FleetManager::metrics`): typed families the fleet
//!   and `rpc` update where things happen (atomic increments; output counted per batch), fleet gauges and
//!   `/proc/self` read at scrape time, `Metrics::encode` (text format 0.0.4). No sockets, no JSON-RPC.
//! - [`rpc`] — the method table (FleetManager → JSON-RPC methods and subscriptions, error mapping), the
//!   params of every method and the OpenRPC document generated from the params and result types
//!   (`rpc::params`, `rpc::openrpc`; protocol version and changelog in `proto-docs/`), the one-socket
//!   transport (NDJSON, WebSocket, HTTP; limits; peer credentials; RPC calls counted; `GET
//!   /metrics` on the HTTP framing and on the TCP listener of `--metrics-listen`, which serves nothing else;
//!   `streamJobOutput` on NDJSON written from the pump's own bytes, `rpc::transport::raw`),
//!   and the one client of the protocol (`rpc::client`: `herdctl`'s, the tests' and the bench's).
//! - [`daemon`] — hosting a fleet on its socket. [`daemon::Daemon`] is the library part: it starts an
//!   initialized FleetManager, serves it on a listener the caller bound (and `GET /metrics` on an optional TCP
//!   listener), sends sd_notify and acts on reload/stop requests; nothing process-wide, so tests run it
//!   in-process. `daemon::run` is the process around it: command line, logging, subreaper, socket file,
//!   signals (forwarded as requests), exit codes; it binds `--metrics-listen` before the socket, so a bad
//!   address fails the start before anything is served.
//!
//! Entry points: `src/bin/herdctld.rs` → [`daemon::run::main`]; `src/bin/herdctl/main.rs` (the command-line
//! client, on `rpc::client`).
//!
//! ## How a trigger flows
//!
//! 1. A client sends `{"method":"trigger","params":{"agentName":"a"}}` on the socket. `rpc::transport`
//!    sniffs the framing, dispatches to the method registered in `rpc::methods`, which parses the params and
//!    calls [`fleet::FleetManager::trigger`].
//! 2. The FleetManager validates the agent and schedule, refuses the run (`BudgetExceeded`) when the
//!    agent's jobs that finished in its current day already cost its `budget.daily_usd` and the call did
//!    not pass `overBudget`, and creates a [`job::Job`] (its id drawn again while a stored, active or
//!    still-being-written job has it) by the one route trigger, fork and schedule fires share
//!    (`fleet::admission`'s `create_job`): its record is staged (written and fsynced,
//!    `state::JobStore::stage`) outside the fleet lock, then, under it, indexed and its rename queued for
//!    `fleet::record_writer`, and `job:created` is emitted. If the agent and the fleet have a free slot it
//!    starts the job now; otherwise it queues it (priority, then FIFO) and emits `job:queued`. The call
//!    returns the job, `running` or `queued`, once the writer renamed the record and fsynced the jobs
//!    directory (`state::DirSync`: one fsync shared by every record written meanwhile).
//! 3. Starting decides the Claude session (the agent's pointer resumed while herdctl would still resume it,
//!    `fleet::sessions`), maps the agent's configuration and the fleet's `.env` to a `runner::RunSpec` (with
//!    a `ContainerSpec` when its `docker.enabled`) and hands it to the agent's executor. The local one calls
//!    `runner::start`, which spawns the child in its own process group with the prompt on stdin
//!    (vfork-style, without copying the daemon, with a parent-death signal), or creates, attaches to and
//!    starts the job's container (labelled with the job id and the state directory); the job becomes
//!    `running` (for a host job pid, pgid and process start time persisted for crash recovery) and
//!    `job:started` and `agent:started` are emitted. A cluster executor submits the job (the spec in
//!    `<state>/executor/`, the engine's id persisted once known); the job holds its slot and stays `queued`
//!    (with the engine's pending reason, told as `job:queued` with position 0) until the engine starts it,
//!    which emits `job:started` before its first output line.
//! 4. The runner reads the child's pipes (or the container's demultiplexed attach stream) a chunk at a time
//!    and hands on each read's lines as one `runner::OutputEvent` (stream-json messages parsed on the way);
//!    on a cluster the shim's runner does, and the executor relays the lines the shim numbered and stamped.
//!    A supervisor task pumps them: each
//!    batch gets its seqs and one timestamp and is serialised once into one buffer
//!    (`job::SerializedLines`), which is appended to `jobs/<id>.jsonl` under the storage cap
//!    (`state::OutputWriter`: the head, then two rotating tail segments, the middle dropped with a notice
//!    when the job ends) and flushed, then shared with every `streamJobOutput` reader through the job's
//!    hub (`fleet::output`), which holds the pump (and so the job's pipe) back while a reader that reads is
//!    a window behind; `job:output` events are built only while a subscriber's filter takes them.
//! 5. When the process tree is gone and its output drained, the runner's `RunOutcome` finalizes the record
//!    (`completed`/`failed`/`cancelled` with exit reason and the result's usage, which the store's index
//!    adds to the agent's totals; a resumed session Claude no longer has is cleared
//!    and the job runs once more, fresh, first), updates schedule state and the agent's session pointer,
//!    emits `agent:stopped` and `job:completed|failed|cancelled`, prunes history (the limits of the command
//!    line, else of the fleet file's `defaults`; pruned jobs leave the index under the lock, and their files
//!    are deleted outside it before the job's waiters are told) and starts queued jobs. The job's output
//!    streams end (their `eof`) once the final record is written, so a client told by one that the job
//!    ended finds it so after a crash too; the end events come before (a `kill -9` between the two leaves
//!    the job `interrupted`).
//!
//! 6. After the record is final, background tasks run the agent's hooks (`hooks`) and report a work item
//!    back to its source (`work_sources`: close on success, release otherwise).
//!
//! A schedule fire enters at step 2 from the scheduler's `Fire` channel instead of an RPC call; over a limit it
//! is skipped (`schedule:skipped`) rather than queued, unless its `overlap` says `queue`, and once its
//! agent's budget is spent for the day it is skipped with reason `budget`. A schedule with a
//! `work_source` first claims the oldest eligible GitHub issue, outside the fleet's lock; no issue means
//! `schedule:skipped {reason: no_work}`, and the issue becomes the job's prompt and `work_item`.
//!
//! ## Invariants
//!
//! - Only `rpc` and `daemon` know about sockets and JSON-RPC (wire error codes included); the FleetManager
//!   works embedded without them. (The container engine's socket is the Docker client's business, inside
//!   `runner::container`.) Every event name is spelled once, where `fleet::events` declares it.
//!   `tests/architecture.rs` checks both on the source.
//! - The wire is camelCase, one shape per concept, and `proto-docs/openrpc.json` is generated from the types
//!   that make it (a unit test keeps the file equal; the tests' client checks every answer against it);
//!   files on disk keep herdctl's snake_case layout (`state::record`).
//! - Only `state` writes under the state directory, and every rewrite is atomic (temp file, rename) and
//!   durable (fsync of the file and the directory) — except a job's "running" record, which need only survive
//!   the daemon's death (`state::Durability::Process`). Output is append-only; a torn last line is tolerated.
//!   The writers from outside: a cluster job's exec-shim (and its engine), through `executor/<id>.out` and
//!   `.err`, files the daemon only reads until it removes them after the job's final record; and a container
//!   agent's Claude, in its `docker-sessions/<agent>/` (created by `runner::container`, mounted as its home).
//!   A container never sees the state directory itself: where its workspace or a volume holds it, an empty
//!   read-only directory (`container-mask/`) is mounted over it.
//! - One daemon per state directory (an `flock` held for the process's life, and none while the herdctl named
//!   in `herdctl.pid` runs).
//! - Nothing herdctl wrote is lost: records, output, `state.yaml` and session pointers of either tool are
//!   read, and rewrites keep every field herdctld does not know; only a file neither tool can read is moved
//!   aside, with an error event. History limits delete records herdctl wrote only when the operator set a
//!   limit explicitly (herdctl never prunes).
//! - Isolation fails closed: a job whose agent asks for a container never runs on the host; if its
//!   container cannot be run the job fails `spawn_failed` with the engine's reason. The engine's socket is
//!   never mounted into a container, and a container agent on a cluster executor is refused (both at load);
//!   a run spec never carries a container to an exec-shim.
//! - Nothing a container job starts outlives it: its container is removed when it ends, and a daemon
//!   starting up removes every container labelled with its state directory that no job of its own runs in
//!   (a dead daemon's): before its first job when its fleet uses containers, in the background otherwise.
//! - The FleetManager's mutable state sits behind one mutex that is never held across `.await`, and no
//!   file is read or written under it. Job records are indexed and queued under it and written, in order,
//!   by `fleet::record_writer`; until a job's last write lands the job table answers for it from memory.
//!   `state.yaml` and session pointers are only marked pending under it and written by
//!   `fleet::state_writer` after it is released (`stop` and `FleetManager::flush` wait for both).
//! - A job's output reaches its file (or the file's tail segments) before any subscriber, so history and
//!   live output join without gap or duplicate; while a capped job runs only its head is readable from
//!   the file, so a reader that fell behind past it, and out of the hub, is told how many lines it missed
//!   (`{gap, missed, nextSeq}`). The final job event follows its
//!   last output event. A job's output costs bounded memory whatever its size and whatever its readers do.
//! - Nothing a job starts outlives it: cancel, timeout and normal exit all sweep the job's process group and
//!   any process that carries its `HERDCTL_JOB_ID` (on a cluster the shim's runner does, on the node).
//! - A daemon's death loses no cluster job: the engine's id is in the job's record while it runs, the run
//!   is named by the job id, and the shim numbers its lines, so a restarted daemon re-attaches to every run
//!   its state directory owns (or finalizes it from the shim's outcome) without losing or repeating a line,
//!   and stops the runs whose job is no longer active.
//! - No shell between a prompt and a process: prompts travel on stdin, arguments are argv entries.
//! - Event and log emission never blocks the fleet: a bounded queue per subscriber, filled only with what
//!   its filter takes; a slow reader loses its oldest items and is told how many (`lagged`).
//! - Configuration is validated completely at load; nothing is validated lazily at fire time.
//! - Cost totals and budget spend are summed from the job records (through the store's index), never kept
//!   as counters of their own: a restart rebuilds them, and they cover exactly the records that exist.

// A `pub` item no other crate can reach is `pub(crate)`, so that the compiler reports it once it is dead.
#![warn(unreachable_pub)]

pub mod config;
pub mod daemon;
pub mod executor;
pub mod fleet;
pub mod hooks;
pub mod job;
pub mod metrics;
pub mod rpc;
pub mod runner;
pub mod scheduler;
pub mod state;
pub mod timespec;
pub mod work_sources;
