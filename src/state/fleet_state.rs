//! `state.yaml`, in herdctl's layout so that either tool reads what the other wrote:
//!
//! ```yaml
//! fleet: {}                      # herdctl's, kept as it is
//! agents:
//!   <qualified agent>:
//!     status: idle               # herdctl's agent fields, kept as they are
//!     schedules:
//!       <schedule>: {status: idle|running|disabled, last_run_at, next_run_at, last_error,
//!                    last_status, runs, skipped, failed, enabled}   # the last five are herdctld's
//! session_wakes: {}              # herdctl's, kept as it is
//! ```
//!
//! A runtime disable is herdctl's `status: disabled`; a runtime enable of a schedule configured
//! `enabled: false` is herdctld's `enabled: true`. Every key either tool does not know is kept on rewrite.
//! The layout of earlier herdctld versions (top-level `schedules:`, `agents.<a>.last_session_id`) still
//! reads and is written in the new layout.
//!
//! Loading never silently resets: a missing (or empty) file is the default state, an unparsable one is
//! moved aside and reported in the returned [`CorruptFile`]. Saving is an atomic, durable replace.

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

/// Keys of a `state.yaml` mapping that herdctld does not interpret, kept for the next write.
pub type OtherKeys = BTreeMap<String, serde_yaml_ng::Value>;

/// The whole of `state.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetState {
    /// herdctl's fleet-level state (`started_at`); herdctld does not use it.
    #[serde(default)]
    pub fleet: OtherKeys,
    #[serde(default)]
    pub agents: BTreeMap<String, AgentState>,
    /// The layout of earlier herdctld versions: agent → schedule → state. Moved into `agents` on load.
    #[serde(default, skip_serializing)]
    schedules: BTreeMap<String, BTreeMap<String, ScheduleState>>,
    /// `session_wakes` and anything else at the top level.
    #[serde(flatten)]
    pub other: OtherKeys,
}

/// Persisted state of one agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    #[serde(default)]
    pub schedules: BTreeMap<String, ScheduleState>,
    /// Claude session of the agent's last run as earlier herdctld versions kept it; the session pointer
    /// (`sessions/<agent>.json`) replaces it and wins.
    #[serde(skip)]
    pub legacy_session_id: Option<String>,
    /// herdctl's `status`, `current_job`, … and anything else.
    #[serde(flatten)]
    pub other: OtherKeys,
}

/// Persisted state of one schedule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredSchedule", into = "StoredSchedule")]
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
    pub other: OtherKeys,
}

/// herdctl's schedule status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ScheduleStatus {
    #[default]
    Idle,
    /// Written by herdctl while its job runs; stale once that herdctl is gone.
    Running,
    Disabled,
}

/// A schedule's entry as it is on disk.
#[derive(Serialize, Deserialize)]
struct StoredSchedule {
    #[serde(default)]
    status: ScheduleStatus,
    #[serde(default)]
    last_run_at: Option<DateTime<Utc>>,
    #[serde(default)]
    next_run_at: Option<DateTime<Utc>>,
    #[serde(default)]
    last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_status: Option<JobStatus>,
    #[serde(default)]
    runs: u64,
    #[serde(default)]
    skipped: u64,
    #[serde(default)]
    failed: u64,
    /// Only an enable that overrides the configuration; a disable is `status: disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    #[serde(flatten)]
    other: OtherKeys,
}

impl From<StoredSchedule> for ScheduleState {
    fn from(stored: StoredSchedule) -> ScheduleState {
        let enabled = match stored.status {
            ScheduleStatus::Disabled => Some(false),
            ScheduleStatus::Idle | ScheduleStatus::Running => stored.enabled,
        };
        ScheduleState {
            enabled,
            last_run_at: stored.last_run_at,
            next_run_at: stored.next_run_at,
            last_status: stored.last_status,
            last_error: stored.last_error,
            runs: stored.runs,
            skipped: stored.skipped,
            failed: stored.failed,
            other: stored.other,
        }
    }
}

impl From<ScheduleState> for StoredSchedule {
    fn from(state: ScheduleState) -> StoredSchedule {
        StoredSchedule {
            status: if state.enabled == Some(false) {
                ScheduleStatus::Disabled
            } else {
                ScheduleStatus::Idle
            },
            last_run_at: state.last_run_at,
            next_run_at: state.next_run_at,
            last_error: state.last_error,
            last_status: state.last_status,
            runs: state.runs,
            skipped: state.skipped,
            failed: state.failed,
            enabled: state.enabled.filter(|enabled| *enabled),
            other: state.other,
        }
    }
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
        match serde_yaml_ng::from_str::<FleetState>(&text) {
            Ok(state) => Ok((state.migrated(), None)),
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

    /// Moves what earlier herdctld versions wrote into the current layout.
    fn migrated(mut self) -> FleetState {
        for (agent, schedules) in std::mem::take(&mut self.schedules) {
            let entry = self.agents.entry(agent).or_default();
            for (name, state) in schedules {
                entry.schedules.entry(name).or_insert(state);
            }
        }
        for agent in self.agents.values_mut() {
            if let Some(value) = agent.other.remove("last_session_id") {
                agent.legacy_session_id = value.as_str().map(str::to_owned);
            }
        }
        self
    }

    pub fn schedule(&self, agent: &str, schedule: &str) -> Option<&ScheduleState> {
        self.agents.get(agent)?.schedules.get(schedule)
    }

    /// The state of `agent`/`schedule`, created empty if absent.
    pub fn schedule_mut(&mut self, agent: &str, schedule: &str) -> &mut ScheduleState {
        self.agents
            .entry(agent.to_owned())
            .or_default()
            .schedules
            .entry(schedule.to_owned())
            .or_default()
    }

    /// The session id an earlier herdctld version kept for `agent` in this file.
    pub fn legacy_session_id(&self, agent: &str) -> Option<&str> {
        self.agents.get(agent)?.legacy_session_id.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `state.yaml` as herdctl 5.33 writes it (field for field; values made up).
    const HERDCTL_STATE: &str = "\
fleet: {}
agents:
  alpha:
    status: idle
    schedules:
      tick:
        last_run_at: 2026-12-02T20:48:10.103Z
        next_run_at: 2026-12-02T21:48:11.551Z
        status: idle
        last_error: null
  beta:
    status: idle
    current_job: null
    schedules:
      nightly:
        last_run_at: null
        next_run_at: null
        status: disabled
        last_error: null
session_wakes:
  wake-1: {id: wake-1, agent: alpha, recurring: false}
";

    fn sample() -> FleetState {
        let mut state = FleetState::default();
        let schedule = state.schedule_mut("coder", "hourly");
        schedule.enabled = Some(false);
        schedule.last_run_at = Some("2025-01-01T10:00:00Z".parse().unwrap());
        schedule.last_status = Some(JobStatus::Failed);
        schedule.last_error = Some("boom".into());
        schedule.runs = 3;
        schedule.failed = 1;
        state.schedule_mut("coder", "nightly").enabled = Some(true);
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
    fn herdctls_file_reads_with_its_disabled_schedule_and_is_written_back_in_its_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.yaml");
        fs::write(&path, HERDCTL_STATE).unwrap();
        let (mut loaded, corrupt) = FleetState::load(&path).unwrap();
        assert!(corrupt.is_none());
        assert_eq!(
            loaded.schedule("beta", "nightly").unwrap().enabled,
            Some(false)
        );
        let tick = loaded.schedule("alpha", "tick").unwrap();
        assert_eq!(tick.enabled, None);
        assert_eq!(
            tick.last_run_at,
            Some("2026-12-02T20:48:10.103Z".parse().unwrap())
        );

        loaded.schedule_mut("alpha", "tick").runs += 1;
        loaded.save(&path).unwrap();
        let written: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        let original: serde_yaml_ng::Value = serde_yaml_ng::from_str(HERDCTL_STATE).unwrap();
        assert_eq!(written["fleet"], original["fleet"]);
        assert_eq!(written["session_wakes"], original["session_wakes"]);
        assert_eq!(written["agents"]["beta"]["status"], "idle");
        assert!(written["agents"]["beta"]
            .as_mapping()
            .unwrap()
            .contains_key("current_job"));
        let nightly = &written["agents"]["beta"]["schedules"]["nightly"];
        assert_eq!(nightly["status"], "disabled");
        assert!(nightly.get("enabled").is_none());
        for key in ["last_run_at", "next_run_at", "last_error", "status"] {
            assert!(nightly.get(key).is_some(), "herdctl's {key} is kept");
        }
        assert_eq!(
            written["agents"]["alpha"]["schedules"]["tick"]["last_run_at"],
            original["agents"]["alpha"]["schedules"]["tick"]["last_run_at"]
        );
        assert_eq!(written["agents"]["alpha"]["schedules"]["tick"]["runs"], 1);
        assert!(written.get("schedules").is_none());
    }

    #[test]
    fn an_enable_overriding_the_configuration_is_herdctlds_own_key() {
        let mut state = FleetState::default();
        state.schedule_mut("a", "s").enabled = Some(true);
        let text = serde_yaml_ng::to_string(&state).unwrap();
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(value["agents"]["a"]["schedules"]["s"]["status"], "idle");
        assert_eq!(value["agents"]["a"]["schedules"]["s"]["enabled"], true);
    }

    #[test]
    fn the_layout_of_earlier_herdctld_versions_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.yaml");
        fs::write(
            &path,
            "schedules:\n  a:\n    s:\n      enabled: false\n      runs: 2\n      new_counter: 9\n\
             agents:\n  a:\n    last_session_id: abc\n",
        )
        .unwrap();
        let (loaded, corrupt) = FleetState::load(&path).unwrap();
        assert!(corrupt.is_none());
        let schedule = loaded.schedule("a", "s").unwrap();
        assert_eq!(schedule.runs, 2);
        assert_eq!(schedule.enabled, Some(false));
        assert_eq!(loaded.legacy_session_id("a"), Some("abc"));
        loaded.save(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("last_session_id"), "{text}");
        assert!(text.contains("new_counter: 9"), "{text}");
        assert!(text.contains("status: disabled"), "{text}");
    }

    #[test]
    fn corrupt_file_is_moved_aside_and_reported_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.yaml");
        let garbage = "agents: [unclosed\n  : : :";
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
