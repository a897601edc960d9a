//! Fleet configuration: locating, reading, interpolating, merging and validating herdctl-compatible YAML
//! into a [`FleetConfig`], and diffing two configurations for reloads.
//!
//! Owns everything about the configuration *files*; the rest of the daemon only sees the resolved types in
//! (`FleetConfig`, `AgentConfig`, …), which are fully validated (nothing is checked lazily at fire time). Does not start anything,
//! does not touch the state directory and never modifies the process environment.
//!
//! Public API:
//! - [`load`] / [`load_with`]: locate and load a fleet, returning every problem at once in a [`ConfigError`].
//! - [`diff`]: the behavioural changes between two loaded fleets, as [`ConfigChange`]s.
//! - The resolved types ([`FleetConfig`], [`AgentConfig`], [`ScheduleConfig`], …) and [`parse_dotenv`].
//!
//! Submodules: `locate` (finding the files), `raw` (YAML shape, key tables, aliases), `interpolate`
//! (`.env`, `${VAR}`), `merge` (defaults/overrides with provenance), `validate` (building typed agents),
//! `load` (the pipeline and sub-fleets), `resolved` (output types), `diff`, `error`.

mod diff;
mod error;
mod interpolate;
mod load;
mod locate;
mod merge;
mod raw;
mod resolved;
mod validate;

use std::path::Path;

pub use diff::{diff, ChangeCategory, ChangeKind, ConfigChange};
pub use error::{ConfigError, ValidationError};
pub use interpolate::{parse_dotenv, EnvLookup};
pub use load::load_with;
pub use locate::FLEET_FILE_NAMES;
pub use resolved::*;

/// Loads the fleet at `path` (a fleet file, a directory containing `herdctl.yaml`/`herdctl.yml`, a directory
/// of agent files, or one agent file), or, with `None`, the nearest `herdctl.yaml`/`.yml` in the current
/// directory or its parents. Variables come from the process environment, then from `.env` beside the fleet
/// file.
pub fn load(path: Option<&Path>) -> Result<FleetConfig, ConfigError> {
    let cwd = std::env::current_dir().map_err(|error| ConfigError::Invalid {
        config_path: path.map(Path::to_path_buf).unwrap_or_default(),
        errors: vec![ValidationError {
            file: path.map(Path::to_path_buf).unwrap_or_default(),
            path: String::new(),
            message: format!("cannot determine the current directory: {error}"),
        }],
    })?;
    let env = |name: &str| std::env::var(name).ok();
    load_with(path, &cwd, &env)
}
