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
use super::resolved::{AgentConfig, DotEnv, FleetConfig};
use super::validate::{build_agent, describe, get, is_valid_name, AgentPlace, Reader, Warnings};

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
        dotenv,
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

#[derive(Debug, Default)]
struct FleetMeta {
    name: Option<String>,
    description: Option<String>,
    max_concurrent: Option<u32>,
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
        for section in UNSUPPORTED_FLEET_SECTIONS {
            if let Some(value) = get(&tree, section) {
                if value.is_mapping() || (*section == "working_directory" && value.is_string()) {
                    reader.unsupported(section, &format!("fleet-level {section}"));
                } else {
                    reader.error(
                        section,
                        format!("expected a mapping, got {}", describe(value)),
                    );
                }
            }
        }
        let mut meta = FleetMeta::default();
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
                own.remove("max_concurrent");
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
        if !fleet_path.is_empty() && fleet_cap.is_some() {
            reader.warn(
                "defaults",
                "max_concurrent in a sub-fleet is ignored; the fleet-wide cap is set in the root fleet file",
            );
            fleet_cap = None;
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
