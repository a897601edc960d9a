//! The job store: records in `jobs/<id>.yaml` (source of truth), output in `jobs/<id>.jsonl`, and an
//! in-memory index so queries never rescan the directory or reparse records.
//!
//! The index holds, per job, only what queries filter and sort on (created_at, id, agent, status) and
//! the record's inode; full records are read from their YAML for the page a query returns. Beside it, the
//! usage of every finished job that reported one, per agent and ordered by the job's end, so cost totals
//! over a period ([`JobStore::usage_between`]) read only that period's jobs and never a file. Start-up
//! reads one `readdir` and the `index.tsv` journal (see [`super::journal`]) and parses only the
//! records the journal does not describe exactly, so opening 100,000 jobs takes a fraction of a second.
//! A record that does not parse is moved aside and reported; records whose file vanished are dropped.
//! A record corrupted in place (same inode) is only detected when read: `get` fails with
//! [`StateError::Corrupt`] and `list` reports it in [`JobPage::unreadable`].
//!
//! Sync and blocking; methods take `&mut self` to write, the caller serialises access (a mutex) and must
//! hold the state-directory lock. Must not: decide job lifecycles (crash recovery, retention policy
//! values) — it only executes them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::ops::Bound;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::atomic::{is_temp_file_name, remove_stale_temp_file, Durability};
use super::corrupt::{move_aside, CorruptFile};
use super::journal;
use super::output::{self, OutputWriter};
use super::record;
use super::record_files::{JournalSnapshot, RecordFiles, StagedRecord, JOURNAL_FILE};
use super::StateError;
use crate::job::{Job, JobId, JobStatus, OutputLine, UsageTotals};
use rustc_hash::FxHashMap;

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

/// The records of a page of jobs, located under the store's guard, to be read after it.
#[derive(Debug)]
pub struct PagePlan {
    entries: Vec<PageEntry>,
    /// Matching jobs in all (the page is a window of them).
    pub total: usize,
}

#[derive(Debug)]
enum PageEntry {
    File(JobId, PathBuf),
    /// The record as the caller knows it, newer than its file may be.
    Known(Box<Job>),
}

impl PagePlan {
    /// Takes the records `current` knows (a job whose record is still being written) from it instead of
    /// their files; called under the guard the plan was made under.
    pub fn known(mut self, current: impl Fn(&JobId) -> Option<Job>) -> PagePlan {
        for entry in &mut self.entries {
            if let PageEntry::File(id, _) = entry {
                if let Some(job) = current(id) {
                    *entry = PageEntry::Known(Box::new(job));
                }
            }
        }
        self
    }

    /// Reads the page's records; one that cannot be read (changed behind the index, or pruned since the
    /// page was located) is reported instead.
    pub fn read(self) -> JobPage {
        let mut jobs = Vec::with_capacity(self.entries.len());
        let mut unreadable = Vec::new();
        for entry in self.entries {
            match entry {
                PageEntry::Known(job) => jobs.push(*job),
                PageEntry::File(_, path) => match read_record(&path) {
                    Ok(job) => jobs.push(job),
                    Err(error) => unreadable.push(error),
                },
            }
        }
        JobPage {
            jobs,
            total: self.total,
            unreadable,
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
    /// When a terminal job ended (what retention by age measures).
    finished_at: Option<DateTime<Utc>>,
    /// herdctl wrote the record first ([`Job::herdctl_record`]).
    herdctl: bool,
    /// Inode of the record version this summary describes; 0 while that version is still being
    /// written (no file has inode 0, so the journal never vouches for a file it has not seen).
    inode: u64,
    /// Counts the summaries this job had: a write's inode is taken only by the version it wrote.
    version: RecordVersion,
}

/// Which of a job's indexed versions a record write wrote ([`JobStore::note`], [`JobStore::written`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordVersion(u32);

type OrderKey = (DateTime<Utc>, JobId);

/// Usage of one agent's finished jobs by `(finished_at, id)`.
type UsageByEnd = BTreeMap<OrderKey, UsageTotals>;

fn journal_entry<'a>(
    (created_at, id): &'a OrderKey,
    summary: &'a Summary,
    usage: Option<UsageTotals>,
) -> journal::JournalEntry<'a> {
    journal::JournalEntry {
        id: id.as_str(),
        status: summary.status,
        created_at: *created_at,
        finished_at: summary.finished_at,
        herdctl: summary.herdctl,
        inode: summary.inode,
        usage,
        agent: &summary.agent,
    }
}

/// What job history to keep (SPEC §5). The fleet decides the values; the store applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Newest jobs kept per agent.
    pub max_per_agent: usize,
    /// `max_per_agent` was set by the operator rather than defaulted; only then does it prune records
    /// herdctl wrote.
    pub max_per_agent_explicit: bool,
    /// Newest jobs kept overall.
    pub max_total: Option<usize>,
    /// Terminal jobs that finished longer ago than this go.
    pub max_age: Option<std::time::Duration>,
}

/// What [`JobStore::plan_prune`] chose.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PrunePlan {
    /// Newest first.
    pub doomed: Vec<JobId>,
    /// Records herdctl wrote that the implicit per-agent limit would have removed, kept.
    pub herdctl_kept_beyond_default: usize,
}

/// Files of jobs [`JobStore::forget`] took out of the index, still to be deleted.
#[derive(Debug, Default)]
#[must_use = "the files are still on disk"]
pub struct PrunedFiles {
    paths: Vec<PathBuf>,
}

impl PrunedFiles {
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Deletes every file (gone already is fine); reports the first failure after trying them all.
    pub fn delete(self) -> Result<(), StateError> {
        let mut first_error = None;
        for path in self.paths {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    first_error.get_or_insert(StateError::Io {
                        action: "delete",
                        path,
                        source,
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Records and output of every job, with an in-memory index.
#[derive(Debug)]
pub struct JobStore {
    dir: PathBuf,
    /// Record writes and the journal, shared with a writer outside the lock that guards this index.
    files: Arc<RecordFiles>,
    by_order: BTreeMap<OrderKey, Summary>,
    created_at_by_id: FxHashMap<JobId, DateTime<Utc>>,
    /// Per agent, the usage of its finished jobs that have one; kept in step with `by_order`.
    usage: FxHashMap<Arc<str>, UsageByEnd>,
    counts: JobCounts,
    /// Agent names, shared by every summary of the same agent, with how many records each has: an
    /// agent no longer configured is known by its history while it has one.
    agent_names: FxHashMap<Arc<str>, usize>,
}

impl JobStore {
    /// Opens (creating) the jobs directory, removes stale temp files and builds the index.
    pub fn open(dir: &Path) -> Result<(JobStore, Vec<StoreIssue>), StateError> {
        fs::create_dir_all(dir).map_err(|source| StateError::Io {
            action: "create the jobs directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let journal_path = dir.join(JOURNAL_FILE);
        let mut store = JobStore {
            files: Arc::new(RecordFiles::new(dir, 0)),
            dir: dir.to_path_buf(),
            by_order: BTreeMap::new(),
            created_at_by_id: FxHashMap::default(),
            usage: FxHashMap::default(),
            counts: JobCounts::default(),
            agent_names: FxHashMap::default(),
        };
        let journal_bytes = match fs::read(&journal_path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(StateError::Io {
                    action: "read the job index",
                    path: journal_path.clone(),
                    source,
                })
            }
        };
        let journal = journal::parse(&journal_bytes);
        // Later lines win.
        let mut journaled: FxHashMap<&str, &journal::JournalEntry<'_>> =
            FxHashMap::with_capacity_and_hasher(journal.entries.len(), Default::default());
        for entry in &journal.entries {
            journaled.insert(entry.id, entry);
        }

        let mut covered = Vec::with_capacity(journaled.len());
        let mut uncovered = Vec::new();
        let list_error = |source| StateError::Io {
            action: "list the jobs directory",
            path: dir.to_path_buf(),
            source,
        };
        for entry in fs::read_dir(dir).map_err(list_error)? {
            let entry = entry.map_err(list_error)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_temp_file_name(name) {
                remove_stale_temp_file(&entry.path())?;
                continue;
            }
            let Some(Ok(id)) = name.strip_suffix(".yaml").map(JobId::parse) else {
                continue;
            };
            match journaled.get(id.as_str()) {
                Some(known) if known.inode == entry.ino() => {
                    let summary = Summary {
                        agent: store.shared_agent_name(known.agent),
                        status: known.status,
                        finished_at: known.finished_at,
                        herdctl: known.herdctl,
                        inode: known.inode,
                        version: RecordVersion(0),
                    };
                    covered.push(((known.created_at, id), summary, known.usage));
                }
                _ => uncovered.push(id),
            }
        }
        // Damaged, or describing files that are gone or other versions of them.
        let journal_is_stale =
            journal.damaged || covered.len() < journaled.len() || !uncovered.is_empty();
        store.files = Arc::new(RecordFiles::new(dir, journal.lines));
        drop(journaled);
        drop(journal);
        drop(journal_bytes);

        store.load_summaries(covered);
        let issues = uncovered
            .into_iter()
            .filter_map(|id| store.index_from_record(id))
            .collect();
        if journal_is_stale || store.journal_due() {
            store.files.replace_journal(store.journal_snapshot())?;
        }
        Ok((store, issues))
    }

    /// Bulk-loads an empty index (sorting once is far cheaper than 100,000 ordered inserts).
    fn load_summaries(&mut self, summaries: Vec<(OrderKey, Summary, Option<UsageTotals>)>) {
        self.created_at_by_id.reserve(summaries.len());
        for ((created_at, id), summary, usage) in &summaries {
            self.created_at_by_id.insert(id.clone(), *created_at);
            self.count_record_of(&summary.agent, 1);
            *self.counts.slot(summary.status) += 1;
            if let (Some(finished_at), Some(usage)) = (summary.finished_at, usage) {
                self.usage
                    .entry(Arc::clone(&summary.agent))
                    .or_default()
                    .insert((finished_at, id.clone()), *usage);
            }
        }
        self.by_order = summaries
            .into_iter()
            .map(|(key, summary, _)| (key, summary))
            .collect();
    }

    fn shared_agent_name(&mut self, agent: &str) -> Arc<str> {
        match self.agent_names.get_key_value(agent) {
            Some((shared, _)) => Arc::clone(shared),
            None => {
                let shared: Arc<str> = Arc::from(agent);
                self.agent_names.insert(Arc::clone(&shared), 0);
                shared
            }
        }
    }

    /// Adds `change` (±1) to the records of `agent`, whose name is interned; forgets a name left without any.
    fn count_record_of(&mut self, agent: &str, change: isize) {
        if let Some(records) = self.agent_names.get_mut(agent) {
            *records = records.saturating_add_signed(change);
            if *records == 0 {
                self.agent_names.remove(agent);
            }
        }
    }

    /// Whether the index holds a record of a job of `agent` (its exact name).
    pub fn has_records_of(&self, agent: &str) -> bool {
        self.agent_names
            .get(agent)
            .is_some_and(|records| *records > 0)
    }

    /// Reads one record into the index; a problem becomes an issue.
    fn index_from_record(&mut self, id: JobId) -> Option<StoreIssue> {
        let path = self.record_path(&id);
        match read_record_with_inode(&path) {
            Ok((job, inode)) if job.id == id => {
                self.index(&job, inode);
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
        self.put_with(job, Durability::Machine)
    }

    /// [`put`](Self::put) without fsync: survives the daemon's crash, not the machine's. For a job's
    /// "running" record, whose pid is meaningless after a machine crash (its processes died with it).
    pub fn put_unsynced(&mut self, job: &Job) -> Result<(), StateError> {
        self.put_with(job, Durability::Process)
    }

    fn put_with(&mut self, job: &Job, durability: Durability) -> Result<(), StateError> {
        let inode = self.files.write(job, durability)?;
        if durability == Durability::Machine {
            self.files.sync_dir()?;
        }
        self.index(job, inode);
        self.journal_written(job, inode)
    }

    /// The slow, durable half of a record write, done without the store: see [`RecordFiles::stage`].
    pub fn stage(jobs_dir: &Path, job: &Job) -> Result<StagedRecord, StateError> {
        RecordFiles::stage(jobs_dir, job)
    }

    /// The file side of this store, for a writer that works outside the lock guarding the index: it
    /// writes what [`note`](Self::note) indexed and reports back with [`written`](Self::written).
    pub fn files(&self) -> Arc<RecordFiles> {
        self.files.clone()
    }

    /// Indexes `job` as it is now, before its record is written (by a writer using
    /// [`files`](Self::files)); returns the version that write is to report to [`written`](Self::written).
    /// Until then the index does not vouch for any file of the job in the journal.
    pub fn note(&mut self, job: &Job) -> RecordVersion {
        self.index(job, 0)
    }

    /// The write of `version` of `id`'s record landed as `inode`: the index vouches for that file, unless
    /// a newer version was noted meanwhile.
    pub fn written(&mut self, id: &JobId, version: RecordVersion, inode: u64) {
        let Some(created_at) = self.created_at_by_id.get(id) else {
            return;
        };
        if let Some(summary) = self.by_order.get_mut(&(*created_at, id.clone())) {
            if summary.version == version {
                summary.inode = inode;
            }
        }
    }

    /// Whether the journal is to be rewritten from the index ([`journal_snapshot`](Self::journal_snapshot)).
    pub fn journal_due(&self) -> bool {
        self.files.journal_due(self.by_order.len())
    }

    /// The journal as the index describes it: one line per indexed job.
    pub fn journal_snapshot(&self) -> JournalSnapshot {
        let mut bytes = Vec::with_capacity(journal::HEADER.len() + self.by_order.len() * 80);
        bytes.extend_from_slice(journal::HEADER.as_bytes());
        let mut lines = 0;
        for (key, summary) in &self.by_order {
            let usage = self.usage_of(&key.1, summary);
            if journal::push_line(&mut bytes, &journal_entry(key, summary, usage)) {
                lines += 1;
            }
        }
        JournalSnapshot { bytes, lines }
    }

    /// Journals the write of `job`'s record as `inode`, or rewrites the journal when it is due.
    fn journal_written(&mut self, job: &Job, inode: u64) -> Result<(), StateError> {
        if self.journal_due() {
            return self.files.replace_journal(self.journal_snapshot());
        }
        self.files.journal(job, inode)
    }

    /// Indexes `job`'s summary, described by the file with `inode`; returns the summary's version.
    fn index(&mut self, job: &Job, inode: u64) -> RecordVersion {
        let previous = self.unindex(&job.id);
        let version = RecordVersion(previous.map_or(0, |v| v.0.wrapping_add(1)));
        let agent = self.shared_agent_name(&job.agent);
        self.count_record_of(&agent, 1);
        *self.counts.slot(job.status) += 1;
        self.created_at_by_id.insert(job.id.clone(), job.created_at);
        if let (Some(finished_at), Some(usage)) = (job.finished_at, job.usage.as_ref()) {
            self.usage
                .entry(Arc::clone(&agent))
                .or_default()
                .insert((finished_at, job.id.clone()), UsageTotals::of(usage));
        }
        self.by_order.insert(
            (job.created_at, job.id.clone()),
            Summary {
                agent,
                status: job.status,
                finished_at: job.finished_at,
                herdctl: job.herdctl_record,
                inode,
                version,
            },
        );
        version
    }

    /// Takes `id` out of the index; returns the version of the summary it had, if it had one.
    fn unindex(&mut self, id: &JobId) -> Option<RecordVersion> {
        let created_at = self.created_at_by_id.remove(id)?;
        let old = self.by_order.remove(&(created_at, id.clone()))?;
        self.count_record_of(&old.agent, -1);
        *self.counts.slot(old.status) -= 1;
        if let (Some(finished_at), Some(usage)) = (old.finished_at, self.usage.get_mut(&old.agent))
        {
            usage.remove(&(finished_at, id.clone()));
            if usage.is_empty() {
                self.usage.remove(&old.agent);
            }
        }
        Some(old.version)
    }

    /// The usage indexed for job `id`, described by `summary`.
    fn usage_of(&self, id: &JobId, summary: &Summary) -> Option<UsageTotals> {
        let finished_at = summary.finished_at?;
        self.usage
            .get(&summary.agent)?
            .get(&(finished_at, id.clone()))
            .copied()
    }

    /// The usage of the jobs of `agent` (of every agent with `None`) that finished in `[since, until)`,
    /// from the index alone. Jobs without a `usage` in their record are not counted (not in `jobs`
    /// either); pruned jobs are gone from it like from every query.
    pub fn usage_between(
        &self,
        agent: Option<&str>,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> UsageTotals {
        let mut totals = UsageTotals::default();
        if since >= until {
            return totals;
        }
        let range = (
            Bound::Included((since, JobId::lowest())),
            Bound::Excluded((until, JobId::lowest())),
        );
        let agents: Box<dyn Iterator<Item = &UsageByEnd>> = match agent {
            Some(name) => Box::new(self.usage.get(name).into_iter()),
            None => Box::new(self.usage.values()),
        };
        for by_end in agents {
            for usage in by_end.range(range.clone()).map(|(_, usage)| usage) {
                totals.add(usage);
            }
        }
        totals
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

    /// The full record of `id`; `None` if the store has no such job.
    pub fn get(&self, id: &JobId) -> Result<Option<Job>, StateError> {
        if !self.contains(id) {
            return Ok(None);
        }
        read_record(&self.record_path(id)).map(Some)
    }

    /// The record of the job at `path` (a [`record_path`](Self::record_path)), read without the store: a
    /// caller that guards the store with a lock reads the file after releasing it. `None` when the file
    /// is gone (pruned meanwhile).
    pub fn read_record(path: &Path) -> Result<Option<Job>, StateError> {
        match read_record(path) {
            Ok(job) => Ok(Some(job)),
            Err(StateError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// A page of jobs matching `filter`, newest first; only the page's records are read.
    pub fn list(&self, filter: &JobFilter) -> JobPage {
        self.page(filter).read()
    }

    /// Which records make the page of `filter`, without reading them: [`PagePlan::read`] reads them,
    /// outside whatever lock guards the store.
    pub fn page(&self, filter: &JobFilter) -> PagePlan {
        let lower = match filter.since {
            Some(since) => Bound::Included((since, JobId::lowest())),
            None => Bound::Unbounded,
        };
        let upper = match filter.until {
            Some(until) => Bound::Excluded((until, JobId::lowest())),
            None => Bound::Unbounded,
        };
        if matches!((&lower, &upper), (Bound::Included(l), Bound::Excluded(u)) if l >= u) {
            return PagePlan {
                entries: Vec::new(),
                total: 0,
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
        PagePlan {
            entries: page_ids
                .into_iter()
                .map(|id| PageEntry::File(id.clone(), self.record_path(id)))
                .collect(),
            total,
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

    /// Which terminal jobs `retention` removes now: beyond `max_per_agent` per agent or `max_total`
    /// overall (newest kept), or finished before `now - max_age`. Queued and running jobs and jobs `keep`
    /// protects are never chosen and count as kept. A record herdctl wrote is chosen only by a limit set
    /// explicitly: herdctl never prunes its history, so herdctld's default must not either.
    pub fn plan_prune(
        &self,
        retention: &Retention,
        now: DateTime<Utc>,
        keep: &dyn Fn(&JobId) -> bool,
    ) -> PrunePlan {
        let cutoff = retention
            .max_age
            .and_then(|age| chrono::TimeDelta::from_std(age).ok())
            .and_then(|age| now.checked_sub_signed(age));
        // Per agent: jobs kept that count towards its limit, and all jobs kept.
        let mut kept_per_agent: HashMap<&str, (usize, usize)> = HashMap::new();
        let mut kept_total = 0usize;
        let mut plan = PrunePlan::default();
        for ((created_at, id), summary) in self.by_order.iter().rev() {
            let (kept_of_agent, all_of_agent) = kept_per_agent.entry(&summary.agent).or_default();
            let active = !summary.status.is_terminal() || keep(id);
            let over_agent = *kept_of_agent >= retention.max_per_agent;
            let default_spares = summary.herdctl && !retention.max_per_agent_explicit;
            let over_total = retention.max_total.is_some_and(|max| kept_total >= max);
            let too_old =
                cutoff.is_some_and(|cutoff| summary.finished_at.unwrap_or(*created_at) < cutoff);
            if !active && ((over_agent && !default_spares) || over_total || too_old) {
                plan.doomed.push(id.clone());
                continue;
            }
            if default_spares && !active {
                // Kept outside the implicit per-agent limit: it takes no place of herdctld's own jobs.
                plan.herdctl_kept_beyond_default +=
                    usize::from(*all_of_agent >= retention.max_per_agent);
            } else {
                *kept_of_agent += 1;
            }
            *all_of_agent += 1;
            kept_total += 1;
        }
        plan
    }

    /// Takes `ids` out of the index and hands back their files, for the caller to delete
    /// ([`PrunedFiles::delete`]) without holding the lock that guards the store.
    pub fn forget(&mut self, ids: &[JobId]) -> PrunedFiles {
        let mut paths = Vec::with_capacity(ids.len() * 2);
        for id in ids {
            if self.unindex(id).is_some() {
                // Output first: a crash in between leaves a record without output, never orphaned output.
                let output = self.output_path(id);
                paths.extend(output::tail_segments(&output));
                paths.push(output);
                paths.push(self.record_path(id));
            }
        }
        // The journal needs no line: start-up only trusts entries whose file still exists.
        PrunedFiles { paths }
    }

    /// An appender for `id`'s output that continues after the last line already written, storing at most
    /// `max_bytes` (`None`: everything).
    pub fn output_writer(
        &self,
        id: &JobId,
        max_bytes: Option<u64>,
    ) -> Result<OutputWriter, StateError> {
        OutputWriter::open(self.output_path(id), max_bytes)
    }

    /// Joins the output tail a daemon that died while `id` ran left beside its output file; true when
    /// lines between were lost (the file says how many).
    pub fn join_output_tail(&self, id: &JobId) -> Result<bool, StateError> {
        output::join_tail(&self.output_path(id))
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
    let job = record::from_yaml(&text).map_err(|error| StateError::Corrupt {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })?;
    Ok((job, inode))
}

#[cfg(test)]
mod tests {
    use super::super::atomic::atomic_write;
    use super::super::record_files::JOURNAL_SLACK_LINES;
    use super::*;
    use crate::job::{ExitReason, TriggerType};
    use chrono::TimeZone;
    use std::collections::HashSet;
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::time::Instant;

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_735_689_600 + second, 0).unwrap()
    }

    fn id(n: u32) -> JobId {
        JobId::parse(&format!("job-2025-01-01-{n:06}")).unwrap()
    }

    fn job(n: u32, agent: &str, second: i64, status: JobStatus) -> Job {
        let mut job = Job::new(
            id(n),
            agent.into(),
            Some("hourly".into()),
            TriggerType::Schedule,
            Some(format!("prompt {n}")),
            5,
            at(second),
        );
        job.status = status;
        if status.is_terminal() {
            job.exit_reason = Some(ExitReason::Success);
            job.finished_at = Some(at(second + 1));
        }
        job
    }

    fn ids(jobs: &[Job]) -> Vec<u32> {
        jobs.iter()
            .map(|j| j.id.as_str()[15..].parse().unwrap())
            .collect()
    }

    fn open(dir: &Path) -> (JobStore, Vec<StoreIssue>) {
        JobStore::open(dir).unwrap()
    }

    fn list_all(store: &JobStore) -> Vec<Job> {
        store
            .list(&JobFilter {
                limit: usize::MAX,
                ..JobFilter::default()
            })
            .jobs
    }

    /// Jobs 1..=6: a/b agents, mixed statuses, created at seconds 10..60 (job 6 shares 50 with job 5).
    fn sample_store(dir: &Path) -> JobStore {
        let (mut store, issues) = open(dir);
        assert!(issues.is_empty());
        for job in [
            job(1, "a", 10, JobStatus::Completed),
            job(2, "b", 20, JobStatus::Failed),
            job(3, "a", 30, JobStatus::Completed),
            job(4, "b", 40, JobStatus::Running),
            job(5, "a", 50, JobStatus::Queued),
            job(6, "a", 50, JobStatus::Cancelled),
        ] {
            store.put(&job).unwrap();
        }
        store
    }

    #[test]
    fn knows_which_agents_have_records_across_rewrites_pruning_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = sample_store(dir.path());
        assert!(store.has_records_of("a") && store.has_records_of("b"));
        assert!(!store.has_records_of("c"));
        // A rewrite of b's running job is still one record.
        store.put(&job(4, "b", 40, JobStatus::Completed)).unwrap();
        store.forget(&[id(2)]).delete().unwrap();
        assert!(store.has_records_of("b"), "job 4 is left");
        store.forget(&[id(4)]).delete().unwrap();
        assert!(!store.has_records_of("b"), "b's last record is gone");
        drop(store);
        // From the journal, and from the records themselves.
        let (reopened, _) = open(dir.path());
        assert!(reopened.has_records_of("a") && !reopened.has_records_of("b"));
        drop(reopened);
        std::fs::remove_file(dir.path().join(JOURNAL_FILE)).unwrap();
        let (reopened, _) = open(dir.path());
        assert!(reopened.has_records_of("a") && !reopened.has_records_of("b"));
    }

    #[test]
    fn put_then_get_returns_the_full_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = open(dir.path());
        let mut original = job(1, "a", 0, JobStatus::Completed);
        original.result = Some(serde_json::json!({"num_turns": 3}));
        original.summary = Some("done".into());
        store.put(&original).unwrap();
        assert_eq!(store.get(&id(1)).unwrap(), Some(original.clone()));
        assert_eq!(store.get(&id(2)).unwrap(), None);

        original.summary = Some("updated".into());
        store.put(&original).unwrap();
        assert_eq!(
            store.get(&id(1)).unwrap().unwrap().summary.as_deref(),
            Some("updated")
        );
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn list_is_newest_first_with_ties_by_id_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let store = sample_store(dir.path());
        let page = store.list(&JobFilter::default());
        assert_eq!(ids(&page.jobs), [6, 5, 4, 3, 2, 1]);
        assert_eq!(page.total, 6);
        assert!(page.unreadable.is_empty());

        let page = store.list(&JobFilter {
            limit: 2,
            offset: 1,
            ..JobFilter::default()
        });
        assert_eq!(ids(&page.jobs), [5, 4]);
        assert_eq!(page.total, 6);

        let beyond = store.list(&JobFilter {
            offset: 10,
            ..JobFilter::default()
        });
        assert!(beyond.jobs.is_empty());
        assert_eq!(beyond.total, 6);
    }

    #[test]
    fn list_filters_by_agent_status_and_time_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = sample_store(dir.path());
        let query = |filter: JobFilter| {
            let page = store.list(&filter);
            (ids(&page.jobs), page.total)
        };
        assert_eq!(
            query(JobFilter {
                agent: Some("a".into()),
                ..JobFilter::default()
            }),
            (vec![6, 5, 3, 1], 4)
        );
        assert_eq!(
            query(JobFilter {
                status: Some(JobStatus::Completed),
                ..JobFilter::default()
            }),
            (vec![3, 1], 2)
        );
        assert_eq!(
            query(JobFilter {
                agent: Some("b".into()),
                status: Some(JobStatus::Running),
                ..JobFilter::default()
            }),
            (vec![4], 1)
        );
        assert_eq!(
            query(JobFilter {
                since: Some(at(20)),
                until: Some(at(50)),
                ..JobFilter::default()
            }),
            (vec![4, 3, 2], 3),
            "since is inclusive, until exclusive"
        );
        assert_eq!(
            query(JobFilter {
                since: Some(at(50)),
                ..JobFilter::default()
            }),
            (vec![6, 5], 2)
        );
        assert_eq!(
            query(JobFilter {
                since: Some(at(40)),
                until: Some(at(40)),
                ..JobFilter::default()
            }),
            (vec![], 0)
        );
        assert_eq!(
            query(JobFilter {
                agent: Some("nobody".into()),
                ..JobFilter::default()
            }),
            (vec![], 0)
        );
    }

    #[test]
    fn counts_and_non_terminal_follow_status_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = sample_store(dir.path());
        assert_eq!(
            store.counts(),
            JobCounts {
                queued: 1,
                running: 1,
                completed: 2,
                failed: 1,
                cancelled: 1
            }
        );
        assert_eq!(store.non_terminal(), [id(4), id(5)]);
        let mut finished = store.get(&id(4)).unwrap().unwrap();
        finished.status = JobStatus::Failed;
        store.put(&finished).unwrap();
        assert_eq!(store.counts().running, 0);
        assert_eq!(store.counts().failed, 2);
        assert_eq!(store.non_terminal(), [id(5)]);
    }

    #[test]
    fn reopen_returns_the_same_data_without_touching_a_valid_journal() {
        let dir = tempfile::tempdir().unwrap();
        let store = sample_store(dir.path());
        let before = list_all(&store);
        let counts = store.counts();
        drop(store);
        let journal_inode = fs::metadata(dir.path().join(JOURNAL_FILE)).unwrap().ino();

        let (reopened, issues) = open(dir.path());
        assert!(issues.is_empty());
        assert_eq!(list_all(&reopened), before);
        assert_eq!(reopened.counts(), counts);
        assert_eq!(reopened.non_terminal(), [id(4), id(5)]);
        assert_eq!(
            fs::metadata(dir.path().join(JOURNAL_FILE)).unwrap().ino(),
            journal_inode,
            "an exact journal is not rewritten"
        );
    }

    #[test]
    fn a_staged_record_is_invisible_until_published_and_vanishes_if_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = open(dir.path());
        let first = job(1, "a", 1, JobStatus::Queued);
        let staged = JobStore::stage(dir.path(), &first).unwrap();
        assert_eq!(staged.job(), &first);
        assert!(store.get(&first.id).unwrap().is_none());
        assert!(!dir.path().join(format!("{}.yaml", first.id)).exists());
        let version = store.note(staged.job());
        let inode = store.files().publish(staged).unwrap();
        store.files().sync_dir().unwrap();
        store.written(&first.id, version, inode);
        assert_eq!(store.get(&first.id).unwrap().unwrap(), first);

        let second = job(2, "a", 2, JobStatus::Queued);
        drop(JobStore::stage(dir.path(), &second).unwrap());
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(
            leftovers.is_empty(),
            "a dropped staged record leaves no temporary file"
        );
        drop(store);
        let (reopened, issues) = open(dir.path());
        assert!(issues.is_empty());
        assert_eq!(reopened.len(), 1);
    }

    #[test]
    fn an_unsynced_put_is_read_back_like_any_other() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = open(dir.path());
        let mut running = job(1, "a", 1, JobStatus::Running);
        running.pid = Some(4242);
        store.put_unsynced(&running).unwrap();
        assert_eq!(store.get(&running.id).unwrap().unwrap().pid, Some(4242));
        drop(store);
        let (reopened, issues) = open(dir.path());
        assert!(issues.is_empty());
        assert_eq!(reopened.non_terminal(), [running.id.clone()]);
        assert_eq!(reopened.get(&running.id).unwrap().unwrap(), running);
    }

    #[test]
    fn records_the_journal_missed_in_a_crash_are_recovered_from_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let store = sample_store(dir.path());
        // Crash after the record write, before the journal append: the journal describes the old
        // version of job 3 and knows nothing of job 7.
        let mut changed = store.get(&id(3)).unwrap().unwrap();
        changed.status = JobStatus::Failed;
        changed.agent = "c".into();
        drop(store);
        for record in [changed, job(7, "b", 70, JobStatus::Completed)] {
            let yaml = record::to_yaml(&record, Path::new("out.jsonl")).unwrap();
            atomic_write(
                &dir.path().join(format!("{}.yaml", record.id)),
                yaml.as_bytes(),
            )
            .unwrap();
        }
        // And the last journal line was torn.
        let mut journal = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL_FILE))
            .unwrap();
        journal.write_all(br#"{"id":"job-2025-01-01-0000"#).unwrap();

        let (store, issues) = open(dir.path());
        assert!(issues.is_empty());
        let page = store.list(&JobFilter {
            agent: Some("c".into()),
            ..JobFilter::default()
        });
        assert_eq!(ids(&page.jobs), [3]);
        assert_eq!(page.jobs[0].status, JobStatus::Failed);
        assert_eq!(ids(&list_all(&store)), [7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(store.counts().failed, 2);

        // The journal was rebuilt: a second open trusts it entirely.
        drop(store);
        let text = fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
        assert_eq!(text.lines().count(), 1 + 7, "header and seven jobs");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn vanished_records_are_dropped_and_corrupt_ones_moved_aside_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = sample_store(dir.path());
        drop(store);
        fs::remove_file(dir.path().join(format!("{}.yaml", id(2)))).unwrap();
        // Replaced by an editor or another tool (a new file, so the journal does not vouch for it).
        let corrupt_path = dir.path().join(format!("{}.yaml", id(3)));
        atomic_write(&corrupt_path, b"id: [not a job").unwrap();
        let misnamed_path = dir.path().join(format!("{}.yaml", id(9)));
        let yaml = record::to_yaml(
            &job(1, "a", 10, JobStatus::Completed),
            Path::new("out.jsonl"),
        )
        .unwrap();
        fs::write(&misnamed_path, yaml).unwrap();
        fs::write(dir.path().join("notes.yaml"), "ignored: true").unwrap();

        let (store, issues) = open(dir.path());
        assert_eq!(ids(&list_all(&store)), [6, 5, 4, 1]);
        assert_eq!(issues.len(), 2, "{issues:?}");
        for issue in &issues {
            let StoreIssue::Corrupt(corrupt) = issue else {
                panic!("expected a corrupt record, got {issue}");
            };
            assert!(!corrupt.original.exists());
            assert!(corrupt.moved_to.exists());
            assert!(corrupt
                .moved_to
                .to_string_lossy()
                .contains(".yaml.corrupt-"));
        }
        let originals: HashSet<PathBuf> = issues
            .iter()
            .map(|issue| match issue {
                StoreIssue::Corrupt(corrupt) => corrupt.original.clone(),
                StoreIssue::Unreadable(error) => error.path().to_path_buf(),
            })
            .collect();
        assert_eq!(originals, HashSet::from([corrupt_path, misnamed_path]));
    }

    #[test]
    fn a_record_changed_behind_the_index_shows_up_as_unreadable_not_as_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let store = sample_store(dir.path());
        fs::remove_file(store.record_path(&id(3))).unwrap();
        let page = store.list(&JobFilter::default());
        assert_eq!(ids(&page.jobs), [6, 5, 4, 2, 1]);
        assert_eq!(page.unreadable.len(), 1);
        assert_eq!(page.unreadable[0].path(), store.record_path(&id(3)));
        assert!(store.get(&id(3)).is_err());
    }

    #[test]
    fn a_record_corrupted_in_place_is_reported_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = sample_store(dir.path());
        drop(store);
        // Same inode, so start-up trusts the journal; the damage surfaces on read.
        fs::write(dir.path().join(format!("{}.yaml", id(3))), "status: [").unwrap();
        let (store, issues) = open(dir.path());
        assert!(issues.is_empty());
        let error = store.get(&id(3)).unwrap_err();
        assert!(matches!(error, StateError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("is corrupt"));
        assert_eq!(store.list(&JobFilter::default()).unreadable.len(), 1);
    }

    fn limits(max_per_agent: usize, max_total: Option<usize>) -> Retention {
        Retention {
            max_per_agent,
            max_per_agent_explicit: true,
            max_total,
            max_age: None,
        }
    }

    /// Plans and applies `retention` at `now`, as the fleet does; returns the deleted ids.
    fn prune(
        store: &mut JobStore,
        retention: &Retention,
        now: DateTime<Utc>,
        keep: &dyn Fn(&JobId) -> bool,
    ) -> Vec<JobId> {
        let plan = store.plan_prune(retention, now, keep);
        store.forget(&plan.doomed).delete().unwrap();
        plan.doomed
    }

    #[test]
    fn prune_keeps_newest_per_agent_and_total_and_never_deletes_live_or_kept_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = sample_store(dir.path());
        for n in 1..=6 {
            store
                .output_writer(&id(n), None)
                .unwrap()
                .append(&OutputLine {
                    seq: 1,
                    timestamp: at(0),
                    kind: "system".into(),
                    chunk: String::new(),
                    message: None,
                    truncated: false,
                })
                .unwrap();
        }
        let now = at(100);
        // a: 6 cancelled, 5 queued, 3 completed, 1 completed; b: 4 running, 2 failed.
        let deleted = prune(&mut store, &limits(2, None), now, &|_| false);
        assert_eq!(
            deleted,
            [id(3), id(1)],
            "a keeps 6 and the live 5; b is within its limit"
        );
        for n in [1, 3] {
            assert!(!store.record_path(&id(n)).exists());
            assert!(!store.output_path(&id(n)).exists());
            assert_eq!(store.get(&id(n)).unwrap(), None);
        }
        assert!(store.output_path(&id(2)).exists());
        assert_eq!(store.counts().completed, 0);

        // Total cap 2: keep the newest two (6, 5); 4 is running so it stays; 2 goes unless kept.
        let deleted = prune(&mut store, &limits(100, Some(2)), now, &|job| *job == id(2));
        assert!(deleted.is_empty());
        let deleted = prune(&mut store, &limits(100, Some(2)), now, &|_| false);
        assert_eq!(deleted, [id(2)]);
        assert_eq!(ids(&list_all(&store)), [6, 5, 4]);

        let deleted = prune(&mut store, &limits(0, Some(0)), now, &|_| false);
        assert_eq!(deleted, [id(6)], "queued 5 and running 4 survive any limit");
        drop(store);
        assert_eq!(ids(&list_all(&open(dir.path()).0)), [5, 4]);
    }

    #[test]
    fn prune_by_age_takes_terminal_jobs_that_finished_before_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = sample_store(dir.path());
        // Finished at 11 (1), 21 (2), 31 (3), 51 (6); 4 running and 5 queued are older than any cutoff.
        let by_age = |seconds| Retention {
            max_age: Some(std::time::Duration::from_secs(seconds)),
            ..limits(100, None)
        };
        assert!(prune(&mut store, &by_age(100), at(100), &|_| false).is_empty());
        assert_eq!(
            prune(&mut store, &by_age(65), at(100), &|_| false),
            [id(3), id(2), id(1)]
        );
        assert_eq!(
            prune(&mut store, &by_age(0), at(100), &|job| *job == id(6)),
            Vec::<JobId>::new(),
            "a protected job stays"
        );
        assert_eq!(prune(&mut store, &by_age(0), at(100), &|_| false), [id(6)]);
        assert_eq!(ids(&list_all(&store)), [5, 4]);
    }

    #[test]
    fn records_herdctl_wrote_go_only_by_limits_set_explicitly() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = open(dir.path());
        // herdctl's history 1..=4, then herdctld's 5..=7, all of agent a.
        for n in 1..=7u32 {
            let mut record = job(n, "a", i64::from(n) * 10, JobStatus::Completed);
            record.herdctl_record = n <= 4;
            store.put(&record).unwrap();
        }
        drop(store);
        let (mut store, _) = open(dir.path());
        let implicit = Retention {
            max_per_agent_explicit: false,
            ..limits(2, None)
        };
        let plan = store.plan_prune(&implicit, at(100), &|_| false);
        assert_eq!(
            plan.doomed,
            [id(5)],
            "herdctl's records take no place of herdctld's"
        );
        assert_eq!(plan.herdctl_kept_beyond_default, 4, "7, 6 and 5 come first");
        assert_eq!(prune(&mut store, &implicit, at(100), &|_| false), [id(5)]);
        // An explicit total or age limit applies to them; so does an explicit per-agent one.
        let total = Retention {
            max_total: Some(4),
            ..implicit
        };
        assert_eq!(
            prune(&mut store, &total, at(100), &|_| false),
            [id(2), id(1)]
        );
        assert_eq!(
            prune(&mut store, &limits(2, None), at(100), &|_| false),
            [id(4), id(3)]
        );
        assert_eq!(ids(&list_all(&store)), [7, 6]);
    }

    #[test]
    fn forgotten_jobs_leave_the_index_at_once_and_their_files_on_delete() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = sample_store(dir.path());
        let mut writer = store.output_writer(&id(1), None).unwrap();
        writer
            .append(&OutputLine {
                seq: 1,
                timestamp: at(0),
                kind: "stdout".into(),
                chunk: String::new(),
                message: None,
                truncated: false,
            })
            .unwrap();
        writer.flush().unwrap();
        assert_eq!(store.last_seq(&id(1)).unwrap(), Some(1));
        assert_eq!(store.read_output(&id(1), 0, None).unwrap().len(), 1);
        let files = store.forget(&[id(1)]);
        assert!(store.forget(&[id(1)]).is_empty(), "forgotten once");
        assert_eq!(store.get(&id(1)).unwrap(), None);
        assert_eq!(store.counts().completed, 1);
        assert!(store.record_path(&id(1)).exists());
        files.delete().unwrap();
        assert!(!store.output_path(&id(1)).exists());
        assert!(!store.record_path(&id(1)).exists());
    }

    /// A finished job of `agent` that ended at `second` and cost `cost` with 10 input tokens.
    fn costly(n: u32, agent: &str, second: i64, cost: f64) -> Job {
        let mut job = job(n, agent, second - 1, JobStatus::Completed);
        job.usage = Some(serde_json::json!({
            "per_model": {"m": {"input_tokens": 10, "output_tokens": 1,
                                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2}},
            "total_cost_usd": cost
        }));
        job
    }

    #[test]
    fn usage_sums_by_agent_and_end_time_and_survives_reopen_with_or_without_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = open(dir.path());
        for job in [
            costly(1, "a", 100, 1.0),
            costly(2, "a", 200, 2.0),
            costly(3, "b", 200, 4.0),
            job(4, "a", 250, JobStatus::Completed),
        ] {
            store.put(&job).unwrap();
        }
        // Still running: no end, not counted until its final record.
        let mut running = costly(5, "a", 300, 8.0);
        running.status = JobStatus::Running;
        running.finished_at = None;
        store.put(&running).unwrap();
        let check = |store: &JobStore, what: &str| {
            let a = store.usage_between(Some("a"), at(0), at(1000));
            assert_eq!((a.jobs, a.cost_usd, a.input_tokens), (2, 3.0, 20), "{what}");
            assert_eq!(a.cache_read_input_tokens, 4, "{what}");
            let everyone = store.usage_between(None, at(0), at(1000));
            assert_eq!((everyone.jobs, everyone.cost_usd), (3, 7.0), "{what}");
            // [since, until): the end at 200 is in the second window only.
            assert_eq!(
                store.usage_between(Some("a"), at(0), at(200)).cost_usd,
                1.0,
                "{what}"
            );
            assert_eq!(
                store.usage_between(Some("a"), at(200), at(201)).cost_usd,
                2.0,
                "{what}"
            );
            assert_eq!(
                store.usage_between(Some("c"), at(0), at(1000)).jobs,
                0,
                "{what}"
            );
            assert_eq!(store.usage_between(None, at(1000), at(0)).jobs, 0, "{what}");
        };
        check(&store, "written");
        drop(store);

        let journal_inode = || fs::metadata(dir.path().join(JOURNAL_FILE)).unwrap().ino();
        let before = journal_inode();
        let (store, _) = open(dir.path());
        check(&store, "from the journal");
        assert_eq!(
            journal_inode(),
            before,
            "the journal was exact: no record was read"
        );
        drop(store);
        fs::remove_file(dir.path().join(JOURNAL_FILE)).unwrap();
        let (store, _) = open(dir.path());
        check(&store, "from the records");
        drop(store);
        let (mut store, _) = open(dir.path());
        check(&store, "from the rebuilt journal");

        // A rewritten record replaces its usage; a forgotten one leaves the totals.
        store.put(&costly(2, "a", 200, 0.5)).unwrap();
        assert_eq!(
            store.usage_between(Some("a"), at(0), at(1000)).cost_usd,
            1.5
        );
        let _files = store.forget(&[id(1), id(2)]);
        assert_eq!(store.usage_between(Some("a"), at(0), at(1000)).jobs, 0);
        assert_eq!(store.usage_between(None, at(0), at(1000)).cost_usd, 4.0);
    }

    #[test]
    fn a_bloated_journal_is_compacted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = open(dir.path());
        store.put(&job(1, "a", 0, JobStatus::Completed)).unwrap();
        drop(store);
        let journal_path = dir.path().join(JOURNAL_FILE);
        let compact = fs::read_to_string(&journal_path).unwrap();
        let line = compact.strip_prefix(journal::HEADER).unwrap();
        let bloated = format!(
            "{}{}",
            journal::HEADER,
            line.repeat(JOURNAL_SLACK_LINES + 10)
        );
        fs::write(&journal_path, bloated).unwrap();
        let (store, _) = open(dir.path());
        assert_eq!(store.len(), 1);
        assert_eq!(fs::read_to_string(&journal_path).unwrap(), compact);
    }

    #[test]
    fn a_failed_journal_append_is_repaired_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = open(dir.path());
        store.put(&job(1, "a", 0, JobStatus::Completed)).unwrap();
        let journal_path = dir.path().join(JOURNAL_FILE);
        // Make appends fail: the journal path becomes a directory.
        fs::remove_file(&journal_path).unwrap();
        store.files.close_journal_appender();
        fs::create_dir(&journal_path).unwrap();
        let error = store
            .put(&job(2, "a", 1, JobStatus::Completed))
            .unwrap_err();
        assert_eq!(error.path(), journal_path);
        assert!(
            store.contains(&id(2)),
            "the record was written, so it is indexed"
        );

        fs::remove_dir(&journal_path).unwrap();
        store.put(&job(3, "a", 2, JobStatus::Completed)).unwrap();
        let rebuilt = fs::read_to_string(&journal_path).unwrap();
        assert_eq!(rebuilt.lines().count(), 1 + 3, "header and three jobs");
    }

    /// SPEC §13: start-up with 100,000 jobs in history under a second. The history is laid out as
    /// the daemon leaves it (a record and an output file per job, and the journal), but the files are
    /// hard links to a few templates so that the setup takes seconds, not minutes; `open` cannot tell.
    #[test]
    fn opening_a_big_history_is_fast() {
        let count: u32 = std::env::var("HERDCTL_BIG_STORE_JOBS")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(100_000);
        let dir = tempfile::tempdir().unwrap();
        let setup = Instant::now();
        let (mut store, _) = open(dir.path());
        let template_id = id(0);
        let template = record::to_yaml(
            &job(0, "agent-0", 0, JobStatus::Completed),
            Path::new("out.jsonl"),
        )
        .unwrap();
        // ext4 allows 65,000 links per inode.
        const LINKS_PER_TEMPLATE: u32 = 50_000;
        let mut templates = Vec::new();
        for n in 1..=count {
            let template_index = ((n - 1) / LINKS_PER_TEMPLATE) as usize;
            if templates.len() == template_index {
                let record = dir.path().join(format!("template-{template_index}.yaml"));
                let output = dir.path().join(format!("template-{template_index}.jsonl"));
                fs::write(&record, &template).unwrap();
                fs::write(&output, b"").unwrap();
                let inode = fs::metadata(&record).unwrap().ino();
                templates.push((record, output, inode));
            }
            let (record, output, inode) = &templates[template_index];
            let job_id = id(n);
            fs::hard_link(record, store.record_path(&job_id)).unwrap();
            fs::hard_link(output, store.output_path(&job_id)).unwrap();
            let agent = format!("agent-{}", n % 100);
            let mut summary = job(0, &agent, i64::from(n), JobStatus::Completed);
            summary.id = job_id;
            store.index(&summary, *inode);
        }
        store
            .files
            .replace_journal(store.journal_snapshot())
            .unwrap();
        drop(store);
        let setup = setup.elapsed();

        let started = Instant::now();
        let (store, issues) = open(dir.path());
        let elapsed = started.elapsed();
        let listed = Instant::now();
        let page = store.list(&JobFilter {
            agent: Some("agent-7".into()),
            ..JobFilter::default()
        });
        let list_elapsed = listed.elapsed();
        println!(
            "JobStore::open with {count} jobs: {elapsed:?} (setup {setup:?}); \
             getJobs-style filtered page: {list_elapsed:?}"
        );
        // Every record came from the journal: re-reading one would report a misnamed record.
        assert!(
            issues.is_empty(),
            "{} issues, first: {}",
            issues.len(),
            issues[0]
        );
        assert_eq!(store.len(), count as usize);
        assert_eq!(page.total, (1..=count).filter(|n| n % 100 == 7).count());
        assert!(page.jobs.iter().all(|job| job.id == template_id));
        // SPEC §13 is about the daemon, an optimised build (measured ~0.23 s here). Unoptimised
        // test builds are 3-5x slower and this VM's speed varies, so they get a bound that still
        // catches the real regression, parsing every record (tens of seconds).
        let bound = if cfg!(debug_assertions) { 5.0 } else { 1.0 };
        assert!(elapsed.as_secs_f64() < bound, "open took {elapsed:?}");
    }
}
