//! Live job output: one hub per job that fans lines out to `streamJobOutput` readers, and the reader that
//! replays history and continues live from one cursor.
//!
//! Invariant that makes the stream gap-free: the job's pump writes and flushes each batch of lines to
//! `jobs/<id>.jsonl` *before* it publishes them on the hub. A reader subscribes to the hub first and reads
//! the file second, so every line is in the file, in the hub, or both; the cursor (next expected `seq`)
//! drops duplicates, and whenever the hub skips ahead (a slow reader lagged) the file fills the gap.
//!
//! A line is serialised once, by the pump: the same bytes go to the file and, shared, to every reader. A
//! reader takes lines one at a time ([`JobOutputStream::next`]) or every line ready at once
//! ([`JobOutputStream::next_batch`], `streamJobOutput` with `batch: true`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use tokio::sync::broadcast;

use crate::job::{JobStatus, OutputLine};

/// One output line as JSON text, `{"seq":…,"ts":…,"type":…,…}`: the line of the `.jsonl` file and the
/// `result` of a `jobOutput` notification. Cheap to clone (the text is shared).
#[derive(Debug, Clone)]
pub struct SerializedLine {
    pub seq: u64,
    json: Arc<RawValue>,
}

impl SerializedLine {
    pub fn new(line: &OutputLine) -> serde_json::Result<SerializedLine> {
        Ok(SerializedLine {
            seq: line.seq,
            json: Arc::from(serde_json::value::to_raw_value(line)?),
        })
    }

    /// A line of an output file, `None` when it is not an output line with a `seq`. A line the pump wrote is
    /// kept as the text it is; one of the earlier layout is read and written anew.
    fn from_file_line(text: &[u8]) -> Option<SerializedLine> {
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        if let Some(seq) = std::str::from_utf8(text).ok().and_then(seq_prefix) {
            let json: Box<RawValue> = serde_json::from_slice(text).ok()?;
            return Some(SerializedLine {
                seq,
                json: Arc::from(json),
            });
        }
        SerializedLine::new(&crate::state::seq_output_line(text).ok()?).ok()
    }

    /// The JSON text, without a newline.
    pub fn json(&self) -> &str {
        self.json.get()
    }

    /// The line as a structure.
    pub fn parse(&self) -> serde_json::Result<OutputLine> {
        serde_json::from_str(self.json.get())
    }
}

/// Described as the [`OutputLine`] it is the text of.
impl schemars::JsonSchema for SerializedLine {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SerializedLine".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<OutputLine>()
    }
}

impl Serialize for SerializedLine {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(serializer)
    }
}

/// The `seq` of a line the pump wrote (`seq` and `timestamp` are its first keys); `None` for any other
/// layout.
fn seq_prefix(json: &str) -> Option<u64> {
    let rest = json.strip_prefix(r#"{"seq":"#)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if !rest[digits..].starts_with(r#","timestamp":"#) {
        return None;
    }
    rest[..digits].parse().ok()
}

/// Lines published together, in seq order.
pub(crate) type OutputBatch = Arc<[SerializedLine]>;

/// Batches the hub keeps for readers that are behind; a reader further behind catches up from the file.
const HUB_BATCHES: usize = 16;

/// Lines of one job, published as they are persisted. Dropped when the job finishes, which ends readers.
#[derive(Clone)]
pub(crate) struct OutputHub {
    sender: broadcast::Sender<OutputBatch>,
}

impl OutputHub {
    pub(crate) fn new() -> OutputHub {
        let (sender, _) = broadcast::channel(HUB_BATCHES);
        OutputHub { sender }
    }

    pub(crate) fn publish(&self, batch: OutputBatch) {
        // No reader is fine: the lines are already in the file.
        let _ = self.sender.send(batch);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<OutputBatch> {
        self.sender.subscribe()
    }
}

impl Default for OutputHub {
    fn default() -> Self {
        OutputHub::new()
    }
}

/// What a job-output reader receives.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum OutputItem {
    Line(SerializedLine),
    Replayed(ReplayEnd),
    Eof(OutputEnd),
}

/// `{replayed: true, nextSeq}`, once: every line stored when the stream got to it was delivered; what
/// follows is live (or the end of a finished job). A reader that wants only what is there stops here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayEnd {
    pub replayed: bool,
    pub next_seq: u64,
}

/// `{eof: true, status}`, last: the job has finished and every line was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct OutputEnd {
    pub eof: bool,
    pub status: JobStatus,
}

/// What a batched job-output reader receives: `{"lines": [line, …]}`, and last `{eof: true, status}`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum OutputBatchItem {
    Lines { lines: Vec<SerializedLine> },
    Replayed(ReplayEnd),
    Eof(OutputEnd),
}

/// Reads a `.jsonl` output file incrementally from where it stopped; a last line without its newline (being
/// written, or torn by a crash) is left for the next read.
struct FileTail {
    path: PathBuf,
    reader: Option<BufReader<File>>,
    /// Bytes of an unfinished last line the reader consumed on the previous read: re-read next time.
    overread: usize,
    /// Lines in herdctl's layout read so far: the next one's seq (`state::herdctl_output_line`).
    herdctl_lines: u64,
}

impl FileTail {
    fn read_batch(&mut self, from_seq: u64, max: usize) -> std::io::Result<Vec<SerializedLine>> {
        if self.reader.is_none() {
            match File::open(&self.path) {
                Ok(file) => self.reader = Some(BufReader::with_capacity(64 * 1024, file)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        }
        let Some(reader) = self.reader.as_mut() else {
            return Ok(Vec::new());
        };
        if self.overread > 0 {
            // Within the buffer when possible: no system call.
            reader.seek_relative(-(self.overread as i64))?;
            self.overread = 0;
        }
        let mut lines = Vec::new();
        let mut buf = Vec::new();
        while lines.len() < max {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf)?;
            if n == 0 || buf.last() != Some(&b'\n') {
                self.overread = n;
                break;
            }
            // Unparsable lines (a crash mid-write followed by more output) are skipped, not fatal.
            let line = SerializedLine::from_file_line(&buf).or_else(|| {
                let line = crate::state::herdctl_output_line(&buf, self.herdctl_lines)?;
                self.herdctl_lines += 1;
                SerializedLine::new(&line).ok()
            });
            if let Some(line) = line.filter(|line| line.seq >= from_seq) {
                lines.push(line);
            }
        }
        Ok(lines)
    }
}

/// How the reader learns the job's final status once its hub is gone.
pub(crate) type StatusLookup = Box<dyn Fn() -> Option<JobStatus> + Send + Sync>;

/// Replay + live stream of one job's output (SPEC §11 `streamJobOutput`).
pub struct JobOutputStream {
    cursor: u64,
    pending: VecDeque<SerializedLine>,
    tail: FileTail,
    /// The file may hold lines the hub will not deliver: at the start (history) and after the hub skipped.
    from_file: bool,
    live: Option<broadcast::Receiver<OutputBatch>>,
    final_status: StatusLookup,
    /// The end of the replay was announced ([`OutputItem::Replayed`]).
    replayed: bool,
    ended: bool,
}

const REPLAY_BATCH: usize = 512;

impl JobOutputStream {
    /// `live` is the job's hub subscription (taken before this call), `None` for a finished job.
    pub fn new(
        path: PathBuf,
        from_seq: u64,
        live: Option<broadcast::Receiver<OutputBatch>>,
        final_status: StatusLookup,
    ) -> JobOutputStream {
        JobOutputStream {
            cursor: from_seq,
            pending: VecDeque::new(),
            tail: FileTail {
                path,
                reader: None,
                overread: 0,
                herdctl_lines: 0,
            },
            from_file: true,
            live,
            final_status,
            replayed: false,
            ended: false,
        }
    }

    /// The next line, then one `Eof`, then `None`.
    pub async fn next(&mut self) -> Option<OutputItem> {
        loop {
            if let Some(line) = self.next_ready() {
                return Some(OutputItem::Line(line));
            }
            if !self.replayed {
                self.replayed = true;
                return Some(OutputItem::Replayed(ReplayEnd {
                    replayed: true,
                    next_seq: self.cursor,
                }));
            }
            if self.ended {
                return None;
            }
            let Some(live) = self.live.as_mut() else {
                self.ended = true;
                let status = (self.final_status)().unwrap_or(JobStatus::Failed);
                return Some(OutputItem::Eof(OutputEnd { eof: true, status }));
            };
            let received = live.recv().await.map_err(|e| match e {
                broadcast::error::RecvError::Lagged(n) => broadcast::error::TryRecvError::Lagged(n),
                broadcast::error::RecvError::Closed => broadcast::error::TryRecvError::Closed,
            });
            self.take(received);
        }
    }

    /// Every line ready now (at least one, waiting for it) up to about `max_bytes` of JSON, then one `Eof`,
    /// then `None`: what a batched reader gets per notification.
    pub async fn next_batch(&mut self, max_bytes: usize) -> Option<OutputBatchItem> {
        let first = match self.next().await? {
            OutputItem::Line(line) => line,
            OutputItem::Replayed(end) => return Some(OutputBatchItem::Replayed(end)),
            OutputItem::Eof(end) => return Some(OutputBatchItem::Eof(end)),
        };
        let mut bytes = first.json().len();
        let mut lines = vec![first];
        while bytes < max_bytes {
            let Some(line) = self.next_ready() else { break };
            bytes += line.json().len();
            lines.push(line);
        }
        Some(OutputBatchItem::Lines { lines })
    }

    /// The next line if one can be had without waiting: from what was received, the file, or the hub.
    fn next_ready(&mut self) -> Option<SerializedLine> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                if line.seq < self.cursor {
                    continue;
                }
                self.cursor = line.seq + 1;
                return Some(line);
            }
            if self.from_file {
                match self.tail.read_batch(self.cursor, REPLAY_BATCH) {
                    Ok(lines) if !lines.is_empty() => {
                        self.pending.extend(lines);
                        continue;
                    }
                    Ok(_) => self.from_file = false,
                    Err(e) => {
                        self.from_file = false;
                        tracing::warn!(path = %self.tail.path.display(), error = %e, "cannot read job output");
                    }
                }
            }
            let received = self.live.as_mut()?.try_recv();
            if matches!(received, Err(broadcast::error::TryRecvError::Empty)) {
                return None;
            }
            self.take(received);
        }
    }

    /// Files what the hub gave: contiguous lines to deliver, or a reason to read the file again.
    fn take(&mut self, received: Result<OutputBatch, broadcast::error::TryRecvError>) {
        match received {
            // Contiguous with what was delivered: straight from the hub.
            Ok(batch) if batch.first().is_none_or(|line| line.seq <= self.cursor) => {
                self.pending.extend(batch.iter().cloned());
            }
            // The hub skipped ahead of us: the file has everything up to what it published.
            Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => self.from_file = true,
            // Every line reached the file before the hub closed; look there once more.
            Err(broadcast::error::TryRecvError::Closed) => {
                self.live = None;
                self.from_file = true;
            }
            Err(broadcast::error::TryRecvError::Empty) => {}
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
            timestamp: Utc::now(),
            kind: "stdout".into(),
            chunk: format!("line {seq}"),
            message: None,
            truncated: false,
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

    fn batch(lines: &[OutputLine]) -> OutputBatch {
        lines
            .iter()
            .map(|l| SerializedLine::new(l).unwrap())
            .collect()
    }

    async fn collect(stream: &mut JobOutputStream) -> (Vec<u64>, Option<JobStatus>) {
        let mut seqs = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                OutputItem::Line(l) => seqs.push(l.seq),
                OutputItem::Replayed(_) => {}
                OutputItem::Eof(end) => return (seqs, Some(end.status)),
            }
        }
        (seqs, None)
    }

    #[test]
    fn a_serialized_line_is_the_line_as_json_and_reads_back_from_a_file() {
        let original = line(42);
        let serialized = SerializedLine::new(&original).unwrap();
        assert_eq!(serialized.json(), serde_json::to_string(&original).unwrap());
        assert_eq!(serialized.parse().unwrap(), original);
        let item = serde_json::to_string(&OutputItem::Line(serialized.clone())).unwrap();
        assert_eq!(item, serialized.json());

        // A line the pump wrote is kept as its text.
        let written = format!("{}\n", serialized.json());
        let from_file = SerializedLine::from_file_line(written.as_bytes()).unwrap();
        assert_eq!((from_file.seq, from_file.json()), (42, serialized.json()));
        // Another key order (not the pump's), or the layout before protocol 2, is read and written anew.
        let reordered = SerializedLine::from_file_line(
            br#"{"chunk":"c","type":"stdout","timestamp":"2025-01-01T00:00:00Z","seq":7}"#,
        )
        .unwrap();
        assert_eq!(
            (reordered.seq, reordered.parse().unwrap().chunk.as_str()),
            (7, "c")
        );
        let earlier = SerializedLine::from_file_line(
            br#"{"seq":8,"ts":"2025-01-01T00:00:00Z","type":"stdout","text":"old"}"#,
        )
        .unwrap();
        assert_eq!(earlier.parse().unwrap().chunk, "old");
        assert!(earlier.json().starts_with(r#"{"seq":8,"timestamp":"#));
        assert!(SerializedLine::from_file_line(br#"{"seq":"7"}"#).is_none());
        assert!(SerializedLine::from_file_line(br#"{"seq":7,"#).is_none());
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
    async fn replays_a_job_herdctl_wrote_numbering_its_lines_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let mut text = String::new();
        for n in 0..4 {
            text.push_str(&format!(
                "{{\"type\":\"assistant\",\"content\":\"part {n}\",\"timestamp\":\"2026-12-02T20:48:1{n}.000Z\"}}\n"
            ));
        }
        std::fs::write(&path, text).unwrap();
        let mut stream =
            JobOutputStream::new(path, 1, None, Box::new(|| Some(JobStatus::Completed)));
        let mut seen = Vec::new();
        while let Some(OutputItem::Line(line)) = stream.next().await {
            let parsed = line.parse().unwrap();
            seen.push((parsed.seq, parsed.chunk));
        }
        assert_eq!(
            seen,
            [
                (1, "part 1".to_owned()),
                (2, "part 2".to_owned()),
                (3, "part 3".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn a_line_being_written_is_read_once_it_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let hub = OutputHub::new();
        append(&path, &[line(0)]);
        let mut stream = JobOutputStream::new(
            path.clone(),
            0,
            Some(hub.subscribe()),
            Box::new(|| Some(JobStatus::Completed)),
        );
        let whole = format!("{}\n", serde_json::to_string(&line(1)).unwrap());
        let (first, second) = whole.split_at(10);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(first.as_bytes()).unwrap();
        assert!(matches!(stream.next().await, Some(OutputItem::Line(l)) if l.seq == 0));
        file.write_all(second.as_bytes()).unwrap();
        // Published ahead of the reader's cursor: the reader goes back to the file for line 1.
        hub.publish(batch(&[line(2)]));
        append(&path, &[line(2)]);
        drop(hub);
        assert_eq!(
            collect(&mut stream).await,
            (vec![1, 2], Some(JobStatus::Completed))
        );
    }

    #[tokio::test]
    async fn a_batch_holds_every_ready_line_up_to_its_size_and_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let hub = OutputHub::new();
        let history: Vec<OutputLine> = (0..3).map(line).collect();
        append(&path, &history);
        let mut stream = JobOutputStream::new(
            path.clone(),
            1,
            Some(hub.subscribe()),
            Box::new(|| Some(JobStatus::Completed)),
        );
        let live: Vec<OutputLine> = (3..6).map(line).collect();
        append(&path, &live);
        hub.publish(batch(&live));
        let seqs_of = |item: Option<OutputBatchItem>| -> Vec<u64> {
            match item {
                Some(OutputBatchItem::Lines { lines }) => lines.iter().map(|l| l.seq).collect(),
                other => panic!("expected lines, got {other:?}"),
            }
        };
        // History from the file and the live lines join in one batch.
        assert_eq!(
            seqs_of(stream.next_batch(1 << 20).await),
            vec![1, 2, 3, 4, 5]
        );
        // A batch holds at least one line; beyond that it stops at its size.
        let more: Vec<OutputLine> = (6..9).map(line).collect();
        append(&path, &more);
        hub.publish(batch(&more));
        assert_eq!(seqs_of(stream.next_batch(1).await), vec![6]);
        assert_eq!(seqs_of(stream.next_batch(1 << 20).await), vec![7, 8]);
        // Everything there was delivered: said once.
        assert!(matches!(
            stream.next_batch(1 << 20).await,
            Some(OutputBatchItem::Replayed(ReplayEnd {
                replayed: true,
                next_seq: 9
            }))
        ));
        // Nothing ready: the batch waits for the next line.
        let waiting = tokio::spawn(async move {
            let item = stream.next_batch(1 << 20).await;
            (item, stream)
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        append(&path, &[line(9)]);
        hub.publish(batch(&[line(9)]));
        drop(hub);
        let (item, mut stream) = waiting.await.unwrap();
        assert_eq!(seqs_of(item), vec![9]);
        assert!(matches!(
            stream.next_batch(1 << 20).await,
            Some(OutputBatchItem::Eof(OutputEnd {
                eof: true,
                status: JobStatus::Completed
            }))
        ));
        assert!(stream.next_batch(1 << 20).await.is_none());
        let zero = line(0);
        let text = serde_json::to_string(&OutputBatchItem::Lines {
            lines: batch(std::slice::from_ref(&zero)).to_vec(),
        })
        .unwrap();
        assert_eq!(
            text,
            format!("{{\"lines\":[{}]}}", serde_json::to_string(&zero).unwrap())
        );
    }

    #[tokio::test]
    async fn joins_history_and_live_without_gap_or_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let hub = OutputHub::new();
        // Lines 0..3 written and published before the reader subscribes.
        let history: Vec<OutputLine> = (0..3).map(line).collect();
        append(&path, &history);
        hub.publish(batch(&history));
        let mut stream = JobOutputStream::new(
            path.clone(),
            0,
            Some(hub.subscribe()),
            Box::new(|| Some(JobStatus::Failed)),
        );
        // Lines 3..2000 follow the pump's order: file first, then hub, in batches of 10. The hub holds
        // fewer batches than that, so the reader lags and must take the gap from the file.
        for chunk in (3..2000).collect::<Vec<u64>>().chunks(10) {
            let lines: Vec<OutputLine> = chunk.iter().copied().map(line).collect();
            append(&path, &lines);
            hub.publish(batch(&lines));
        }
        drop(hub);
        let (seqs, status) = collect(&mut stream).await;
        assert_eq!(seqs, (0..2000).collect::<Vec<_>>());
        assert_eq!(status, Some(JobStatus::Failed));
    }

    #[tokio::test]
    async fn a_reader_that_keeps_up_takes_lines_from_the_hub_not_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let hub = OutputHub::new();
        let mut stream = JobOutputStream::new(
            path.clone(),
            0,
            Some(hub.subscribe()),
            Box::new(|| Some(JobStatus::Completed)),
        );
        let labelled = |seq: u64, copy: &str| {
            let mut l = line(seq);
            l.chunk = copy.into();
            l
        };
        append(&path, &[labelled(0, "file")]);
        hub.publish(batch(&[labelled(0, "hub")]));
        // History: what was in the file when the reader started comes from the file.
        let Some(OutputItem::Line(first)) = stream.next().await else {
            panic!("no line 0");
        };
        assert_eq!(first.parse().unwrap().chunk, "file");
        assert!(matches!(
            stream.next().await,
            Some(OutputItem::Replayed(ReplayEnd {
                replayed: true,
                next_seq: 1
            }))
        ));
        let idle = tokio::time::timeout(std::time::Duration::from_millis(50), stream.next()).await;
        assert!(idle.is_err(), "nothing more to read yet");
        // Caught up: live lines come from the hub without a read of the file per line.
        for seq in 1..3 {
            append(&path, &[labelled(seq, "file")]);
            hub.publish(batch(&[labelled(seq, "hub")]));
            let Some(OutputItem::Line(l)) = stream.next().await else {
                panic!("no line {seq}");
            };
            assert_eq!((l.seq, l.parse().unwrap().chunk.as_str()), (seq, "hub"));
        }
    }
}
