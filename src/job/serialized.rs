//! Output lines serialised once: the JSON text that is both a line of the job's `.jsonl` file and the
//! `result` of a `jobOutput` notification. A batch of lines is one buffer, so that a job's pump makes one
//! allocation, one file write and one hand-off to readers per batch, not per line, and every reader copies
//! from the same bytes.

use super::OutputLine;

/// Lines serialised together, in increasing `seq`. Each line is the JSON of an [`OutputLine`] exactly as
/// `serde_json` writes it, followed by `\n` in the buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SerializedLines {
    json: Vec<u8>,
    lines: Vec<LineAt>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LineAt {
    seq: u64,
    /// Where the line's `\n` is in `json`.
    end: usize,
}

impl SerializedLines {
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The `index`-th line's seq.
    pub fn seq(&self, index: usize) -> u64 {
        self.lines[index].seq
    }

    pub fn first_seq(&self) -> Option<u64> {
        self.lines.first().map(|line| line.seq)
    }

    pub fn last_seq(&self) -> Option<u64> {
        self.lines.last().map(|line| line.seq)
    }

    /// The `index`-th line's JSON, without its `\n`.
    pub fn json(&self, index: usize) -> &[u8] {
        &self.json[self.start(index)..self.lines[index].end]
    }

    /// The `index`-th line's JSON as text.
    pub fn json_str(&self, index: usize) -> &str {
        // Only whole JSON texts (UTF-8) are ever pushed, and lines are cut at their newlines.
        std::str::from_utf8(self.json(index)).unwrap_or_default()
    }

    /// Lines `from..to` as they are stored: each followed by `\n`.
    pub fn stored(&self, from: usize, to: usize) -> &[u8] {
        if from >= to {
            return &[];
        }
        &self.json[self.start(from)..=self.lines[to - 1].end]
    }

    /// Every line as stored.
    pub fn as_bytes(&self) -> &[u8] {
        &self.json
    }

    /// The index of the first line whose seq is at least `seq` (`len()` when there is none).
    pub fn index_from_seq(&self, seq: u64) -> usize {
        self.lines.partition_point(|line| line.seq < seq)
    }

    fn start(&self, index: usize) -> usize {
        match index {
            0 => 0,
            _ => self.lines[index - 1].end + 1,
        }
    }

    fn end_line(&mut self, seq: u64) {
        self.lines.push(LineAt {
            seq,
            end: self.json.len(),
        });
        self.json.push(b'\n');
    }

    /// Lines as a job's pump stored them: `json` holds whole lines, each `{"seq":N,"timestamp":…}` followed
    /// by `\n`, seqs increasing. `Err` gives the bytes back when any line is not such a line (another
    /// layout, a blank line), for the caller to read line by line. Nothing is copied or parsed again: a
    /// replay reads the file's bytes as they are (the writer only ever appends whole lines, cutting a torn
    /// tail before it does).
    pub fn from_stored(json: Vec<u8>) -> Result<SerializedLines, Vec<u8>> {
        let mut lines = Vec::with_capacity(json.len() / 128);
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', &json) {
            let line = &json[start..end];
            let seq = match stored_line_seq(line) {
                Some(seq)
                    if line.ends_with(b"}")
                        && lines.last().is_none_or(|l: &LineAt| l.seq < seq) =>
                {
                    seq
                }
                _ => return Err(json),
            };
            lines.push(LineAt { seq, end });
            start = end + 1;
        }
        if start != json.len() {
            return Err(json);
        }
        Ok(SerializedLines { json, lines })
    }

    /// Appends a line serialised elsewhere (a file's line): `json` is one whole JSON text without a newline.
    pub fn push_json(&mut self, seq: u64, json: &[u8]) {
        self.json.extend_from_slice(json);
        self.end_line(seq);
    }

    /// Appends `line`, serialised.
    pub fn push_line(&mut self, line: &OutputLine) -> serde_json::Result<()> {
        let start = self.json.len();
        if let Err(e) = serde_json::to_writer(&mut self.json, line) {
            self.json.truncate(start);
            return Err(e);
        }
        self.end_line(line.seq);
        Ok(())
    }

    /// Appends a line of text, written as `serde_json` writes the [`OutputLine`] `{seq, timestamp, type:
    /// kind, chunk: text, truncated?}` (a test holds the two equal) without building one. `timestamp` is
    /// the JSON of the line's time ([`timestamp_json`]), made once for a whole batch; `kind` needs no
    /// escaping (`stdout`, `stderr`). Text that is not UTF-8 is read lossily, as everywhere.
    pub fn push_text(
        &mut self,
        seq: u64,
        timestamp: &[u8],
        kind: &str,
        text: &[u8],
        truncated: bool,
    ) {
        let mut digits = itoa::Buffer::new();
        self.json.extend_from_slice(br#"{"seq":"#);
        self.json.extend_from_slice(digits.format(seq).as_bytes());
        self.json.extend_from_slice(br#","timestamp":"#);
        self.json.extend_from_slice(timestamp);
        self.json.extend_from_slice(br#","type":""#);
        self.json.extend_from_slice(kind.as_bytes());
        self.json.extend_from_slice(br#"","chunk":"#);
        if needs_no_escape(text) {
            self.json.push(b'"');
            self.json.extend_from_slice(text);
            self.json.push(b'"');
        } else {
            let text = String::from_utf8_lossy(text);
            // Writing a string into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut self.json, text.as_ref());
        }
        if truncated {
            self.json.extend_from_slice(br#","truncated":true"#);
        }
        self.json.push(b'}');
        self.end_line(seq);
    }
}

/// Whether `text` is printable ASCII without `"` or `\\`: valid UTF-8 that JSON takes as it is, the
/// common line, copied without a pass through the escaper. Checked without an early exit, so that it
/// compiles to a vector loop.
fn needs_no_escape(text: &[u8]) -> bool {
    text.iter().fold(true, |plain, &b| {
        plain & (b' '..=b'~').contains(&b) & (b != b'"') & (b != b'\\')
    })
}

/// The `seq` of a line as the pump writes it (`{"seq":N,"timestamp":…`: `seq` and `timestamp` its first
/// keys); `None` for any other layout.
pub fn stored_line_seq(json: &[u8]) -> Option<u64> {
    let rest = json.strip_prefix(br#"{"seq":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || !rest[digits..].starts_with(br#","timestamp":"#) {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// The JSON of a line's `timestamp`, as `serde_json` writes it in an [`OutputLine`].
pub fn timestamp_json(timestamp: &chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    // A timestamp always serialises.
    serde_json::to_vec(timestamp).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    use super::*;

    fn text_line(seq: u64, kind: &str, chunk: &str, truncated: bool) -> OutputLine {
        OutputLine {
            seq,
            timestamp: Utc.timestamp_opt(1_765_000_000, 123_456_789).unwrap(),
            kind: kind.to_owned(),
            chunk: chunk.to_owned(),
            message: None,
            truncated,
        }
    }

    #[test]
    fn a_text_line_is_written_exactly_as_serde_writes_the_output_line() {
        let time = Utc.timestamp_opt(1_765_000_000, 123_456_789).unwrap();
        let stamp = timestamp_json(&time);
        let cases = [
            ("stdout", "plain", false),
            (
                "stderr",
                "quotes \" and \\ and \t tabs \u{1} and é ✓",
                false,
            ),
            ("stdout", "", true),
            ("stdout", "</script>\u{7f}\u{2028}", false),
        ];
        let mut lines = SerializedLines::default();
        for (seq, (kind, text, truncated)) in cases.iter().enumerate() {
            lines.push_text(seq as u64, &stamp, kind, text.as_bytes(), *truncated);
        }
        for (seq, (kind, text, truncated)) in cases.iter().enumerate() {
            let expected =
                serde_json::to_string(&text_line(seq as u64, kind, text, *truncated)).unwrap();
            assert_eq!(lines.json_str(seq), expected);
        }
    }

    #[test]
    fn text_that_is_not_utf8_is_read_lossily() {
        let mut lines = SerializedLines::default();
        lines.push_text(7, b"\"t\"", "stdout", b"a\xffb", false);
        let line: serde_json::Value = serde_json::from_slice(lines.json(0)).unwrap();
        assert_eq!(line["chunk"], json!("a\u{fffd}b"));
    }

    #[test]
    fn stored_lines_are_read_in_place_and_any_other_layout_is_given_back() {
        let mut written = SerializedLines::default();
        for seq in 4..7 {
            written
                .push_line(&text_line(seq, "stdout", "x", false))
                .unwrap();
        }
        let read = SerializedLines::from_stored(written.as_bytes().to_vec()).unwrap();
        assert_eq!(read, written);
        for other in [
            // herdctl's layout
            &b"{\"type\":\"assistant\",\"timestamp\":\"t\"}\n"[..],
            b"\n",
            // not newline-terminated, decreasing seqs, not a whole object
            br#"{"seq":1,"timestamp":"t"}"#,
            b"{\"seq\":2,\"timestamp\":\"t\"}\n{\"seq\":1,\"timestamp\":\"t\"}\n",
            b"{\"seq\":2,\"timestamp\":\"t\"\n",
        ] {
            assert_eq!(
                SerializedLines::from_stored(other.to_vec()),
                Err(other.to_vec())
            );
        }
        assert_eq!(stored_line_seq(br#"{"seq":12,"timestamp":"t"}"#), Some(12));
        assert_eq!(stored_line_seq(br#"{"seq":"12"}"#), None);
    }

    #[test]
    fn lines_are_indexed_by_position_and_seq_and_stored_newline_terminated() {
        let mut lines = SerializedLines::default();
        lines.push_json(3, br#"{"a":1}"#);
        lines
            .push_line(&text_line(5, "stdout", "x", false))
            .unwrap();
        lines.push_json(9, br#"{"c":3}"#);
        assert_eq!(lines.len(), 3);
        assert_eq!((lines.first_seq(), lines.last_seq()), (Some(3), Some(9)));
        assert_eq!(lines.seq(1), 5);
        assert_eq!(lines.json(2), br#"{"c":3}"#);
        assert_eq!(lines.stored(2, 3), b"{\"c\":3}\n");
        assert_eq!(lines.stored(1, 1), b"");
        assert_eq!(lines.as_bytes().iter().filter(|b| **b == b'\n').count(), 3);
        assert_eq!(lines.index_from_seq(0), 0);
        assert_eq!(lines.index_from_seq(4), 1);
        assert_eq!(lines.index_from_seq(9), 2);
        assert_eq!(lines.index_from_seq(10), 3);
    }
}
