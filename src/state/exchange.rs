//! The files a job that a cluster engine runs shares with its exec-shim, in `<state>/executor/`:
//!
//! ```text
//! <id>.spec.json   what to run (the runner's spec), written here before the run is submitted
//! <id>.out         the shim's framed output lines and final outcome, written by the shim where the engine runs it
//! <id>.err         the shim's own messages and the engine's (Slurm writes its cancel notices there)
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

    /// Deletes a finished run's files; those already gone are fine.
    pub fn remove(&self, id: &JobId) -> Result<(), StateError> {
        for path in [
            self.spec_path(id),
            self.output_path(id),
            self.stderr_path(id),
        ] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StateError::Io {
                        action: "remove executor file",
                        path,
                        source,
                    })
                }
            }
        }
        Ok(())
    }
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
