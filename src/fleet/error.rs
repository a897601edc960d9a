//! The one error type of the FleetManager API, with the seed's stable codes.
//!
//! Every variant maps to exactly one application error code and one `data.code` string (SPEC §11); the
//! context fields are what a client needs to act on the error without parsing the message. The `rpc`
//! module turns these into JSON-RPC error objects; nothing here knows about JSON-RPC.

use serde_json::{json, Value};

/// One validation problem of a configuration, as reported to clients.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ValidationIssue {
    pub file: String,
    pub path: String,
    pub message: String,
}

/// The lifecycle states of a FleetManager (SPEC §11 `getState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

    #[error("invalid parameters: {message}")]
    InvalidParams { message: String },
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
    /// The application error code of SPEC §11.
    pub fn code(&self) -> i32 {
        match self {
            FleetError::Configuration { .. } => 1001,
            FleetError::AgentNotFound { .. } => 1002,
            FleetError::JobNotFound { .. } => 1003,
            FleetError::ScheduleNotFound { .. } => 1004,
            FleetError::InvalidState { .. } => 1005,
            FleetError::ConcurrencyLimit { .. } => 1006,
            FleetError::JobNotRunning { .. } => 1007,
            FleetError::State { .. } => 1008,
            FleetError::BudgetExceeded { .. } => 1009,
            // A domain-level check of a parameter the wire format could not express (e.g. a range).
            FleetError::InvalidParams { .. } => -32602,
        }
    }

    /// The seed's code string, `data.code` on the wire.
    pub fn code_name(&self) -> &'static str {
        match self {
            FleetError::Configuration { .. } => "CONFIGURATION_ERROR",
            FleetError::AgentNotFound { .. } => "AGENT_NOT_FOUND",
            FleetError::JobNotFound { .. } => "JOB_NOT_FOUND",
            FleetError::ScheduleNotFound { .. } => "SCHEDULE_NOT_FOUND",
            FleetError::InvalidState { .. } => "INVALID_STATE",
            FleetError::ConcurrencyLimit { .. } => "CONCURRENCY_LIMIT",
            FleetError::JobNotRunning { .. } => "JOB_NOT_RUNNING",
            FleetError::State { .. } => "STATE_ERROR",
            FleetError::BudgetExceeded { .. } => "BUDGET_EXCEEDED",
            FleetError::InvalidParams { .. } => "INVALID_PARAMS",
        }
    }

    /// `{code, ...context}`: the machine-readable data of the error.
    pub fn data(&self) -> Value {
        let code = self.code_name();
        match self {
            FleetError::Configuration {
                config_path,
                validation_errors,
            } => {
                json!({"code": code, "configPath": config_path, "validationErrors": validation_errors})
            }
            FleetError::AgentNotFound {
                agent_name,
                available_agents,
            } => {
                json!({"code": code, "agentName": agent_name, "availableAgents": available_agents})
            }
            FleetError::JobNotFound { job_id } => json!({"code": code, "jobId": job_id}),
            FleetError::ScheduleNotFound {
                agent_name,
                schedule_name,
                available_schedules,
            } => json!({"code": code, "agentName": agent_name, "scheduleName": schedule_name,
                        "availableSchedules": available_schedules}),
            FleetError::InvalidState {
                operation,
                current_state,
                expected_state,
            } => json!({"code": code, "operation": operation, "currentState": current_state,
                        "expectedState": expected_state}),
            FleetError::ConcurrencyLimit {
                agent_name,
                current_jobs,
                limit,
                scope,
                ..
            } => json!({"code": code, "agentName": agent_name, "currentJobs": current_jobs,
                        "limit": limit, "scope": scope}),
            FleetError::JobNotRunning { job_id, status, .. } => {
                json!({"code": code, "jobId": job_id, "status": status})
            }
            FleetError::State { path, .. } => json!({"code": code, "path": path}),
            FleetError::BudgetExceeded {
                agent_name,
                spent_usd,
                daily_usd,
                day,
                timezone,
            } => json!({"code": code, "agentName": agent_name, "spentUsd": spent_usd,
                        "budgetUsd": daily_usd, "day": day, "timezone": timezone,
                        "override": "overBudget"}),
            FleetError::InvalidParams { message } => json!({"code": code, "message": message}),
        }
    }

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
    fn every_error_carries_its_code_in_data() {
        let errors = [
            FleetError::Configuration {
                config_path: "f.yaml".into(),
                validation_errors: vec![],
            },
            FleetError::AgentNotFound {
                agent_name: "x".into(),
                available_agents: vec!["a".into()],
            },
            FleetError::JobNotFound { job_id: "j".into() },
            FleetError::ScheduleNotFound {
                agent_name: "a".into(),
                schedule_name: "s".into(),
                available_schedules: vec![],
            },
            FleetError::invalid_state("start", FleetState::Running, &[FleetState::Initialized]),
            FleetError::ConcurrencyLimit {
                agent_name: "a".into(),
                current_jobs: 1,
                limit: 1,
                scope: "queued jobs",
                hint: "wait",
            },
            FleetError::JobNotRunning {
                job_id: "j".into(),
                status: "completed".into(),
                reason: "r".into(),
            },
            FleetError::State {
                path: "/s".into(),
                message: "m".into(),
            },
            FleetError::BudgetExceeded {
                agent_name: "a".into(),
                spent_usd: 5.5,
                daily_usd: 5.0,
                day: "2026-03-02".into(),
                timezone: "UTC".into(),
            },
        ];
        let codes: Vec<i32> = errors.iter().map(FleetError::code).collect();
        assert_eq!(
            codes,
            [1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009]
        );
        for error in &errors {
            assert_eq!(error.data()["code"], error.code_name());
        }
    }

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
        let e = FleetError::invalid_state(
            "start",
            FleetState::Running,
            &[FleetState::Initialized, FleetState::Stopped],
        );
        assert_eq!(
            e.to_string(),
            "cannot start: the fleet is running, it must be initialized or stopped"
        );
        assert_eq!(e.data()["currentState"], "running");
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
        assert_eq!(
            e.data(),
            json!({"code": "BUDGET_EXCEEDED", "agentName": "coder", "spentUsd": 0.004, "budgetUsd": 0.0,
                   "day": "2026-03-02", "timezone": "Europe/Berlin", "override": "overBudget"})
        );
    }
}
