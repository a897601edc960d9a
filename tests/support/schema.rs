//! The daemon's answers checked against `proto-docs/openrpc.json`: every result the tests' [`super::Client`]
//! receives against its method's result schema, every notification against its subscription's
//! `x-notification` schema, and every error's `data` against `ErrorData`. A test that uses the client
//! therefore also checks that the document says what the daemon does.
//!
//! Each check returns what it checked (`method`, `notification:NAME`, `error:CODE`, and for notifications
//! the kind of item: `event/TYPE`, `log/TYPE` for a log stream's notices, `jobOutput/line+FIELD` for an
//! output line with an optional field); the client keeps them, so a test can assert that it covered
//! everything the document names ([`documented`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use jsonschema::Validator;
use serde_json::{json, Value};

struct Schemas {
    results: BTreeMap<String, Validator>,
    /// Notification method name → validator of its `result`.
    notifications: BTreeMap<String, Validator>,
    error_data: Validator,
    /// The kinds of item the document defines (`event/TYPE`, `log/TYPE`, `jobOutput/line+FIELD`).
    kinds: BTreeSet<String>,
    /// The fields every output line has; any other a line has is an optional one.
    line_fields: BTreeSet<String>,
}

/// Every `type` constant of the objects `schema` may be, following references into `document`.
fn type_constants(document: &Value, schema: &Value, found: &mut BTreeSet<String>) {
    if let Some(target) = schema["$ref"].as_str() {
        let name = target.trim_start_matches("#/components/schemas/");
        return type_constants(document, &document["components"]["schemas"][name], found);
    }
    if let Some(constant) = schema["properties"]["type"]["const"].as_str() {
        found.insert(constant.to_owned());
    }
    for combinator in ["anyOf", "oneOf", "allOf"] {
        for variant in schema[combinator].as_array().into_iter().flatten() {
            type_constants(document, variant, found);
        }
    }
}

/// The names of `schema`'s properties that are `required` (`true`) or not (`false`).
fn property_names(schema: &Value, required: bool) -> BTreeSet<String> {
    let listed: BTreeSet<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    schema["properties"]
        .as_object()
        .into_iter()
        .flat_map(|properties| properties.keys())
        .filter(|name| listed.contains(name.as_str()) == required)
        .cloned()
        .collect()
}

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proto-docs/openrpc.json");
    let text = std::fs::read_to_string(path).expect("proto-docs/openrpc.json");
    serde_json::from_str(&text).expect("openrpc.json is JSON")
}

/// A validator of `schema` whose `#/components/...` references resolve in `document`.
fn validator(document: &Value, schema: &Value) -> Validator {
    let root = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "components": document["components"],
        "allOf": [schema],
    });
    jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("schema {schema}: {e}"))
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let document = document();
        let mut results = BTreeMap::new();
        let mut notifications = BTreeMap::new();
        for method in document["methods"].as_array().expect("methods") {
            let name = method["name"].as_str().expect("method name").to_owned();
            results.insert(name, validator(&document, &method["result"]["schema"]));
            if let Some(notification) = method.get("x-notification") {
                let name = notification["name"].as_str().expect("notification name");
                notifications.insert(
                    name.to_owned(),
                    validator(&document, &notification["result"]),
                );
            }
        }
        let error_data = validator(
            &document,
            &json!({"$ref": "#/components/schemas/ErrorData"}),
        );
        let schema = |name: &str| &document["components"]["schemas"][name];
        let mut kinds = BTreeSet::new();
        for (notification, item) in [("event", "EventItem"), ("log", "LogItem")] {
            let mut types = BTreeSet::new();
            type_constants(&document, schema(item), &mut types);
            kinds.extend(types.iter().map(|t| format!("{notification}/{t}")));
        }
        let line = schema("OutputLine");
        kinds.extend(
            property_names(line, false)
                .iter()
                .map(|field| format!("jobOutput/line+{field}")),
        );
        Schemas {
            results,
            notifications,
            error_data,
            kinds,
            line_fields: property_names(line, true),
        }
    })
}

/// Every method and notification name of the document (`notification:NAME` for notifications), and every
/// kind of event, log notice and optional output line field it defines.
pub fn documented() -> BTreeSet<String> {
    let schemas = schemas();
    schemas
        .results
        .keys()
        .cloned()
        .chain(
            schemas
                .notifications
                .keys()
                .map(|name| format!("notification:{name}")),
        )
        .chain(schemas.kinds.iter().cloned())
        .collect()
}

fn fail(what: &str, value: &Value, validator: &Validator) -> ! {
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("at {}: {e}", e.instance_path()))
        .collect();
    panic!(
        "{what} does not match proto-docs/openrpc.json:\n{}\nvalue: {value}",
        errors.join("\n")
    )
}

/// Fails the test unless `result` is what `method`'s schema describes.
pub fn check_result(method: &str, result: &Value) -> String {
    let Some(validator) = schemas().results.get(method) else {
        // A method the document lacks: the daemon answers -32601, which is an error, not a result.
        panic!("{method} answered a result but is not in openrpc.json");
    };
    if !validator.is_valid(result) {
        fail(&format!("the result of {method}"), result, validator);
    }
    method.to_owned()
}

/// Fails the test unless `result` is what the notification `method`'s schema describes; returns
/// `notification:METHOD` and the kinds of item it is (see the module doc).
pub fn check_notification(method: &str, result: &Value) -> Vec<String> {
    let schemas = schemas();
    let validator = schemas
        .notifications
        .get(method)
        .unwrap_or_else(|| panic!("notification {method} is not in openrpc.json"));
    if !validator.is_valid(result) {
        fail(&format!("a {method} notification"), result, validator);
    }
    let mut checked = vec![format!("notification:{method}")];
    if method == "jobOutput" {
        let lines = match result["lines"].as_array() {
            Some(batch) => batch.iter().collect(),
            None if result.get("seq").is_some() => vec![result],
            None => Vec::new(),
        };
        for line in lines.into_iter().filter_map(Value::as_object) {
            checked.extend(
                line.keys()
                    .filter(|field| !schemas.line_fields.contains(*field))
                    .map(|field| format!("jobOutput/line+{field}")),
            );
        }
    } else if let Some(kind) = result["type"].as_str() {
        // An event's type, or a log stream's notice (`lagged`, `replayed`); entries have no `type`.
        checked.push(format!("{method}/{kind}"));
    }
    checked
}

/// Fails the test unless an error's `data`, when it has one, is an `ErrorData`.
pub fn check_error(error: &Value) -> Option<String> {
    let data = error.get("data")?;
    let validator = &schemas().error_data;
    if !validator.is_valid(data) {
        fail("error data", data, validator);
    }
    Some(format!("error:{}", data["code"].as_str().unwrap_or("?")))
}
