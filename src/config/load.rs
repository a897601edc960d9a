//! The load pipeline: locate, read `.env`, then walk the fleet tree (sub-fleets recursively) reading,
//! interpolating, merging defaults and overrides, and building every agent; finally check names across the
//! whole fleet. Every error from every file is collected and returned together.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

use super::error::{index, join, ConfigError, Errors};
use super::interpolate::{interpolate_tree, parse_dotenv, EnvLookup};
use super::locate::{locate, normalize, Located};
use super::merge::Sourced;
use super::raw::*;
use super::resolved::{AgentConfig, DockerConfig, DotEnv, FleetConfig, HistoryConfig};
use super::validate::{
    build_agent, build_docker, describe, get, is_valid_name, positive_duration, AgentPlace, Reader,
    Warnings,
};

/// Loads the fleet designated by `path` (relative to `cwd`), or found by searching upward from `cwd`.
/// `env` looks up environment variables; values from the `.env` file beside the fleet file are used only
/// for variables `env` does not know.
pub fn load_with(
    path: Option<&Path>,
    cwd: &Path,
    env: EnvLookup<'_>,
) -> Result<FleetConfig, ConfigError> {
    let located = locate(path, cwd)?;
    let config_path = located.config_path().to_path_buf();
    let root_dir = match &located {
        Located::AgentDirectory { dir, .. } => dir.clone(),
        Located::FleetFile(file) | Located::AgentFile(file) => {
            file.parent().map(Path::to_path_buf).unwrap_or_default()
        }
    };

    let mut errors = Errors::default();
    let mut warnings = Warnings::default();
    let dotenv = read_dotenv(&root_dir, env, &mut warnings);
    let lookup = |name: &str| env(name).or_else(|| dotenv.get(name).map(str::to_string));

    let mut loader = Loader {
        env: &lookup,
        errors: &mut errors,
        warnings: &mut warnings,
        agents: Vec::new(),
        root_dir: root_dir.clone(),
    };
    let mut fleet_meta = FleetMeta::default();
    match &located {
        Located::FleetFile(file) => {
            fleet_meta = loader
                .load_fleet(file, None, &[], None, &[])
                .unwrap_or_default();
        }
        Located::AgentDirectory { files, .. } => {
            for file in files {
                loader.load_agent(file, &[], None, None);
            }
        }
        Located::AgentFile(file) => loader.load_agent(file, &[], None, None),
    }
    let agents = std::mem::take(&mut loader.agents);
    check_unique_names(&agents, &mut errors);
    check_engine_socket_not_mounted(&agents, &lookup, &mut errors);

    if !errors.is_empty() {
        return Err(ConfigError::Invalid {
            config_path,
            errors: errors.0,
        });
    }
    Ok(FleetConfig {
        config_path,
        root_dir,
        name: fleet_meta.name,
        description: fleet_meta.description,
        agents,
        max_concurrent: fleet_meta.max_concurrent,
        history: fleet_meta.history,
        dotenv,
        docker: fleet_meta.docker,
        warnings: warnings.finish(),
    })
}

/// `.env` beside the fleet file: the variables the environment does not already define.
fn read_dotenv(root_dir: &Path, env: EnvLookup<'_>, warnings: &mut Warnings) -> DotEnv {
    let file = root_dir.join(".env");
    let Ok(text) = std::fs::read_to_string(&file) else {
        return DotEnv::default();
    };
    let (variables, problems) = parse_dotenv(&text);
    for (line, problem) in problems {
        warnings.push(
            &file,
            &format!("line {line}"),
            format!("ignored: {problem}"),
        );
    }
    DotEnv(
        variables
            .into_iter()
            .filter(|(name, _)| env(name).is_none())
            .collect::<BTreeMap<_, _>>(),
    )
}

fn check_unique_names(agents: &[AgentConfig], errors: &mut Errors) {
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    for agent in agents {
        if let Some(first) = seen.insert(&agent.name, &agent.source_file) {
            errors.push(
                &agent.source_file,
                "name",
                format!(
                    "duplicate agent name {:?}: already used by {}; rename one of them",
                    agent.name,
                    first.display()
                ),
            );
        }
    }
}

/// Where container engines listen: `DOCKER_HOST`'s socket, Docker's and podman's usual ones.
fn engine_sockets(env: EnvLookup<'_>) -> Vec<PathBuf> {
    let mut sockets: Vec<PathBuf> = [
        "/var/run/docker.sock",
        "/run/docker.sock",
        "/run/podman/podman.sock",
        "/run/containerd/containerd.sock",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    if let Some(host) = env("DOCKER_HOST") {
        if let Some(socket) = host.strip_prefix("unix://") {
            sockets.push(socket.into());
        }
    }
    if let Some(runtime_dir) = env("XDG_RUNTIME_DIR") {
        sockets.push(Path::new(&runtime_dir).join("podman/podman.sock"));
        sockets.push(Path::new(&runtime_dir).join("docker.sock"));
    }
    // Also where a symlink (/var/run → /run) makes one really is.
    let resolved: Vec<PathBuf> = sockets
        .iter()
        .filter_map(|socket| socket.canonicalize().ok())
        .collect();
    sockets.extend(resolved);
    sockets
}

/// Whether mounting `host` would put one of `sockets` into a container: it is one, or a directory above one.
fn exposes_a_socket(host: &Path, sockets: &[PathBuf]) -> bool {
    if !host.is_absolute() {
        // A named volume, not a host path.
        return false;
    }
    let resolved = host.canonicalize().unwrap_or_else(|_| normalize(host));
    sockets
        .iter()
        .any(|socket| socket.starts_with(host) || socket.starts_with(&resolved))
}

/// The container engine's socket is never mounted into an agent's container: a job that can talk to the engine
/// can start a container of its own, without limits and as the host's root. Refuses a `docker.volumes` entry, a
/// `host_config` bind or mount, or a working directory (mounted at /workspace) whose host path is an engine's
/// socket or a directory holding one.
fn check_engine_socket_not_mounted(
    agents: &[AgentConfig],
    env: EnvLookup<'_>,
    errors: &mut Errors,
) {
    let containerized: Vec<(&AgentConfig, &DockerConfig)> = agents
        .iter()
        .filter_map(|agent| Some((agent, agent.container()?)))
        .collect();
    if containerized.is_empty() {
        return;
    }
    let sockets = engine_sockets(env);
    let refuse = |errors: &mut Errors, agent: &AgentConfig, path: &str, host: &str| {
        errors.push(
            &agent.source_file,
            path,
            format!("mounts {host}, which is or holds a container engine's socket: a job that can reach the engine can escape its container; mount something narrower"),
        );
    };
    for (agent, docker) in containerized {
        if exposes_a_socket(&agent.working_directory, &sockets) {
            refuse(
                errors,
                agent,
                "working_directory",
                &agent.working_directory.display().to_string(),
            );
        }
        // Every host path the container would get, with where it is configured.
        let raw = docker.host_config.as_ref();
        let entries = |key: &str| {
            raw.and_then(|config| config.get(key)?.as_array())
                .into_iter()
                .flatten()
                .enumerate()
        };
        let volumes = docker.volumes.iter().enumerate().map(|(position, volume)| {
            (index("docker.volumes", position), volume.split(':').next())
        });
        let binds = entries("Binds").map(|(position, bind)| {
            let host = bind.as_str().and_then(|bind| bind.split(':').next());
            (index("docker.host_config.Binds", position), host)
        });
        let mounts = entries("Mounts").map(|(position, mount)| {
            let host = mount.get("Source").and_then(serde_json::Value::as_str);
            (index("docker.host_config.Mounts", position), host)
        });
        for (path, host) in volumes.chain(binds).chain(mounts) {
            if let Some(host) = host.filter(|host| exposes_a_socket(Path::new(host), &sockets)) {
                refuse(errors, agent, &path, host);
            }
        }
    }
}

#[derive(Debug, Default)]
struct FleetMeta {
    name: Option<String>,
    description: Option<String>,
    max_concurrent: Option<u32>,
    history: HistoryConfig,
    docker: Option<DockerConfig>,
}

struct Loader<'a> {
    env: EnvLookup<'a>,
    errors: &'a mut Errors,
    warnings: &'a mut Warnings,
    agents: Vec<AgentConfig>,
    root_dir: PathBuf,
}

/// A sub-fleet reference as seen from its parent.
struct SubFleetRef<'a> {
    name: Option<String>,
    overrides: Option<Sourced>,
    /// Where the reference is written (parent file, `fleets[i]`), for naming errors.
    parent_file: &'a Path,
    ref_path: String,
}

impl Loader<'_> {
    /// Loads one fleet file and, recursively, its sub-fleets. `chain` holds the files from the root down to
    /// the parent (for cycle detection). Returns the fleet's metadata; its agents go to `self.agents`.
    fn load_fleet(
        &mut self,
        file: &Path,
        sub_ref: Option<SubFleetRef<'_>>,
        fleet_path: &[String],
        parent_defaults: Option<&Sourced>,
        chain: &[PathBuf],
    ) -> Option<FleetMeta> {
        let mut tree = read_mapping(file, self.errors)?;
        interpolate_tree_mapping(
            &mut tree,
            self.env,
            file,
            &is_unsupported_fleet_path,
            self.errors,
        );
        let mut fleet = Sourced::from_file(tree, file, "");
        if let Some(overrides) = sub_ref.as_ref().and_then(|sub| sub.overrides.as_ref()) {
            fleet.merge(overrides);
        }
        let origins = fleet.origins.clone();
        let tree = fleet.tree;
        let mut reader = Reader {
            origins: &origins,
            errors: self.errors,
            warnings: self.warnings,
        };
        reader.check_keys(&tree, "", FLEET_KEYS);
        if get(&tree, "version").is_some() {
            reader.positive(&tree, "version", "");
        }
        for (section, fields) in [
            ("web", WEB_FIELDS),
            ("webhooks", WEBHOOKS_FIELDS),
            ("chat", FLEET_CHAT_FIELDS),
            ("working_directory", WORKING_DIRECTORY_FIELDS),
        ] {
            let Some(value) = get(&tree, section) else {
                continue;
            };
            // herdctld has always accepted a plain path here, like an agent's working_directory.
            if section == "working_directory" && value.is_string() {
                reader.unsupported(section, "fleet-level working_directory");
                continue;
            }
            if value.is_mapping() {
                reader.unsupported(section, &format!("fleet-level {section}"));
            }
            reader.loose_section(value, section, fields);
        }
        let docker =
            get(&tree, "docker").and_then(|value| build_docker(value, "docker", None, &mut reader));
        if docker.is_some() {
            reader.warn(
                "docker",
                "the fleet's top-level docker section applies to no agent: as in herdctl, an agent's \
                 containers take their settings from its own docker section, with defaults.docker under \
                 it; move these settings to defaults.docker",
            );
        }
        let mut meta = FleetMeta {
            docker,
            ..FleetMeta::default()
        };
        let mut fleet_cap = None;
        if let Some(section) =
            get(&tree, "fleet").and_then(|value| reader.mapping(value, "fleet", FLEET_META_KEYS))
        {
            meta.name = reader.string(section, "name", "fleet");
            meta.description = reader.string(section, "description", "fleet");
            fleet_cap = reader.positive(section, "max_concurrent", "fleet");
        }

        // Defaults: this fleet's, cascaded over the parent's (this fleet's win).
        let mut defaults = parent_defaults
            .cloned()
            .unwrap_or_else(|| Sourced::empty(file, "defaults"));
        if let Some(value) = get(&tree, "defaults") {
            if let Some(own) = reader.mapping(value, "defaults", DEFAULTS_KEYS) {
                let mut own = own.clone();
                let defaults_cap = reader.positive(&own, "max_concurrent", "defaults");
                meta.history = HistoryConfig {
                    max_jobs_per_agent: reader.positive(&own, "max_jobs_per_agent", "defaults"),
                    max_jobs_total: reader.positive(&own, "max_jobs_total", "defaults"),
                    max_job_age: positive_duration(&mut reader, &own, "max_job_age", "defaults"),
                };
                for key in FLEET_WIDE_DEFAULTS_KEYS {
                    own.remove(*key);
                }
                match (fleet_cap, defaults_cap) {
                    (Some(a), Some(b)) if a != b => reader.error(
                        "defaults.max_concurrent",
                        format!("fleet.max_concurrent is {a} and defaults.max_concurrent is {b}; set the fleet-wide cap once"),
                    ),
                    _ => fleet_cap = fleet_cap.or(defaults_cap),
                }
                normalize_aliases(&mut own, file, "defaults", reader.errors);
                defaults.merge(&Sourced {
                    tree: own,
                    origins: origins_at(&origins, "defaults"),
                });
            }
        }
        if sub_ref.is_some() && fleet_cap.is_some() {
            reader.warn(
                "defaults",
                "max_concurrent in a sub-fleet is ignored; the fleet-wide cap is set in the root fleet file",
            );
            fleet_cap = None;
        }
        if sub_ref.is_some() && meta.history != HistoryConfig::default() {
            reader.warn(
                "defaults",
                "max_jobs_per_agent, max_jobs_total and max_job_age in a sub-fleet are ignored; job history \
                 limits are set in the root fleet file",
            );
            meta.history = HistoryConfig::default();
        }
        meta.max_concurrent = fleet_cap;

        let fleet_name = match &sub_ref {
            None => None,
            Some(sub) => self_name(sub, &meta, file, &mut reader),
        };
        let fleet_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let own_path: Vec<String> = match &fleet_name {
            Some(name) => fleet_path.iter().cloned().chain([name.clone()]).collect(),
            None => fleet_path.to_vec(),
        };

        let agent_refs = list(&tree, "agents", &mut reader);
        let fleet_refs = list(&tree, "fleets", &mut reader);
        let mut agent_jobs = Vec::new();
        for (position, value) in agent_refs.iter().enumerate() {
            let ref_path = index("agents", position);
            let Some(entry) = reader.mapping(value, &ref_path, AGENT_REF_KEYS) else {
                continue;
            };
            let Some(agent_file) = resolve_ref(entry, &ref_path, &fleet_dir, &mut reader) else {
                continue;
            };
            let overrides = overrides_of(entry, &ref_path, &origins, &mut reader);
            agent_jobs.push((agent_file, overrides));
        }
        let mut sub_jobs = Vec::new();
        for (position, value) in fleet_refs.iter().enumerate() {
            let ref_path = index("fleets", position);
            let Some(entry) = reader.mapping(value, &ref_path, FLEET_REF_KEYS) else {
                continue;
            };
            let Some(sub_file) = resolve_ref(entry, &ref_path, &fleet_dir, &mut reader) else {
                continue;
            };
            let name = reader.string(entry, "name", &ref_path);
            let overrides = overrides_of(entry, &ref_path, &origins, &mut reader);
            sub_jobs.push((sub_file, name, overrides, ref_path));
        }

        for (agent_file, overrides) in agent_jobs {
            self.load_agent(&agent_file, &own_path, Some(&defaults), overrides.as_ref());
        }

        let identity = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
        let mut chain = chain.to_vec();
        chain.push(identity);
        let mut sub_names: HashMap<String, String> = HashMap::new();
        for (sub_file, name, overrides, ref_path) in sub_jobs {
            let sub_identity =
                std::fs::canonicalize(&sub_file).unwrap_or_else(|_| sub_file.clone());
            if chain.contains(&sub_identity) {
                let shown: Vec<String> = chain
                    .iter()
                    .chain([&sub_identity])
                    .map(|path| self.display(path))
                    .collect();
                self.errors.push(
                    file,
                    &join(&ref_path, "path"),
                    format!("sub-fleet cycle: {}", shown.join(" -> ")),
                );
                continue;
            }
            let sub_ref = SubFleetRef {
                name,
                overrides,
                parent_file: file,
                ref_path: ref_path.clone(),
            };
            let Some(sub_meta) =
                self.load_fleet(&sub_file, Some(sub_ref), &own_path, Some(&defaults), &chain)
            else {
                continue;
            };
            let Some(sub_name) = sub_meta.name else {
                continue;
            };
            if let Some(first) = sub_names.insert(sub_name.clone(), ref_path.clone()) {
                self.errors.push(
                    file,
                    &ref_path,
                    format!("sub-fleet name {sub_name:?} is already used by {first}; give one of them a distinct name: in its fleets entry"),
                );
            }
        }

        Some(FleetMeta {
            // A sub-fleet reports the name it is known by in its parent.
            name: fleet_name.or(meta.name),
            ..meta
        })
    }

    /// Loads one agent file, merging `defaults` under it and `overrides` over it.
    fn load_agent(
        &mut self,
        file: &Path,
        fleet_path: &[String],
        defaults: Option<&Sourced>,
        overrides: Option<&Sourced>,
    ) {
        let Some(mut tree) = read_mapping(file, self.errors) else {
            return;
        };
        interpolate_tree_mapping(
            &mut tree,
            self.env,
            file,
            &is_unsupported_agent_path,
            self.errors,
        );
        normalize_aliases(&mut tree, file, "", self.errors);
        let mut merged = Sourced::empty(file, "");
        if let Some(defaults) = defaults {
            merged.merge(defaults);
        }
        merged.merge(&Sourced::from_file(tree, file, ""));
        if let Some(overrides) = overrides {
            merged.merge(overrides);
        }
        let mut reader = Reader {
            origins: &merged.origins,
            errors: self.errors,
            warnings: self.warnings,
        };
        let place = AgentPlace {
            fleet_path,
            source_file: file,
        };
        if let Some(agent) = build_agent(&merged.tree, &place, &mut reader) {
            self.agents.push(agent);
        }
    }

    /// A path relative to the root fleet's directory when it is inside it.
    fn display(&self, path: &Path) -> String {
        let root = std::fs::canonicalize(&self.root_dir).unwrap_or_else(|_| self.root_dir.clone());
        path.strip_prefix(&root)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}

/// The name a sub-fleet is known by: its reference's `name`, else its own `fleet.name`, else its directory's
/// name. It must be a valid agent-style name (no dots, since dots separate qualified names).
fn self_name(
    sub: &SubFleetRef<'_>,
    meta: &FleetMeta,
    file: &Path,
    reader: &mut Reader<'_>,
) -> Option<String> {
    let (name, source) = if let Some(name) = &sub.name {
        (
            name.clone(),
            "its name in the parent's fleets entry".to_string(),
        )
    } else if let Some(name) = &meta.name {
        (name.clone(), "its fleet.name".to_string())
    } else {
        let dir_name = file
            .parent()
            .and_then(Path::file_name)
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        (
            dir_name,
            "its directory name (no fleet.name set)".to_string(),
        )
    };
    if is_valid_name(&name) {
        return Some(name);
    }
    reader.errors.push(
        sub.parent_file,
        &sub.ref_path,
        format!("invalid sub-fleet name {name:?} (from {source}): it must start with a letter or number and contain only letters, numbers, underscores and hyphens; set name: in the fleets entry"),
    );
    None
}

fn list(tree: &Mapping, key: &str, reader: &mut Reader<'_>) -> Vec<Value> {
    match get(tree, key) {
        None => Vec::new(),
        Some(Value::Sequence(items)) => items.clone(),
        Some(other) => {
            reader.error(key, format!("expected a list, got {}", describe(other)));
            Vec::new()
        }
    }
}

/// The absolute path of an `agents[]`/`fleets[]` entry's file; it must exist.
fn resolve_ref(
    entry: &Mapping,
    ref_path: &str,
    fleet_dir: &Path,
    reader: &mut Reader<'_>,
) -> Option<PathBuf> {
    let written = reader.required_string(entry, "path", ref_path)?;
    let resolved = normalize(&fleet_dir.join(&written));
    if resolved.is_file() {
        Some(resolved)
    } else {
        reader.error(
            &join(ref_path, "path"),
            format!("file not found: {} (relative paths are resolved against the fleet file's directory)", resolved.display()),
        );
        None
    }
}

/// An entry's `overrides`, with aliases normalised, attributed to where they are written.
fn overrides_of(
    entry: &Mapping,
    ref_path: &str,
    origins: &super::merge::Origins,
    reader: &mut Reader<'_>,
) -> Option<Sourced> {
    let path = join(ref_path, "overrides");
    let value = get(entry, "overrides")?;
    let mut tree = reader.any_mapping(value, &path)?.clone();
    let origin = origins.locate(&path);
    normalize_aliases(&mut tree, &origin.file, &origin.path, reader.errors);
    Some(Sourced {
        tree,
        origins: origins_at(origins, &path),
    })
}

/// Origins for the subtree at `path` of a tree whose origins are `origins`.
fn origins_at(origins: &super::merge::Origins, path: &str) -> super::merge::Origins {
    let origin = origins.locate(path);
    super::merge::Origins::new(&origin.file, &origin.path)
}

fn interpolate_tree_mapping(
    tree: &mut Mapping,
    env: EnvLookup<'_>,
    file: &Path,
    skip: &dyn Fn(&str) -> bool,
    errors: &mut Errors,
) {
    let mut value = Value::Mapping(std::mem::take(tree));
    interpolate_tree(&mut value, env, file, "", skip, errors);
    if let Value::Mapping(mapping) = value {
        *tree = mapping;
    }
}

/// Unsupported sections of an agent-shaped tree rooted at `root` ("" for an agent file).
fn is_unsupported_agent_section(path: &str, root: &str) -> bool {
    let rest = if root.is_empty() {
        path
    } else {
        match path
            .strip_prefix(root)
            .and_then(|rest| rest.strip_prefix('.'))
        {
            Some(rest) => rest,
            None => return false,
        }
    };
    UNSUPPORTED_AGENT_SECTIONS.contains(&rest)
}

fn is_unsupported_agent_path(path: &str) -> bool {
    is_unsupported_agent_section(path, "")
}

/// In a fleet file: the fleet-level unsupported sections, and the agent-level ones inside `defaults` and
/// `agents[i].overrides` (they are not interpolated, so their variables need not be set).
fn is_unsupported_fleet_path(path: &str) -> bool {
    if UNSUPPORTED_FLEET_SECTIONS.contains(&path) {
        return true;
    }
    if is_unsupported_agent_section(path, "defaults") {
        return true;
    }
    let Some(rest) = path.strip_prefix("agents[") else {
        return false;
    };
    match rest.split_once("].overrides.") {
        Some((number, section)) => {
            number.chars().all(|c| c.is_ascii_digit())
                && UNSUPPORTED_AGENT_SECTIONS.contains(&section)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::resolved::*;
    use std::fs;
    use std::time::Duration;

    /// Writes `files` (relative path, content) under a fresh directory.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let full = dir.path().join(path);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(full, content).unwrap();
        }
        dir
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load_dir(dir: &Path, env: EnvLookup<'_>) -> Result<FleetConfig, ConfigError> {
        load_with(Some(dir), dir, env)
    }

    /// (file name, path, message) of each error.
    fn errors_of(result: Result<FleetConfig, ConfigError>) -> Vec<(String, String, String)> {
        let error = result.expect_err("expected the configuration to be invalid");
        error
            .errors()
            .iter()
            .map(|e| {
                let file = e.file.file_name().unwrap().to_string_lossy().into_owned();
                (file, e.path.clone(), e.message.clone())
            })
            .collect()
    }

    fn has(errors: &[(String, String, String)], file: &str, path: &str, text: &str) -> bool {
        errors
            .iter()
            .any(|(f, p, m)| f == file && p == path && m.contains(text))
    }

    #[test]
    fn one_broken_fleet_reports_every_error_with_file_and_path() {
        let dir = tree(&[
            (
                "herdctl.yaml",
                "version: 1\nfleet: {name: broken}\nagentz: []\nagents:\n  - path: agents/a.yaml\n  - path: agents/missing.yaml\n  - path: agents/b.yaml\n    overrides:\n      schedules: {hourly: {interval: 0m}}\n",
            ),
            (
                "agents/a.yaml",
                "name: bad.name\nmodell: x\npermission_mode: yolo\nconcurrency: 0\nschedules:\n  check: {type: interval, interval: 5x}\n  nightly: {type: cron, cron: '0 25 * * *', timezone: Mars/Olympus}\n  typo: {type: cron, cron: '@daily', prompt: hi}\nwork_source: {type: github, repo: not-a-repo}\nruntime: command\n",
            ),
            ("agents/b.yaml", "name: a\nschedules:\n  hourly: {type: interval, interval: 1h}\n"),
            ("agents/c.yaml", "name: b\n"),
        ]);
        let errors = errors_of(load_dir(dir.path(), &no_env));
        let expected = [
            ("herdctl.yaml", "agentz", "did you mean \"agents\"?"),
            ("herdctl.yaml", "agents[1].path", "file not found"),
            (
                "herdctl.yaml",
                "agents[2].overrides.schedules.hourly.interval",
                "greater than zero",
            ),
            ("a.yaml", "name", "invalid agent name \"bad.name\""),
            ("a.yaml", "modell", "did you mean \"model\"?"),
            ("a.yaml", "permission_mode", "invalid value \"yolo\""),
            ("a.yaml", "concurrency", "at least 1"),
            (
                "a.yaml",
                "schedules.check.interval",
                "invalid duration \"5x\"",
            ),
            ("a.yaml", "schedules.nightly.cron", "hour must be 0-23"),
            (
                "a.yaml",
                "schedules.nightly.timezone",
                "unknown time zone \"Mars/Olympus\"",
            ),
            ("a.yaml", "work_source.repo", "'owner/repo' format"),
            ("a.yaml", "", "runtime: command needs a command"),
        ];
        for (file, path, text) in expected {
            assert!(
                has(&errors, file, path, text),
                "missing {file}: {path}: {text} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    }

    #[test]
    fn display_lists_each_error_on_its_own_line() {
        let dir = tree(&[
            ("herdctl.yaml", "agents: [{path: a.yaml}]\n"),
            ("a.yaml", "name: a\nmodel: 5\nmax_turns: x\n"),
        ]);
        let message = load_dir(dir.path(), &no_env).unwrap_err().to_string();
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(lines.len(), 3, "{message}");
        assert!(
            lines[1].ends_with("a.yaml: model: expected a string, got the number 5"),
            "{message}"
        );
        assert!(lines[2].ends_with(
            "a.yaml: max_turns: expected a whole number of at least 1, got the string \"x\""
        ));
    }

    #[test]
    fn duplicate_agent_names_and_yaml_syntax_are_reported() {
        let dir = tree(&[
            (
                "herdctl.yaml",
                "agents: [{path: a.yaml}, {path: b.yaml}, {path: c.yaml}]\n",
            ),
            ("a.yaml", "name: same\n"),
            ("b.yaml", "name: same\n"),
            ("c.yaml", "name: [oops\n"),
        ]);
        let errors = errors_of(load_dir(dir.path(), &no_env));
        assert!(
            has(&errors, "b.yaml", "name", "duplicate agent name \"same\""),
            "{errors:#?}"
        );
        assert!(
            has(&errors, "c.yaml", "", "invalid YAML at line"),
            "{errors:#?}"
        );
    }

    #[test]
    fn interpolation_uses_env_then_dotenv_and_names_the_path() {
        let dir = tree(&[
            ("herdctl.yaml", "agents: [{path: a.yaml}]\n"),
            (".env", "MODEL=from-dotenv\nPROMPT=from-dotenv\n"),
            ("a.yaml", "name: a\nmodel: ${MODEL}\ndefault_prompt: ${PROMPT}\nsystem_prompt: '${EMPTY:-unused}'\ndescription: ${NOPE:-fallback}\n"),
        ]);
        let env = |name: &str| match name {
            "PROMPT" => Some("from-env".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let fleet = load_dir(dir.path(), &env).unwrap();
        let agent = fleet.agent("a").unwrap();
        assert_eq!(agent.model.as_deref(), Some("from-dotenv"));
        // .env never overrides the environment.
        assert_eq!(agent.default_prompt.as_deref(), Some("from-env"));
        assert_eq!(agent.system_prompt.as_deref(), Some(""));
        assert_eq!(agent.description.as_deref(), Some("fallback"));
        assert_eq!(fleet.dotenv.get("MODEL"), Some("from-dotenv"));
        assert_eq!(fleet.dotenv.get("PROMPT"), None);

        fs::write(
            dir.path().join("a.yaml"),
            "name: a\nhooks:\n  after_run:\n    - {type: webhook, url: 'https://x/${HOOK_PATH}'}\n",
        )
        .unwrap();
        let errors = errors_of(load_dir(dir.path(), &env));
        assert!(
            has(
                &errors,
                "a.yaml",
                "hooks.after_run[0].url",
                "HOOK_PATH is not set"
            ),
            "{errors:#?}"
        );
    }

    #[test]
    fn history_limits_are_read_from_the_root_defaults_and_reach_no_agent() {
        let dir = tree(&[
            (
                "herdctl.yaml",
                "defaults:\n  max_jobs_per_agent: 20\n  max_jobs_total: 500\n  max_job_age: 30d\nfleets: [{path: team/herdctl.yaml}]\nagents: [{path: a.yaml}]\n",
            ),
            ("a.yaml", "name: a\n"),
            (
                "team/herdctl.yaml",
                "defaults: {max_jobs_per_agent: 3}\nagents: [{path: b.yaml}]\n",
            ),
            ("team/b.yaml", "name: b\n"),
        ]);
        let fleet = load_dir(dir.path(), &no_env).unwrap();
        assert_eq!(
            fleet.history,
            HistoryConfig {
                max_jobs_per_agent: Some(20),
                max_jobs_total: Some(500),
                max_job_age: Some(Duration::from_secs(30 * 86_400)),
            }
        );
        assert_eq!(fleet.agent("a").unwrap().concurrency, None);
        assert!(
            fleet
                .warnings
                .iter()
                .any(|w| w.message.contains("in a sub-fleet are ignored")),
            "{:#?}",
            fleet.warnings
        );
    }

    #[test]
    fn invalid_history_limits_name_file_field_and_fix() {
        let dir = tree(&[
            (
                "herdctl.yaml",
                "defaults:\n  max_jobs_per_agent: 0\n  max_jobs_total: many\n  max_job_age: 30 days\nagents: [{path: a.yaml}]\n",
            ),
            ("a.yaml", "name: a\n"),
        ]);
        let errors = errors_of(load_dir(dir.path(), &no_env));
        for (path, text) in [
            ("defaults.max_jobs_per_agent", "at least 1"),
            ("defaults.max_jobs_total", "at least 1"),
            ("defaults.max_job_age", "30 days"),
        ] {
            assert!(
                has(&errors, "herdctl.yaml", path, text),
                "{path}: {errors:#?}"
            );
        }
        let dir = tree(&[
            (
                "herdctl.yaml",
                "defaults: {max_job_age: 0s}\nagents: [{path: a.yaml}]\n",
            ),
            ("a.yaml", "name: a\n"),
        ]);
        let errors = errors_of(load_dir(dir.path(), &no_env));
        assert!(
            has(
                &errors,
                "herdctl.yaml",
                "defaults.max_job_age",
                "greater than zero"
            ),
            "{errors:#?}"
        );
    }

    #[test]
    fn budgets_come_from_defaults_unless_the_agent_sets_or_drops_its_own() {
        let dir = tree(&[
            (
                "herdctl.yaml",
                "defaults:\n  budget: {daily_usd: 5}\n  timezone: Asia/Tokyo\nagents: [{path: a.yaml}, {path: b.yaml}, {path: c.yaml}]\n",
            ),
            ("a.yaml", "name: a\n"),
            ("b.yaml", "name: b\nbudget: {daily_usd: 0.25}\ntimezone: Europe/Berlin\n"),
            ("c.yaml", "name: c\nbudget: null\n"),
        ]);
        let fleet = load_dir(dir.path(), &no_env).unwrap();
        let budget = |name: &str| fleet.agent(name).unwrap().budget.map(|b| b.daily_usd);
        assert_eq!(
            (budget("a"), budget("b"), budget("c")),
            (Some(5.0), Some(0.25), None)
        );
        let zone = |name: &str| fleet.agent(name).unwrap().timezone;
        assert_eq!(zone("a"), Some(chrono_tz::Asia::Tokyo));
        assert_eq!(zone("b"), Some(chrono_tz::Europe::Berlin));
    }

    #[test]
    fn invalid_budgets_name_file_field_and_fix() {
        let dir = tree(&[
            (
                "herdctl.yaml",
                "agents: [{path: a.yaml}, {path: b.yaml}, {path: c.yaml}, {path: d.yaml}, {path: e.yaml}]\n",
            ),
            ("a.yaml", "name: a\nbudget: {daily_usd: -1}\n"),
            ("b.yaml", "name: b\nbudget: {daily_usd: \"$5\"}\n"),
            ("c.yaml", "name: c\nbudget: {daily: 5}\n"),
            ("d.yaml", "name: d\nbudget: 5\n"),
            ("e.yaml", "name: e\nbudget: {daily_usd: .inf}\n"),
        ]);
        let errors = errors_of(load_dir(dir.path(), &no_env));
        for (file, path, text) in [
            (
                "a.yaml",
                "budget.daily_usd",
                "at least 0, such as 5 or 12.50",
            ),
            ("a.yaml", "budget.daily_usd", "got the number -1"),
            (
                "b.yaml",
                "budget.daily_usd",
                "without \"$\" or quotes), got the string \"$5\"",
            ),
            (
                "c.yaml",
                "budget.daily",
                "unknown key \"daily\"; expected one of: daily_usd",
            ),
            ("c.yaml", "budget", "missing required key \"daily_usd\""),
            ("d.yaml", "budget", "expected a mapping"),
            ("e.yaml", "budget.daily_usd", "got the number .inf"),
        ] {
            assert!(
                has(&errors, file, path, text),
                "{file} {path} {text}: {errors:#?}"
            );
        }
        assert_eq!(errors.len(), 6, "{errors:#?}");

        // A bad default is reported where it was written.
        let dir = tree(&[
            (
                "herdctl.yaml",
                "defaults: {budget: {daily_usd: many}}\nagents: [{path: a.yaml}]\n",
            ),
            ("a.yaml", "name: a\n"),
        ]);
        let errors = errors_of(load_dir(dir.path(), &no_env));
        assert!(
            has(
                &errors,
                "herdctl.yaml",
                "defaults.budget.daily_usd",
                "got the string \"many\""
            ),
            "{errors:#?}"
        );
    }

    #[test]
    fn defaults_deep_merge_then_overrides_apply_arrays_replace() {
        let dir = tree(&[
            (
                "herdctl.yaml",
                "defaults:\n  model: default-model\n  allowed_tools: [Read, Write]\n  session: {timeout: 1h, max_turns: 3}\n  work_source: {type: github, repo: o/r, labels: {ready: todo}}\n  max_concurrent: 4\nagents:\n  - path: agents/a.yaml\n    overrides:\n      allowed_tools: [Bash]\n      session: {model: override-model}\n      schedules: {tick: {interval: 2m}}\n",
            ),
            (
                "agents/a.yaml",
                "name: a\nworkspace: ../work\nmodel: own-model\nsession: {max_turns: 9}\nwork_source: {repo: me/mine}\nschedules:\n  tick: {type: interval, interval: 1m, work_source: {labels: {in_progress: busy}}}\n",
            ),
        ]);
        let fleet = load_dir(dir.path(), &no_env).unwrap();
        assert_eq!(fleet.max_concurrent, Some(4));
        let agent = fleet.agent("a").unwrap();
        assert_eq!(agent.model.as_deref(), Some("own-model"));
        assert_eq!(agent.allowed_tools, Some(vec!["Bash".to_string()]));
        assert_eq!(
            agent.session,
            SessionConfig {
                timeout: Some(Duration::from_secs(3600)),
                max_turns: Some(9),
                model: Some("override-model".to_string())
            }
        );
        assert_eq!(agent.working_directory, dir.path().join("work"));
        let source = agent.work_source.as_ref().unwrap();
        assert_eq!(
            (source.repo.as_str(), source.ready_label.as_str()),
            ("me/mine", "todo")
        );
        let tick = agent.schedule("tick").unwrap();
        assert_eq!(tick.kind, ScheduleKind::Interval(Duration::from_secs(120)));
        let tick_source = tick.work_source.as_ref().unwrap();
        assert_eq!(
            (
                tick_source.repo.as_str(),
                tick_source.ready_label.as_str(),
                tick_source.in_progress_label.as_str()
            ),
            ("me/mine", "todo", "busy")
        );
    }

    #[test]
    fn extensions_agent_settings_flow_into_schedules_which_win() {
        let dir = tree(&[(
            "agent.yaml",
            "name: worker\nruntime: command\ncommand: [sh, -c, 'echo hi']\nenv: {A: 1}\nconcurrency: 3\nmax_output_mb: 2\ntimeout: 30m\nstop_grace: 5s\ntimezone: Europe/Berlin\noverlap: queue\nschedules:\n  a: {type: cron, expression: '0 9 * * 1-5'}\n  b: {type: interval, interval: 1h, timeout: 1m, timezone: UTC, overlap: allow, catchup: none, enabled: false}\n",
        )]);
        let fleet = load_with(Some(Path::new("agent.yaml")), dir.path(), &no_env).unwrap();
        assert_eq!(fleet.config_path, dir.path().join("agent.yaml"));
        let agent = fleet.agent("worker").unwrap();
        assert_eq!(agent.concurrency, Some(3));
        assert_eq!(agent.max_output_bytes, Some(2 * 1024 * 1024));
        assert_eq!(
            agent.runtime,
            RuntimeConfig::Command {
                command: vec!["sh".into(), "-c".into(), "echo hi".into()],
                env: [("A".to_string(), "1".to_string())].into()
            }
        );
        let a = agent.schedule("a").unwrap();
        assert_eq!(a.kind.type_name(), "cron");
        assert_eq!(
            (a.timeout, a.stop_grace),
            (Some(Duration::from_secs(1800)), Duration::from_secs(5))
        );
        assert_eq!(
            (a.timezone, a.overlap, a.catchup, a.enabled),
            (
                Some(chrono_tz::Europe::Berlin),
                Overlap::Queue,
                Catchup::Latest,
                true
            )
        );
        let b = agent.schedule("b").unwrap();
        assert_eq!(
            (b.timeout, b.timezone, b.overlap, b.catchup, b.enabled),
            (
                Some(Duration::from_secs(60)),
                Some(chrono_tz::UTC),
                Overlap::Allow,
                Catchup::None,
                false
            )
        );
    }

    #[test]
    fn concurrency_alias_conflicts_and_command_misuse_are_errors() {
        let dir = tree(&[(
            "agent.yaml",
            "name: w\nconcurrency: 2\ninstances: {max_concurrent: 3}\ncommand: [x]\n",
        )]);
        let errors = errors_of(load_with(
            Some(&dir.path().join("agent.yaml")),
            dir.path(),
            &no_env,
        ));
        assert!(
            has(
                &errors,
                "agent.yaml",
                "concurrency",
                "both concurrency and instances.max_concurrent"
            ),
            "{errors:#?}"
        );
        assert!(
            has(
                &errors,
                "agent.yaml",
                "command",
                "only used with runtime: command"
            ),
            "{errors:#?}"
        );
    }

    #[test]
    fn directory_of_agent_files_is_a_fleet() {
        let dir = tree(&[("b.yaml", "name: b\n"), ("a.yml", "name: a\n")]);
        let fleet = load_dir(dir.path(), &no_env).unwrap();
        let names: Vec<&str> = fleet.agents.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(fleet.config_path, dir.path());
        assert_eq!(fleet.root_dir, dir.path());
    }

    #[test]
    fn unsupported_sections_warn_once_and_are_not_interpolated() {
        let dir = tree(&[
            (
                "herdctl.yaml",
                "web: {enabled: true}\nwebhooks: {enabled: true}\ndocker: {image: x}\nagents: [{path: a.yaml}, {path: b.yaml}]\n",
            ),
            (
                "a.yaml",
                "name: a\nchat: {discord: {bot_token_env: T, guilds: [{id: '${UNSET_GUILD}'}]}}\nplugins: [./p]\nschedules:\n  hook: {type: webhook}\n  out: {type: interval, interval: 1m, outputToFile: true}\n",
            ),
            ("b.yaml", "name: b\nchat: {slack: {}}\nplugins: [./q]\n"),
        ]);
        let fleet = load_dir(dir.path(), &no_env).unwrap();
        let messages: Vec<String> = fleet.warnings.iter().map(ToString::to_string).collect();
        for section in [
            "fleet-level web",
            "fleet-level webhooks",
            "chat",
            "plugins",
            "schedule type webhook",
            "outputToFile",
        ] {
            let count = messages
                .iter()
                .filter(|m| m.contains(&format!("not supported by herdctld: {section} ")))
                .count();
            assert_eq!(count, 1, "{section}: {messages:#?}");
        }
        assert!(messages.iter().any(|m| m.contains("a.yaml: chat: accepted, not supported by herdctld: chat (ignored); also in 1 other place")), "{messages:#?}");
        assert_eq!(
            fleet.agent("a").unwrap().schedule("hook").unwrap().kind,
            ScheduleKind::Webhook
        );
    }

    #[test]
    fn hooks_herdctld_does_not_run_are_reported_and_shell_hooks_are_not() {
        let dir = tree(&[(
            "a.yaml",
            "name: a\nhooks:\n  after_run:\n    - {type: shell, command: 'echo done'}\n    - {type: discord, channel_id: '1'}\n  on_error:\n    - {type: webhook, url: 'https://example.com/hook'}\n    - {type: slack, channel_id: C1}\n",
        )]);
        let fleet = load_dir(dir.path(), &no_env).unwrap();
        let messages: Vec<String> = fleet.warnings.iter().map(ToString::to_string).collect();
        for kind in ["discord hooks", "slack hooks"] {
            assert!(
                messages
                    .iter()
                    .any(|m| m.contains(&format!("not supported by herdctld: {kind} "))),
                "{kind}: {messages:#?}"
            );
        }
        assert!(
            !messages.iter().any(|m| m.contains("shell hooks")),
            "{messages:#?}"
        );
        assert_eq!(fleet.agent("a").unwrap().hooks.after_run.len(), 2);
    }

    #[test]
    fn sub_fleets_qualify_names_and_report_bad_names() {
        let dir = tree(&[
            ("herdctl.yaml", "fleets:\n  - path: team/herdctl.yaml\n  - path: other/herdctl.yaml\n    name: bad.name\nagents: [{path: a.yaml}]\n"),
            ("a.yaml", "name: a\n"),
            ("team/herdctl.yaml", "fleet: {name: team}\nfleets: [{path: inner/herdctl.yaml}]\nagents: [{path: a.yaml}]\n"),
            ("team/a.yaml", "name: a\n"),
            ("team/inner/herdctl.yaml", "agents: [{path: x.yaml}]\n"),
            ("team/inner/x.yaml", "name: x\n"),
            ("other/herdctl.yaml", "agents: []\n"),
        ]);
        let errors = errors_of(load_dir(dir.path(), &no_env));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(has(
            &errors,
            "herdctl.yaml",
            "fleets[1]",
            "invalid sub-fleet name \"bad.name\""
        ));

        fs::write(
            dir.path().join("herdctl.yaml"),
            "fleets:\n  - path: team/herdctl.yaml\nagents: [{path: a.yaml}]\n",
        )
        .unwrap();
        let fleet = load_dir(dir.path(), &no_env).unwrap();
        let names: Vec<&str> = fleet.agents.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["a", "team.a", "team.inner.x"]);
        assert_eq!(
            fleet.agent("team.inner.x").unwrap().fleet_path,
            ["team", "inner"]
        );
    }

    #[test]
    fn schedule_keys_herdctl_tolerates_load_with_a_warning() {
        let dir = tree(&[(
            "a.yaml",
            "name: a\nschedules:\n  hook: {type: webhook, path: /hooks/a, secret: s3cret}\n  tick: {type: interval, interval: 5m, concurrency: 2}\n",
        )]);
        let fleet = load_dir(dir.path(), &no_env).unwrap();
        let messages: Vec<String> = fleet.warnings.iter().map(ToString::to_string).collect();
        for path in [
            "schedules.hook.path",
            "schedules.hook.secret",
            "schedules.tick.concurrency",
        ] {
            assert!(
                messages.iter().any(|m| m
                    .contains(&format!("a.yaml: {path}: unknown schedule key"))
                    && m.contains("ignored")),
                "{path}: {messages:#?}"
            );
        }
        assert_eq!(fleet.agent("a").unwrap().schedules.len(), 2);
    }

    #[test]
    fn sections_herdctld_does_not_implement_are_validated_like_herdctl() {
        let dir = tree(&[
            (
                "herdctl.yaml",
                "web: {enabled: yes please, prot: 1, message_grouping: grouped}\nwebhooks: {port: '8081'}\ndocker: {network: hostt, volumes: ['/a:/b:rx'], user: bob}\nagents: [{path: a.yaml}]\n",
            ),
            (
                "a.yaml",
                "name: a\ndocker: {enabld: true, workspace_mode: rx, memory: lots, image: evil, tmpfs: [tmp], cpu_shares: 0}\nchat: {discord: {log_level: loud}}\nworking_directory: {root: ., clone_depth: deep, shallow: true}\n",
            ),
        ]);
        let errors = errors_of(load_dir(dir.path(), &no_env));
        let expected = [
            ("herdctl.yaml", "web.enabled", "expected true or false"),
            ("herdctl.yaml", "webhooks.port", "at least 1"),
            ("herdctl.yaml", "docker.network", "did you mean \"host\"?"),
            ("herdctl.yaml", "docker.volumes[0]", "invalid volumes entry"),
            ("herdctl.yaml", "docker.user", "invalid user"),
            (
                "a.yaml",
                "docker.enabld",
                "unknown key \"enabld\"; did you mean \"enabled\"?",
            ),
            ("a.yaml", "docker.workspace_mode", "invalid value \"rx\""),
            ("a.yaml", "docker.memory", "invalid memory"),
            ("a.yaml", "docker.tmpfs[0]", "invalid tmpfs entry"),
            ("a.yaml", "docker.cpu_shares", "at least 1"),
            ("a.yaml", "chat.discord.log_level", "invalid value \"loud\""),
            ("a.yaml", "working_directory.clone_depth", "at least 1"),
        ];
        for (file, path, text) in expected {
            assert!(
                has(&errors, file, path, text),
                "missing {file}: {path}: {text} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");

        // Unknown keys of herdctl's non-strict sections are dropped by herdctl, so they only warn.
        let dir = tree(&[
            ("herdctl.yaml", "web: {prot: 1}\nagents: [{path: a.yaml}]\n"),
            (
                "a.yaml",
                "name: a\nworking_directory: {root: ., shallow: true}\n",
            ),
        ]);
        let fleet = load_dir(dir.path(), &no_env).unwrap();
        let messages: Vec<String> = fleet.warnings.iter().map(ToString::to_string).collect();
        assert!(
            messages.iter().any(|m| m
                .contains("herdctl.yaml: web.prot: unknown key \"prot\" is ignored")
                && m.contains("did you mean \"port\"?")),
            "{messages:#?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("a.yaml: working_directory.shallow: unknown key")),
            "{messages:#?}"
        );

        // herdctl's own examples put fleet-only docker options in agent files; they load, with a warning.
        let dir = tree(&[("a.yaml", "name: a\ndocker: {image: img, network: host}\n")]);
        let fleet = load_dir(dir.path(), &no_env).unwrap();
        let messages: Vec<String> = fleet.warnings.iter().map(ToString::to_string).collect();
        assert!(messages.iter().any(|m| m.contains("a.yaml: docker.image: docker.image belongs in the fleet file")), "{messages:#?}");
        assert_eq!(
            fleet.agent("a").unwrap().docker.as_ref().unwrap().network,
            DockerNetwork::Host
        );
        // All but host_config, with which a job that can edit its own file could widen its container.
        let dir = tree(&[(
            "a.yaml",
            "name: a\ndocker: {enabled: true, host_config: {Privileged: true}}\n",
        )]);
        let refused = load_dir(dir.path(), &no_env).unwrap_err().to_string();
        assert!(
            refused.contains("docker.host_config belongs in the fleet file"),
            "{refused}"
        );
    }

    #[test]
    fn docker_resolves_to_typed_settings_with_defaults_deep_merged() {
        let dir = tree(&[
            (
                "herdctl.yaml",
                "docker: {image: fleet-image, network: none}\ndefaults:\n  docker: {enabled: true, image: 'img:${TAG}', memory: 1g, env: {A: b}, volumes: ['/data:/data:ro'], ports: ['8080:80']}\nagents: [{path: a.yaml}, {path: b.yaml}]\n",
            ),
            (
                "a.yaml",
                "name: a\ndocker: {memory: 512m, tmpfs: ['/tmp:size=64m'], labels: {team: x}, workspace_mode: ro, pids_limit: 100}\n",
            ),
            ("b.yaml", "name: b\ndocker: {enabled: false}\n"),
        ]);
        let env = |name: &str| (name == "TAG").then(|| "7".to_string());
        let fleet = load_dir(dir.path(), &env).unwrap();
        let docker = fleet.agent("a").unwrap().docker.clone().unwrap();
        assert_eq!(
            docker,
            DockerConfig {
                enabled: true,
                ephemeral: true,
                image: Some("img:7".to_string()),
                network: DockerNetwork::Bridge,
                memory_bytes: 512 * 1024 * 1024,
                cpu_shares: None,
                cpu_period: None,
                cpu_quota: None,
                pids_limit: Some(100),
                user: None,
                max_containers: 5,
                volumes: vec!["/data:/data:ro".to_string()],
                workspace_mode: WorkspaceMode::ReadOnly,
                env: [("A".to_string(), "b".to_string())].into(),
                ports: vec!["8080:80".to_string()],
                tmpfs: vec!["/tmp:size=64m".to_string()],
                labels: [("team".to_string(), "x".to_string())].into(),
                host_config: None,
            }
        );
        assert!(!fleet.agent("b").unwrap().docker.as_ref().unwrap().enabled);
        let fleet_docker = fleet.docker.as_ref().unwrap();
        assert_eq!(
            (fleet_docker.image.as_deref(), fleet_docker.network),
            (Some("fleet-image"), DockerNetwork::None)
        );
        let messages: Vec<String> = fleet.warnings.iter().map(ToString::to_string).collect();
        // Containers run now: enabling them is no longer a warning; the fleet's own section, which herdctl
        // applies to no agent, is.
        assert!(
            !messages.iter().any(|m| m.contains("docker.enabled")),
            "{messages:#?}"
        );
        assert!(
            messages.iter().any(|m| m.contains(
                "herdctl.yaml: docker: the fleet's top-level docker section applies to no agent"
            )),
            "{messages:#?}"
        );
        assert!(
            !messages
                .iter()
                .any(|m| m.contains("docker") && m.contains("(ignored)")),
            "{messages:#?}"
        );
    }

    #[test]
    fn docker_settings_that_cannot_be_honoured_are_refused_at_load() {
        let dir = tree(&[(
            "a.yaml",
            "name: a\ndocker: {enabled: true, ephemeral: false, ports: ['70000:80', '0'], labels: {herdctld.job-id: x}, host_config: {ShmSize: 64, NoSuchField: 1}}\n",
        )]);
        let errors = errors_of(load_dir(dir.path(), &no_env));
        for (path, needle) in [
            ("docker.ephemeral", "not supported by herdctld"),
            ("docker.ports[0]", "port numbers 1 to 65535"),
            ("docker.ports[1]", "port numbers 1 to 65535"),
            ("docker.labels.herdctld.job-id", "prefix is herdctld's own"),
            (
                "docker.host_config",
                "[\"NoSuchField\"] are not Docker HostConfig fields",
            ),
        ] {
            assert!(
                errors.iter().any(|e| e.1 == path && e.2.contains(needle)),
                "{path}: {errors:#?}"
            );
        }
        let dir = tree(&[(
            "a.yaml",
            "name: a\ndocker: {enabled: true, host_config: {Memory: lots}}\n",
        )]);
        let errors = errors_of(load_dir(dir.path(), &no_env));
        assert!(
            errors
                .iter()
                .any(|e| e.1 == "docker.host_config" && e.2.contains("not a Docker HostConfig")),
            "{errors:#?}"
        );
    }

    #[test]
    fn the_engine_socket_is_never_mounted_into_a_container() {
        let socket_dir = tempfile::tempdir().unwrap();
        let socket = socket_dir.path().join("engine.sock");
        let host = format!("unix://{}", socket.display());
        let env = |name: &str| (name == "DOCKER_HOST").then(|| host.clone());
        let fleet = format!(
            "defaults:\n  docker:\n    volumes: ['{dir}:/engine', '/data:/data']\n    host_config: {{Binds: ['{sock}:/s'], Mounts: [{{Type: bind, Source: /var/run/docker.sock, Target: /d}}]}}\nagents: [{{path: a.yaml}}, {{path: b.yaml}}]\n",
            dir = socket_dir.path().display(),
            sock = socket.display(),
        );
        let dir = tree(&[
            ("herdctl.yaml", fleet.as_str()),
            ("a.yaml", "name: a\ndocker: {enabled: true}\n"),
            ("b.yaml", "name: b\nworking_directory: /\n"),
        ]);
        let errors = errors_of(load_dir(dir.path(), &env));
        let refused: Vec<&str> = errors
            .iter()
            .filter(|e| e.2.contains("container engine's socket"))
            .map(|e| e.1.as_str())
            .collect();
        assert_eq!(
            refused,
            [
                "docker.volumes[0]",
                "docker.host_config.Binds[0]",
                "docker.host_config.Mounts[0]"
            ],
            "{errors:#?}"
        );
        // The same mounts in an agent that runs on the host mount nothing; a container of the root directory
        // would hold every socket.
        let dir = tree(&[
            ("herdctl.yaml", "agents: [{path: b.yaml}]\n"),
            (
                "b.yaml",
                "name: b\nworking_directory: /\ndocker: {enabled: true}\n",
            ),
        ]);
        let errors = errors_of(load_dir(dir.path(), &env));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].1, "working_directory");
    }

    #[test]
    fn mcp_servers_are_transformed_as_herdctl_does() {
        let dir = tree(&[(
            "a.yaml",
            "name: a\nmcp_servers:\n  remote: {url: 'https://mcp.example/mcp', headers: {X-Key: k}}\n  events: {type: sse, url: 'https://mcp.example/sse'}\n  local: {command: server, args: [], env: {}}\n  full: {command: server, args: [--port, '1'], env: {A: b}, timeout: 5000, alwaysLoad: true}\n",
        )]);
        let fleet = load_dir(dir.path(), &no_env).unwrap();
        assert_eq!(
            fleet.agent("a").unwrap().mcp_servers,
            Some(serde_json::json!({
                "remote": {"type": "http", "url": "https://mcp.example/mcp", "headers": {"X-Key": "k"}},
                "events": {"type": "sse", "url": "https://mcp.example/sse"},
                "local": {"command": "server"},
                "full": {"command": "server", "args": ["--port", "1"], "env": {"A": "b"}, "timeout": 5000, "alwaysLoad": true},
            }))
        );
        let dir = tree(&[(
            "a.yaml",
            "name: a\nmcp_servers: {bad: {command: 5, alwaysLoad: often}}\n",
        )]);
        let errors = errors_of(load_dir(dir.path(), &no_env));
        assert!(
            has(
                &errors,
                "a.yaml",
                "mcp_servers.bad.command",
                "expected a string"
            ),
            "{errors:#?}"
        );
        assert!(
            has(
                &errors,
                "a.yaml",
                "mcp_servers.bad.alwaysLoad",
                "expected true or false"
            ),
            "{errors:#?}"
        );
    }
}
