//! Writes job records outside the fleet lock. Under the lock a write is only queued, after the index
//! noted the job's new version ([`JobStore::note`]); a task writes the queue soon after, in order, one
//! batch at a time, so a job's records land in the order the fleet decided them, and one directory
//! fsync covers a batch's durable writes. Whoever needs a write on disk (the creator of a job, the end
//! of one) awaits its [`Landing`] and then tells the index which file it wrote ([`JobStore::written`]).
//!
//! Until a job's last write has landed the fleet answers for it from memory (it is still in the job
//! table), so a record file read meanwhile is never taken for the job as it is. Dropping the writer (the
//! fleet's last handle) writes what is still queued before the state directory's lock is released.
//!
//! [`JobStore::note`]: crate::state::JobStore::note
//! [`JobStore::written`]: crate::state::JobStore::written

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::job::{Job, JobId};
use crate::state::{Durability, JournalSnapshot, RecordFiles, RecordVersion, StagedRecord};

use super::background_writer::{lock, BackgroundWriter, Batches, Flusher};
use super::events::{report_state_error, EventBus};

/// One record write.
pub(super) enum RecordWrite {
    /// A record staged (written and fsynced) before the lock was taken: renamed into place.
    Publish(StagedRecord),
    /// A record written whole, fsynced when `Durability::Machine`.
    Put(Job, Durability),
}

impl RecordWrite {
    pub(super) fn job(&self) -> &Job {
        match self {
            RecordWrite::Publish(staged) => staged.job(),
            RecordWrite::Put(job, _) => job,
        }
    }
}

/// How a queued record write ended: the file it wrote (its inode), or what went wrong (reported on the
/// fleet's events already).
#[derive(Debug)]
pub(super) struct Landed {
    pub(super) id: JobId,
    pub(super) version: RecordVersion,
    pub(super) inode: Result<u64, String>,
}

/// The end of one queued write, to await outside the lock.
pub(super) struct Landing(oneshot::Receiver<Landed>);

impl Landing {
    /// Waits until the write is on disk (durable, for a durable write) or failed. `None` when the
    /// writer went away first (the fleet was dropped; its last writes were made then).
    pub(super) async fn wait(self) -> Option<Landed> {
        self.0.await.ok()
    }
}

enum Operation {
    Record {
        /// Boxed: a job record is large beside the other operation.
        write: Box<RecordWrite>,
        version: RecordVersion,
        landed: oneshot::Sender<Landed>,
    },
    ReplaceJournal(JournalSnapshot),
}

/// What is queued and where it goes.
pub(super) struct RecordQueue {
    queue: Mutex<VecDeque<Operation>>,
    /// A journal rewrite is queued: another would only repeat it (the journal stays due until it ran).
    rewrite_queued: AtomicBool,
    files: Arc<RecordFiles>,
    events: EventBus,
}

/// The fleet's writer of job records; one per open job store.
pub(super) struct RecordWriter {
    writer: BackgroundWriter<RecordQueue>,
}

impl RecordWriter {
    /// Starts the writing task for the store whose files are `files`; errors are reported on `events`.
    pub(super) fn start(files: Arc<RecordFiles>, events: EventBus) -> RecordWriter {
        let queue = RecordQueue {
            queue: Mutex::new(VecDeque::new()),
            rewrite_queued: AtomicBool::new(false),
            files,
            events: events.clone(),
        };
        RecordWriter {
            writer: BackgroundWriter::start(queue, events),
        }
    }

    /// Queues `write`, which the index noted as `version` of its job.
    pub(super) fn queue(&self, write: RecordWrite, version: RecordVersion) -> Landing {
        let (landed, landing) = oneshot::channel();
        self.push(Operation::Record {
            write: Box::new(write),
            version,
            landed,
        });
        Landing(landing)
    }

    /// Queues a rewrite of the journal with the snapshot `take` makes, after the writes queued before
    /// it, unless one is queued already.
    pub(super) fn replace_journal(&self, take: impl FnOnce() -> JournalSnapshot) {
        if !self
            .writer
            .batches()
            .rewrite_queued
            .swap(true, Ordering::SeqCst)
        {
            self.push(Operation::ReplaceJournal(take()));
        }
    }

    fn push(&self, operation: Operation) {
        lock(&self.writer.batches().queue).push_back(operation);
        self.writer.wake();
    }

    /// A handle to write what is queued, usable without holding the fleet lock.
    pub(super) fn flusher(&self) -> Flusher<RecordQueue> {
        self.writer.flusher()
    }
}

impl Batches for RecordQueue {
    const WHAT: &'static str = "job records";

    fn write_batch(&self) {
        let queue = std::mem::take(&mut *lock(&self.queue));
        if queue.is_empty() {
            return;
        }
        let mut landings = Vec::with_capacity(queue.len());
        let mut durable_renames = false;
        for operation in queue {
            match operation {
                Operation::Record {
                    write,
                    version,
                    landed,
                } => {
                    let id = write.job().id.clone();
                    let (job, durable, written) = match *write {
                        RecordWrite::Publish(staged) => {
                            let job = staged.job().clone();
                            (job, true, self.files.publish(staged))
                        }
                        RecordWrite::Put(job, durability) => {
                            let written = self.files.write(&job, durability);
                            (job, durability == Durability::Machine, written)
                        }
                    };
                    let inode = written.map_err(|e| e.to_string());
                    if let Ok(inode) = inode {
                        durable_renames |= durable;
                        // No fsync needed: a line whose inode is not the file's is never trusted.
                        if let Err(e) = self.files.journal(&job, inode) {
                            report_state_error(&self.events, &e.to_string());
                        }
                    }
                    landings.push((durable, landed, Landed { id, version, inode }));
                }
                Operation::ReplaceJournal(snapshot) => {
                    if let Err(e) = self.files.replace_journal(snapshot) {
                        report_state_error(&self.events, &e.to_string());
                    }
                    self.rewrite_queued.store(false, Ordering::SeqCst);
                }
            }
        }
        let synced = if durable_renames {
            self.files.sync_dir().map(drop).map_err(|e| e.to_string())
        } else {
            Ok(())
        };
        for (durable, landed, mut landing) in landings {
            if let (true, Ok(_), Err(e)) = (durable, &landing.inode, &synced) {
                landing.inode = Err(e.clone());
            }
            if let Err(e) = &landing.inode {
                report_state_error(&self.events, &format!("job {}: {e}", landing.id));
            }
            // Nobody waits for a record whose durability does not matter (a running job's pid).
            let _ = landed.send(landing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobStatus, TriggerType};
    use crate::state::JobStore;

    use super::super::events::EventItem;

    fn job(status: JobStatus) -> Job {
        let mut job = Job::new(
            JobId::parse("job-2026-12-03-aaaaaa").unwrap(),
            "a".into(),
            None,
            TriggerType::Manual,
            Some("p".into()),
            5,
            chrono::Utc::now(),
        );
        job.status = status;
        job
    }

    #[tokio::test]
    async fn writes_land_in_the_order_they_were_queued_and_the_journal_follows_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = JobStore::open(dir.path()).unwrap();
        let writer = RecordWriter::start(store.files(), EventBus::new(16));
        let running = job(JobStatus::Running);
        let completed = job(JobStatus::Completed);
        let first = store.note(&running);
        let second = store.note(&completed);
        let _unawaited = writer.queue(RecordWrite::Put(running, Durability::Process), first);
        let landed = writer
            .queue(
                RecordWrite::Put(completed.clone(), Durability::Machine),
                second,
            )
            .wait()
            .await
            .unwrap();
        let inode = landed.inode.unwrap();
        assert_eq!(landed.version, second);
        assert_eq!(store.get(&completed.id).unwrap().unwrap(), completed);
        store.written(&completed.id, landed.version, inode);
        drop((writer, store));

        let journal = std::fs::read_to_string(dir.path().join("index.tsv")).unwrap();
        let statuses: Vec<&str> = journal
            .lines()
            .skip(1)
            .map(|line| line.split('\t').nth(1).unwrap())
            .collect();
        assert_eq!(statuses, ["running", "completed"]);
        let (reopened, issues) = JobStore::open(dir.path()).unwrap();
        assert!(issues.is_empty());
        assert_eq!(reopened.counts().completed, 1);
    }

    #[tokio::test]
    async fn what_is_queued_when_the_writer_is_dropped_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = JobStore::open(dir.path()).unwrap();
        let writer = RecordWriter::start(store.files(), EventBus::new(16));
        let completed = job(JobStatus::Completed);
        let version = store.note(&completed);
        let landing = writer.queue(
            RecordWrite::Put(completed.clone(), Durability::Machine),
            version,
        );
        drop(writer);
        assert!(landing.wait().await.unwrap().inode.is_ok());
        assert_eq!(
            JobStore::read_record(&store.record_path(&completed.id)).unwrap(),
            Some(completed)
        );
    }

    #[tokio::test]
    async fn a_write_that_fails_lands_as_the_error_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = JobStore::open(&dir.path().join("jobs")).unwrap();
        let events = EventBus::new(16);
        let mut errors = events.subscribe(Some(vec!["error".into()]));
        let writer = RecordWriter::start(store.files(), events);
        std::fs::remove_dir_all(dir.path().join("jobs")).unwrap();
        let queued = job(JobStatus::Queued);
        let version = store.note(&queued);
        let landed = writer
            .queue(RecordWrite::Put(queued, Durability::Machine), version)
            .wait()
            .await
            .unwrap();
        let error = landed.inode.unwrap_err();
        assert!(error.contains("jobs"), "{error}");
        let Some(EventItem::Event(reported)) = errors.next().await else {
            panic!("the failure was not reported");
        };
        assert!(serde_json::to_string(&reported)
            .unwrap()
            .contains("job-2026-12-03-aaaaaa"));
    }
}
