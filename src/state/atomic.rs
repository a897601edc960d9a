//! Atomic, durable file replacement: write a temp file in the same directory, fsync it, rename it over
//! the target, fsync the directory. A crash at any point leaves the complete old or the complete new
//! content. Temp files are named `.<name>.tmp.<16 hex>`; leftovers from a crash are removed by
//! [`remove_stale_temp_files`] when the state directory is opened (we hold its lock, so no writer is live).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::StateError;

/// The steps of [`atomic_write`], in order; a test hook can fail any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStep {
    Create,
    Write,
    Fsync,
    Rename,
    FsyncDir,
}

impl WriteStep {
    pub const ALL: [WriteStep; 5] = [
        WriteStep::Create,
        WriteStep::Write,
        WriteStep::Fsync,
        WriteStep::Rename,
        WriteStep::FsyncDir,
    ];
}

/// Replaces `path` with `bytes` atomically and durably (mode 0600 for a new file).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    atomic_write_with(path, bytes, Durability::Machine, &mut |_| Ok(())).map(|_inode| ())
}

/// What a rewrite must survive. Both are atomic (old or new content, never torn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A crash of the machine: the file and its directory are fsynced.
    Machine,
    /// A crash of the process only (the kernel's page cache keeps the write): no fsync. For records whose
    /// content is worthless after a machine crash anyway, such as the pid of a process that died with it.
    Process,
}

/// [`atomic_write`] with `before_step` called before each step; an error from it fails that step.
/// Returns the inode of the new file: the job index uses it to recognise this exact version.
pub(crate) fn atomic_write_with(
    path: &Path,
    bytes: &[u8],
    durability: Durability,
    before_step: &mut dyn FnMut(WriteStep) -> io::Result<()>,
) -> Result<u64, StateError> {
    let staged = stage_with(path, bytes, durability, before_step)?;
    before_step(WriteStep::Rename).map_err(|e| io_error(path, "rename into place", e))?;
    let inode = staged.publish()?;
    if durability == Durability::Machine {
        before_step(WriteStep::FsyncDir)
            .map_err(|e| io_error(path, "fsync the directory of", e))?;
        sync_dir_of(path)?;
    }
    Ok(inode)
}

/// The first half of an atomic write: the new content is complete (and fsynced, for
/// [`Durability::Machine`]) in a temporary file beside its target, not yet visible. [`publish`]
/// renames it into place; dropped unpublished, it is removed. Staging is the slow part of a durable
/// write and touches nothing shared, so callers can do it outside their locks.
///
/// [`publish`]: StagedWrite::publish
#[derive(Debug)]
pub struct StagedWrite {
    temp: PathBuf,
    path: PathBuf,
    inode: u64,
    published: bool,
}

impl StagedWrite {
    /// Renames the staged file over its target; returns the new file's inode. The rename becomes durable
    /// with the next fsync of the directory ([`sync_dir_of`]).
    pub fn publish(mut self) -> Result<u64, StateError> {
        fs::rename(&self.temp, &self.path)
            .map_err(|e| io_error(&self.path, "rename into place", e))?;
        self.published = true;
        Ok(self.inode)
    }
}

impl Drop for StagedWrite {
    fn drop(&mut self) {
        if !self.published {
            // Best effort: a leftover temporary file is removed when the state directory next opens.
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Stages `bytes` as the next content of `path`; see [`StagedWrite`].
pub fn stage_write(path: &Path, bytes: &[u8]) -> Result<StagedWrite, StateError> {
    stage_with(path, bytes, Durability::Machine, &mut |_| Ok(()))
}

pub(crate) fn stage_with(
    path: &Path,
    bytes: &[u8],
    durability: Durability,
    before_step: &mut dyn FnMut(WriteStep) -> io::Result<()>,
) -> Result<StagedWrite, StateError> {
    let temp = temp_path_for(path);
    before_step(WriteStep::Create).map_err(|e| io_error(path, "create a temporary file for", e))?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|e| io_error(path, "create a temporary file for", e))?;
    // From here on, dropping `staged` on an error removes the temporary file.
    let mut staged = StagedWrite {
        temp,
        path: path.to_path_buf(),
        inode: 0,
        published: false,
    };
    before_step(WriteStep::Write).map_err(|e| io_error(path, "write", e))?;
    file.write_all(bytes)
        .map_err(|e| io_error(path, "write", e))?;
    if durability == Durability::Machine {
        before_step(WriteStep::Fsync).map_err(|e| io_error(path, "fsync", e))?;
        file.sync_all().map_err(|e| io_error(path, "fsync", e))?;
    }
    staged.inode = file
        .metadata()
        .map_err(|e| io_error(path, "stat", e))?
        .ino();
    Ok(staged)
}

/// Makes renames and unlinks in the directory of `path` durable.
pub fn sync_dir_of(path: &Path) -> Result<(), StateError> {
    fsync_dir(parent_dir(path)).map_err(|e| io_error(path, "fsync the directory of", e))
}

/// Group commit of a directory's fsyncs: one fsync makes every rename committed before it durable, so
/// writers that commit together share one instead of each waiting for its own.
#[derive(Debug)]
pub struct DirSync {
    dir: PathBuf,
    /// Renames committed into `dir` so far.
    committed: AtomicU64,
    /// Of those, how many are known durable. Held across the fsync, so a writer that arrives meanwhile
    /// waits for it and then usually finds its rename covered.
    synced: Mutex<u64>,
}

impl DirSync {
    pub fn new(dir: PathBuf) -> DirSync {
        DirSync {
            dir,
            committed: AtomicU64::new(0),
            synced: Mutex::new(0),
        }
    }

    /// Notes a rename into the directory; call after it returned.
    pub fn renamed(&self) {
        self.committed.fetch_add(1, Ordering::SeqCst);
    }

    /// Makes every rename noted before this call durable, fsyncing the directory unless a sync that
    /// started after them already did. Blocking. Returns whether this call fsynced.
    pub fn sync(&self) -> Result<bool, StateError> {
        let needed = self.committed.load(Ordering::SeqCst);
        let mut synced = self.synced.lock().unwrap_or_else(PoisonError::into_inner);
        if *synced >= needed {
            return Ok(false);
        }
        let covered = self.committed.load(Ordering::SeqCst);
        fsync_dir(&self.dir).map_err(|e| io_error(&self.dir, "fsync the directory", e))?;
        *synced = covered;
        Ok(true)
    }
}

fn io_error(path: &Path, action: &'static str, source: io::Error) -> StateError {
    StateError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Makes renames and unlinks in `dir` durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn temp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_dir(path).join(format!(".{name}.tmp.{:016x}", fastrand::u64(..)))
}

/// Whether `name` is one of our temp files.
pub(crate) fn is_temp_file_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp.")
}

/// Deletes temp files a crash left in `dir`; returns how many. Only call while holding the state lock.
pub fn remove_stale_temp_files(dir: &Path) -> Result<usize, StateError> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(|e| io_error(dir, "list", e))? {
        let entry = entry.map_err(|e| io_error(dir, "list", e))?;
        if entry.file_name().to_str().is_some_and(is_temp_file_name) {
            remove_stale_temp_file(&entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes one temporary file a crash left behind (see [`is_temp_file_name`]).
pub(crate) fn remove_stale_temp_file(path: &Path) -> Result<(), StateError> {
    fs::remove_file(path).map_err(|e| io_error(path, "remove stale temporary file", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_directory_fsync_covers_every_rename_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let sync = DirSync::new(dir.path().to_path_buf());
        assert!(!sync.sync().unwrap(), "nothing was renamed");
        for name in ["a", "b", "c"] {
            stage_write(&dir.path().join(name), b"x")
                .unwrap()
                .publish()
                .unwrap();
            sync.renamed();
        }
        assert!(sync.sync().unwrap());
        assert!(
            !sync.sync().unwrap(),
            "the three renames are durable already"
        );
        sync.renamed();
        assert!(sync.sync().unwrap());
        let gone = DirSync::new(dir.path().join("missing"));
        gone.renamed();
        assert!(matches!(gone.sync(), Err(StateError::Io { .. })));
    }

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_new_and_replaces_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.yaml");
        atomic_write(&path, b"one").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        atomic_write(&path, b"two, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two, longer");
        assert_eq!(dir_names(dir.path()), ["state.yaml"]);
    }

    #[test]
    fn failure_at_any_step_leaves_old_or_new_content_and_no_temp_file() {
        for failing in WriteStep::ALL {
            for existed_before in [true, false] {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("record.yaml");
                if existed_before {
                    fs::write(&path, b"old complete content").unwrap();
                }
                let mut hook = |step: WriteStep| {
                    if step == failing {
                        Err(io::Error::other("injected"))
                    } else {
                        Ok(())
                    }
                };
                let result = atomic_write_with(
                    &path,
                    b"new complete content",
                    Durability::Machine,
                    &mut hook,
                );
                let error = result.expect_err("the injected failure must surface");
                assert!(error.to_string().contains("injected"), "{error}");

                let after = fs::read(&path).ok();
                let acceptable: &[Option<&[u8]>] = match (failing, existed_before) {
                    (WriteStep::FsyncDir, _) => &[Some(b"new complete content")],
                    (_, true) => &[Some(b"old complete content")],
                    (_, false) => &[None],
                };
                assert!(
                    acceptable.contains(&after.as_deref()),
                    "step {failing:?}, existed {existed_before}: got {after:?}"
                );
                let expected_files: &[&str] = if after.is_some() {
                    &["record.yaml"]
                } else {
                    &[]
                };
                assert_eq!(dir_names(dir.path()), expected_files, "step {failing:?}");
            }
        }
    }

    #[test]
    fn returns_the_inode_of_the_file_now_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let first = atomic_write_with(&path, b"1", Durability::Machine, &mut |_| Ok(())).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), first);
        let second = atomic_write_with(&path, b"2", Durability::Process, &mut |_| Ok(())).unwrap();
        assert_ne!(first, second, "a rewrite is a new inode");
        assert_eq!(fs::metadata(&path).unwrap().ino(), second);
    }

    #[test]
    fn stale_temp_files_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".state.yaml.tmp.0123456789abcdef"), b"x").unwrap();
        fs::write(dir.path().join("state.yaml"), b"y").unwrap();
        fs::write(dir.path().join(".hidden"), b"z").unwrap();
        assert_eq!(remove_stale_temp_files(dir.path()).unwrap(), 1);
        assert_eq!(dir_names(dir.path()), [".hidden", "state.yaml"]);
    }
}
