//! A stand-in for the Anthropic Messages API on 127.0.0.1, just enough to drive the real Claude Code CLI offline
//! (it honours `ANTHROPIC_BASE_URL`).
//!
//! Owns: the answers, on the shared test server (`tests/support/http_fake.rs`), which records every request. It
//! answers `POST /v1/messages` with the [`Reply`] its responder picks: a one-block assistant message — as
//! server-sent events when the request says `"stream": true`, else as one JSON message — or an API error.
//! `/v1/messages/count_tokens` gets a token count, `HEAD` (the CLI's connection warm-up) an empty 200, anything
//! else a 404 in the API's error shape.
//!
//! API: [`MessagesStub::start`]`(responder)`, [`MessagesStub::base_url`], [`MessagesStub::requests`];
//! [`Recorded::json`], [`Recorded::header`], [`Recorded::is_messages`].

#[path = "../support/http_fake.rs"]
mod http_fake;

use std::io;

use serde_json::{json, Value};

pub use http_fake::Recorded;
use http_fake::{Answer, HttpFake};

/// What the model "says" in one turn.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A text block; the turn ends (`end_turn`).
    Text(String),
    /// A `tool_use` block; the turn stops for the tool (`tool_use`).
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// An API error response (`{"type":"error",…}`) with this HTTP status instead of a message.
    Error { status: u16, message: String },
}

impl Recorded {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// A model turn: `POST /v1/messages`.
    pub fn is_messages(&self) -> bool {
        self.method == "POST" && self.path() == "/v1/messages"
    }
}

pub struct MessagesStub {
    http: HttpFake,
}

impl MessagesStub {
    /// Listens on 127.0.0.1 (a free port); `responder` picks the reply to each `/v1/messages` request body.
    pub async fn start(
        responder: impl Fn(&Value) -> Reply + Send + Sync + 'static,
    ) -> io::Result<Self> {
        let http = HttpFake::start(move |request| respond(request, &responder)).await?;
        Ok(MessagesStub { http })
    }

    /// For `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> &str {
        self.http.base_url()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.http.requests()
    }
}

fn respond(request: &Recorded, responder: &impl Fn(&Value) -> Reply) -> Answer {
    if request.method == "HEAD" {
        return Answer::new(200, "text/plain", Vec::new());
    }
    if request.method == "POST" && request.path() == "/v1/messages/count_tokens" {
        return Answer::json(200, &json!({ "input_tokens": 1 }));
    }
    if !request.is_messages() {
        return Answer::json(
            404,
            &json!({
                "type": "error",
                "error": {"type": "not_found_error", "message": format!("the stub does not serve {}", request.target)}
            }),
        );
    }
    let Some(body) = request.json() else {
        return Answer::json(
            400,
            &json!({"type": "error", "error": {"type": "invalid_request_error", "message": "body is not JSON"}}),
        );
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("claude-stub")
        .to_owned();
    let turn = match responder(&body) {
        Reply::Text(text) => Turn {
            block: json!({"type": "text", "text": text}),
            start_block: json!({"type": "text", "text": ""}),
            delta: json!({"type": "text_delta", "text": text}),
            stop_reason: "end_turn",
        },
        Reply::ToolUse { id, name, input } => Turn {
            block: json!({"type": "tool_use", "id": id, "name": name, "input": input}),
            start_block: json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
            delta: json!({"type": "input_json_delta", "partial_json": input.to_string()}),
            stop_reason: "tool_use",
        },
        Reply::Error { status, message } => {
            return Answer::json(
                status,
                &json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}}),
            )
        }
    };
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        Answer::new(200, "text/event-stream", sse_events(&model, &turn))
    } else {
        Answer::json(200, &whole_message(&model, &turn))
    }
}

/// An assistant message of one content block, in the pieces both answer forms need.
struct Turn {
    block: Value,
    /// The block as `content_block_start` announces it: empty text, or a tool call without its input.
    start_block: Value,
    /// The rest of the block as one `content_block_delta`.
    delta: Value,
    stop_reason: &'static str,
}

fn whole_message(model: &str, turn: &Turn) -> Value {
    json!({
        "id": "msg_stub", "type": "message", "role": "assistant", "model": model,
        "content": [turn.block], "stop_reason": turn.stop_reason, "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    })
}

/// The event sequence of one streamed message.
fn sse_events(model: &str, turn: &Turn) -> String {
    let events = [
        (
            "message_start",
            json!({"type": "message_start", "message": {
                "id": "msg_stub", "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 1},
            }}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": turn.start_block}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": turn.delta}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": turn.stop_reason, "stop_sequence": null},
                   "usage": {"output_tokens": 5}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ];
    events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect()
}
