//! The OpenRPC document (`proto-docs/openrpc.json`, served by `rpc.discover`), generated from the types the
//! methods take and return.
//!
//! Params come from [`super::params`] (schemas of what is deserialised), results, notifications and error
//! data from the fleet's result types and [`ErrorData`] (schemas of what is serialised); shared types are
//! named once under `components.schemas`. A test keeps the committed file equal to [`document`]'s output:
//! `HERDCTLD_WRITE_OPENRPC=1 cargo test --lib openrpc` rewrites it after a change to the protocol.
//!
//! Subscriptions are methods with two extensions: `x-notification {name, result}` (the notification's
//! method name and the schema of its `params.result`) and `x-unsubscribe` (the method that ends it).

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::error::ErrorData;
use super::params::*;
use super::results::{JobDetail, StateResult, StatusResult};
use crate::fleet::{
    AgentInfo, CancelResult, EventItem, FleetState, JobList, LogItem, OutputBatchItem, OutputItem,
    QueueInfo, ReloadResult, ScheduleInfo,
};
use crate::job::Job;

/// The protocol's version: its major part changes when a shape changes incompatibly (proto-docs/README.md
/// has the changelog). In `rpc.discover` (`info.version`) and `getStatus` (`protocolVersion`).
pub const PROTOCOL_VERSION: &str = "2.1.0";

/// The OpenRPC version the document follows.
const OPENRPC_VERSION: &str = "1.3.2";

const DESCRIPTION: &str = "Fleet manager for autonomous coding agents. One Unix socket; raw \
newline-delimited JSON, WebSocket and HTTP POST framings. Named params are canonical; positional params \
are accepted in the order listed. Every field of every result, event and notification is camelCase and \
always present (null when known to be empty), except an output line's `message` and `truncated`, present \
only on the lines they apply to. Errors other than JSON-RPC's own carry data {code: NAME, ...context} \
(components.schemas.ErrorData). See proto-docs/README.md.";

/// Schemas of the two directions: what the daemon reads (params) and what it writes.
struct Generators {
    params: SchemaGenerator,
    results: SchemaGenerator,
}

impl Generators {
    fn new() -> Generators {
        let settings = || {
            SchemaSettings::draft07().with(|settings| {
                settings.definitions_path = "/components/schemas".into();
                settings.meta_schema = None;
            })
        };
        Generators {
            params: settings().for_deserialize().into_generator(),
            results: settings().for_serialize().into_generator(),
        }
    }

    /// The params of `T` as OpenRPC content descriptors, in positional order.
    fn params<T: RpcParams>(&mut self) -> Value {
        let schema = self.params.root_schema_for::<T>();
        let properties = schema.get("properties").and_then(Value::as_object);
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        T::POSITIONAL
            .iter()
            .map(|name| {
                let mut property = properties
                    .and_then(|properties| properties.get(*name))
                    .cloned()
                    .unwrap_or(Value::Bool(true));
                let description = property
                    .as_object_mut()
                    .and_then(|fields| fields.remove("description"));
                let mut descriptor = Map::new();
                descriptor.insert("name".into(), json!(name));
                if let Some(description) = description {
                    descriptor.insert("description".into(), description);
                }
                descriptor.insert("required".into(), json!(required.contains(name)));
                descriptor.insert("schema".into(), property);
                Value::Object(descriptor)
            })
            .collect()
    }

    fn result<T: JsonSchema>(&mut self) -> Value {
        self.results.subschema_for::<T>().to_value()
    }

    /// `components.schemas`: every named type either direction met.
    fn into_schemas(mut self) -> Map<String, Value> {
        let mut schemas = self.params.take_definitions(true);
        schemas.extend(self.results.take_definitions(true));
        schemas
    }
}

/// One method of the document.
struct Method {
    name: &'static str,
    summary: &'static str,
    params: Value,
    result: Value,
    errors: &'static [&'static str],
    /// Subscriptions: the notification's name and schema, and the unsubscribe method.
    subscription: Option<(&'static str, Value, &'static str)>,
}

impl Method {
    fn to_value(&self) -> Value {
        let mut method = Map::new();
        method.insert("name".into(), json!(self.name));
        method.insert("summary".into(), json!(self.summary));
        method.insert("paramStructure".into(), json!("either"));
        method.insert("params".into(), self.params.clone());
        let result_name = if self.subscription.is_some() {
            "subscription"
        } else {
            "result"
        };
        method.insert(
            "result".into(),
            json!({"name": result_name, "schema": self.result}),
        );
        let errors: Vec<Value> = self
            .errors
            .iter()
            .map(|name| json!({"$ref": format!("#/components/errors/{name}")}))
            .collect();
        method.insert("errors".into(), Value::Array(errors));
        if let Some((notification, schema, unsubscribe)) = &self.subscription {
            method.insert(
                "x-notification".into(),
                json!({"name": notification, "result": schema}),
            );
            method.insert("x-unsubscribe".into(), json!(unsubscribe));
        }
        Value::Object(method)
    }
}

/// Every method and subscription, in the order the document lists them.
fn methods(g: &mut Generators) -> Vec<Method> {
    let state = g.result::<StateResult>();
    let schedule = g.result::<ScheduleInfo>();
    let job = g.result::<Job>();
    let subscription_id = json!({"type": "integer", "minimum": 0});
    let unsubscribed = json!({"type": "boolean"});
    let mut methods = vec![
        Method {
            name: "initialize",
            summary: "Load and validate the configuration, open the state directory, recover interrupted jobs.",
            params: g.params::<NoParams>(),
            result: state.clone(),
            errors: &["CONFIGURATION_ERROR", "INVALID_STATE", "STATE_ERROR"],
            subscription: None,
        },
        Method {
            name: "start",
            summary: "Start the scheduler (from initialized or stopped).",
            params: g.params::<NoParams>(),
            result: state.clone(),
            errors: &["INVALID_STATE"],
            subscription: None,
        },
        Method {
            name: "stop",
            summary: "Stop the scheduler, wait for running jobs up to the timeout, then cancel what remains.",
            params: g.params::<StopParams>(),
            result: state,
            errors: &["INVALID_STATE"],
            subscription: None,
        },
        Method {
            name: "reload",
            summary: "Re-read the configuration; on error the running one is kept.",
            params: g.params::<NoParams>(),
            result: g.result::<ReloadResult>(),
            errors: &["CONFIGURATION_ERROR", "INVALID_STATE"],
            subscription: None,
        },
        Method {
            name: "getState",
            summary: "The lifecycle state.",
            params: g.params::<NoParams>(),
            result: g.result::<FleetState>(),
            errors: &[],
            subscription: None,
        },
        Method {
            name: "getStatus",
            summary: "Fleet overview: state, uptime, agent and job counts, next scheduled trigger, limits in effect, usage, protocol version.",
            params: g.params::<NoParams>(),
            result: g.result::<StatusResult>(),
            errors: &[],
            subscription: None,
        },
        Method {
            name: "getAgents",
            summary: "Every agent with its configuration summary, state, jobs and schedules.",
            params: g.params::<NoParams>(),
            result: g.result::<Vec<AgentInfo>>(),
            errors: &["INVALID_STATE"],
            subscription: None,
        },
        Method {
            name: "getAgent",
            summary: "One agent (qualified name, or an unambiguous local name).",
            params: g.params::<NameParams>(),
            result: g.result::<AgentInfo>(),
            errors: &["AGENT_NOT_FOUND", "INVALID_STATE"],
            subscription: None,
        },
        Method {
            name: "getJobs",
            summary: "Jobs, newest first.",
            params: g.params::<JobsParams>(),
            result: g.result::<JobList>(),
            errors: &["AGENT_NOT_FOUND", "INVALID_STATE", "STATE_ERROR"],
            subscription: None,
        },
        Method {
            name: "getJob",
            summary: "One job, with its output lines (all, or a page) when asked for.",
            params: g.params::<JobParams>(),
            result: g.result::<JobDetail>(),
            errors: &["JOB_NOT_FOUND", "OUTPUT_TOO_LARGE", "STATE_ERROR"],
            subscription: None,
        },
        Method {
            name: "getSchedules",
            summary: "Every schedule of every agent.",
            params: g.params::<NoParams>(),
            result: g.result::<Vec<ScheduleInfo>>(),
            errors: &["INVALID_STATE"],
            subscription: None,
        },
        Method {
            name: "getSchedule",
            summary: "One schedule.",
            params: g.params::<ScheduleParams>(),
            result: schedule.clone(),
            errors: &["AGENT_NOT_FOUND", "SCHEDULE_NOT_FOUND"],
            subscription: None,
        },
        Method {
            name: "getQueue",
            summary: "Queued jobs with positions, running counts and limits.",
            params: g.params::<NoParams>(),
            result: g.result::<QueueInfo>(),
            errors: &["INVALID_STATE"],
            subscription: None,
        },
        Method {
            name: "trigger",
            summary: "Create a job and start it now, or queue it when a limit is reached; returns at once.",
            params: g.params::<TriggerParams>(),
            result: job.clone(),
            errors: &[
                "AGENT_NOT_FOUND",
                "SCHEDULE_NOT_FOUND",
                "INVALID_STATE",
                "CONCURRENCY_LIMIT",
                "BUDGET_EXCEEDED",
                "INVALID_PARAMS",
            ],
            subscription: None,
        },
        Method {
            name: "cancelJob",
            summary: "Cancel a queued or running job; replies once the job is final.",
            params: g.params::<CancelParams>(),
            result: g.result::<CancelResult>(),
            errors: &["JOB_NOT_FOUND", "INVALID_STATE"],
            subscription: None,
        },
        Method {
            name: "forkJob",
            summary: "Run a new job from an earlier one, forking its Claude session when it has one.",
            params: g.params::<ForkParams>(),
            result: job,
            errors: &[
                "AGENT_NOT_FOUND",
                "JOB_NOT_FOUND",
                "SCHEDULE_NOT_FOUND",
                "CONCURRENCY_LIMIT",
                "JOB_NOT_RUNNING",
                "BUDGET_EXCEEDED",
            ],
            subscription: None,
        },
        Method {
            name: "enableSchedule",
            summary: "Enable a schedule (persisted).",
            params: g.params::<ScheduleParams>(),
            result: schedule.clone(),
            errors: &["AGENT_NOT_FOUND", "SCHEDULE_NOT_FOUND", "INVALID_STATE"],
            subscription: None,
        },
        Method {
            name: "disableSchedule",
            summary: "Disable a schedule (persisted).",
            params: g.params::<ScheduleParams>(),
            result: schedule,
            errors: &["AGENT_NOT_FOUND", "SCHEDULE_NOT_FOUND", "INVALID_STATE"],
            subscription: None,
        },
        Method {
            name: "rpc.discover",
            summary: "This OpenRPC document.",
            params: g.params::<NoParams>(),
            result: json!({"type": "object", "required": ["openrpc", "info", "methods"]}),
            errors: &[],
            subscription: None,
        },
    ];
    let subscriptions = [
        (
            "subscribeEvents",
            "Fleet events, optionally filtered by type (the filter applies before anything is buffered for the subscriber). A subscriber that reads too slowly receives {type: lagged, timestamp, missed}.",
            g.params::<EventsParams>(),
            "event",
            g.result::<EventItem>(),
            "unsubscribeEvents",
            &["INVALID_PARAMS"][..],
        ),
        (
            "streamLogs",
            "Log entries: the newest `tail` (default 100) matching ones, then one {type: replayed, timestamp, count}, then live ones.",
            g.params::<LogsParams>(),
            "log",
            g.result::<LogItem>(),
            "unsubscribeLogs",
            &["AGENT_NOT_FOUND", "INVALID_PARAMS"][..],
        ),
        (
            "streamJobOutput",
            "A job's output from fromSeq: history then live, without gap or duplicate, a notification per line (or per batch of lines with batch: true); {replayed: true, nextSeq} once the stored lines are delivered; the last notification is {eof: true, status}.",
            g.params::<JobOutputParams>(),
            "jobOutput",
            json!({"anyOf": [g.result::<OutputItem>(), g.result::<OutputBatchItem>()]}),
            "unsubscribeJobOutput",
            &["JOB_NOT_FOUND", "INVALID_PARAMS"][..],
        ),
        (
            "streamAgentLogs",
            "Log entries of one agent: the newest `tail` (default 100), then one {type: replayed, timestamp, count}, then live ones.",
            g.params::<AgentLogsParams>(),
            "agentLog",
            g.result::<LogItem>(),
            "unsubscribeAgentLogs",
            &["AGENT_NOT_FOUND", "INVALID_PARAMS"][..],
        ),
    ];
    for (name, summary, params, notification, item, unsubscribe, errors) in subscriptions {
        methods.push(Method {
            name,
            summary,
            params,
            result: subscription_id.clone(),
            errors,
            subscription: Some((notification, item, unsubscribe)),
        });
        methods.push(Method {
            name: unsubscribe,
            summary: "End a subscription of this connection; false if it is not one of this connection's.",
            params: g.params::<UnsubscribeParams>(),
            result: unsubscribed.clone(),
            errors: &["INVALID_PARAMS"],
            subscription: None,
        });
    }
    methods
}

/// The whole document, as committed in `proto-docs/openrpc.json`.
pub fn document() -> Value {
    let mut generators = Generators::new();
    let methods: Vec<Value> = methods(&mut generators)
        .iter()
        .map(Method::to_value)
        .collect();
    // Registers ErrorData among the schemas, which every error's `x-data` names.
    generators.result::<ErrorData>();
    let schemas = generators.into_schemas();
    let errors: Map<String, Value> = ErrorData::CODES
        .iter()
        .map(|(name, code)| {
            (
                (*name).to_owned(),
                json!({
                    "code": code,
                    "message": name,
                    "x-data": {"$ref": "#/components/schemas/ErrorData"},
                }),
            )
        })
        .collect();
    json!({
        "openrpc": OPENRPC_VERSION,
        "info": {
            "title": "herdctld",
            "version": PROTOCOL_VERSION,
            "description": DESCRIPTION,
        },
        "methods": methods,
        "components": {
            "schemas": schemas,
            "errors": errors,
        },
    })
}

/// The document as the file holds it: pretty-printed, with a final newline.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMITTED: &str = include_str!("../../proto-docs/openrpc.json");

    #[test]
    fn the_committed_openrpc_json_is_the_generated_one() {
        let generated = document_text();
        if std::env::var_os("HERDCTLD_WRITE_OPENRPC").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proto-docs/openrpc.json");
            std::fs::write(path, &generated).unwrap();
            return;
        }
        assert!(
            generated == COMMITTED,
            "proto-docs/openrpc.json is not what the types describe: run \
             `HERDCTLD_WRITE_OPENRPC=1 cargo test --lib openrpc` and commit the file"
        );
    }

    #[test]
    fn every_reference_names_a_schema_of_the_document() {
        let document = document();
        let schemas = document["components"]["schemas"].as_object().unwrap();
        let mut missing = Vec::new();
        let mut pending = vec![&document];
        while let Some(value) = pending.pop() {
            match value {
                Value::Object(fields) => {
                    if let Some(Value::String(target)) = fields.get("$ref") {
                        let name = target.trim_start_matches("#/components/schemas/");
                        if target.starts_with("#/components/schemas/")
                            && !schemas.contains_key(name)
                        {
                            missing.push(target.clone());
                        }
                    }
                    pending.extend(fields.values());
                }
                Value::Array(items) => pending.extend(items),
                _ => {}
            }
        }
        assert!(missing.is_empty(), "dangling references: {missing:?}");
    }

    #[test]
    fn params_are_listed_in_positional_order_with_their_descriptions() {
        let document = document();
        let trigger = document["methods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "trigger")
            .unwrap();
        let names: Vec<&str> = trigger["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, TriggerParams::POSITIONAL);
        assert_eq!(trigger["params"][0]["required"], true);
        assert_eq!(
            trigger["params"][4]["description"],
            "1 highest … 10 lowest, default 5."
        );
    }
}
