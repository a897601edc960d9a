//! Errors of configuration loading: one `ConfigError` carrying every problem found, each with the file
//! and the dotted path it is about.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// No fleet file was found by the upward search.
    #[error(
        "no herdctl.yaml found in {} or any parent; pass --config PATH or create herdctl.yaml",
        start_display(searched)
    )]
    NotFound { searched: Vec<PathBuf> },
    /// The configuration was read and is invalid; every problem found is listed.
    #[error("invalid configuration {}:\n{}", config_path.display(), list(errors))]
    Invalid {
        config_path: PathBuf,
        errors: Vec<ValidationError>,
    },
}

impl ConfigError {
    /// The validation errors (empty for `NotFound`).
    pub fn errors(&self) -> &[ValidationError] {
        match self {
            ConfigError::NotFound { .. } => &[],
            ConfigError::Invalid { errors, .. } => errors,
        }
    }
}

/// The directory the search started from (the first searched file's directory).
fn start_display(searched: &[PathBuf]) -> String {
    searched
        .first()
        .and_then(|first| first.parent())
        .map(|dir| dir.display().to_string())
        .unwrap_or_else(|| "the current directory".to_string())
}

fn list(errors: &[ValidationError]) -> String {
    errors
        .iter()
        .map(ValidationError::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationError {
    pub file: PathBuf,
    /// Dotted path inside `file` (`schedules.check.interval`, `agents[0].path`); empty for the whole file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.path,
                self.message
            )
        }
    }
}

/// Collects errors while loading so that all of them are reported together.
#[derive(Debug, Default)]
pub(crate) struct Errors(pub(crate) Vec<ValidationError>);

impl Errors {
    pub(crate) fn push(&mut self, file: &Path, path: &str, message: impl Into<String>) {
        self.0.push(ValidationError {
            file: file.to_path_buf(),
            path: path.to_string(),
            message: message.into(),
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Joins a dotted path and a key: `join("a.b", "c")` = `a.b.c`, `join("", "c")` = `c`.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Appends a sequence index: `index("agents", 0)` = `agents[0]`.
pub(crate) fn index(path: &str, position: usize) -> String {
    format!("{path}[{position}]")
}
