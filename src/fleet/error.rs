//! The one error type of the FleetManager API, with the seed's stable codes.
//!
//! Each variant is one kind of failure; its fields are the context a client needs to act on it without
//! parsing the message. `rpc::error` gives each kind its wire code and `data` (SPEC §11); nothing here
//! knows about JSON-RPC.

/// One validation problem of a configuration, as reported to clients.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct ValidationIssue {
    pub file: String,
    pub path: String,
    pub message: String,
}

/// The lifecycle states of a FleetManager (SPEC §11 `getState`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum FleetState {
    Uninitialized,
    Initialized,
    Running,
    Stopping,
    Stopped,
}

impl FleetState {
    pub fn as_str(self) -> &'static str {
        match self {
            FleetState::Uninitialized => "uninitialized",
            FleetState::Initialized => "initialized",
            FleetState::Running => "running",
            FleetState::Stopping => "stopping",
            FleetState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for FleetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum FleetError {
    #[error("invalid configuration in {config_path}:\n{}", format_issues(.validation_errors))]
    Configuration {
        config_path: String,
        validation_errors: Vec<ValidationIssue>,
    },

    #[error("agent {agent_name:?} not found; {}", available_list("agents", .available_agents))]
    AgentNotFound {
        agent_name: String,
        available_agents: Vec<String>,
    },

    /// A local name that more than one sub-fleet's agent has.
    #[error(
        "agent {agent_name:?} is ambiguous: it could be {}; use the qualified name",
        .candidates.join(" or ")
    )]
    AmbiguousAgent {
        agent_name: String,
        /// The qualified names of the agents it could mean.
        candidates: Vec<String>,
    },

    #[error("job {job_id:?} not found; list jobs with getJobs (herdctl jobs)")]
    JobNotFound { job_id: String },

    #[error("schedule {schedule_name:?} not found for agent {agent_name:?}; {}", available_list("schedules", .available_schedules))]
    ScheduleNotFound {
        agent_name: String,
        schedule_name: String,
        available_schedules: Vec<String>,
    },

    #[error("cannot {operation}: the fleet is {current_state}, it must be {}", expected_list(.expected_state))]
    InvalidState {
        operation: String,
        current_state: FleetState,
        expected_state: Vec<FleetState>,
    },

    #[error("agent {agent_name:?} is at its limit: {current_jobs}/{limit} {scope}; {hint}")]
    ConcurrencyLimit {
        agent_name: String,
        current_jobs: usize,
        limit: usize,
        scope: &'static str,
        hint: &'static str,
    },

    #[error("job {job_id:?} is {status}: {reason}")]
    JobNotRunning {
        job_id: String,
        status: String,
        reason: String,
    },

    #[error(
        "agent {agent_name:?} has spent {} today ({day}, {timezone}), its daily budget is {}: pass \
         overBudget: true (herdctl trigger|fork --over-budget) to run it anyway, or wait for the next day",
        usd(*.spent_usd),
        usd(*.daily_usd)
    )]
    BudgetExceeded {
        agent_name: String,
        spent_usd: f64,
        daily_usd: f64,
        /// The agent's current day, `YYYY-MM-DD` in `timezone`.
        day: String,
        timezone: String,
    },

    #[error("state directory error at {path}: {message}")]
    State { path: String, message: String },

    /// Worded as jsonrpsee words the parse errors of the same code, so that a client sees one form.
    #[error("Invalid params: {message}")]
    InvalidParams { message: String },

    #[error(
        "the output of job {job_id} is {output_bytes} bytes, more than one reply carries ({limit} bytes); \
         read it in pages (getJob with outputFromSeq and outputLimit) or with streamJobOutput \
         (herdctl job {job_id} --output)"
    )]
    OutputTooLarge {
        job_id: String,
        output_bytes: u64,
        limit: u64,
    },
}

/// Dollars with cents, and with tenths of a cent when less than a cent (a run of a cheap model).
fn usd(amount: f64) -> String {
    if amount > 0.0 && amount < 0.01 {
        format!("${amount:.4}")
    } else {
        format!("${amount:.2}")
    }
}

fn format_issues(issues: &[ValidationIssue]) -> String {
    issues
        .iter()
        .map(|i| {
            let place: Vec<&str> = [i.file.as_str(), i.path.as_str()]
                .into_iter()
                .filter(|part| !part.is_empty())
                .collect();
            if place.is_empty() {
                format!("  {}", i.message)
            } else {
                format!("  {}: {}", place.join(": "), i.message)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn available_list(kind: &str, names: &[String]) -> String {
    if names.is_empty() {
        format!("no {kind} are configured")
    } else {
        format!("available {kind}: {}", names.join(", "))
    }
}

fn expected_list(states: &[FleetState]) -> String {
    states
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

impl FleetError {
    pub(crate) fn invalid_state(
        operation: &str,
        current_state: FleetState,
        expected_state: &[FleetState],
    ) -> FleetError {
        FleetError::InvalidState {
            operation: operation.to_string(),
            current_state,
            expected_state: expected_state.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_errors_list_each_issue_without_empty_parts() {
        let e = FleetError::Configuration {
            config_path: "/etc/herdctl".into(),
            validation_errors: vec![
                ValidationIssue {
                    file: "/etc/herdctl".into(),
                    path: String::new(),
                    message: "file not found".into(),
                },
                ValidationIssue {
                    file: "a.yaml".into(),
                    path: "schedules.s.interval".into(),
                    message: "invalid duration".into(),
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "invalid configuration in /etc/herdctl:\n  /etc/herdctl: file not found\n  a.yaml: schedules.s.interval: invalid duration"
        );
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = FleetError::AgentNotFound {
            agent_name: "nope".into(),
            available_agents: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            e.to_string(),
            "agent \"nope\" not found; available agents: a, b"
        );
        let e = FleetError::AmbiguousAgent {
            agent_name: "w".into(),
            candidates: vec!["one.w".into(), "two.w".into()],
        };
        assert_eq!(
            e.to_string(),
            "agent \"w\" is ambiguous: it could be one.w or two.w; use the qualified name"
        );
        let e = FleetError::invalid_state(
            "start",
            FleetState::Running,
            &[FleetState::Initialized, FleetState::Stopped],
        );
        assert_eq!(
            e.to_string(),
            "cannot start: the fleet is running, it must be initialized or stopped"
        );
        let e = FleetError::BudgetExceeded {
            agent_name: "coder".into(),
            spent_usd: 0.004,
            daily_usd: 0.0,
            day: "2026-03-02".into(),
            timezone: "Europe/Berlin".into(),
        };
        assert_eq!(
            e.to_string(),
            "agent \"coder\" has spent $0.0040 today (2026-03-02, Europe/Berlin), its daily budget is \
             $0.00: pass overBudget: true (herdctl trigger|fork --over-budget) to run it anyway, or wait \
             for the next day"
        );
    }
}
