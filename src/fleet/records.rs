//! A job record's durable write, split so the slow half stays outside the fleet lock: staged (written and
//! fsynced) in the blocking pool, committed (renamed and indexed) under the lock, the directory synced after.

use std::sync::Arc;

use crate::job::Job;
use crate::state::{DirSync, Durability, JobStore, StagedRecord};

use super::core::Core;
use super::error::FleetError;
use super::events::report_state_error;
use super::manager::FleetManager;

pub(super) fn commit(
    manager: &FleetManager,
    core: &mut Core,
    staged: StagedRecord,
) -> Result<(), FleetError> {
    let path = format!("jobs/{}.yaml", staged.job().id);
    let committed = match core.store.as_mut() {
        Some(store) => store.commit(staged),
        None => return Err(not_initialized_store()),
    };
    committed.map_err(|e| {
        report_state_error(manager.events(), &e.to_string());
        FleetError::State {
            path,
            message: e.to_string(),
        }
    })
}

fn not_initialized_store() -> FleetError {
    FleetError::State {
        path: String::new(),
        message: "the fleet is not initialized".into(),
    }
}

pub(super) fn persist(
    manager: &FleetManager,
    core: &mut Core,
    job: &Job,
) -> Result<(), FleetError> {
    persist_with(manager, core, job, Durability::Machine)
}

pub(super) fn persist_with(
    manager: &FleetManager,
    core: &mut Core,
    job: &Job,
    durability: Durability,
) -> Result<(), FleetError> {
    let Some(store) = core.store.as_mut() else {
        return Err(not_initialized_store());
    };
    let written = match durability {
        Durability::Machine => store.put(job),
        Durability::Process => store.put_unsynced(job),
    };
    written.map_err(|e| {
        report_state_error(manager.events(), &e.to_string());
        FleetError::State {
            path: format!("jobs/{}.yaml", job.id),
            message: e.to_string(),
        }
    })
}

/// Writes and fsyncs `job`'s record beside its final name in `dir`, in the blocking pool: the slow half
/// of a durable write, kept outside the fleet lock so jobs starting or ending together share the disk.
/// [`admit_staged`] or [`finalize_locked`] commits it under the lock; [`sync_jobs_dir`] follows.
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

/// Makes the records committed so far durable (fsync of the jobs directory, shared with jobs committing
/// at the same time), outside the fleet lock.
pub(super) async fn sync_jobs_dir(manager: &FleetManager, dir_sync: Arc<DirSync>) {
    let synced = tokio::task::spawn_blocking(move || dir_sync.sync()).await;
    if let Ok(Err(e)) = synced {
        report_state_error(manager.events(), &e.to_string());
    }
}
