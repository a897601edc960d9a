//! Turning a merged agent tree into a validated [`AgentConfig`], collecting every problem instead of
//! stopping at the first: wrong types, unknown keys (with a did-you-mean), bad names, durations, cron
//! expressions, time zones, permission modes, repositories, runtimes, hooks, budgets, docker settings
//! (herdctl's strict schema) and the sections herdctld does not implement (herdctl's value types). MCP
//! servers are transformed here as herdctl transforms them for Claude. Errors are attributed to the file
//! and path where the offending value was written (see `merge::Origins`).
//!
//! Reads no files (paths are resolved lexically, existence is not checked) and knows nothing of sub-fleets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use super::error::{index, join, Errors};
use super::interpolate::key_display;
use super::locate::normalize;
use super::merge::Origins;
use super::raw::*;
use super::resolved::*;
use crate::timespec::{parse_duration, CronExpr};

const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_SHELL_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_WEBHOOK_HOOK_TIMEOUT: Duration = Duration::from_secs(10);
const HOOK_EVENTS: &[&str] = &["completed", "failed", "timeout", "cancelled"];
const SETTING_SOURCES: &[&str] = &["user", "project", "local"];
const NAME_RULE: &str =
    "must start with a letter or number and contain only letters, numbers, underscores and hyphens";

/// Whether `name` is a valid agent or fleet name: `^[a-zA-Z0-9][a-zA-Z0-9_-]*$`.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Whether `repo` is `owner/repo`.
fn is_valid_repo(repo: &str) -> bool {
    let valid_part = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    };
    matches!(repo.split_once('/'), Some((owner, name)) if valid_part(owner) && valid_part(name))
}

/// Warnings gathered during a load. Each unsupported section is reported once, at its first occurrence,
/// with a count of the other places it appears.
#[derive(Debug, Default)]
pub struct Warnings {
    list: Vec<ConfigWarning>,
    unsupported: BTreeMap<String, (usize, usize)>,
}

impl Warnings {
    pub fn push(&mut self, file: &Path, path: &str, message: impl Into<String>) {
        self.list.push(ConfigWarning {
            file: file.to_path_buf(),
            path: path.to_string(),
            message: message.into(),
        });
    }

    pub fn unsupported(&mut self, file: &Path, path: &str, section: &str) {
        if let Some((_, others)) = self.unsupported.get_mut(section) {
            *others += 1;
            return;
        }
        self.unsupported
            .insert(section.to_string(), (self.list.len(), 0));
        self.push(
            file,
            path,
            format!("accepted, not supported by herdctld: {section} (ignored)"),
        );
    }

    pub fn finish(mut self) -> Vec<ConfigWarning> {
        for (position, others) in self.unsupported.values() {
            if *others > 0 {
                let plural = if *others == 1 { "" } else { "s" };
                self.list[*position].message += &format!("; also in {others} other place{plural}");
            }
        }
        self.list
    }
}

/// Levenshtein distance, for did-you-mean suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// "; did you mean \"x\"?" for the closest allowed value, or the list of allowed values.
pub fn suggestion(unknown: &str, allowed: &[&str]) -> String {
    let closest = allowed
        .iter()
        .map(|candidate| (edit_distance(unknown, candidate), *candidate))
        .min();
    match closest {
        Some((distance, candidate)) if distance <= 2.max(unknown.len() / 3) => {
            format!("did you mean {candidate:?}?")
        }
        _ => format!("expected one of: {}", allowed.join(", ")),
    }
}

/// Reads values from a tree, reporting problems at the origin of each path.
pub struct Reader<'a> {
    pub origins: &'a Origins,
    pub errors: &'a mut Errors,
    pub warnings: &'a mut Warnings,
}

/// The value of `key`, treating an explicit `null` as absent.
pub fn get<'v>(mapping: &'v Mapping, key: &str) -> Option<&'v Value> {
    mapping.get(key).filter(|value| !value.is_null())
}

impl Reader<'_> {
    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        let origin = self.origins.locate(path);
        self.errors.push(&origin.file, &origin.path, message);
    }

    pub fn warn(&mut self, path: &str, message: impl Into<String>) {
        let origin = self.origins.locate(path);
        self.warnings.push(&origin.file, &origin.path, message);
    }

    pub fn unsupported(&mut self, path: &str, section: &str) {
        let origin = self.origins.locate(path);
        self.warnings
            .unsupported(&origin.file, &origin.path, section);
    }

    /// The directory of the file the value at `path` was written in.
    pub fn base_dir(&self, path: &str) -> PathBuf {
        let origin = self.origins.locate(path);
        origin
            .file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// `value` as a mapping whose keys are all in `allowed`; unknown keys are reported with a suggestion.
    pub fn mapping<'v>(
        &mut self,
        value: &'v Value,
        path: &str,
        allowed: &[&str],
    ) -> Option<&'v Mapping> {
        let Value::Mapping(mapping) = value else {
            self.error(path, format!("expected a mapping, got {}", describe(value)));
            return None;
        };
        self.check_keys(mapping, path, allowed);
        Some(mapping)
    }

    /// `value` as a mapping, keys unchecked.
    pub fn any_mapping<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v Mapping> {
        let Value::Mapping(mapping) = value else {
            self.error(path, format!("expected a mapping, got {}", describe(value)));
            return None;
        };
        Some(mapping)
    }

    pub fn check_keys(&mut self, mapping: &Mapping, path: &str, allowed: &[&str]) {
        for key in mapping.keys() {
            match key.as_str() {
                Some(name) if allowed.contains(&name) => {}
                Some(name) => {
                    let hint = suggestion(name, allowed);
                    self.error(&join(path, name), format!("unknown key {name:?}; {hint}"));
                }
                None => self.error(&join(path, &key_display(key)), "keys must be strings"),
            }
        }
    }

    /// A section herdctl does not make strict: each known field must have its type (herdctl rejects a wrong
    /// type), unknown keys are warned about with a did-you-mean (herdctl drops them without a word).
    pub fn loose_section(&mut self, value: &Value, path: &str, fields: &[(&str, FieldKind)]) {
        let Some(mapping) = self.any_mapping(value, path) else {
            return;
        };
        let names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
        for (key, item) in mapping {
            let Some(name) = key.as_str() else {
                self.error(&join(path, &key_display(key)), "keys must be strings");
                continue;
            };
            let field_path = join(path, name);
            let Some((_, kind)) = fields.iter().find(|(field, _)| *field == name) else {
                let hint = suggestion(name, &names);
                self.warn(
                    &field_path,
                    format!("unknown key {name:?} is ignored, as herdctl ignores it; {hint}"),
                );
                continue;
            };
            if item.is_null() {
                continue;
            }
            match kind {
                FieldKind::Bool => {
                    self.boolean(mapping, name, path);
                }
                FieldKind::Positive => {
                    self.positive(mapping, name, path);
                }
                FieldKind::Text => {
                    self.string(mapping, name, path);
                }
                FieldKind::Choice(allowed) => {
                    self.choice(mapping, name, path, allowed);
                }
                FieldKind::Mapping => {
                    self.any_mapping(item, &field_path);
                }
                FieldKind::List => {
                    if !item.is_sequence() {
                        self.error(
                            &field_path,
                            format!("expected a list, got {}", describe(item)),
                        );
                    }
                }
                FieldKind::Section(inner) => self.loose_section(item, &field_path, inner),
            }
        }
    }

    pub fn string(&mut self, mapping: &Mapping, key: &str, path: &str) -> Option<String> {
        let value = get(mapping, key)?;
        let path = join(path, key);
        match value {
            Value::String(text) => Some(text.clone()),
            other => {
                self.error(&path, format!("expected a string, got {}", describe(other)));
                None
            }
        }
    }

    /// A string that must be present and non-empty.
    pub fn required_string(&mut self, mapping: &Mapping, key: &str, path: &str) -> Option<String> {
        if get(mapping, key).is_none() {
            self.error(path, format!("missing required key {key:?}"));
            return None;
        }
        let text = self.string(mapping, key, path)?;
        if text.trim().is_empty() {
            self.error(&join(path, key), "must not be empty");
            return None;
        }
        Some(text)
    }

    pub fn boolean(&mut self, mapping: &Mapping, key: &str, path: &str) -> Option<bool> {
        match get(mapping, key)? {
            Value::Bool(flag) => Some(*flag),
            other => {
                self.error(
                    &join(path, key),
                    format!("expected true or false, got {}", describe(other)),
                );
                None
            }
        }
    }

    /// An integer ≥ 1 that fits in u32.
    pub fn positive(&mut self, mapping: &Mapping, key: &str, path: &str) -> Option<u32> {
        let value = get(mapping, key)?;
        match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if n >= 1 => Some(n),
            _ => {
                self.error(
                    &join(path, key),
                    format!(
                        "expected a whole number of at least 1, got {}",
                        describe(value)
                    ),
                );
                None
            }
        }
    }

    pub fn string_list(&mut self, mapping: &Mapping, key: &str, path: &str) -> Option<Vec<String>> {
        let value = get(mapping, key)?;
        let path = join(path, key);
        let Value::Sequence(items) = value else {
            self.error(
                &path,
                format!("expected a list of strings, got {}", describe(value)),
            );
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (position, item) in items.iter().enumerate() {
            match item {
                Value::String(text) => out.push(text.clone()),
                other => self.error(
                    &index(&path, position),
                    format!("expected a string, got {}", describe(other)),
                ),
            }
        }
        Some(out)
    }

    /// A map of strings to scalars (numbers and booleans are written as text).
    pub fn string_map(
        &mut self,
        mapping: &Mapping,
        key: &str,
        path: &str,
    ) -> Option<BTreeMap<String, String>> {
        let value = get(mapping, key)?;
        let path = join(path, key);
        let Value::Mapping(entries) = value else {
            self.error(
                &path,
                format!(
                    "expected a mapping of names to values, got {}",
                    describe(value)
                ),
            );
            return None;
        };
        let mut out = BTreeMap::new();
        for (name, item) in entries {
            let name_text = key_display(name);
            let text = match item {
                Value::String(text) => text.clone(),
                Value::Number(number) => number.to_string(),
                Value::Bool(flag) => flag.to_string(),
                other => {
                    self.error(
                        &join(&path, &name_text),
                        format!("expected a string, got {}", describe(other)),
                    );
                    continue;
                }
            };
            out.insert(name_text, text);
        }
        Some(out)
    }

    /// A duration string (`30s`, `5m`, `1h`, `2d`).
    pub fn duration(&mut self, mapping: &Mapping, key: &str, path: &str) -> Option<Duration> {
        let value = get(mapping, key)?;
        let path = join(path, key);
        let Value::String(text) = value else {
            self.error(
                &path,
                format!(
                    "expected a duration such as \"30s\", \"5m\", \"1h\" or \"2d\", got {}",
                    describe(value)
                ),
            );
            return None;
        };
        match parse_duration(text) {
            Ok(duration) => Some(duration),
            Err(error) => {
                self.error(&path, error.to_string());
                None
            }
        }
    }

    /// A hook timeout: herdctl's integer milliseconds, or a duration string.
    fn millis_or_duration(&mut self, mapping: &Mapping, key: &str, path: &str) -> Option<Duration> {
        match get(mapping, key)? {
            Value::Number(number) => match number.as_u64() {
                Some(ms) if ms > 0 => Some(Duration::from_millis(ms)),
                _ => {
                    self.error(
                        &join(path, key),
                        format!("expected a positive number of milliseconds, got {number}"),
                    );
                    None
                }
            },
            _ => self.duration(mapping, key, path),
        }
    }

    /// One of `allowed`, as written.
    pub fn choice(
        &mut self,
        mapping: &Mapping,
        key: &str,
        path: &str,
        allowed: &[&str],
    ) -> Option<String> {
        let text = self.string(mapping, key, path)?;
        if allowed.contains(&text.as_str()) {
            Some(text)
        } else {
            let hint = suggestion(&text, allowed);
            self.error(&join(path, key), format!("invalid value {text:?}; {hint}"));
            None
        }
    }

    fn timezone(&mut self, mapping: &Mapping, path: &str) -> Option<chrono_tz::Tz> {
        let text = self.string(mapping, "timezone", path)?;
        match text.parse::<chrono_tz::Tz>() {
            Ok(zone) => Some(zone),
            Err(_) => {
                self.error(
                    &join(path, "timezone"),
                    format!("unknown time zone {text:?}; use an IANA name such as \"Europe/Berlin\" or \"UTC\""),
                );
                None
            }
        }
    }
}

/// A short description of a YAML value's type, for messages.
pub fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".to_string(),
        Value::Bool(flag) => format!("{flag}"),
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) => format!("the string {text:?}"),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(tagged) => format!("a value tagged {}", tagged.tag),
    }
}

/// Where an agent sits in the fleet tree.
pub struct AgentPlace<'a> {
    pub fleet_path: &'a [String],
    pub source_file: &'a Path,
}

/// Settings an agent passes down to its schedules (each schedule may override them).
struct ScheduleDefaults {
    timezone: Option<chrono_tz::Tz>,
    jitter: Option<Duration>,
    overlap: Overlap,
    catchup: Catchup,
    timeout: Option<Duration>,
    stop_grace: Duration,
    /// The agent's work source as written, and as built (`None` when it is invalid).
    work_source: Option<(Value, Option<WorkSourceConfig>)>,
}

/// Builds an agent from its merged tree (defaults, agent file, overrides). Returns `None` when any error was
/// reported for it; all of them are in `reader.errors`.
pub fn build_agent(
    tree: &Mapping,
    place: &AgentPlace<'_>,
    reader: &mut Reader<'_>,
) -> Option<AgentConfig> {
    let errors_before = reader.errors.0.len();
    reader.check_keys(tree, "", AGENT_KEYS);

    let local_name = reader.required_string(tree, "name", "");
    if let Some(name) = &local_name {
        if !is_valid_name(name) {
            reader.error(
                "name",
                format!("invalid agent name {name:?}: it {NAME_RULE}"),
            );
        }
    }
    if let Some(chat) = get(tree, "chat") {
        if chat.is_mapping() {
            reader.unsupported("chat", "chat");
        }
        reader.loose_section(chat, "chat", AGENT_CHAT_FIELDS);
    }
    if let Some(plugins) = get(tree, "plugins") {
        if plugins.is_sequence() {
            reader.unsupported("plugins", "plugins");
        } else {
            reader.error(
                "plugins",
                format!("expected a list, got {}", describe(plugins)),
            );
        }
    }
    let docker = get(tree, "docker")
        .and_then(|value| build_docker(value, "docker", Some(place.source_file), reader));
    if docker.as_ref().is_some_and(|docker| docker.enabled) {
        // Named, because `defaults.docker` gives every agent the same origin for this warning.
        let name = local_name.as_deref().unwrap_or("?");
        reader.warn(
            "docker.enabled",
            format!("docker.enabled: jobs of agent {name} need a container engine; herdctld will not run them on the host"),
        );
    }

    let working_directory = build_working_directory(tree, place, reader);
    let identity = get(tree, "identity")
        .and_then(|value| reader.mapping(value, "identity", IDENTITY_KEYS))
        .map(|identity| IdentityConfig {
            name: reader.string(identity, "name", "identity"),
            role: reader.string(identity, "role", "identity"),
            personality: reader.string(identity, "personality", "identity"),
        });
    let permission_mode = reader
        .choice(
            tree,
            "permission_mode",
            "",
            &PermissionMode::ALL.map(PermissionMode::as_str),
        )
        .and_then(|text| PermissionMode::parse(&text));
    let setting_sources = reader.string_list(tree, "setting_sources", "");
    for (position, source) in setting_sources.iter().flatten().enumerate() {
        if !SETTING_SOURCES.contains(&source.as_str()) {
            let hint = suggestion(source, SETTING_SOURCES);
            reader.error(
                &index("setting_sources", position),
                format!("invalid setting source {source:?}; {hint}"),
            );
        }
    }
    let session = get(tree, "session")
        .and_then(|value| reader.mapping(value, "session", SESSION_KEYS))
        .map(|session| SessionConfig {
            timeout: reader.duration(session, "timeout", "session"),
            max_turns: reader.positive(session, "max_turns", "session"),
            model: reader.string(session, "model", "session"),
        })
        .unwrap_or_default();
    if get(tree, "instances").is_some() {
        // Only `max_concurrent` is allowed; it was already moved to `concurrency`.
        let instances = get(tree, "instances").cloned().unwrap_or_default();
        reader.mapping(&instances, "instances", INSTANCES_KEYS);
    }
    let concurrency = reader.positive(tree, "concurrency", "");
    let runtime = build_runtime(tree, reader);
    let timeout = positive_duration(reader, tree, "timeout", "");
    let stop_grace = reader
        .duration(tree, "stop_grace", "")
        .unwrap_or(DEFAULT_STOP_GRACE);
    let work_source_tree = get(tree, "work_source").cloned();
    let work_source = work_source_tree
        .as_ref()
        .and_then(|value| build_work_source(value, "work_source", reader));
    let work_source_written = work_source_tree.map(|tree| (tree, work_source.clone()));
    let timezone = reader.timezone(tree, "");
    let schedule_defaults = ScheduleDefaults {
        timezone,
        jitter: reader.duration(tree, "jitter", ""),
        overlap: overlap(reader, tree, "").unwrap_or_default(),
        catchup: catchup(reader, tree, "").unwrap_or_default(),
        timeout,
        stop_grace,
        work_source: work_source_written,
    };
    let schedules = build_schedules(tree, &schedule_defaults, reader);
    let hooks = build_hooks(tree, reader);
    let mcp_servers = build_mcp_servers(tree, reader);

    let agent = AgentConfig {
        name: String::new(),
        local_name: local_name.unwrap_or_default(),
        fleet_path: place.fleet_path.to_vec(),
        source_file: place.source_file.to_path_buf(),
        description: reader.string(tree, "description", ""),
        working_directory,
        system_prompt: reader.string(tree, "system_prompt", ""),
        default_prompt: reader.string(tree, "default_prompt", ""),
        model: reader.string(tree, "model", ""),
        max_turns: reader.positive(tree, "max_turns", ""),
        permission_mode,
        tools: reader.string_list(tree, "tools", ""),
        allowed_tools: reader.string_list(tree, "allowed_tools", ""),
        denied_tools: reader.string_list(tree, "denied_tools", ""),
        mcp_servers,
        setting_sources,
        session,
        timezone,
        budget: get(tree, "budget").and_then(|value| build_budget(value, reader)),
        concurrency,
        schedules,
        runtime,
        timeout,
        stop_grace,
        max_output_bytes: reader
            .positive(tree, "max_output_mb", "")
            .map(|mib| u64::from(mib) * 1024 * 1024),
        work_source,
        hooks,
        identity,
        repo: reader.string(tree, "repo", ""),
        metadata_file: reader.string(tree, "metadata_file", ""),
        docker,
    };
    if reader.errors.0.len() > errors_before {
        return None;
    }
    let mut qualified: Vec<&str> = place.fleet_path.iter().map(String::as_str).collect();
    qualified.push(&agent.local_name);
    Some(AgentConfig {
        name: qualified.join("."),
        ..agent
    })
}

/// `budget: {daily_usd: N}`: a number of US dollars, at least 0 (0 lets no scheduled run start).
fn build_budget(value: &Value, reader: &mut Reader<'_>) -> Option<BudgetConfig> {
    let budget = reader.mapping(value, "budget", BUDGET_KEYS)?;
    let Some(amount) = get(budget, "daily_usd") else {
        reader.error(
            "budget",
            "missing required key \"daily_usd\": the US dollars the agent may spend a day, such as 5 or 12.50",
        );
        return None;
    };
    match amount.as_f64() {
        Some(usd) if usd.is_finite() && usd >= 0.0 => Some(BudgetConfig { daily_usd: usd }),
        _ => {
            reader.error(
                "budget.daily_usd",
                format!(
                    "expected US dollars per day as a number of at least 0, such as 5 or 12.50 (without \"$\" \
                     or quotes), got {}",
                    describe(amount)
                ),
            );
            None
        }
    }
}

pub(super) fn positive_duration(
    reader: &mut Reader<'_>,
    mapping: &Mapping,
    key: &str,
    path: &str,
) -> Option<Duration> {
    let duration = reader.duration(mapping, key, path)?;
    if duration.is_zero() {
        reader.error(&join(path, key), "must be greater than zero");
        return None;
    }
    Some(duration)
}

fn overlap(reader: &mut Reader<'_>, mapping: &Mapping, path: &str) -> Option<Overlap> {
    match reader
        .choice(mapping, "overlap", path, &["skip", "queue", "allow"])?
        .as_str()
    {
        "queue" => Some(Overlap::Queue),
        "allow" => Some(Overlap::Allow),
        _ => Some(Overlap::Skip),
    }
}

fn catchup(reader: &mut Reader<'_>, mapping: &Mapping, path: &str) -> Option<Catchup> {
    match reader
        .choice(mapping, "catchup", path, &["latest", "none"])?
        .as_str()
    {
        "none" => Some(Catchup::None),
        _ => Some(Catchup::Latest),
    }
}

/// Absolute working directory: default the agent file's directory; a relative path resolves against the
/// directory of the file it was written in (the agent file, or the fleet file for defaults/overrides).
fn build_working_directory(
    tree: &Mapping,
    place: &AgentPlace<'_>,
    reader: &mut Reader<'_>,
) -> PathBuf {
    let agent_dir = place
        .source_file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let written = match get(tree, "working_directory") {
        None => None,
        Some(Value::String(text)) => Some((text.clone(), "working_directory".to_string())),
        Some(value @ Value::Mapping(object)) => {
            reader.loose_section(value, "working_directory", WORKING_DIRECTORY_FIELDS);
            let root = reader.required_string(object, "root", "working_directory");
            for extra in ["auto_clone", "clone_depth", "default_branch"] {
                if get(object, extra).is_some() {
                    reader.unsupported(
                        &join("working_directory", extra),
                        &format!("working_directory.{extra}"),
                    );
                }
            }
            root.map(|root| (root, "working_directory.root".to_string()))
        }
        Some(other) => {
            reader.error(
                "working_directory",
                format!(
                    "expected a path or a mapping with root, got {}",
                    describe(other)
                ),
            );
            None
        }
    };
    match written {
        None => agent_dir,
        Some((text, path)) => normalize(&reader.base_dir(&path).join(text)),
    }
}

fn build_runtime(tree: &Mapping, reader: &mut Reader<'_>) -> RuntimeConfig {
    let kind = reader.choice(tree, "runtime", "", &["claude", "sdk", "cli", "command"]);
    let command = reader.string_list(tree, "command", "");
    let env = reader.string_map(tree, "env", "");
    if kind.as_deref() == Some("command") {
        match command {
            Some(command) if command.first().is_some_and(|program| !program.is_empty()) => {
                return RuntimeConfig::Command {
                    command,
                    env: env.unwrap_or_default(),
                };
            }
            Some(_) => reader.error(
                "command",
                "must name a program: write command: [program, arg, ...]",
            ),
            None => reader.error("", "runtime: command needs a command: [program, arg, ...]"),
        }
        return RuntimeConfig::Claude {
            bin: None,
            runtime_type: ClaudeRuntimeType::Sdk,
        };
    }
    for key in ["command", "env"] {
        if get(tree, key).is_some() {
            reader.error(key, format!("{key} is only used with runtime: command"));
        }
    }
    RuntimeConfig::Claude {
        bin: reader.string(tree, "claude_bin", "").map(PathBuf::from),
        runtime_type: match kind.as_deref() {
            Some("cli" | "claude") => ClaudeRuntimeType::Cli,
            _ => ClaudeRuntimeType::Sdk,
        },
    }
}

fn build_schedules(
    tree: &Mapping,
    defaults: &ScheduleDefaults,
    reader: &mut Reader<'_>,
) -> Vec<ScheduleConfig> {
    let Some(value) = get(tree, "schedules") else {
        return Vec::new();
    };
    let Value::Mapping(schedules) = value else {
        reader.error(
            "schedules",
            format!(
                "expected a mapping of schedule names to schedules, got {}",
                describe(value)
            ),
        );
        return Vec::new();
    };
    let mut out = Vec::with_capacity(schedules.len());
    for (name, schedule) in schedules {
        let name = key_display(name);
        let path = join("schedules", &name);
        if let Some(built) = build_schedule(&name, schedule, &path, defaults, reader) {
            out.push(built);
        }
    }
    out
}

fn build_schedule(
    name: &str,
    value: &Value,
    path: &str,
    defaults: &ScheduleDefaults,
    reader: &mut Reader<'_>,
) -> Option<ScheduleConfig> {
    let schedule = reader.any_mapping(value, path)?;
    // Checked separately from `mapping` so that `outputToFile` can warn instead of fail.
    for key in schedule.keys() {
        if key.as_str() == Some("outputToFile") {
            reader.warn(
                &join(path, "outputToFile"),
                "accepted, not supported by herdctld: outputToFile (job output is always in jobs/<id>.jsonl)",
            );
        }
    }
    let errors_before = reader.errors.0.len();
    let kind_name = reader.choice(
        schedule,
        "type",
        path,
        &["interval", "cron", "webhook", "chat"],
    );
    if get(schedule, "type").is_none() {
        reader.error(
            path,
            "missing required key \"type\" (interval, cron, webhook or chat)",
        );
    }
    let kind = match kind_name.as_deref() {
        Some("interval") => {
            if get(schedule, "interval").is_none() {
                reader.error(path, "an interval schedule needs interval: e.g. \"15m\"");
            }
            positive_duration(reader, schedule, "interval", path).map(ScheduleKind::Interval)
        }
        Some("cron") => match reader.string(schedule, "cron", path) {
            Some(text) => match CronExpr::parse(&text) {
                Ok(cron) => Some(ScheduleKind::Cron(Box::new(cron))),
                Err(error) => {
                    reader.error(&join(path, "cron"), error.to_string());
                    None
                }
            },
            None => {
                if get(schedule, "cron").is_none() {
                    reader.error(path, "a cron schedule needs cron: e.g. \"0 9 * * 1-5\"");
                }
                None
            }
        },
        Some(other @ ("webhook" | "chat")) => {
            reader.unsupported(&join(path, "type"), &format!("schedule type {other}"));
            Some(if other == "webhook" {
                ScheduleKind::Webhook
            } else {
                ScheduleKind::Chat
            })
        }
        _ => None,
    };
    for (key, used_by) in [("interval", "interval"), ("cron", "cron")] {
        if get(schedule, key).is_some() && kind_name.as_deref().is_some_and(|kind| kind != used_by)
        {
            reader.warn(
                &join(path, key),
                format!(
                    "{key} is ignored by a schedule of type {}",
                    kind_name.as_deref().unwrap_or("?")
                ),
            );
        }
    }
    let work_source = match (get(schedule, "work_source"), &defaults.work_source) {
        (None, inherited) => inherited.as_ref().and_then(|(_, built)| built.clone()),
        (Some(own), None) => build_work_source(own, &join(path, "work_source"), reader),
        (Some(own), Some((inherited, Some(_)))) => {
            let mut merged = inherited.clone();
            overlay(&mut merged, own);
            build_work_source(&merged, &join(path, "work_source"), reader)
        }
        // The agent's work source is invalid and already reported; only check the schedule's own keys.
        (Some(own), Some((_, None))) => {
            if let Some(own) = reader.any_mapping(own, &join(path, "work_source")) {
                reader.check_keys(own, &join(path, "work_source"), WORK_SOURCE_KEYS);
            }
            None
        }
    };
    let prompt = reader.string(schedule, "prompt", path);
    let enabled = reader.boolean(schedule, "enabled", path).unwrap_or(true);
    let resume_session = reader
        .boolean(schedule, "resume_session", path)
        .unwrap_or(false);
    let timezone = reader.timezone(schedule, path).or(defaults.timezone);
    let jitter = reader
        .duration(schedule, "jitter", path)
        .or(defaults.jitter);
    let overlap = overlap(reader, schedule, path).unwrap_or(defaults.overlap);
    let catchup = catchup(reader, schedule, path).unwrap_or(defaults.catchup);
    let timeout = positive_duration(reader, schedule, "timeout", path).or(defaults.timeout);
    let stop_grace = reader
        .duration(schedule, "stop_grace", path)
        .unwrap_or(defaults.stop_grace);
    // herdctl's schedule schema is not strict: it drops unknown keys (`concurrency`, a webhook schedule's
    // `path` and `secret`), so a fleet that loads there must load here.
    for key in schedule.keys() {
        match key.as_str() {
            Some(name) if SCHEDULE_KEYS.contains(&name) => {}
            Some(name) => {
                let hint = suggestion(name, SCHEDULE_KEYS);
                reader.warn(
                    &join(path, name),
                    format!(
                        "unknown schedule key {name:?} is ignored, as herdctl ignores it; {hint}"
                    ),
                );
            }
            None => reader.error(&join(path, &key_display(key)), "keys must be strings"),
        }
    }
    if reader.errors.0.len() > errors_before {
        return None;
    }
    Some(ScheduleConfig {
        name: name.to_string(),
        kind: kind?,
        prompt,
        enabled,
        work_source,
        resume_session,
        timezone,
        jitter,
        overlap,
        catchup,
        timeout,
        stop_grace,
    })
}

/// Deep-merges `over` into `base` (mappings recurse, everything else replaces).
fn overlay(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Mapping(base), Value::Mapping(over)) => {
            for (key, item) in over {
                match base.get_mut(key) {
                    Some(existing) => overlay(existing, item),
                    None => {
                        base.insert(key.clone(), item.clone());
                    }
                }
            }
        }
        (base, over) => *base = over.clone(),
    }
}

fn build_work_source(
    value: &Value,
    path: &str,
    reader: &mut Reader<'_>,
) -> Option<WorkSourceConfig> {
    let source = reader.mapping(value, path, WORK_SOURCE_KEYS)?;
    let errors_before = reader.errors.0.len();
    let kind = reader.choice(source, "type", path, &["github"]);
    if get(source, "type").is_none() {
        reader.error(path, "missing required key \"type\" (github)");
    }
    let repo = reader.required_string(source, "repo", path);
    if let Some(repo) = &repo {
        if !is_valid_repo(repo) {
            reader.error(
                &join(path, "repo"),
                format!("repository {repo:?} must be in 'owner/repo' format (e.g. 'octocat/hello-world')"),
            );
        }
    }
    let labels_path = join(path, "labels");
    let labels = get(source, "labels")
        .and_then(|value| reader.mapping(value, &labels_path, WORK_SOURCE_LABEL_KEYS));
    let ready_label = labels.and_then(|labels| reader.string(labels, "ready", &labels_path));
    let in_progress_label =
        labels.and_then(|labels| reader.string(labels, "in_progress", &labels_path));
    let auth_path = join(path, "auth");
    let auth = get(source, "auth")
        .and_then(|value| reader.mapping(value, &auth_path, WORK_SOURCE_AUTH_KEYS));
    let token_env = auth.and_then(|auth| reader.string(auth, "token_env", &auth_path));
    let api_base_url = reader.string(source, "api_base_url", path);
    if let Some(url) = &api_base_url {
        if !is_http_url(url) {
            reader.error(
                &join(path, "api_base_url"),
                format!("{url:?} is not an http(s) URL"),
            );
        }
    }
    let exclude_labels = reader
        .string_list(source, "exclude_labels", path)
        .unwrap_or_default();
    let cleanup_on_failure = reader
        .boolean(source, "cleanup_on_failure", path)
        .unwrap_or(true);
    if reader.errors.0.len() > errors_before {
        return None;
    }
    Some(WorkSourceConfig {
        kind: kind.map(|_| WorkSourceKind::Github)?,
        repo: repo?,
        ready_label: ready_label.unwrap_or_else(|| "ready".to_string()),
        in_progress_label: in_progress_label.unwrap_or_else(|| "agent-working".to_string()),
        exclude_labels,
        cleanup_on_failure,
        token_env: token_env.unwrap_or_else(|| "GITHUB_TOKEN".to_string()),
        api_base_url,
    })
}

fn is_http_url(url: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        url.strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty())
    })
}

fn build_hooks(tree: &Mapping, reader: &mut Reader<'_>) -> HooksConfig {
    let Some(value) = get(tree, "hooks") else {
        return HooksConfig::default();
    };
    let Some(hooks) = reader.mapping(value, "hooks", HOOKS_KEYS) else {
        return HooksConfig::default();
    };
    let mut list = |key: &str| -> Vec<Hook> {
        let path = join("hooks", key);
        match get(hooks, key) {
            None => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(position, item)| build_hook(item, &index(&path, position), reader))
                .collect(),
            Some(other) => {
                reader.error(
                    &path,
                    format!("expected a list of hooks, got {}", describe(other)),
                );
                Vec::new()
            }
        }
    };
    HooksConfig {
        after_run: list("after_run"),
        on_error: list("on_error"),
    }
}

fn build_hook(value: &Value, path: &str, reader: &mut Reader<'_>) -> Option<Hook> {
    let hook = reader.any_mapping(value, path)?;
    let errors_before = reader.errors.0.len();
    let kind = reader.choice(
        hook,
        "type",
        path,
        &["shell", "webhook", "discord", "slack"],
    );
    if get(hook, "type").is_none() {
        reader.error(
            path,
            "missing required key \"type\" (shell, webhook, discord or slack)",
        );
    }
    let specific: &[&str] = match kind.as_deref() {
        Some("shell") => SHELL_HOOK_KEYS,
        Some("webhook") => WEBHOOK_HOOK_KEYS,
        Some("discord" | "slack") => CHAT_HOOK_KEYS,
        _ => &[],
    };
    let allowed: Vec<&str> = HOOK_COMMON_KEYS.iter().chain(specific).copied().collect();
    if kind.is_some() {
        reader.check_keys(hook, path, &allowed);
    }
    let on_events = reader.string_list(hook, "on_events", path);
    for (position, event) in on_events.iter().flatten().enumerate() {
        if !HOOK_EVENTS.contains(&event.as_str()) {
            let hint = suggestion(event, HOOK_EVENTS);
            reader.error(
                &index(&join(path, "on_events"), position),
                format!("unknown event {event:?}; {hint}"),
            );
        }
    }
    let action = match kind.as_deref() {
        Some("shell") => reader
            .required_string(hook, "command", path)
            .map(|command| HookAction::Shell {
                command,
                timeout: reader
                    .millis_or_duration(hook, "timeout", path)
                    .unwrap_or(DEFAULT_SHELL_HOOK_TIMEOUT),
            }),
        Some("webhook") => {
            let url = reader.required_string(hook, "url", path);
            if let Some(url) = &url {
                if !is_http_url(url) {
                    reader.error(&join(path, "url"), format!("{url:?} is not an http(s) URL"));
                }
            }
            let method = match reader
                .choice(hook, "method", path, &["POST", "PUT"])
                .as_deref()
            {
                Some("PUT") => HttpMethod::Put,
                _ => HttpMethod::Post,
            };
            url.map(|url| HookAction::Webhook {
                url,
                method,
                headers: reader.string_map(hook, "headers", path).unwrap_or_default(),
                timeout: reader
                    .millis_or_duration(hook, "timeout", path)
                    .unwrap_or(DEFAULT_WEBHOOK_HOOK_TIMEOUT),
            })
        }
        Some(chat @ ("discord" | "slack")) => {
            let channel_id = reader.required_string(hook, "channel_id", path);
            let default_env = if chat == "discord" {
                "DISCORD_BOT_TOKEN"
            } else {
                "SLACK_BOT_TOKEN"
            };
            let bot_token_env = reader
                .string(hook, "bot_token_env", path)
                .unwrap_or_else(|| default_env.to_string());
            channel_id.map(|channel_id| {
                if chat == "discord" {
                    HookAction::Discord {
                        channel_id,
                        bot_token_env,
                    }
                } else {
                    HookAction::Slack {
                        channel_id,
                        bot_token_env,
                    }
                }
            })
        }
        _ => None,
    };
    if let Some(unsupported @ ("discord" | "slack")) = kind.as_deref() {
        reader.unsupported(path, &format!("{unsupported} hooks"));
    }
    let name = reader.string(hook, "name", path);
    let continue_on_error = reader
        .boolean(hook, "continue_on_error", path)
        .unwrap_or(true);
    let when = reader.string(hook, "when", path);
    if reader.errors.0.len() > errors_before {
        return None;
    }
    Some(Hook {
        name,
        action: action?,
        continue_on_error,
        on_events,
        when,
    })
}

fn build_mcp_servers(tree: &Mapping, reader: &mut Reader<'_>) -> Option<serde_json::Value> {
    let value = get(tree, "mcp_servers")?;
    let Value::Mapping(servers) = value else {
        reader.error(
            "mcp_servers",
            format!(
                "expected a mapping of server names to servers, got {}",
                describe(value)
            ),
        );
        return None;
    };
    let mut transformed = serde_json::Map::new();
    for (name, server) in servers {
        let name = key_display(name);
        let path = join("mcp_servers", &name);
        let Some(server) = reader.mapping(server, &path, MCP_SERVER_KEYS) else {
            continue;
        };
        reader.choice(server, "type", &path, &["stdio", "sse", "http"]);
        reader.string(server, "command", &path);
        reader.string_list(server, "args", &path);
        reader.string_map(server, "env", &path);
        reader.string(server, "url", &path);
        reader.string_map(server, "headers", &path);
        reader.positive(server, "timeout", &path);
        reader.boolean(server, "alwaysLoad", &path);
        match serde_json::to_value(server) {
            Ok(serde_json::Value::Object(mut entry)) => {
                transform_mcp_server(&mut entry);
                transformed.insert(name, serde_json::Value::Object(entry));
            }
            Ok(_) => {}
            Err(error) => reader.error(&path, format!("cannot be expressed as JSON: {error}")),
        }
    }
    Some(serde_json::Value::Object(transformed))
}

/// What herdctl does to a server before handing it to Claude (its `transformMcpServer`): a server with a
/// `url` is an HTTP server (the CLI silently drops a url-only entry, since its default type is stdio), and
/// empty `args`/`env` are left out. An explicit `type` (e.g. `sse`) is kept.
fn transform_mcp_server(server: &mut serde_json::Map<String, serde_json::Value>) {
    server.retain(|_, value| !value.is_null());
    if server.contains_key("url") && !server.contains_key("type") {
        server.insert("type".to_string(), serde_json::Value::from("http"));
    }
    let empty = |value: Option<&serde_json::Value>| match value {
        Some(serde_json::Value::Array(items)) => items.is_empty(),
        Some(serde_json::Value::Object(entries)) => entries.is_empty(),
        _ => false,
    };
    for key in ["args", "env"] {
        if empty(server.get(key)) {
            server.remove(key);
        }
    }
}

/// herdctl's strict docker schemas: unknown keys are errors with a did-you-mean, values are type- and
/// format-checked. For an agent (`agent_file` set), the fleet-only options written in the agent file itself
/// load with a warning (herdctl's `AgentDockerSchema` leaves them out); from `defaults.docker` or
/// `overrides` in the fleet file they are accepted silently.
pub fn build_docker(
    value: &Value,
    path: &str,
    agent_file: Option<&Path>,
    reader: &mut Reader<'_>,
) -> Option<DockerConfig> {
    let docker = reader.any_mapping(value, path)?;
    let errors_before = reader.errors.0.len();
    let all_keys: Vec<&str> = AGENT_DOCKER_KEYS
        .iter()
        .chain(FLEET_ONLY_DOCKER_KEYS)
        .copied()
        .collect();
    let allowed_here: Vec<&str> = AGENT_DOCKER_KEYS
        .iter()
        .chain(FLEET_ONLY_DOCKER_KEYS.iter().filter(|key| {
            let written_in = reader.origins.locate(&join(path, key)).file;
            agent_file.is_none_or(|agent_file| written_in != agent_file)
        }))
        .copied()
        .collect();
    for key in docker.keys() {
        match key.as_str() {
            Some(name) if allowed_here.contains(&name) => {}
            // herdctl's own examples set these in agent files (examples/runtime-showcase), which its
            // current AgentDockerSchema rejects; loading them keeps those files working.
            Some(name) if all_keys.contains(&name) => reader.warn(
                &join(path, name),
                format!("docker.{name} belongs in the fleet file (defaults.docker): current herdctl rejects it in an agent file, because an agent must not be able to widen its own container"),
            ),
            Some(name) => {
                let hint = suggestion(name, &allowed_here);
                reader.error(&join(path, name), format!("unknown key {name:?}; {hint}"));
            }
            None => reader.error(&join(path, &key_display(key)), "keys must be strings"),
        }
    }
    let enabled = reader.boolean(docker, "enabled", path).unwrap_or(false);
    let memory = reader.string(docker, "memory", path);
    if let Some(memory) = &memory {
        if !is_docker_memory(memory) {
            reader.error(
                &join(path, "memory"),
                format!("invalid memory {memory:?}; use a size like \"2g\", \"512m\", \"1024k\" or \"2048\" (bytes)"),
            );
        }
    }
    let user = reader.string(docker, "user", path);
    if let Some(user) = &user {
        if !is_number_or_pair(user) {
            reader.error(
                &join(path, "user"),
                format!("invalid user {user:?}; use \"UID\" or \"UID:GID\" (e.g. \"1000:1000\")"),
            );
        }
    }
    let mut list = |key: &str, valid: fn(&str) -> bool, format_hint: &str| -> Vec<String> {
        let items = reader.string_list(docker, key, path).unwrap_or_default();
        for (position, item) in items.iter().enumerate() {
            if !valid(item) {
                reader.error(
                    &index(&join(path, key), position),
                    format!("invalid {key} entry {item:?}; use {format_hint}"),
                );
            }
        }
        items
    };
    let volumes = list(
        "volumes",
        is_docker_volume,
        "\"host:container\" or \"host:container:ro|rw\"",
    );
    let ports = list(
        "ports",
        is_number_or_pair,
        "\"hostPort:containerPort\" or \"containerPort\"",
    );
    let tmpfs = list(
        "tmpfs",
        |mount| mount.starts_with('/'),
        "\"/path\" or \"/path:options\"",
    );
    let network = match reader
        .choice(docker, "network", path, &["none", "bridge", "host"])
        .as_deref()
    {
        Some("none") => DockerNetwork::None,
        Some("host") => DockerNetwork::Host,
        _ => DockerNetwork::Bridge,
    };
    let workspace_mode = match reader
        .choice(docker, "workspace_mode", path, &["rw", "ro"])
        .as_deref()
    {
        Some("ro") => WorkspaceMode::ReadOnly,
        _ => WorkspaceMode::ReadWrite,
    };
    let image = reader.string(docker, "image", path);
    let base_image = reader.string(docker, "base_image", path);
    let host_config = match get(docker, "host_config") {
        None => None,
        Some(raw) => match serde_json::to_value(raw) {
            Ok(json) => Some(json),
            Err(error) => {
                reader.error(
                    &join(path, "host_config"),
                    format!("cannot be expressed as JSON: {error}"),
                );
                None
            }
        },
    };
    let config = DockerConfig {
        enabled,
        ephemeral: reader.boolean(docker, "ephemeral", path).unwrap_or(true),
        image: image.or(base_image),
        network,
        memory: memory.unwrap_or_else(|| "2g".to_string()),
        cpu_shares: reader.positive(docker, "cpu_shares", path),
        cpu_period: reader.positive(docker, "cpu_period", path),
        cpu_quota: reader.positive(docker, "cpu_quota", path),
        pids_limit: reader.positive(docker, "pids_limit", path),
        user,
        max_containers: reader.positive(docker, "max_containers", path).unwrap_or(5),
        volumes,
        workspace_mode,
        env: reader.string_map(docker, "env", path).unwrap_or_default(),
        ports,
        tmpfs,
        labels: reader
            .string_map(docker, "labels", path)
            .unwrap_or_default(),
        host_config,
    };
    if reader.errors.0.len() > errors_before {
        return None;
    }
    Some(config)
}

/// herdctl's memory format: a number (decimals allowed) and an optional unit k, m, g, t or b.
fn is_docker_memory(text: &str) -> bool {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let digits = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit());
    let number_ok = match number.split_once('.') {
        Some((whole, fraction)) => digits(whole) && digits(fraction),
        None => digits(number),
    };
    let unit = unit.trim_start().to_ascii_lowercase();
    number_ok && (unit.is_empty() || ["k", "m", "g", "t", "b"].contains(&unit.as_str()))
}

/// `N` or `N:M` with N, M decimal digits (docker `user` and `ports`).
fn is_number_or_pair(text: &str) -> bool {
    let digits = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit());
    match text.split_once(':') {
        Some((first, second)) => digits(first) && digits(second),
        None => digits(text),
    }
}

/// `host:container` or `host:container:ro|rw`.
fn is_docker_volume(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    match parts.as_slice() {
        [_, _] => true,
        [_, _, mode] => matches!(*mode, "ro" | "rw"),
        _ => false,
    }
}
