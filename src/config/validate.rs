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
pub(crate) fn is_valid_name(name: &str) -> bool {
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
pub(crate) struct Warnings {
    list: Vec<ConfigWarning>,
    unsupported: BTreeMap<String, (usize, usize)>,
}

impl Warnings {
    pub(crate) fn push(&mut self, file: &Path, path: &str, message: impl Into<String>) {
        self.list.push(ConfigWarning {
            file: file.to_path_buf(),
            path: path.to_string(),
            message: message.into(),
        });
    }

    pub(crate) fn unsupported(&mut self, file: &Path, path: &str, section: &str) {
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

    pub(crate) fn finish(mut self) -> Vec<ConfigWarning> {
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
pub(crate) fn suggestion(unknown: &str, allowed: &[&str]) -> String {
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
pub(crate) struct Reader<'a> {
    pub origins: &'a Origins,
    pub errors: &'a mut Errors,
    pub warnings: &'a mut Warnings,
}

/// The value of `key`, treating an explicit `null` as absent.
pub(crate) fn get<'v>(mapping: &'v Mapping, key: &str) -> Option<&'v Value> {
    mapping.get(key).filter(|value| !value.is_null())
}

impl Reader<'_> {
    pub(crate) fn error(&mut self, path: &str, message: impl Into<String>) {
        let origin = self.origins.locate(path);
        self.errors.push(&origin.file, &origin.path, message);
    }

    pub(crate) fn warn(&mut self, path: &str, message: impl Into<String>) {
        let origin = self.origins.locate(path);
        self.warnings.push(&origin.file, &origin.path, message);
    }

    pub(crate) fn unsupported(&mut self, path: &str, section: &str) {
        let origin = self.origins.locate(path);
        self.warnings
            .unsupported(&origin.file, &origin.path, section);
    }

    /// The directory of the file the value at `path` was written in.
    pub(crate) fn base_dir(&self, path: &str) -> PathBuf {
        let origin = self.origins.locate(path);
        origin
            .file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// `value` as a mapping whose keys are all in `allowed`; unknown keys are reported with a suggestion.
    pub(crate) fn mapping<'v>(
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
    pub(crate) fn any_mapping<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v Mapping> {
        let Value::Mapping(mapping) = value else {
            self.error(path, format!("expected a mapping, got {}", describe(value)));
            return None;
        };
        Some(mapping)
    }

    pub(crate) fn check_keys(&mut self, mapping: &Mapping, path: &str, allowed: &[&str]) {
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
    pub(crate) fn loose_section(
        &mut self,
        value: &Value,
        path: &str,
        fields: &[(&str, FieldKind)],
    ) {
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

    pub(crate) fn string(&mut self, mapping: &Mapping, key: &str, path: &str) -> Option<String> {
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
    pub(crate) fn required_string(
        &mut self,
        mapping: &Mapping,
        key: &str,
        path: &str,
    ) -> Option<String> {
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

    pub(crate) fn boolean(&mut self, mapping: &Mapping, key: &str, path: &str) -> Option<bool> {
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
    pub(crate) fn positive(&mut self, mapping: &Mapping, key: &str, path: &str) -> Option<u32> {
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

    pub(crate) fn string_list(
        &mut self,
        mapping: &Mapping,
        key: &str,
        path: &str,
    ) -> Option<Vec<String>> {
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
    pub(crate) fn string_map(
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
    pub(crate) fn duration(
        &mut self,
        mapping: &Mapping,
        key: &str,
        path: &str,
    ) -> Option<Duration> {
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
            _ => positive_duration(self, mapping, key, path),
        }
    }

    /// One of `allowed`, as written.
    pub(crate) fn choice(
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
pub(crate) fn describe(value: &Value) -> String {
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
pub(crate) struct AgentPlace<'a> {
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
pub(crate) fn build_agent(
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
    let executor = get(tree, "executor")
        .and_then(|value| build_executor(value, reader))
        .unwrap_or_default();
    if executor != ExecutorConfig::Local && docker.as_ref().is_some_and(|docker| docker.enabled) {
        // A cluster job runs the shim on the node's host: the container would be lost on the way.
        reader.error(
            "executor",
            "docker.enabled and a cluster executor cannot be combined: herdctld runs containers only with \
             the local executor; remove `executor` (or set `type: local`), or set docker.enabled: false",
        );
    }

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
        executor,
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
            let root = match get(object, "root") {
                // Its type was checked, and a wrong one reported, with the section's fields.
                Some(value) if !value.is_string() => None,
                _ => reader.required_string(object, "root", "working_directory"),
            };
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

/// Executor types herdctld runs jobs on.
const EXECUTOR_TYPES: &[&str] = &["local", "slurm"];
/// Executor types planned and not built: a fleet written for one fails at load saying so.
const PLANNED_EXECUTORS: &[&str] = &["kubernetes"];
/// `sbatch` options herdctld sets for every job (its name, files, script and owner): `extra_args` must not
/// change them, or the daemon would lose track of the job.
const SBATCH_OWN_OPTIONS: &[&str] = &[
    "-J",
    "--job-name",
    "-o",
    "--output",
    "-e",
    "--error",
    "-i",
    "--input",
    "-D",
    "--chdir",
    "--comment",
    "--wrap",
    "--parsable",
    "--open-mode",
    "-W",
    "--wait",
];

/// `sbatch` options that make Slurm run one submission more than once: herdctld runs each job once, and
/// runs it again only as a new run of its own.
const SBATCH_REPEATING_OPTIONS: &[&str] = &["-a", "--array", "--requeue"];

/// `sbatch` options that send the job to another cluster, where herdctld's `squeue`, `scontrol` and
/// `scancel` (which ask the default one) would never find it.
const SBATCH_ELSEWHERE_OPTIONS: &[&str] = &["-M", "--clusters"];

/// `sbatch`'s short options that take no value, so that another may follow in the same word (`-vJx`).
const SBATCH_SHORT_FLAGS: &[char] = &['H', 'O', 'Q', 's', 'v', 'V', 'h', 'W'];

/// What is wrong with one entry of `extra_args`, if anything. sbatch takes a long option by any unambiguous
/// prefix (`--comm` for `--comment`) and short options grouped (`-vJname`): both are looked through.
fn sbatch_arg_problem(arg: &str) -> Option<String> {
    let refused = |option: &str| {
        if SBATCH_OWN_OPTIONS.contains(&option) {
            Some(format!(
                "{option} is set by herdctld for every job and cannot be changed"
            ))
        } else if SBATCH_REPEATING_OPTIONS.contains(&option) {
            Some(format!(
                "{option} would make Slurm run the job more than once; herdctld runs each job once (trigger it \
                 again for another run)"
            ))
        } else if SBATCH_ELSEWHERE_OPTIONS.contains(&option) {
            Some(format!(
                "{option} would send the job to another cluster, where herdctld cannot watch or stop it"
            ))
        } else {
            None
        }
    };
    if let Some(long) = arg.strip_prefix("--") {
        let name = long.split('=').next().unwrap_or_default();
        if name.is_empty() {
            return Some("each entry is one sbatch option, written --option=value".to_string());
        }
        let written = format!("--{name}");
        return SBATCH_OWN_OPTIONS
            .iter()
            .chain(SBATCH_REPEATING_OPTIONS)
            .chain(SBATCH_ELSEWHERE_OPTIONS)
            .filter(|option| option.starts_with(&written))
            .find_map(|option| refused(option));
    }
    let Some(short) = arg.strip_prefix('-').filter(|short| !short.is_empty()) else {
        return Some("each entry is one sbatch option, written --option=value".to_string());
    };
    for letter in short.chars() {
        if let Some(problem) = refused(&format!("-{letter}")) {
            return Some(problem);
        }
        if !SBATCH_SHORT_FLAGS.contains(&letter) {
            // The rest of the word is this option's value.
            break;
        }
    }
    None
}

/// herdctld extension `executor: {type, …}`: strict keys; the keys of `type: slurm` are ignored (with a
/// warning) when the type is `local`, so that an agent can run locally under `defaults` that say slurm.
fn build_executor(value: &Value, reader: &mut Reader<'_>) -> Option<ExecutorConfig> {
    let path = "executor";
    let executor = reader.mapping(value, path, EXECUTOR_KEYS)?;
    let kind = reader.required_string(executor, "type", path)?;
    match kind.as_str() {
        "local" => {
            for key in EXECUTOR_KEYS.iter().filter(|key| **key != "type") {
                if get(executor, key).is_some() {
                    reader.warn(
                        &join(path, key),
                        format!("ignored: executor.{key} applies to type slurm, and the executor type here is local"),
                    );
                }
            }
            Some(ExecutorConfig::Local)
        }
        "slurm" => build_slurm(executor, path, reader).map(ExecutorConfig::Slurm),
        planned if PLANNED_EXECUTORS.contains(&planned) => {
            reader.error(
                &join(path, "type"),
                format!(
                    "executor type {planned:?} is planned, not built yet; use one of: {}",
                    EXECUTOR_TYPES.join(", ")
                ),
            );
            None
        }
        other => {
            let hint = suggestion(other, EXECUTOR_TYPES);
            reader.error(
                &join(path, "type"),
                format!("invalid executor type {other:?}; {hint}"),
            );
            None
        }
    }
}

fn build_slurm(executor: &Mapping, path: &str, reader: &mut Reader<'_>) -> Option<SlurmConfig> {
    let errors_before = reader.errors.0.len();
    let mut text = |key: &str| {
        let value = reader.string(executor, key, path)?;
        if value.trim().is_empty() {
            reader.error(&join(path, key), "must not be empty");
            return None;
        }
        Some(value)
    };
    let partition = text("partition");
    let mem = text("mem");
    let gres = text("gres");
    let account = text("account");
    let qos = text("qos");
    let herdctld_bin = text("herdctld_bin").map(PathBuf::from);
    if let Some(mem) = &mem {
        if !is_slurm_memory(mem) {
            reader.error(
                &join(path, "mem"),
                format!(
                    "invalid mem {mem:?}; use megabytes or a size with K, M, G or T, e.g. \"4G\""
                ),
            );
        }
    }
    if herdctld_bin.as_ref().is_some_and(|bin| !bin.is_absolute()) {
        reader.error(
            &join(path, "herdctld_bin"),
            "must be an absolute path: the herdctld executable as the cluster's nodes see it",
        );
    }
    let extra_args = reader
        .string_list(executor, "extra_args", path)
        .unwrap_or_default();
    for (position, arg) in extra_args.iter().enumerate() {
        if let Some(problem) = sbatch_arg_problem(arg) {
            reader.error(
                &index(&join(path, "extra_args"), position),
                format!("invalid sbatch argument {arg:?}: {problem}"),
            );
        }
    }
    let config = SlurmConfig {
        partition,
        cpus: reader.positive(executor, "cpus", path),
        mem,
        time: positive_duration(reader, executor, "time", path),
        gres,
        account,
        qos,
        extra_args,
        herdctld_bin,
    };
    (reader.errors.0.len() == errors_before).then_some(config)
}

/// Slurm's `--mem`: whole megabytes, or a whole number with a unit K, M, G or T.
fn is_slurm_memory(text: &str) -> bool {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    !digits.is_empty() && ["", "K", "M", "G", "T"].contains(&unit.to_ascii_uppercase().as_str())
}

/// herdctl's strict docker schemas: unknown keys are errors with a did-you-mean, values are type- and
/// format-checked. For an agent (`agent_file` set), the fleet-only options written in the agent file itself
/// load with a warning (herdctl's `AgentDockerSchema` leaves them out; its examples write them), except
/// `host_config`, which is refused there; from `defaults.docker` or `overrides` in the fleet file they are
/// accepted silently.
pub(crate) fn build_docker(
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
            // Any HostConfig field (Privileged, Binds, …): an agent whose file lies in its own workspace
            // could widen its container without limit. No herdctl example writes it in an agent file.
            Some("host_config") => reader.error(
                &join(path, "host_config"),
                "docker.host_config belongs in the fleet file (defaults.docker): an agent must not be able to widen its own container",
            ),
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
    let memory_bytes = match memory.as_deref().map(docker_memory_bytes) {
        None => DEFAULT_DOCKER_MEMORY,
        Some(Some(bytes)) => bytes,
        Some(None) => {
            reader.error(
                &join(path, "memory"),
                format!("invalid memory {:?}; use a size like \"2g\", \"512m\", \"1024k\" or \"2048\" (bytes)", memory.unwrap_or_default()),
            );
            0
        }
    };
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
        is_port_mapping,
        "\"hostPort:containerPort\" or \"containerPort\" with port numbers 1 to 65535",
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
            Ok(json) => {
                if let Err(problem) = check_host_config(&json) {
                    reader.error(&join(path, "host_config"), problem);
                }
                Some(json)
            }
            Err(error) => {
                reader.error(
                    &join(path, "host_config"),
                    format!("cannot be expressed as JSON: {error}"),
                );
                None
            }
        },
    };
    let ephemeral = reader.boolean(docker, "ephemeral", path).unwrap_or(true);
    if !ephemeral {
        reader.error(
            &join(path, "ephemeral"),
            "ephemeral: false (one container reused across jobs) is not supported by herdctld: a job's \
             processes could outlive it in a shared container, and a cancel could not stop them with the \
             job's grace period; remove the setting (each job then gets a fresh container, removed when \
             it ends)",
        );
    }
    let labels = reader
        .string_map(docker, "labels", path)
        .unwrap_or_default();
    for key in labels.keys().filter(|key| key.starts_with("herdctld.")) {
        reader.error(
            &join(&join(path, "labels"), key),
            format!("label {key:?}: the herdctld. prefix is herdctld's own (it labels every container with its job and state directory); choose another name"),
        );
    }
    let config = DockerConfig {
        enabled,
        ephemeral,
        image: image.or(base_image),
        network,
        memory_bytes,
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
        labels,
        host_config,
    };
    if reader.errors.0.len() > errors_before {
        return None;
    }
    Some(config)
}

/// herdctl's default `docker.memory`: 2g.
const DEFAULT_DOCKER_MEMORY: i64 = 2 * 1024 * 1024 * 1024;

/// `docker.memory` in bytes, read as herdctl reads it: a number (decimals allowed) and an optional unit k,
/// m, g, t (each a factor of 1024) or b, rounded down; `None` when it is not in that format. `0` sets no
/// limit (the engine's meaning).
fn docker_memory_bytes(text: &str) -> Option<i64> {
    let text = text.trim();
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let digits = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit());
    let number_ok = match number.split_once('.') {
        Some((whole, fraction)) => digits(whole) && digits(fraction),
        None => digits(number),
    };
    if !number_ok {
        return None;
    }
    let scale: f64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let value = number.parse::<f64>().ok()?;
    let bytes = (value * scale).floor();
    // Under a byte would be no limit at all, which only `0` asks for.
    let meant = value == 0.0 || bytes >= 1.0;
    (meant && bytes < i64::MAX as f64).then_some(bytes as i64)
}

/// `N` or `N:M` with N, M decimal digits (docker `user` and `ports`).
fn is_number_or_pair(text: &str) -> bool {
    let digits = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit());
    match text.split_once(':') {
        Some((first, second)) => digits(first) && digits(second),
        None => digits(text),
    }
}

/// `hostPort:containerPort` or `containerPort`, each a port number.
fn is_port_mapping(text: &str) -> bool {
    let port = |part: &str| is_number_or_pair(part) && part.parse::<u16>().is_ok_and(|p| p > 0);
    match text.split_once(':') {
        Some((host, container)) => port(host) && port(container),
        None => port(text),
    }
}

/// herdctl passes `host_config` to Docker as its `HostConfig`: every field must be one of the Docker API's,
/// with a value of its type, or it would be dropped on the way and do nothing.
fn check_host_config(json: &serde_json::Value) -> Result<(), String> {
    let Some(fields) = json.as_object() else {
        return Err(
            "must be a mapping of Docker HostConfig fields (e.g. {ShmSize: 67108864})".into(),
        );
    };
    let parsed: bollard::models::HostConfig = serde_json::from_value(json.clone())
        .map_err(|error| format!("not a Docker HostConfig: {error}"))?;
    let known = serde_json::to_value(&parsed).map_err(|error| error.to_string())?;
    let unknown: Vec<&String> = fields
        .iter()
        .filter(|(key, value)| !value.is_null() && known.get(key.as_str()).is_none())
        .map(|(key, _)| key)
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{unknown:?} are not Docker HostConfig fields (names are Docker's, e.g. ShmSize, Init, ReadonlyRootfs)"
        ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::merge::Sourced;
    use crate::config::raw::parse_mapping;

    const FLEET_FILE: &str = "/fleet/herdctl.yaml";
    const AGENT_FILE: &str = "/fleet/agents/a.yaml";

    /// (file name, path, message) of each problem.
    type Reports = Vec<(String, String, String)>;

    /// What building one agent produced.
    struct Built {
        agent: Option<AgentConfig>,
        errors: Reports,
        warnings: Reports,
    }

    fn parse(text: &str, file: &Path) -> Mapping {
        let mut errors = Errors::default();
        let tree = parse_mapping(text, file, &mut errors);
        assert!(errors.is_empty(), "{:#?}", errors.0);
        tree.unwrap()
    }

    fn reports(list: impl IntoIterator<Item = (PathBuf, String, String)>) -> Reports {
        list.into_iter()
            .map(|(file, path, message)| {
                let name = file.file_name().unwrap().to_string_lossy().into_owned();
                (name, path, message)
            })
            .collect()
    }

    /// Builds the agent file `agent`, with the fleet file's `defaults` (YAML of the mapping) merged under it.
    fn build_with(defaults: Option<&str>, agent: &str) -> Built {
        let fleet_file = Path::new(FLEET_FILE);
        let agent_file = Path::new(AGENT_FILE);
        let mut merged = Sourced::empty(agent_file, "");
        if let Some(defaults) = defaults {
            merged.merge(&Sourced::from_file(
                parse(defaults, fleet_file),
                fleet_file,
                "defaults",
            ));
        }
        merged.merge(&Sourced::from_file(
            parse(agent, agent_file),
            agent_file,
            "",
        ));
        let mut errors = Errors::default();
        let mut warnings = Warnings::default();
        let mut reader = Reader {
            origins: &merged.origins,
            errors: &mut errors,
            warnings: &mut warnings,
        };
        let place = AgentPlace {
            fleet_path: &[],
            source_file: agent_file,
        };
        let agent = build_agent(&merged.tree, &place, &mut reader);
        Built {
            agent,
            errors: reports(errors.0.into_iter().map(|e| (e.file, e.path, e.message))),
            warnings: reports(
                warnings
                    .finish()
                    .into_iter()
                    .map(|w| (w.file, w.path, w.message)),
            ),
        }
    }

    fn build(agent: &str) -> Built {
        build_with(None, agent)
    }

    /// The agent of a valid file; fails listing the errors otherwise.
    fn accepted(agent: &str) -> AgentConfig {
        let built = build(agent);
        assert!(built.errors.is_empty(), "{:#?}", built.errors);
        built.agent.expect("no errors, so an agent")
    }

    /// The errors of an invalid agent file; fails when it builds.
    fn refused(agent: &str) -> Reports {
        let built = build(agent);
        assert!(built.agent.is_none(), "expected {agent:?} to be refused");
        built.errors
    }

    /// The fleet file's top-level `docker` section, built as the fleet's own docker settings.
    fn fleet_docker(fleet: &str) -> (Option<DockerConfig>, Reports) {
        let file = Path::new(FLEET_FILE);
        let tree = parse(fleet, file);
        let origins = Origins::new(file, "");
        let mut errors = Errors::default();
        let mut warnings = Warnings::default();
        let mut reader = Reader {
            origins: &origins,
            errors: &mut errors,
            warnings: &mut warnings,
        };
        let docker = build_docker(get(&tree, "docker").unwrap(), "docker", None, &mut reader);
        let errors = reports(errors.0.into_iter().map(|e| (e.file, e.path, e.message)));
        (docker, errors)
    }

    fn has(reports: &Reports, file: &str, path: &str, text: &str) -> bool {
        reports
            .iter()
            .any(|(f, p, m)| f == file && p == path && m.contains(text))
    }

    /// Every `(path, text)` is reported against the agent file, and nothing else is.
    fn assert_exactly(reports: &Reports, expected: &[(&str, &str)]) {
        for (path, text) in expected {
            assert!(
                has(reports, "a.yaml", path, text),
                "missing a.yaml: {path}: {text} in {reports:#?}"
            );
        }
        assert_eq!(reports.len(), expected.len(), "{reports:#?}");
    }

    #[test]
    fn values_of_the_wrong_type_are_refused_naming_what_was_written() {
        let errors = refused(
            "name: a\nmodel: true\ndescription: [x]\nsystem_prompt: {a: b}\ndefault_prompt: !secret x\ntools: [Read, ~]\nallowed_tools: Read\nstop_grace: 10\nplugins: ./p\n1: one\n",
        );
        assert_exactly(
            &errors,
            &[
                ("model", "expected a string, got true"),
                ("description", "expected a string, got a list"),
                ("system_prompt", "expected a string, got a mapping"),
                (
                    "default_prompt",
                    "expected a string, got a value tagged !secret",
                ),
                ("tools[1]", "expected a string, got nothing"),
                (
                    "allowed_tools",
                    "expected a list of strings, got the string \"Read\"",
                ),
                (
                    "stop_grace",
                    "expected a duration such as \"30s\", \"5m\", \"1h\" or \"2d\", got the number 10",
                ),
                ("plugins", "expected a list, got the string \"./p\""),
                ("1", "keys must be strings"),
            ],
        );
    }

    #[test]
    fn a_container_agent_on_a_cluster_executor_is_refused() {
        let built = build_with(
            Some("executor: {type: slurm}\n"),
            "name: a\ndocker: {enabled: true, image: 'img'}\n",
        );
        assert!(built.agent.is_none());
        let text = format!("{:?}", built.errors);
        assert!(
            text.contains("executor") && text.contains("docker.enabled and a cluster executor"),
            "{text}"
        );
    }

    #[test]
    fn a_slurm_executor_is_typed_and_defaults_give_it_to_every_agent() {
        let agent = build_with(
            Some("executor: {type: slurm, partition: gpu, cpus: 4, mem: 16G, time: 2h, gres: 'gpu:1', extra_args: ['--nice=10']}\n"),
            "name: a\nexecutor: {qos: high}\n",
        );
        assert!(agent.errors.is_empty(), "{:#?}", agent.errors);
        assert_eq!(
            agent.agent.unwrap().executor,
            ExecutorConfig::Slurm(SlurmConfig {
                partition: Some("gpu".into()),
                cpus: Some(4),
                mem: Some("16G".into()),
                time: Some(Duration::from_secs(7200)),
                gres: Some("gpu:1".into()),
                qos: Some("high".into()),
                extra_args: vec!["--nice=10".into()],
                ..SlurmConfig::default()
            })
        );
        assert_eq!(accepted("name: a\n").executor, ExecutorConfig::Local);
        // An agent that runs locally under defaults that say slurm: the slurm keys are ignored, with a word.
        let local = build_with(
            Some("executor: {type: slurm, partition: gpu}\n"),
            "name: a\nexecutor: {type: local}\n",
        );
        assert_eq!(local.agent.unwrap().executor, ExecutorConfig::Local);
        assert!(
            has(
                &local.warnings,
                "herdctl.yaml",
                "defaults.executor.partition",
                "ignored"
            ),
            "{:#?}",
            local.warnings
        );
    }

    #[test]
    fn executor_settings_are_strict_and_a_planned_type_says_it_is_not_built() {
        assert_exactly(
            &refused("name: a\nexecutor: {type: slurm, partiton: x, cpus: 0, mem: lots, time: soon, herdctld_bin: bin/herdctld, extra_args: [--job-name=x, debug, -Jother, --array=1-4, --requeue, --no-requeue, --comm=x, --req, -vJname, -M, --clust=b, -vV, -pgpu, --constraint=avx2]}\n"),
            &[
                ("executor.partiton", "did you mean \"partition\"?"),
                ("executor.cpus", "at least 1"),
                ("executor.mem", "invalid mem \"lots\""),
                ("executor.time", "invalid duration \"soon\""),
                ("executor.herdctld_bin", "must be an absolute path"),
                ("executor.extra_args[0]", "--job-name is set by herdctld"),
                ("executor.extra_args[1]", "--option=value"),
                ("executor.extra_args[2]", "-J is set by herdctld"),
                (
                    "executor.extra_args[3]",
                    "--array would make Slurm run the job more than once",
                ),
                (
                    "executor.extra_args[4]",
                    "--requeue would make Slurm run the job more than once",
                ),
                ("executor.extra_args[6]", "--comment is set by herdctld"),
                (
                    "executor.extra_args[7]",
                    "--requeue would make Slurm run the job more than once",
                ),
                ("executor.extra_args[8]", "-J is set by herdctld"),
                ("executor.extra_args[9]", "-M would send the job to another cluster"),
                (
                    "executor.extra_args[10]",
                    "--clusters would send the job to another cluster",
                ),
            ],
        );
        assert_exactly(
            &refused("name: a\nexecutor: {type: kubernetes}\n"),
            &[(
                "executor.type",
                "executor type \"kubernetes\" is planned, not built yet",
            )],
        );
        assert_exactly(
            &refused("name: a\nexecutor: {type: slrum}\n"),
            &[("executor.type", "did you mean \"slurm\"?")],
        );
        assert_exactly(
            &refused("name: a\nexecutor: {partition: x}\n"),
            &[("executor", "missing required key \"type\"")],
        );
    }

    #[test]
    fn a_missing_or_blank_name_is_refused_saying_so() {
        assert_exactly(
            &refused("model: m\n"),
            &[("", "missing required key \"name\"")],
        );
        // Blank is reported as blank, not also as an invalid name.
        assert_exactly(&refused("name: '  '\n"), &[("name", "must not be empty")]);
    }

    #[test]
    fn setting_sources_must_be_user_project_or_local() {
        let agent = accepted("name: a\nsetting_sources: [user, local]\n");
        assert_eq!(
            agent.setting_sources,
            Some(vec!["user".to_string(), "local".to_string()])
        );
        assert_exactly(
            &refused("name: a\nsetting_sources: [user, projct, everything]\n"),
            &[
                (
                    "setting_sources[1]",
                    "invalid setting source \"projct\"; did you mean \"project\"?",
                ),
                (
                    "setting_sources[2]",
                    "invalid setting source \"everything\"; expected one of: user, project, local",
                ),
            ],
        );
    }

    #[test]
    fn identity_is_a_mapping_of_name_role_and_personality() {
        let agent =
            accepted("name: a\nidentity: {name: Ada, role: reviewer, personality: terse}\n");
        assert_eq!(
            agent.identity,
            Some(IdentityConfig {
                name: Some("Ada".to_string()),
                role: Some("reviewer".to_string()),
                personality: Some("terse".to_string()),
            })
        );
        assert_exactly(
            &refused("name: a\nidentity: Ada\n"),
            &[("identity", "expected a mapping, got the string \"Ada\"")],
        );
        assert_exactly(
            &refused("name: a\nidentity: {nmae: Ada, role: 5}\n"),
            &[
                (
                    "identity.nmae",
                    "unknown key \"nmae\"; did you mean \"name\"?",
                ),
                ("identity.role", "expected a string, got the number 5"),
            ],
        );
    }

    #[test]
    fn instances_accepts_only_max_concurrent() {
        assert_exactly(
            &refused("name: a\ninstances: {max_concurrency: 2}\n"),
            &[(
                "instances.max_concurrency",
                "unknown key \"max_concurrency\"; did you mean \"max_concurrent\"?",
            )],
        );
        assert_exactly(
            &refused("name: a\ninstances: 2\n"),
            &[("instances", "expected a mapping, got the number 2")],
        );
    }

    #[test]
    fn a_working_directory_must_be_a_path_or_a_mapping_with_a_root() {
        assert_eq!(
            accepted("name: a\nworking_directory: {root: ../work}\n").working_directory,
            Path::new("/fleet/work")
        );
        assert_exactly(
            &refused("name: a\nworking_directory: 5\n"),
            &[(
                "working_directory",
                "expected a path or a mapping with root, got the number 5",
            )],
        );
        let built = build("name: a\nworking_directory: {auto_clone: true}\n");
        assert!(built.agent.is_none());
        assert_exactly(
            &built.errors,
            &[("working_directory", "missing required key \"root\"")],
        );
        assert!(
            has(
                &built.warnings,
                "a.yaml",
                "working_directory.auto_clone",
                "not supported by herdctld: working_directory.auto_clone"
            ),
            "{:#?}",
            built.warnings
        );
        assert_exactly(
            &refused("name: a\nworking_directory: {root: ''}\n"),
            &[("working_directory.root", "must not be empty")],
        );
        // Reported once, by the section's field check.
        assert_exactly(
            &refused("name: a\nworking_directory: {root: 5}\n"),
            &[(
                "working_directory.root",
                "expected a string, got the number 5",
            )],
        );
    }

    #[test]
    fn a_command_runtime_needs_a_program_and_scalar_env_values() {
        let agent = accepted(
            "name: a\nruntime: command\ncommand: [run, --fast]\nenv: {A: true, B: 2, C: c}\n",
        );
        assert_eq!(
            agent.runtime,
            RuntimeConfig::Command {
                command: vec!["run".to_string(), "--fast".to_string()],
                env: [("A", "true"), ("B", "2"), ("C", "c")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
            }
        );
        for command in ["[]", "['']"] {
            assert_exactly(
                &refused(&format!("name: a\nruntime: command\ncommand: {command}\n")),
                &[(
                    "command",
                    "must name a program: write command: [program, arg, ...]",
                )],
            );
        }
        assert_exactly(
            &refused("name: a\nruntime: command\ncommand: [run]\nenv: {A: [x], B: {c: d}}\n"),
            &[
                ("env.A", "expected a string, got a list"),
                ("env.B", "expected a string, got a mapping"),
            ],
        );
        assert_exactly(
            &refused("name: a\nruntime: command\ncommand: [run]\nenv: A=1\n"),
            &[(
                "env",
                "expected a mapping of names to values, got the string \"A=1\"",
            )],
        );
    }

    #[test]
    fn schedules_must_be_a_mapping_of_named_schedule_mappings() {
        assert_exactly(
            &refused("name: a\nschedules: [tick]\n"),
            &[(
                "schedules",
                "expected a mapping of schedule names to schedules, got a list",
            )],
        );
        assert_exactly(
            &refused("name: a\nschedules: {tick: 5}\n"),
            &[("schedules.tick", "expected a mapping, got the number 5")],
        );
    }

    #[test]
    fn a_schedule_without_its_type_or_trigger_is_refused_saying_what_to_add() {
        let errors = refused(
            "name: a\nschedules:\n  a: {interval: 5m}\n  b: {type: interval}\n  c: {type: cron}\n  d: {type: cron, cron: 5}\n  e: {type: daily}\n  f: {type: interval, interval: 5m, 7: x}\n",
        );
        assert_exactly(
            &errors,
            &[
                (
                    "schedules.a",
                    "missing required key \"type\" (interval, cron, webhook or chat)",
                ),
                (
                    "schedules.b",
                    "an interval schedule needs interval: e.g. \"15m\"",
                ),
                (
                    "schedules.c",
                    "a cron schedule needs cron: e.g. \"0 9 * * 1-5\"",
                ),
                ("schedules.d.cron", "expected a string, got the number 5"),
                (
                    "schedules.e.type",
                    "invalid value \"daily\"; expected one of: interval, cron, webhook, chat",
                ),
                ("schedules.f.7", "keys must be strings"),
            ],
        );
    }

    #[test]
    fn a_trigger_key_the_schedule_type_does_not_use_loads_with_a_warning() {
        let built = build(
            "name: a\ncatchup: none\nschedules:\n  daily: {type: cron, cron: '@daily', interval: 5m, catchup: latest}\n  talk: {type: chat, cron: '0 9 * * *'}\n",
        );
        assert!(built.errors.is_empty(), "{:#?}", built.errors);
        let agent = built.agent.unwrap();
        let daily = agent.schedule("daily").unwrap();
        assert!(matches!(daily.kind, ScheduleKind::Cron(_)));
        assert_eq!(daily.catchup, Catchup::Latest);
        assert_eq!(agent.schedule("talk").unwrap().kind, ScheduleKind::Chat);
        for (path, text) in [
            (
                "schedules.daily.interval",
                "interval is ignored by a schedule of type cron",
            ),
            (
                "schedules.talk.cron",
                "cron is ignored by a schedule of type chat",
            ),
            (
                "schedules.talk.type",
                "accepted, not supported by herdctld: schedule type chat",
            ),
        ] {
            assert!(
                has(&built.warnings, "a.yaml", path, text),
                "missing {path}: {text} in {:#?}",
                built.warnings
            );
        }
        assert_eq!(built.warnings.len(), 3, "{:#?}", built.warnings);
    }

    #[test]
    fn a_schedule_work_source_replaces_the_agents_values_key_by_key() {
        let agent = accepted(
            "name: a\nwork_source: {type: github, repo: o/r, labels: {ready: todo}}\nschedules:\n  tick: {type: interval, interval: 1m, work_source: {repo: other/repo}}\n",
        );
        let source = agent.schedule("tick").unwrap().work_source.clone().unwrap();
        assert_eq!(
            (source.repo.as_str(), source.ready_label.as_str()),
            ("other/repo", "todo")
        );
        assert_eq!(agent.work_source.unwrap().repo, "o/r");
    }

    #[test]
    fn under_an_invalid_agent_work_source_a_schedules_own_keys_are_still_checked() {
        // The agent's bad repo is reported once, not again for the schedule that inherits it.
        assert_exactly(
            &refused(
                "name: a\nwork_source: {type: github, repo: not-a-repo}\nschedules:\n  tick: {type: interval, interval: 1m, work_source: {lables: {ready: go}}}\n",
            ),
            &[
                ("work_source.repo", "must be in 'owner/repo' format"),
                (
                    "schedules.tick.work_source.lables",
                    "unknown key \"lables\"; did you mean \"labels\"?",
                ),
            ],
        );
        assert_exactly(
            &refused(
                "name: a\nwork_source: {type: github, repo: not-a-repo}\nschedules:\n  tick: {type: interval, interval: 1m, work_source: o/r}\n",
            ),
            &[
                ("work_source.repo", "must be in 'owner/repo' format"),
                (
                    "schedules.tick.work_source",
                    "expected a mapping, got the string \"o/r\"",
                ),
            ],
        );
    }

    #[test]
    fn a_work_source_needs_a_type_and_a_repo_and_an_http_api_url() {
        assert_exactly(
            &refused("name: a\nwork_source: {api_base_url: 'ftp://git.example'}\n"),
            &[
                ("work_source", "missing required key \"type\" (github)"),
                ("work_source", "missing required key \"repo\""),
                (
                    "work_source.api_base_url",
                    "\"ftp://git.example\" is not an http(s) URL",
                ),
            ],
        );
        assert_exactly(
            &refused("name: a\nwork_source: {type: github, repo: o/r, api_base_url: 'https://'}\n"),
            &[(
                "work_source.api_base_url",
                "\"https://\" is not an http(s) URL",
            )],
        );
        let agent = accepted(
            "name: a\nwork_source: {type: github, repo: o/r, api_base_url: 'https://ghe.example/api/v3'}\n",
        );
        assert_eq!(
            agent.work_source.unwrap().api_base_url.as_deref(),
            Some("https://ghe.example/api/v3")
        );
    }

    #[test]
    fn hooks_must_be_a_mapping_of_hook_lists() {
        assert_exactly(
            &refused("name: a\nhooks: [{type: shell, command: x}]\n"),
            &[("hooks", "expected a mapping, got a list")],
        );
        assert_exactly(
            &refused("name: a\nhooks: {after_run: {type: shell, command: x}}\n"),
            &[("hooks.after_run", "expected a list of hooks, got a mapping")],
        );
    }

    #[test]
    fn an_invalid_hook_is_refused_naming_its_position_and_field() {
        let errors = refused(
            "name: a\nhooks:\n  after_run:\n    - {command: x}\n    - {type: email, to: me}\n    - {type: shell, command: x, on_events: [completed, faild]}\n    - {type: webhook, url: 'ftp://example.com/hook'}\n    - {type: shell}\n",
        );
        assert_exactly(
            &errors,
            &[
                (
                    "hooks.after_run[0]",
                    "missing required key \"type\" (shell, webhook, discord or slack)",
                ),
                // An unknown type is reported alone: its other keys cannot be judged.
                (
                    "hooks.after_run[1].type",
                    "invalid value \"email\"; expected one of: shell, webhook, discord, slack",
                ),
                (
                    "hooks.after_run[2].on_events[1]",
                    "unknown event \"faild\"; did you mean \"failed\"?",
                ),
                (
                    "hooks.after_run[3].url",
                    "\"ftp://example.com/hook\" is not an http(s) URL",
                ),
                ("hooks.after_run[4]", "missing required key \"command\""),
            ],
        );
    }

    #[test]
    fn hook_timeouts_are_milliseconds_or_durations() {
        let agent = accepted(
            "name: a\nhooks:\n  after_run:\n    - {type: shell, command: x, timeout: 1500}\n  on_error:\n    - {type: webhook, url: 'https://example.com/hook', method: PUT, timeout: 5s}\n",
        );
        assert_eq!(
            agent.hooks.after_run[0].action,
            HookAction::Shell {
                command: "x".to_string(),
                timeout: Duration::from_millis(1500),
            }
        );
        assert_eq!(
            agent.hooks.on_error[0].action,
            HookAction::Webhook {
                url: "https://example.com/hook".to_string(),
                method: HttpMethod::Put,
                headers: BTreeMap::new(),
                timeout: Duration::from_secs(5),
            }
        );
        assert_exactly(
            &refused(
                "name: a\nhooks:\n  after_run:\n    - {type: shell, command: x, timeout: 0}\n    - {type: shell, command: x, timeout: -5}\n    - {type: shell, command: x, timeout: 1.5}\n    - {type: shell, command: x, timeout: 5 minutes}\n",
            ),
            &[
                (
                    "hooks.after_run[0].timeout",
                    "expected a positive number of milliseconds, got 0",
                ),
                (
                    "hooks.after_run[1].timeout",
                    "expected a positive number of milliseconds, got -5",
                ),
                (
                    "hooks.after_run[2].timeout",
                    "expected a positive number of milliseconds, got 1.5",
                ),
                ("hooks.after_run[3].timeout", "invalid duration \"5 minutes\""),
            ],
        );
        // Zero is no timeout, written as milliseconds or as a duration.
        assert_exactly(
            &refused(
                "name: a\nhooks:\n  after_run:\n    - {type: shell, command: x, timeout: 0s}\n",
            ),
            &[("hooks.after_run[0].timeout", "must be greater than zero")],
        );
    }

    #[test]
    fn mcp_servers_must_be_a_mapping_of_server_mappings() {
        assert_exactly(
            &refused("name: a\nmcp_servers: [github]\n"),
            &[(
                "mcp_servers",
                "expected a mapping of server names to servers, got a list",
            )],
        );
        assert_exactly(
            &refused("name: a\nmcp_servers: {broken: 5, fine: {command: server}}\n"),
            &[("mcp_servers.broken", "expected a mapping, got the number 5")],
        );
        assert_exactly(
            &refused("name: a\nmcp_servers:\n  odd: {command: server, ? [x, y] : z}\n"),
            &[
                ("mcp_servers.odd.?", "keys must be strings"),
                ("mcp_servers.odd", "cannot be expressed as JSON"),
            ],
        );
    }

    #[test]
    fn chat_sections_are_type_checked_like_herdctl() {
        let built = build("name: a\nchat: 5\n");
        assert_exactly(
            &built.errors,
            &[("chat", "expected a mapping, got the number 5")],
        );
        // Not a section, so not reported as an unsupported one either.
        assert!(built.warnings.is_empty(), "{:#?}", built.warnings);
        assert_exactly(
            &refused("name: a\nchat: {discord: {guilds: 5}}\n"),
            &[("chat.discord.guilds", "expected a list, got the number 5")],
        );
        assert_exactly(
            &refused("name: a\nchat: {1: x}\n"),
            &[("chat.1", "keys must be strings")],
        );
        let built = build("name: a\nchat: {discord: null, slack: {bot_token_env: T}}\n");
        assert!(built.errors.is_empty(), "{:#?}", built.errors);
        assert!(
            has(
                &built.warnings,
                "a.yaml",
                "chat",
                "not supported by herdctld: chat"
            ),
            "{:#?}",
            built.warnings
        );
    }

    #[test]
    fn docker_keys_must_be_strings_and_host_config_must_be_json() {
        let (docker, errors) =
            fleet_docker("docker: {host_config: {NetworkMode: none, ShmSize: 64}}\n");
        assert!(errors.is_empty(), "{errors:#?}");
        assert_eq!(
            docker.unwrap().host_config,
            Some(serde_json::json!({"NetworkMode": "none", "ShmSize": 64}))
        );
        let (docker, errors) = fleet_docker("docker:\n  7: x\n  host_config: {? [a, b] : c}\n");
        assert!(docker.is_none());
        assert!(
            has(&errors, "herdctl.yaml", "docker.7", "keys must be strings"),
            "{errors:#?}"
        );
        assert!(
            has(
                &errors,
                "herdctl.yaml",
                "docker.host_config",
                "cannot be expressed as JSON"
            ),
            "{errors:#?}"
        );
        assert_eq!(errors.len(), 2, "{errors:#?}");
    }

    #[test]
    fn docker_memory_and_volumes_follow_herdctls_formats() {
        let (docker, errors) =
            fleet_docker("docker: {memory: 1.5g, volumes: ['/a:/b', '/c:/d:rw', '/e:/f:ro']}\n");
        assert!(errors.is_empty(), "{errors:#?}");
        assert_eq!(docker.unwrap().memory_bytes, 1536 * 1024 * 1024);
        for (memory, bytes) in [
            ("2048", 2048),
            ("512M", 512 * 1024 * 1024),
            ("1 k", 1024),
            ("7b", 7),
            ("0", 0),
        ] {
            let (docker, errors) = fleet_docker(&format!("docker: {{memory: '{memory}'}}\n"));
            assert!(errors.is_empty(), "{memory}: {errors:#?}");
            assert_eq!(docker.unwrap().memory_bytes, bytes, "{memory}");
        }
        let (docker, _) = fleet_docker("docker: {}\n");
        assert_eq!(docker.unwrap().memory_bytes, 2 * 1024 * 1024 * 1024);
        for memory in ["1.g", ".5g", "1.5.g", "2gb", "0.4", "0.0001k"] {
            let (docker, errors) = fleet_docker(&format!("docker: {{memory: '{memory}'}}\n"));
            assert!(docker.is_none(), "{memory}");
            assert!(
                has(
                    &errors,
                    "herdctl.yaml",
                    "docker.memory",
                    &format!("invalid memory {memory:?}; use a size like \"2g\"")
                ),
                "{memory}: {errors:#?}"
            );
        }
        let (docker, errors) =
            fleet_docker("docker: {volumes: ['/data', '/a:/b:ro:z', '/c:/d:rx']}\n");
        assert!(docker.is_none());
        for position in 0..3 {
            assert!(
                has(
                    &errors,
                    "herdctl.yaml",
                    &format!("docker.volumes[{position}]"),
                    "use \"host:container\" or \"host:container:ro|rw\""
                ),
                "{position}: {errors:#?}"
            );
        }
        assert_eq!(errors.len(), 3, "{errors:#?}");
    }
}
