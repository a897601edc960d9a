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

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::StateError;
use crate::job::OutputLine;

/// How far back from the end the first look for the last line reaches; doubled until a line is found.
const TAIL_WINDOW: u64 = 64 * 1024;

/// Buffered appender of one job's output lines.
#[derive(Debug)]
pub struct OutputWriter {
    path: PathBuf,
    writer: BufWriter<File>,
    last_seq: Option<u64>,
}

impl OutputWriter {
    /// Opens (creating) `path` for appending, cutting off a torn last line.
    pub(crate) fn open(path: PathBuf) -> Result<OutputWriter, StateError> {
        let io_error = |action: &'static str, source: io::Error| StateError::Io {
            action,
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_error("open output file", e))?;
        let len = file
            .metadata()
            .map_err(|e| io_error("stat output file", e))?
            .len();
        let complete_len =
            complete_prefix_len(&file, len).map_err(|e| io_error("read output file", e))?;
        if complete_len < len {
            file.set_len(complete_len)
                .map_err(|e| io_error("cut the torn last line of", e))?;
        }
        let last_seq =
            last_seq_before(&file, complete_len).map_err(|e| io_error("read output file", e))?;
        Ok(OutputWriter {
            writer: BufWriter::with_capacity(64 * 1024, file),
            path,
            last_seq,
        })
    }

    /// The seq of the last line in the file or appended since; `None` when there is none.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Appends one line (buffered; see [`OutputWriter::flush`]).
    pub fn append(&mut self, line: &OutputLine) -> Result<(), StateError> {
        let json = serde_json::to_string(line).map_err(|e| StateError::Io {
            action: "serialise output line for",
            path: self.path.clone(),
            source: e.into(),
        })?;
        self.append_serialized(line.seq, &json)
    }

    /// Appends one line already serialised as one line of JSON (`json` holds no newline), for a caller
    /// that also sends the same text elsewhere.
    pub fn append_serialized(&mut self, seq: u64, json: &str) -> Result<(), StateError> {
        let written = self
            .writer
            .write_all(json.as_bytes())
            .and_then(|()| self.writer.write_all(b"\n"));
        written.map_err(|source| StateError::Io {
            action: "append to output file",
            path: self.path.clone(),
            source,
        })?;
        self.last_seq = Some(seq);
        Ok(())
    }

    /// Hands buffered lines to the kernel, making them visible to readers.
    pub fn flush(&mut self) -> Result<(), StateError> {
        self.writer.flush().map_err(|source| StateError::Io {
            action: "flush output file",
            path: self.path.clone(),
            source,
        })
    }
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
        let mut writer = OutputWriter::open(path.clone()).unwrap();
        assert_eq!(writer.last_seq(), None);
        for seq in 1..=10 {
            writer.append(&line(seq, &format!("line {seq}"))).unwrap();
        }
        writer.flush().unwrap();
        assert_eq!(writer.last_seq(), Some(10));

        // A line serialised by the caller reads back like any other.
        let eleventh = line(11, "line 11");
        let json = serde_json::to_string(&eleventh).unwrap();
        writer.append_serialized(11, &json).unwrap();
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

        let mut writer = OutputWriter::open(path.clone()).unwrap();
        assert_eq!(writer.last_seq(), Some(3), "resume after the last seq");
        writer.append(&line(4, "again")).unwrap();
        writer.flush().unwrap();
        let lines = read_output(&path, 0, None).unwrap();
        assert_eq!(seqs(lines.clone()), [1, 2, 3, 4]);
        assert_eq!(lines[3], line(4, "again"), "not glued to the torn tail");
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
        let mut writer = OutputWriter::open(path.clone()).unwrap();
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
        assert_eq!(OutputWriter::open(path).unwrap().last_seq(), Some(2));
    }
}
