//! Building JSON-RPC error objects for domain errors and transport limits.
//!
//! Owns: the shape `{code, message, data: {code: "NAME", ...context}}` that every non-protocol error of
//! SPEC §11 has ([`ErrorData`], one variant per name, whose schema is `openrpc.json`'s), the wire code of
//! every FleetError kind, and the error codes the transport itself emits.
//!
//! Public API:
//! - [`ErrorData`], [`error_object`]`(code, message, data) -> ErrorObjectOwned`, [`fleet_error`]
//! - [`permission_denied`]`(uid)`, [`request_too_large`]`(limit)`, [`server_busy`]`(limit)`,
//!   [`too_many_subscriptions`]`(limit)`, [`response_too_large`]`(limit)`
//! - the codes [`INVALID_PARAMS`], [`PERMISSION_DENIED`], [`REQUEST_TOO_LARGE`], [`SERVER_BUSY`],
//!   [`TOO_MANY_SUBSCRIPTIONS`], [`RESPONSE_TOO_LARGE`]

use jsonrpsee::types::ErrorObjectOwned;
use schemars::JsonSchema;
use serde::Serialize;

use crate::fleet::{FleetError, FleetState, ValidationIssue};

/// Params the method cannot take (JSON-RPC's own code), with `data: {code: INVALID_PARAMS, message}`.
pub const INVALID_PARAMS: i32 = -32602;
/// A peer whose credentials are not allowed to talk to the daemon (SPEC §12).
pub const PERMISSION_DENIED: i32 = -32001;
/// A request line or body above the configured size limit. Same code as jsonrpsee's HTTP/WS limit.
pub const REQUEST_TOO_LARGE: i32 = -32007;
/// The connection limit is reached. Same code as jsonrpsee's "Server is busy".
pub const SERVER_BUSY: i32 = -32009;
/// A subscribe call beyond the connection's subscription limit. jsonrpsee's code.
pub const TOO_MANY_SUBSCRIPTIONS: i32 = -32006;
/// A reply above the response size limit. jsonrpsee's code.
pub const RESPONSE_TOO_LARGE: i32 = -32008;

/// The `data` of an error: its name in `code` and its context beside it, camelCase.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(tag = "code", rename_all_fields = "camelCase")]
pub enum ErrorData {
    #[serde(rename = "CONFIGURATION_ERROR")]
    Configuration {
        config_path: String,
        validation_errors: Vec<ValidationIssue>,
    },
    #[serde(rename = "AGENT_NOT_FOUND")]
    AgentNotFound {
        agent_name: String,
        /// The qualified names of every agent (an ambiguous short name: the ones it could mean).
        available_agents: Vec<String>,
    },
    #[serde(rename = "JOB_NOT_FOUND")]
    JobNotFound { job_id: String },
    #[serde(rename = "SCHEDULE_NOT_FOUND")]
    ScheduleNotFound {
        agent_name: String,
        schedule_name: String,
        available_schedules: Vec<String>,
    },
    #[serde(rename = "INVALID_STATE")]
    InvalidState {
        operation: String,
        current_state: FleetState,
        /// The states the operation is allowed in.
        expected_state: Vec<FleetState>,
    },
    #[serde(rename = "CONCURRENCY_LIMIT")]
    ConcurrencyLimit {
        agent_name: String,
        current_jobs: usize,
        limit: usize,
        /// What is at its limit (`queued jobs`, …).
        scope: String,
    },
    #[serde(rename = "JOB_NOT_RUNNING")]
    JobNotRunning { job_id: String, status: String },
    #[serde(rename = "STATE_ERROR")]
    State { path: String },
    #[serde(rename = "BUDGET_EXCEEDED")]
    BudgetExceeded {
        agent_name: String,
        spent_usd: f64,
        budget_usd: f64,
        /// The agent's current day, `YYYY-MM-DD` in `timezone`.
        day: String,
        timezone: String,
        /// The param that runs the job anyway: `overBudget`.
        r#override: String,
    },
    #[serde(rename = "OUTPUT_TOO_LARGE")]
    OutputTooLarge {
        job_id: String,
        output_bytes: u64,
        limit: u64,
        /// The `getJob` params that read the output in pages.
        paging: Vec<String>,
        /// The method that reads any amount: `streamJobOutput`.
        alternative: String,
    },
    #[serde(rename = "INVALID_PARAMS")]
    InvalidParams { message: String },
    #[serde(rename = "PERMISSION_DENIED")]
    PermissionDenied { uid: u32 },
    #[serde(rename = "REQUEST_TOO_LARGE")]
    RequestTooLarge { limit: u32 },
    #[serde(rename = "SERVER_BUSY")]
    ServerBusy { limit: u32 },
    #[serde(rename = "TOO_MANY_SUBSCRIPTIONS")]
    TooManySubscriptions { limit: u32 },
    #[serde(rename = "RESPONSE_TOO_LARGE")]
    ResponseTooLarge { limit: u32 },
}

impl ErrorData {
    /// Every name `code` can have, with the JSON-RPC code its errors carry.
    pub const CODES: &'static [(&'static str, i32)] = &[
        ("CONFIGURATION_ERROR", 1001),
        ("AGENT_NOT_FOUND", 1002),
        ("JOB_NOT_FOUND", 1003),
        ("SCHEDULE_NOT_FOUND", 1004),
        ("INVALID_STATE", 1005),
        ("CONCURRENCY_LIMIT", 1006),
        ("JOB_NOT_RUNNING", 1007),
        ("STATE_ERROR", 1008),
        ("BUDGET_EXCEEDED", 1009),
        ("OUTPUT_TOO_LARGE", 1010),
        ("INVALID_PARAMS", INVALID_PARAMS),
        ("PERMISSION_DENIED", PERMISSION_DENIED),
        ("REQUEST_TOO_LARGE", REQUEST_TOO_LARGE),
        ("SERVER_BUSY", SERVER_BUSY),
        ("TOO_MANY_SUBSCRIPTIONS", TOO_MANY_SUBSCRIPTIONS),
        ("RESPONSE_TOO_LARGE", RESPONSE_TOO_LARGE),
    ];

    /// The name in `code`.
    pub fn name(&self) -> &'static str {
        match self {
            ErrorData::Configuration { .. } => "CONFIGURATION_ERROR",
            ErrorData::AgentNotFound { .. } => "AGENT_NOT_FOUND",
            ErrorData::JobNotFound { .. } => "JOB_NOT_FOUND",
            ErrorData::ScheduleNotFound { .. } => "SCHEDULE_NOT_FOUND",
            ErrorData::InvalidState { .. } => "INVALID_STATE",
            ErrorData::ConcurrencyLimit { .. } => "CONCURRENCY_LIMIT",
            ErrorData::JobNotRunning { .. } => "JOB_NOT_RUNNING",
            ErrorData::State { .. } => "STATE_ERROR",
            ErrorData::BudgetExceeded { .. } => "BUDGET_EXCEEDED",
            ErrorData::OutputTooLarge { .. } => "OUTPUT_TOO_LARGE",
            ErrorData::InvalidParams { .. } => "INVALID_PARAMS",
            ErrorData::PermissionDenied { .. } => "PERMISSION_DENIED",
            ErrorData::RequestTooLarge { .. } => "REQUEST_TOO_LARGE",
            ErrorData::ServerBusy { .. } => "SERVER_BUSY",
            ErrorData::TooManySubscriptions { .. } => "TOO_MANY_SUBSCRIPTIONS",
            ErrorData::ResponseTooLarge { .. } => "RESPONSE_TOO_LARGE",
        }
    }

    /// The JSON-RPC error code of this kind of error.
    pub fn code(&self) -> i32 {
        let name = self.name();
        ErrorData::CODES
            .iter()
            .find(|(known, _)| *known == name)
            .map_or(-32603, |(_, code)| *code)
    }
}

/// An error object with `data` (its code is the data's kind's).
pub fn error_object(message: impl Into<String>, data: ErrorData) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(data.code(), message.into(), Some(data))
}

/// A FleetManager error on the wire: its kind's code and name, its message, and its context as `data`.
pub fn fleet_error(error: &FleetError) -> ErrorObjectOwned {
    error_object(error.to_string(), fleet_data(error))
}

/// The context of a FleetError as `data`.
fn fleet_data(error: &FleetError) -> ErrorData {
    match error.clone() {
        FleetError::Configuration {
            config_path,
            validation_errors,
        } => ErrorData::Configuration {
            config_path,
            validation_errors,
        },
        FleetError::AgentNotFound {
            agent_name,
            available_agents,
        } => ErrorData::AgentNotFound {
            agent_name,
            available_agents,
        },
        // One code for "no agent answers to this name": an ambiguous name lists only what it could mean.
        FleetError::AmbiguousAgent {
            agent_name,
            candidates,
        } => ErrorData::AgentNotFound {
            agent_name,
            available_agents: candidates,
        },
        FleetError::JobNotFound { job_id } => ErrorData::JobNotFound { job_id },
        FleetError::ScheduleNotFound {
            agent_name,
            schedule_name,
            available_schedules,
        } => ErrorData::ScheduleNotFound {
            agent_name,
            schedule_name,
            available_schedules,
        },
        FleetError::InvalidState {
            operation,
            current_state,
            expected_state,
        } => ErrorData::InvalidState {
            operation,
            current_state,
            expected_state,
        },
        FleetError::ConcurrencyLimit {
            agent_name,
            current_jobs,
            limit,
            scope,
            ..
        } => ErrorData::ConcurrencyLimit {
            agent_name,
            current_jobs,
            limit,
            scope: scope.to_owned(),
        },
        FleetError::JobNotRunning { job_id, status, .. } => {
            ErrorData::JobNotRunning { job_id, status }
        }
        FleetError::State { path, .. } => ErrorData::State { path },
        FleetError::BudgetExceeded {
            agent_name,
            spent_usd,
            daily_usd,
            day,
            timezone,
        } => ErrorData::BudgetExceeded {
            agent_name,
            spent_usd,
            budget_usd: daily_usd,
            day,
            timezone,
            r#override: "overBudget".to_owned(),
        },
        FleetError::InvalidParams { message } => ErrorData::InvalidParams { message },
        FleetError::OutputTooLarge {
            job_id,
            output_bytes,
            limit,
        } => ErrorData::OutputTooLarge {
            job_id,
            output_bytes,
            limit,
            paging: vec!["outputFromSeq".to_owned(), "outputLimit".to_owned()],
            alternative: "streamJobOutput".to_owned(),
        },
    }
}

/// The error a refused peer receives before the connection is closed.
pub fn permission_denied(uid: u32) -> ErrorObjectOwned {
    error_object(
        format!("Permission denied: uid {uid} may not use this socket"),
        ErrorData::PermissionDenied { uid },
    )
}

/// The error for a request above `limit` bytes.
pub fn request_too_large(limit: u32) -> ErrorObjectOwned {
    error_object(
        format!("Request is too big: the limit is {limit} bytes per request"),
        ErrorData::RequestTooLarge { limit },
    )
}

/// The error of a subscribe call beyond the `limit` subscriptions of a connection.
pub fn too_many_subscriptions(limit: u32) -> ErrorObjectOwned {
    error_object(
        format!(
            "Too many subscriptions on this connection: the limit is {limit}; unsubscribe from one or \
             open another connection"
        ),
        ErrorData::TooManySubscriptions { limit },
    )
}

/// The error that replaces a reply above `limit` bytes.
pub fn response_too_large(limit: u32) -> ErrorObjectOwned {
    error_object(
        format!(
            "Response is too big: the limit is {limit} bytes per reply; ask for less (getJobs limit, \
             getJob outputLimit) or stream it (streamJobOutput)"
        ),
        ErrorData::ResponseTooLarge { limit },
    )
}

/// The error a connection above the connection limit receives before it is closed.
pub fn server_busy(limit: u32) -> ErrorObjectOwned {
    error_object(
        format!("Server is busy: {limit} connections are open, try again later"),
        ErrorData::ServerBusy { limit },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

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
            FleetError::AmbiguousAgent {
                agent_name: "w".into(),
                candidates: vec!["one.w".into(), "two.w".into()],
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
            [1001, 1002, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010]
        );
        for error in &errors {
            assert_eq!(
                data_of(&fleet_error(error))["code"],
                fleet_data(error).name()
            );
        }
        assert_eq!(
            data_of(&fleet_error(&errors[2])),
            json!({"code": "AGENT_NOT_FOUND", "agentName": "w", "availableAgents": ["one.w", "two.w"]})
        );
        assert_eq!(data_of(&fleet_error(&errors[5]))["currentState"], "running");
        assert_eq!(
            data_of(&fleet_error(&errors[9])),
            json!({"code": "BUDGET_EXCEEDED", "agentName": "a", "spentUsd": 5.5, "budgetUsd": 5.0,
                   "day": "2026-03-02", "timezone": "UTC", "override": "overBudget"})
        );
    }

    fn data_of(err: &ErrorObjectOwned) -> Value {
        serde_json::from_str(err.data().expect("error has data").get()).unwrap()
    }

    #[test]
    fn every_name_has_one_code_and_the_names_are_the_schemas() {
        let schema = serde_json::to_value(schemars::schema_for!(ErrorData)).unwrap();
        let mut in_schema: Vec<&str> = schema["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|variant| variant["properties"]["code"]["const"].as_str().unwrap())
            .collect();
        in_schema.sort_unstable();
        let mut named: Vec<&str> = ErrorData::CODES.iter().map(|(name, _)| *name).collect();
        named.sort_unstable();
        assert_eq!(in_schema, named);
        assert_eq!(
            ErrorData::InvalidParams {
                message: "m".into()
            }
            .code(),
            -32602
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
