//! Live job output: one hub per job that fans batches of lines out to `streamJobOutput` readers, and the
//! reader that replays history and continues live from one cursor.
//!
//! Invariant that makes the stream gap-free: the job's pump hands each batch of lines to the output file
//! (`state::OutputWriter`) *before* it publishes them on the hub. A reader subscribes to the hub first and
//! reads the file second, so every line is in the file, in the hub, or both; the cursor (next expected
//! `seq`) drops duplicates, and whenever the hub skips ahead the file fills the gap. The file keeps only
//! what the storage cap keeps, so a reader that fell behind into lines it dropped gets one
//! [`OutputGap`] saying how many it lost, and goes on.
//!
//! The hub holds back the job's pump (and through it the job's pipe) while a reader that reads is behind
//! by more than [`HUB_WINDOW`] batches (or [`HUB_WINDOW_BYTES`]), for at most [`READER_WAIT`] per batch: a reader that keeps up
//! sees every line whatever the cap, and one that stalls costs at most the window before it is let go
//! (then it lags: it catches up from the file, or is told what it lost).
//!
//! A batch is serialised once, by the pump ([`SerializedLines`]): the same bytes go to the file and,
//! shared, to every reader. A reader takes runs of lines ([`JobOutputStream::next_piece`], what the
//! socket transport writes from), one line at a time ([`JobOutputStream::next`]) or every line ready at
//! once ([`JobOutputStream::next_batch`], `streamJobOutput` with `batch: true`).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use tokio::sync::Notify;

use crate::job::{stored_line_seq, JobStatus, OutputLine, SerializedLines};

/// Lines published together, in seq order, shared by every reader.
pub(crate) type OutputBatch = Arc<SerializedLines>;

/// Batches a hub keeps for readers that are behind before it holds the pump back …
pub(crate) const HUB_WINDOW: usize = 32;
/// … and bytes: a pump batch of a flooding job holds up to 16 pipe reads, so a count alone let one
/// stalled reader pin tens of megabytes per job.
pub(crate) const HUB_WINDOW_BYTES: usize = 8 * 1024 * 1024;
/// How long the pump waits per batch for a reader that is a whole window behind before letting it go.
pub(crate) const READER_WAIT: Duration = Duration::from_secs(1);

/// One output line as JSON text, `{"seq":…,"timestamp":…,"type":…,"chunk":…}`: the line of the `.jsonl`
/// file and the `result` of a `jobOutput` notification. Cheap to clone (the text is shared with its batch).
#[derive(Debug, Clone)]
pub struct SerializedLine {
    pub seq: u64,
    lines: Arc<SerializedLines>,
    index: usize,
}

impl SerializedLine {
    /// `line` serialised on its own.
    pub fn new(line: &OutputLine) -> serde_json::Result<SerializedLine> {
        let mut lines = SerializedLines::default();
        lines.push_line(line)?;
        Ok(SerializedLine {
            seq: line.seq,
            lines: Arc::new(lines),
            index: 0,
        })
    }

    /// The JSON text, without a newline.
    pub fn json(&self) -> &str {
        self.lines.json_str(self.index)
    }

    /// The line as a structure.
    pub fn parse(&self) -> serde_json::Result<OutputLine> {
        serde_json::from_str(self.json())
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
        let raw: &RawValue =
            serde_json::from_str(self.json()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// Consecutive lines of one batch, in seq order: what a reader is handed at once.
#[derive(Debug, Clone)]
pub struct LineRun {
    lines: OutputBatch,
    from: usize,
    to: usize,
}

impl LineRun {
    fn whole(lines: OutputBatch) -> LineRun {
        let to = lines.len();
        LineRun { lines, from: 0, to }
    }

    pub fn len(&self) -> usize {
        self.to - self.from
    }

    pub fn is_empty(&self) -> bool {
        self.from == self.to
    }

    /// The `n`-th line's seq.
    pub fn seq(&self, n: usize) -> u64 {
        self.lines.seq(self.from + n)
    }

    /// The `n`-th line's JSON, without a newline.
    pub fn json(&self, n: usize) -> &[u8] {
        self.lines.json(self.from + n)
    }

    /// The `n`-th line on its own.
    pub fn line(&self, n: usize) -> SerializedLine {
        SerializedLine {
            seq: self.seq(n),
            lines: self.lines.clone(),
            index: self.from + n,
        }
    }

    /// Drops the lines before `seq`.
    fn skip_before(&mut self, seq: u64) {
        if self.from < self.to && self.lines.seq(self.from) < seq {
            self.from = self.lines.index_from_seq(seq).clamp(self.from, self.to);
        }
    }

    /// Takes up to `max` lines from the front whose seqs follow `cursor` without a hole; the rest stays.
    /// Seqs only increase, so a run is whole exactly when its last seq is where a whole run's would be.
    fn take_contiguous(&mut self, cursor: u64, max: usize) -> LineRun {
        let from = self.from;
        let whole = |end: usize| self.lines.seq(end - 1) == cursor + (end - 1 - from) as u64;
        let mut end = self.to.min(from.saturating_add(max));
        if end > from && !whole(end) {
            // A hole within: the longest whole prefix, found by bisection.
            let (mut low, mut high) = (from + 1, end);
            while low < high {
                let middle = (low + high).div_ceil(2);
                if whole(middle) {
                    low = middle;
                } else {
                    high = middle - 1;
                }
            }
            end = low;
        }
        let taken = LineRun {
            lines: self.lines.clone(),
            from: self.from,
            to: end,
        };
        self.from = end;
        taken
    }
}

// ---------------------------------------------------------------------------------------------------------
// The hub
// ---------------------------------------------------------------------------------------------------------

/// Lines of one job, published as they are persisted. When the last handle is dropped (the job has
/// finished, or ended before it ran) readers end once they have what was published.
#[derive(Clone)]
pub(crate) struct OutputHub {
    publisher: Arc<Publisher>,
}

/// Closes the hub when dropped.
struct Publisher {
    shared: Arc<HubShared>,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.published.notify_waiters();
    }
}

struct HubShared {
    state: Mutex<HubState>,
    /// A batch was published, or the hub closed.
    published: Notify,
    /// A reader took a batch or went away.
    consumed: Notify,
    reader_wait: Duration,
}

impl HubShared {
    fn lock(&self) -> MutexGuard<'_, HubState> {
        // The state stays consistent whatever a panicking holder did: each update is one step.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct HubState {
    /// Batches some reader has yet to take; `ring[0]` is batch number `base`.
    ring: VecDeque<OutputBatch>,
    /// The bytes of the batches in `ring`.
    ring_bytes: usize,
    base: u64,
    /// The seq of the last line published, kept or not: a reader past it has everything.
    published_through: Option<u64>,
    readers: HashMap<u64, ReaderPosition>,
    next_reader: u64,
    closed: bool,
}

#[derive(Clone, Copy)]
struct ReaderPosition {
    /// The number of the next batch this reader takes.
    next: u64,
    /// The pump waits for it: it has reached the newest batch (a reader replaying history, or one that
    /// was let go, holds nothing back until it has caught up).
    held_for: bool,
}

impl HubState {
    fn end(&self) -> u64 {
        self.base + self.ring.len() as u64
    }

    fn push(&mut self, batch: OutputBatch) {
        self.ring_bytes += batch.as_bytes().len();
        self.ring.push_back(batch);
    }

    fn pop_oldest(&mut self) {
        if let Some(batch) = self.ring.pop_front() {
            self.ring_bytes -= batch.as_bytes().len();
            self.base += 1;
        }
    }

    /// More than the window holds (a single batch always fits).
    fn over_window(&self) -> bool {
        self.ring.len() > HUB_WINDOW || (self.ring.len() > 1 && self.ring_bytes > HUB_WINDOW_BYTES)
    }

    /// Drops the oldest batches no reader still needs.
    fn trim(&mut self) {
        let needed_from = self
            .readers
            .values()
            .map(|reader| reader.next)
            .min()
            .unwrap_or(u64::MAX);
        while self.base < needed_from && !self.ring.is_empty() {
            self.pop_oldest();
        }
    }

    /// Whether a reader the pump waits for still needs the oldest batch.
    fn held_back(&self) -> bool {
        self.readers
            .values()
            .any(|reader| reader.held_for && reader.next <= self.base)
    }

    /// Makes the ring fit the window: readers still behind it are let go (they lag).
    fn let_go(&mut self) {
        while self.over_window() {
            self.pop_oldest();
        }
        let base = self.base;
        for reader in self.readers.values_mut() {
            if reader.next < base {
                reader.held_for = false;
            }
        }
    }
}

/// Why a reader got no batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HubMiss {
    /// Nothing new yet.
    Empty,
    /// This many batches were dropped before the reader took them.
    Lagged(u64),
    /// The hub closed and the reader took everything.
    Closed,
}

impl OutputHub {
    pub(crate) fn new() -> OutputHub {
        OutputHub::with_reader_wait(READER_WAIT)
    }

    /// A hub whose pump waits at most `reader_wait` per batch for a reader a whole window behind.
    pub(crate) fn with_reader_wait(reader_wait: Duration) -> OutputHub {
        OutputHub {
            publisher: Arc::new(Publisher {
                shared: Arc::new(HubShared {
                    state: Mutex::new(HubState::default()),
                    published: Notify::new(),
                    consumed: Notify::new(),
                    reader_wait,
                }),
            }),
        }
    }

    /// Publishes a batch (already in the file). Returns once every reader that reads is within the
    /// window, or after the reader wait, when those still behind are let go.
    pub(crate) async fn publish(&self, batch: OutputBatch) {
        let shared = &self.publisher.shared;
        {
            let mut state = shared.lock();
            if let Some(last) = batch.last_seq() {
                state.published_through = Some(last);
            }
            if state.readers.is_empty() {
                // No reader: nothing to keep (the lines are in the file).
                state.base += 1;
                return;
            }
            state.push(batch);
        }
        shared.published.notify_waiters();
        let deadline = tokio::time::Instant::now() + shared.reader_wait;
        loop {
            let consumed = shared.consumed.notified();
            tokio::pin!(consumed);
            consumed.as_mut().enable();
            {
                let mut state = shared.lock();
                state.trim();
                if !state.over_window() || !state.held_back() {
                    state.let_go();
                    return;
                }
                if tokio::time::Instant::now() >= deadline {
                    state.let_go();
                    return;
                }
            }
            tokio::select! {
                () = &mut consumed => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// A reader of the batches published from now on.
    pub(crate) fn subscribe(&self) -> HubReader {
        let shared = self.publisher.shared.clone();
        let id = {
            let mut state = shared.lock();
            let id = state.next_reader;
            state.next_reader += 1;
            let next = state.end();
            state.readers.insert(
                id,
                ReaderPosition {
                    next,
                    held_for: false,
                },
            );
            id
        };
        HubReader { shared, id }
    }
}

impl Default for OutputHub {
    fn default() -> Self {
        OutputHub::new()
    }
}

/// One reader's place in a hub.
pub(crate) struct HubReader {
    shared: Arc<HubShared>,
    id: u64,
}

impl HubReader {
    /// The seq of the last line the hub published; `None` before the first.
    pub(crate) fn published_through(&self) -> Option<u64> {
        self.shared.lock().published_through
    }

    /// The next batch if there is one now.
    pub(crate) fn try_recv(&mut self) -> Result<OutputBatch, HubMiss> {
        let taken = {
            let mut state = self.shared.lock();
            let base = state.base;
            let end = state.end();
            let Some(reader) = state.readers.get_mut(&self.id) else {
                return Err(HubMiss::Closed);
            };
            if reader.next < base {
                let missed = base - reader.next;
                reader.next = base;
                return Err(HubMiss::Lagged(missed));
            }
            if reader.next >= end {
                reader.held_for = true;
                return Err(if state.closed {
                    HubMiss::Closed
                } else {
                    HubMiss::Empty
                });
            }
            let index = (reader.next - base) as usize;
            reader.next += 1;
            if reader.next == end {
                reader.held_for = true;
            }
            let batch = state.ring[index].clone();
            state.trim();
            batch
        };
        self.shared.consumed.notify_waiters();
        Ok(taken)
    }

    /// The next batch, waiting for it.
    pub(crate) async fn recv(&mut self) -> Result<OutputBatch, HubMiss> {
        let shared = self.shared.clone();
        loop {
            let published = shared.published.notified();
            tokio::pin!(published);
            published.as_mut().enable();
            match self.try_recv() {
                Err(HubMiss::Empty) => published.await,
                other => return other,
            }
        }
    }
}

impl Drop for HubReader {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.readers.remove(&self.id);
            state.trim();
        }
        self.shared.consumed.notify_waiters();
    }
}

// ---------------------------------------------------------------------------------------------------------
// What readers receive
// ---------------------------------------------------------------------------------------------------------

/// What a job-output reader receives, one at a time.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum OutputItem {
    Line(SerializedLine),
    Gap(OutputGap),
    Replayed(ReplayEnd),
    Eof(OutputEnd),
}

/// What [`JobOutputStream::next_piece`] hands out: a run of lines, or one of the marks.
#[derive(Debug, Clone)]
pub enum OutputPiece {
    Lines(LineRun),
    Gap(OutputGap),
    Replayed(ReplayEnd),
    Eof(OutputEnd),
}

/// `{gap: true, missed, nextSeq}`: the `missed` lines before `nextSeq` are not there for this reader (it
/// fell behind into what the storage cap dropped); the stream goes on at `nextSeq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputGap {
    pub gap: bool,
    pub missed: u64,
    pub next_seq: u64,
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

/// What a batched job-output reader receives: `{"lines": [line, …]}`, the marks, and last `{eof: true,
/// status}`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum OutputBatchItem {
    Lines { lines: Vec<SerializedLine> },
    Gap(OutputGap),
    Replayed(ReplayEnd),
    Eof(OutputEnd),
}

// ---------------------------------------------------------------------------------------------------------
// The reader
// ---------------------------------------------------------------------------------------------------------

/// Reads a `.jsonl` output file incrementally from where it stopped, a block at a time; a last line
/// without its newline (being written, or torn by a crash) waits for the next read.
struct FileTail {
    path: PathBuf,
    file: Option<File>,
    /// The start of a line the previous read did not finish.
    unfinished: Vec<u8>,
    /// Lines in herdctl's layout read so far: the next one's seq (`state::herdctl_output_line`).
    herdctl_lines: u64,
}

/// Bytes a replay reads from an output file at a time.
const REPLAY_BLOCK: usize = 64 * 1024;

impl FileTail {
    /// The whole lines of the next block (possibly none, when all were unreadable); `None` at the end of
    /// what the file has. The reader drops lines before its cursor.
    fn read_batch(&mut self) -> std::io::Result<Option<SerializedLines>> {
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(file) => self.file = Some(file),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(None);
        };
        let mut block = std::mem::take(&mut self.unfinished);
        // A line longer than a block takes several reads; the end of what the file has ends the batch.
        let last_newline = loop {
            let kept = block.len();
            block.resize(kept + REPLAY_BLOCK, 0);
            let read = file.read(&mut block[kept..]);
            block.truncate(kept + *read.as_ref().unwrap_or(&0));
            match read {
                // What was kept has no newline: only the new bytes can end a line.
                Ok(read) if read > 0 => {
                    if let Some(found) = memchr::memrchr(b'\n', &block[kept..]) {
                        break kept + found;
                    }
                }
                _ => {
                    self.unfinished = block;
                    return read.map(|_| None);
                }
            }
        };
        self.unfinished = block.split_off(last_newline + 1);
        // Lines the pump wrote are taken as they are, without a copy; any other layout line by line.
        Ok(Some(match SerializedLines::from_stored(block) {
            Ok(lines) => lines,
            Err(block) => self.convert(&block),
        }))
    }

    /// The whole lines of `block` read one by one: kept as they are when the pump wrote them (checked to
    /// be JSON), other layouts read and written anew, unparsable ones skipped (a crash mid-write followed
    /// by more output).
    fn convert(&mut self, block: &[u8]) -> SerializedLines {
        let mut lines = SerializedLines::default();
        for text in block.split(|b| *b == b'\n') {
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if let Some(seq) = stored_line_seq(text) {
                if serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok() {
                    lines.push_json(seq, text);
                }
                continue;
            }
            let line = crate::state::seq_output_line(text).ok().or_else(|| {
                let line = crate::state::herdctl_output_line(text, self.herdctl_lines)?;
                self.herdctl_lines += 1;
                Some(line)
            });
            if let Some(line) = line {
                if let Err(e) = lines.push_line(&line) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot re-serialise an output line");
                }
            }
        }
        lines
    }
}

/// Whether a stored line is the storage cap's `output_truncated` notice (its `type` follows its `seq` and
/// `timestamp`).
fn is_truncation_notice(json: &[u8]) -> bool {
    let head = &json[..json.len().min(96)];
    memchr::memmem::find(head, br#","type":"output_truncated","#).is_some()
}

/// How the reader learns the job's final status once its hub is gone.
pub(crate) type StatusLookup = Box<dyn Fn() -> Option<JobStatus> + Send + Sync>;

/// Replay + live stream of one job's output (SPEC §11 `streamJobOutput`).
pub struct JobOutputStream {
    cursor: u64,
    pending: VecDeque<LineRun>,
    /// A batch from the hub that begins after the cursor: the file is read up to it first, and what
    /// neither has is a gap.
    held: Option<OutputBatch>,
    tail: FileTail,
    /// The file may hold lines the hub will not deliver: at the start (history) and after the hub skipped.
    from_file: bool,
    live: Option<HubReader>,
    final_status: StatusLookup,
    /// The end of the replay was announced ([`OutputPiece::Replayed`]).
    replayed: bool,
    ended: bool,
    /// A piece taken but not handed out yet (by the line and batch views).
    peeked: Option<OutputPiece>,
}

impl JobOutputStream {
    /// `live` is the job's hub subscription (taken before this call), `None` for a finished job.
    pub(crate) fn new(
        path: PathBuf,
        from_seq: u64,
        live: Option<HubReader>,
        final_status: StatusLookup,
    ) -> JobOutputStream {
        JobOutputStream {
            cursor: from_seq,
            pending: VecDeque::new(),
            held: None,
            tail: FileTail {
                path,
                file: None,
                unfinished: Vec::new(),
                herdctl_lines: 0,
            },
            from_file: true,
            live,
            final_status,
            replayed: false,
            ended: false,
            peeked: None,
        }
    }

    /// The next run of at most `max_lines` lines (at least one), or mark, then one `Eof`, then `None`.
    pub async fn next_piece(&mut self, max_lines: usize) -> Option<OutputPiece> {
        loop {
            if let Some(piece) = self.try_next_piece(max_lines) {
                return Some(piece);
            }
            // Nothing ready and not ended: only the hub can give more.
            let live = self.live.as_mut()?;
            let received = live.recv().await;
            self.take(received);
        }
    }

    /// What [`JobOutputStream::next_piece`] gives, if it can be had without waiting.
    pub fn try_next_piece(&mut self, max_lines: usize) -> Option<OutputPiece> {
        if let Some(piece) = self.peeked.take() {
            return Some(piece);
        }
        if let Some(piece) = self.next_ready(max_lines.max(1)) {
            return Some(piece);
        }
        if !self.replayed {
            self.replayed = true;
            return Some(OutputPiece::Replayed(ReplayEnd {
                replayed: true,
                next_seq: self.cursor,
            }));
        }
        if self.ended || self.live.is_some() {
            return None;
        }
        self.ended = true;
        let status = (self.final_status)().unwrap_or(JobStatus::Failed);
        Some(OutputPiece::Eof(OutputEnd { eof: true, status }))
    }

    /// Hands `piece` out again next (a caller that took it but cannot use it yet).
    pub fn put_back(&mut self, piece: OutputPiece) {
        self.peeked = Some(piece);
    }

    /// The next line, then one `Eof`, then `None`.
    pub async fn next(&mut self) -> Option<OutputItem> {
        Some(match self.next_piece(1).await? {
            OutputPiece::Lines(run) => OutputItem::Line(run.line(0)),
            OutputPiece::Gap(gap) => OutputItem::Gap(gap),
            OutputPiece::Replayed(end) => OutputItem::Replayed(end),
            OutputPiece::Eof(end) => OutputItem::Eof(end),
        })
    }

    /// Every line ready now (at least one, waiting for it) up to about `max_bytes` of JSON, then one `Eof`,
    /// then `None`: what a batched reader gets per notification.
    pub async fn next_batch(&mut self, max_bytes: usize) -> Option<OutputBatchItem> {
        let first = match self.next_piece(usize::MAX).await? {
            OutputPiece::Lines(run) => run,
            OutputPiece::Gap(gap) => return Some(OutputBatchItem::Gap(gap)),
            OutputPiece::Replayed(end) => return Some(OutputBatchItem::Replayed(end)),
            OutputPiece::Eof(end) => return Some(OutputBatchItem::Eof(end)),
        };
        let mut bytes = 0;
        let mut lines = Vec::new();
        let mut run = first;
        loop {
            let mut n = 0;
            while n < run.len() && (lines.is_empty() || bytes < max_bytes) {
                bytes += run.json(n).len();
                lines.push(run.line(n));
                n += 1;
            }
            if n < run.len() {
                // The rest waits for the next batch.
                run.from += n;
                self.peeked = Some(OutputPiece::Lines(run));
                break;
            }
            if bytes >= max_bytes {
                break;
            }
            match self.next_ready(usize::MAX) {
                Some(OutputPiece::Lines(next)) => run = next,
                Some(mark) => {
                    self.peeked = Some(mark);
                    break;
                }
                None => break,
            }
        }
        Some(OutputBatchItem::Lines { lines })
    }

    /// The next run of lines or gap that can be had without waiting: from what was received, the file,
    /// or the hub.
    fn next_ready(&mut self, max_lines: usize) -> Option<OutputPiece> {
        loop {
            if let Some(run) = self.pending.front_mut() {
                run.skip_before(self.cursor);
                if run.is_empty() {
                    self.pending.pop_front();
                    continue;
                }
                let first = run.seq(0);
                if first > self.cursor {
                    let gap = OutputGap {
                        gap: true,
                        missed: first - self.cursor,
                        next_seq: first,
                    };
                    self.cursor = first;
                    // Where the storage cap dropped lines, the file's own notice says so.
                    if !is_truncation_notice(run.json(0)) {
                        return Some(OutputPiece::Gap(gap));
                    }
                }
                let taken = run.take_contiguous(self.cursor, max_lines);
                self.cursor = taken.seq(taken.len() - 1) + 1;
                return Some(OutputPiece::Lines(taken));
            }
            if self.from_file {
                match self.tail.read_batch() {
                    Ok(Some(lines)) => {
                        if !lines.is_empty() {
                            self.pending.push_back(LineRun::whole(Arc::new(lines)));
                        }
                        continue;
                    }
                    Ok(None) => self.from_file = false,
                    Err(e) => {
                        self.from_file = false;
                        tracing::warn!(path = %self.tail.path.display(), error = %e, "cannot read job output");
                    }
                }
            }
            // The file has nothing before the held batch: what lies between is a gap.
            if let Some(batch) = self.held.take() {
                self.pending.push_back(LineRun::whole(batch));
                continue;
            }
            let received = self.live.as_mut()?.try_recv();
            if received == Err(HubMiss::Empty) {
                return None;
            }
            self.take(received);
        }
    }

    /// Files what the hub gave: contiguous lines to deliver, or a reason to read the file again.
    fn take(&mut self, received: Result<OutputBatch, HubMiss>) {
        match received {
            // Contiguous with what was delivered: straight from the hub.
            Ok(batch) if batch.first_seq().is_none_or(|seq| seq <= self.cursor) => {
                self.pending.push_back(LineRun::whole(batch));
            }
            // Beyond the cursor: the file may have what lies between.
            Ok(batch) => {
                self.held = Some(batch);
                self.from_file = true;
            }
            Err(HubMiss::Lagged(_)) => self.from_file = true,
            // Every line reached the file before the hub closed: a reader that has not had them all looks
            // there once more (one that has would only scan the file it already got from the hub).
            Err(HubMiss::Closed) => {
                let through = self.live.as_ref().and_then(HubReader::published_through);
                self.live = None;
                self.from_file = through.is_none_or(|last| self.cursor <= last);
            }
            Err(HubMiss::Empty) => {}
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
        let mut batch = SerializedLines::default();
        for l in lines {
            batch.push_line(l).unwrap();
        }
        Arc::new(batch)
    }

    fn stream(path: &std::path::Path, from: u64, hub: Option<&OutputHub>) -> JobOutputStream {
        JobOutputStream::new(
            path.to_path_buf(),
            from,
            hub.map(OutputHub::subscribe),
            Box::new(|| Some(JobStatus::Completed)),
        )
    }

    /// Every item until the end: line seqs, gaps as `(missed, next)`, and the final status.
    async fn collect(
        stream: &mut JobOutputStream,
    ) -> (Vec<u64>, Vec<(u64, u64)>, Option<JobStatus>) {
        let (mut seqs, mut gaps) = (Vec::new(), Vec::new());
        while let Some(item) = stream.next().await {
            match item {
                OutputItem::Line(l) => seqs.push(l.seq),
                OutputItem::Gap(gap) => gaps.push((gap.missed, gap.next_seq)),
                OutputItem::Replayed(_) => {}
                OutputItem::Eof(end) => return (seqs, gaps, Some(end.status)),
            }
        }
        (seqs, gaps, None)
    }

    #[test]
    fn a_serialized_line_is_the_line_as_json() {
        let original = line(42);
        let serialized = SerializedLine::new(&original).unwrap();
        assert_eq!(serialized.json(), serde_json::to_string(&original).unwrap());
        assert_eq!(serialized.parse().unwrap(), original);
        let item = serde_json::to_string(&OutputItem::Line(serialized.clone())).unwrap();
        assert_eq!(item, serialized.json());
    }

    #[tokio::test]
    async fn file_lines_of_every_layout_read_as_todays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let written = serde_json::to_string(&line(6)).unwrap();
        std::fs::write(
            &path,
            format!(
                "{}\n{}\n{}\n{}\n{}\n",
                // Another key order than the pump's: read and written anew.
                r#"{"chunk":"c","type":"stdout","timestamp":"2025-01-01T00:00:00Z","seq":5}"#,
                // The pump's: kept as it is.
                written,
                // The layout before protocol 2.
                r#"{"seq":7,"ts":"2025-01-01T00:00:00Z","type":"stdout","text":"old"}"#,
                // Not lines: skipped.
                r#"{"seq":"8"}"#,
                r#"{"seq":8,"timestamp":"2025-01-01T00:00:00Z","type":"stdout","chunk":"#,
            ),
        )
        .unwrap();
        let mut stream = stream(&path, 0, None);
        // Lines 0..5 are not in the file: the stream says so first.
        assert!(matches!(
            stream.next().await,
            Some(OutputItem::Gap(OutputGap {
                gap: true,
                missed: 5,
                next_seq: 5
            }))
        ));
        let mut seen = Vec::new();
        while let Some(OutputItem::Line(l)) = stream.next().await {
            seen.push(l);
        }
        assert_eq!(seen.iter().map(|l| l.seq).collect::<Vec<_>>(), [5, 6, 7]);
        assert_eq!(seen[0].parse().unwrap().chunk, "c");
        assert_eq!(seen[1].json(), written);
        assert_eq!(seen[2].parse().unwrap().chunk, "old");
        assert!(seen[2].json().starts_with(r#"{"seq":7,"timestamp":"#));
    }

    #[tokio::test]
    async fn lines_longer_than_a_read_block_replay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let mut long = line(1);
        long.chunk = "y".repeat(3 * REPLAY_BLOCK + 5);
        append(&path, &[line(0), long.clone(), line(2)]);
        let mut stream = stream(&path, 0, None);
        let mut seen = Vec::new();
        while let Some(OutputItem::Line(l)) = stream.next().await {
            seen.push(l.parse().unwrap());
        }
        let seqs: Vec<u64> = seen.iter().map(|l| l.seq).collect();
        assert_eq!(seqs, [0, 1, 2]);
        assert_eq!(seen[1].chunk, long.chunk);
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
        let mut stream = stream(&path, 2, None);
        assert_eq!(
            collect(&mut stream).await,
            (vec![2, 3, 4], vec![], Some(JobStatus::Completed))
        );
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_capped_file_replays_with_its_notice_where_lines_were_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let mut lines: Vec<OutputLine> = (0..3).map(line).collect();
        // The storage cap's notice takes the seq of the last dropped line (3..=7 dropped).
        let mut notice = line(7);
        notice.kind = "output_truncated".into();
        lines.push(notice);
        lines.extend((8..10).map(line));
        append(&path, &lines);
        let mut stream = stream(&path, 0, None);
        // The notice says what was dropped: no gap item besides.
        assert_eq!(
            collect(&mut stream).await,
            (vec![0, 1, 2, 7, 8, 9], vec![], Some(JobStatus::Completed))
        );
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
        let mut stream = stream(&path, 1, None);
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
        let mut stream = stream(&path, 0, Some(&hub));
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
        append(&path, &[line(2)]);
        hub.publish(batch(&[line(2)])).await;
        drop(hub);
        assert_eq!(
            collect(&mut stream).await,
            (vec![1, 2], vec![], Some(JobStatus::Completed))
        );
    }

    #[tokio::test]
    async fn a_reader_behind_what_the_file_kept_is_told_the_gap_once_and_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let hub = OutputHub::with_reader_wait(Duration::ZERO);
        // The file kept the head (0..2); lines 2..40 went to the tail, and the hub only has the newest.
        append(&path, &[line(0), line(1)]);
        let mut stream = stream(&path, 0, Some(&hub));
        for seq in 2..40 {
            hub.publish(batch(&[line(seq)])).await;
        }
        drop(hub);
        let (seqs, gaps, status) = collect(&mut stream).await;
        let kept_from = 40 - HUB_WINDOW as u64;
        assert_eq!(gaps, vec![(kept_from - 2, kept_from)]);
        let mut expected = vec![0, 1];
        expected.extend(kept_from..40);
        assert_eq!(seqs, expected);
        assert_eq!(status, Some(JobStatus::Completed));
    }

    #[tokio::test]
    async fn a_batch_holds_every_ready_line_up_to_its_size_and_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let hub = OutputHub::new();
        let history: Vec<OutputLine> = (0..3).map(line).collect();
        append(&path, &history);
        let mut stream = stream(&path, 1, Some(&hub));
        let live: Vec<OutputLine> = (3..6).map(line).collect();
        append(&path, &live);
        hub.publish(batch(&live)).await;
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
        hub.publish(batch(&more)).await;
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
        hub.publish(batch(&[line(9)])).await;
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
            lines: vec![SerializedLine::new(&zero).unwrap()],
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
        let hub = OutputHub::with_reader_wait(Duration::ZERO);
        // Lines 0..3 written and published before the reader subscribes.
        let history: Vec<OutputLine> = (0..3).map(line).collect();
        append(&path, &history);
        hub.publish(batch(&history)).await;
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
            hub.publish(batch(&lines)).await;
        }
        drop(hub);
        let (seqs, gaps, status) = collect(&mut stream).await;
        assert_eq!(seqs, (0..2000).collect::<Vec<_>>());
        assert!(gaps.is_empty());
        assert_eq!(status, Some(JobStatus::Failed));
    }

    #[tokio::test]
    async fn a_reader_that_keeps_up_takes_lines_from_the_hub_not_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let hub = OutputHub::new();
        let mut stream = stream(&path, 0, Some(&hub));
        let labelled = |seq: u64, copy: &str| {
            let mut l = line(seq);
            l.chunk = copy.into();
            l
        };
        append(&path, &[labelled(0, "file")]);
        hub.publish(batch(&[labelled(0, "hub")])).await;
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
        // Caught up: live lines come from the hub without a read of the file per line.
        for seq in 1..3 {
            append(&path, &[labelled(seq, "file")]);
            hub.publish(batch(&[labelled(seq, "hub")])).await;
            let Some(OutputItem::Line(l)) = stream.next().await else {
                panic!("no line {seq}");
            };
            assert_eq!((l.seq, l.parse().unwrap().chunk.as_str()), (seq, "hub"));
        }
    }

    #[tokio::test]
    async fn the_pump_waits_for_a_reader_that_reads_so_it_misses_nothing_the_file_did_not_keep() {
        // Nothing is in the file (all of it went past the cap): only the hub can give these lines.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let hub = OutputHub::with_reader_wait(Duration::from_secs(30));
        let mut stream = stream(&path, 0, Some(&hub));
        assert!(matches!(stream.next().await, Some(OutputItem::Replayed(_))));
        let reader = tokio::spawn(async move {
            let mut seqs = Vec::new();
            while let Some(item) = stream.next().await {
                match item {
                    OutputItem::Line(l) => seqs.push(l.seq),
                    OutputItem::Eof(_) => break,
                    other => panic!("unexpected {other:?}"),
                }
                // A reader slower than the pump.
                tokio::task::yield_now().await;
            }
            seqs
        });
        for seq in 0..(HUB_WINDOW as u64 * 20) {
            hub.publish(batch(&[line(seq)])).await;
        }
        drop(hub);
        let seqs = reader.await.unwrap();
        assert_eq!(seqs, (0..HUB_WINDOW as u64 * 20).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_reader_that_does_not_read_holds_the_pump_one_wait_then_is_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let wait = Duration::from_millis(500);
        let hub = OutputHub::with_reader_wait(wait);
        let mut stream = stream(&path, 0, Some(&hub));
        // At the live edge: from now on the pump waits for it.
        assert!(matches!(stream.next().await, Some(OutputItem::Replayed(_))));
        let started = tokio::time::Instant::now();
        for seq in 0..(HUB_WINDOW as u64 * 4) {
            hub.publish(batch(&[line(seq)])).await;
        }
        let took = started.elapsed();
        assert!(took >= wait, "the pump waited for the reader ({took:?})");
        assert!(
            took < wait * 3,
            "only once, then the reader was let go ({took:?})"
        );
        // Memory stays bounded: the hub keeps at most its window.
        assert!(hub.publisher.shared.lock().ring.len() <= HUB_WINDOW);
        drop(hub);
        let (seqs, gaps, _) = collect(&mut stream).await;
        let total = HUB_WINDOW as u64 * 4;
        assert_eq!(
            gaps,
            vec![(total - HUB_WINDOW as u64, total - HUB_WINDOW as u64)]
        );
        assert_eq!(
            seqs,
            ((total - HUB_WINDOW as u64)..total).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn a_stalled_reader_pins_at_most_the_windows_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let hub = OutputHub::with_reader_wait(Duration::from_millis(10));
        let mut stream = stream(&path, 0, Some(&hub));
        // At the live edge: held for, then it reads no more.
        assert!(matches!(stream.next().await, Some(OutputItem::Replayed(_))));
        let mut big = line(0);
        big.chunk = "z".repeat(1024 * 1024);
        for seq in 0..32 {
            big.seq = seq;
            hub.publish(batch(std::slice::from_ref(&big))).await;
        }
        let state = hub.publisher.shared.lock();
        assert!(state.ring.len() < 32, "{} batches kept", state.ring.len());
        assert!(
            state.ring_bytes <= HUB_WINDOW_BYTES + 2 * 1024 * 1024,
            "{} bytes kept",
            state.ring_bytes
        );
    }

    #[tokio::test]
    async fn a_reader_that_had_every_line_from_the_hub_does_not_read_the_file_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let hub = OutputHub::new();
        let mut stream = stream(&path, 0, Some(&hub));
        assert!(matches!(stream.next().await, Some(OutputItem::Replayed(_))));
        hub.publish(batch(&[line(0), line(1), line(2)])).await;
        for seq in 0..3 {
            assert!(matches!(stream.next().await, Some(OutputItem::Line(l)) if l.seq == seq));
        }
        // A line only the file has, after everything published: a reader that scanned the file at the
        // end would deliver it.
        append(&path, &[line(0), line(1), line(2), line(9)]);
        drop(hub);
        assert_eq!(
            collect(&mut stream).await,
            (vec![], vec![], Some(JobStatus::Completed))
        );
    }
}
