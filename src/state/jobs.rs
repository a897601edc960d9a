//! The job store: records in `jobs/<id>.yaml` (source of truth), output in `jobs/<id>.jsonl`, and an
//! in-memory index so queries never rescan the directory or reparse records.
//!
//! The index holds, per job, only what queries filter and sort on (created_at, id, agent, status) and
//! the record's inode; full records are read from their YAML for the page a query returns. Start-up
//! reads one `readdir` and the `index.jsonl` journal (see [`super::journal`]) and parses only the
//! records the journal does not describe exactly, so opening 100,000 jobs takes a fraction of a second.
//! A record that does not parse is moved aside and reported; records whose file vanished are dropped.
//!
//! Sync and blocking; methods take `&mut self` to write, the caller serialises access (a mutex) and must
//! hold the state-directory lock. Must not: decide job lifecycles (crash recovery, retention policy
//! values) — it only executes them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Bound;
use std::os::unix::fs::{DirEntryExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::atomic::{atomic_write, atomic_write_with, is_temp_file_name};
use super::corrupt::{move_aside, CorruptFile};
use super::journal;
use super::output::{self, OutputWriter};
use super::StateError;
use crate::job::{Job, JobId, JobStatus, OutputLine};

/// File name of the index journal inside the jobs directory.
pub const JOURNAL_FILE: &str = "index.jsonl";

/// The journal is compacted once it holds this many lines more than twice the live jobs.
const JOURNAL_SLACK_LINES: usize = 4096;

/// Default page size of [`JobFilter`].
pub const DEFAULT_PAGE_LIMIT: usize = 50;

/// Which jobs [`JobStore::list`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFilter {
    pub agent: Option<String>,
    pub status: Option<JobStatus>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created strictly before.
    pub until: Option<DateTime<Utc>>,
    pub limit: usize,
    pub offset: usize,
}

impl Default for JobFilter {
    fn default() -> JobFilter {
        JobFilter {
            agent: None,
            status: None,
            since: None,
            until: None,
            limit: DEFAULT_PAGE_LIMIT,
            offset: 0,
        }
    }
}

/// One page of [`JobStore::list`].
#[derive(Debug)]
pub struct JobPage {
    /// Newest first by `created_at`, ties by id descending.
    pub jobs: Vec<Job>,
    /// Jobs matching the filter, ignoring limit and offset.
    pub total: usize,
    /// Records of this page that could not be read (changed outside herdctld); left out of `jobs`.
    pub unreadable: Vec<StateError>,
}

/// Number of jobs per status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct JobCounts {
    pub queued: usize,
    pub running: usize,
    pub completed: usize,
    pub failed: usize,
    pub cancelled: usize,
}

impl JobCounts {
    fn slot(&mut self, status: JobStatus) -> &mut usize {
        match status {
            JobStatus::Queued => &mut self.queued,
            JobStatus::Running => &mut self.running,
            JobStatus::Completed => &mut self.completed,
            JobStatus::Failed => &mut self.failed,
            JobStatus::Cancelled => &mut self.cancelled,
        }
    }
}

/// A problem found while opening the store; the caller reports each one (error event and log line).
#[derive(Debug)]
pub enum StoreIssue {
    /// A record that did not parse (or named another id than its file) was moved aside.
    Corrupt(CorruptFile),
    /// A record that could not be read; left in place and not indexed until the next start.
    Unreadable(StateError),
}

impl fmt::Display for StoreIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreIssue::Corrupt(corrupt) => write!(f, "job record {corrupt}"),
            StoreIssue::Unreadable(error) => {
                write!(
                    f,
                    "{error}; the job is left out of the history until it is readable"
                )
            }
        }
    }
}

/// What the index keeps per job besides its order key `(created_at, id)`.
#[derive(Debug, Clone)]
struct Summary {
    agent: Arc<str>,
    status: JobStatus,
    /// Inode of the record version this summary describes.
    inode: u64,
}

type OrderKey = (DateTime<Utc>, JobId);

/// Records and output of every job, with an in-memory index.
#[derive(Debug)]
pub struct JobStore {
    dir: PathBuf,
    journal_path: PathBuf,
    /// Opened on the first append after open or compaction.
    journal_appender: Option<File>,
    journal_lines: usize,
    /// An append failed, so the journal may miss a line: rewrite it on the next write.
    journal_needs_rewrite: bool,
    by_order: BTreeMap<OrderKey, Summary>,
    created_at_by_id: HashMap<JobId, DateTime<Utc>>,
    counts: JobCounts,
    /// Agent names shared by every summary of the same agent.
    agent_names: HashSet<Arc<str>>,
}

impl JobStore {
    /// Opens (creating) the jobs directory, removes stale temp files and builds the index.
    pub fn open(dir: &Path) -> Result<(JobStore, Vec<StoreIssue>), StateError> {
        fs::create_dir_all(dir).map_err(|source| StateError::Io {
            action: "create the jobs directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let mut store = JobStore {
            dir: dir.to_path_buf(),
            journal_path: dir.join(JOURNAL_FILE),
            journal_appender: None,
            journal_lines: 0,
            journal_needs_rewrite: false,
            by_order: BTreeMap::new(),
            created_at_by_id: HashMap::new(),
            counts: JobCounts::default(),
            agent_names: HashSet::new(),
        };
        let on_disk = store.list_records()?;
        let journal_bytes = match fs::read(&store.journal_path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(StateError::Io {
                    action: "read the job index",
                    path: store.journal_path.clone(),
                    source,
                })
            }
        };
        let journal = journal::parse(&journal_bytes);
        let mut issues = Vec::new();
        let mut journal_is_stale = journal.invalid > 0;
        let mut journal_entries_used = 0;
        for (id, inode) in on_disk {
            match journal.entries.get(id.as_str()) {
                Some(entry) if entry.ino == inode => {
                    journal_entries_used += 1;
                    let created_at = entry.created_at();
                    store.index(id, created_at, &entry.agent, entry.status, inode);
                }
                _ => {
                    journal_is_stale = true;
                    if let Some(issue) = store.index_from_record(id) {
                        issues.push(issue);
                    }
                }
            }
        }
        // Entries for files that are gone.
        journal_is_stale |= journal_entries_used < journal.entries.len();
        store.journal_lines = journal.lines;
        drop(journal);
        drop(journal_bytes);
        if journal_is_stale || store.journal_is_bloated() {
            store.rewrite_journal()?;
        }
        Ok((store, issues))
    }

    /// Every `<id>.yaml` in the directory with its inode; stale temp files are deleted on the way.
    fn list_records(&self) -> Result<Vec<(JobId, u64)>, StateError> {
        let list_error = |source| StateError::Io {
            action: "list the jobs directory",
            path: self.dir.clone(),
            source,
        };
        let mut records = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(list_error)? {
            let entry = entry.map_err(list_error)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_temp_file_name(name) {
                let path = entry.path();
                fs::remove_file(&path).map_err(|source| StateError::Io {
                    action: "remove stale temporary file",
                    path,
                    source,
                })?;
            } else if let Some(stem) = name.strip_suffix(".yaml") {
                if let Ok(id) = JobId::parse(stem) {
                    records.push((id, entry.ino()));
                }
            }
        }
        Ok(records)
    }

    /// Reads one record into the index; a problem becomes an issue.
    fn index_from_record(&mut self, id: JobId) -> Option<StoreIssue> {
        let path = self.record_path(&id);
        match read_record_with_inode(&path) {
            Ok((job, inode)) if job.id == id => {
                self.index(id, job.created_at, &job.agent, job.status, inode);
                None
            }
            Ok((job, _)) => Some(self.quarantine(
                &path,
                format!("it holds job {} but is named after {id}", job.id),
            )),
            Err(StateError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
            Err(StateError::Corrupt { reason, .. }) => Some(self.quarantine(&path, reason)),
            Err(error) => Some(StoreIssue::Unreadable(error)),
        }
    }

    fn quarantine(&self, path: &Path, reason: String) -> StoreIssue {
        match move_aside(path, reason) {
            Ok(corrupt) => StoreIssue::Corrupt(corrupt),
            Err(error) => StoreIssue::Unreadable(error),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn record_path(&self, id: &JobId) -> PathBuf {
        self.dir.join(format!("{id}.yaml"))
    }

    pub fn output_path(&self, id: &JobId) -> PathBuf {
        self.dir.join(format!("{id}.jsonl"))
    }

    /// Writes `job`'s record atomically and durably, then indexes it.
    pub fn put(&mut self, job: &Job) -> Result<(), StateError> {
        let path = self.record_path(&job.id);
        let yaml = serde_yaml_ng::to_string(job).map_err(|error| StateError::Serialize {
            what: "job record",
            path: path.clone(),
            reason: error.to_string(),
        })?;
        let inode = atomic_write_with(&path, yaml.as_bytes(), &mut |_| Ok(()))?;
        self.index(
            job.id.clone(),
            job.created_at,
            &job.agent,
            job.status,
            inode,
        );
        self.journal_record(&job.id)
    }

    /// Records the current summary of `id` in the journal.
    fn journal_record(&mut self, id: &JobId) -> Result<(), StateError> {
        if self.journal_needs_rewrite || self.journal_is_bloated() {
            return self.rewrite_journal();
        }
        let Some(created_at) = self.created_at_by_id.get(id).copied() else {
            return Ok(());
        };
        let key = (created_at, id.clone());
        let Some(summary) = self.by_order.get(&key) else {
            return Ok(());
        };
        let mut line = Vec::with_capacity(128);
        if !journal::push_line(
            &mut line,
            id.as_str(),
            &summary.agent,
            summary.status,
            created_at,
            summary.inode,
        ) {
            return Ok(());
        }
        let appended = self.append_to_journal(&line);
        if appended.is_err() {
            self.journal_appender = None;
            self.journal_needs_rewrite = true;
        }
        appended
    }

    fn append_to_journal(&mut self, line: &[u8]) -> Result<(), StateError> {
        let io_error = |source| StateError::Io {
            action: "append to the job index",
            path: self.journal_path.clone(),
            source,
        };
        let appender = match &mut self.journal_appender {
            Some(file) => file,
            None => {
                let file = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(&self.journal_path)
                    .map_err(io_error)?;
                self.journal_appender.insert(file)
            }
        };
        appender.write_all(line).map_err(io_error)?;
        self.journal_lines += 1;
        Ok(())
    }

    fn journal_is_bloated(&self) -> bool {
        self.journal_lines > 2 * self.by_order.len() + JOURNAL_SLACK_LINES
    }

    /// Replaces the journal with one line per indexed job.
    fn rewrite_journal(&mut self) -> Result<(), StateError> {
        let mut bytes = Vec::with_capacity(self.by_order.len() * 112);
        let mut lines = 0;
        for ((created_at, id), summary) in &self.by_order {
            if journal::push_line(
                &mut bytes,
                id.as_str(),
                &summary.agent,
                summary.status,
                *created_at,
                summary.inode,
            ) {
                lines += 1;
            }
        }
        atomic_write(&self.journal_path, &bytes)?;
        // The old appender points at the replaced file.
        self.journal_appender = None;
        self.journal_lines = lines;
        self.journal_needs_rewrite = false;
        Ok(())
    }

    fn index(
        &mut self,
        id: JobId,
        created_at: DateTime<Utc>,
        agent: &str,
        status: JobStatus,
        inode: u64,
    ) {
        self.unindex(&id);
        let agent = match self.agent_names.get(agent) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared: Arc<str> = Arc::from(agent);
                self.agent_names.insert(Arc::clone(&shared));
                shared
            }
        };
        *self.counts.slot(status) += 1;
        self.created_at_by_id.insert(id.clone(), created_at);
        self.by_order.insert(
            (created_at, id),
            Summary {
                agent,
                status,
                inode,
            },
        );
    }

    fn unindex(&mut self, id: &JobId) -> bool {
        let Some(created_at) = self.created_at_by_id.remove(id) else {
            return false;
        };
        if let Some(old) = self.by_order.remove(&(created_at, id.clone())) {
            *self.counts.slot(old.status) -= 1;
        }
        true
    }

    pub fn contains(&self, id: &JobId) -> bool {
        self.created_at_by_id.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.by_order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_order.is_empty()
    }

    /// A fresh id for a job created at `now`, not used by any stored job. Put the job before
    /// releasing the store, or another caller may draw the same id.
    pub fn generate_id(&self, now: DateTime<Utc>) -> JobId {
        loop {
            let id = JobId::generate(now);
            if !self.contains(&id) {
                return id;
            }
        }
    }

    /// The full record of `id`; `None` if the store has no such job.
    pub fn get(&self, id: &JobId) -> Result<Option<Job>, StateError> {
        if !self.contains(id) {
            return Ok(None);
        }
        read_record(&self.record_path(id)).map(Some)
    }

    /// A page of jobs matching `filter`, newest first; only the page's records are read.
    pub fn list(&self, filter: &JobFilter) -> JobPage {
        let lower = match filter.since {
            Some(since) => Bound::Included((since, JobId::lowest())),
            None => Bound::Unbounded,
        };
        let upper = match filter.until {
            Some(until) => Bound::Excluded((until, JobId::lowest())),
            None => Bound::Unbounded,
        };
        if matches!((&lower, &upper), (Bound::Included(l), Bound::Excluded(u)) if l >= u) {
            return JobPage {
                jobs: Vec::new(),
                total: 0,
                unreadable: Vec::new(),
            };
        }
        let page_end = filter.offset.saturating_add(filter.limit);
        let mut total = 0;
        let mut page_ids = Vec::new();
        let matching = self.by_order.range((lower, upper)).rev().filter(|(_, s)| {
            filter.agent.as_deref().is_none_or(|a| *s.agent == *a)
                && filter.status.is_none_or(|status| s.status == status)
        });
        for ((_, id), _) in matching {
            if total >= filter.offset && total < page_end {
                page_ids.push(id);
            }
            total += 1;
        }
        let mut jobs = Vec::with_capacity(page_ids.len());
        let mut unreadable = Vec::new();
        for id in page_ids {
            match read_record(&self.record_path(id)) {
                Ok(job) => jobs.push(job),
                Err(error) => unreadable.push(error),
            }
        }
        JobPage {
            jobs,
            total,
            unreadable,
        }
    }

    /// Jobs still queued or running, oldest first (what a dead daemon left behind).
    pub fn non_terminal(&self) -> Vec<JobId> {
        self.by_order
            .iter()
            .filter(|(_, summary)| !summary.status.is_terminal())
            .map(|((_, id), _)| id.clone())
            .collect()
    }

    pub fn counts(&self) -> JobCounts {
        self.counts
    }

    /// Deletes the oldest terminal jobs beyond `max_per_agent` per agent and beyond `max_total`
    /// overall. Queued and running jobs and jobs `keep` protects are never deleted; they count as kept.
    /// Returns the deleted ids.
    pub fn prune(
        &mut self,
        max_per_agent: usize,
        max_total: Option<usize>,
        keep: &dyn Fn(&JobId) -> bool,
    ) -> Result<Vec<JobId>, StateError> {
        let mut kept_per_agent: HashMap<&str, usize> = HashMap::new();
        let mut kept_total = 0usize;
        let mut doomed = Vec::new();
        for ((_, id), summary) in self.by_order.iter().rev() {
            let protected = !summary.status.is_terminal() || keep(id);
            let kept_of_agent = kept_per_agent.entry(&summary.agent).or_default();
            let within_limits = *kept_of_agent < max_per_agent
                && max_total.is_none_or(|max_total| kept_total < max_total);
            if protected || within_limits {
                *kept_of_agent += 1;
                kept_total += 1;
            } else {
                doomed.push(id.clone());
            }
        }
        for id in &doomed {
            self.remove(id)?;
        }
        Ok(doomed)
    }

    /// Deletes `id`'s output and record. Returns whether the store had it.
    pub fn remove(&mut self, id: &JobId) -> Result<bool, StateError> {
        // Output first: a crash in between leaves a record without output, never orphaned output.
        for path in [self.output_path(id), self.record_path(id)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StateError::Io {
                        action: "delete",
                        path,
                        source,
                    })
                }
            }
        }
        // The journal needs no line: start-up only trusts entries whose file still exists.
        Ok(self.unindex(id))
    }

    /// An appender for `id`'s output that continues after the last line already written.
    pub fn output_writer(&self, id: &JobId) -> Result<OutputWriter, StateError> {
        OutputWriter::open(self.output_path(id))
    }

    /// Output lines of `id` with `seq >= from_seq`, at most `limit`.
    pub fn read_output(
        &self,
        id: &JobId,
        from_seq: u64,
        limit: Option<usize>,
    ) -> Result<Vec<OutputLine>, StateError> {
        output::read_output(&self.output_path(id), from_seq, limit)
    }

    /// The seq of `id`'s last complete output line; `None` when there is none.
    pub fn last_seq(&self, id: &JobId) -> Result<Option<u64>, StateError> {
        output::last_seq(&self.output_path(id))
    }
}

fn read_record(path: &Path) -> Result<Job, StateError> {
    read_record_with_inode(path).map(|(job, _)| job)
}

fn read_record_with_inode(path: &Path) -> Result<(Job, u64), StateError> {
    let io_error = |source| StateError::Io {
        action: "read job record",
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_error)?;
    let inode = file.metadata().map_err(io_error)?.ino();
    let mut text = String::new();
    io::Read::read_to_string(&mut file, &mut text).map_err(|source| {
        if source.kind() == io::ErrorKind::InvalidData {
            StateError::Corrupt {
                path: path.to_path_buf(),
                reason: "not UTF-8".to_owned(),
            }
        } else {
            io_error(source)
        }
    })?;
    let job = serde_yaml_ng::from_str(&text).map_err(|error| StateError::Corrupt {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })?;
    Ok((job, inode))
}
