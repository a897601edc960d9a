//! `jobs/index.tsv`: the job store's start-up accelerator.
//!
//! A header line [`HEADER`], then one line per record version, appended after every record write:
//! `<id> TAB <status> TAB <created_at in ns since the epoch> TAB <finished_at in ns, or -> TAB <origin: h
//! (herdctl wrote the record first) or d> TAB <inode of <id>.yaml> TAB <usage, or -> TAB <agent> LF`, where
//! usage is `<cost in USD>,<input>,<output>,<cache creation input>,<cache read input tokens>` (what the
//! job's `usage` adds to totals). The agent comes last because it may hold a tab. Later lines win. It is hand-parsed tab-separated text rather than JSON
//! because start-up reads 100,000 of these lines and every microsecond per line shows. A journal of an
//! older version (another header) is rebuilt from the records once.
//!
//! Why it is safe to trust: every record rewrite creates a new inode (temp file + rename), so a line
//! whose inode equals the one `readdir` reports for `<id>.yaml` describes exactly the file on disk.
//! Anything else — no line, another inode, a torn or unparsable line, a missing or unknown header —
//! sends the store back to the YAML file, and the journal is rebuilt. The record files stay the source
//! of truth, which is also why appends need no fsync. Limitation: a record edited *in place* by hand
//! keeps its inode and is not re-read at start-up; reading it later reports it if it no longer parses.

use chrono::{DateTime, Utc};

use crate::job::{JobStatus, UsageTotals};

/// First line of the journal; a file with another first line is rebuilt. v2 added the finish time and
/// the origin (what retention needs), v3 the usage (what cost totals and budgets need).
pub(crate) const HEADER: &str = "herdctld job index v3\n";

/// One journal line, borrowing from the journal bytes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JournalEntry<'a> {
    pub id: &'a str,
    pub status: JobStatus,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// herdctl wrote the record first.
    pub herdctl: bool,
    pub inode: u64,
    /// What the record's `usage` adds to totals (`jobs` is 1).
    pub usage: Option<UsageTotals>,
    pub agent: &'a str,
}

/// Appends the line for one record version to `out`. Returns false (writing nothing) for what the
/// format cannot hold — a time beyond the nanosecond range (after 2262), an agent name with a line
/// break: such a record is not covered and is read from its YAML at start-up instead.
pub(crate) fn push_line(out: &mut Vec<u8>, entry: &JournalEntry<'_>) -> bool {
    let Some(created) = entry.created_at.timestamp_nanos_opt() else {
        return false;
    };
    let finished = match entry.finished_at.map(|at| at.timestamp_nanos_opt()) {
        None => "-".to_owned(),
        Some(Some(nanos)) => nanos.to_string(),
        Some(None) => return false,
    };
    if entry.agent.contains('\n') {
        return false;
    }
    let origin = if entry.herdctl { 'h' } else { 'd' };
    // `{}` of an f64 is the shortest text that parses back to the same number.
    let usage = match &entry.usage {
        None => "-".to_owned(),
        Some(u) => format!(
            "{},{},{},{},{}",
            u.cost_usd,
            u.input_tokens,
            u.output_tokens,
            u.cache_creation_input_tokens,
            u.cache_read_input_tokens
        ),
    };
    let line = format!(
        "{}\t{}\t{created}\t{finished}\t{origin}\t{}\t{usage}\t{}\n",
        entry.id,
        entry.status.as_str(),
        entry.inode,
        entry.agent
    );
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
    let mut fields = line.splitn(8, '\t');
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
    let finished_at = match fields.next()? {
        "-" => None,
        nanos => Some(DateTime::from_timestamp_nanos(nanos.parse().ok()?)),
    };
    let herdctl = match fields.next()? {
        "h" => true,
        "d" => false,
        _ => return None,
    };
    let inode = fields.next()?.parse().ok()?;
    let usage = match fields.next()? {
        "-" => None,
        text => Some(parse_usage(text)?),
    };
    let agent = fields.next()?;
    Some(JournalEntry {
        id,
        status,
        created_at,
        finished_at,
        herdctl,
        inode,
        usage,
        agent,
    })
}

fn parse_usage(text: &str) -> Option<UsageTotals> {
    let mut numbers = text.split(',');
    let cost_usd: f64 = numbers.next()?.parse().ok()?;
    let mut count = || numbers.next()?.parse::<u64>().ok();
    let usage = UsageTotals {
        jobs: 1,
        cost_usd,
        input_tokens: count()?,
        output_tokens: count()?,
        cache_creation_input_tokens: count()?,
        cache_read_input_tokens: count()?,
    };
    // What `UsageTotals::of` never makes is a line someone else wrote: read the record instead.
    (numbers.next().is_none() && cost_usd.is_finite() && cost_usd >= 0.0).then_some(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(lines: &[u8]) -> Vec<u8> {
        [HEADER.as_bytes(), lines].concat()
    }

    fn entry<'a>(
        id: &'a str,
        status: JobStatus,
        created: DateTime<Utc>,
        agent: &'a str,
    ) -> JournalEntry<'a> {
        JournalEntry {
            id,
            status,
            created_at: created,
            finished_at: None,
            herdctl: false,
            inode: 1,
            usage: None,
            agent,
        }
    }

    #[test]
    fn lines_round_trip_in_order() {
        let created: DateTime<Utc> = "2025-01-01T00:00:00.123456789Z".parse().unwrap();
        let finished: DateTime<Utc> = "2025-01-01T00:01:00.5Z".parse().unwrap();
        let mut lines = Vec::new();
        let id = "job-2025-01-01-abc123";
        let running = JournalEntry {
            inode: 7,
            ..entry(id, JobStatus::Running, created, "a")
        };
        let completed = JournalEntry {
            finished_at: Some(finished),
            herdctl: true,
            inode: 8,
            usage: Some(UsageTotals {
                jobs: 1,
                cost_usd: 0.1 + 0.2,
                input_tokens: 1,
                output_tokens: 2,
                cache_creation_input_tokens: 3,
                cache_read_input_tokens: u64::MAX,
            }),
            ..entry(id, JobStatus::Completed, created, "sub.agent\twith tab")
        };
        assert!(push_line(&mut lines, &running));
        assert!(push_line(&mut lines, &completed));
        let bytes = journal(&lines);
        let parsed = parse(&bytes);
        assert_eq!(parsed.lines, 2);
        assert!(!parsed.damaged);
        assert_eq!(parsed.entries, vec![running, completed]);
    }

    #[test]
    fn torn_and_garbage_lines_mark_the_journal_damaged() {
        let created: DateTime<Utc> = "2025-01-01T00:00:00Z".parse().unwrap();
        let line = entry("job-2025-01-01-abc123", JobStatus::Failed, created, "a");
        let mut lines = b"garbage\n".to_vec();
        push_line(&mut lines, &line);
        let bytes = journal(&lines);
        let parsed = parse(&bytes);
        assert_eq!(
            (parsed.entries.len(), parsed.lines, parsed.damaged),
            (1, 2, true)
        );

        let mut torn = Vec::new();
        push_line(&mut torn, &line);
        torn.extend_from_slice(b"job-2025-01-01-zzz");
        let bytes = journal(&torn);
        let parsed = parse(&bytes);
        assert_eq!(
            (parsed.entries.len(), parsed.lines, parsed.damaged),
            (1, 1, true)
        );
    }

    #[test]
    fn a_usage_field_that_is_not_ours_marks_the_journal_damaged() {
        for usage in [
            "1,2,3,4",
            "1,2,3,4,5,6",
            "-1,0,0,0,0",
            "NaN,0,0,0,0",
            "x,0,0,0,0",
        ] {
            let line = format!("job-2025-01-01-abc123\tcompleted\t1\t2\td\t7\t{usage}\ta\n");
            let bytes = journal(line.as_bytes());
            let parsed = parse(&bytes);
            assert!(parsed.damaged && parsed.entries.is_empty(), "{usage}");
        }
    }

    #[test]
    fn a_missing_or_foreign_header_means_rebuild() {
        assert!(parse(b"").damaged);
        assert!(
            parse(b"herdctld job index v1\n").damaged,
            "an older version"
        );
        assert!(parse(b"herdctld job index v2\n").damaged, "without usage");
        assert!(!parse(HEADER.as_bytes()).damaged);
    }

    #[test]
    fn what_the_format_cannot_hold_is_not_journaled() {
        let far: DateTime<Utc> = "3000-01-01T00:00:00Z".parse().unwrap();
        let now: DateTime<Utc> = "2025-01-01T00:00:00Z".parse().unwrap();
        let mut bytes = Vec::new();
        assert!(!push_line(
            &mut bytes,
            &entry("job-3000-01-01-abc123", JobStatus::Failed, far, "a")
        ));
        assert!(!push_line(
            &mut bytes,
            &JournalEntry {
                finished_at: Some(far),
                ..entry("job-2025-01-01-abc123", JobStatus::Failed, now, "a")
            }
        ));
        assert!(!push_line(
            &mut bytes,
            &entry("job-2025-01-01-abc123", JobStatus::Failed, now, "a\nb")
        ));
        assert!(bytes.is_empty());
    }
}
