//! Reading a child's output: each read of a pipe (up to [`READ_CHUNK`] bytes) becomes one batch of the
//! whole lines it completed, each line cut to the line-length cap. Never blocks the runtime (async reads)
//! and never holds more than one read chunk plus one capped unfinished line per stream. How much of a job's
//! output is *kept* is not decided here: the output cap applies to storage (`state::OutputWriter`), so that a
//! reader that keeps up sees every line.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Size limits for one job's output lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputLimits {
    /// Longest line kept; the rest of a longer line is dropped and the line is marked `truncated`.
    pub max_line_bytes: usize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            max_line_bytes: 1024 * 1024,
        }
    }
}

/// Bytes read from a pipe at a time: one batch of lines at most this large (plus an unfinished line carried
/// over from the previous read).
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// Lines of text read together, in order, packed in one buffer: one allocation per batch, not per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextLines {
    /// Every line followed by `\n`.
    bytes: Vec<u8>,
    /// Where each line's `\n` is in `bytes`.
    ends: Vec<usize>,
    /// The lines (by index, ascending) that were cut to the line-length cap.
    truncated: Vec<usize>,
}

impl TextLines {
    pub fn with_capacity(bytes: usize) -> TextLines {
        TextLines {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::new(),
            truncated: Vec::new(),
        }
    }

    /// Appends one line (`line` holds no `\n`).
    pub fn push(&mut self, line: &[u8], truncated: bool) {
        if truncated {
            self.truncated.push(self.ends.len());
        }
        self.bytes.extend_from_slice(line);
        self.ends.push(self.bytes.len());
        self.bytes.push(b'\n');
    }

    /// Appends `line` cut to `max` bytes (marked truncated when it was longer).
    fn push_capped(&mut self, line: &[u8], max: usize) {
        self.push(&line[..line.len().min(max)], line.len() > max);
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The `index`-th line, without its `\n`, and whether it was cut.
    pub fn line(&self, index: usize) -> (&[u8], bool) {
        let start = match index {
            0 => 0,
            _ => self.ends[index - 1] + 1,
        };
        (
            &self.bytes[start..self.ends[index]],
            self.truncated.binary_search(&index).is_ok(),
        )
    }

    /// Every line, in order, without its `\n`, and whether it was cut.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&[u8], bool)> + '_ {
        (0..self.len()).map(|index| self.line(index))
    }
}

/// Splits a byte stream into batches of lines of at most `max_line_bytes`. Memory is bounded by the cap plus
/// one read chunk, whatever the input (no newline at all, binary data).
pub(crate) struct ChunkReader<R> {
    reader: R,
    max_line_bytes: usize,
    buffer: Box<[u8]>,
    /// The start of a line that no read has finished yet, already cut to the cap.
    unfinished: Vec<u8>,
    /// The unfinished line was longer than the cap.
    unfinished_cut: bool,
    eof: bool,
}

impl<R: AsyncRead + Unpin> ChunkReader<R> {
    pub(crate) fn new(reader: R, max_line_bytes: usize) -> Self {
        ChunkReader {
            reader,
            max_line_bytes: max_line_bytes.max(1),
            buffer: vec![0; READ_CHUNK].into_boxed_slice(),
            unfinished: Vec::new(),
            unfinished_cut: false,
            eof: false,
        }
    }

    /// The lines the next reads complete (at least one), or `None` at the end of the stream. A last line
    /// without a newline comes as a batch of its own. Read errors end the stream (the pipe is gone; there is
    /// nothing more to read).
    pub(crate) async fn next_lines(&mut self) -> Option<TextLines> {
        loop {
            if self.eof {
                if self.unfinished.is_empty() && !self.unfinished_cut {
                    return None;
                }
                let mut last = TextLines::default();
                last.push(&self.unfinished, self.unfinished_cut);
                self.unfinished = Vec::new();
                self.unfinished_cut = false;
                return Some(last);
            }
            let read = match self.reader.read(&mut self.buffer).await {
                Ok(0) | Err(_) => {
                    self.eof = true;
                    continue;
                }
                Ok(n) => n,
            };
            let lines = self.split(read);
            if !lines.is_empty() {
                return Some(lines);
            }
        }
    }

    /// The lines completed by the first `read` bytes of the buffer; keeps the unfinished rest.
    fn split(&mut self, read: usize) -> TextLines {
        let data = &self.buffer[..read];
        let max = self.max_line_bytes;
        let mut lines = TextLines::with_capacity(read + self.unfinished.len());
        let mut start = 0;
        for newline in memchr::memchr_iter(b'\n', data) {
            let piece = &data[start..newline];
            if self.unfinished.is_empty() && !self.unfinished_cut {
                lines.push_capped(piece, max);
            } else {
                let cut = append_capped(&mut self.unfinished, piece, max);
                lines.push(&self.unfinished, self.unfinished_cut || cut);
                self.unfinished.clear();
                self.unfinished_cut = false;
            }
            start = newline + 1;
        }
        if start < data.len() {
            let cut = append_capped(&mut self.unfinished, &data[start..], max);
            self.unfinished_cut |= cut;
        }
        lines
    }
}

/// Appends as much of `piece` as fits under `max`; true when some of it did not fit.
fn append_capped(line: &mut Vec<u8>, piece: &[u8], max: usize) -> bool {
    let room = max.saturating_sub(line.len());
    line.extend_from_slice(&piece[..piece.len().min(room)]);
    piece.len() > room
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line of `input` read with line cap `cap`, as text and cut mark, and how many batches they came in.
    async fn lines_of(input: &[u8], cap: usize) -> (Vec<(String, bool)>, usize) {
        let mut reader = ChunkReader::new(input, cap);
        let mut lines = Vec::new();
        let mut batches = 0;
        while let Some(batch) = reader.next_lines().await {
            batches += 1;
            lines.extend(
                batch
                    .iter()
                    .map(|(line, cut)| (String::from_utf8_lossy(line).into_owned(), cut)),
            );
        }
        (lines, batches)
    }

    fn line(text: &str, truncated: bool) -> (String, bool) {
        (text.to_owned(), truncated)
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_an_unterminated_last_line() {
        let (lines, _) = lines_of(b"one\n\ntwo\nthree", 100).await;
        assert_eq!(
            lines,
            vec![
                line("one", false),
                line("", false),
                line("two", false),
                line("three", false)
            ]
        );
    }

    #[tokio::test]
    async fn caps_long_lines_and_resynchronises_at_the_next_newline() {
        let mut input = vec![b'x'; 3 * READ_CHUNK + 17];
        input.extend_from_slice(b"\nafter\n");
        let (lines, _) = lines_of(&input, 10).await;
        assert_eq!(lines, vec![line("xxxxxxxxxx", true), line("after", false)]);
        // Cut within one read too.
        let (lines, _) = lines_of(b"0123456789abc\nok\n", 10).await;
        assert_eq!(lines, vec![line("0123456789", true), line("ok", false)]);
    }

    #[tokio::test]
    async fn a_line_across_reads_is_joined_once_complete() {
        // A slice reader gives at most a buffer's worth per read: the line spans two reads.
        let mut input = b"first\n".to_vec();
        input.extend(vec![b'y'; READ_CHUNK]);
        input.extend_from_slice(b"\nlast\n");
        let (lines, batches) = lines_of(&input, 2 * READ_CHUNK).await;
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].0.len(), READ_CHUNK);
        assert!(!lines[1].1);
        assert_eq!(lines[2], line("last", false));
        assert_eq!(batches, 2, "one batch per read that completes lines");
    }

    #[tokio::test]
    async fn many_lines_of_one_read_are_one_batch() {
        let input: Vec<u8> = (0..1000)
            .flat_map(|n| format!("line {n}\n").into_bytes())
            .collect();
        let (lines, batches) = lines_of(&input, 100).await;
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[999], line("line 999", false));
        assert_eq!(batches, 1);
    }

    #[tokio::test]
    async fn binary_flood_without_newline_is_one_capped_line() {
        let input = vec![0xffu8; 5 * READ_CHUNK];
        let (lines, _) = lines_of(&input, 4).await;
        assert_eq!(lines, vec![line(&"\u{fffd}".repeat(4), true)]);
    }

    #[test]
    fn text_lines_index_their_lines_and_cut_marks() {
        let mut lines = TextLines::default();
        lines.push(b"a", false);
        lines.push(b"", true);
        lines.push(b"ccc", false);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines.line(1), (&b""[..], true));
        assert_eq!(
            lines.iter().next_back(),
            Some((&b"ccc"[..], false)),
            "lines are read from the end too"
        );
    }
}
