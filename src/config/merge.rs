//! Deep merge of YAML trees (fleet `defaults`, the agent file, per-agent `overrides`) that remembers where
//! every merged value was written, so an error in the merged agent names the file and path the user must
//! edit, and relative paths resolve against the directory of the file they were written in.
//!
//! Merge rules (herdctl's): the overlay wins; mappings merge key by key, recursively; sequences and scalars
//! replace. An explicit `null` in the overlay removes the key (herdctl's examples write `after_run:` with no
//! value in `overrides` to drop the agent's hooks).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

use super::error::join;
use super::interpolate::key_display;

/// Where a value was written: a file and the dotted path inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    pub file: PathBuf,
    pub path: String,
}

/// For a tree assembled from several sources: the origin of each subtree that was copied in, keyed by its
/// path in the assembled tree. Paths without a recorded ancestor come from `fallback`.
#[derive(Debug, Clone)]
pub(crate) struct Origins {
    fallback: Origin,
    entries: BTreeMap<String, Origin>,
}

impl Origins {
    /// A tree that is entirely `file`'s subtree at `path`.
    pub(crate) fn new(file: &Path, path: &str) -> Origins {
        Origins {
            fallback: Origin {
                file: file.to_path_buf(),
                path: path.to_string(),
            },
            entries: BTreeMap::new(),
        }
    }

    /// Where the value at `path` (in this tree) was written.
    pub(crate) fn locate(&self, path: &str) -> Origin {
        let nearest = self
            .entries
            .range::<str, _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(path)))
            .rev()
            .find(|(key, _)| is_ancestor(key, path));
        let (base, remainder) = match nearest {
            Some((key, origin)) => (origin, &path[key.len()..]),
            None => (&self.fallback, path),
        };
        Origin {
            file: base.file.clone(),
            path: append_path(&base.path, remainder),
        }
    }

    /// Records that the subtree at `path` now comes from `source`'s subtree at `source_path`.
    fn copy_from(&mut self, path: &str, source: &Origins, source_path: &str) {
        self.entries.retain(|key, _| !is_ancestor(path, key));
        self.entries
            .insert(path.to_string(), source.locate(source_path));
        for (key, origin) in &source.entries {
            if key != source_path && is_ancestor(source_path, key) {
                let relocated = format!("{path}{}", &key[source_path.len()..]);
                self.entries.insert(relocated, origin.clone());
            }
        }
    }

    fn forget(&mut self, path: &str) {
        self.entries.retain(|key, _| !is_ancestor(path, key));
    }
}

/// Whether `ancestor` is `path` or a path above it (on a segment boundary).
fn is_ancestor(ancestor: &str, path: &str) -> bool {
    if ancestor.is_empty() {
        return true;
    }
    match path.strip_prefix(ancestor) {
        Some(rest) => rest.is_empty() || rest.starts_with('.') || rest.starts_with('['),
        None => false,
    }
}

/// `base` followed by a remainder that starts with `.`/`[` or is a bare key (when the ancestor was the root).
fn append_path(base: &str, remainder: &str) -> String {
    let remainder = remainder.strip_prefix('.').unwrap_or(remainder);
    if base.is_empty() || remainder.is_empty() || remainder.starts_with('[') {
        format!("{base}{remainder}")
    } else {
        format!("{base}.{remainder}")
    }
}

/// A tree together with the origins of its parts.
#[derive(Debug, Clone)]
pub(crate) struct Sourced {
    pub tree: Mapping,
    pub origins: Origins,
}

impl Sourced {
    /// An empty tree; values not merged in later are attributed to `fallback_file` at `fallback_path`.
    pub(crate) fn empty(fallback_file: &Path, fallback_path: &str) -> Sourced {
        Sourced {
            tree: Mapping::new(),
            origins: Origins::new(fallback_file, fallback_path),
        }
    }

    /// A tree that is `file`'s subtree at `path`.
    pub(crate) fn from_file(tree: Mapping, file: &Path, path: &str) -> Sourced {
        Sourced {
            tree,
            origins: Origins::new(file, path),
        }
    }

    /// Merges `overlay` over this tree (the overlay wins).
    pub(crate) fn merge(&mut self, overlay: &Sourced) {
        merge_mapping(
            &mut self.tree,
            &overlay.tree,
            "",
            &mut self.origins,
            &overlay.origins,
        );
    }
}

fn merge_mapping(
    base: &mut Mapping,
    overlay: &Mapping,
    path: &str,
    base_origins: &mut Origins,
    overlay_origins: &Origins,
) {
    for (key, value) in overlay {
        let child = join(path, &key_display(key));
        match (base.get_mut(key), value) {
            (_, Value::Null) => {
                base.remove(key);
                base_origins.forget(&child);
            }
            (Some(Value::Mapping(base_child)), Value::Mapping(overlay_child)) => {
                merge_mapping(
                    base_child,
                    overlay_child,
                    &child,
                    base_origins,
                    overlay_origins,
                );
            }
            _ => {
                base.insert(key.clone(), value.clone());
                base_origins.copy_from(&child, overlay_origins, &child);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(text: &str) -> Mapping {
        serde_yaml_ng::from_str(text).unwrap()
    }

    #[test]
    fn overlay_wins_objects_merge_arrays_replace_null_removes() {
        let mut merged = Sourced::from_file(
            tree("model: a\nsession: {timeout: 1h, max_turns: 3}\ntools: [A, B]\nhooks: {after_run: [x]}\n"),
            Path::new("fleet.yaml"),
            "defaults",
        );
        merged.merge(&Sourced::from_file(
            tree("model: b\nsession: {max_turns: 5}\ntools: [C]\nhooks: {after_run: null}\n"),
            Path::new("agent.yaml"),
            "",
        ));
        let expected =
            tree("model: b\nsession: {timeout: 1h, max_turns: 5}\ntools: [C]\nhooks: {}\n");
        assert_eq!(merged.tree, expected);
    }

    #[test]
    fn origins_follow_the_values() {
        let mut merged = Sourced::empty(Path::new("agent.yaml"), "");
        merged.merge(&Sourced::from_file(
            tree("session: {timeout: 1h}\nworking_directory: ./w\n"),
            Path::new("fleet.yaml"),
            "defaults",
        ));
        merged.merge(&Sourced::from_file(
            tree("name: x\nschedules: {check: {type: interval, interval: 5m}}\n"),
            Path::new("agent.yaml"),
            "",
        ));
        merged.merge(&Sourced::from_file(
            tree("schedules: {check: {interval: 2x}}\n"),
            Path::new("fleet.yaml"),
            "agents[3].overrides",
        ));
        let at = |path: &str| {
            let origin = merged.origins.locate(path);
            format!("{}:{}", origin.file.display(), origin.path)
        };
        assert_eq!(at("session.timeout"), "fleet.yaml:defaults.session.timeout");
        assert_eq!(
            at("working_directory"),
            "fleet.yaml:defaults.working_directory"
        );
        assert_eq!(
            at("schedules.check.type"),
            "agent.yaml:schedules.check.type"
        );
        assert_eq!(
            at("schedules.check.interval"),
            "fleet.yaml:agents[3].overrides.schedules.check.interval"
        );
        assert_eq!(at("schedules.other"), "agent.yaml:schedules.other");
    }

    #[test]
    fn cascaded_origins_are_carried_over() {
        let mut parent = Sourced::from_file(
            tree("session: {timeout: 1h}\n"),
            Path::new("root.yaml"),
            "defaults",
        );
        parent.merge(&Sourced::from_file(
            tree("model: m\n"),
            Path::new("sub.yaml"),
            "defaults",
        ));
        let mut agent = Sourced::empty(Path::new("agent.yaml"), "");
        agent.merge(&parent);
        assert_eq!(
            agent.origins.locate("session.timeout").file,
            Path::new("root.yaml")
        );
        assert_eq!(agent.origins.locate("model").path, "defaults.model");
        assert_eq!(agent.origins.locate("model").file, Path::new("sub.yaml"));
    }
}
