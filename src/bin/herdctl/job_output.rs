//! A job's output lines (`{seq, timestamp, type, chunk, message?}` from `streamJobOutput`, `getJob` or a
//! `job:output` event) as a person reads them: the daemon's `chunk` (the text of the line), styled by its
//! type: tool calls in cyan, tool results and stderr dimmed, the final result with its cost and turns.
//!
//! API: [`render_line`]`(style, line) -> Vec<String>` (zero or more printable lines; also a stream's gap item),
//! [`result_note`].

use serde_json::{Map, Value};

use crate::style::{duration_ms, Style};

/// The printable lines for one output line.
pub fn render_line(style: Style, line: &Value) -> Vec<String> {
    // Not a line: a stream's `{gap, missed, nextSeq}`, said where the lines would have been.
    if line.get("gap").and_then(Value::as_bool) == Some(true) {
        let missed = line.get("missed").and_then(Value::as_u64).unwrap_or(0);
        return vec![style.yellow(&format!(
            "… {missed} lines were skipped here: not available while the job runs (max_output_mb) …"
        ))];
    }
    let kind = line.get("type").and_then(Value::as_str).unwrap_or("");
    let chunk = line.get("chunk").and_then(Value::as_str).unwrap_or("");
    let message = line.get("message").unwrap_or(&Value::Null);
    let lines = || chunk.lines().map(str::to_owned);
    match kind {
        "stdout" => vec![chunk.to_owned()],
        "stderr" | "system" | "user" => lines().map(|text| style.dim(&text)).collect(),
        "assistant" => lines()
            .map(|text| {
                if text.starts_with("→ ") {
                    style.cyan(&text)
                } else {
                    text
                }
            })
            .collect(),
        "result" => {
            let failed = message.get("is_error").and_then(Value::as_bool) == Some(true);
            let mut head = if failed {
                style.red("✗ result")
            } else {
                style.green("✓ result")
            };
            if let Some(note) = result_note(message) {
                head.push_str(&style.dim(&format!(" ({note})")));
            }
            std::iter::once(head).chain(lines()).collect()
        }
        "output_truncated" => vec![style.yellow(chunk)],
        _ if chunk.starts_with('[') => vec![style.dim(chunk)],
        _ => vec![style.dim(&format!("[{kind}] {chunk}"))],
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PLAIN: Style = Style { color: false };

    #[test]
    fn a_gap_in_a_stream_prints_where_lines_were_skipped() {
        assert_eq!(
            render_line(PLAIN, &json!({"gap": true, "missed": 1200, "nextSeq": 1300})),
            ["… 1200 lines were skipped here: not available while the job runs (max_output_mb) …"]
        );
    }

    #[test]
    fn text_and_stderr_pass_through() {
        assert_eq!(
            render_line(
                PLAIN,
                &json!({"seq": 1, "type": "stdout", "chunk": "hello"})
            ),
            ["hello"]
        );
        let dimmed = render_line(
            Style { color: true },
            &json!({"type": "stderr", "chunk": "warn"}),
        );
        assert_eq!(dimmed, ["\x1b[2mwarn\x1b[0m"]);
    }

    #[test]
    fn tool_calls_stand_out_from_the_text() {
        let call = json!({"type": "assistant", "chunk": "Let me look.\n→ Bash(ls -la)"});
        assert_eq!(
            render_line(PLAIN, &call),
            ["Let me look.", "→ Bash(ls -la)"]
        );
        let colored = render_line(Style { color: true }, &call);
        assert_eq!(colored[0], "Let me look.");
        assert_ne!(colored[1], "→ Bash(ls -la)");
    }

    #[test]
    fn the_result_shows_cost_and_turns() {
        let line = json!({"type": "result", "chunk": "all done", "message": {"type": "result",
            "subtype": "success", "is_error": false, "result": "all done", "total_cost_usd": 0.01234,
            "num_turns": 3}});
        assert_eq!(
            render_line(PLAIN, &line),
            ["✓ result ($0.0123 · 3 turns)", "all done"]
        );
        assert_eq!(result_note(&json!({"result": "x"})), None);
    }

    #[test]
    fn unknown_types_are_kept_visible() {
        let rendered = render_line(
            PLAIN,
            &json!({"seq": 4, "type": "rate_limit", "chunk": "[rate_limit] {\"retry\":3}"}),
        );
        assert_eq!(rendered, ["[rate_limit] {\"retry\":3}"]);
    }
}
