//! The file side of the job store: record writes, the index journal's appends and rewrites, and the
//! group commit of the jobs directory. It needs nothing of the in-memory index, so a writer can use it
//! without holding the lock that guards the index: the fleet keeps all of this outside its lock.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use super::atomic::{atomic_write, stage_with, DirSync, Durability, StagedWrite};
use super::journal::{self, JournalEntry};
use super::record;
use super::StateError;
use crate::job::{Job, JobId, UsageTotals};

/// File name of the index journal inside the jobs directory.
pub(crate) const JOURNAL_FILE: &str = "index.tsv";

/// The journal is compacted once it holds this many lines more than twice the live jobs.
pub(crate) const JOURNAL_SLACK_LINES: usize = 4096;

/// A job record staged by [`RecordFiles::stage`]: written and fsynced beside its final name, not yet
/// visible; [`RecordFiles::publish`] makes it the job's record, dropped it is removed.
#[derive(Debug)]
pub struct StagedRecord {
    job: Job,
    write: StagedWrite,
}

impl StagedRecord {
    /// The record as it will be once published.
    pub fn job(&self) -> &Job {
        &self.job
    }
}

/// The whole journal as the index describes it, built where the index is and written by
/// [`RecordFiles::replace_journal`].
#[derive(Debug)]
pub struct JournalSnapshot {
    pub(crate) bytes: Vec<u8>,
    pub(crate) lines: usize,
}

/// The appender of `index.tsv`, opened on the first append after open or a rewrite.
#[derive(Debug)]
struct Journal {
    path: PathBuf,
    appender: Option<File>,
}

/// Writes the records and the journal of one jobs directory.
#[derive(Debug)]
pub struct RecordFiles {
    dir: PathBuf,
    journal: Mutex<Journal>,
    /// Lines in the journal; read without its mutex, so that the index can decide on a rewrite without
    /// waiting for an append in progress.
    journal_lines: AtomicUsize,
    /// An append failed, so the journal may miss a line: it is rewritten whole next.
    journal_needs_rewrite: AtomicBool,
    /// Makes published renames durable, one fsync shared by writers that sync together.
    dir_sync: DirSync,
}

impl RecordFiles {
    pub(crate) fn new(dir: &Path, journal_lines: usize) -> RecordFiles {
        RecordFiles {
            dir: dir.to_path_buf(),
            journal: Mutex::new(Journal {
                path: dir.join(JOURNAL_FILE),
                appender: None,
            }),
            journal_lines: AtomicUsize::new(journal_lines),
            journal_needs_rewrite: AtomicBool::new(false),
            dir_sync: DirSync::new(dir.to_path_buf()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILE)
    }

    pub fn record_path(&self, id: &JobId) -> PathBuf {
        self.dir.join(format!("{id}.yaml"))
    }

    /// The slow, durable half of a record write: `job`'s record written and fsynced beside its final name
    /// in `jobs_dir`. It touches nothing shared; [`publish`](Self::publish) makes it the job's record.
    pub fn stage(jobs_dir: &Path, job: &Job) -> Result<StagedRecord, StateError> {
        let path = jobs_dir.join(format!("{}.yaml", job.id));
        let yaml = record_yaml(&path, job)?;
        Ok(StagedRecord {
            job: job.clone(),
            write: stage_with(&path, yaml.as_bytes(), Durability::Machine, &mut |_| Ok(()))?,
        })
    }

    /// Renames a staged record into place; returns its inode. Durable after [`sync_dir`](Self::sync_dir).
    pub fn publish(&self, staged: StagedRecord) -> Result<u64, StateError> {
        let inode = staged.write.publish()?;
        self.dir_sync.renamed();
        Ok(inode)
    }

    /// Replaces `job`'s record atomically (temporary file, rename); returns the new file's inode. With
    /// [`Durability::Machine`] the file is fsynced, and the rename is durable after
    /// [`sync_dir`](Self::sync_dir).
    pub fn write(&self, job: &Job, durability: Durability) -> Result<u64, StateError> {
        let path = self.record_path(&job.id);
        let yaml = record_yaml(&path, job)?;
        let staged = stage_with(&path, yaml.as_bytes(), durability, &mut |_| Ok(()))?;
        let inode = staged.publish()?;
        if durability == Durability::Machine {
            self.dir_sync.renamed();
        }
        Ok(inode)
    }

    /// Makes every record published so far durable (one fsync of the directory, shared with callers
    /// syncing at the same time). Blocking.
    pub fn sync_dir(&self) -> Result<bool, StateError> {
        self.dir_sync.sync()
    }

    /// Appends the journal line of `job`'s record, whose file has `inode`. A failed append marks the
    /// journal for a rewrite ([`journal_due`](Self::journal_due)).
    pub fn journal(&self, job: &Job, inode: u64) -> Result<(), StateError> {
        let mut line = Vec::with_capacity(160);
        let usage = job.finished_at.and(job.usage.as_ref()).map(UsageTotals::of);
        let entry = JournalEntry {
            id: job.id.as_str(),
            status: job.status,
            created_at: job.created_at,
            finished_at: job.finished_at,
            herdctl: job.herdctl_record,
            inode,
            usage,
            agent: &job.agent,
        };
        if !journal::push_line(&mut line, &entry) {
            return Ok(());
        }
        let mut journal = self.journal.lock().unwrap_or_else(PoisonError::into_inner);
        let appended = journal.append(&line);
        match appended {
            Ok(()) => {
                self.journal_lines.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => {
                journal.appender = None;
                self.journal_needs_rewrite.store(true, Ordering::SeqCst);
            }
        }
        appended
    }

    /// Whether the journal is to be rewritten whole: an append failed, or it holds far more lines than
    /// the `live_jobs` it describes.
    pub fn journal_due(&self, live_jobs: usize) -> bool {
        self.journal_needs_rewrite.load(Ordering::SeqCst)
            || self.journal_lines.load(Ordering::SeqCst) > 2 * live_jobs + JOURNAL_SLACK_LINES
    }

    /// Replaces the journal with `snapshot`.
    pub fn replace_journal(&self, snapshot: JournalSnapshot) -> Result<(), StateError> {
        let mut journal = self.journal.lock().unwrap_or_else(PoisonError::into_inner);
        atomic_write(&journal.path, &snapshot.bytes)?;
        // The old appender points at the replaced file.
        journal.appender = None;
        self.journal_lines.store(snapshot.lines, Ordering::SeqCst);
        self.journal_needs_rewrite.store(false, Ordering::SeqCst);
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn close_journal_appender(&self) {
        self.journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .appender = None;
    }
}

impl Journal {
    fn append(&mut self, line: &[u8]) -> Result<(), StateError> {
        let io_error = |source| StateError::Io {
            action: "append to the job index",
            path: self.path.clone(),
            source,
        };
        let appender = match &mut self.appender {
            Some(file) => file,
            None => {
                let file = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(&self.path)
                    .map_err(io_error)?;
                self.appender.insert(file)
            }
        };
        appender.write_all(line).map_err(io_error)
    }
}

/// The text of `job`'s record at `path` (`<jobs>/<id>.yaml`), in the layout of [`super::record`].
fn record_yaml(path: &Path, job: &Job) -> Result<String, StateError> {
    let output_path = path.with_extension("jsonl");
    // herdctl records the output file's absolute path; a relative state directory is relative to our cwd.
    let output_path = std::path::absolute(&output_path).unwrap_or(output_path);
    record::to_yaml(job, &output_path).map_err(|error| StateError::Serialize {
        what: "job record",
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}
