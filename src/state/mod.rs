//! The state directory (SPEC §6): everything herdctld persists, and nothing else.
//!
//! ```text
//! <state>/herdctld.lock   flock held for the StateDir's life (one daemon per state dir)
//! <state>/state.yaml      FleetState: schedule overrides, run times, counters (herdctl's layout)
//! <state>/jobs/<id>.yaml  job records;  <id>.jsonl  job output (<id>.jsonl.tail-0/-1 its capped tail while
//!                         the job runs);  index.tsv  the index journal
//! <state>/sessions/<agent>.json   the Claude session each agent resumes (herdctl's SessionInfo)
//! <state>/executor/<id>.*  what a job a cluster engine runs shares with its exec-shim (`ExchangeDir`)
//! <state>/docker-sessions/<agent>/   a container agent's Claude home (created and mounted by `runner::container`)
//! <state>/container-mask/ an empty directory mounted over the state directory where a container would see it
//! <state>/herdctl.pid     written by a running herdctl: opening refuses while that process lives
//! ```
//!
//! The directory is herdctl's too (`.herdctl/`): everything herdctl writes here is read in place and kept,
//! so a fleet can switch between the tools in either direction. The daemon's own log goes where
//! `--log-file` says (or stderr), never here, so no `logs/` is created.
//!
//! Owns: the lock, atomic durable writes ([`atomic_write`]), quarantine of corrupt files
//! ([`CorruptFile`]), [`FleetState`], the [`JobStore`] with its in-memory index and its file side
//! ([`RecordFiles`], usable without the index, so that a caller can write outside the lock guarding it),
//! and job output files ([`OutputWriter`]). Every rewrite is temp file + fsync + rename + directory fsync
//! (for job records the directory fsync is shared by writes made together, [`DirSync`]); output is appended and a torn
//! last line is tolerated. Corrupt files are moved aside and returned to the caller, which
//! reports them — they never silently reset state.
//!
//! Must not: decide policy (what crash recovery does to interrupted jobs, retention limits, when to
//! save), spawn anything, or use async: the API is synchronous blocking I/O; the caller picks the thread.
//!
//! Public API: [`StateDir::open`] (lock + layout) and its path accessors, [`StateDir::load_fleet_state`],
//! [`StateDir::save_fleet_state`], [`StateDir::open_job_store`]; the types re-exported below.

mod atomic;
mod corrupt;
mod exchange;
mod fleet_state;
mod jobs;
mod journal;
mod lock;
mod output;
mod record;
mod record_files;
mod sessions;

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub use atomic::{
    atomic_write, remove_stale_temp_files, stage_write, sync_dir_of, DirSync, Durability,
    StagedWrite, WriteStep,
};
pub use corrupt::CorruptFile;
pub use exchange::{requested_grace, ExchangeDir};
pub use fleet_state::{AgentState, FleetState, OtherKeys, ScheduleState};
pub use jobs::{
    JobCounts, JobFilter, JobPage, JobStore, PagePlan, PrunePlan, PrunedFiles, RecordVersion,
    Retention, StoreIssue, DEFAULT_PAGE_LIMIT,
};
pub use lock::StateLock;
pub use output::{
    herdctl_output_line, read_output, read_output_page, seq_output_line, Dropped, OutputPage,
    OutputWriter, PageLimit,
};
pub use record_files::{JournalSnapshot, RecordFiles, StagedRecord};
pub use sessions::{LoadedSessions, SessionPointer, SessionStore};

/// A state I/O failure. Every variant names the file; messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "state directory {} is in use by another herdctld ({}lock file {}); stop that daemon \
         (`systemctl stop herdctld`, or `kill <pid>`) or pass a different --state directory",
        path.parent().unwrap_or(path).display(),
        holder_pid.map(|pid| format!("pid {pid}, ")).unwrap_or_default(),
        path.display()
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
        holder_pid: Option<u32>,
    },
    #[error("{} is corrupt: {reason}; move it aside or delete it", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "state directory {} is in use by herdctl (pid {pid}, {}); stop it (`herdctl stop`) before \
         starting herdctld on the same directory, or pass a different --state directory",
        path.parent().unwrap_or(path).display(),
        path.display()
    )]
    InUseByHerdctl {
        /// herdctl's pid file.
        path: PathBuf,
        pid: i32,
    },
    #[error("could not serialize the {what} for {}: {reason}", path.display())]
    Serialize {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

impl StateError {
    /// The file or directory the failure is about (for the STATE_ERROR `path` context).
    pub fn path(&self) -> &Path {
        match self {
            StateError::Io { path, .. }
            | StateError::Locked { path, .. }
            | StateError::InUseByHerdctl { path, .. }
            | StateError::Corrupt { path, .. }
            | StateError::Serialize { path, .. } => path,
        }
    }
}

/// An open, locked state directory.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    jobs_dir: PathBuf,
    sessions: SessionStore,
    lock: StateLock,
}

impl StateDir {
    /// Creates the layout (0700), takes the lock without waiting and removes temp files a crash left.
    pub fn open(root: &Path) -> Result<StateDir, StateError> {
        let jobs_dir = root.join("jobs");
        let sessions_dir = root.join("sessions");
        let mut builder = DirBuilder::new();
        builder.recursive(true).mode(0o700);
        for dir in [root, &jobs_dir, &sessions_dir] {
            builder.create(dir).map_err(|source| StateError::Io {
                action: "create state directory",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let lock = StateLock::acquire(&root.join("herdctld.lock"))?;
        refuse_if_herdctl_runs(&root.join("herdctl.pid"))?;
        remove_stale_temp_files(root)?;
        remove_stale_temp_files(&sessions_dir)?;
        Ok(StateDir {
            root: root.to_path_buf(),
            jobs_dir,
            sessions: SessionStore::new(sessions_dir),
            lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn jobs_dir(&self) -> &Path {
        &self.jobs_dir
    }

    pub fn sessions(&self) -> &SessionStore {
        &self.sessions
    }

    /// Where jobs a cluster engine runs exchange files with their exec-shims.
    pub fn exchange(&self) -> ExchangeDir {
        ExchangeDir::new(&self.root)
    }

    pub fn lock_file(&self) -> &Path {
        self.lock.path()
    }

    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.yaml")
    }

    /// Loads `state.yaml`; a corrupt file is moved aside and returned for the caller to report.
    pub fn load_fleet_state(&self) -> Result<(FleetState, Option<CorruptFile>), StateError> {
        FleetState::load(&self.state_file())
    }

    pub fn save_fleet_state(&self, state: &FleetState) -> Result<(), StateError> {
        state.save(&self.state_file())
    }

    /// Opens the job store of this directory; the issues are for the caller to report.
    pub fn open_job_store(&self) -> Result<(JobStore, Vec<StoreIssue>), StateError> {
        JobStore::open(&self.jobs_dir)
    }
}

/// herdctl takes no lock; its CLI writes `herdctl.pid` while it runs. Two writers of one directory would
/// each take the other's running jobs for interrupted ones.
fn refuse_if_herdctl_runs(pid_file: &Path) -> Result<(), StateError> {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return Ok(());
    };
    // A stale file names a dead process, or one that is no longer herdctl (the pid was reused).
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let is_herdctl = pid > 0
        && cmdline
            .split(|byte| *byte == 0)
            .any(|arg| arg.ends_with(b"herdctl") || arg.windows(8).any(|w| w == b"herdctl/"));
    if is_herdctl {
        Err(StateError::InUseByHerdctl {
            path: pid_file.to_path_buf(),
            pid,
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn open_creates_the_layout_with_private_permissions() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("state");
        let state = StateDir::open(&root).unwrap();
        assert!(state.jobs_dir().is_dir());
        assert!(!root.join("logs").exists(), "nothing writes there");
        assert!(state.sessions().dir().is_dir());
        assert!(state.lock_file().is_file());
        let mode = std::fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_running_herdctl_on_the_same_directory_is_refused_and_a_stale_pid_file_is_not() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("state");
        std::fs::create_dir(&root).unwrap();
        let bin = parent.path().join("herdctl");
        std::fs::write(&bin, "#!/bin/sh\necho ready\nread line\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut herdctl = std::process::Command::new("sh")
            .arg(&bin)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Until the script runs, /proc/<pid>/cmdline can still be empty (the process is inside execve).
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(herdctl.stdout.take().unwrap()),
            &mut ready,
        )
        .unwrap();
        assert_eq!(ready, "ready\n");
        std::fs::write(root.join("herdctl.pid"), format!("{}\n", herdctl.id())).unwrap();
        let error = StateDir::open(&root).expect_err("herdctl runs");
        assert!(
            matches!(error, StateError::InUseByHerdctl { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("herdctl stop"), "{error}");
        drop(herdctl.stdin.take());
        herdctl.wait().unwrap();
        StateDir::open(&root).expect("the pid file is stale once herdctl is gone");
    }

    #[test]
    fn second_open_of_the_same_dir_fails_fast_with_an_actionable_message() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("state");
        let first = StateDir::open(&root).unwrap();
        let error = StateDir::open(&root).expect_err("must be locked");
        assert!(
            matches!(error, StateError::Locked { holder_pid: Some(pid), .. } if pid == std::process::id())
        );
        let message = error.to_string();
        assert!(message.contains("in use by another herdctld"), "{message}");
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert!(message.contains("--state"), "{message}");
        drop(first);
        StateDir::open(&root).expect("reopens once released");
    }

    #[test]
    fn open_removes_stale_temp_files_in_root_and_jobs() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("state");
        drop(StateDir::open(&root).unwrap());
        let stale_root = root.join(".state.yaml.tmp.0011223344556677");
        let stale_job = root.join("jobs/.job-2025-01-01-abc123.yaml.tmp.0011223344556677");
        std::fs::write(&stale_root, "x").unwrap();
        std::fs::write(&stale_job, "x").unwrap();
        let state = StateDir::open(&root).unwrap();
        assert!(!stale_root.exists());
        state.open_job_store().unwrap();
        assert!(!stale_job.exists());
    }
}
