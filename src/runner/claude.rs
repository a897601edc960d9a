//! The Claude Code CLI runtime: its command line (prompt on stdin, never in argv) and what its stream-json output
//! says about the run (session id, final result).

use std::path::PathBuf;

use serde_json::{Map, Value};

/// Environment variable naming the `claude` executable when the spec does not.
pub const CLAUDE_BIN_ENV: &str = "HERDCTL_CLAUDE_BIN";

/// How to install the CLI; part of every spawn failure of the Claude runtime.
pub const INSTALL_HINT: &str =
    "install Claude Code with `npm install -g @anthropic-ai/claude-code`, or set HERDCTL_CLAUDE_BIN to the path of the `claude` executable";

/// Everything the Claude runtime needs from the agent's configuration.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClaudeSpec {
    /// The executable; else `$HERDCTL_CLAUDE_BIN`, else `claude` on PATH.
    pub bin: Option<PathBuf>,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    /// Default `acceptEdits`.
    pub permission_mode: Option<String>,
    pub allowed_tools: Option<Vec<String>>,
    pub denied_tools: Option<Vec<String>>,
    pub tools: Option<Vec<String>>,
    pub system_prompt: Option<String>,
    pub append_system_prompt: Option<String>,
    /// The agent's `mcp_servers` map, passed as `{"mcpServers": …}`.
    pub mcp_servers: Option<Value>,
    pub setting_sources: Option<Vec<String>>,
    /// Session to resume (`--resume`).
    pub resume_session: Option<String>,
    /// Resume into a new session (`--fork-session`); only meaningful with `resume_session`.
    pub fork_session: bool,
}

impl ClaudeSpec {
    /// The executable to run: the spec's, else `$HERDCTL_CLAUDE_BIN`, else `claude`.
    pub fn program(&self) -> PathBuf {
        self.bin
            .clone()
            .or_else(|| {
                std::env::var_os(CLAUDE_BIN_ENV)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from("claude"))
    }
}

/// The argv (after the program) for a Claude run. The prompt is not in it: it goes to stdin.
pub fn claude_args(spec: &ClaudeSpec) -> Vec<String> {
    let mut args: Vec<String> = ["-p", "--output-format", "stream-json", "--verbose"]
        .map(String::from)
        .to_vec();
    let mut flag = |name: &str, value: String| {
        args.push(name.to_owned());
        args.push(value);
    };
    flag(
        "--permission-mode",
        spec.permission_mode
            .clone()
            .unwrap_or_else(|| "acceptEdits".to_owned()),
    );
    if let Some(model) = &spec.model {
        flag("--model", model.clone());
    }
    if let Some(max_turns) = spec.max_turns {
        flag("--max-turns", max_turns.to_string());
    }
    if let Some(prompt) = &spec.system_prompt {
        flag("--system-prompt", prompt.clone());
    }
    if let Some(prompt) = &spec.append_system_prompt {
        flag("--append-system-prompt", prompt.clone());
    }
    // Comma-joined: space-separated lists would swallow the arguments that follow.
    for (name, list) in [
        ("--allowedTools", &spec.allowed_tools),
        ("--disallowedTools", &spec.denied_tools),
        ("--tools", &spec.tools),
        ("--setting-sources", &spec.setting_sources),
    ] {
        if let Some(list) = list {
            flag(name, list.join(","));
        }
    }
    if let Some(servers) = &spec.mcp_servers {
        flag(
            "--mcp-config",
            serde_json::json!({ "mcpServers": servers }).to_string(),
        );
    }
    if let Some(session) = &spec.resume_session {
        flag("--resume", session.clone());
        if spec.fork_session {
            args.push("--fork-session".to_owned());
        }
    }
    args
}

/// What the stream-json messages of a run have said so far.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct StreamState {
    pub session_id: Option<String>,
    /// The last `result` message.
    pub result: Option<Map<String, Value>>,
}

impl StreamState {
    /// Takes note of one stream-json message.
    pub(crate) fn observe(&mut self, message: &Map<String, Value>) {
        let kind = message.get("type").and_then(Value::as_str);
        let session = message.get("session_id").and_then(Value::as_str);
        // The init message names the session; a fork's result may name the new one, so later ids win too.
        if let Some(session) = session {
            if kind == Some("system") || kind == Some("result") || self.session_id.is_none() {
                self.session_id = Some(session.to_owned());
            }
        }
        if kind == Some("result") {
            self.result = Some(message.clone());
        }
    }
}

/// Parses a stdout line as a stream-json message: a JSON object with a string `type`.
pub(crate) fn parse_message(line: &[u8]) -> Option<Map<String, Value>> {
    // Plain text is told apart without a failed parse (whose error is an allocation).
    if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(map)) if map.get("type").is_some_and(Value::is_string) => Some(map),
        _ => None,
    }
}

/// How a `result` message judges the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Success,
    MaxTurns(String),
    Error(String),
}

pub(crate) fn judge_result(result: &Map<String, Value>) -> Verdict {
    let subtype = result
        .get("subtype")
        .and_then(Value::as_str)
        .unwrap_or("success");
    let is_error = result
        .get("is_error")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if !is_error && subtype == "success" {
        return Verdict::Success;
    }
    let text = result_text(result).or_else(|| {
        result
            .get("errors")
            .and_then(Value::as_array)
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .filter(|joined| !joined.is_empty())
    });
    let message = text.unwrap_or_else(|| format!("claude reported {subtype}"));
    if subtype == "error_max_turns" {
        Verdict::MaxTurns(message)
    } else {
        Verdict::Error(message)
    }
}

/// The `result` text of a result message, if it has a non-empty one.
pub(crate) fn result_text(result: &Map<String, Value>) -> Option<String> {
    result
        .get("result")
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn minimal_spec_gets_print_mode_stream_json_and_accept_edits() {
        assert_eq!(
            claude_args(&ClaudeSpec::default()),
            [
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--permission-mode",
                "acceptEdits"
            ]
        );
    }

    #[test]
    fn every_flag_is_its_own_argv_entry() {
        let spec = ClaudeSpec {
            bin: None,
            model: Some("claude-sonnet-4".into()),
            max_turns: Some(7),
            permission_mode: Some("bypassPermissions".into()),
            allowed_tools: Some(vec!["Read".into(), "Bash(git *)".into()]),
            denied_tools: Some(vec!["WebFetch".into()]),
            tools: Some(vec!["Read".into(), "Edit".into()]),
            system_prompt: Some("be brief; really".into()),
            append_system_prompt: Some("and kind".into()),
            mcp_servers: Some(json!({"fs": {"command": "mcp-fs", "args": ["--root", "/"]}})),
            setting_sources: Some(vec!["user".into(), "project".into()]),
            resume_session: Some("sess-1".into()),
            fork_session: true,
        };
        let args = claude_args(&spec);
        let expected: Vec<String> = [
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            "bypassPermissions",
            "--model",
            "claude-sonnet-4",
            "--max-turns",
            "7",
            "--system-prompt",
            "be brief; really",
            "--append-system-prompt",
            "and kind",
            "--allowedTools",
            "Read,Bash(git *)",
            "--disallowedTools",
            "WebFetch",
            "--tools",
            "Read,Edit",
            "--setting-sources",
            "user,project",
            "--mcp-config",
            r#"{"mcpServers":{"fs":{"args":["--root","/"],"command":"mcp-fs"}}}"#,
            "--resume",
            "sess-1",
            "--fork-session",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(args, expected);
    }

    #[test]
    fn fork_without_a_session_to_resume_adds_nothing() {
        let spec = ClaudeSpec {
            fork_session: true,
            ..ClaudeSpec::default()
        };
        assert!(!claude_args(&spec).iter().any(|a| a.contains("fork")));
    }

    #[test]
    fn explicit_bin_wins() {
        let spec = ClaudeSpec {
            bin: Some("/opt/claude".into()),
            ..ClaudeSpec::default()
        };
        assert_eq!(spec.program(), PathBuf::from("/opt/claude"));
    }

    #[test]
    fn parse_message_requires_an_object_with_a_string_type() {
        assert!(parse_message(br#"{"type":"assistant"}"#).is_some());
        assert!(parse_message(br#"{"type":1}"#).is_none());
        assert!(parse_message(br#"["type"]"#).is_none());
        assert!(parse_message(b"not json").is_none());
        assert!(parse_message(&[0xff, 0xfe]).is_none());
    }

    #[test]
    fn stream_state_takes_the_session_from_init_and_keeps_the_result() {
        let mut state = StreamState::default();
        state.observe(&obj(
            json!({"type": "system", "subtype": "init", "session_id": "s1"}),
        ));
        state.observe(&obj(json!({"type": "assistant", "session_id": "other"})));
        assert_eq!(state.session_id.as_deref(), Some("s1"));
        let result = obj(json!({"type": "result", "subtype": "success", "result": "done"}));
        state.observe(&result);
        assert_eq!(state.result, Some(result));
    }

    #[test]
    fn judge_result_maps_subtypes_and_is_error() {
        assert_eq!(
            judge_result(&obj(json!({"subtype": "success", "is_error": false}))),
            Verdict::Success
        );
        assert_eq!(
            judge_result(&obj(
                json!({"subtype": "success", "is_error": true, "result": "boom"})
            )),
            Verdict::Error("boom".into())
        );
        assert_eq!(
            judge_result(&obj(
                json!({"subtype": "error_max_turns", "is_error": true})
            )),
            Verdict::MaxTurns("claude reported error_max_turns".into())
        );
        assert_eq!(
            judge_result(&obj(
                json!({"subtype": "error_during_execution", "errors": ["a", "b"]})
            )),
            Verdict::Error("a; b".into())
        );
    }
}
