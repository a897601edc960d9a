//! The JSON-RPC 2.0 specification's examples (§7), byte for byte over NDJSON against the daemon (the
//! library's, in-process: the protocol is all it is about), with the daemon's methods in place of
//! `subtract`/`sum`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// Sends one line and returns the one reply line, parsed.
async fn exchange(client: &mut RawNdjson, line: &str) -> Value {
    client.send(line).await;
    let reply = client
        .recv_line_within(REPLY_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("no reply to {line}"));
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?} is not JSON: {e}"))
}

/// Asserts that `line` gets no reply: a request sent after it is answered first and nothing else follows.
async fn assert_no_reply(client: &mut RawNdjson, line: &str) {
    client.send(line).await;
    let probe = exchange(
        client,
        r#"{"jsonrpc":"2.0","method":"getState","id":"probe"}"#,
    )
    .await;
    assert_eq!(
        probe,
        json!({"jsonrpc":"2.0","result":"running","id":"probe"}),
        "after {line}"
    );
    assert_eq!(
        client.recv_line_within(Duration::from_millis(300)).await,
        None,
        "{line} got a reply"
    );
}

fn error_of(code: i64, id: Value) -> impl Fn(&Value) {
    move |reply: &Value| {
        assert_eq!(reply["jsonrpc"], "2.0", "{reply}");
        assert_eq!(reply["error"]["code"], code, "{reply}");
        assert!(reply["error"]["message"].is_string(), "{reply}");
        assert_eq!(reply["id"], id, "{reply}");
        assert!(reply.get("result").is_none(), "{reply}");
    }
}

/// Batch replies by id (order is free); ids must be unique except `null`.
fn by_id(replies: &Value) -> BTreeMap<String, Vec<Value>> {
    let mut map: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for reply in replies.as_array().expect("a batch reply is an array") {
        map.entry(reply["id"].to_string())
            .or_default()
            .push(reply.clone());
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_rpc_2_0_examples() {
    let daemon = Daemon::in_process().await;
    let mut client = RawNdjson::connect(&daemon.socket).await;

    // rpc call with positional parameters
    let reply = exchange(
        &mut client,
        r#"{"jsonrpc": "2.0", "method": "getSchedule", "params": ["echo", "yearly"], "id": 1}"#,
    )
    .await;
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["result"]["name"], "yearly");
    let reply = exchange(
        &mut client,
        r#"{"jsonrpc": "2.0", "method": "getSchedule", "params": ["blocker", "nightly"], "id": 2}"#,
    )
    .await;
    assert_eq!(reply["id"], 2);
    assert_eq!(reply["result"]["name"], "nightly");

    // rpc call with named parameters (any order)
    let reply = exchange(
        &mut client,
        r#"{"jsonrpc": "2.0", "method": "getSchedule", "params": {"scheduleName": "yearly", "agentName": "echo"}, "id": 3}"#,
    )
    .await;
    assert_eq!(reply["id"], 3);
    assert_eq!(reply["result"]["agentName"], "echo");
    let reply = exchange(
        &mut client,
        r#"{"jsonrpc": "2.0", "method": "getAgent", "params": {"name": "gated"}, "id": 4}"#,
    )
    .await;
    assert_eq!(
        (reply["id"].clone(), reply["result"]["name"].clone()),
        (json!(4), json!("gated"))
    );

    // a Notification
    assert_no_reply(
        &mut client,
        r#"{"jsonrpc": "2.0", "method": "getStatus", "params": []}"#,
    )
    .await;
    assert_no_reply(&mut client, r#"{"jsonrpc": "2.0", "method": "getState"}"#).await;

    // rpc call of non-existent method
    let reply = exchange(
        &mut client,
        r#"{"jsonrpc": "2.0", "method": "foobar", "id": "1"}"#,
    )
    .await;
    error_of(-32601, json!("1"))(&reply);

    // rpc call with invalid JSON
    let reply = exchange(
        &mut client,
        r#"{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]"#,
    )
    .await;
    error_of(-32700, Value::Null)(&reply);

    // rpc call with invalid Request object
    let reply = exchange(
        &mut client,
        r#"{"jsonrpc": "2.0", "method": 1, "params": "bar"}"#,
    )
    .await;
    error_of(-32600, Value::Null)(&reply);
    let reply = exchange(
        &mut client,
        r#"{"jsonrpc": "1.0", "method": "getState", "id": 7}"#,
    )
    .await;
    error_of(-32600, json!(7))(&reply);

    // rpc call Batch, invalid JSON
    let reply = exchange(
        &mut client,
        r#"[{"jsonrpc": "2.0", "method": "getState", "id": "1"},{"jsonrpc": "2.0", "method"]"#,
    )
    .await;
    error_of(-32700, Value::Null)(&reply);

    // rpc call with an empty Array
    let reply = exchange(&mut client, "[]").await;
    error_of(-32600, Value::Null)(&reply);

    // rpc call with an invalid Batch (but not empty)
    let reply = exchange(&mut client, "[1]").await;
    assert_eq!(reply.as_array().map(Vec::len), Some(1), "{reply}");
    error_of(-32600, Value::Null)(&reply[0]);

    // rpc call with invalid Batch
    let reply = exchange(&mut client, "[1,2,3]").await;
    assert_eq!(reply.as_array().map(Vec::len), Some(3), "{reply}");
    for entry in reply.as_array().unwrap() {
        error_of(-32600, Value::Null)(entry);
    }

    // rpc call Batch
    let reply = exchange(
        &mut client,
        r#"[
        {"jsonrpc": "2.0", "method": "getSchedule", "params": ["echo", "yearly"], "id": "1"},
        {"jsonrpc": "2.0", "method": "getStatus", "params": []},
        {"jsonrpc": "2.0", "method": "getSchedule", "params": {"agentName": "blocker", "scheduleName": "nightly"}, "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "getState", "id": "9"}
    ]"#
        .replace('\n', " ")
        .as_str(),
    )
    .await;
    let replies = by_id(&reply);
    assert_eq!(replies.len(), 5, "{reply}");
    assert_eq!(replies["\"1\""][0]["result"]["name"], "yearly");
    assert_eq!(replies["\"2\""][0]["result"]["name"], "nightly");
    error_of(-32600, Value::Null)(&replies["null"][0]);
    error_of(-32601, json!("5"))(&replies["\"5\""][0]);
    assert_eq!(replies["\"9\""][0]["result"], "running");

    // rpc call Batch (all notifications)
    assert_no_reply(
        &mut client,
        r#"[{"jsonrpc": "2.0", "method": "getStatus", "params": []},{"jsonrpc": "2.0", "method": "getState"}]"#,
    )
    .await;

    // A domain error keeps its data in a batch, next to a success.
    let reply = exchange(
        &mut client,
        r#"[{"jsonrpc":"2.0","method":"getAgent","params":{"name":"nobody"},"id":10},{"jsonrpc":"2.0","method":"getState","id":11}]"#,
    )
    .await;
    let replies = by_id(&reply);
    assert_error(&replies["10"][0]["error"], 1002, "AGENT_NOT_FOUND");
    assert_eq!(replies["11"][0]["result"], "running");
}

/// A notification gets no reply, but it is a request all the same: its effect happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_is_run_without_a_reply() {
    let daemon = Daemon::in_process().await;
    let mut client = RawNdjson::connect(&daemon.socket).await;
    assert_no_reply(
        &mut client,
        r#"{"jsonrpc":"2.0","method":"trigger","params":{"agentName":"echo","prompt":"from a notification"}}"#,
    )
    .await;
    let jobs = daemon
        .ndjson()
        .await
        .call("getJobs", json!({"agentName": "echo"}))
        .await;
    assert_eq!(jobs["total"], 1, "{jobs}");
    assert_eq!(jobs["jobs"][0]["prompt"], "from a notification");
}
