//! The HTTP and WebSocket framings: jsonrpsee's own tower service, plus the two small things it lacks here.
//!
//! - `curl -d` sends `application/x-www-form-urlencoded`, which jsonrpsee refuses with 415; this socket
//!   only ever carries JSON-RPC, so every POST is relabelled `application/json` before jsonrpsee sees it.
//! - Connections we refuse before jsonrpsee sees them (permission, connection limit) get a minimal
//!   HTTP/1.1 response written by hand, carrying the same JSON-RPC error as the NDJSON framing.

use http::header::{HeaderValue, CONTENT_TYPE};
use hyper::body::Incoming;
use jsonrpsee::types::ErrorObjectOwned;

/// The HTTP middleware: relabel every POST body as JSON.
pub(super) fn force_json_content_type(
    mut request: http::Request<Incoming>,
) -> http::Request<Incoming> {
    if request.method() == http::Method::POST {
        request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    request
}

/// A JSON-RPC error response (`id: null`) as one NDJSON line.
pub(super) fn error_line(err: &ErrorObjectOwned) -> Vec<u8> {
    let mut line = error_body(err);
    line.push(b'\n');
    line
}

/// A complete `HTTP/1.1` response with `status` (e.g. `"403 Forbidden"`) and the error as body; the
/// connection is closed after it.
pub(super) fn error_response(status: &str, err: &ErrorObjectOwned) -> Vec<u8> {
    let body = error_body(err);
    let mut response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    response
}

fn error_body(err: &ErrorObjectOwned) -> Vec<u8> {
    let response = serde_json::json!({"jsonrpc": "2.0", "id": null, "error": err});
    response.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::error::permission_denied;

    #[test]
    fn error_response_is_well_formed_http() {
        let response =
            String::from_utf8(error_response("403 Forbidden", &permission_denied(7))).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["data"]["code"], "PERMISSION_DENIED");
        assert_eq!(body["id"], serde_json::Value::Null);
    }

    #[test]
    fn error_line_ends_with_a_newline() {
        let line = error_line(&permission_denied(7));
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}
