//! Finding what to load from `--config` (or its absence): a fleet file, a directory containing one, a
//! directory of agent files, or a single agent file; without a path, the nearest `herdctl.yaml`/`.yml` in
//! the current directory or its parents. Reads directories and, to tell a fleet file from an agent file, the
//! file's top-level keys; parses nothing else.

use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use super::error::{ConfigError, Errors};

/// File names of a fleet file, in order of preference within one directory.
pub const FLEET_FILE_NAMES: [&str; 2] = ["herdctl.yaml", "herdctl.yml"];

/// What `--config` designates. Every path is absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Located {
    FleetFile(PathBuf),
    /// A directory without a fleet file, holding agent files (sorted by name).
    AgentDirectory {
        dir: PathBuf,
        files: Vec<PathBuf>,
    },
    AgentFile(PathBuf),
}

impl Located {
    /// The path reported as the fleet's `config_path`.
    pub(crate) fn config_path(&self) -> &Path {
        match self {
            Located::FleetFile(path) | Located::AgentFile(path) => path,
            Located::AgentDirectory { dir, .. } => dir,
        }
    }
}

/// Resolves `path` (relative to `cwd`) or searches upward from `cwd`.
pub(crate) fn locate(path: Option<&Path>, cwd: &Path) -> Result<Located, ConfigError> {
    let Some(path) = path else {
        return search_upward(cwd);
    };
    let path = absolute(cwd, path);
    if path.is_dir() {
        if let Some(fleet_file) = fleet_file_in(&path) {
            return Ok(Located::FleetFile(fleet_file));
        }
        let files = yaml_files_in(&path).map_err(|message| invalid(&path, message))?;
        if files.is_empty() {
            return search_upward(&path);
        }
        return Ok(Located::AgentDirectory { dir: path, files });
    }
    if !path.exists() {
        return Err(invalid(
            &path,
            "file not found (pass a fleet file, a directory containing herdctl.yaml, a directory of agent files, or an agent file)",
        ));
    }
    if is_agent_file(&path) {
        Ok(Located::AgentFile(path))
    } else {
        Ok(Located::FleetFile(path))
    }
}

fn invalid(path: &Path, message: &str) -> ConfigError {
    let mut errors = Errors::default();
    errors.push(path, "", message);
    ConfigError::Invalid {
        config_path: path.to_path_buf(),
        errors: errors.0,
    }
}

fn absolute(cwd: &Path, path: &Path) -> PathBuf {
    normalize(&cwd.join(path))
}

/// Removes `.` and resolves `..` lexically (the path may not exist yet, so no canonicalisation).
pub(crate) fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(component);
                }
            }
            other => out.push(other),
        }
    }
    out
}

fn fleet_file_in(dir: &Path) -> Option<PathBuf> {
    FLEET_FILE_NAMES
        .iter()
        .map(|name| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn search_upward(start: &Path) -> Result<Located, ConfigError> {
    let mut searched = Vec::new();
    for dir in start.ancestors() {
        if let Some(found) = fleet_file_in(dir) {
            return Ok(Located::FleetFile(found));
        }
        searched.extend(FLEET_FILE_NAMES.iter().map(|name| dir.join(name)));
    }
    Err(ConfigError::NotFound { searched })
}

fn yaml_files_in(dir: &Path) -> Result<Vec<PathBuf>, &'static str> {
    let entries = std::fs::read_dir(dir).map_err(|_| "cannot read directory")?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.is_file()
                && path
                    .extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// An agent file has a top-level `name` and none of the fleet file's structural keys. Unreadable or
/// unparsable files count as fleet files; the loader then reports the real problem.
fn is_agent_file(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(Value::Mapping(top)) = serde_yaml_ng::from_str::<Value>(&text) else {
        return false;
    };
    let has = |key: &str| top.contains_key(key);
    has("name")
        && !["agents", "fleets", "fleet", "defaults", "version"]
            .iter()
            .any(|key| has(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn the_four_ways_and_the_upward_search() {
        let root = tempfile::tempdir().unwrap();
        let root_path = root.path();
        fs::write(root_path.join("herdctl.yml"), "agents: []\n").unwrap();
        fs::write(root_path.join("herdctl.yaml"), "agents: []\n").unwrap();
        let agents = root_path.join("agents");
        fs::create_dir(&agents).unwrap();
        fs::write(agents.join("b.yaml"), "name: b\n").unwrap();
        fs::write(agents.join("a.yml"), "name: a\n").unwrap();
        fs::write(agents.join("notes.txt"), "x").unwrap();
        let deep = agents.join("empty/deeper");
        fs::create_dir_all(&deep).unwrap();

        // A fleet file, given directly (relative to cwd).
        assert_eq!(
            locate(Some(Path::new("herdctl.yml")), root_path).unwrap(),
            Located::FleetFile(root_path.join("herdctl.yml"))
        );
        // A directory containing one: .yaml wins over .yml.
        assert_eq!(
            locate(Some(root_path), Path::new("/")).unwrap(),
            Located::FleetFile(root_path.join("herdctl.yaml"))
        );
        // A directory of agent files.
        assert_eq!(
            locate(Some(Path::new("agents")), root_path).unwrap(),
            Located::AgentDirectory {
                dir: agents.clone(),
                files: vec![agents.join("a.yml"), agents.join("b.yaml")]
            }
        );
        // A single agent file.
        assert_eq!(
            locate(Some(&agents.join("b.yaml")), root_path).unwrap(),
            Located::AgentFile(agents.join("b.yaml"))
        );
        // No path: search upward from a nested directory.
        assert_eq!(
            locate(None, &deep).unwrap(),
            Located::FleetFile(root_path.join("herdctl.yaml"))
        );
    }

    #[test]
    fn nothing_found_lists_what_was_searched() {
        let root = tempfile::tempdir().unwrap();
        let error = locate(None, root.path()).unwrap_err();
        let ConfigError::NotFound { searched } = &error else {
            panic!("expected NotFound, got {error:?}");
        };
        assert_eq!(searched[0], root.path().join("herdctl.yaml"));
        assert_eq!(searched.last().unwrap(), Path::new("/herdctl.yml"));
        let message = error.to_string();
        assert!(message.contains("no herdctl.yaml found in"), "{message}");
        assert!(message.contains("--config PATH"), "{message}");
    }

    #[test]
    fn a_missing_path_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let error = locate(Some(Path::new("nope.yaml")), root.path()).unwrap_err();
        assert!(
            error.to_string().contains("nope.yaml: file not found"),
            "{error}"
        );
    }
}
