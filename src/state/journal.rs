//! `jobs/index.tsv`: the job store's start-up accelerator.
//!
//! A header line [`HEADER`], then one line per record version, appended after every record write:
//! `<id> TAB <status> TAB <created_at in ns since the epoch> TAB <inode of <id>.yaml> TAB <agent> LF`.
//! Later lines win. It is hand-parsed tab-separated text rather than JSON because start-up reads
//! 100,000 of these lines and every microsecond per line shows.
//!
//! Why it is safe to trust: every record rewrite creates a new inode (temp file + rename), so a line
//! whose inode equals the one `readdir` reports for `<id>.yaml` describes exactly the file on disk.
//! Anything else — no line, another inode, a torn or unparsable line, a missing or unknown header —
//! sends the store back to the YAML file, and the journal is rebuilt. The record files stay the source
//! of truth, which is also why appends need no fsync. Limitation: a record edited *in place* by hand
//! keeps its inode and is not re-read at start-up; reading it later reports it if it no longer parses.

use chrono::{DateTime, Utc};

use crate::job::JobStatus;

/// First line of the journal; a file with another first line is rebuilt.
pub(crate) const HEADER: &str = "herdctld job index v1\n";

/// One journal line, borrowing from the journal bytes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JournalEntry<'a> {
    pub id: &'a str,
    pub status: JobStatus,
    pub created_at: DateTime<Utc>,
    pub inode: u64,
    pub agent: &'a str,
}

/// Appends the line for one record version to `out`. Returns false (writing nothing) for what the
/// format cannot hold — a `created_at` beyond the nanosecond range (after 2262), an agent name with a
/// line break: such a record is not covered and is read from its YAML at start-up instead.
pub(crate) fn push_line(
    out: &mut Vec<u8>,
    id: &str,
    status: JobStatus,
    created_at: DateTime<Utc>,
    inode: u64,
    agent: &str,
) -> bool {
    let Some(created) = created_at.timestamp_nanos_opt() else {
        return false;
    };
    if agent.contains('\n') {
        return false;
    }
    let line = format!("{id}\t{}\t{created}\t{inode}\t{agent}\n", status.as_str());
    out.extend_from_slice(line.as_bytes());
    true
}

/// What a journal file says.
pub(crate) struct ParsedJournal<'a> {
    /// In file order; for an id appearing twice the later entry is the current one.
    pub entries: Vec<JournalEntry<'a>>,
    /// Complete lines after the header, valid or not (for compaction decisions).
    pub lines: usize,
    /// Whether the journal must be rebuilt: no or unknown header, unparsable or torn lines.
    pub damaged: bool,
}

pub(crate) fn parse(bytes: &[u8]) -> ParsedJournal<'_> {
    let damaged = ParsedJournal {
        entries: Vec::new(),
        lines: 0,
        damaged: true,
    };
    // One validation of the whole file, then std's (optimised) string searching per line.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return damaged;
    };
    let Some(body) = text.strip_prefix(HEADER) else {
        return damaged;
    };
    let (complete, torn) = match body.rfind('\n') {
        Some(last_newline) => (&body[..=last_newline], &body[last_newline + 1..]),
        None => ("", body),
    };
    let mut entries = Vec::with_capacity(complete.len() / 64);
    let mut lines = 0;
    let mut damaged = !torn.is_empty(); // a crash during an append
    for line in complete.split_terminator('\n') {
        lines += 1;
        match parse_line(line) {
            Some(entry) => entries.push(entry),
            None => damaged = true,
        }
    }
    ParsedJournal {
        entries,
        lines,
        damaged,
    }
}

fn parse_line(line: &str) -> Option<JournalEntry<'_>> {
    let mut fields = line.splitn(5, '\t');
    let id = fields.next()?;
    let status = match fields.next()? {
        "queued" => JobStatus::Queued,
        "running" => JobStatus::Running,
        "completed" => JobStatus::Completed,
        "failed" => JobStatus::Failed,
        "cancelled" => JobStatus::Cancelled,
        _ => return None,
    };
    let created_at = DateTime::from_timestamp_nanos(fields.next()?.parse().ok()?);
    let inode = fields.next()?.parse().ok()?;
    let agent = fields.next()?;
    Some(JournalEntry {
        id,
        status,
        created_at,
        inode,
        agent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(lines: &[u8]) -> Vec<u8> {
        [HEADER.as_bytes(), lines].concat()
    }

    #[test]
    fn lines_round_trip_in_order() {
        let created: DateTime<Utc> = "2025-01-01T00:00:00.123456789Z".parse().unwrap();
        let mut lines = Vec::new();
        let id = "job-2025-01-01-abc123";
        assert!(push_line(
            &mut lines,
            id,
            JobStatus::Running,
            created,
            7,
            "a"
        ));
        assert!(push_line(
            &mut lines,
            id,
            JobStatus::Completed,
            created,
            8,
            "sub.agent\twith tab"
        ));
        let bytes = journal(&lines);
        let parsed = parse(&bytes);
        assert_eq!(parsed.lines, 2);
        assert!(!parsed.damaged);
        assert_eq!(
            parsed.entries[1],
            JournalEntry {
                id,
                status: JobStatus::Completed,
                created_at: created,
                inode: 8,
                agent: "sub.agent\twith tab",
            }
        );
        assert_eq!(parsed.entries[0].status, JobStatus::Running);
    }

    #[test]
    fn torn_and_garbage_lines_mark_the_journal_damaged() {
        let created: DateTime<Utc> = "2025-01-01T00:00:00Z".parse().unwrap();
        let mut lines = b"garbage\n".to_vec();
        push_line(
            &mut lines,
            "job-2025-01-01-abc123",
            JobStatus::Failed,
            created,
            1,
            "a",
        );
        let bytes = journal(&lines);
        let parsed = parse(&bytes);
        assert_eq!(
            (parsed.entries.len(), parsed.lines, parsed.damaged),
            (1, 2, true)
        );

        let mut torn = Vec::new();
        push_line(
            &mut torn,
            "job-2025-01-01-abc123",
            JobStatus::Failed,
            created,
            1,
            "a",
        );
        torn.extend_from_slice(b"job-2025-01-01-zzz");
        let bytes = journal(&torn);
        let parsed = parse(&bytes);
        assert_eq!(
            (parsed.entries.len(), parsed.lines, parsed.damaged),
            (1, 1, true)
        );
    }

    #[test]
    fn a_missing_or_foreign_header_means_rebuild() {
        assert!(parse(b"").damaged);
        assert!(parse(b"herdctld job index v2\n").damaged);
        assert!(!parse(HEADER.as_bytes()).damaged);
    }

    #[test]
    fn what_the_format_cannot_hold_is_not_journaled() {
        let far: DateTime<Utc> = "3000-01-01T00:00:00Z".parse().unwrap();
        let now: DateTime<Utc> = "2025-01-01T00:00:00Z".parse().unwrap();
        let mut bytes = Vec::new();
        assert!(!push_line(
            &mut bytes,
            "job-3000-01-01-abc123",
            JobStatus::Failed,
            far,
            1,
            "a"
        ));
        assert!(!push_line(
            &mut bytes,
            "job-2025-01-01-abc123",
            JobStatus::Failed,
            now,
            1,
            "a\nb"
        ));
        assert!(bytes.is_empty());
    }
}
