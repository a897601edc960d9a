//! Quarantine of unreadable state files: a file that does not parse is renamed aside to
//! `<name>.corrupt-<UTC timestamp>` and reported, never silently replaced by defaults.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use chrono::Utc;

use super::atomic::{fsync_dir, parent_dir};
use super::StateError;

/// A state file that could not be parsed and was moved aside. The caller reports it (error event and
/// log line); the operator can inspect or restore `moved_to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptFile {
    pub original: PathBuf,
    pub moved_to: PathBuf,
    /// Why it did not parse.
    pub error: String,
}

impl fmt::Display for CorruptFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is corrupt ({}); it was moved to {} and herdctld continues without it; \
             inspect that file and restore what you need",
            self.original.display(),
            self.error,
            self.moved_to.display()
        )
    }
}

/// Renames `path` to a fresh `<name>.corrupt-<timestamp>[.<n>]` beside it.
pub(crate) fn move_aside(path: &Path, error: String) -> Result<CorruptFile, StateError> {
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = path.with_file_name(format!("{name}.corrupt-{stamp}"));
    let mut moved_to = base.clone();
    let mut attempt = 1;
    // We hold the state lock, so nobody else creates these names between the check and the rename.
    while moved_to.exists() {
        moved_to = PathBuf::from(format!("{}.{attempt}", base.display()));
        attempt += 1;
    }
    fs::rename(path, &moved_to).map_err(|source| StateError::Io {
        action: "move aside corrupt file",
        path: path.to_path_buf(),
        source,
    })?;
    fsync_dir(parent_dir(path)).map_err(|source| StateError::Io {
        action: "fsync the directory of",
        path: moved_to.clone(),
        source,
    })?;
    Ok(CorruptFile {
        original: path.to_path_buf(),
        moved_to,
        error,
    })
}
