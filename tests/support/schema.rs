//! The daemon's answers checked against `proto-docs/openrpc.json`: every result the tests' [`super::Client`]
//! receives against its method's result schema, every notification against its subscription's
//! `x-notification` schema, and every error's `data` against `ErrorData`. A test that uses the client
//! therefore also checks that the document says what the daemon does.
//!
//! Each check returns what it checked (`method`, `notification:NAME`, `error:CODE`); the client keeps
//! them, so a test can assert that it covered everything the document names ([`documented`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use jsonschema::Validator;
use serde_json::{json, Value};

struct Schemas {
    results: BTreeMap<String, Validator>,
    /// Notification method name → validator of its `result`.
    notifications: BTreeMap<String, Validator>,
    error_data: Validator,
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
        Schemas {
            results,
            notifications,
            error_data,
        }
    })
}

/// Every method and notification name of the document (`notification:NAME` for notifications).
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

/// Fails the test unless `result` is what the notification `method`'s schema describes.
pub fn check_notification(method: &str, result: &Value) -> String {
    let validator = schemas()
        .notifications
        .get(method)
        .unwrap_or_else(|| panic!("notification {method} is not in openrpc.json"));
    if !validator.is_valid(result) {
        fail(&format!("a {method} notification"), result, validator);
    }
    format!("notification:{method}")
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
