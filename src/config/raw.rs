//! The shape of the YAML as written: reading a file into a tree, the keys each object accepts (herdctl's
//! keys plus herdctld's extensions), alias normalisation, and which sections herdctld accepts without
//! implementing them (with the value types herdctl gives their keys). No semantics beyond that.

use std::path::Path;

use serde_yaml_ng::{Mapping, Value};

use super::error::{join, Errors};

pub(crate) const FLEET_KEYS: &[&str] = &[
    "version",
    "fleet",
    "defaults",
    "working_directory",
    "fleets",
    "agents",
    "webhooks",
    "web",
    "docker",
    "chat",
];

/// herdctld extension: `max_concurrent` (the fleet-wide cap).
pub(crate) const FLEET_META_KEYS: &[&str] = &["name", "description", "max_concurrent"];

/// `defaults` keys that configure the fleet rather than its agents (herdctld extensions, snake_case like
/// herdctl's keys): read from the root fleet file, never merged into agents.
pub(crate) const FLEET_WIDE_DEFAULTS_KEYS: &[&str] = &[
    "max_concurrent",
    "max_jobs_per_agent",
    "max_jobs_total",
    "max_job_age",
];

pub(crate) const AGENT_REF_KEYS: &[&str] = &["path", "overrides"];
pub(crate) const FLEET_REF_KEYS: &[&str] = &["path", "name", "overrides"];

/// herdctl's defaults keys, then herdctld's extensions (agent-level settings that make sense fleet-wide,
/// and the fleet-wide settings [`FLEET_WIDE_DEFAULTS_KEYS`]).
pub(crate) const DEFAULTS_KEYS: &[&str] = &[
    "docker",
    "work_source",
    "instances",
    "working_directory",
    "session",
    "model",
    "max_turns",
    "permission_mode",
    "tools",
    "allowed_tools",
    "denied_tools",
    "mcp_servers",
    "plugins",
    "max_concurrent",
    "max_jobs_per_agent",
    "max_jobs_total",
    "max_job_age",
    "concurrency",
    "runtime",
    "claude_bin",
    "timeout",
    "stop_grace",
    "max_output_mb",
    "timezone",
    "jitter",
    "overlap",
    "catchup",
    "hooks",
    "budget",
    "executor",
];

/// herdctl's agent keys (after `workspace` became `working_directory`), then herdctld's extensions.
pub(crate) const AGENT_KEYS: &[&str] = &[
    "name",
    "description",
    "working_directory",
    "repo",
    "identity",
    "system_prompt",
    "default_prompt",
    "work_source",
    "schedules",
    "session",
    "mcp_servers",
    "plugins",
    "chat",
    "hooks",
    "docker",
    "instances",
    "model",
    "max_turns",
    "permission_mode",
    "tools",
    "allowed_tools",
    "denied_tools",
    "metadata_file",
    "setting_sources",
    "runtime",
    "concurrency",
    "command",
    "env",
    "claude_bin",
    "timeout",
    "stop_grace",
    "max_output_mb",
    "timezone",
    "jitter",
    "overlap",
    "catchup",
    "budget",
    "executor",
];

/// herdctl's schedule keys (after `expression` became `cron`), then herdctld's extensions. herdctl's schedule
/// schema is not strict, so other keys load with a warning.
pub(crate) const SCHEDULE_KEYS: &[&str] = &[
    "type",
    "interval",
    "cron",
    "prompt",
    "enabled",
    "work_source",
    "resume_session",
    "outputToFile",
    "timeout",
    "stop_grace",
    "timezone",
    "jitter",
    "overlap",
    "catchup",
];

pub(crate) const IDENTITY_KEYS: &[&str] = &["name", "role", "personality"];
/// herdctld extension `executor`: `type` and the keys of `type: slurm`.
pub(crate) const EXECUTOR_KEYS: &[&str] = &[
    "type",
    "partition",
    "cpus",
    "mem",
    "time",
    "gres",
    "account",
    "qos",
    "extra_args",
    "herdctld_bin",
];
/// herdctld extension `budget`.
pub(crate) const BUDGET_KEYS: &[&str] = &["daily_usd"];
pub(crate) const SESSION_KEYS: &[&str] = &["max_turns", "timeout", "model"];
pub(crate) const INSTANCES_KEYS: &[&str] = &["max_concurrent"];
pub(crate) const MCP_SERVER_KEYS: &[&str] = &[
    "type",
    "command",
    "args",
    "env",
    "url",
    "headers",
    "timeout",
    "alwaysLoad",
];
pub(crate) const WORK_SOURCE_KEYS: &[&str] = &[
    "type",
    "repo",
    "labels",
    "exclude_labels",
    "cleanup_on_failure",
    "auth",
    "api_base_url",
];
pub(crate) const WORK_SOURCE_LABEL_KEYS: &[&str] = &["ready", "in_progress"];
pub(crate) const WORK_SOURCE_AUTH_KEYS: &[&str] = &["token_env"];
pub(crate) const HOOKS_KEYS: &[&str] = &["after_run", "on_error"];
pub(crate) const HOOK_COMMON_KEYS: &[&str] =
    &["type", "name", "continue_on_error", "on_events", "when"];
pub(crate) const SHELL_HOOK_KEYS: &[&str] = &["command", "timeout"];
pub(crate) const WEBHOOK_HOOK_KEYS: &[&str] = &["url", "method", "headers", "timeout"];
pub(crate) const CHAT_HOOK_KEYS: &[&str] = &["channel_id", "bot_token_env"];

/// Agent-level sections that are accepted for compatibility and not implemented.
pub(crate) const UNSUPPORTED_AGENT_SECTIONS: &[&str] = &["chat", "plugins"];
/// Fleet-level sections that are accepted for compatibility and not implemented.
pub(crate) const UNSUPPORTED_FLEET_SECTIONS: &[&str] =
    &["web", "webhooks", "chat", "working_directory"];

/// herdctl's `AgentDockerSchema` (strict): the docker options an agent file may set.
pub(crate) const AGENT_DOCKER_KEYS: &[&str] = &[
    "enabled",
    "ephemeral",
    "memory",
    "cpu_shares",
    "cpu_period",
    "cpu_quota",
    "pids_limit",
    "max_containers",
    "workspace_mode",
    "tmpfs",
    "labels",
];
/// herdctl's `FleetDockerSchema` (strict) adds these to the agent keys; herdctl keeps them out of agent files
/// because an agent could edit its own file to widen its container.
pub(crate) const FLEET_ONLY_DOCKER_KEYS: &[&str] = &[
    "image",
    "base_image",
    "network",
    "user",
    "volumes",
    "ports",
    "env",
    "host_config",
];

/// The value a key of a section herdctld does not implement must have (herdctl's zod type for it).
pub(crate) enum FieldKind {
    Bool,
    /// An integer ≥ 1.
    Positive,
    Text,
    Choice(&'static [&'static str]),
    /// Any mapping (its inside is not checked).
    Mapping,
    /// Any list (its items are not checked).
    List,
    /// A mapping with these fields.
    Section(&'static [(&'static str, FieldKind)]),
}

/// herdctl's non-strict sections: zod drops their unknown keys, so herdctld warns about them instead of
/// rejecting them, and rejects only values of the wrong type.
pub(crate) const WEB_FIELDS: &[(&str, FieldKind)] = &[
    ("enabled", FieldKind::Bool),
    ("port", FieldKind::Positive),
    ("host", FieldKind::Text),
    ("session_expiry_hours", FieldKind::Positive),
    ("open_browser", FieldKind::Bool),
    ("tool_results", FieldKind::Bool),
    (
        "message_grouping",
        FieldKind::Choice(&["separate", "grouped"]),
    ),
];
pub(crate) const WEBHOOKS_FIELDS: &[(&str, FieldKind)] = &[
    ("enabled", FieldKind::Bool),
    ("port", FieldKind::Positive),
    ("secret_env", FieldKind::Text),
];
pub(crate) const WORKING_DIRECTORY_FIELDS: &[(&str, FieldKind)] = &[
    ("root", FieldKind::Text),
    ("auto_clone", FieldKind::Bool),
    ("clone_depth", FieldKind::Positive),
    ("default_branch", FieldKind::Text),
];
pub(crate) const FLEET_CHAT_FIELDS: &[(&str, FieldKind)] = &[(
    "discord",
    FieldKind::Section(&[("enabled", FieldKind::Bool), ("token_env", FieldKind::Text)]),
)];
const CHAT_LOG_LEVELS: &[&str] = &["minimal", "standard", "verbose"];
pub(crate) const AGENT_CHAT_FIELDS: &[(&str, FieldKind)] = &[
    (
        "discord",
        FieldKind::Section(&[
            ("bot_token_env", FieldKind::Text),
            ("session_expiry_hours", FieldKind::Positive),
            ("log_level", FieldKind::Choice(CHAT_LOG_LEVELS)),
            ("output", FieldKind::Mapping),
            ("presence", FieldKind::Mapping),
            ("guilds", FieldKind::List),
            ("dm", FieldKind::Mapping),
        ]),
    ),
    (
        "slack",
        FieldKind::Section(&[
            ("bot_token_env", FieldKind::Text),
            ("app_token_env", FieldKind::Text),
            ("session_expiry_hours", FieldKind::Positive),
            ("log_level", FieldKind::Choice(CHAT_LOG_LEVELS)),
            ("channels", FieldKind::List),
            ("dm", FieldKind::Mapping),
        ]),
    ),
];

/// Reads and parses one YAML file whose top level must be a mapping (an empty file is an empty mapping).
/// YAML merge keys (`<<: *anchor`) are applied. Problems are reported against `file`.
pub(crate) fn read_mapping(file: &Path, errors: &mut Errors) -> Option<Mapping> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(error) => {
            errors.push(file, "", format!("cannot read file: {error}"));
            return None;
        }
    };
    parse_mapping(&text, file, errors)
}

pub(crate) fn parse_mapping(text: &str, file: &Path, errors: &mut Errors) -> Option<Mapping> {
    let mut value: Value = match serde_yaml_ng::from_str(text) {
        Ok(value) => value,
        Err(error) => {
            let message = match error.location() {
                Some(location) => format!(
                    "invalid YAML at line {}, column {}: {error}",
                    location.line(),
                    location.column()
                ),
                None => format!("invalid YAML: {error}"),
            };
            errors.push(file, "", message);
            return None;
        }
    };
    if let Err(error) = value.apply_merge() {
        errors.push(file, "", format!("invalid YAML merge key: {error}"));
        return None;
    }
    match value {
        Value::Null => Some(Mapping::new()),
        Value::Mapping(mapping) => Some(mapping),
        _ => {
            errors.push(
                file,
                "",
                "the file must be a YAML mapping (key: value lines)",
            );
            None
        }
    }
}

/// Rewrites the aliases in an agent-shaped tree (an agent file, `defaults`, or `overrides`) to their
/// canonical keys, so that precedence between sources works on one key:
/// `workspace` → `working_directory`, `instances.max_concurrent` → `concurrency`,
/// schedule `expression` → `cron`. Both spellings with different values in one source is an error.
pub(crate) fn normalize_aliases(tree: &mut Mapping, file: &Path, path: &str, errors: &mut Errors) {
    rename_alias(tree, "workspace", "working_directory", file, path, errors);
    if let Some(Value::Mapping(instances)) = tree.get_mut("instances") {
        let max_concurrent = instances.remove("max_concurrent");
        let now_empty = instances.is_empty();
        if now_empty {
            tree.remove("instances");
        }
        if let Some(value) = max_concurrent {
            match tree.get("concurrency") {
                Some(existing) if *existing != value => errors.push(
                    file,
                    &join(path, "concurrency"),
                    "both concurrency and instances.max_concurrent are set, to different values; keep one",
                ),
                _ => {
                    tree.insert(Value::from("concurrency"), value);
                }
            }
        }
    }
    if let Some(Value::Mapping(schedules)) = tree.get_mut("schedules") {
        for (name, schedule) in schedules.iter_mut() {
            if let Value::Mapping(schedule) = schedule {
                let schedule_path = join(&join(path, "schedules"), name.as_str().unwrap_or("?"));
                rename_alias(schedule, "expression", "cron", file, &schedule_path, errors);
            }
        }
    }
}

fn rename_alias(
    tree: &mut Mapping,
    alias: &str,
    canonical: &str,
    file: &Path,
    path: &str,
    errors: &mut Errors,
) {
    let Some(value) = tree.remove(alias) else {
        return;
    };
    match tree.get(canonical) {
        Some(existing) if *existing != value => errors.push(
            file,
            &join(path, alias),
            format!("both {alias} and {canonical} are set, to different values; {alias} is an alias of {canonical}, keep one"),
        ),
        Some(_) => {}
        None => {
            tree.insert(Value::from(canonical), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Option<Mapping>, Vec<String>) {
        let mut errors = Errors::default();
        let result = parse_mapping(text, Path::new("f.yaml"), &mut errors);
        (
            result,
            errors.0.into_iter().map(|e| e.to_string()).collect(),
        )
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let (result, errors) = parse("name: a\nschedules:\n  check: [unclosed\n");
        assert!(result.is_none());
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("f.yaml: invalid YAML at line"),
            "{}",
            errors[0]
        );
        assert!(errors[0].contains("column"), "{}", errors[0]);
    }

    #[test]
    fn empty_is_empty_and_scalars_are_rejected() {
        assert_eq!(parse("").0, Some(Mapping::new()));
        assert!(parse("- a\n").1[0].contains("must be a YAML mapping"));
    }

    #[test]
    fn aliases_become_canonical_keys() {
        let mut errors = Errors::default();
        let mut tree = parse(
            "workspace: ./w\ninstances: {max_concurrent: 2}\nschedules: {s: {type: cron, expression: '@daily'}}\n",
        )
        .0
        .unwrap();
        normalize_aliases(&mut tree, Path::new("a.yaml"), "", &mut errors);
        assert!(errors.is_empty());
        let expected = parse(
            "working_directory: ./w\nconcurrency: 2\nschedules: {s: {type: cron, cron: '@daily'}}\n",
        )
        .0
        .unwrap();
        assert_eq!(tree, expected);
    }

    #[test]
    fn conflicting_aliases_are_errors() {
        let mut errors = Errors::default();
        let mut tree = parse(
            "workspace: a\nworking_directory: b\nconcurrency: 1\ninstances: {max_concurrent: 3}\n",
        )
        .0
        .unwrap();
        normalize_aliases(
            &mut tree,
            Path::new("a.yaml"),
            "agents[0].overrides",
            &mut errors,
        );
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "agents[0].overrides.workspace",
                "agents[0].overrides.concurrency"
            ]
        );
    }
}
