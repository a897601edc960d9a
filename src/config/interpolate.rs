//! Environment for configuration files: the `.env` parser and `${VAR}` / `${VAR:-default}` interpolation.
//!
//! Never reads or modifies the process environment itself: the caller passes a lookup function, so tests
//! and reloads are deterministic and nothing mutates global state in a multi-threaded daemon.

use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml_ng::Value;

use super::error::{index, join, Errors};

/// Looks up an environment variable by name.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Parses a `.env` file: `KEY=VALUE` lines, optional `export ` prefix, `#` comments, single-quoted (literal)
/// and double-quoted (with `\n`, `\t`, `\"`, `\\` escapes) values. Returns the variables and, for each line
/// that is not of that form, its line number and what is wrong with it.
pub fn parse_dotenv(text: &str) -> (BTreeMap<String, String>, Vec<(usize, String)>) {
    let mut variables = BTreeMap::new();
    let mut problems = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, raw_value)) = line.split_once('=') else {
            problems.push((number + 1, "expected KEY=VALUE".to_string()));
            continue;
        };
        let key = key.trim();
        if !is_variable_name(key) {
            problems.push((number + 1, format!("{key:?} is not a variable name")));
            continue;
        }
        match parse_dotenv_value(raw_value.trim()) {
            Ok(value) => {
                variables.insert(key.to_string(), value);
            }
            Err(problem) => problems.push((number + 1, problem)),
        }
    }
    (variables, problems)
}

fn parse_dotenv_value(raw: &str) -> Result<String, String> {
    if let Some(rest) = raw.strip_prefix('\'') {
        return rest
            .split_once('\'')
            .map(|(value, _)| value.to_string())
            .ok_or_else(|| "unterminated single quote".to_string());
    }
    if let Some(rest) = raw.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Ok(value),
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some('t') => value.push('\t'),
                    Some(other) => value.push(other),
                    None => break,
                },
                other => value.push(other),
            }
        }
        return Err("unterminated double quote".to_string());
    }
    // Unquoted: an inline comment starts at a `#` preceded by whitespace.
    let value = match raw.find(" #").or_else(|| raw.find("\t#")) {
        Some(position) => &raw[..position],
        None => raw,
    };
    Ok(value.trim().to_string())
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Substitutes every `${VAR}` and `${VAR:-default}` in `text`. An empty value counts as set; the default is
/// used only when the variable is unset. Text that does not have that exact form (`${1X}`, an unclosed `${`)
/// is left as written, as herdctl does. Unset variables without a default are reported at `path`.
pub(crate) fn interpolate_str(
    text: &str,
    env: EnvLookup<'_>,
    file: &Path,
    path: &str,
    errors: &mut Errors,
) -> String {
    let mut output = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        output.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match parse_reference(after) {
            Some((name, default, consumed)) => {
                match (env(name), default) {
                    (Some(value), _) => output.push_str(&value),
                    (None, Some(default)) => output.push_str(default),
                    (None, None) => errors.push(
                        file,
                        path,
                        format!("environment variable {name} is not set and has no default (set it, add it to .env, or write ${{{name}:-default}})"),
                    ),
                }
                rest = &after[consumed..];
            }
            None => {
                output.push_str("${");
                rest = after;
            }
        }
    }
    output.push_str(rest);
    output
}

/// Parses `NAME}` or `NAME:-default}` at the start of `text`; returns the name, the default and the number
/// of bytes consumed including the closing brace.
fn parse_reference(text: &str) -> Option<(&str, Option<&str>, usize)> {
    let name_end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    let name = &text[..name_end];
    if !is_variable_name(name) {
        return None;
    }
    let tail = &text[name_end..];
    if tail.starts_with('}') {
        return Some((name, None, name_end + 1));
    }
    let default_text = tail.strip_prefix(":-")?;
    let close = default_text.find('}')?;
    Some((name, Some(&default_text[..close]), name_end + 2 + close + 1))
}

/// Interpolates every string value (not keys) in `value`, which sits at `path` in `file`. Subtrees whose
/// path `skip` accepts are left untouched (sections herdctld does not use, so their variables need not be set).
pub(crate) fn interpolate_tree(
    value: &mut Value,
    env: EnvLookup<'_>,
    file: &Path,
    path: &str,
    skip: &dyn Fn(&str) -> bool,
    errors: &mut Errors,
) {
    if skip(path) {
        return;
    }
    match value {
        Value::String(text) => {
            if text.contains("${") {
                *text = interpolate_str(text, env, file, path, errors);
            }
        }
        Value::Sequence(items) => {
            for (position, item) in items.iter_mut().enumerate() {
                interpolate_tree(item, env, file, &index(path, position), skip, errors);
            }
        }
        Value::Mapping(mapping) => {
            for (key, item) in mapping.iter_mut() {
                let key_text = key_display(key);
                interpolate_tree(item, env, file, &join(path, &key_text), skip, errors);
            }
        }
        Value::Tagged(tagged) => interpolate_tree(&mut tagged.value, env, file, path, skip, errors),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A mapping key as it appears in a dotted path.
pub(crate) fn key_display(key: &Value) -> String {
    match key {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Null => "null".to_string(),
        _ => "?".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn run(text: &str, env: &dyn Fn(&str) -> Option<String>) -> (String, Vec<String>) {
        let mut errors = Errors::default();
        let out = interpolate_str(text, env, Path::new("f.yaml"), "a.b[0]", &mut errors);
        (out, errors.0.into_iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn substitutes_set_variables_and_defaults() {
        let env = lookup(&[("HOST", "example.org"), ("EMPTY", "")]);
        assert_eq!(
            run("https://${HOST}:${PORT:-8080}/", &env).0,
            "https://example.org:8080/"
        );
        // An empty value counts as set: the default is not used.
        assert_eq!(run("[${EMPTY:-fallback}]", &env).0, "[]");
        assert_eq!(run("${HOST:-}", &env).0, "example.org");
        assert_eq!(run("${UNSET:-}", &env).0, "");
    }

    #[test]
    fn unset_without_default_names_the_path() {
        let env = lookup(&[]);
        let (_, errors) = run("token ${API_TOKEN} and ${OTHER}", &env);
        assert_eq!(errors.len(), 2);
        assert!(errors[0].starts_with("f.yaml: a.b[0]: environment variable API_TOKEN is not set"));
        assert!(errors[1].contains("OTHER"));
    }

    #[test]
    fn text_that_is_not_a_reference_is_kept() {
        let env = lookup(&[]);
        assert_eq!(
            run("cost $5 ${1X} ${unclosed", &env),
            ("cost $5 ${1X} ${unclosed".to_string(), vec![])
        );
    }

    #[test]
    fn tree_paths_are_dotted_and_indexed_and_skips_apply() {
        let mut tree: Value = serde_yaml_ng::from_str(
            "hooks:\n  after_run:\n    - url: ${A}\nchat:\n  token: ${B}\n",
        )
        .unwrap();
        let mut errors = Errors::default();
        let env = lookup(&[]);
        interpolate_tree(
            &mut tree,
            &env,
            Path::new("agent.yaml"),
            "",
            &|p| p == "chat",
            &mut errors,
        );
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].path, "hooks.after_run[0].url");
    }

    #[test]
    fn dotenv_forms() {
        let (vars, problems) = parse_dotenv(
            "# comment\nexport A=1\nB = two words # trailing\nC=\"quoted # not comment\\nline\"\nD='lit $X \\n'\nE=\nbad line\n9X=1\n",
        );
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two words");
        assert_eq!(vars["C"], "quoted # not comment\nline");
        assert_eq!(vars["D"], "lit $X \\n");
        assert_eq!(vars["E"], "");
        assert_eq!(
            problems.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![7, 8]
        );
    }
}
