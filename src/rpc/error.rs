//! Building JSON-RPC error objects for domain errors and transport limits.
//!
//! Owns: the shape `{code, message, data: {code: "NAME", ...context}}` that every non-protocol error of
//! SPEC §11 has, and the error codes the transport itself emits. It does not know FleetError; the
//! method table maps FleetError onto [`domain_error`].
//!
//! Public API:
//! - [`domain_error`]`(code, message, name, context) -> ErrorObjectOwned`
//! - [`permission_denied`]`(uid)`, [`request_too_large`]`(limit)`, [`server_busy`]`(limit)`
//! - the codes [`PERMISSION_DENIED`], [`REQUEST_TOO_LARGE`], [`SERVER_BUSY`]

use jsonrpsee::types::ErrorObjectOwned;
use serde_json::{json, Map, Value};

use crate::fleet::FleetError;

/// A peer whose credentials are not allowed to talk to the daemon (SPEC §12).
pub const PERMISSION_DENIED: i32 = -32001;
/// A request line or body above the configured size limit. Same code as jsonrpsee's HTTP/WS limit.
pub const REQUEST_TOO_LARGE: i32 = -32007;
/// The connection limit is reached. Same code as jsonrpsee's "Server is busy".
pub const SERVER_BUSY: i32 = -32009;

/// A domain error: `data` is `context` (a JSON object) with `"code": name` added, e.g.
/// `domain_error(1002, "agent 'x' not found", "AGENT_NOT_FOUND", json!({"agentName": "x"}))`.
///
/// `context` should be an object; `null` gives `data: {code}`, any other value is kept under `"value"`
/// so nothing the caller passed is lost.
pub fn domain_error(
    code: i32,
    message: impl Into<String>,
    name: &str,
    context: Value,
) -> ErrorObjectOwned {
    let mut data = match context {
        Value::Object(fields) => fields,
        Value::Null => Map::new(),
        other => {
            let mut fields = Map::new();
            fields.insert("value".to_owned(), other);
            fields
        }
    };
    data.insert("code".to_owned(), Value::String(name.to_owned()));
    ErrorObjectOwned::owned(code, message.into(), Some(Value::Object(data)))
}

/// A FleetManager error on the wire: its kind's code and name, its message, and its context as `data`.
pub fn fleet_error(error: &FleetError) -> ErrorObjectOwned {
    domain_error(
        fleet_code(error),
        error.to_string(),
        fleet_code_name(error),
        fleet_context(error),
    )
}

/// The application error code of SPEC §11.
fn fleet_code(error: &FleetError) -> i32 {
    match error {
        FleetError::Configuration { .. } => 1001,
        FleetError::AgentNotFound { .. } => 1002,
        FleetError::JobNotFound { .. } => 1003,
        FleetError::ScheduleNotFound { .. } => 1004,
        FleetError::InvalidState { .. } => 1005,
        FleetError::ConcurrencyLimit { .. } => 1006,
        FleetError::JobNotRunning { .. } => 1007,
        FleetError::State { .. } => 1008,
        FleetError::BudgetExceeded { .. } => 1009,
        FleetError::OutputTooLarge { .. } => 1010,
        // A domain-level check of a parameter the wire format could not express (e.g. a range).
        FleetError::InvalidParams { .. } => -32602,
    }
}

/// The seed's code string, `data.code` on the wire.
fn fleet_code_name(error: &FleetError) -> &'static str {
    match error {
        FleetError::Configuration { .. } => "CONFIGURATION_ERROR",
        FleetError::AgentNotFound { .. } => "AGENT_NOT_FOUND",
        FleetError::JobNotFound { .. } => "JOB_NOT_FOUND",
        FleetError::ScheduleNotFound { .. } => "SCHEDULE_NOT_FOUND",
        FleetError::InvalidState { .. } => "INVALID_STATE",
        FleetError::ConcurrencyLimit { .. } => "CONCURRENCY_LIMIT",
        FleetError::JobNotRunning { .. } => "JOB_NOT_RUNNING",
        FleetError::State { .. } => "STATE_ERROR",
        FleetError::BudgetExceeded { .. } => "BUDGET_EXCEEDED",
        FleetError::OutputTooLarge { .. } => "OUTPUT_TOO_LARGE",
        FleetError::InvalidParams { .. } => "INVALID_PARAMS",
    }
}

/// The context of the error as `data` (camelCase, without `code`, which [`domain_error`] adds).
fn fleet_context(error: &FleetError) -> Value {
    match error {
        FleetError::Configuration {
            config_path,
            validation_errors,
        } => {
            json!({"configPath": config_path, "validationErrors": validation_errors})
        }
        FleetError::AgentNotFound {
            agent_name,
            available_agents,
        } => {
            json!({"agentName": agent_name, "availableAgents": available_agents})
        }
        FleetError::JobNotFound { job_id } => json!({"jobId": job_id}),
        FleetError::ScheduleNotFound {
            agent_name,
            schedule_name,
            available_schedules,
        } => json!({"agentName": agent_name, "scheduleName": schedule_name,
                    "availableSchedules": available_schedules}),
        FleetError::InvalidState {
            operation,
            current_state,
            expected_state,
        } => json!({"operation": operation, "currentState": current_state,
                    "expectedState": expected_state}),
        FleetError::ConcurrencyLimit {
            agent_name,
            current_jobs,
            limit,
            scope,
            ..
        } => json!({"agentName": agent_name, "currentJobs": current_jobs,
                    "limit": limit, "scope": scope}),
        FleetError::JobNotRunning { job_id, status, .. } => {
            json!({"jobId": job_id, "status": status})
        }
        FleetError::State { path, .. } => json!({"path": path}),
        FleetError::BudgetExceeded {
            agent_name,
            spent_usd,
            daily_usd,
            day,
            timezone,
        } => json!({"agentName": agent_name, "spentUsd": spent_usd,
                    "budgetUsd": daily_usd, "day": day, "timezone": timezone,
                    "override": "overBudget"}),
        FleetError::InvalidParams { message } => json!({"message": message}),
        FleetError::OutputTooLarge {
            job_id,
            output_bytes,
            limit,
        } => json!({"jobId": job_id, "outputBytes": output_bytes, "limit": limit,
                    "paging": ["outputFromSeq", "outputLimit"], "alternative": "streamJobOutput"}),
    }
}

/// The error a refused peer receives before the connection is closed.
pub fn permission_denied(uid: u32) -> ErrorObjectOwned {
    domain_error(
        PERMISSION_DENIED,
        format!("Permission denied: uid {uid} may not use this socket"),
        "PERMISSION_DENIED",
        json!({ "uid": uid }),
    )
}

/// The error for a request above `limit` bytes.
pub fn request_too_large(limit: u32) -> ErrorObjectOwned {
    domain_error(
        REQUEST_TOO_LARGE,
        format!("Request is too big: the limit is {limit} bytes per request"),
        "REQUEST_TOO_LARGE",
        json!({ "limit": limit }),
    )
}

/// The error a connection above the connection limit receives before it is closed.
pub fn server_busy(limit: u32) -> ErrorObjectOwned {
    domain_error(
        SERVER_BUSY,
        format!("Server is busy: {limit} connections are open, try again later"),
        "SERVER_BUSY",
        json!({ "limit": limit }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::FleetState;

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
            FleetError::OutputTooLarge {
                job_id: "j".into(),
                output_bytes: 9,
                limit: 8,
            },
        ];
        let codes: Vec<i32> = errors.iter().map(|e| fleet_error(e).code()).collect();
        assert_eq!(
            codes,
            [1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010]
        );
        for error in &errors {
            assert_eq!(data_of(&fleet_error(error))["code"], fleet_code_name(error));
        }
        assert_eq!(data_of(&fleet_error(&errors[4]))["currentState"], "running");
        assert_eq!(
            data_of(&fleet_error(&errors[8])),
            json!({"code": "BUDGET_EXCEEDED", "agentName": "a", "spentUsd": 5.5, "budgetUsd": 5.0,
                   "day": "2026-03-02", "timezone": "UTC", "override": "overBudget"})
        );
    }

    fn data_of(err: &ErrorObjectOwned) -> Value {
        serde_json::from_str(err.data().expect("error has data").get()).unwrap()
    }

    #[test]
    fn domain_error_adds_the_code_name_to_the_context() {
        let err = domain_error(
            1002,
            "agent 'x' not found",
            "AGENT_NOT_FOUND",
            json!({"agentName": "x"}),
        );
        assert_eq!(err.code(), 1002);
        assert_eq!(err.message(), "agent 'x' not found");
        assert_eq!(
            data_of(&err),
            json!({"code": "AGENT_NOT_FOUND", "agentName": "x"})
        );
    }

    #[test]
    fn domain_error_keeps_non_object_context() {
        assert_eq!(
            data_of(&domain_error(1, "m", "X", Value::Null)),
            json!({"code": "X"})
        );
        assert_eq!(
            data_of(&domain_error(1, "m", "X", json!([1]))),
            json!({"code": "X", "value": [1]})
        );
    }

    #[test]
    fn transport_errors_carry_their_context() {
        assert_eq!(
            data_of(&permission_denied(1000)),
            json!({"code": "PERMISSION_DENIED", "uid": 1000})
        );
        assert_eq!(request_too_large(5).code(), -32007);
        assert_eq!(
            data_of(&request_too_large(5)),
            json!({"code": "REQUEST_TOO_LARGE", "limit": 5})
        );
        assert_eq!(
            data_of(&server_busy(2)),
            json!({"code": "SERVER_BUSY", "limit": 2})
        );
    }
}
