//! Live job output: one hub per job that fans lines out to `streamJobOutput` readers, and the reader that
//! replays history and continues live from one cursor.
//!
//! Invariant that makes the stream gap-free: the job's pump writes and flushes each batch of lines to
//! `jobs/<id>.jsonl` *before* it publishes them on the hub. A reader subscribes to the hub first and reads
//! the file second, so every line is in the file, in the hub, or both; the cursor (next expected `seq`)
//! drops duplicates, and whenever the hub skips ahead (a slow reader lagged) the file fills the gap.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::job::{JobStatus, OutputLine};

/// Lines of one job, published as they are persisted. Dropped when the job finishes, which ends readers.
#[derive(Clone)]
pub struct OutputHub {
    sender: broadcast::Sender<OutputLine>,
}

impl OutputHub {
    pub fn new() -> OutputHub {
        let (sender, _) = broadcast::channel(1024);
        OutputHub { sender }
    }

    pub fn publish(&self, line: OutputLine) {
        // No reader is fine: the line is already in the file.
        let _ = self.sender.send(line);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<OutputLine> {
        self.sender.subscribe()
    }
}

impl Default for OutputHub {
    fn default() -> Self {
        OutputHub::new()
    }
}

/// What a job-output reader receives.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum OutputItem {
    Line(OutputLine),
    /// The job has finished and every line was delivered.
    Eof {
        eof: bool,
        status: JobStatus,
    },
}

/// Reads a `.jsonl` output file incrementally from where it stopped; a last line without its newline (being
/// written, or torn by a crash) is left for the next read.
struct FileTail {
    path: PathBuf,
    reader: Option<BufReader<File>>,
    offset: u64,
}

impl FileTail {
    fn read_batch(&mut self, from_seq: u64, max: usize) -> std::io::Result<Vec<OutputLine>> {
        if self.reader.is_none() {
            match File::open(&self.path) {
                Ok(file) => self.reader = Some(BufReader::new(file)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        }
        let Some(reader) = self.reader.as_mut() else {
            return Ok(Vec::new());
        };
        reader.seek(SeekFrom::Start(self.offset))?;
        let mut lines = Vec::new();
        let mut buf = Vec::new();
        while lines.len() < max {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf)?;
            if n == 0 || buf.last() != Some(&b'\n') {
                break;
            }
            self.offset += n as u64;
            // Unparsable lines (a crash mid-write followed by more output) are skipped, not fatal.
            if let Ok(line) = serde_json::from_slice::<OutputLine>(&buf) {
                if line.seq >= from_seq {
                    lines.push(line);
                }
            }
        }
        Ok(lines)
    }
}

/// How the reader learns the job's final status once its hub is gone.
pub type StatusLookup = Box<dyn Fn() -> Option<JobStatus> + Send + Sync>;

/// Replay + live stream of one job's output (SPEC §11 `streamJobOutput`).
pub struct JobOutputStream {
    cursor: u64,
    pending: VecDeque<OutputLine>,
    tail: FileTail,
    live: Option<broadcast::Receiver<OutputLine>>,
    final_status: StatusLookup,
    ended: bool,
}

const REPLAY_BATCH: usize = 512;

impl JobOutputStream {
    /// `live` is the job's hub subscription (taken before this call), `None` for a finished job.
    pub fn new(
        path: PathBuf,
        from_seq: u64,
        live: Option<broadcast::Receiver<OutputLine>>,
        final_status: StatusLookup,
    ) -> JobOutputStream {
        JobOutputStream {
            cursor: from_seq,
            pending: VecDeque::new(),
            tail: FileTail {
                path,
                reader: None,
                offset: 0,
            },
            live,
            final_status,
            ended: false,
        }
    }

    /// The next line, then one `Eof`, then `None`.
    pub async fn next(&mut self) -> Option<OutputItem> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                if line.seq < self.cursor {
                    continue;
                }
                self.cursor = line.seq + 1;
                return Some(OutputItem::Line(line));
            }
            if self.ended {
                return None;
            }
            match self.tail.read_batch(self.cursor, REPLAY_BATCH) {
                Ok(lines) if !lines.is_empty() => {
                    self.pending.extend(lines);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(path = %self.tail.path.display(), error = %e, "cannot read job output");
                }
            }
            let Some(live) = self.live.as_mut() else {
                self.ended = true;
                let status = (self.final_status)().unwrap_or(JobStatus::Failed);
                return Some(OutputItem::Eof { eof: true, status });
            };
            match live.recv().await {
                // Fast path: the next line in order comes straight from the hub.
                Ok(line) if line.seq == self.cursor => {
                    self.cursor += 1;
                    return Some(OutputItem::Line(line));
                }
                // Already delivered from the file, or ahead of us: the file has everything up to it.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => self.live = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use std::io::Write;

    fn line(seq: u64) -> OutputLine {
        OutputLine {
            seq,
            ts: Utc::now(),
            kind: "stdout".into(),
            data: serde_json::Map::from_iter([("text".to_string(), format!("line {seq}").into())]),
        }
    }

    fn append(path: &std::path::Path, lines: &[OutputLine]) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for l in lines {
            writeln!(file, "{}", serde_json::to_string(l).unwrap()).unwrap();
        }
    }

    async fn collect(stream: &mut JobOutputStream) -> (Vec<u64>, Option<JobStatus>) {
        let mut seqs = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                OutputItem::Line(l) => seqs.push(l.seq),
                OutputItem::Eof { status, .. } => return (seqs, Some(status)),
            }
        }
        (seqs, None)
    }

    #[tokio::test]
    async fn replays_a_finished_job_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        append(&path, &(0..5).map(line).collect::<Vec<_>>());
        // A torn last line (crash mid-write) is not delivered.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"seq\":5,\"ts\"")
            .unwrap();
        let mut stream =
            JobOutputStream::new(path, 2, None, Box::new(|| Some(JobStatus::Completed)));
        assert_eq!(
            collect(&mut stream).await,
            (vec![2, 3, 4], Some(JobStatus::Completed))
        );
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn joins_history_and_live_without_gap_or_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let hub = OutputHub::new();
        // Lines 0..3 written and published before the reader subscribes.
        append(&path, &(0..3).map(line).collect::<Vec<_>>());
        for l in (0..3).map(line) {
            hub.publish(l);
        }
        let mut stream = JobOutputStream::new(
            path.clone(),
            0,
            Some(hub.subscribe()),
            Box::new(|| Some(JobStatus::Failed)),
        );
        // Lines 3..2000 follow the pump's order: file first, then hub. The hub holds 1024, so the
        // reader lags and must take the gap from the file.
        let batch: Vec<OutputLine> = (3..2000).map(line).collect();
        append(&path, &batch);
        for l in batch {
            hub.publish(l);
        }
        drop(hub);
        let (seqs, status) = collect(&mut stream).await;
        assert_eq!(seqs, (0..2000).collect::<Vec<_>>());
        assert_eq!(status, Some(JobStatus::Failed));
    }
}
