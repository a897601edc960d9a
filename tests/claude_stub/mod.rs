//! A stand-in for the Anthropic Messages API on 127.0.0.1, just enough to drive the real Claude Code CLI offline
//! (it honours `ANTHROPIC_BASE_URL`).
//!
//! Owns: a hand-rolled HTTP/1.1 server (keep-alive, `Content-Length` bodies) that records every request and
//! answers `POST /v1/messages` with the [`Reply`] its responder picks: a one-block assistant message — as
//! server-sent events when the request says `"stream": true`, else as one JSON message — or an API error. `/v1/messages/count_tokens` gets a token count, `HEAD` (the
//! CLI's connection warm-up) an empty 200, anything else a 404 in the API's error shape.
//!
//! API: [`MessagesStub::start`]`(responder)`, [`MessagesStub::base_url`], [`MessagesStub::requests`];
//! [`Recorded::json`], [`Recorded::header`], [`Recorded::is_messages`].

use std::io;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Longest request head accepted; the CLI's are about 1 KiB.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest request body accepted; the CLI's first request (system prompt and tool schemas) is about 90 KiB.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

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

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Including any query (`/v1/messages?beta=true`).
    pub target: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A model turn: `POST /v1/messages`.
    pub fn is_messages(&self) -> bool {
        self.method == "POST" && self.path() == "/v1/messages"
    }
}

type Responder = dyn Fn(&Value) -> Reply + Send + Sync;

pub struct MessagesStub {
    base_url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    server: JoinHandle<()>,
}

impl MessagesStub {
    /// Listens on 127.0.0.1 (a free port); `responder` picks the reply to each `/v1/messages` request body.
    pub async fn start(
        responder: impl Fn(&Value) -> Reply + Send + Sync + 'static,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let responder: Arc<Responder> = Arc::new(responder);
        let recorded = Arc::clone(&requests);
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&recorded), Arc::clone(&responder)));
            }
        });
        Ok(MessagesStub {
            base_url,
            requests,
            server,
        })
    }

    /// For `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for MessagesStub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Serves one connection until the client closes it or sends something this stub does not understand.
async fn serve(
    mut stream: TcpStream,
    requests: Arc<Mutex<Vec<Recorded>>>,
    responder: Arc<Responder>,
) {
    let mut buffer = Vec::new();
    loop {
        let request = match read_request(&mut stream, &mut buffer).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(refusal) => {
                let _ = stream.write_all(refusal.as_bytes()).await;
                return;
            }
        };
        requests.lock().unwrap().push(request.clone());
        let response = respond(&request, responder.as_ref());
        if stream.write_all(&response).await.is_err() {
            return;
        }
    }
}

/// Reads one request; `Ok(None)` when the client closed the connection between requests, `Err` with a response
/// to send before closing when the request cannot be handled.
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<Option<Recorded>, String> {
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Err(simple_response(431, "request head too large"));
        }
        if read_more(stream, buffer).await == 0 {
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    if header("transfer-encoding").is_some() {
        return Err(simple_response(411, "send a Content-Length body"));
    }
    let length = match header("content-length").map(|v| v.parse::<usize>()) {
        None => 0,
        Some(Ok(length)) if length <= MAX_BODY_BYTES => length,
        Some(_) => return Err(simple_response(413, "bad or too large Content-Length")),
    };
    let body_start = head_end + 4;
    while buffer.len() < body_start + length {
        if read_more(stream, buffer).await == 0 {
            return Ok(None);
        }
    }
    let body = buffer[body_start..body_start + length].to_vec();
    buffer.drain(..body_start + length);
    Ok(Some(Recorded {
        method,
        target,
        headers,
        body,
    }))
}

/// Appends what the socket has; 0 at end of stream or on error.
async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            n
        }
        Err(_) => 0,
    }
}

fn respond(request: &Recorded, responder: &Responder) -> Vec<u8> {
    if request.method == "HEAD" {
        return response(200, "text/plain", b"");
    }
    if request.method == "POST" && request.path() == "/v1/messages/count_tokens" {
        return json_response(200, &json!({ "input_tokens": 1 }));
    }
    if !request.is_messages() {
        return json_response(
            404,
            &json!({
                "type": "error",
                "error": {"type": "not_found_error", "message": format!("the stub does not serve {}", request.target)}
            }),
        );
    }
    let Some(body) = request.json() else {
        return json_response(
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
            return json_response(
                status,
                &json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}}),
            )
        }
    };
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let events = sse_events(&model, &turn);
        response(200, "text/event-stream", events.as_bytes())
    } else {
        json_response(200, &whole_message(&model, &turn))
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

fn json_response(status: u16, body: &Value) -> Vec<u8> {
    response(status, "application/json", body.to_string().as_bytes())
}

fn simple_response(status: u16, reason: &str) -> String {
    format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
}

fn response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Error",
    };
    let mut bytes = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}
