//! `jobs/index.jsonl`: the job store's start-up accelerator. Each line is a compact summary of one
//! record version, `{"id","agent","status","created","ino"}` (`created` in nanoseconds since the
//! epoch; `ino` the inode of the `<id>.yaml` it describes), appended after every record write. Later
//! lines win. A rewrite creates a new inode, so a line whose `ino` matches the inode `readdir` reports
//! for `<id>.yaml` describes exactly the file on disk; anything else (no line, another inode, a line
//! torn by a crash) sends the store back to the YAML file. The record files stay the source of truth
//! and the journal can always be rebuilt from them. Appends need no fsync for the same reason.

use std::borrow::Cow;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::job::JobStatus;

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct JournalEntry<'a> {
    /// Borrowed from the journal bytes; job ids never need JSON escapes.
    pub id: &'a str,
    #[serde(borrow)]
    pub agent: Cow<'a, str>,
    pub status: JobStatus,
    /// `created_at` in nanoseconds since the Unix epoch.
    pub created: i64,
    pub ino: u64,
}

impl JournalEntry<'_> {
    pub fn created_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.created)
    }
}

/// Appends the line for one record version to `out`. Returns false (writing nothing) when
/// `created_at` lies outside the nanosecond range (after 2262): such a record is simply not covered
/// by the journal and is read from its YAML at start-up.
pub(crate) fn push_line(
    out: &mut Vec<u8>,
    id: &str,
    agent: &str,
    status: JobStatus,
    created_at: DateTime<Utc>,
    ino: u64,
) -> bool {
    let Some(created) = created_at.timestamp_nanos_opt() else {
        return false;
    };
    let entry = JournalEntry {
        id,
        agent: Cow::Borrowed(agent),
        status,
        created,
        ino,
    };
    // Serializing strings, numbers and a unit enum into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, &entry).is_err() {
        return false;
    }
    out.push(b'\n');
    true
}

/// What a journal file says, keyed by job id (the last line per id wins).
pub(crate) struct ParsedJournal<'a> {
    pub entries: HashMap<&'a str, JournalEntry<'a>>,
    /// Complete lines read, valid or not (for compaction decisions).
    pub lines: usize,
    /// Lines that did not parse, including a torn last line.
    pub invalid: usize,
}

pub(crate) fn parse(bytes: &[u8]) -> ParsedJournal<'_> {
    let mut entries: HashMap<&str, JournalEntry<'_>> = HashMap::new();
    let mut lines = 0;
    let mut invalid = 0;
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some(newline) = rest.iter().position(|byte| *byte == b'\n') else {
            invalid += 1; // torn by a crash during an append
            break;
        };
        let line = &rest[..newline];
        rest = &rest[newline + 1..];
        lines += 1;
        match serde_json::from_slice::<JournalEntry<'_>>(line) {
            Ok(entry) => {
                entries.insert(entry.id, entry);
            }
            Err(_) => invalid += 1,
        }
    }
    ParsedJournal {
        entries,
        lines,
        invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_later_lines_win() {
        let created: DateTime<Utc> = "2025-01-01T00:00:00.123456789Z".parse().unwrap();
        let mut bytes = Vec::new();
        let id = "job-2025-01-01-abc123";
        assert!(push_line(&mut bytes, id, "a", JobStatus::Running, created, 7));
        assert!(push_line(&mut bytes, id, "a", JobStatus::Completed, created, 8));
        let parsed = parse(&bytes);
        assert_eq!(parsed.lines, 2);
        assert_eq!(parsed.invalid, 0);
        let entry = &parsed.entries[id];
        assert_eq!(entry.status, JobStatus::Completed);
        assert_eq!(entry.ino, 8);
        assert_eq!(entry.created_at(), created);
    }

    #[test]
    fn torn_and_garbage_lines_are_counted_invalid() {
        let created: DateTime<Utc> = "2025-01-01T00:00:00Z".parse().unwrap();
        let mut bytes = b"garbage\n".to_vec();
        push_line(
            &mut bytes,
            "job-2025-01-01-abc123",
            "a",
            JobStatus::Failed,
            created,
            1,
        );
        bytes.extend_from_slice(br#"{"id":"job-2025-01-01-zzz"#);
        let parsed = parse(&bytes);
        assert_eq!(parsed.entries.len(), 1);
        assert_eq!(parsed.lines, 2);
        assert_eq!(parsed.invalid, 2);
    }

    #[test]
    fn unrepresentable_times_are_not_journaled() {
        let far: DateTime<Utc> = "3000-01-01T00:00:00Z".parse().unwrap();
        let mut bytes = Vec::new();
        assert!(!push_line(
            &mut bytes,
            "job-3000-01-01-abc123",
            "a",
            JobStatus::Failed,
            far,
            1
        ));
        assert!(bytes.is_empty());
    }
}
