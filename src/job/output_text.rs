//! The text a person reads for a structured output line (an output line's `chunk`): Claude's stream-json
//! messages, herdctl's own output lines, and herdctld's notices.
//!
//! Assistant text as it is, tool calls as `→ tool(args…)`, tool results as `← excerpt`, the final result's
//! text; anything else as `[type] {compact JSON}`, cut to a readable length.

use serde_json::{Map, Value};

/// Longest tool-call argument summary and excerpt of a tool result or an unknown message.
const ARGS_CHARS: usize = 80;
const EXCERPT_CHARS: usize = 100;

/// The first line of `text`, cut to `max` characters; `…` says something was left out.
pub fn abbreviate(text: &str, max: usize) -> String {
    let first_line = text.trim().lines().next().unwrap_or_default();
    let more_lines = text.trim().lines().nth(1).is_some();
    let mut out: String = first_line.chars().take(max).collect();
    if more_lines || first_line.chars().count() > max {
        out.push('…');
    }
    out
}

/// The readable text of a line of type `kind` whose content is `message`.
pub fn message_text(kind: &str, message: &Map<String, Value>) -> String {
    let text = |key: &str| message.get(key).and_then(Value::as_str);
    let lines: Vec<String> = match kind {
        "assistant" => content_blocks(message)
            .iter()
            .filter_map(assistant_block)
            .chain(text("content").map(str::to_owned))
            .collect(),
        "user" => content_blocks(message)
            .iter()
            .filter_map(user_block)
            .collect(),
        "system" => vec![match (text("content"), text("subtype")) {
            (Some(content), _) => content.to_owned(),
            (None, Some("init")) => session_started(message),
            (None, subtype) => format!("[system {}]", subtype.unwrap_or("")),
        }],
        "result" => vec![match (text("result"), message.get("errors")) {
            (Some(result), _) => result.to_owned(),
            (None, Some(Value::Array(errors))) => errors
                .iter()
                .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join("; "),
            (None, _) => format!("[result {}]", text("subtype").unwrap_or("")),
        }],
        // herdctl's own output lines (`jobs/<id>.jsonl` written by herdctl).
        "tool_use" => vec![tool_call(
            text("tool_name").unwrap_or("tool"),
            message.get("input"),
        )],
        "tool_result" => vec![match (text("result"), text("error")) {
            (Some(result), _) => format!("← {}", abbreviate(result, EXCERPT_CHARS)),
            (None, Some(error)) => format!("← error: {}", abbreviate(error, EXCERPT_CHARS)),
            (None, None) => "←".to_owned(),
        }],
        "error" => vec![text("message").unwrap_or("error").to_owned()],
        "output_truncated" => vec![format!(
            "… {} lines ({} bytes) of output were dropped here …",
            number(message, "dropped_lines"),
            number(message, "dropped_bytes"),
        )],
        _ => Vec::new(),
    };
    if lines.is_empty() {
        return format!(
            "[{kind}] {}",
            abbreviate(&compact_without_type(message), EXCERPT_CHARS)
        );
    }
    lines.join("\n")
}

fn number(message: &Map<String, Value>, key: &str) -> String {
    message
        .get(key)
        .map(Value::to_string)
        .unwrap_or_else(|| "?".into())
}

fn content_blocks(message: &Map<String, Value>) -> Vec<Value> {
    match message.get("message").and_then(|m| m.get("content")) {
        Some(Value::Array(blocks)) => blocks.clone(),
        Some(Value::String(text)) => vec![serde_json::json!({"type": "text", "text": text})],
        _ => Vec::new(),
    }
}

fn assistant_block(block: &Value) -> Option<String> {
    match block.get("type").and_then(Value::as_str)? {
        "text" => Some(block.get("text")?.as_str()?.to_owned()),
        "tool_use" => Some(tool_call(
            block.get("name").and_then(Value::as_str).unwrap_or("tool"),
            block.get("input"),
        )),
        "thinking" => Some(abbreviate(block.get("thinking")?.as_str()?, EXCERPT_CHARS)),
        _ => None,
    }
}

fn tool_call(name: &str, input: Option<&Value>) -> String {
    format!("→ {name}({})", input.map(tool_args).unwrap_or_default())
}

/// Tool input as `value` for a single field, else `key=value, …`, cut to a readable length.
fn tool_args(input: &Value) -> String {
    let Value::Object(fields) = input else {
        return abbreviate(&input.to_string(), ARGS_CHARS);
    };
    let show = |value: &Value| match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let joined = if fields.len() == 1 {
        fields.values().map(show).collect::<String>()
    } else {
        fields
            .iter()
            .map(|(key, value)| format!("{key}={}", show(value)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    abbreviate(&joined, ARGS_CHARS)
}

fn user_block(block: &Value) -> Option<String> {
    match block.get("type").and_then(Value::as_str)? {
        "text" => Some(block.get("text")?.as_str()?.to_owned()),
        "tool_result" => {
            let text = match block.get("content") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|part| part.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            let lines = text.lines().count();
            let more = if lines > 1 {
                format!(" ({lines} lines)")
            } else {
                String::new()
            };
            let error = if block.get("is_error").and_then(Value::as_bool) == Some(true) {
                "error: "
            } else {
                ""
            };
            Some(format!(
                "← {error}{}{more}",
                abbreviate(&text, EXCERPT_CHARS)
            ))
        }
        _ => None,
    }
}

fn session_started(message: &Map<String, Value>) -> String {
    let mut parts = vec!["session started".to_owned()];
    if let Some(model) = message.get("model").and_then(Value::as_str) {
        parts.push(format!("model {model}"));
    }
    if let Some(session) = message.get("session_id").and_then(Value::as_str) {
        parts.push(format!("session {session}"));
    }
    parts.join(" · ")
}

fn compact_without_type(message: &Map<String, Value>) -> String {
    let kept: Map<String, Value> = message
        .iter()
        .filter(|(key, _)| key.as_str() != "type")
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    Value::Object(kept).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text_of(message: Value) -> String {
        let kind = message["type"].as_str().unwrap_or("").to_owned();
        let Value::Object(message) = message else {
            unreachable!("test messages are objects")
        };
        message_text(&kind, &message)
    }

    #[test]
    fn assistant_text_and_tool_calls_read_as_a_person_reads_them() {
        let message = json!({"type": "assistant", "message": {"content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "name": "Bash", "input": {"command": "ls -la"}},
            {"type": "tool_use", "name": "Read", "input": {"file_path": "/a", "limit": 5}},
        ]}});
        assert_eq!(
            text_of(message),
            "Let me look.\n→ Bash(ls -la)\n→ Read(file_path=/a, limit=5)"
        );
    }

    #[test]
    fn tool_results_are_excerpts_with_their_length() {
        let long = "x".repeat(300);
        let message = json!({"type": "user", "message": {"content": [
            {"type": "tool_result", "content": format!("{long}\nsecond\nthird")},
            {"type": "tool_result", "is_error": true, "content": [{"type": "text", "text": "denied"}]},
        ]}});
        let text = text_of(message);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("← xxx") && lines[0].ends_with("… (3 lines)"),
            "{text}"
        );
        assert_eq!(lines[1], "← error: denied");
    }

    #[test]
    fn system_result_and_notices() {
        assert_eq!(
            text_of(json!({"type": "system", "subtype": "init", "model": "m", "session_id": "s"})),
            "session started · model m · session s"
        );
        assert_eq!(
            text_of(json!({"type": "system", "subtype": "x", "content": "Session not found."})),
            "Session not found."
        );
        assert_eq!(
            text_of(json!({"type": "result", "subtype": "success", "result": "all done"})),
            "all done"
        );
        assert_eq!(
            text_of(json!({"type": "result", "subtype": "error_max_turns", "errors": ["a", "b"]})),
            "a; b"
        );
        assert_eq!(
            text_of(json!({"type": "output_truncated", "dropped_lines": 3, "dropped_bytes": 90})),
            "… 3 lines (90 bytes) of output were dropped here …"
        );
    }

    #[test]
    fn herdctls_own_lines_read_too() {
        assert_eq!(
            text_of(json!({"type": "assistant", "content": "Done: tick"})),
            "Done: tick"
        );
        assert_eq!(
            text_of(json!({"type": "tool_use", "tool_name": "Bash", "input": {"command": "ls"}})),
            "→ Bash(ls)"
        );
        assert_eq!(
            text_of(json!({"type": "tool_result", "result": "ok", "success": true})),
            "← ok"
        );
        assert_eq!(
            text_of(json!({"type": "error", "message": "boom", "code": "EXIT_1"})),
            "boom"
        );
    }

    #[test]
    fn anything_else_is_its_type_and_compact_json() {
        assert_eq!(
            text_of(json!({"type": "rate_limit", "retry": 3})),
            "[rate_limit] {\"retry\":3}"
        );
        assert_eq!(abbreviate("a longer line", 6), "a long…");
        assert_eq!(abbreviate("short", 10), "short");
    }
}
