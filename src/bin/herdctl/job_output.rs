//! A job's output lines (`{seq, ts, type, …}` from `streamJobOutput` or `getJob includeOutput`) as a person
//! reads them: assistant text as is, tool calls as `→ tool(args…)`, tool results abbreviated, stderr dimmed,
//! the final result with its cost and turns.
//!
//! API: [`render_line`]`(style, line) -> Vec<String>` (zero or more printable lines), [`result_note`].

use serde_json::{Map, Value};

use crate::style::{abbreviate, duration_ms, Style};

/// Longest tool-call argument summary and tool-result excerpt shown.
const TOOL_ARGS_CHARS: usize = 80;
const TOOL_RESULT_CHARS: usize = 100;

/// The printable lines for one output line.
pub fn render_line(style: Style, line: &Value) -> Vec<String> {
    let kind = line.get("type").and_then(Value::as_str).unwrap_or("");
    let text = || line.get("text").and_then(Value::as_str).unwrap_or("");
    match kind {
        "stdout" => vec![text().to_owned()],
        "stderr" => vec![style.dim(text())],
        "assistant" => content_blocks(line)
            .iter()
            .filter_map(|block| assistant_block(style, block))
            .collect(),
        "user" => content_blocks(line)
            .iter()
            .filter_map(|block| tool_result(style, block))
            .collect(),
        "system" => vec![system_line(style, line)],
        "result" => result_lines(style, line),
        "output_truncated" => vec![style.yellow(&format!(
            "… {} lines ({} bytes) of output were dropped here …",
            number(line, "dropped_lines"),
            number(line, "dropped_bytes"),
        ))],
        _ => vec![style.dim(&format!(
            "[{kind}] {}",
            abbreviate(
                &compact_without(line, &["seq", "ts", "type"]),
                TOOL_RESULT_CHARS
            )
        ))],
    }
}

fn number(line: &Value, key: &str) -> String {
    line.get(key)
        .map(Value::to_string)
        .unwrap_or_else(|| "?".into())
}

fn content_blocks(line: &Value) -> Vec<Value> {
    match line.pointer("/message/content") {
        Some(Value::Array(blocks)) => blocks.clone(),
        Some(Value::String(text)) => vec![serde_json::json!({"type": "text", "text": text})],
        _ => Vec::new(),
    }
}

fn assistant_block(style: Style, block: &Value) -> Option<String> {
    match block.get("type").and_then(Value::as_str)? {
        "text" => Some(block.get("text")?.as_str()?.to_owned()),
        "tool_use" => {
            let name = block.get("name").and_then(Value::as_str).unwrap_or("tool");
            let args = block.get("input").map(tool_args).unwrap_or_default();
            Some(style.cyan(&format!("→ {name}({args})")))
        }
        "thinking" => Some(style.dim(&abbreviate(
            block.get("thinking")?.as_str()?,
            TOOL_RESULT_CHARS,
        ))),
        _ => None,
    }
}

/// Tool input as `value` for a single field, else `key=value, …`, cut to a readable length.
fn tool_args(input: &Value) -> String {
    let Value::Object(fields) = input else {
        return abbreviate(&input.to_string(), TOOL_ARGS_CHARS);
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
    abbreviate(&joined, TOOL_ARGS_CHARS)
}

fn tool_result(style: Style, block: &Value) -> Option<String> {
    if block.get("type").and_then(Value::as_str)? != "tool_result" {
        return None;
    }
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
    let summary = format!("  ← {}{more}", abbreviate(&text, TOOL_RESULT_CHARS));
    if block.get("is_error").and_then(Value::as_bool) == Some(true) {
        Some(style.red(&summary))
    } else {
        Some(style.dim(&summary))
    }
}

fn system_line(style: Style, line: &Value) -> String {
    let subtype = line.get("subtype").and_then(Value::as_str).unwrap_or("");
    if subtype == "init" {
        let mut parts = vec!["session started".to_owned()];
        if let Some(model) = line.get("model").and_then(Value::as_str) {
            parts.push(format!("model {model}"));
        }
        if let Some(session) = line.get("session_id").and_then(Value::as_str) {
            parts.push(format!("session {session}"));
        }
        return style.dim(&parts.join(" · "));
    }
    style.dim(&format!("[system {subtype}]"))
}

fn result_lines(style: Style, line: &Value) -> Vec<String> {
    let failed = line.get("is_error").and_then(Value::as_bool) == Some(true);
    let mut head = if failed {
        style.red("✗ result")
    } else {
        style.green("✓ result")
    };
    if let Some(note) = result_note(line) {
        head.push_str(&style.dim(&format!(" ({note})")));
    }
    let mut lines = vec![head];
    if let Some(text) = line.get("result").and_then(Value::as_str) {
        lines.extend(text.lines().map(str::to_owned));
    }
    lines
}

/// "$0.0123 · 3 turns · 4.2s" from a runtime result object, when it carries any of them.
pub fn result_note(result: &Value) -> Option<String> {
    let fields: &Map<String, Value> = result.as_object()?;
    let mut parts = Vec::new();
    let cost = fields
        .get("total_cost_usd")
        .or_else(|| fields.get("cost_usd"));
    if let Some(cost) = cost.and_then(Value::as_f64) {
        parts.push(format!("${cost:.4}"));
    }
    if let Some(turns) = fields.get("num_turns").and_then(Value::as_u64) {
        parts.push(format!("{turns} turn{}", if turns == 1 { "" } else { "s" }));
    }
    if let Some(ms) = fields.get("duration_ms").and_then(Value::as_u64) {
        parts.push(duration_ms(ms));
    }
    (!parts.is_empty()).then(|| parts.join(" · "))
}

fn compact_without(line: &Value, skip: &[&str]) -> String {
    match line {
        Value::Object(fields) => {
            let kept: Map<String, Value> = fields
                .iter()
                .filter(|(key, _)| !skip.contains(&key.as_str()))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            Value::Object(kept).to_string()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PLAIN: Style = Style { color: false };

    #[test]
    fn text_and_stderr_pass_through() {
        assert_eq!(
            render_line(PLAIN, &json!({"seq": 1, "type": "stdout", "text": "hello"})),
            ["hello"]
        );
        let dimmed = render_line(
            Style { color: true },
            &json!({"type": "stderr", "text": "warn"}),
        );
        assert_eq!(dimmed, ["\x1b[2mwarn\x1b[0m"]);
    }

    #[test]
    fn tool_calls_and_results_are_summarised() {
        let call = json!({"type": "assistant", "message": {"content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "name": "Bash", "input": {"command": "ls -la"}},
            {"type": "tool_use", "name": "Read", "input": {"file_path": "/a", "limit": 5}},
        ]}});
        assert_eq!(
            render_line(PLAIN, &call),
            [
                "Let me look.",
                "→ Bash(ls -la)",
                "→ Read(file_path=/a, limit=5)"
            ]
        );
        let long: String = "x".repeat(300);
        let result = json!({"type": "user", "message": {"content": [
            {"type": "tool_result", "content": format!("{long}\nsecond\nthird")},
        ]}});
        let rendered = render_line(PLAIN, &result);
        assert_eq!(rendered.len(), 1);
        assert!(rendered[0].starts_with("  ← xxx"));
        assert!(rendered[0].ends_with("… (3 lines)"), "{}", rendered[0]);
        assert!(rendered[0].chars().count() < 130);
    }

    #[test]
    fn the_result_shows_cost_and_turns() {
        let line = json!({"type": "result", "subtype": "success", "is_error": false,
            "result": "all done", "total_cost_usd": 0.01234, "num_turns": 3});
        assert_eq!(
            render_line(PLAIN, &line),
            ["✓ result ($0.0123 · 3 turns)", "all done"]
        );
        assert_eq!(result_note(&json!({"result": "x"})), None);
    }

    #[test]
    fn unknown_types_are_kept_visible() {
        let rendered = render_line(PLAIN, &json!({"seq": 4, "type": "rate_limit", "retry": 3}));
        assert_eq!(rendered, ["[rate_limit] {\"retry\":3}"]);
    }
}
