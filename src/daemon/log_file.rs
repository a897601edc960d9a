//! `--log-file PATH`: PATH is always the live file, rotated by size into `PATH.1` … `PATH.<keep>`.
//!
//! Before a write would take PATH past `max_size`, `PATH.<keep>` is deleted, `PATH.<n>` becomes
//! `PATH.<n+1>`, PATH becomes `PATH.1`, and a new PATH is opened: `tail -F PATH` and tools that read PATH
//! always see the current log, and at most `keep` old files stay. A write is one log line (the output of
//! one event), and it is never split between two files.
//!
//! Hand-written because no crate at hand does this: tracing-appender 0.2 rotates by time only and names the
//! live file `PATH.<date>` (its `latest_symlink` makes PATH a symlink); file-rotate 0.8 panics when it
//! cannot create the directory, splits lines across files in its byte mode and drops writes it cannot open
//! a file for.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where and how much to log (`--log-file`, `--log-file-max-size`, `--log-file-keep`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFileOptions {
    pub path: PathBuf,
    /// Bytes PATH may hold before it is rotated (a single longer line still goes whole into a new file).
    pub max_size: u64,
    /// Rotated files kept beside PATH; 0 keeps none (PATH starts over).
    pub keep: usize,
}

/// Default of `--log-file-max-size`.
pub const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024;
/// Default of `--log-file-keep`.
pub const DEFAULT_KEEP: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    #[error("--log-file {path} has no file name")]
    NoFileName { path: PathBuf },
    #[error("cannot open log file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("invalid --log-file-max-size {value:?}: expected a size such as 10M, 512K or 1G (at least 1K)")]
    InvalidSize { value: String },
}

/// `--log-file-max-size`: bytes, or a number with K, M or G (powers of 1024).
pub fn parse_size(value: &str) -> Result<u64, LogFileError> {
    let invalid = || LogFileError::InvalidSize {
        value: value.to_owned(),
    };
    let text = value.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let factor: u64 = match unit.trim().to_ascii_uppercase().trim_end_matches('B') {
        "" => 1,
        "K" | "KI" => 1 << 10,
        "M" | "MI" => 1 << 20,
        "G" | "GI" => 1 << 30,
        _ => return Err(invalid()),
    };
    let size = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(invalid)?;
    // Smaller than a line or two would rotate at every event.
    if size < 1024 {
        return Err(invalid());
    }
    Ok(size)
}

/// The live log file and its rotation.
#[derive(Debug)]
pub struct RotatingFile {
    options: LogFileOptions,
    file: File,
    size: u64,
    /// A rotation failed (it is reported on stderr); the next is tried once PATH has grown this far.
    retry_at: Option<u64>,
}

impl RotatingFile {
    /// Opens PATH for appending (creating it and its directory), and deletes rotated files beyond `keep`
    /// that an earlier run with a larger `keep` left.
    pub fn open(options: LogFileOptions) -> Result<RotatingFile, LogFileError> {
        if options.path.file_name().is_none() {
            return Err(LogFileError::NoFileName { path: options.path });
        }
        let open_error = |source| LogFileError::Open {
            path: options.path.clone(),
            source,
        };
        if let Some(dir) = options.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(open_error)?;
        }
        let file = open_append(&options.path).map_err(open_error)?;
        let size = file.metadata().map_err(open_error)?.len();
        remove_beyond(&options.path, options.keep);
        Ok(RotatingFile {
            options,
            file,
            size,
            retry_at: None,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        let path = &self.options.path;
        if self.options.keep == 0 {
            remove_if_present(path)?;
        } else {
            remove_if_present(&numbered(path, self.options.keep))?;
            for n in (1..self.options.keep).rev() {
                rename_if_present(&numbered(path, n), &numbered(path, n + 1))?;
            }
            fs::rename(path, numbered(path, 1))?;
        }
        self.file = open_append(path)?;
        self.size = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let after = self.size.saturating_add(buf.len() as u64);
        let due = self.size > 0
            && after > self.options.max_size
            && self.retry_at.is_none_or(|at| self.size >= at);
        if due {
            match self.rotate() {
                Ok(()) => self.retry_at = None,
                Err(e) => {
                    // Logging goes on in the current file: a log over its size beats a lost one.
                    eprintln!(
                        "herdctld: cannot rotate the log file {}: {e}; still writing to it",
                        self.options.path.display()
                    );
                    self.retry_at = Some(self.size.saturating_add(self.options.max_size));
                }
            }
        }
        let written = self.file.write(buf)?;
        self.size = self.size.saturating_add(written as u64);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    // Log lines may quote prompts and job output: readable by the daemon's user only.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// `PATH.<n>`.
fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_present(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Deletes `PATH.<n>` for every `n > keep`; best effort (a leftover is only disk space).
fn remove_beyond(path: &Path, keep: usize) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{}.", name.to_string_lossy());
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let number = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.parse::<usize>().ok());
        if number.is_some_and(|n| n > keep) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path, max_size: u64, keep: usize) -> LogFileOptions {
        LogFileOptions {
            path: dir.join("logs/herdctld.log"),
            max_size,
            keep,
        }
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn path_stays_the_live_file_and_at_most_keep_rotated_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path(), 10, 2);
        let path = opts.path.clone();
        let mut file = RotatingFile::open(opts).unwrap();
        for line in ["one 1\n", "two 2\n", "three\n", "four4\n"] {
            file.write_all(line.as_bytes()).unwrap();
        }
        assert_eq!(read(&path), "four4\n");
        assert_eq!(read(&numbered(&path, 1)), "three\n");
        assert_eq!(read(&numbered(&path, 2)), "two 2\n");
        assert!(!numbered(&path, 3).exists(), "one 1 is gone");
        // Lines that fit together share a file; one longer than the limit is written whole.
        file.write_all(b"a\n").unwrap();
        assert_eq!(read(&path), "four4\na\n");
        file.write_all(b"a line longer than ten bytes\n").unwrap();
        assert_eq!(read(&path), "a line longer than ten bytes\n");
    }

    #[test]
    fn reopening_appends_and_drops_files_beyond_a_smaller_keep() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path(), 1 << 20, 1);
        fs::create_dir_all(opts.path.parent().unwrap()).unwrap();
        fs::write(&opts.path, "earlier\n").unwrap();
        for n in 1..=3 {
            fs::write(numbered(&opts.path, n), "old\n").unwrap();
        }
        let mut file = RotatingFile::open(opts.clone()).unwrap();
        file.write_all(b"later\n").unwrap();
        assert_eq!(read(&opts.path), "earlier\nlater\n");
        assert!(numbered(&opts.path, 1).exists());
        assert!(!numbered(&opts.path, 2).exists() && !numbered(&opts.path, 3).exists());
    }

    #[test]
    fn keep_zero_starts_the_file_over() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path(), 8, 0);
        let mut file = RotatingFile::open(opts.clone()).unwrap();
        file.write_all(b"first\n").unwrap();
        file.write_all(b"second\n").unwrap();
        assert_eq!(read(&opts.path), "second\n");
        assert!(!numbered(&opts.path, 1).exists());
    }

    #[test]
    fn sizes_parse_with_units_and_tiny_or_bad_ones_are_refused() {
        assert_eq!(parse_size("10M").unwrap(), 10 << 20);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "10", "ten", "10X", "-1M", "99999999999999999G"] {
            assert!(
                matches!(parse_size(bad), Err(LogFileError::InvalidSize { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_path_without_a_file_name_or_an_unusable_directory_is_an_error() {
        let no_name = LogFileOptions {
            path: PathBuf::from("/"),
            max_size: DEFAULT_MAX_SIZE,
            keep: DEFAULT_KEEP,
        };
        assert!(matches!(
            RotatingFile::open(no_name),
            Err(LogFileError::NoFileName { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("a-file");
        fs::write(&blocker, "").unwrap();
        let under_a_file = LogFileOptions {
            path: blocker.join("herdctld.log"),
            max_size: DEFAULT_MAX_SIZE,
            keep: DEFAULT_KEEP,
        };
        assert!(matches!(
            RotatingFile::open(under_a_file),
            Err(LogFileError::Open { .. })
        ));
    }
}
