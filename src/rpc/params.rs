//! The params of every method: one type per method, whose fields are the named params (camelCase) and
//! whose [`RpcParams::POSITIONAL`] is the order positional params are read in.
//!
//! The same types make the params of `openrpc.json` (their JSON Schema, descriptions from the doc
//! comments), so what the document says and what the daemon accepts cannot drift apart.

use chrono::{DateTime, Utc};
use jsonrpsee::types::{ErrorObjectOwned, Params};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::fleet::OutputRequest;
use crate::job::JobStatus;

/// An INVALID_PARAMS error saying `message`.
pub(super) fn invalid_params(message: impl Into<String>) -> ErrorObjectOwned {
    let message = message.into();
    super::error::error_object(
        format!("Invalid params: {message}"),
        super::error::ErrorData::InvalidParams { message },
    )
}

/// Parses named params, or positional ones mapped onto the names of `T::POSITIONAL` in order.
pub(super) fn parse<T: RpcParams>(params: &Params) -> Result<T, ErrorObjectOwned> {
    let names = T::POSITIONAL;
    let value: Value = match params.as_str() {
        None => Value::Object(Map::new()),
        Some(raw) => serde_json::from_str(raw).map_err(|e| invalid_params(e.to_string()))?,
    };
    let object = match value {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        Value::Array(items) => {
            if items.len() > names.len() {
                return Err(invalid_params(format!(
                    "expected at most {} positional params ({}), got {}",
                    names.len(),
                    names.join(", "),
                    items.len()
                )));
            }
            names
                .iter()
                .zip(items)
                .filter(|(_, v)| !v.is_null())
                .map(|(name, v)| (name.to_string(), v))
                .collect()
        }
        other => {
            return Err(invalid_params(format!(
                "params must be an object or an array, got {other}"
            )))
        }
    };
    serde_json::from_value(Value::Object(object)).map_err(|e| invalid_params(e.to_string()))
}

/// A method's params type.
pub trait RpcParams: DeserializeOwned + JsonSchema {
    /// The named params in the order positional params map onto them.
    const POSITIONAL: &'static [&'static str];
}

macro_rules! positional {
    ($type:ty: $($name:literal),*) => {
        impl RpcParams for $type {
            const POSITIONAL: &'static [&'static str] = &[$($name),*];
        }
    };
}

/// No params (an empty object, an empty array, or none at all).
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NoParams {}
positional!(NoParams:);

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StopParams {
    /// Wait for running jobs to finish before the fleet is stopped.
    #[serde(default = "yes")]
    pub wait_for_jobs: bool,
    /// How long to wait for running jobs, in milliseconds.
    #[serde(default = "default_stop_timeout")]
    pub timeout: u64,
    /// Cancel the jobs still running when the timeout passes.
    #[serde(default = "yes")]
    pub cancel_on_timeout: bool,
}
positional!(StopParams: "waitForJobs", "timeout", "cancelOnTimeout");

fn yes() -> bool {
    true
}

fn default_stop_timeout() -> u64 {
    30_000
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NameParams {
    /// Qualified agent name, or an unambiguous local one.
    pub name: String,
}
positional!(NameParams: "name");

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobsParams {
    /// Only this agent's jobs: qualified name, or an unambiguous local one; also the exact name of an
    /// agent no longer configured that still has job records.
    pub agent_name: Option<String>,
    pub status: Option<JobStatus>,
    /// Created at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Created before this instant.
    pub until: Option<DateTime<Utc>>,
    /// At most this many jobs (default 50).
    pub limit: Option<usize>,
    /// Skip this many of the newest jobs first (default 0).
    pub offset: Option<usize>,
}
positional!(JobsParams: "agentName", "status", "since", "until", "limit", "offset");

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobParams {
    pub id: String,
    /// The whole output in `output`, or OUTPUT_TOO_LARGE when it is over 8 MiB as stored.
    #[serde(default)]
    pub include_output: bool,
    /// A page of output from this seq on (default 0); implies includeOutput.
    pub output_from_seq: Option<u64>,
    /// At most this many lines in the page; implies includeOutput. A page also stops at 8 MiB as stored.
    pub output_limit: Option<usize>,
}
positional!(JobParams: "id", "includeOutput", "outputFromSeq", "outputLimit");

impl JobParams {
    pub fn output(&self) -> OutputRequest {
        match (self.output_from_seq, self.output_limit) {
            (None, None) if self.include_output => OutputRequest::Whole,
            (None, None) => OutputRequest::Omit,
            (from_seq, limit) => OutputRequest::Page {
                from_seq: from_seq.unwrap_or(0),
                limit,
            },
        }
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleParams {
    /// Qualified agent name, or an unambiguous local one.
    pub agent_name: String,
    pub schedule_name: String,
}
positional!(ScheduleParams: "agentName", "scheduleName");

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerParams {
    /// Qualified agent name, or an unambiguous local one.
    pub agent_name: String,
    /// Run with this schedule's prompt and settings.
    pub schedule_name: Option<String>,
    pub prompt: Option<String>,
    /// Work items, appended to the prompt; the job's `workItems`.
    pub work_items: Option<Vec<Value>>,
    /// 1 highest … 10 lowest, default 5.
    #[schemars(range(min = 1, max = 10))]
    pub priority: Option<u8>,
    /// Start a new Claude session; by default a manual run continues the agent's stored session while
    /// it is valid (session.timeout, same working directory and runtime), as herdctl does.
    #[serde(default)]
    pub fresh_session: bool,
    /// Run even though the agent's jobs already cost its budget.daily_usd today; without it such a
    /// trigger fails with BUDGET_EXCEEDED.
    #[serde(default)]
    pub over_budget: bool,
}
positional!(TriggerParams: "agentName", "scheduleName", "prompt", "workItems", "priority", "freshSession", "overBudget");

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CancelParams {
    pub id: String,
    /// SIGTERM→SIGKILL grace in milliseconds; default the agent's stop_grace.
    pub grace_ms: Option<u64>,
}
positional!(CancelParams: "id", "graceMs");

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForkParams {
    pub id: String,
    pub prompt: Option<String>,
    pub schedule_name: Option<String>,
    /// As trigger's: the fork is a new run of the agent.
    #[serde(default)]
    pub over_budget: bool,
}
positional!(ForkParams: "id", "prompt", "scheduleName", "overBudget");

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventsParams {
    /// Only events of these types (and `lagged` notices); every event without it.
    pub types: Option<Vec<String>>,
}
positional!(EventsParams: "types");

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogsParams {
    /// The lowest level delivered: trace, debug, info, warn or error.
    pub level: Option<String>,
    /// Only this agent's entries: as getJobs's agentName.
    pub agent_name: Option<String>,
    pub job_id: Option<String>,
    /// How many of the newest matching entries to replay first (default 100).
    pub tail: Option<usize>,
}
positional!(LogsParams: "level", "agentName", "jobId", "tail");

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobOutputParams {
    pub id: String,
    /// The first line to deliver (default 0).
    #[serde(default)]
    pub from_seq: u64,
    /// One notification per batch of ready lines, `{lines: [line, ...]}` (up to about 64 KiB of JSON),
    /// instead of one per line.
    #[serde(default)]
    pub batch: bool,
}
positional!(JobOutputParams: "id", "fromSeq", "batch");

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentLogsParams {
    /// Qualified agent name, or an unambiguous local one.
    pub agent_name: String,
    /// The lowest level delivered: trace, debug, info, warn or error.
    pub level: Option<String>,
    /// How many of the newest matching entries to replay first (default 100).
    pub tail: Option<usize>,
}
positional!(AgentLogsParams: "agentName", "level", "tail");

/// The params of every `unsubscribe*` method.
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnsubscribeParams {
    /// The id the subscribe call returned.
    pub subscription: u64,
}
positional!(UnsubscribeParams: "subscription");

#[cfg(test)]
mod tests {
    use super::*;

    /// Every positional name is a field of its type, and every field has a position.
    fn positions_match_fields<T: RpcParams>() {
        let schema = schemars::schema_for!(T);
        let mut fields: Vec<&str> = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|properties| properties.keys().map(String::as_str).collect())
            .unwrap_or_default();
        fields.sort_unstable();
        let mut positional = T::POSITIONAL.to_vec();
        positional.sort_unstable();
        assert_eq!(fields, positional, "{}", std::any::type_name::<T>());
    }

    #[test]
    fn every_field_has_a_position_and_every_position_a_field() {
        positions_match_fields::<NoParams>();
        positions_match_fields::<StopParams>();
        positions_match_fields::<NameParams>();
        positions_match_fields::<JobsParams>();
        positions_match_fields::<JobParams>();
        positions_match_fields::<ScheduleParams>();
        positions_match_fields::<TriggerParams>();
        positions_match_fields::<CancelParams>();
        positions_match_fields::<ForkParams>();
        positions_match_fields::<EventsParams>();
        positions_match_fields::<LogsParams>();
        positions_match_fields::<JobOutputParams>();
        positions_match_fields::<AgentLogsParams>();
        positions_match_fields::<UnsubscribeParams>();
    }
}
