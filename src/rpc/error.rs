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
