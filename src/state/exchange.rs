//! The files a job that a cluster engine runs shares with its exec-shim, in `<state>/executor/`:
//!
//! ```text
//! <id>.spec.json   what to run (the runner's spec), written here before the run is submitted
//! <id>.out         the shim's framed output lines and final outcome, written by the shim where the engine runs it
//! <id>.err         the shim's own messages and the engine's (Slurm writes its cancel notices there)
//! <id>.grace       the grace of a cancel (milliseconds), written here before the shim is asked to stop
//! ```
//!
//! On a cluster of several nodes this directory must be on a filesystem every node mounts at the same path.
//! The shim's files are the run's durable record while it runs: a restarted daemon reads them again.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::{atomic_write, StateError};
use crate::job::JobId;

/// `<state>/executor/`: cheap to clone, usable without the state directory's lock holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeDir {
    dir: PathBuf,
}

impl ExchangeDir {
    /// Absolute: the paths are handed to an engine that runs the shim in another directory.
    pub(crate) fn new(state_root: &Path) -> ExchangeDir {
        let root = std::path::absolute(state_root).unwrap_or_else(|_| state_root.to_path_buf());
        ExchangeDir {
            dir: root.join("executor"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn spec_path(&self, id: &JobId) -> PathBuf {
        self.dir.join(format!("{id}.spec.json"))
    }

    pub fn output_path(&self, id: &JobId) -> PathBuf {
        self.dir.join(format!("{id}.out"))
    }

    pub fn stderr_path(&self, id: &JobId) -> PathBuf {
        self.dir.join(format!("{id}.err"))
    }

    pub fn grace_path(&self, id: &JobId) -> PathBuf {
        self.dir.join(format!("{id}.grace"))
    }

    /// Writes the grace a cancel gives the job, for the shim to read when it is asked to stop.
    pub fn write_grace(&self, id: &JobId, grace: std::time::Duration) -> Result<(), StateError> {
        atomic_write(
            &self.grace_path(id),
            grace.as_millis().to_string().as_bytes(),
        )
    }

    /// Writes a run's spec (mode 0600: it holds the prompt and the fleet's `.env`), creating the directory.
    /// A run before it under the same job (one that resumed a session Claude no longer had) leaves its
    /// output and outcome behind: they are removed, so that the new run's relay reads only its own.
    pub fn write_spec(&self, id: &JobId, spec: &[u8]) -> Result<PathBuf, StateError> {
        self.remove(id)?;
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| StateError::Io {
                action: "create the executor directory",
                path: self.dir.clone(),
                source,
            })?;
        let path = self.spec_path(id);
        atomic_write(&path, spec)?;
        Ok(path)
    }

    /// Deletes the files of every run but those of `keep` (the runs taken up again at start): a daemon that
    /// died leaves them for jobs it will never watch again, and a spec holds the prompt and the fleet's
    /// `.env`. Returns how many files went.
    pub fn retain(&self, keep: &[JobId]) -> Result<usize, StateError> {
        let list_error = |source| StateError::Io {
            action: "list the executor directory",
            path: self.dir.clone(),
            source,
        };
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(list_error(e)),
        };
        let mut removed = 0;
        for entry in entries {
            let name = entry.map_err(list_error)?.file_name();
            let name = name.to_string_lossy();
            let id = name.split('.').next().unwrap_or_default();
            if keep.iter().any(|kept| kept.as_str() == id) {
                continue;
            }
            if remove_if_present(self.dir.join(name.as_ref()))? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Deletes a finished run's files; those already gone are fine.
    pub fn remove(&self, id: &JobId) -> Result<(), StateError> {
        for path in [
            self.spec_path(id),
            self.output_path(id),
            self.stderr_path(id),
            self.grace_path(id),
        ] {
            remove_if_present(path)?;
        }
        Ok(())
    }
}

/// Deletes `path`; whether it was there.
fn remove_if_present(path: PathBuf) -> Result<bool, StateError> {
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(StateError::Io {
            action: "remove executor file",
            path,
            source,
        }),
    }
}

/// The grace a cancel asked for, read by the shim of the spec at `spec_path` when it is asked to stop: `None`
/// when no cancel wrote one (a stop from elsewhere, `scancel` by hand) or it cannot be read.
pub fn requested_grace(spec_path: &Path) -> Option<std::time::Duration> {
    let name = spec_path
        .file_name()?
        .to_str()?
        .strip_suffix(".spec.json")?;
    let text = std::fs::read_to_string(spec_path.with_file_name(format!("{name}.grace"))).ok()?;
    text.trim()
        .parse()
        .ok()
        .map(std::time::Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_is_written_private_and_every_file_of_the_run_removed_after() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let exchange = ExchangeDir::new(root.path());
        let id = JobId::parse("job-2026-12-07-abc123").unwrap();
        let spec = exchange.write_spec(&id, b"{}").unwrap();
        assert_eq!(
            spec,
            root.path().join("executor/job-2026-12-07-abc123.spec.json")
        );
        let mode = std::fs::metadata(&spec).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(exchange.output_path(&id), "x").unwrap();
        exchange.remove(&id).unwrap();
        assert_eq!(std::fs::read_dir(exchange.dir()).unwrap().count(), 0);
        exchange
            .remove(&id)
            .expect("nothing left to remove is fine");
    }

    #[test]
    fn a_cancels_grace_is_read_beside_the_spec_until_the_run_is_removed() {
        let root = tempfile::tempdir().unwrap();
        let exchange = ExchangeDir::new(root.path());
        let id = JobId::parse("job-2026-12-07-abc123").unwrap();
        let spec = exchange.write_spec(&id, b"{}").unwrap();
        assert_eq!(requested_grace(&spec), None, "no cancel yet");
        exchange
            .write_grace(&id, std::time::Duration::from_millis(4500))
            .unwrap();
        assert_eq!(
            requested_grace(&spec),
            Some(std::time::Duration::from_millis(4500))
        );
        assert_eq!(requested_grace(&root.path().join("not-a-spec")), None);
        exchange.remove(&id).unwrap();
        assert_eq!(std::fs::read_dir(exchange.dir()).unwrap().count(), 0);
    }

    #[test]
    fn only_the_runs_taken_up_again_keep_their_files() {
        let root = tempfile::tempdir().unwrap();
        let exchange = ExchangeDir::new(root.path());
        assert_eq!(exchange.retain(&[]).unwrap(), 0, "no directory yet");
        let kept = JobId::parse("job-2026-12-07-aaaaaa").unwrap();
        let dead = JobId::parse("job-2026-12-07-bbbbbb").unwrap();
        for id in [&kept, &dead] {
            exchange.write_spec(id, b"{}").unwrap();
            std::fs::write(exchange.output_path(id), "lines").unwrap();
        }
        assert_eq!(exchange.retain(std::slice::from_ref(&kept)).unwrap(), 2);
        assert!(exchange.spec_path(&kept).exists() && exchange.output_path(&kept).exists());
        assert!(!exchange.spec_path(&dead).exists() && !exchange.output_path(&dead).exists());
    }

    #[test]
    fn a_new_run_of_a_job_starts_without_the_files_of_the_one_before() {
        let root = tempfile::tempdir().unwrap();
        let exchange = ExchangeDir::new(root.path());
        let id = JobId::parse("job-2026-12-07-abc123").unwrap();
        exchange.write_spec(&id, b"{}").unwrap();
        std::fs::write(exchange.output_path(&id), "the first run's outcome").unwrap();
        std::fs::write(exchange.stderr_path(&id), "its stderr").unwrap();
        exchange.write_spec(&id, b"{\"again\":true}").unwrap();
        assert!(!exchange.output_path(&id).exists());
        assert!(!exchange.stderr_path(&id).exists());
        assert_eq!(
            std::fs::read(exchange.spec_path(&id)).unwrap(),
            b"{\"again\":true}"
        );
    }
}
