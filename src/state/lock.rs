//! The single-instance lock: `flock(LOCK_EX|LOCK_NB)` on `<state>/herdctld.lock`, held for the life of
//! [`StateLock`]. flock belongs to the open file description, so a second open in the same process
//! conflicts too; the kernel drops the lock when the process dies, so it never goes stale. The file
//! holds the holder's pid only to make the conflict message useful; it is never deleted (deleting a
//! lock file races with the next locker).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::StateError;

/// An acquired state-directory lock; released on drop.
#[derive(Debug)]
pub struct StateLock {
    path: PathBuf,
    _file: Flock<File>,
}

impl StateLock {
    /// Takes the lock at `path` (created if missing) without waiting and records our pid in it.
    pub fn acquire(path: &Path) -> Result<StateLock, StateError> {
        let io_error = |action: &'static str, source: io::Error| StateError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        // No truncation before the lock is ours: the holder's pid must survive for the message.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| io_error("open the lock file", e))?;
        let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                return Err(StateError::Locked {
                    path: path.to_path_buf(),
                    holder_pid: read_pid(&mut file),
                })
            }
            Err((_, errno)) => return Err(io_error("lock", errno.into())),
        };
        let record_pid = |file: &mut File| -> io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())
        };
        record_pid(&mut locked).map_err(|e| io_error("write our pid into", e))?;
        Ok(StateLock {
            path: path.to_path_buf(),
            _file: locked,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_conflicts_even_in_the_same_process_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herdctld.lock");
        let held = StateLock::acquire(&path).unwrap();
        match StateLock::acquire(&path) {
            Err(StateError::Locked {
                path: p,
                holder_pid,
            }) => {
                assert_eq!(p, path);
                assert_eq!(holder_pid, Some(std::process::id()));
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(held);
        StateLock::acquire(&path).expect("released on drop");
    }
}
