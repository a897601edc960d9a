//! A job record's write, kept outside the fleet lock: under it the index notes the job's new version and
//! the write is queued ([`record_writer`](super::record_writer)); a creation record is staged (written
//! and fsynced) before the lock is taken; whoever needs a write on disk awaits its landing, then lets the
//! index vouch for the file that holds that version.

use crate::job::Job;
use crate::state::{Durability, JobStore, StagedRecord};

use super::core::Core;
use super::error::FleetError;
use super::events::report_state_error;
use super::manager::FleetManager;
use super::record_writer::{Landed, Landing, RecordWrite};

/// Notes `write`'s record in the index and queues the write; no file I/O (the caller holds the lock).
pub(super) fn queue(core: &mut Core, write: RecordWrite) -> Result<Landing, FleetError> {
    let (Some(store), Some(writer)) = (core.store.as_mut(), core.records.as_ref()) else {
        return Err(FleetError::State {
            path: String::new(),
            message: "the fleet is not initialized".into(),
        });
    };
    let version = store.note(write.job());
    Ok(writer.queue(write, version))
}

/// Queues `job`'s record, written whole.
pub(super) fn put(
    core: &mut Core,
    job: &Job,
    durability: Durability,
) -> Result<Landing, FleetError> {
    queue(core, RecordWrite::Put(job.clone(), durability))
}

/// A queued write landed ([`Landing::wait`], outside the lock): the index vouches for the file it wrote,
/// and the journal is compacted when due. Under the lock; no file I/O. A failed write was reported where
/// it happened, and the index vouches for no file of it.
///
/// [`Landing::wait`]: super::record_writer::Landing::wait
pub(super) fn vouch(core: &mut Core, landed: Landed) {
    let Ok(inode) = landed.inode else {
        return;
    };
    if let (Some(store), Some(writer)) = (core.store.as_mut(), core.records.as_ref()) {
        store.written(&landed.id, landed.version, inode);
        if store.journal_due() {
            writer.replace_journal(|| store.journal_snapshot());
        }
    }
}

/// Writes and fsyncs `job`'s record beside its final name in `dir`, in the blocking pool: the slow half
/// of a durable write, done before the lock is taken so that a full disk refuses the job before it runs.
/// [`queue`] with [`RecordWrite::Publish`] renames it into place.
pub(super) async fn stage_record(
    manager: &FleetManager,
    dir: &std::path::Path,
    job: Job,
) -> Result<StagedRecord, FleetError> {
    let owned_dir = dir.to_path_buf();
    let staged = tokio::task::spawn_blocking(move || JobStore::stage(&owned_dir, &job))
        .await
        .map_err(|e| format!("writing the job record failed: {e}"))
        .and_then(|staged| staged.map_err(|e| e.to_string()));
    staged.map_err(|message| {
        report_state_error(manager.events(), &message);
        FleetError::State {
            path: dir.display().to_string(),
            message,
        }
    })
}
