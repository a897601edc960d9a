//! `state.yaml`: what the fleet must remember across restarts besides jobs — per schedule its runtime
//! enable/disable override, run times, last outcome and counters; per agent its last session id.
//!
//! Loading never silently resets: a missing (or empty) file is the default state, an unparsable one is
//! moved aside and reported in the returned [`CorruptFile`]. Unknown keys are ignored on read so a
//! newer daemon's file still loads. Saving is an atomic, durable replace.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::atomic::atomic_write;
use super::corrupt::{move_aside, CorruptFile};
use super::StateError;
use crate::job::JobStatus;

/// The whole of `state.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetState {
    /// agent → schedule name → state.
    #[serde(default)]
    pub schedules: BTreeMap<String, BTreeMap<String, ScheduleState>>,
    #[serde(default)]
    pub agents: BTreeMap<String, AgentState>,
}

/// Persisted state of one schedule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScheduleState {
    /// Runtime override from enable/disable; `None` follows the configuration.
    pub enabled: Option<bool>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub next_run_at: Option<DateTime<Utc>>,
    /// Final status of the last job this schedule started.
    pub last_status: Option<JobStatus>,
    pub last_error: Option<String>,
    pub runs: u64,
    pub skipped: u64,
    pub failed: u64,
}

/// Persisted state of one agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentState {
    /// Claude session id of the agent's last run, for `resume_session`.
    pub last_session_id: Option<String>,
}

impl FleetState {
    /// Reads `path`. Missing or empty → default. Unparsable → moved aside, default returned together
    /// with the [`CorruptFile`] the caller must report.
    pub fn load(path: &Path) -> Result<(FleetState, Option<CorruptFile>), StateError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok((FleetState::default(), None))
            }
            Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                let corrupt = move_aside(path, format!("not UTF-8: {error}"))?;
                return Ok((FleetState::default(), Some(corrupt)));
            }
            Err(source) => {
                return Err(StateError::Io {
                    action: "read",
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        if text.trim().is_empty() {
            return Ok((FleetState::default(), None));
        }
        match serde_yaml_ng::from_str(&text) {
            Ok(state) => Ok((state, None)),
            Err(error) => {
                let corrupt = move_aside(path, error.to_string())?;
                Ok((FleetState::default(), Some(corrupt)))
            }
        }
    }

    /// Replaces `path` atomically and durably.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let text = serde_yaml_ng::to_string(self).map_err(|error| StateError::Serialize {
            what: "fleet state",
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
        atomic_write(path, text.as_bytes())
    }

    pub fn schedule(&self, agent: &str, schedule: &str) -> Option<&ScheduleState> {
        self.schedules.get(agent)?.get(schedule)
    }

    /// The state of `agent`/`schedule`, created empty if absent.
    pub fn schedule_mut(&mut self, agent: &str, schedule: &str) -> &mut ScheduleState {
        self.schedules
            .entry(agent.to_owned())
            .or_default()
            .entry(schedule.to_owned())
            .or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FleetState {
        let mut state = FleetState::default();
        let schedule = state.schedule_mut("coder", "hourly");
        schedule.enabled = Some(false);
        schedule.last_run_at = Some("2025-01-01T10:00:00Z".parse().unwrap());
        schedule.last_status = Some(JobStatus::Failed);
        schedule.last_error = Some("boom".into());
        schedule.runs = 3;
        schedule.failed = 1;
        state.agents.insert(
            "coder".into(),
            AgentState {
                last_session_id: Some("abc".into()),
            },
        );
        state
    }

    #[test]
    fn missing_and_empty_files_load_as_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.yaml");
        assert_eq!(
            FleetState::load(&path).unwrap(),
            (FleetState::default(), None)
        );
        fs::write(&path, "\n").unwrap();
        assert_eq!(
            FleetState::load(&path).unwrap(),
            (FleetState::default(), None)
        );
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.yaml");
        let state = sample();
        state.save(&path).unwrap();
        let (loaded, corrupt) = FleetState::load(&path).unwrap();
        assert_eq!(loaded, state);
        assert!(corrupt.is_none());
        assert_eq!(
            loaded.schedule("coder", "hourly").unwrap().enabled,
            Some(false)
        );
    }

    #[test]
    fn unknown_keys_are_tolerated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.yaml");
        fs::write(
            &path,
            "future: 1\nschedules:\n  a:\n    s:\n      runs: 2\n      new_counter: 9\n",
        )
        .unwrap();
        let (loaded, corrupt) = FleetState::load(&path).unwrap();
        assert!(corrupt.is_none());
        assert_eq!(loaded.schedule("a", "s").unwrap().runs, 2);
    }

    #[test]
    fn corrupt_file_is_moved_aside_and_reported_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.yaml");
        let garbage = "schedules: [unclosed\n  : : :";
        fs::write(&path, garbage).unwrap();
        let (loaded, corrupt) = FleetState::load(&path).unwrap();
        assert_eq!(loaded, FleetState::default());
        let corrupt = corrupt.expect("corruption must be reported");
        assert_eq!(corrupt.original, path);
        assert!(!path.exists(), "the corrupt file must not stay in place");
        let moved_name = corrupt.moved_to.file_name().unwrap().to_string_lossy();
        assert!(
            moved_name.starts_with("state.yaml.corrupt-"),
            "{moved_name}"
        );
        assert_eq!(fs::read_to_string(&corrupt.moved_to).unwrap(), garbage);
        assert!(corrupt.to_string().contains("moved to"));

        // A second corruption in the same second gets its own name.
        fs::write(&path, garbage).unwrap();
        let (_, second) = FleetState::load(&path).unwrap();
        assert_ne!(second.unwrap().moved_to, corrupt.moved_to);
    }
}
