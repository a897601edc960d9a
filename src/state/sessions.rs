//! Session pointers, `sessions/<qualified agent>.json`: the Claude session an agent resumes, in herdctl's
//! layout (`SessionInfo`: `agent_name, session_id, created_at, last_used_at, job_count, mode,
//! working_directory?, runtime_type, docker_enabled`), written as herdctl does (2-space JSON, trailing
//! newline, atomic). Keys herdctld does not know are kept on rewrite. When a pointer is still valid is the
//! fleet's decision, not this module's.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::atomic::atomic_write;
use super::corrupt::{move_aside, CorruptFile};
use super::StateError;

fn autonomous() -> String {
    "autonomous".to_owned()
}

fn sdk() -> String {
    "sdk".to_owned()
}

/// One agent's session pointer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionPointer {
    pub agent_name: String,
    pub session_id: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    #[serde(default)]
    pub job_count: u64,
    /// herdctl's `autonomous|interactive|review`; herdctld's runs are autonomous.
    #[serde(default = "autonomous")]
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    /// herdctl's runtime name (`sdk` or `cli`) of the run that made the session.
    #[serde(default = "sdk")]
    pub runtime_type: String,
    #[serde(default)]
    pub docker_enabled: bool,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// What [`SessionStore::load_all`] found.
#[derive(Debug, Default)]
pub struct LoadedSessions {
    /// Qualified agent name → pointer.
    pub pointers: BTreeMap<String, SessionPointer>,
    /// Pointer files neither tool can read, moved aside, for the caller to report.
    pub corrupt: Vec<CorruptFile>,
}

/// The `sessions/` directory.
#[derive(Debug, Clone)]
pub struct SessionStore {
    dir: PathBuf,
}

/// herdctl's rule for identifiers used as file names: no path separators, no leading dot.
fn is_safe_file_stem(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() && bytes.iter().all(inner)
        }
        _ => false,
    }
}

impl SessionStore {
    pub(super) fn new(dir: PathBuf) -> SessionStore {
        SessionStore { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, agent: &str) -> Result<PathBuf, StateError> {
        if is_safe_file_stem(agent) {
            Ok(self.dir.join(format!("{agent}.json")))
        } else {
            Err(StateError::Corrupt {
                path: self.dir.clone(),
                reason: format!("agent name {agent:?} cannot name a session file"),
            })
        }
    }

    /// Every pointer in the directory. Unreadable ones are moved aside and returned as corrupt.
    pub fn load_all(&self) -> Result<LoadedSessions, StateError> {
        let mut loaded = LoadedSessions::default();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(loaded),
            Err(source) => {
                return Err(StateError::Io {
                    action: "list the sessions directory",
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        for entry in entries {
            let entry = entry.map_err(|source| StateError::Io {
                action: "list the sessions directory",
                path: self.dir.clone(),
                source,
            })?;
            let path = entry.path();
            let Some(agent) = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_suffix(".json"))
                .filter(|stem| is_safe_file_stem(stem))
            else {
                continue;
            };
            let agent = agent.to_owned();
            let text = match fs::read(&path) {
                Ok(text) => text,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(StateError::Io {
                        action: "read session pointer",
                        path,
                        source,
                    })
                }
            };
            match serde_json::from_slice::<SessionPointer>(&text) {
                Ok(pointer) => {
                    loaded.pointers.insert(agent, pointer);
                }
                Err(error) => loaded.corrupt.push(move_aside(&path, error.to_string())?),
            }
        }
        Ok(loaded)
    }

    /// Replaces `agent`'s pointer atomically and durably.
    pub fn save(&self, agent: &str, pointer: &SessionPointer) -> Result<(), StateError> {
        let path = self.path(agent)?;
        let mut text =
            serde_json::to_string_pretty(pointer).map_err(|error| StateError::Serialize {
                what: "session pointer",
                path: path.clone(),
                reason: error.to_string(),
            })?;
        text.push('\n');
        atomic_write(&path, text.as_bytes())
    }

    /// Deletes `agent`'s pointer; no pointer is not an error.
    pub fn remove(&self, agent: &str) -> Result<(), StateError> {
        let path = self.path(agent)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io {
                action: "remove session pointer",
                path,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERDCTL_POINTER: &str = r#"{
  "agent_name": "alpha",
  "session_id": "862690ed-12d3-4f7d-83d6-9d1ad9334920",
  "created_at": "2026-12-02T20:48:11.547Z",
  "last_used_at": "2026-12-02T20:48:20.773Z",
  "job_count": 4,
  "mode": "autonomous",
  "working_directory": "/home/operator/fleet/workspaces/alpha",
  "runtime_type": "cli",
  "docker_enabled": false,
  "custom_name": "kept"
}
"#;

    #[test]
    fn herdctls_pointer_reads_and_is_written_back_with_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::new(dir.path().to_path_buf());
        fs::write(dir.path().join("alpha.json"), HERDCTL_POINTER).unwrap();
        fs::write(dir.path().join("team.beta.json"), "{not json").unwrap();
        fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let loaded = store.load_all().unwrap();
        let pointer = &loaded.pointers["alpha"];
        assert_eq!(pointer.session_id, "862690ed-12d3-4f7d-83d6-9d1ad9334920");
        assert_eq!(pointer.job_count, 4);
        assert_eq!(pointer.runtime_type, "cli");
        assert_eq!(loaded.corrupt.len(), 1);
        assert!(!dir.path().join("team.beta.json").exists());
        assert!(dir.path().join("notes.txt").exists());

        store.save("alpha", pointer).unwrap();
        let written = fs::read_to_string(dir.path().join("alpha.json")).unwrap();
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&written).unwrap(),
            serde_json::from_str(HERDCTL_POINTER).unwrap(),
        );
        assert_eq!(a, b);
        assert!(written.ends_with("}\n") && written.contains("\n  \"agent_name\""));
    }

    #[test]
    fn remove_is_idempotent_and_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::new(dir.path().to_path_buf());
        fs::write(dir.path().join("a.json"), HERDCTL_POINTER).unwrap();
        store.remove("a").unwrap();
        store.remove("a").unwrap();
        assert!(!dir.path().join("a.json").exists());
        for bad in ["../x", ".hidden", "", "a/b", "x."] {
            assert!(store.remove(bad).is_err(), "{bad:?}");
        }
        assert!(is_safe_file_stem("team.sub-agent_1"));
    }
}
