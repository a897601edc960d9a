//! Job output files (`jobs/<id>.jsonl`): one [`OutputLine`] per line, appended.
//!
//! Files herdctl wrote hold its layout instead, `{"type":…,…,"timestamp":…}` without a `seq`: readers
//! number those lines 0, 1, 2… in file order ([`herdctl_output_line`]) so they stream and page like ours.
//!
//! Only newline-terminated lines count: a last line without `\n` is either torn by a crash or still
//! being written, and is skipped by readers. Opening a writer cuts such a torn tail off first, so
//! new lines never glue onto it, and finds the last seq already written so a resumed job continues
//! after it. Blank and unparsable lines are skipped (the latter logged). The writer assigns nothing:
//! seq numbers come from the caller. One writer per job at a time: a second writer opened while the
//! first has flushed half a line would cut that line off as torn.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::StateError;
use crate::job::{OutputLine, SerializedLines};

/// How far back from the end the first look for the last line reaches; doubled until a line is found.
const TAIL_WINDOW: u64 = 64 * 1024;

/// Buffered appender of one job's output lines, under the job's storage cap.
///
/// The cap (`max_output_mb`) bounds what is *stored*, not what readers see: the pump hands every line to
/// live readers whatever is kept. Within the cap, the first half of the bytes (the head) goes to the file;
/// after that, lines go to two tail segments beside it (`<file>.tail-0`/`-1`, each a quarter of the cap),
/// written in turn, the older one emptied when the newer is full. [`OutputWriter::finish`] appends the kept
/// tail to the file after one `output_truncated` line that says how many lines were dropped between (it
/// takes the seq of the last of them, so seqs in the file still increase). So the file ends up with the
/// head and at least a quarter of the cap of tail (Claude's `result` is the last line), and a job's output
/// never costs memory beyond one batch, whatever its size. A daemon that dies before `finish` leaves the
/// segments; [`join_tail`] (run when the file is opened again, and at recovery) joins them then.
#[derive(Debug)]
pub struct OutputWriter {
    path: PathBuf,
    writer: LineFile,
    last_seq: Option<u64>,
    cap: Option<StoredCap>,
}

/// A file of whole lines, written through a buffer. A write that fails can leave part of a line in the file
/// (a write larger than the buffer goes to the file at once, and stops where the disk filled up): the next
/// write ends that line first, so that the fragment stays a line of its own, which readers skip, rather than
/// spoiling the next line by joining it.
#[derive(Debug)]
struct LineFile {
    file: BufWriter<File>,
    torn: bool,
}

impl LineFile {
    fn new(file: File) -> LineFile {
        LineFile {
            file: BufWriter::with_capacity(64 * 1024, file),
            torn: false,
        }
    }

    /// Appends `bytes`, whole lines.
    fn write_lines(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.untorn()?;
        self.file.write_all(bytes).inspect_err(|_| self.torn = true)
    }

    /// The buffered file, a line a failed write left unfinished ended.
    fn untorn(&mut self) -> io::Result<&mut BufWriter<File>> {
        if self.torn {
            self.file.write_all(b"\n")?;
            self.torn = false;
        }
        Ok(&mut self.file)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The storage cap's bookkeeping.
#[derive(Debug)]
struct StoredCap {
    head_budget: u64,
    head_used: u64,
    /// The seq of the first line that did not fit in the head; every later line goes to the tail too.
    tail_from: Option<u64>,
    segment_budget: u64,
    /// The segment being written, and the one before it.
    current: Option<Segment>,
    previous: Option<Segment>,
    dropped_bytes: u64,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: LineFile,
    first_seq: u64,
    bytes: u64,
}

/// What the storage cap dropped from the middle of a job's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub lines: u64,
    /// `None` when not known (segments lost with a crash).
    pub bytes: Option<u64>,
}

/// The path of a job output file's `n`-th tail segment.
fn segment_path(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tail-{n}"));
    PathBuf::from(name)
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn create_segment(path: PathBuf, first_seq: u64) -> Result<Segment, StateError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_error("create output tail segment", &path))?;
    Ok(Segment {
        path,
        file: LineFile::new(file),
        first_seq,
        bytes: 0,
    })
}

impl StoredCap {
    fn new(max_bytes: u64) -> StoredCap {
        let head_budget = max_bytes / 2;
        StoredCap {
            head_budget,
            head_used: 0,
            tail_from: None,
            segment_budget: (max_bytes - head_budget) / 2,
            current: None,
            previous: None,
            dropped_bytes: 0,
        }
    }

    /// Drops the previous segment's lines and makes room for a new current one, returning the path it
    /// may reuse.
    fn rotate(&mut self) -> Result<Option<PathBuf>, StateError> {
        if let Some(current) = self.current.as_mut() {
            // Its lines are copied as they are at the end: a fragment a failed write left is ended here.
            // Done first, so that a failure leaves both segments as they were.
            current
                .file
                .untorn()
                .and_then(|file| file.flush())
                .map_err(io_error("write output tail segment", &current.path))?;
        }
        let freed = self.previous.take().map(|previous| {
            self.dropped_bytes += previous.bytes;
            previous.path
        });
        self.previous = self.current.take();
        Ok(freed)
    }

    /// Writes lines `from..to` of `lines` (all bound for the tail).
    fn append_tail(
        &mut self,
        output: &Path,
        lines: &SerializedLines,
        from: usize,
        to: usize,
    ) -> Result<(), StateError> {
        let mut run_start = from;
        // Bytes of lines `run_start..index`, not yet written to the current segment.
        let mut run_bytes = 0;
        for index in from..to {
            let size = lines.json(index).len() as u64 + 1;
            let fits = self
                .current
                .as_ref()
                .is_some_and(|segment| segment.bytes + run_bytes + size <= self.segment_budget);
            if fits {
                run_bytes += size;
                continue;
            }
            self.write_current(lines, run_start, index)?;
            run_start = index;
            run_bytes = size;
            if size > self.segment_budget {
                // Too large for any segment: it and every tail line before it are dropped, so that what is
                // dropped stays one run in the middle.
                for segment in [self.previous.take(), self.current.take()]
                    .into_iter()
                    .flatten()
                {
                    self.dropped_bytes += segment.bytes;
                    drop(segment.file);
                    remove_if_present(&segment.path)?;
                }
                self.dropped_bytes += size;
                run_start = index + 1;
                run_bytes = 0;
                continue;
            }
            let reuse = self.rotate()?;
            let used = self.previous.as_ref().map(|segment| segment.path.clone());
            let path = reuse.unwrap_or_else(|| {
                let first = segment_path(output, 0);
                if used.as_ref() == Some(&first) {
                    segment_path(output, 1)
                } else {
                    first
                }
            });
            self.current = Some(create_segment(path, lines.seq(index))?);
        }
        self.write_current(lines, run_start, to)
    }

    fn write_current(
        &mut self,
        lines: &SerializedLines,
        from: usize,
        to: usize,
    ) -> Result<(), StateError> {
        let Some(segment) = self.current.as_mut() else {
            return Ok(());
        };
        let bytes = lines.stored(from, to);
        segment
            .file
            .write_lines(bytes)
            .map_err(io_error("write output tail segment", &segment.path))?;
        segment.bytes += bytes.len() as u64;
        Ok(())
    }
}

impl OutputWriter {
    /// Opens (creating) `path` for appending, cutting off a torn last line and joining the tail a dead
    /// daemon left. `max_bytes` is the storage cap; `None` keeps everything.
    pub(crate) fn open(path: PathBuf, max_bytes: Option<u64>) -> Result<OutputWriter, StateError> {
        join_tail(&path)?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error("open output file", &path))?;
        let len = file
            .metadata()
            .map_err(io_error("stat output file", &path))?
            .len();
        let complete_len =
            complete_prefix_len(&file, len).map_err(io_error("read output file", &path))?;
        if complete_len < len {
            file.set_len(complete_len)
                .map_err(io_error("cut the torn last line of", &path))?;
        }
        let last_seq =
            last_seq_before(&file, complete_len).map_err(io_error("read output file", &path))?;
        let mut cap = max_bytes.map(StoredCap::new);
        if let Some(cap) = cap.as_mut() {
            // A job that runs again continues its head where it stopped.
            cap.head_used = complete_len;
        }
        Ok(OutputWriter {
            writer: LineFile::new(file),
            path,
            last_seq,
            cap,
        })
    }

    /// The seq of the last line in the file or appended since; `None` when there is none.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Appends one line (buffered; see [`OutputWriter::flush`]).
    pub fn append(&mut self, line: &OutputLine) -> Result<(), StateError> {
        let mut lines = SerializedLines::default();
        lines.push_line(line).map_err(|e| StateError::Io {
            action: "serialise output line for",
            path: self.path.clone(),
            source: e.into(),
        })?;
        self.append_lines(&lines)
    }

    /// Appends lines serialised elsewhere (the pump also hands the same bytes to readers): one write for
    /// the head's part and one for the tail's, whatever their number.
    pub fn append_lines(&mut self, lines: &SerializedLines) -> Result<(), StateError> {
        let Some(last) = lines.last_seq() else {
            return Ok(());
        };
        let head_end = match self.cap.as_mut() {
            None => lines.len(),
            Some(cap) if cap.tail_from.is_some() => 0,
            Some(cap) => {
                let mut end = 0;
                while end < lines.len() {
                    let size = lines.json(end).len() as u64 + 1;
                    if cap.head_used + size > cap.head_budget {
                        cap.tail_from = Some(lines.seq(end));
                        break;
                    }
                    cap.head_used += size;
                    end += 1;
                }
                end
            }
        };
        self.writer
            .write_lines(lines.stored(0, head_end))
            .map_err(io_error("append to output file", &self.path))?;
        if let Some(cap) = self.cap.as_mut() {
            cap.append_tail(&self.path, lines, head_end, lines.len())?;
        }
        self.last_seq = Some(last);
        Ok(())
    }

    /// Hands buffered lines to the kernel, making them visible to readers.
    pub fn flush(&mut self) -> Result<(), StateError> {
        self.writer
            .flush()
            .map_err(io_error("flush output file", &self.path))?;
        if let Some(segment) = self.cap.as_mut().and_then(|cap| cap.current.as_mut()) {
            segment
                .file
                .flush()
                .map_err(io_error("write output tail segment", &segment.path))?;
        }
        Ok(())
    }

    /// Ends the output: the kept tail joins the file, after the notice of what was dropped. Returns what
    /// was dropped, if anything.
    pub fn finish(mut self) -> Result<Option<Dropped>, StateError> {
        self.flush()?;
        let Some(cap) = self.cap.take() else {
            return Ok(None);
        };
        let Some(tail_from) = cap.tail_from else {
            return Ok(None);
        };
        let Some(last_seq) = self.last_seq else {
            return Ok(None);
        };
        let segments: Vec<Segment> = [cap.previous, cap.current].into_iter().flatten().collect();
        let kept_from = segments
            .first()
            .map_or(last_seq + 1, |segment| segment.first_seq);
        let dropped = (kept_from > tail_from).then_some(Dropped {
            lines: kept_from - tail_from,
            bytes: Some(cap.dropped_bytes),
        });
        let paths: Vec<PathBuf> = segments.into_iter().map(|segment| segment.path).collect();
        let writer = self
            .writer
            .untorn()
            .map_err(io_error("append to output file", &self.path))?;
        append_tail_to(&self.path, writer, dropped, kept_from, &paths)?;
        Ok(dropped)
    }
}

/// Appends the notice of `dropped` (seq `kept_from - 1`) and the lines of the tail `segments` (oldest
/// first) to `writer`, then deletes the segments.
fn append_tail_to(
    path: &Path,
    writer: &mut BufWriter<File>,
    dropped: Option<Dropped>,
    kept_from: u64,
    segments: &[PathBuf],
) -> Result<(), StateError> {
    if let Some(dropped) = dropped {
        write_notice(path, writer, dropped, kept_from - 1)?;
    }
    for segment in segments {
        let mut file =
            File::open(segment).map_err(io_error("read output tail segment", segment))?;
        io::copy(&mut file, writer).map_err(io_error("append to output file", path))?;
    }
    writer
        .flush()
        .map_err(io_error("flush output file", path))?;
    for segment in segments {
        remove_if_present(segment)?;
    }
    Ok(())
}

/// Writes the `output_truncated` line (seq `seq`) that stands for the `dropped` lines.
fn write_notice(
    path: &Path,
    writer: &mut BufWriter<File>,
    dropped: Dropped,
    seq: u64,
) -> Result<(), StateError> {
    let mut data = Map::new();
    data.insert("dropped_lines".to_owned(), dropped.lines.into());
    if let Some(bytes) = dropped.bytes {
        data.insert("dropped_bytes".to_owned(), bytes.into());
    }
    let notice =
        OutputLine::structured(seq, chrono::Utc::now(), "output_truncated".to_owned(), data);
    let mut line = SerializedLines::default();
    line.push_line(&notice).map_err(|e| StateError::Io {
        action: "serialise output line for",
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    writer
        .write_all(line.as_bytes())
        .map_err(io_error("append to output file", path))
}

fn remove_if_present(path: &Path) -> Result<(), StateError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("remove output tail segment", path)(e)),
    }
}

/// The tail segments of a job's output file (both names, whether or not they exist).
pub(crate) fn tail_segments(path: &Path) -> [PathBuf; 2] {
    [segment_path(path, 0), segment_path(path, 1)]
}

/// Joins the tail segments a daemon that died mid-job left beside `path`: their whole lines after the
/// file's last one, in seq order, after a notice of the lines missing between (their bytes are not known
/// any more); then deletes them. Nothing to do when there are none. True when lines were missing.
pub(crate) fn join_tail(path: &Path) -> Result<bool, StateError> {
    let mut segments: Vec<(u64, PathBuf)> = Vec::new();
    for segment in tail_segments(path) {
        match File::open(&segment) {
            Ok(file) => {
                let first =
                    first_seq(file).map_err(io_error("read output tail segment", &segment))?;
                segments.push((first.unwrap_or(u64::MAX), segment));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("read output tail segment", &segment)(e)),
        }
    }
    if segments.is_empty() {
        return Ok(false);
    }
    segments.sort();
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("open output file", path))?;
    let len = file
        .metadata()
        .map_err(io_error("stat output file", path))?
        .len();
    let complete_len =
        complete_prefix_len(&file, len).map_err(io_error("read output file", path))?;
    if complete_len < len {
        file.set_len(complete_len)
            .map_err(io_error("cut the torn last line of", path))?;
    }
    let last = last_seq_before(&file, complete_len).map_err(io_error("read output file", path))?;
    let mut next = last.map_or(0, |seq| seq + 1);
    let mut writer = BufWriter::with_capacity(64 * 1024, file);
    let mut line = Vec::new();
    let mut missing = false;
    for (_, segment) in &segments {
        let read_error = io_error("read output tail segment", segment);
        let file = File::open(segment).map_err(read_error)?;
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(io_error("read output tail segment", segment))?;
            // A last line without its newline was torn by the crash.
            if read == 0 || line.last() != Some(&b'\n') {
                break;
            }
            let Ok(SeqOnly { seq }) = serde_json::from_slice::<SeqOnly>(&line) else {
                continue;
            };
            // Lines a join before the crash already copied are skipped.
            if seq < next {
                continue;
            }
            if seq > next {
                let dropped = Dropped {
                    lines: seq - next,
                    bytes: None,
                };
                write_notice(path, &mut writer, dropped, seq - 1)?;
                missing = true;
            }
            writer
                .write_all(&line)
                .map_err(io_error("append to output file", path))?;
            next = seq + 1;
        }
    }
    writer
        .flush()
        .map_err(io_error("flush output file", path))?;
    for (_, segment) in &segments {
        remove_if_present(segment)?;
    }
    Ok(missing)
}

/// The seq of the first line of a file, if it is a whole line with one.
fn first_seq(file: File) -> io::Result<Option<u64>> {
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Ok(None);
    }
    Ok(serde_json::from_slice::<SeqOnly>(&line).ok().map(|l| l.seq))
}

#[derive(Deserialize)]
struct SeqOnly {
    seq: u64,
}

/// A line of an output file that carries its `seq`: herdctld's layout, or the one herdctld wrote before
/// protocol 2 (`{"seq", "ts", "type", …the message's fields}`, text lines `{text, truncated?}`), read as
/// today's line. `Err` says why the line is neither.
pub fn seq_output_line(text: &[u8]) -> Result<OutputLine, String> {
    let current = match serde_json::from_slice::<OutputLine>(text) {
        Ok(line) => return Ok(line),
        Err(error) => error.to_string(),
    };
    let Ok(Value::Object(data)) = serde_json::from_slice(text) else {
        return Err(current);
    };
    earlier_layout_line(data).ok_or(current)
}

fn earlier_layout_line(mut data: Map<String, Value>) -> Option<OutputLine> {
    let seq = data.remove("seq")?.as_u64()?;
    let timestamp = data.remove("ts")?.as_str()?.parse().ok()?;
    let Value::String(kind) = data.remove("type")? else {
        return None;
    };
    if matches!(kind.as_str(), "stdout" | "stderr") {
        if let Some(Value::String(text)) = data.get("text") {
            return Some(OutputLine {
                seq,
                timestamp,
                chunk: text.clone(),
                message: None,
                truncated: data.get("truncated") == Some(&Value::Bool(true)),
                kind,
            });
        }
    }
    // The earlier writer moved a message's own `seq`, `ts` or `type` aside, and dropped a `type` equal
    // to the line's: the message is put back as the runtime printed it.
    for key in ["seq", "ts", "type"] {
        if let Some(value) = data.remove(&format!("_{key}")) {
            data.insert(key.to_owned(), value);
        }
    }
    if kind != "output_truncated" {
        data.entry("type")
            .or_insert_with(|| Value::String(kind.clone()));
    }
    Some(OutputLine::structured(seq, timestamp, kind, data))
}

/// A line in herdctl's layout (`type` and `timestamp` beside the message's fields, no `seq`) as the line
/// numbered `seq`; `None` when it is not such a line.
pub fn herdctl_output_line(text: &[u8], seq: u64) -> Option<OutputLine> {
    let Value::Object(mut data) = serde_json::from_slice(text).ok()? else {
        return None;
    };
    if data.contains_key("seq") {
        return None;
    }
    let Value::String(kind) = data.remove("type")? else {
        return None;
    };
    let timestamp = data.remove("timestamp")?.as_str()?.parse().ok()?;
    Some(OutputLine::structured(seq, timestamp, kind, data))
}

/// Lines of `path` with `seq >= from_seq`, at most `limit`. A missing file is no output.
pub fn read_output(
    path: &Path,
    from_seq: u64,
    limit: Option<usize>,
) -> Result<Vec<OutputLine>, StateError> {
    let page = read_output_page(
        path,
        from_seq,
        PageLimit {
            lines: limit.unwrap_or(usize::MAX),
            bytes: u64::MAX,
        },
    )?;
    Ok(page.lines)
}

/// How much one page of output may hold.
#[derive(Debug, Clone, Copy)]
pub struct PageLimit {
    pub lines: usize,
    /// Bytes of the lines as stored; a page holds at least one line even when that line is larger.
    pub bytes: u64,
}

/// A page of output lines and where the next page begins.
#[derive(Debug)]
pub struct OutputPage {
    pub lines: Vec<OutputLine>,
    /// The seq of the first line that did not fit; `None` when the page reaches the end of the output.
    pub next_seq: Option<u64>,
}

/// The lines of `path` with `seq >= from_seq` that fit in `limit`. A missing file is no output.
pub fn read_output_page(
    path: &Path,
    from_seq: u64,
    limit: PageLimit,
) -> Result<OutputPage, StateError> {
    let io_error = |source: io::Error| StateError::Io {
        action: "read output file",
        path: path.to_path_buf(),
        source,
    };
    let mut page = OutputPage {
        lines: Vec::new(),
        next_seq: None,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(page),
        Err(error) => return Err(io_error(error)),
    };
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut buffer = Vec::new();
    let mut line_number = 0usize;
    let mut herdctl_lines = 0u64;
    let mut page_bytes = 0u64;
    loop {
        buffer.clear();
        let read = reader.read_until(b'\n', &mut buffer).map_err(io_error)?;
        if read == 0 || buffer.last() != Some(&b'\n') {
            break;
        }
        line_number += 1;
        if buffer.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // Most skipped lines only need their seq, which is cheaper than the whole object.
        let parsed = match serde_json::from_slice::<SeqOnly>(&buffer) {
            Ok(SeqOnly { seq }) if seq < from_seq => continue,
            Ok(_) => seq_output_line(&buffer),
            Err(error) => match herdctl_output_line(&buffer, herdctl_lines) {
                Some(line) => {
                    herdctl_lines += 1;
                    if line.seq < from_seq {
                        continue;
                    }
                    Ok(line)
                }
                None => Err(error.to_string()),
            },
        };
        let line = match parsed {
            Ok(line) => line,
            Err(error) => {
                tracing::warn!(path = %path.display(), line_number, %error, "skipping unparsable output line");
                continue;
            }
        };
        let line_bytes = buffer.len() as u64;
        let full = page.lines.len() >= limit.lines
            || (!page.lines.is_empty() && page_bytes + line_bytes > limit.bytes);
        if full {
            page.next_seq = Some(line.seq);
            break;
        }
        page_bytes += line_bytes;
        page.lines.push(line);
    }
    Ok(page)
}

/// The seq of the last complete, parsable line of `path`; `None` when there is none.
pub(crate) fn last_seq(path: &Path) -> Result<Option<u64>, StateError> {
    let io_error = |source: io::Error| StateError::Io {
        action: "read output file",
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error(error)),
    };
    let len = file.metadata().map_err(io_error)?.len();
    let complete_len = complete_prefix_len(&file, len).map_err(io_error)?;
    last_seq_before(&file, complete_len).map_err(io_error)
}

/// Length of the prefix of the first `len` bytes that ends with `\n` (0 if there is no `\n`).
fn complete_prefix_len(file: &File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let mut chunk = vec![0u8; 8192];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let window = &mut chunk[..(end - start) as usize];
        file.read_exact_at(window, start)?;
        if let Some(newline) = window.iter().rposition(|byte| *byte == b'\n') {
            return Ok(start + newline as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The seq of the last parsable line among the complete lines in `[0, end)`.
fn last_seq_before(file: &File, end: u64) -> io::Result<Option<u64>> {
    let mut window = TAIL_WINDOW;
    loop {
        let start = end.saturating_sub(window);
        let mut bytes = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut bytes, start)?;
        // Unless the window reaches the start of the file, its first line may be cut.
        let whole_lines = if start == 0 {
            &bytes[..]
        } else {
            match bytes.iter().position(|byte| *byte == b'\n') {
                Some(newline) => &bytes[newline + 1..],
                None => &[],
            }
        };
        let found = whole_lines
            .split(|byte| *byte == b'\n')
            .rev()
            .find_map(|line| serde_json::from_slice::<SeqOnly>(line).ok());
        if let Some(SeqOnly { seq }) = found {
            return Ok(Some(seq));
        }
        if start == 0 {
            return Ok(None);
        }
        window = window.saturating_mul(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn herdctl_lines_are_numbered_in_file_order_and_paged_like_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        fs::write(
            &path,
            concat!(
                r#"{"type":"system","content":"CLI session initialized","subtype":"init","timestamp":"2026-12-02T20:48:10.532Z"}"#,
                "\n\n",
                r#"{"type":"assistant","content":"Done","timestamp":"2026-12-02T20:48:11.042Z"}"#,
                "\nnot json\n",
                r#"{"type":"tool_result","success":true,"result":"Done","timestamp":"2026-12-02T20:48:11.542Z"}"#,
                "\n",
            ),
        )
        .unwrap();
        let all = read_output(&path, 0, None).unwrap();
        let seqs: Vec<u64> = all.iter().map(|l| l.seq).collect();
        assert_eq!(seqs, [0, 1, 2]);
        assert_eq!(all[0].kind, "system");
        let init = all[0].message.as_ref().unwrap();
        assert_eq!(init["subtype"], "init");
        assert!(!init.contains_key("timestamp"));
        assert_eq!(all[0].chunk, "CLI session initialized");
        assert_eq!(all[2].chunk, "← Done");
        assert_eq!(
            all[1].timestamp,
            "2026-12-02T20:48:11.042Z"
                .parse::<chrono::DateTime<chrono::Utc>>()
                .unwrap()
        );
        let page = read_output(&path, 1, Some(1)).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].kind, "assistant");
        assert!(herdctl_output_line(
            br#"{"seq":1,"type":"x","timestamp":"2026-12-02T20:48:11Z"}"#,
            0
        )
        .is_none());
        assert!(herdctl_output_line(br#"{"type":"x"}"#, 0).is_none());
    }

    fn line(seq: u64, text: &str) -> OutputLine {
        OutputLine {
            seq,
            timestamp: "2025-01-01T00:00:00Z".parse().unwrap(),
            kind: "stdout".into(),
            chunk: text.into(),
            message: None,
            truncated: false,
        }
    }

    #[test]
    fn lines_of_the_layout_before_protocol_2_read_as_todays() {
        let stdout = seq_output_line(
            br#"{"seq":0,"ts":"2026-12-01T10:00:00Z","type":"stdout","text":"hi","truncated":true}"#,
        )
        .unwrap();
        assert_eq!(
            (stdout.seq, stdout.kind.as_str(), stdout.chunk.as_str()),
            (0, "stdout", "hi")
        );
        assert!(stdout.truncated && stdout.message.is_none());
        let result = seq_output_line(
            br#"{"seq":1,"ts":"2026-12-01T10:00:01Z","type":"result","result":"done","_seq":9}"#,
        )
        .unwrap();
        assert_eq!(result.chunk, "done");
        assert_eq!(
            serde_json::Value::Object(result.message.unwrap()),
            serde_json::json!({"type": "result", "result": "done", "seq": 9})
        );
        let notice = seq_output_line(
            br#"{"seq":2,"ts":"2026-12-01T10:00:02Z","type":"output_truncated","dropped_lines":4,"dropped_bytes":80}"#,
        )
        .unwrap();
        assert_eq!(
            notice.chunk,
            "… 4 lines (80 bytes) of output were dropped here …"
        );
        assert!(seq_output_line(br#"{"seq":3}"#).is_err());
    }

    #[test]
    fn appended_lines_read_back_from_a_seq_with_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let mut writer = OutputWriter::open(path.clone(), None).unwrap();
        assert_eq!(writer.last_seq(), None);
        for seq in 1..=10 {
            writer.append(&line(seq, &format!("line {seq}"))).unwrap();
        }
        writer.flush().unwrap();
        assert_eq!(writer.last_seq(), Some(10));

        // A line serialised by the caller reads back like any other.
        let eleventh = line(11, "line 11");
        let mut serialized = SerializedLines::default();
        serialized.push_line(&eleventh).unwrap();
        writer.append_lines(&serialized).unwrap();
        writer.flush().unwrap();
        assert_eq!(writer.last_seq(), Some(11));

        let all = read_output(&path, 0, None).unwrap();
        assert_eq!(all.len(), 11);
        assert_eq!(all[10], eleventh);
        assert_eq!(all[3], line(4, "line 4"));
        let page = read_output(&path, 5, Some(3)).unwrap();
        let seqs: Vec<u64> = page.iter().map(|l| l.seq).collect();
        assert_eq!(seqs, [5, 6, 7]);
        assert_eq!(last_seq(&path).unwrap(), Some(11));
    }

    #[test]
    fn missing_file_is_no_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.jsonl");
        assert!(read_output(&path, 0, None).unwrap().is_empty());
        assert_eq!(last_seq(&path).unwrap(), None);
    }

    #[test]
    fn torn_last_line_and_blank_lines_are_skipped_and_writer_resumes_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let mut text = String::new();
        for seq in 1..=3 {
            text.push_str(&serde_json::to_string(&line(seq, "x")).unwrap());
            text.push_str("\n\n");
        }
        text.push_str(r#"{"seq":4,"ts":"2025-01-01T00:00:00Z","type":"assis"#);
        fs::write(&path, &text).unwrap();

        let seqs = |lines: Vec<OutputLine>| lines.iter().map(|l| l.seq).collect::<Vec<_>>();
        assert_eq!(seqs(read_output(&path, 0, None).unwrap()), [1, 2, 3]);
        assert_eq!(last_seq(&path).unwrap(), Some(3));

        let mut writer = OutputWriter::open(path.clone(), None).unwrap();
        assert_eq!(writer.last_seq(), Some(3), "resume after the last seq");
        writer.append(&line(4, "again")).unwrap();
        writer.flush().unwrap();
        let lines = read_output(&path, 0, None).unwrap();
        assert_eq!(seqs(lines.clone()), [1, 2, 3, 4]);
        assert_eq!(lines[3], line(4, "again"), "not glued to the torn tail");
    }

    #[test]
    fn a_write_that_fails_part_way_does_not_spoil_the_next_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let mut writer = OutputWriter::open(path.clone(), None).unwrap();
        writer.append(&numbered(0)).unwrap();
        writer.flush().unwrap();
        // A batch larger than the buffer goes to the file at once; this handle refuses it, as a full disk
        // would, and a full disk would have taken its start first.
        let mut batch = SerializedLines::default();
        for seq in 1..=5000 {
            batch.push_line(&numbered(seq)).unwrap();
        }
        let refusing = BufWriter::new(File::open(&path).unwrap());
        let writable = std::mem::replace(&mut writer.writer.file, refusing);
        assert!(writer.append_lines(&batch).is_err());
        writer.writer.file = writable;
        writer
            .writer
            .file
            .get_mut()
            .write_all(&batch.as_bytes()[..100])
            .unwrap();

        writer.append(&numbered(5001)).unwrap();
        writer.finish().unwrap();
        let seqs = stored_seqs(&path);
        // The whole line the failed write got into the file stays; the fragment after it is skipped.
        assert_eq!(seqs, [0, 1, 5001]);
    }

    #[test]
    fn a_complete_but_unparsable_line_in_the_middle_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let good = |seq| serde_json::to_string(&line(seq, "x")).unwrap();
        fs::write(&path, format!("{}\nnot json\n{}\n", good(1), good(2))).unwrap();
        let lines = read_output(&path, 0, None).unwrap();
        assert_eq!(lines.iter().map(|l| l.seq).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn last_seq_finds_a_line_longer_than_the_tail_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let mut writer = OutputWriter::open(path.clone(), None).unwrap();
        writer.append(&line(1, "short")).unwrap();
        writer
            .append(&line(2, &"y".repeat(3 * TAIL_WINDOW as usize)))
            .unwrap();
        writer.flush().unwrap();
        drop(writer);
        // A torn tail longer than the window too.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&vec![b'z'; 2 * TAIL_WINDOW as usize])
            .unwrap();
        assert_eq!(last_seq(&path).unwrap(), Some(2));
        assert_eq!(OutputWriter::open(path, None).unwrap().last_seq(), Some(2));
    }

    /// Seqs of the capped-output tests start here, so that every line has the same size.
    const B: u64 = 1000;

    fn numbered(seq: u64) -> OutputLine {
        line(seq, &format!("line-{seq}"))
    }

    /// Writes lines `B + n` for `n` in `count` through a writer capped at `cap` bytes, `batch` lines per
    /// append, finishes it, and reads the file back.
    fn capped(cap: u64, count: u64, batch: usize) -> (Vec<OutputLine>, Option<Dropped>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let mut writer = OutputWriter::open(path.clone(), Some(cap)).unwrap();
        let all: Vec<u64> = (B..B + count).collect();
        for chunk in all.chunks(batch) {
            let mut lines = SerializedLines::default();
            for seq in chunk {
                lines.push_line(&numbered(*seq)).unwrap();
            }
            writer.append_lines(&lines).unwrap();
            writer.flush().unwrap();
            // Never more than the head and two tail segments on disk.
            let stored: u64 = std::iter::once(path.clone())
                .chain(tail_segments(&path))
                .filter_map(|p| fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            assert!(stored <= cap, "{stored} bytes stored under a cap of {cap}");
        }
        let dropped = writer.finish().unwrap();
        assert!(tail_segments(&path).iter().all(|p| !p.exists()));
        (read_output(&path, 0, None).unwrap(), dropped)
    }

    /// The seqs of the lines the file at `path` holds.
    fn stored_seqs(path: &Path) -> Vec<u64> {
        read_output(path, 0, None)
            .unwrap()
            .iter()
            .map(|l| l.seq)
            .collect()
    }

    /// Bytes one numbered line takes in the file.
    fn stored_size() -> u64 {
        serde_json::to_string(&numbered(B)).unwrap().len() as u64 + 1
    }

    /// A writer of `path` whose cap keeps a head of 10 lines and tail segments of 5, the lines `B..B + count`
    /// appended and flushed.
    fn small_capped_writer(path: &Path, count: u64) -> OutputWriter {
        let mut writer = OutputWriter::open(path.to_path_buf(), Some(20 * stored_size())).unwrap();
        let mut lines = SerializedLines::default();
        for seq in B..B + count {
            lines.push_line(&numbered(seq)).unwrap();
        }
        writer.append_lines(&lines).unwrap();
        writer.flush().unwrap();
        writer
    }

    #[test]
    fn a_tail_segment_a_write_failed_in_does_not_spoil_the_next_segments_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let mut writer = small_capped_writer(&path, 15);
        // The full tail segment as a write that failed part way leaves it (see the test above).
        let segment = writer.cap.as_mut().unwrap().current.as_mut().unwrap();
        segment
            .file
            .file
            .get_mut()
            .write_all(br#"{"seq":1015,"ti"#)
            .unwrap();
        segment.file.torn = true;

        // The next line starts the next segment, which is copied after this one at the end.
        writer.append(&numbered(B + 15)).unwrap();
        writer.finish().unwrap();
        let seqs = stored_seqs(&path);
        assert_eq!(seqs, (B..B + 16).collect::<Vec<_>>());
    }

    #[test]
    fn the_storage_cap_keeps_the_head_and_the_tail_with_one_notice_between() {
        let size = stored_size();
        // Head: 10 lines; each tail segment: 5 lines.
        let cap = 20 * size;
        for batch in [1, 7, 1000] {
            let (lines, dropped) = capped(cap, 100, batch);
            let seqs: Vec<u64> = lines.iter().map(|l| l.seq).collect();
            let notice = lines.iter().find(|l| l.kind == "output_truncated").unwrap();
            let kept_from = notice.seq + 1;
            // The head, the notice in place of the last dropped line, then a tail of 5 to 10 lines.
            assert_eq!(&seqs[..10], (B..B + 10).collect::<Vec<_>>());
            assert_eq!(seqs[10], kept_from - 1);
            assert_eq!(&seqs[11..], (kept_from..B + 100).collect::<Vec<_>>());
            assert!(
                (5..=10).contains(&(B + 100 - kept_from)),
                "tail of {}",
                B + 100 - kept_from
            );
            let dropped = dropped.unwrap();
            assert_eq!(dropped.lines, kept_from - (B + 10));
            assert_eq!(dropped.bytes, Some(dropped.lines * size));
            let message = notice.message.as_ref().unwrap();
            assert_eq!(message["dropped_lines"], dropped.lines);
            assert_eq!(lines.last().unwrap().chunk, format!("line-{}", B + 99));
        }
    }

    #[test]
    fn under_the_storage_cap_everything_is_kept_without_a_notice() {
        // Head and both segments just hold 20 lines.
        let (lines, dropped) = capped(20 * stored_size(), 20, 3);
        assert_eq!(dropped, None);
        assert_eq!(
            lines.iter().map(|l| l.seq).collect::<Vec<_>>(),
            (B..B + 20).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_line_larger_than_a_tail_segment_is_dropped_with_the_tail_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let size = stored_size();
        let mut writer = OutputWriter::open(path.clone(), Some(8 * size)).unwrap();
        let mut lines = SerializedLines::default();
        for seq in B..B + 6 {
            lines.push_line(&numbered(seq)).unwrap();
        }
        lines
            .push_line(&line(B + 6, &"x".repeat(10 * size as usize)))
            .unwrap();
        lines.push_line(&numbered(B + 7)).unwrap();
        writer.append_lines(&lines).unwrap();
        let dropped = writer.finish().unwrap().unwrap();
        let seqs = stored_seqs(&path);
        // Head: 4 lines; 4 and 5 were in the tail when line 6 came: all three dropped, the notice
        // takes 6's seq.
        assert_eq!(seqs, [B, B + 1, B + 2, B + 3, B + 6, B + 7]);
        assert_eq!(dropped.lines, 3);
    }

    #[test]
    fn a_tail_left_by_a_crash_is_joined_when_the_file_is_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let writer = small_capped_writer(&path, 30);
        // The daemon dies: no finish. A torn line at the end of the newest segment.
        drop(writer);
        let newest = tail_segments(&path)
            .into_iter()
            .filter(|p| p.exists())
            .max_by_key(|p| first_seq(File::open(p).unwrap()).unwrap())
            .unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(&newest)
            .unwrap()
            .write_all(br#"{"seq":1030,"ti"#)
            .unwrap();
        assert!(join_tail(&path).unwrap(), "lines between were lost");
        assert!(tail_segments(&path).iter().all(|p| !p.exists()));
        let read = read_output(&path, 0, None).unwrap();
        let seqs: Vec<u64> = read.iter().map(|l| l.seq).collect();
        // Head B..B+10, dropped B+10..B+20 (the notice takes B+19), tail B+20..B+30.
        let mut expected: Vec<u64> = (B..B + 10).collect();
        expected.extend(B + 19..B + 30);
        assert_eq!(seqs, expected);
        let notice = &read[10];
        assert_eq!(notice.kind, "output_truncated");
        // Bytes are not known after a crash: only lines.
        let message = notice.message.as_ref().unwrap();
        assert_eq!(message["dropped_lines"], 10);
        assert!(message.get("dropped_bytes").is_none());
        assert_eq!(
            notice.chunk,
            "… 10 lines (? bytes) of output were dropped here …"
        );
        // Joining again changes nothing.
        assert!(!join_tail(&path).unwrap());
        assert_eq!(read_output(&path, 0, None).unwrap(), read);
    }
}
