//! Agent hooks (`hooks.after_run`, `hooks.on_error`): commands run after a job ends, with the job's context
//! as JSON on stdin (herdctl's hook contract).
//!
//! Owns selecting which hooks run for an event (`on_events`, `when`), running shell hooks with a timeout
//! in their own process group, and the order rule: hooks run one after another, and a failing hook with
//! `continue_on_error: false` stops the hooks after it (herdctl documents this but only logs it). Hooks
//! never change the job's outcome. Webhook hooks send the context as the JSON body (`${VAR}` in header values
//! is replaced at send time, unset = empty, as herdctl does). Discord and Slack hooks are reported unsupported
//! at load by `config`.
//!
//! Events: `completed`, `failed`, `timeout` (failed by its time limit) and `cancelled`. `after_run` hooks
//! without `on_events` run for the first three (herdctl runs none after a cancel); `on_error` hooks for
//! `failed` and `timeout`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::config::{Hook, HookAction, HooksConfig, HttpMethod};

/// Output kept from a hook for the log line (herdctl keeps 1 MiB; a log line needs far less).
const KEPT_OUTPUT: usize = 4096;
/// After a hook's timeout: SIGTERM, then this long before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookEvent {
    Completed,
    Failed,
    Timeout,
    Cancelled,
}

impl HookEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::Completed => "completed",
            HookEvent::Failed => "failed",
            HookEvent::Timeout => "timeout",
            HookEvent::Cancelled => "cancelled",
        }
    }
}

/// What happened when one hook ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    pub name: String,
    pub success: bool,
    /// Trimmed stdout on success, the reason on failure.
    pub message: String,
}

/// The hooks of `hooks` that apply to `event`, in order: `after_run` first, then `on_error`.
pub fn select<'a>(hooks: &'a HooksConfig, event: HookEvent, context: &Value) -> Vec<&'a Hook> {
    let after_run_default = !matches!(event, HookEvent::Cancelled);
    let on_error_default = matches!(event, HookEvent::Failed | HookEvent::Timeout);
    let applies = |hook: &&Hook, default: bool| {
        let listed = match &hook.on_events {
            Some(events) => events.iter().any(|e| e == event.as_str()),
            None => default,
        };
        listed
            && hook
                .when
                .as_deref()
                .is_none_or(|path| truthy(context, path))
    };
    hooks
        .after_run
        .iter()
        .filter(|h| applies(h, after_run_default))
        .chain(
            hooks
                .on_error
                .iter()
                .filter(|h| applies(h, on_error_default)),
        )
        .collect()
}

/// Whether the value at a dot path (`metadata.shouldNotify`) is present and truthy (JavaScript's rules).
fn truthy(context: &Value, path: &str) -> bool {
    let value = path
        .split('.')
        .try_fold(context, |value, key| value.get(key));
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

/// Runs the selected hooks one after another in `cwd`; `env` resolves `${VAR}` in webhook headers.
pub async fn run(
    hooks: &[&Hook],
    context: &Value,
    cwd: &Path,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Vec<HookRun> {
    let input = context.to_string();
    let mut runs = Vec::new();
    for (index, hook) in hooks.iter().enumerate() {
        let name = hook
            .name
            .clone()
            .unwrap_or_else(|| format!("{} hook #{}", hook.action.type_name(), index + 1));
        let result = match &hook.action {
            HookAction::Shell { command, timeout } => {
                run_shell(command, *timeout, &input, cwd).await
            }
            HookAction::Webhook {
                url,
                method,
                headers,
                timeout,
            } => send_webhook(url, *method, headers, *timeout, &input, env).await,
            other => Err(format!(
                "{} hooks are not run by herdctld (reported at load)",
                other.type_name()
            )),
        };
        let success = result.is_ok();
        runs.push(HookRun {
            name,
            success,
            message: result.unwrap_or_else(|e| e),
        });
        if !success && !hook.continue_on_error {
            break;
        }
    }
    runs
}

/// Sends the context as JSON; Ok(response body) on a 2xx answer.
async fn send_webhook(
    url: &str,
    method: HttpMethod,
    headers: &std::collections::BTreeMap<String, String>,
    timeout: Duration,
    body: &str,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let mut request = match method {
        HttpMethod::Post => client.post(url),
        HttpMethod::Put => client.put(url),
    }
    .header(reqwest::header::CONTENT_TYPE, "application/json")
    .body(body.to_owned());
    for (name, value) in headers {
        let mut value = reqwest::header::HeaderValue::from_str(&substitute_env(value, env))
            .map_err(|_| format!("header {name:?} has a value that is not valid in HTTP"))?;
        // Header values usually carry tokens: never print them.
        value.set_sensitive(true);
        request = request.header(name.as_str(), value);
    }
    let response = request.send().await.map_err(|e| {
        if e.is_timeout() {
            format!(
                "webhook timed out after {}",
                crate::timespec::format_duration(timeout)
            )
        } else {
            format!("webhook request to {url} failed: {}", e.without_url())
        }
    })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let text: String = text.trim().chars().take(KEPT_OUTPUT).collect();
    if status.is_success() {
        Ok(text)
    } else {
        Err(format!("HTTP {status}: {text}"))
    }
}

/// Replaces `${NAME}` with the variable's value, or nothing when it is unset.
fn substitute_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                out.push_str(&env(&after[..end]).unwrap_or_default());
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// `sh -c command` with the context on stdin. Ok(trimmed stdout) on exit 0.
async fn run_shell(
    command: &str,
    timeout: Duration,
    input: &str,
    cwd: &Path,
) -> Result<String, String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run `sh -c {command}` in {}: {e}", cwd.display()))?;
    let pgid = child.id().map(|pid| nix::unistd::Pid::from_raw(pid as i32));
    if let Some(mut stdin) = child.stdin.take() {
        let input = input.to_owned();
        // A hook that does not read its stdin must not block us: write in the background, ignore EPIPE.
        tokio::spawn(async move {
            let _ = stdin.write_all(input.as_bytes()).await;
        });
    }
    let output = child.wait_with_output();
    tokio::pin!(output);
    let finished = tokio::time::timeout(timeout, &mut output).await;
    let output = match finished {
        Ok(result) => result.map_err(|e| format!("hook failed to run: {e}"))?,
        Err(_) => {
            if let Some(pgid) = pgid {
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
                if tokio::time::timeout(KILL_GRACE, &mut output).await.is_err() {
                    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                    let _ = output.await;
                }
            }
            return Err(format!(
                "hook timed out after {}",
                crate::timespec::format_duration(timeout)
            ));
        }
    };
    let kept = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        text.trim().chars().take(KEPT_OUTPUT).collect::<String>()
    };
    if output.status.success() {
        Ok(kept(&output.stdout))
    } else {
        let stderr = kept(&output.stderr);
        let code = output
            .status
            .code()
            .map_or_else(|| "a signal".to_string(), |c| format!("code {c}"));
        Err(format!(
            "exited with {code}: {}",
            if stderr.is_empty() {
                "no error output"
            } else {
                &stderr
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shell(
        name: &str,
        command: &str,
        on_events: Option<&[&str]>,
        continue_on_error: bool,
    ) -> Hook {
        Hook {
            name: Some(name.into()),
            action: HookAction::Shell {
                command: command.into(),
                timeout: Duration::from_secs(5),
            },
            continue_on_error,
            on_events: on_events.map(|e| e.iter().map(|s| s.to_string()).collect()),
            when: None,
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn names(hooks: &[&Hook]) -> Vec<String> {
        hooks.iter().map(|h| h.name.clone().unwrap()).collect()
    }

    #[test]
    fn selection_follows_events_and_when() {
        let mut notify = shell("notify", "true", None, true);
        notify.when = Some("metadata.shouldNotify".into());
        let hooks = HooksConfig {
            after_run: vec![
                shell("always", "true", None, true),
                shell("on-cancel", "true", Some(&["cancelled"]), true),
                notify,
            ],
            on_error: vec![shell("alert", "true", None, true)],
        };
        let quiet = json!({"metadata": {"shouldNotify": false}});
        let loud = json!({"metadata": {"shouldNotify": true}});
        assert_eq!(
            names(&select(&hooks, HookEvent::Completed, &quiet)),
            ["always"]
        );
        assert_eq!(
            names(&select(&hooks, HookEvent::Failed, &loud)),
            ["always", "notify", "alert"]
        );
        assert_eq!(
            names(&select(&hooks, HookEvent::Timeout, &quiet)),
            ["always", "alert"]
        );
        assert_eq!(
            names(&select(&hooks, HookEvent::Cancelled, &quiet)),
            ["on-cancel"]
        );
    }

    #[tokio::test]
    async fn shell_hooks_get_the_context_on_stdin_and_stop_after_a_fatal_failure() {
        let dir = tempfile::tempdir().unwrap();
        let echo = shell("echo", "cat", None, true);
        let failing = shell("failing", "echo boom >&2; exit 3", None, true);
        let fatal = shell("fatal", "exit 1", None, false);
        let never = shell("never", "true", None, true);
        let context = json!({"event": "completed", "job": {"id": "job-1"}});
        let runs = run(
            &[&echo, &failing, &fatal, &never],
            &context,
            dir.path(),
            &no_env,
        )
        .await;
        assert_eq!(
            runs.len(),
            3,
            "hooks after a fatal failure must not run: {runs:?}"
        );
        assert!(runs[0].success);
        assert_eq!(
            serde_json::from_str::<Value>(&runs[0].message).unwrap(),
            context
        );
        assert!(!runs[1].success);
        assert_eq!(runs[1].message, "exited with code 3: boom");
        assert!(!runs[2].success);
    }

    #[test]
    fn header_variables_are_substituted_and_unset_ones_are_empty() {
        let env = |name: &str| (name == "TOKEN").then(|| "s3cret".to_string());
        assert_eq!(substitute_env("Bearer ${TOKEN}", &env), "Bearer s3cret");
        assert_eq!(substitute_env("${UNSET}x${TOKEN", &env), "x${TOKEN");
    }

    #[tokio::test]
    async fn webhook_hooks_post_the_context_with_substituted_headers() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Read until the JSON body (the last thing sent) is complete.
            while !request.ends_with(b"}") {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await
                .unwrap();
            String::from_utf8_lossy(&request).to_string()
        });
        let hook = Hook {
            name: Some("notify".into()),
            action: HookAction::Webhook {
                url,
                method: HttpMethod::Post,
                headers: [("Authorization".to_string(), "Bearer ${TOKEN}".to_string())].into(),
                timeout: Duration::from_secs(5),
            },
            continue_on_error: true,
            on_events: None,
            when: None,
        };
        let env = |name: &str| (name == "TOKEN").then(|| "s3cret".to_string());
        let dir = tempfile::tempdir().unwrap();
        let runs = run(&[&hook], &json!({"event": "failed"}), dir.path(), &env).await;
        assert_eq!(
            runs[0],
            HookRun {
                name: "notify".into(),
                success: true,
                message: "ok".into()
            }
        );
        let request = server.await.unwrap().to_ascii_lowercase();
        assert!(request.starts_with("post /hook "), "{request}");
        assert!(
            request.contains("authorization: bearer s3cret"),
            "{request}"
        );
        assert!(
            request.contains("content-type: application/json"),
            "{request}"
        );
        assert!(request.ends_with("{\"event\":\"failed\"}"), "{request}");
    }

    #[tokio::test]
    async fn a_hook_that_hangs_is_killed_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let mut hang = shell("hang", "trap '' TERM; sleep 30", None, true);
        hang.action = HookAction::Shell {
            command: "trap '' TERM; sleep 30".into(),
            timeout: Duration::from_millis(200),
        };
        let started = std::time::Instant::now();
        let runs = run(&[&hang], &json!({}), dir.path(), &no_env).await;
        assert!(!runs[0].success);
        assert!(runs[0].message.contains("timed out"), "{}", runs[0].message);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
