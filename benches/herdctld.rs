//! herdctld's performance benchmarks: SPEC §13 made measurable.
//!
//! `cargo bench --bench herdctld` runs every scenario against the real daemon binary (the one Cargo built
//! for this bench, `CARGO_BIN_EXE_herdctld`, so with the release-like `bench` profile), started by the tests'
//! harness (`tests/support`, ready at `READY=1`) and driven over its NDJSON socket by the library's client,
//! and prints one table: metric, value, baseline, ratio, target, verdict. Each baseline runs in
//! this process, right before or after the daemon, on the same machine state:
//!
//! | scenario  | measured                                               | baseline                                  |
//! |-----------|--------------------------------------------------------|-------------------------------------------|
//! | dispatch  | trivial jobs/s, triggers pipelined, completions by event | bare `tokio::process::Command` loop, same parallelism; and that loop making the daemon's record writes |
//! | output    | 100 MB of lines from a job to 1 and 10 `streamJobOutput` readers, per line and batched, all of it and with the default cap; daemon peak RSS | the same program piped into this process |
//! | rpc       | `getStatus` round trip p50/p99 on an idle fleet        | `getState` on the same connection         |
//! | history   | `getJobs {limit: 50}` with 100,000 jobs; start-up to socket-ready | the same with 100 jobs / none      |
//! | idle      | RSS with 100 agents; CPU time over 10 s of idling      | RSS with one agent                        |
//! | scheduler | `schedule:triggered` timestamp minus the planned `nextTrigger` | a tokio `sleep_until` overshoot here |
//! | container | trigger → `job:completed` of a `docker.enabled` job running `true`, one at a time | `podman run --rm IMAGE true` |
//! | slurm     | a job of `true` on a Slurm cluster (`executor: {type: slurm}`): trigger → `job:completed`, one at a time | `srun true`; and `sbatch --wrap true` polled with `squeue` until COMPLETED |
//!
//! The slurm scenario needs a cluster that answers `sinfo` (`.ci/slurm-up` starts one); without one it says
//! so and is skipped.
//! Arguments that do not start with `-` select scenarios by name (`cargo bench --bench herdctld -- rpc idle`).
//! `HERDCTL_BENCH_JOBS` changes the number of dispatch jobs (default 2000); `HERDCTL_BENCH_WRAPPER=eatmydata`
//! runs the daemon under a wrapper program (to see, for instance, what fsync costs). The container scenario
//! uses the engine of `DOCKER_HOST` and the image `HERDCTLD_TEST_IMAGE` (`.ci/podman-up` sets both up), and
//! is skipped, saying why, without them. Every daemon gets its
//! own temporary fleet, state directory and socket; its log goes to a file there.

#[path = "../tests/support/mod.rs"]
mod support;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::runtime::Runtime;

use herdctld::job::{ExitReason, Job, JobId, JobStatus, TriggerType};
use herdctld::rpc::client::{Client, Notification};
use herdctld::state::{JobStore, Retention};

/// The daemon's default history limit.
const RETENTION: Retention = Retention {
    max_per_agent: 100,
    max_per_agent_explicit: false,
    max_total: None,
    max_age: None,
};

/// A job printing 100 MB of `x` in lines of `width` (the last one shorter, without a newline).
#[derive(Clone, Copy)]
struct Flood {
    width: usize,
}

impl Flood {
    const TEXT_BYTES: usize = 100_000_000;

    fn command(self) -> String {
        format!(
            "head -c {} /dev/zero | tr '\\0' x | fold -w {}",
            Flood::TEXT_BYTES,
            self.width
        )
    }

    fn lines(self) -> usize {
        Flood::TEXT_BYTES.div_ceil(self.width)
    }

    /// The text and its newlines (`fold` adds none after the last line).
    fn bytes(self) -> f64 {
        (Flood::TEXT_BYTES + self.lines() - 1) as f64
    }
}
const HISTORY_JOBS: usize = 100_000;

fn main() {
    let selected: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants =
        |name: &str| selected.is_empty() || selected.iter().any(|s| name.contains(s.as_str()));
    let started = Instant::now();
    let mut table = Table::default();
    if wants("dispatch") {
        let jobs = std::env::var("HERDCTL_BENCH_JOBS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000);
        for parallelism in [2, 8] {
            dispatch(&mut table, jobs, parallelism);
        }
    }
    if wants("output") {
        output(&mut table);
    }
    if wants("rpc") {
        rpc_latency(&mut table);
    }
    if wants("history") {
        history(&mut table);
    }
    if wants("idle") {
        idle(&mut table);
    }
    if wants("scheduler") {
        scheduler(&mut table);
    }
    if wants("container") {
        container_dispatch(&mut table);
    }
    if wants("slurm") {
        slurm_dispatch(&mut table);
    }
    println!();
    println!("{}", table.render());
    println!(
        "machine: {} cores, {}; bench took {:.0} s",
        thread::available_parallelism().map_or(0, |n| n.get()),
        fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string()))
            .unwrap_or_default(),
        started.elapsed().as_secs_f64()
    );
}

// -------------------------------------------------------------------------------------------------
// Scenarios
// -------------------------------------------------------------------------------------------------

/// SPEC §13 dispatch: trigger → running → completed for `jobs` trivial jobs, `parallelism` at a time.
fn dispatch(table: &mut Table, jobs: usize, parallelism: usize) {
    eprintln!("dispatch: {jobs} jobs of `true`, concurrency {parallelism}");
    let baseline = bare_spawn_rate(jobs, parallelism, None);
    let persisting_baseline = {
        let dir = tempfile::tempdir().expect("temporary directory");
        bare_spawn_rate(jobs, parallelism, Some(dir.path()))
    };

    let fleet = Fleet::new(&[(
        "d".into(),
        format!("name: d\nruntime: command\ncommand: [\"true\"]\nconcurrency: {parallelism}\n"),
    )]);
    let daemon = fleet.start_daemon();
    // The fleet queues at most 1000 manual triggers; stay well inside that.
    const WINDOW: usize = 256;
    let done = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let (token_tx, token_rx) = mpsc::sync_channel::<()>(WINDOW);
    for _ in 0..WINDOW {
        token_tx.send(()).expect("token channel open");
    }

    let mut events = daemon.connect();
    events.subscribe(
        "subscribeEvents",
        json!({"types": ["job:completed", "job:failed", "job:cancelled"]}),
    );
    let mut status = daemon.connect();
    // Pipelined: the writer never waits for a reply, which is what a client's `call` does.
    let mut triggers = daemon.raw();
    let mut responses = triggers.try_clone();

    let cpu_before = daemon.cpu_time();
    let started = Instant::now();
    let writer = thread::spawn(move || {
        for id in 0..jobs {
            if token_rx.recv().is_err() {
                return;
            }
            let request = json!({"jsonrpc": "2.0", "id": id, "method": "trigger", "params": {"agentName": "d"}});
            triggers.write_line(&request.to_string());
        }
    });
    let response_reader = {
        let (done, accepted, token_tx) = (done.clone(), accepted.clone(), token_tx.clone());
        thread::spawn(move || {
            let mut refused = 0usize;
            for _ in 0..jobs {
                let message = responses.read_message();
                if message.get("error").is_some() {
                    // No job was created, so no completion event will come for it.
                    refused += 1;
                    done.fetch_add(1, Ordering::SeqCst);
                    let _ = token_tx.send(());
                } else {
                    accepted.fetch_add(1, Ordering::SeqCst);
                }
            }
            refused
        })
    };
    let mut failed = 0usize;
    let mut lagged = false;
    while done.load(Ordering::SeqCst) < jobs {
        // Refusals are counted by the response reader: look at `done` again now and then.
        let Some(notification) = events.next_notification_within(Duration::from_millis(50)) else {
            continue;
        };
        let result = &notification.result;
        match result["type"].as_str() {
            Some("job:completed") | Some("job:cancelled") => {}
            Some("job:failed") => failed += 1,
            Some("lagged") => {
                // Completions were missed: derive them from what is still active.
                lagged = true;
                let s = status.call("getStatus", json!({}));
                let outstanding = s["jobs"]["active"].as_u64().unwrap_or(0)
                    + s["jobs"]["queued"].as_u64().unwrap_or(0);
                let finished = accepted
                    .load(Ordering::SeqCst)
                    .saturating_sub(outstanding as usize);
                let known = done.load(Ordering::SeqCst);
                for _ in known..finished {
                    done.fetch_add(1, Ordering::SeqCst);
                    let _ = token_tx.try_send(());
                }
                continue;
            }
            _ => continue,
        }
        done.fetch_add(1, Ordering::SeqCst);
        let _ = token_tx.try_send(());
    }
    let elapsed = started.elapsed();
    let cpu_per_job = (daemon.cpu_time() - cpu_before) / jobs as u32;
    writer.join().expect("writer thread");
    let refused = response_reader.join().expect("response thread");
    let rate = jobs as f64 / elapsed.as_secs_f64();
    let mut note = String::new();
    if failed + refused > 0 {
        let _ = write!(note, " ({failed} failed, {refused} refused)");
    }
    if lagged {
        note.push_str(" (event stream lagged)");
    }
    table.row(Row {
        metric: format!(
            "dispatch, concurrency {parallelism}: jobs/s (daemon CPU {:.1} ms/job){note}",
            cpu_per_job.as_secs_f64() * 1000.0
        ),
        value: format!("{rate:.0}"),
        baseline: format!("{baseline:.0}"),
        ratio: Some(rate / baseline),
        target: "ratio ≥ 0.5".into(),
        verdict: Verdict::of(rate / baseline >= 0.5 && failed + refused == 0),
    });
    table.row(Row {
        metric: format!(
            "dispatch, concurrency {parallelism}: jobs/s vs a spawn loop writing the same job records"
        ),
        value: format!("{rate:.0}"),
        baseline: format!("{persisting_baseline:.0}"),
        ratio: Some(rate / persisting_baseline),
        target: "ratio ≥ 0.5".into(),
        verdict: Verdict::of(rate / persisting_baseline >= 0.5 && failed + refused == 0),
    });
    drop(daemon);
}

/// Jobs/s of a bare spawn-and-wait loop of `true`, `parallelism` at a time. With `records`, each job also
/// makes the writes SPEC §6 asks of the daemon, through its job store in that directory: the creation record
/// (fsynced, then the directory), the running record, the output file, the final record (fsynced, then the
/// directory), and pruning to 100 jobs. Against that baseline the ratio shows the daemon's own cost.
fn bare_spawn_rate(jobs: usize, parallelism: usize, records: Option<&Path>) -> f64 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let store = records.map(|dir| {
        let (store, _) = JobStore::open(dir).expect("job store");
        (dir.to_path_buf(), Arc::new(std::sync::Mutex::new(store)))
    });
    runtime.block_on(async {
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..parallelism)
            .map(|_| {
                let next = next.clone();
                let store = store.clone();
                tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::SeqCst) < jobs {
                        let mut job = Job::new(
                            JobId::generate(Utc::now()),
                            "d".into(),
                            None,
                            TriggerType::Manual,
                            Some("bench".into()),
                            5,
                            Utc::now(),
                        );
                        if let Some((dir, store)) = &store {
                            write_record(dir, store, &job).await;
                        }
                        let child = tokio::process::Command::new("true")
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .spawn()
                            .expect("spawn true");
                        if let Some((_, store)) = &store {
                            job.status = JobStatus::Running;
                            job.pid = child.id();
                            let mut store = store.lock().expect("store lock");
                            store.put_unsynced(&job).expect("running record");
                            store.output_writer(&job.id, None).expect("output file");
                        }
                        child.wait_with_output().await.expect("wait true");
                        if let Some((dir, store)) = &store {
                            job.status = JobStatus::Completed;
                            job.pid = None;
                            write_record(dir, store, &job).await;
                            let pruned = {
                                let mut store = store.lock().expect("store lock");
                                let plan = store.plan_prune(&RETENTION, Utc::now(), &|_| false);
                                store.forget(&plan.doomed)
                            };
                            pruned.delete().expect("prune");
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("worker");
        }
        jobs as f64 / started.elapsed().as_secs_f64()
    })
}

/// A durable record write the way the daemon makes one: staged and fsynced in the blocking pool, noted in
/// the index under the store's lock, renamed, journaled and the directory fsynced in the blocking pool,
/// the file vouched for under the lock again.
async fn write_record(dir: &Path, store: &std::sync::Mutex<JobStore>, job: &Job) {
    let (dir, job) = (dir.to_path_buf(), job.clone());
    let staged =
        tokio::task::spawn_blocking(move || JobStore::stage(&dir, &job).expect("stage record"))
            .await
            .expect("staging task");
    let id = staged.job().id.clone();
    let (version, files) = {
        let mut store = store.lock().expect("store lock");
        (store.note(staged.job()), store.files())
    };
    let inode = tokio::task::spawn_blocking(move || {
        let job = staged.job().clone();
        let inode = files.publish(staged).expect("publish record");
        files.journal(&job, inode).expect("journal record");
        files.sync_dir().expect("sync jobs dir");
        inode
    })
    .await
    .expect("publishing task");
    store
        .lock()
        .expect("store lock")
        .written(&id, version, inode);
}

/// The rate of the plain pipe the output rows are measured against: the job's program read by this
/// process.
fn pipe_rate(flood: Flood) -> f64 {
    let started = Instant::now();
    let mut child = Command::new("sh")
        .args(["-c", &flood.command()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        match stdout.read(&mut buffer).expect("read pipe") {
            0 => break,
            n => total += n,
        }
    }
    child.wait().expect("wait sh");
    assert_eq!(
        total as f64,
        flood.bytes(),
        "the flood program's output size"
    );
    flood.bytes() / started.elapsed().as_secs_f64()
}

/// SPEC §13 output: 100 MB of lines from one job to 1 and 10 `streamJobOutput` subscribers. Each row's
/// pipe is measured just before it, so that a machine whose load changes during the section compares
/// like with like.
fn output(table: &mut Table) {
    // The job keeps all of its output, then, last, the default cap of 64 MB, which bounds the file only:
    // every line still reaches the reader, also the 1.6 million of 62 bytes the issue asks for.
    let wide = Flood { width: 100 };
    let runs = [
        (1, false, Some(256), wide),
        (10, false, Some(256), wide),
        (1, true, Some(256), wide),
        (10, true, Some(256), wide),
        (1, false, None, Flood { width: 62 }),
    ];
    for (subscribers, batch, max_output_mb, flood) in runs {
        let mode = match (batch, max_output_mb) {
            (false, Some(_)) => "a notification per line",
            (true, _) => "batched",
            (false, None) => "a notification per line, default output cap",
        };
        eprintln!(
            "output: 100 MB in lines of {} bytes to {subscribers} subscriber(s), {mode}",
            flood.width
        );
        let pipe = pipe_rate(flood);
        let cap = max_output_mb.map_or(String::new(), |mb| format!("max_output_mb: {mb}\n"));
        let agent = format!(
            "name: flood\nruntime: command\n{cap}command: [sh, -c, '{}']\n",
            flood.command().replace('\'', "''")
        );
        let fleet = Fleet::new(&[("flood".into(), agent)]);
        let daemon = fleet.start_daemon();
        let rss_before = daemon.proc_status_kb("VmRSS");
        let mut readers: Vec<RawStream> = (0..subscribers).map(|_| daemon.raw()).collect();
        let mut control = daemon.connect();
        let cpu_before = daemon.cpu_time();
        let started = Instant::now();
        let job = control.call("trigger", json!({"agentName": "flood"}));
        let id = job["id"].as_str().expect("job id").to_string();
        let threads: Vec<_> = readers
            .drain(..)
            .map(|mut conn| {
                let id = id.clone();
                thread::spawn(move || {
                    conn.write_line(
                        &json!({"jsonrpc": "2.0", "id": 1, "method": "streamJobOutput",
                            "params": {"id": id, "batch": batch}})
                        .to_string(),
                    );
                    let mut line = Vec::new();
                    conn.read_line(&mut line);
                    let reply: Value = serde_json::from_slice(&line).expect("a JSON reply");
                    assert!(reply.get("result").is_some(), "streamJobOutput: {reply}");
                    let mut stream = StreamTally::default();
                    conn.each_line(|line| stream.add(line));
                    (stream, started.elapsed())
                })
            })
            .collect();
        let tallies: Vec<(StreamTally, Duration)> = threads
            .into_iter()
            .map(|t| t.join().expect("subscriber thread"))
            .collect();
        let slowest = tallies.iter().map(|(_, d)| *d).max().unwrap_or_default();
        let cpu = daemon.cpu_time().saturating_sub(cpu_before);
        let peak_kb = daemon.proc_status_kb("VmHWM");
        let rate = flood.bytes() / slowest.as_secs_f64();
        let first = &tallies[0].0;
        let consistent = tallies.iter().all(|(t, _)| {
            t.gaps == 0 && t.lines == first.lines && t.payload_bytes == first.payload_bytes
        });
        // Every line the program printed, each counted with its newline (the last has none).
        let complete =
            first.payload_bytes as f64 == flood.bytes() + 1.0 && first.lines == flood.lines();
        let eof_status = first.eof_status.clone();
        // The issue's targets: half a pipe to one reader, a quarter to each of ten; under the cap, every line.
        let target = if subscribers == 1 { 0.5 } else { 0.25 };
        let fast_enough = max_output_mb.is_none() || rate / pipe >= target;
        let delivered_mb = first.payload_bytes as f64 / 1e6 * subscribers as f64;
        table.row(Row {
            metric: format!(
                "output to {subscribers} subscriber(s), {mode}: MB/s of job output \
                 ({:.0} MB delivered each, {} lines, eof {eof_status}{}{}; daemon CPU {:.1} ms per MB delivered)",
                first.payload_bytes as f64 / 1e6,
                first.lines,
                if consistent { "" } else { ", GAPS or mismatch" },
                if complete { "" } else { ", LINES MISSING" },
                cpu.as_secs_f64() * 1000.0 / delivered_mb.max(1.0),
            ),
            value: format!("{:.1}", rate / 1e6),
            baseline: format!("{:.1}", pipe / 1e6),
            ratio: Some(rate / pipe),
            target: if max_output_mb.is_some() {
                format!("ratio ≥ {target}")
            } else {
                format!("all {} lines, in order", flood.lines())
            },
            verdict: Verdict::of(
                fast_enough && consistent && complete && eof_status == "completed",
            ),
        });
        table.row(Row {
            metric: format!(
                "output to {subscribers} subscriber(s), {mode}: daemon peak RSS (VmHWM)"
            ),
            value: format!("{:.1} MB", peak_kb as f64 / 1024.0),
            baseline: format!("{:.1} MB", rss_before as f64 / 1024.0),
            ratio: Some(peak_kb as f64 / rss_before.max(1) as f64),
            target: "< 64 MB".into(),
            verdict: Verdict::of(peak_kb < 64 * 1024),
        });
        drop(daemon);
    }
}

/// What one `streamJobOutput` subscriber received.
#[derive(Default)]
struct StreamTally {
    /// The searches of `scan_lines`, built once: a one-off `memmem::find` builds its searcher per call,
    /// which was most of a reading thread's time.
    finders: Finders,
    lines: usize,
    /// Text bytes of stdout lines, newline included (what the program printed).
    payload_bytes: usize,
    next_seq: Option<u64>,
    gaps: usize,
    eof_status: String,
}

struct Finders {
    result: memchr::memmem::Finder<'static>,
    seq: memchr::memmem::Finder<'static>,
    chunk: memchr::memmem::Finder<'static>,
}

impl Default for Finders {
    fn default() -> Self {
        Finders {
            result: memchr::memmem::Finder::new(br#""result":"#),
            seq: memchr::memmem::Finder::new(br#"{"seq":"#),
            chunk: memchr::memmem::Finder::new(br#","chunk":""#),
        }
    }
}

/// The fields of a `jobOutput` notification the tally needs, borrowed from the line: parsing every message
/// into a `Value` cost the reading threads as much CPU as the daemon spent producing the stream.
#[derive(Deserialize)]
struct OutputNotification<'a> {
    #[serde(borrow)]
    params: OutputParams<'a>,
}

#[derive(Deserialize)]
struct OutputParams<'a> {
    #[serde(borrow)]
    result: OutputResult<'a>,
}

#[derive(Deserialize)]
struct OutputResult<'a> {
    seq: Option<u64>,
    /// What the line says (protocol 2.0's `chunk`).
    #[serde(borrow, rename = "chunk")]
    text: Option<Cow<'a, str>>,
    /// Batched mode: the lines of one notification.
    #[serde(borrow)]
    lines: Option<Vec<OutputLineFields<'a>>>,
    eof: Option<bool>,
    /// The mark that the stored history was delivered: not a line.
    replayed: Option<bool>,
    #[serde(borrow)]
    status: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct OutputLineFields<'a> {
    seq: Option<u64>,
    #[serde(borrow, rename = "chunk")]
    text: Option<Cow<'a, str>>,
}

impl StreamTally {
    /// Counts one notification (a whole JSON line); true at the end of the stream.
    fn add(&mut self, line: &[u8]) -> bool {
        if self.scan_lines(line) {
            return false;
        }
        let message: OutputNotification = serde_json::from_slice(line).unwrap_or_else(|e| {
            panic!(
                "not a jobOutput notification ({e}): {}",
                String::from_utf8_lossy(line)
            )
        });
        let result = message.params.result;
        if result.eof.is_some() {
            self.eof_status = result.status.as_deref().unwrap_or("?").to_string();
            return true;
        }
        if result.replayed.is_some() {
            return false;
        }
        match result.lines {
            Some(lines) => lines
                .iter()
                .for_each(|line| self.count(line.seq, line.text.as_deref())),
            None => self.count(result.seq, result.text.as_deref()),
        }
        false
    }

    /// Counts the lines of a notification of lines whose texts have no escapes (every line of this
    /// bench's job) by finding each `{"seq":N,…,"chunk":"…"` in place; false when the notification is
    /// anything else, for the parse above. A parse of every notification took the ten reading threads more
    /// CPU than the daemon spent making them, so on two cores the readers were measured, not the daemon.
    fn scan_lines(&mut self, line: &[u8]) -> bool {
        const SEQ: &[u8] = br#"{"seq":"#;
        const CHUNK: &[u8] = br#","chunk":""#;
        if memchr::memchr(b'\\', line).is_some() {
            return false;
        }
        let Some(result) = self.finders.result.find(line) else {
            return false;
        };
        let mut rest = &line[result + 9..];
        if !(rest.starts_with(SEQ) || rest.starts_with(br#"{"lines":[{"seq":"#)) {
            return false;
        }
        let mut found = false;
        while let Some(at) = self.finders.seq.find(rest) {
            rest = &rest[at + SEQ.len()..];
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let seq = std::str::from_utf8(&rest[..digits])
                .ok()
                .and_then(|d| d.parse().ok());
            let Some(chunk) = self.finders.chunk.find(rest) else {
                return false;
            };
            rest = &rest[chunk + CHUNK.len()..];
            let Some(end) = memchr::memchr(b'"', rest) else {
                return false;
            };
            self.count_len(seq, Some(end));
            rest = &rest[end..];
            found = true;
        }
        found
    }

    fn count(&mut self, seq: Option<u64>, text: Option<&str>) {
        self.count_len(seq, text.map(str::len));
    }

    /// Counts a line of `len` text bytes (none: not a text line).
    fn count_len(&mut self, seq: Option<u64>, len: Option<usize>) {
        let seq = seq.unwrap_or(0);
        if self.next_seq.is_some_and(|expected| expected != seq) {
            self.gaps += 1;
        }
        self.next_seq = Some(seq + 1);
        self.lines += 1;
        if let Some(len) = len {
            self.payload_bytes += len + 1;
        }
    }
}

/// SPEC §13 RPC: `getStatus` round trips on an idle fleet, against `getState` on the same connection.
fn rpc_latency(table: &mut Table) {
    eprintln!("rpc: getStatus vs getState round trips on an idle fleet of 10 agents");
    let agents: Vec<(String, String)> = (0..10)
        .map(|n| (format!("a{n}"), hourly_agent(&format!("a{n}"))))
        .collect();
    let fleet = Fleet::new(&agents);
    let daemon = fleet.start_daemon();
    let mut conn = daemon.connect();
    wait_until_idle(&mut conn, 10);
    let (mut status, mut state) = (Vec::new(), Vec::new());
    for round in 0..5200 {
        let status_time = timed(|| conn.call("getStatus", json!({})));
        let state_time = timed(|| conn.call("getState", json!({})));
        // The first 200 rounds warm caches and allocators.
        if round >= 200 {
            status.push(status_time);
            state.push(state_time);
        }
    }
    latency_rows(
        table,
        "getStatus, idle fleet",
        &status,
        "getState",
        &state,
        1.0,
    );
}

/// SPEC §13 history: `getJobs` and start-up with 100,000 jobs, against a history of 100 jobs / none.
fn history(table: &mut Table) {
    eprintln!("history: building 100 and {HISTORY_JOBS} job histories");
    let mut fleet = Fleet::new(&[(
        "agent-0".into(),
        "name: agent-0\nruntime: command\ncommand: [\"true\"]\n".into(),
    )]);
    // The histories are kept whole: the default retention (100 per agent) would delete nine in ten of
    // them at the first start, and the rows would measure 10,000 jobs.
    fleet.args = vec!["--max-jobs-per-agent".into(), "1000000".into()];
    let small = tempfile::tempdir().expect("temp dir");
    let big = tempfile::tempdir().expect("temp dir");
    let empty = tempfile::tempdir().expect("temp dir");
    build_history(small.path(), 100, 1);
    let built = Instant::now();
    build_history(big.path(), HISTORY_JOBS, 100);
    eprintln!(
        "history: {HISTORY_JOBS} jobs laid out in {:.1} s",
        built.elapsed().as_secs_f64()
    );

    let page = |state: &Path, params: Value| {
        let daemon = fleet.start_daemon_with_state(state);
        let mut conn = daemon.connect();
        let first = conn.call("getJobs", params.clone());
        let samples: Vec<Duration> = (0..1100)
            .map(|_| timed(|| conn.call("getJobs", params.clone())))
            .skip(100)
            .collect();
        (
            first["total"].as_u64().unwrap_or(0),
            first["jobs"].as_array().map_or(0, Vec::len),
            samples,
        )
    };
    for (label, params) in [
        ("getJobs {limit: 50}", json!({"limit": 50})),
        (
            "getJobs {agentName, limit: 50}",
            json!({"agentName": "agent-0", "limit": 50}),
        ),
    ] {
        eprintln!("history: {label}");
        let (small_total, _, small_samples) = page(small.path(), params.clone());
        let (big_total, big_page, big_samples) = page(big.path(), params);
        // A history the daemon cannot read would be measured as an empty one.
        assert!(
            big_total > 0 && big_page == 50 && small_total > 0,
            "{label}: the laid-out history was not read ({big_total} and {small_total} jobs found)"
        );
        latency_rows(
            table,
            &format!("{label}, {HISTORY_JOBS} jobs ({big_total} match, {big_page} returned)"),
            &big_samples,
            &format!("100 jobs, {small_total} match"),
            &small_samples,
            10.0,
        );
    }

    // Ready: `READY=1`, sent once the socket is served.
    eprintln!("history: start-up to socket-ready");
    let startup = |state: &Path| {
        let mut times: Vec<Duration> = (0..3)
            .map(|_| {
                let started = Instant::now();
                let daemon = fleet.start_daemon_with_state(state);
                let ready = started.elapsed();
                drop(daemon);
                ready
            })
            .collect();
        times.sort();
        times[1]
    };
    let baseline = startup(empty.path());
    let with_history = startup(big.path());
    table.row(Row {
        metric: format!("start-up to socket-ready, {HISTORY_JOBS} jobs (median of 3)"),
        value: ms(with_history),
        baseline: format!("{} (empty)", ms(baseline)),
        ratio: Some(with_history.as_secs_f64() / baseline.as_secs_f64()),
        target: "< 1000 ms".into(),
        verdict: Verdict::of(with_history < Duration::from_secs(1)),
    });
}

/// Lays out `count` finished jobs of `agents` agents (`agent-0`, …) in `state` as the daemon leaves them: a record and an output file per
/// job and the `jobs/index.tsv` journal (format in `src/state/journal.rs`). The newest 1000 records are
/// real files; older ones are hard links to two templates (so 100,000 jobs take seconds to lay out, and
/// their records name the template's id) — start-up trusts the journal and never reads them, and
/// queries read only the records of the page they return.
fn build_history(state: &Path, count: usize, agents: usize) {
    let jobs_dir = state.join("jobs");
    fs::create_dir_all(&jobs_dir).expect("create jobs dir");
    let epoch = Utc
        .with_ymd_and_hms(2025, 6, 1, 0, 0, 0)
        .single()
        .expect("valid date");
    let created = |n: usize| epoch + chrono::Duration::milliseconds(100 * n as i64);
    let id =
        |n: usize| JobId::parse(&format!("job-2025-06-01-{}", base36(n))).expect("valid job id");
    let record = |n: usize| {
        let mut job = Job::new(
            id(n),
            format!("agent-{}", n % agents),
            None,
            TriggerType::Manual,
            Some("Execute your configured task".into()),
            5,
            created(n),
        );
        job.status = JobStatus::Completed;
        job.exit_reason = Some(ExitReason::Success);
        job.started_at = Some(created(n) + chrono::Duration::milliseconds(2));
        job.finished_at = Some(created(n) + chrono::Duration::milliseconds(40));
        job.duration_ms = Some(38);
        job.exit_code = Some(0);
        job.summary = Some("done".into());
        // In the layout on disk, as the store writes it (a job's `Serialize` is its wire shape, which the
        // store does not read: protocol 2 made every record of this bench unreadable, and it measured an
        // empty history).
        let scratch = tempfile::tempdir().expect("temp dir");
        let (mut store, _) = JobStore::open(scratch.path()).expect("job store");
        store.put_unsynced(&job).expect("write record");
        fs::read_to_string(store.record_path(&job.id)).expect("read record")
    };
    // ext4 allows 65,000 links per inode.
    const LINKS_PER_TEMPLATE: usize = 50_000;
    const REAL_RECORDS: usize = 1000;
    let mut templates: Vec<(PathBuf, PathBuf, u64)> = Vec::new();
    let mut journal = String::from("herdctld job index v3\n");
    for n in 0..count {
        let record_path = jobs_dir.join(format!("{}.yaml", id(n)));
        let output_path = jobs_dir.join(format!("{}.jsonl", id(n)));
        let inode = if n + REAL_RECORDS >= count {
            fs::write(&record_path, record(n)).expect("write record");
            fs::write(&output_path, b"").expect("write output");
            fs::metadata(&record_path).expect("stat record").ino()
        } else {
            let template = n / LINKS_PER_TEMPLATE;
            if templates.len() == template {
                let yaml = state.join(format!("bench-template-{template}.yaml"));
                let jsonl = state.join(format!("bench-template-{template}.jsonl"));
                fs::write(&yaml, record(n)).expect("write template");
                fs::write(&jsonl, b"").expect("write template output");
                let inode = fs::metadata(&yaml).expect("stat template").ino();
                templates.push((yaml, jsonl, inode));
            }
            let (yaml, jsonl, inode) = &templates[template];
            fs::hard_link(yaml, &record_path).expect("link record");
            fs::hard_link(jsonl, &output_path).expect("link output");
            *inode
        };
        let nanos = created(n).timestamp_nanos_opt().expect("in range");
        // `state::journal`'s v3 line: id, status, created, finished (ns), origin, inode, usage, agent.
        let finished = nanos + 40_000_000;
        let _ = writeln!(
            journal,
            "{}\tcompleted\t{nanos}\t{finished}\td\t{inode}\t-\tagent-{}",
            id(n),
            n % agents
        );
    }
    fs::write(jobs_dir.join("index.tsv"), journal).expect("write journal");
}

fn base36(mut n: usize) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = digits[n % 36];
        n /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// SPEC §13 footprint: RSS with 100 agents once their first runs are over, and CPU over 10 s of idling.
fn idle(table: &mut Table) {
    let measure = |agents: usize| {
        eprintln!("idle: {agents} agent(s) with an hourly schedule");
        let files: Vec<(String, String)> = (0..agents)
            .map(|n| (format!("a{n}"), hourly_agent(&format!("a{n}"))))
            .collect();
        let fleet = Fleet::new(&files);
        let daemon = fleet.start_daemon();
        {
            let mut conn = daemon.connect();
            wait_until_idle(&mut conn, agents);
        }
        thread::sleep(Duration::from_secs(1));
        let rss = daemon.proc_status_kb("VmRSS");
        let cpu_before = daemon.cpu_time();
        thread::sleep(Duration::from_secs(10));
        let cpu = daemon.cpu_time() - cpu_before;
        (rss, cpu)
    };
    let (one_rss, one_cpu) = measure(1);
    let (rss, cpu) = measure(100);
    table.row(Row {
        metric: "idle RSS, 100 agents (after their first runs)".into(),
        value: format!("{:.1} MB", rss as f64 / 1024.0),
        baseline: format!("{:.1} MB (1 agent)", one_rss as f64 / 1024.0),
        ratio: Some(rss as f64 / one_rss.max(1) as f64),
        target: "< 20 MB".into(),
        verdict: Verdict::of(rss < 20 * 1024),
    });
    table.row(Row {
        metric: "idle CPU time over 10 s, 100 agents".into(),
        value: ms(cpu),
        baseline: format!("{} (1 agent)", ms(one_cpu)),
        ratio: None,
        target: "~0 (≤ 20 ms)".into(),
        verdict: Verdict::of(cpu <= Duration::from_millis(20)),
    });
}

/// SPEC §13 scheduler: how late a 1 s interval schedule fires against its planned instant.
fn scheduler(table: &mut Table) {
    const FIRES: usize = 25;
    eprintln!("scheduler: {FIRES} fires of a 1 s interval schedule");
    let baseline = {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let samples: Vec<Duration> = runtime.block_on(async {
            let mut samples = Vec::new();
            for _ in 0..FIRES {
                let due = tokio::time::Instant::now() + Duration::from_millis(200);
                tokio::time::sleep_until(due).await;
                samples.push(tokio::time::Instant::now() - due);
            }
            samples
        });
        samples
    };
    let agent = "name: tick\nruntime: command\ncommand: [\"true\"]\nschedules:\n  every-second:\n    type: interval\n    interval: 1s\n";
    let fleet = Fleet::new(&[("tick".into(), agent.into())]);
    let daemon = fleet.start_daemon();
    let mut events = daemon.connect();
    events.subscribe("subscribeEvents", json!({"types": ["schedule:triggered"]}));
    let mut control = daemon.connect();
    let mut planned: Option<DateTime<Utc>> = None;
    let mut samples = Vec::new();
    while samples.len() < FIRES {
        let notification = events.next_notification();
        let fired: DateTime<Utc> = match notification.result["timestamp"].as_str() {
            Some(ts) => ts.parse().expect("event timestamp"),
            None => continue,
        };
        if let Some(planned) = planned {
            let late = fired - planned;
            samples.push(late.to_std().unwrap_or_default());
        }
        // The plan for the next fire, once the scheduler has made it.
        planned = loop {
            let schedule = control.call(
                "getSchedule",
                json!({"agentName": "tick", "scheduleName": "every-second"}),
            );
            // Protocol 2: `{agentName, scheduleName, at}` (the bench read a bare string and waited forever).
            let next: Option<DateTime<Utc>> = schedule["nextTrigger"]["at"]
                .as_str()
                .and_then(|t| t.parse().ok());
            match next {
                Some(next) if next > fired => break Some(next),
                _ => thread::sleep(Duration::from_millis(2)),
            }
        };
    }
    latency_rows(
        table,
        "interval schedule fire delay",
        &samples,
        "tokio sleep_until",
        &baseline,
        10.0,
    );
}

/// Container job dispatch: trigger → `job:completed` of a trivial job in a container, one at a time, against
/// the engine's own `podman run --rm IMAGE true` in the same run.
fn container_dispatch(table: &mut Table) {
    const RUNS: usize = 10;
    let image = std::env::var("HERDCTLD_TEST_IMAGE")
        .unwrap_or_else(|_| "localhost/herdctld-test-busybox:latest".to_owned());
    let skip = |why: &str| eprintln!("container: skipped: {why}");
    let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) else {
        return skip(
            "DOCKER_HOST is not set (.ci/podman-up starts an engine and says what to export)",
        );
    };
    let answers = current_thread_runtime().block_on(async {
        let docker = bollard::Docker::connect_with_unix(&host, 30, bollard::API_DEFAULT_VERSION)
            .map_err(|e| e.to_string())?;
        docker.ping().await.map_err(|e| e.to_string())
    });
    if let Err(why) = answers {
        return skip(&format!("no engine answers at {host}: {why}"));
    }
    eprintln!(
        "container: {RUNS} jobs of `true` in {image}, one at a time, and {RUNS} `podman run --rm`"
    );
    let podman_run = || {
        let status = Command::new("podman")
            .args(["run", "--rm", "--network", "none", &image, "true"])
            .stdout(Stdio::null())
            .status();
        matches!(status, Ok(status) if status.success())
    };
    let mut baseline = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        if !podman_run() {
            return skip(
                "`podman run --rm IMAGE true` failed (is podman installed, the image imported?)",
            );
        }
        baseline.push(started.elapsed());
    }
    let agent = format!(
        "name: boxed\nruntime: command\ncommand: [\"true\"]\ndocker: {{enabled: true, image: '{image}', network: none}}\n"
    );
    let fleet = Fleet::new(&[("boxed".into(), agent)]);
    let daemon = fleet.start_daemon();
    let mut events = daemon.connect();
    events.subscribe(
        "subscribeEvents",
        json!({"types": ["job:completed", "job:failed"]}),
    );
    let mut control = daemon.connect();
    let mut samples = Vec::new();
    let mut failed = 0;
    for _ in 0..RUNS {
        let started = Instant::now();
        control.call("trigger", json!({"agentName": "boxed"}));
        loop {
            let notification = events.next_notification();
            match notification.result["type"].as_str() {
                Some("job:completed") => break,
                Some("job:failed") => {
                    failed += 1;
                    eprintln!("container: a job failed: {}", notification.result["error"]);
                    break;
                }
                _ => {}
            }
        }
        samples.push(started.elapsed());
    }
    let median = |samples: &[Duration]| percentile(samples, 0.5);
    let (value, base) = (median(&samples), median(&baseline));
    let ratio = value.as_secs_f64() / base.as_secs_f64();
    let note = if failed > 0 {
        format!(" ({failed} failed)")
    } else {
        String::new()
    };
    table.row(Row {
        metric: format!(
            "container job dispatch: trigger → completed of `true`, median of {RUNS}{note}"
        ),
        value: ms(value),
        baseline: format!("{} (podman run --rm)", ms(base)),
        ratio: Some(ratio),
        target: "ratio ≤ 1.5".into(),
        verdict: Verdict::of(ratio <= 1.5 && failed == 0),
    });
}

/// Issue 18: a trivial job on a Slurm cluster, trigger to `job:completed`, against Slurm's own ways of running
/// `true` in the same run: `srun` (an interactive step, no batch scheduling) and a batch job polled until it
/// completes (what any client of the batch queue waits for).
fn slurm_dispatch(table: &mut Table) {
    const RUNS: usize = 10;
    let cluster = Command::new("sinfo")
        .args(["--noheader", "--format=%T"])
        .output()
        .is_ok_and(|out| out.status.success() && !out.stdout.is_empty());
    if !cluster {
        eprintln!("slurm: SKIPPED: no Slurm cluster answers `sinfo` (start one with .ci/slurm-up)");
        table.row(Row {
            metric: "slurm dispatch of `true`: skipped, no cluster answers `sinfo`".into(),
            value: String::new(),
            baseline: String::new(),
            ratio: None,
            target: String::new(),
            verdict: Verdict::Info,
        });
        return;
    }
    eprintln!(
        "slurm: {RUNS} jobs of `true`, one at a time, and as many `srun true` and batch jobs"
    );
    let srun: Vec<Duration> = (0..RUNS)
        .map(|_| {
            timed(|| {
                let status = Command::new("srun")
                    .args(["--quiet", "--job-name=herdctld-bench", "true"])
                    .stdout(Stdio::null())
                    .status()
                    .expect("run srun");
                assert!(status.success(), "srun true failed: {status}");
            })
        })
        .collect();
    let batch: Vec<Duration> = (0..RUNS).map(|_| timed(sbatch_until_completed)).collect();

    let fleet = Fleet::new(&[(
        "s".into(),
        "name: s\nruntime: command\ncommand: [\"true\"]\nexecutor: {type: slurm}\n".into(),
    )]);
    let daemon = fleet.start_daemon();
    let mut events = daemon.connect();
    events.subscribe(
        "subscribeEvents",
        json!({"types": ["job:completed", "job:failed", "job:cancelled"]}),
    );
    let mut control = daemon.connect();
    let mut samples = Vec::new();
    let mut failed = 0;
    for _ in 0..RUNS {
        let started = Instant::now();
        control.call("trigger", json!({"agentName": "s"}));
        let ended = loop {
            let notification = events.next_notification();
            match notification.result["type"].as_str() {
                Some("job:completed") => break true,
                Some("job:failed" | "job:cancelled") => break false,
                _ => continue,
            }
        };
        samples.push(started.elapsed());
        failed += usize::from(!ended);
    }
    let value = percentile(&samples, 0.5);
    let note = if failed > 0 {
        format!(" ({failed} failed)")
    } else {
        String::new()
    };
    for (name, baseline, target, limit) in [
        ("`srun true`", &srun, "", None),
        (
            "a batch job of `true` polled until COMPLETED",
            &batch,
            "ratio ≤ 1.5",
            Some(1.5),
        ),
    ] {
        let base = percentile(baseline, 0.5);
        let ratio = value.as_secs_f64() / base.as_secs_f64().max(1e-9);
        table.row(Row {
            metric: format!("slurm dispatch of `true`, trigger → completed: p50 (n={RUNS}){note}"),
            value: ms(value),
            baseline: format!("{} ({name})", ms(base)),
            ratio: Some(ratio),
            target: target.into(),
            verdict: match limit {
                Some(limit) => Verdict::of(ratio <= limit && failed == 0),
                None => Verdict::Info,
            },
        });
    }
}

/// Submits `true` as a batch job and polls `squeue` every 50 ms until Slurm reports it COMPLETED.
fn sbatch_until_completed() {
    let out = Command::new("sbatch")
        .args([
            "--parsable",
            "--job-name=herdctld-bench",
            "--output=/dev/null",
            "--wrap",
            "true",
        ])
        .output()
        .expect("run sbatch");
    assert!(out.status.success(), "sbatch failed: {out:?}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = Command::new("squeue")
            .args(["--noheader", "--states=all", "--format=%T", "--jobs", &id])
            .output()
            .expect("run squeue");
        if String::from_utf8_lossy(&state.stdout).trim() == "COMPLETED" {
            return;
        }
        assert!(Instant::now() < deadline, "batch job {id} did not complete");
        thread::sleep(Duration::from_millis(50));
    }
}

// -------------------------------------------------------------------------------------------------
// The daemon and its socket
// -------------------------------------------------------------------------------------------------

/// The agents of a fleet; each daemon gets a new directory with `herdctl.yaml` listing one file per agent.
struct Fleet {
    agents: Vec<(String, String)>,
    /// More of the daemon's command line.
    args: Vec<String>,
}

impl Fleet {
    fn new(agents: &[(String, String)]) -> Fleet {
        Fleet {
            agents: agents.to_vec(),
            args: Vec::new(),
        }
    }

    fn start_daemon(&self) -> Daemon {
        self.start(None)
    }

    fn start_daemon_with_state(&self, state: &Path) -> Daemon {
        self.start(Some(state))
    }

    /// Starts herdctld through the harness; returns once it is ready (socket served, fleet started).
    fn start(&self, state: Option<&Path>) -> Daemon {
        let dir = support::TestDir::new();
        let agents: Vec<(&str, &str)> = self
            .agents
            .iter()
            .map(|(name, yaml)| (name.as_str(), yaml.as_str()))
            .collect();
        support::write_agents(dir.path(), "bench", &agents);
        let options = support::DaemonOptions {
            keep_existing_fleet: true,
            state: state.map(Path::to_owned),
            // A diagnostic wrapper (e.g. `eatmydata`, to see what fsync costs) runs the daemon when set.
            wrapper: std::env::var_os("HERDCTL_BENCH_WRAPPER").filter(|w| !w.is_empty()),
            // A first start on a history it cannot vouch for rebuilds its journal from all 100,000 records:
            // minutes on a loaded machine. The starts the bench measures come after.
            start_timeout: Some(Duration::from_secs(600)),
            args: self.args.clone(),
            ..support::DaemonOptions::default()
        };
        let runtime = current_thread_runtime();
        let daemon = runtime.block_on(support::Daemon::start_in(dir, options));
        Daemon {
            daemon,
            _runtime: runtime,
        }
    }
}

/// A runtime for one thread's async work: a daemon's start, or one connection's calls, which it drives
/// itself on the calling thread (nothing else runs on it).
fn current_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

struct Daemon {
    /// First: it stops the daemon (SIGTERM twice, SIGKILL after a while) when dropped, before its runtime.
    daemon: support::Daemon,
    /// Held, not used: the daemon's child process and notify socket are registered with it.
    _runtime: Runtime,
}

impl Daemon {
    fn connect(&self) -> Conn {
        Conn::open(&self.daemon.socket)
    }

    fn raw(&self) -> RawStream {
        RawStream::open(&self.daemon.socket)
    }

    /// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
    fn proc_status_kb(&self, field: &str) -> u64 {
        support::proc_status_kib(self.daemon.pid, field)
    }

    /// User + system CPU time consumed so far.
    fn cpu_time(&self) -> Duration {
        support::cpu_time(self.daemon.pid)
    }
}

/// One connection through the library's client (the one herdctl uses), from a plain thread: it has a
/// runtime of its own, so a call costs a round trip on the socket and no hop between threads.
struct Conn {
    /// First: its socket belongs to the runtime's reactor and goes before it.
    client: Client,
    runtime: Runtime,
}

impl Conn {
    fn open(socket: &Path) -> Conn {
        let runtime = current_thread_runtime();
        let client = runtime
            .block_on(Client::connect(&[socket.to_owned()]))
            .unwrap_or_else(|e| panic!("{e}"));
        Conn { client, runtime }
    }

    /// Calls `method` and returns its result; notifications arriving meanwhile are held.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.runtime
            .block_on(self.client.call(method, params))
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    fn subscribe(&mut self, method: &str, params: Value) {
        self.call(method, params);
    }

    fn next_notification(&mut self) -> Notification {
        self.runtime
            .block_on(self.client.next_notification())
            .unwrap_or_else(|e| panic!("{e}"))
            .expect("herdctld closed the connection")
    }

    /// The next notification, or `None` after `timeout`.
    fn next_notification_within(&mut self, timeout: Duration) -> Option<Notification> {
        // The timer belongs to the runtime: made inside it.
        let next = async { tokio::time::timeout(timeout, self.client.next_notification()).await };
        match self.runtime.block_on(next) {
            Err(_) => None,
            Ok(next) => Some(
                next.unwrap_or_else(|e| panic!("{e}"))
                    .expect("herdctld closed the connection"),
            ),
        }
    }
}

/// A connection written and read as lines, for load the client is not made for: requests pipelined
/// without waiting for their replies, and 100 MB of notifications tallied without making a `Value` of
/// each. It keeps no ids and matches nothing.
struct RawStream {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl RawStream {
    fn open(socket: &Path) -> RawStream {
        let stream = UnixStream::connect(socket).expect("connect to herdctld");
        RawStream {
            reader: BufReader::with_capacity(256 * 1024, stream.try_clone().expect("clone stream")),
            writer: stream,
        }
    }

    /// Another handle on the same connection (to read in one thread while another writes).
    fn try_clone(&self) -> RawStream {
        RawStream {
            reader: BufReader::new(self.writer.try_clone().expect("clone stream")),
            writer: self.writer.try_clone().expect("clone stream"),
        }
    }

    fn write_line(&mut self, text: &str) {
        let mut line = String::with_capacity(text.len() + 1);
        line.push_str(text);
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .expect("write request");
    }

    /// The next line, into `line` (cleared first).
    fn read_line(&mut self, line: &mut Vec<u8>) {
        line.clear();
        let n = self
            .reader
            .read_until(b'\n', line)
            .expect("read from herdctld");
        assert!(n > 0, "herdctld closed the connection");
    }

    /// Hands `f` every following line, in place in the read buffer (a line split by a read is joined in a
    /// buffer of its own), until `f` says it was the last. Ten readers of 100 MB each copied every line
    /// out of the buffer before this, which was more of their CPU than the parsing.
    fn each_line(&mut self, mut f: impl FnMut(&[u8]) -> bool) {
        let mut split: Vec<u8> = Vec::new();
        loop {
            let buffer = self.reader.fill_buf().expect("read from herdctld");
            assert!(!buffer.is_empty(), "herdctld closed the connection");
            let mut start = 0;
            let mut done = false;
            for end in memchr::memchr_iter(b'\n', buffer) {
                let last = if split.is_empty() {
                    f(&buffer[start..=end])
                } else {
                    split.extend_from_slice(&buffer[start..=end]);
                    let last = f(&split);
                    split.clear();
                    last
                };
                start = end + 1;
                if last {
                    done = true;
                    break;
                }
            }
            if !done {
                split.extend_from_slice(&buffer[start..]);
                start = buffer.len();
            }
            self.reader.consume(start);
            if done {
                return;
            }
        }
    }

    fn read_message(&mut self) -> Value {
        let mut line = Vec::new();
        self.read_line(&mut line);
        serde_json::from_slice(&line).unwrap_or_else(|e| {
            panic!(
                "unparsable line from herdctld ({e}): {}",
                String::from_utf8_lossy(&line)
            )
        })
    }
}

/// Polls `getStatus` until `completed + failed ≥ finished` and nothing is active or queued.
fn wait_until_idle(conn: &mut Conn, finished: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = conn.call("getStatus", json!({}));
        let jobs = &status["jobs"];
        let count = |k: &str| jobs[k].as_u64().unwrap_or(0) as usize;
        if count("completed") + count("failed") >= finished
            && count("active") + count("queued") == 0
        {
            return;
        }
        assert!(Instant::now() < deadline, "fleet did not go idle: {status}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn hourly_agent(name: &str) -> String {
    format!(
        "name: {name}\nruntime: command\ncommand: [\"true\"]\nschedules:\n  hourly:\n    type: interval\n    interval: 1h\n"
    )
}

// -------------------------------------------------------------------------------------------------
// Measurement and the table
// -------------------------------------------------------------------------------------------------

fn timed<T>(f: impl FnOnce() -> T) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

/// Nearest-rank percentile.
fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// p50 and p99 rows; the target is on p99 (`target_ms`).
fn latency_rows(
    table: &mut Table,
    label: &str,
    samples: &[Duration],
    baseline_label: &str,
    baseline: &[Duration],
    target_ms: f64,
) {
    for (name, q) in [("p50", 0.50), ("p99", 0.99)] {
        let value = percentile(samples, q);
        let base = percentile(baseline, q);
        let judged = name == "p99";
        table.row(Row {
            metric: format!("{label}: {name} (n={})", samples.len()),
            value: ms(value),
            baseline: format!("{} ({baseline_label})", ms(base)),
            ratio: Some(value.as_secs_f64() / base.as_secs_f64().max(1e-9)),
            target: if judged {
                format!("< {target_ms} ms")
            } else {
                String::new()
            },
            verdict: if judged {
                Verdict::of(value.as_secs_f64() * 1000.0 < target_ms)
            } else {
                Verdict::Info
            },
        });
    }
}

#[derive(Clone, Copy)]
enum Verdict {
    Met,
    Missed,
    Info,
}

impl Verdict {
    fn of(met: bool) -> Verdict {
        if met {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::Info => "",
        }
    }
}

struct Row {
    metric: String,
    value: String,
    baseline: String,
    /// Value over baseline.
    ratio: Option<f64>,
    target: String,
    verdict: Verdict,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn row(&mut self, row: Row) {
        eprintln!(
            "  {}: {} (baseline {}) {}",
            row.metric,
            row.value,
            row.baseline,
            row.verdict.label()
        );
        self.rows.push(row);
    }

    /// A Markdown table, aligned so it also reads well in a terminal.
    fn render(&self) -> String {
        let header = ["metric", "value", "baseline", "ratio", "target", "verdict"];
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.metric.clone(),
                    r.value.clone(),
                    r.baseline.clone(),
                    r.ratio.map_or("-".into(), |x| format!("{x:.2}")),
                    r.target.clone(),
                    r.verdict.label().into(),
                ]
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in &cells {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::from("|");
            for (cell, w) in cells.iter().zip(&widths) {
                let pad = w - cell.chars().count();
                let _ = write!(out, " {cell}{} |", " ".repeat(pad));
            }
            out
        };
        let mut out = line(&header.map(String::from));
        out.push('\n');
        out.push('|');
        for w in &widths {
            let _ = write!(out, "{}|", "-".repeat(w + 2));
        }
        for row in &cells {
            out.push('\n');
            out.push_str(&line(row));
        }
        out
    }
}
