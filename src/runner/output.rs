//! Bounded reading of a child's output: line splitting with a per-line cap, and the per-job output cap that
//! keeps the head and the tail and drops the middle. Never blocks the runtime (async reads) and never holds
//! more than one capped line per stream plus the configured tail.

use std::collections::VecDeque;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Size limits for one job's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// Longest line kept; the rest of a longer line is dropped and the line is marked `truncated`.
    pub max_line_bytes: usize,
    /// Total bytes of lines delivered per job. Beyond it the first half (head) and the last half (tail) are
    /// kept, the middle is dropped and replaced by one `output_truncated` event.
    pub max_output_bytes: usize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            max_line_bytes: 1024 * 1024,
            max_output_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One line read from a stream, without its newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub bytes: Vec<u8>,
    /// The line was longer than the cap and was cut.
    pub truncated: bool,
}

impl Line {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The line as text, reusing its bytes when they are valid UTF-8.
    pub(crate) fn into_text(self) -> String {
        String::from_utf8(self.bytes)
            .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
    }
}

const READ_CHUNK: usize = 64 * 1024;

/// Splits a byte stream into lines of at most `max_line_bytes`. Memory is bounded by the cap plus one read chunk,
/// whatever the input (no newline at all, binary data).
pub(crate) struct LineReader<R> {
    reader: R,
    max_line_bytes: usize,
    chunk: Box<[u8]>,
    /// Unconsumed bytes of `chunk`: `chunk[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub(crate) fn new(reader: R, max_line_bytes: usize) -> Self {
        LineReader {
            reader,
            max_line_bytes: max_line_bytes.max(1),
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// The next line, or `None` at end of stream. A final line without a newline is returned too. Read errors end
    /// the stream (the pipe is gone; there is nothing more to read).
    pub(crate) async fn next_line(&mut self) -> Option<Line> {
        let mut line = Vec::new();
        let mut truncated = false;
        loop {
            if self.start == self.end {
                if self.eof {
                    return (!line.is_empty() || truncated).then_some(Line {
                        bytes: line,
                        truncated,
                    });
                }
                match self.reader.read(&mut self.chunk).await {
                    Ok(0) | Err(_) => {
                        self.eof = true;
                        continue;
                    }
                    Ok(n) => {
                        self.start = 0;
                        self.end = n;
                    }
                }
            }
            let available = &self.chunk[self.start..self.end];
            let (piece, found_newline) = match memchr::memchr(b'\n', available) {
                Some(at) => (&available[..at], true),
                None => (available, false),
            };
            let room = self.max_line_bytes.saturating_sub(line.len());
            if piece.len() > room {
                truncated = true;
            }
            line.extend_from_slice(&piece[..piece.len().min(room)]);
            self.start += piece.len() + usize::from(found_newline);
            if found_newline {
                return Some(Line {
                    bytes: line,
                    truncated,
                });
            }
        }
    }
}

/// Decides which lines of a job are delivered under `max_output_bytes`: the head goes out at once; once the head
/// budget is spent, lines are held in a tail window of the same size (oldest dropped), released at the end after
/// a truncation notice. Each line is tagged with a `T` (its stream).
///
/// The tail is packed: its bytes in one buffer of at most the tail budget, plus a small record per line. Held as
/// one allocation per line it took about 2.5 times its size (allocator and bookkeeping), and it may be tens of
/// megabytes.
pub(crate) struct OutputCap<T> {
    head_budget: usize,
    tail_budget: usize,
    head_used: usize,
    tail: PackedLines<T>,
    /// Bytes of the tail counted against its budget: its lines plus one newline each.
    tail_used: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
}

/// What was dropped from the middle of a job's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dropped {
    pub lines: u64,
    pub bytes: u64,
}

/// Lines in order, their bytes back to back.
pub(crate) struct PackedLines<T> {
    bytes: VecDeque<u8>,
    lines: VecDeque<HeldLine<T>>,
}

struct HeldLine<T> {
    tag: T,
    len: usize,
    truncated: bool,
}

impl<T> PackedLines<T> {
    fn push(&mut self, tag: T, line: Line) {
        self.bytes.extend(line.bytes.iter());
        self.lines.push_back(HeldLine {
            tag,
            len: line.bytes.len(),
            truncated: line.truncated,
        });
    }

    fn pop(&mut self) -> Option<(T, Line)> {
        let held = self.lines.pop_front()?;
        let bytes: Vec<u8> = self.bytes.drain(..held.len).collect();
        Some((
            held.tag,
            Line {
                bytes,
                truncated: held.truncated,
            },
        ))
    }

    /// Drops the oldest line; returns its size with its newline.
    fn drop_oldest(&mut self) -> Option<usize> {
        let held = self.lines.pop_front()?;
        self.bytes.drain(..held.len);
        Some(held.len + 1)
    }
}

impl<T> Iterator for PackedLines<T> {
    type Item = (T, Line);

    fn next(&mut self) -> Option<(T, Line)> {
        self.pop()
    }
}

impl<T> OutputCap<T> {
    pub(crate) fn new(max_output_bytes: usize) -> Self {
        let head_budget = max_output_bytes / 2;
        OutputCap {
            head_budget,
            tail_budget: max_output_bytes - head_budget,
            head_used: 0,
            tail: PackedLines {
                bytes: VecDeque::new(),
                lines: VecDeque::new(),
            },
            tail_used: 0,
            dropped_lines: 0,
            dropped_bytes: 0,
        }
    }

    /// Offers a line; returns it if it is to be delivered now.
    pub(crate) fn admit(&mut self, tag: T, line: Line) -> Option<(T, Line)> {
        let size = line.bytes.len() + 1;
        if self.tail.lines.is_empty() && self.head_used + size <= self.head_budget {
            self.head_used += size;
            return Some((tag, line));
        }
        if self.tail.lines.is_empty() {
            // Once, at the size it will need: the buffer then never grows, so never copies itself, and a ring
            // that wraps within it touches no more memory than the budget.
            self.tail.bytes.reserve_exact(self.tail_budget);
        }
        // Room first, so the buffer never holds more than the budget.
        while self.tail_used + size > self.tail_budget {
            let Some(dropped) = self.tail.drop_oldest() else {
                break;
            };
            self.tail_used -= dropped;
            self.count_dropped(dropped);
        }
        if size > self.tail_budget {
            self.count_dropped(size);
        } else {
            self.tail_used += size;
            self.tail.push(tag, line);
        }
        None
    }

    fn count_dropped(&mut self, size: usize) {
        self.dropped_lines += 1;
        self.dropped_bytes += size as u64;
    }

    /// Ends the stream: what was dropped (if anything) and the held tail, in order.
    pub(crate) fn finish(self) -> (Option<Dropped>, PackedLines<T>) {
        let dropped = (self.dropped_lines > 0).then_some(Dropped {
            lines: self.dropped_lines,
            bytes: self.dropped_bytes,
        });
        (dropped, self.tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8], cap: usize) -> Vec<Line> {
        let mut reader = LineReader::new(input, cap);
        let mut lines = Vec::new();
        while let Some(line) = reader.next_line().await {
            lines.push(line);
        }
        lines
    }

    fn line(text: &str, truncated: bool) -> Line {
        Line {
            bytes: text.as_bytes().to_vec(),
            truncated,
        }
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_an_unterminated_last_line() {
        let lines = lines_of(b"one\n\ntwo\nthree", 100).await;
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
        let lines = lines_of(&input, 10).await;
        assert_eq!(lines, vec![line("xxxxxxxxxx", true), line("after", false)]);
    }

    #[tokio::test]
    async fn binary_flood_without_newline_is_one_capped_line_and_lossy_text() {
        let input = vec![0xffu8; 5 * READ_CHUNK];
        let lines = lines_of(&input, 4).await;
        assert_eq!(lines.len(), 1);
        assert!(lines[0].truncated);
        assert_eq!(lines[0].text(), "\u{fffd}".repeat(4));
    }

    fn numbered(n: u32) -> Line {
        // 3 bytes + newline: 4 bytes against the budget.
        line(&format!("{n:03}"), false)
    }

    #[test]
    fn output_cap_keeps_head_and_tail_and_counts_the_middle() {
        let mut cap = OutputCap::new(20);
        let mut delivered = Vec::new();
        for i in 0..10u32 {
            if let Some((tag, _)) = cap.admit(i, numbered(i)) {
                delivered.push(tag);
            }
        }
        // Head budget 10 → items 0 and 1; tail budget 10 → the last two items; 6 dropped.
        assert_eq!(delivered, vec![0, 1]);
        let (dropped, tail) = cap.finish();
        assert_eq!(
            dropped,
            Some(Dropped {
                lines: 6,
                bytes: 24
            })
        );
        let tail: Vec<(u32, Line)> = tail.collect();
        assert_eq!(tail, vec![(8, numbered(8)), (9, numbered(9))]);
    }

    #[test]
    fn output_cap_tail_keeps_line_bytes_and_marks_and_never_exceeds_its_budget() {
        let mut cap = OutputCap::new(2 * 1000);
        assert!(cap.admit('h', line(&"h".repeat(998), false)).is_some());
        for n in 0..500u32 {
            let text = format!("{n}-{}", "é".repeat(n as usize % 7));
            assert!(cap.admit('t', line(&text, n % 3 == 0)).is_none());
            assert!(cap.tail.bytes.len() <= 1000);
        }
        // A line longer than the whole tail budget empties the window and is dropped itself.
        assert!(cap.admit('x', line(&"x".repeat(2000), false)).is_none());
        let text = "last line".to_string();
        assert!(cap.admit('t', line(&text, true)).is_none());
        let (dropped, tail) = cap.finish();
        assert!(dropped.is_some_and(|d| d.lines == 501));
        assert_eq!(tail.collect::<Vec<_>>(), vec![('t', line(&text, true))]);

        // The tail is the longest run of newest lines that fits, bytes and marks intact.
        let lines: Vec<Line> = (0..100u32)
            .map(|n| line(&format!("{n}-{}", "é".repeat(n as usize % 7)), n % 3 == 0))
            .collect();
        let mut cap = OutputCap::new(2 * 100);
        for (n, l) in lines.iter().enumerate() {
            cap.admit(n, l.clone());
        }
        let mut fits = 0;
        let mut used = 0;
        for l in lines.iter().rev() {
            if used + l.bytes.len() + 1 > 100 {
                break;
            }
            used += l.bytes.len() + 1;
            fits += 1;
        }
        let expected: Vec<(usize, Line)> = lines.into_iter().enumerate().skip(100 - fits).collect();
        let (_, tail) = cap.finish();
        assert_eq!(tail.collect::<Vec<_>>(), expected);
    }

    #[test]
    fn output_cap_under_the_limit_delivers_everything() {
        let mut cap = OutputCap::new(100);
        assert_eq!(cap.admit("a", numbered(1)), Some(("a", numbered(1))));
        let (dropped, mut tail) = cap.finish();
        assert_eq!(dropped, None);
        assert!(tail.next().is_none());
    }
}
