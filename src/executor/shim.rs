//! `herdctld exec-shim --spec FILE`: runs one job with the ordinary runner where a cluster engine placed it,
//! and writes its output as frames (`frame`) on stdout, which the engine keeps where the daemon reads it.
//!
//! Inside the shim the job has everything it has under the daemon, because it is the same code: its own
//! process group, escaped descendants swept (the shim is their subreaper), line caps, stream-json, stdout
//! and stderr tagged, the timeout. What the shim adds is small: lines numbered from the spec's `first_seq`
//! and stamped as they are read, SIGTERM taken as a cancel (with the grace the daemon wrote beside the spec, else
//! the job's own), and one final outcome
//! frame. Its stderr is for its own messages only.

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::frame::Frame;
use crate::job::ExitReason;
use crate::runner::{self, OutputEvent, RunOutcome, RunSpec, RunStatus};

/// What the daemon hands the shim: the run, and where its output's numbering starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ShimSpec {
    /// The seq of the run's first line: lines the daemon wrote before the run (a notice) keep theirs.
    pub(crate) first_seq: u64,
    pub(crate) run: RunSpec,
}

/// Output events read together from the runner before one write.
const WRITE_BATCH: usize = 16;

/// The exit status of the shim: 0 when the job completed, its exit code when it failed with one (so the
/// engine's own accounting reads like the job's), 1 otherwise (also when there was no job to run).
pub fn exit_status(outcome: &RunOutcome) -> u8 {
    match (outcome.status, outcome.exit_code) {
        (RunStatus::Completed, _) => 0,
        (_, Some(code)) => u8::try_from(code)
            .ok()
            .filter(|code| *code != 0)
            .unwrap_or(1),
        _ => 1,
    }
}

/// Runs the job of the spec at `spec_path` to its end, writing frames to stdout; `terminate` yields each
/// SIGTERM (or other stop request) the shim receives. Returns the outcome it wrote last.
pub async fn run(spec_path: &Path, mut terminate: mpsc::Receiver<()>) -> RunOutcome {
    let mut stdout = tokio::io::stdout();
    let spec = match read_spec(spec_path).await {
        Ok(spec) => spec,
        Err(message) => {
            let outcome = RunOutcome::without_process(
                RunStatus::Failed,
                ExitReason::SpawnFailed,
                "SHIM_SPEC",
                message,
            );
            write_outcome(&mut stdout, &outcome).await;
            return outcome;
        }
    };
    let job_grace = spec.run.stop_grace;
    let (output_tx, output_rx) = mpsc::channel(WRITE_BATCH);
    // Called here, on the thread that lives as long as the shim: the job's parent-death signal is tied to it.
    let handle = runner::start(spec.run, output_tx);
    let canceller = handle.canceller();
    let writer = tokio::spawn(write_lines(output_rx, spec.first_seq));
    let spec_path = spec_path.to_path_buf();
    let cancels = tokio::spawn(async move {
        while terminate.recv().await.is_some() {
            // The daemon writes a cancel's grace before it asks; a stop from elsewhere gets the job's.
            let grace = crate::state::requested_grace(&spec_path).unwrap_or(job_grace);
            let canceller = canceller.clone();
            tokio::spawn(async move { canceller.cancel(grace).await });
        }
    });
    let outcome = handle.wait().await;
    cancels.abort();
    // The runner's sender is gone once its outcome is decided: the writer ends after the last line.
    match writer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("herdctld exec-shim: writing the job's output failed: {e}"),
        Err(e) => eprintln!("herdctld exec-shim: the output writer failed: {e}"),
    }
    write_outcome(&mut stdout, &outcome).await;
    outcome
}

async fn read_spec(path: &Path) -> Result<ShimSpec, String> {
    let text = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read the run spec {}: {e}", path.display()))?;
    serde_json::from_slice(&text)
        .map_err(|e| format!("the run spec {} is not readable: {e}", path.display()))
}

/// Writes every event of the run as line frames, numbered from `first_seq`, one flushed write per batch so
/// that a reader of the file sees lines as the job prints them.
async fn write_lines(
    mut output: mpsc::Receiver<OutputEvent>,
    first_seq: u64,
) -> std::io::Result<()> {
    let mut stdout = tokio::io::stdout();
    let mut next_seq = first_seq;
    let mut events = Vec::with_capacity(WRITE_BATCH);
    let mut buffer = Vec::new();
    while output.recv_many(&mut events, WRITE_BATCH).await > 0 {
        let now = Utc::now();
        buffer.clear();
        for event in events.drain(..) {
            let count = event.line_count() as u64;
            for line in event.into_lines(next_seq, now) {
                // An OutputLine always serialises (its message is JSON already).
                if serde_json::to_writer(&mut buffer, &Frame::line(line)).is_ok() {
                    buffer.push(b'\n');
                }
            }
            next_seq += count;
        }
        stdout.write_all(&buffer).await?;
        stdout.flush().await?;
    }
    Ok(())
}

async fn write_outcome(stdout: &mut tokio::io::Stdout, outcome: &RunOutcome) {
    let mut frame = match serde_json::to_vec(&Frame::outcome(outcome.clone())) {
        Ok(frame) => frame,
        Err(e) => {
            eprintln!("herdctld exec-shim: the outcome is not serialisable: {e}");
            return;
        }
    };
    frame.push(b'\n');
    let written = async {
        stdout.write_all(&frame).await?;
        stdout.flush().await
    };
    if let Err(e) = written.await {
        eprintln!("herdctld exec-shim: writing the outcome failed: {e}");
    }
}

/// The `herdctld exec-shim` process: a runtime, the subreaper role (so the job's escaped descendants are
/// found and reaped, as under the daemon), SIGTERM and SIGINT as cancel requests, then [`run`].
pub fn main(spec_path: &Path) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("herdctld exec-shim: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(async {
        let (stop_tx, stop_rx) = mpsc::channel(4);
        // First: a stop that arrives while the shim starts must cancel the job, not kill the shim.
        if let Err(e) = forward_stop_signals(stop_tx) {
            eprintln!("herdctld exec-shim: cannot handle SIGTERM, so a cancel kills the job: {e}");
        }
        if let Err(e) = runner::become_subreaper() {
            eprintln!("herdctld exec-shim: cannot become a child subreaper; escaped job processes may outlive the job: {e}");
        }
        let reaper = runner::spawn_orphan_reaper();
        let outcome = run(spec_path, stop_rx).await;
        if let Some(reaper) = reaper {
            reaper.abort();
        }
        outcome
    });
    std::process::ExitCode::from(exit_status(&outcome))
}

fn forward_stop_signals(stops: mpsc::Sender<()>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = terminate.recv() => {}
                Some(()) = interrupt.recv() => {}
                else => return,
            }
            if stops.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// How long the shim may take beyond the job's grace after a stop request, before the daemon has the engine
/// stop it by force: the runner's sweep and the final writes.
pub(crate) const SHIM_MARGIN: Duration = Duration::from_secs(10);
