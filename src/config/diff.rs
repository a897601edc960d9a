//! Differences between two loaded fleets, for reloads: agents and schedules added or removed, and every
//! behaviour-affecting field that changed, one change per field.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::resolved::*;
use crate::timespec::format_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Removed,
    Modified,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeCategory {
    Agent,
    Schedule,
    /// A fleet-wide setting of the root fleet file (`defaults.max_concurrent`, the history limits).
    Fleet,
}

/// One change. Serialises with herdctl's field names (`type`, `category`, `name`, `details`) plus `field`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChange {
    #[serde(rename = "type")]
    pub kind: ChangeKind,
    pub category: ChangeCategory,
    /// The qualified agent name, or `agent/schedule` for schedules (herdctl's convention).
    pub name: String,
    /// The changed field (`model`, `interval`, `session.timeout`) for `Modified`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Old and new value when they are short (`5m → 10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl fmt::Display for ConfigChange {
    /// `agent:NAME[:schedule:SCHEDULE][:FIELD] added|removed|changed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.category {
            ChangeCategory::Agent => write!(f, "agent:{}", self.name)?,
            // `fleet:defaults.max_jobs_total changed`.
            ChangeCategory::Fleet => {
                write!(f, "fleet:{}", self.name)?;
                if let Some(field) = &self.field {
                    write!(f, ".{field}")?;
                }
                return write!(f, " changed");
            }
            ChangeCategory::Schedule => {
                // Agent names never contain '/', schedule names may.
                let (agent, schedule) = self.name.split_once('/').unwrap_or((&self.name, ""));
                write!(f, "agent:{agent}:schedule:{schedule}")?;
            }
        }
        if let Some(field) = &self.field {
            write!(f, ":{field}")?;
        }
        let verb = match self.kind {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Modified => "changed",
        };
        write!(f, " {verb}")
    }
}

/// Every change from `old` to `new`: removed agents, then for each agent of `new` in order, added or its
/// modified fields and schedules.
pub fn diff(old: &FleetConfig, new: &FleetConfig) -> Vec<ConfigChange> {
    let mut changes = Vec::new();
    let mut fleet = FieldDiff {
        changes: &mut changes,
        category: ChangeCategory::Fleet,
        name: "defaults".to_string(),
    };
    fleet.shown(
        "max_concurrent",
        &old.max_concurrent,
        &new.max_concurrent,
        number,
    );
    fleet.shown(
        "max_jobs_per_agent",
        &old.history.max_jobs_per_agent,
        &new.history.max_jobs_per_agent,
        number,
    );
    fleet.shown(
        "max_jobs_total",
        &old.history.max_jobs_total,
        &new.history.max_jobs_total,
        number,
    );
    fleet.shown(
        "max_job_age",
        &old.history.max_job_age,
        &new.history.max_job_age,
        duration,
    );
    for agent in &old.agents {
        if new.agent(&agent.name).is_none() {
            changes.push(whole(
                ChangeKind::Removed,
                ChangeCategory::Agent,
                agent.name.clone(),
            ));
            for schedule in &agent.schedules {
                changes.push(whole(
                    ChangeKind::Removed,
                    ChangeCategory::Schedule,
                    schedule_key(agent, schedule),
                ));
            }
        }
    }
    for agent in &new.agents {
        match old.agent(&agent.name) {
            None => {
                changes.push(whole(
                    ChangeKind::Added,
                    ChangeCategory::Agent,
                    agent.name.clone(),
                ));
                for schedule in &agent.schedules {
                    changes.push(whole(
                        ChangeKind::Added,
                        ChangeCategory::Schedule,
                        schedule_key(agent, schedule),
                    ));
                }
            }
            Some(before) => diff_agent(before, agent, &mut changes),
        }
    }
    changes
}

fn whole(kind: ChangeKind, category: ChangeCategory, name: String) -> ConfigChange {
    ConfigChange {
        kind,
        category,
        name,
        field: None,
        details: None,
    }
}

fn schedule_key(agent: &AgentConfig, schedule: &ScheduleConfig) -> String {
    format!("{}/{}", agent.name, schedule.name)
}

/// Collects field changes of one agent or schedule.
struct FieldDiff<'a> {
    changes: &'a mut Vec<ConfigChange>,
    category: ChangeCategory,
    name: String,
}

impl FieldDiff<'_> {
    /// A change without values in the details (long or structured fields).
    fn opaque<T: PartialEq>(&mut self, field: &str, old: &T, new: &T) {
        if old != new {
            self.push(field, None);
        }
    }

    /// A change with `old → new` in the details.
    fn shown<T: PartialEq>(&mut self, field: &str, old: &T, new: &T, show: impl Fn(&T) -> String) {
        if old != new {
            self.push(field, Some(format!("{} → {}", show(old), show(new))));
        }
    }

    fn push(&mut self, field: &str, details: Option<String>) {
        self.changes.push(ConfigChange {
            kind: ChangeKind::Modified,
            category: self.category,
            name: self.name.clone(),
            field: Some(field.to_string()),
            details,
        });
    }
}

fn text(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "none".to_string())
}

fn number(value: &Option<u32>) -> String {
    value.map_or_else(|| "none".to_string(), |n| n.to_string())
}

fn duration(value: &Option<Duration>) -> String {
    value.map_or_else(|| "none".to_string(), format_duration)
}

fn diff_agent(old: &AgentConfig, new: &AgentConfig, changes: &mut Vec<ConfigChange>) {
    let mut fields = FieldDiff {
        changes,
        category: ChangeCategory::Agent,
        name: new.name.clone(),
    };
    fields.opaque("description", &old.description, &new.description);
    fields.shown(
        "working_directory",
        &old.working_directory,
        &new.working_directory,
        |p| p.display().to_string(),
    );
    fields.opaque("system_prompt", &old.system_prompt, &new.system_prompt);
    fields.opaque("default_prompt", &old.default_prompt, &new.default_prompt);
    fields.shown("model", &old.model, &new.model, text);
    fields.shown("max_turns", &old.max_turns, &new.max_turns, number);
    fields.shown(
        "permission_mode",
        &old.permission_mode,
        &new.permission_mode,
        |mode| mode.map_or_else(|| "none".to_string(), |mode| mode.to_string()),
    );
    fields.opaque("tools", &old.tools, &new.tools);
    fields.opaque("allowed_tools", &old.allowed_tools, &new.allowed_tools);
    fields.opaque("denied_tools", &old.denied_tools, &new.denied_tools);
    fields.opaque("mcp_servers", &old.mcp_servers, &new.mcp_servers);
    fields.opaque(
        "setting_sources",
        &old.setting_sources,
        &new.setting_sources,
    );
    fields.shown(
        "session.timeout",
        &old.session.timeout,
        &new.session.timeout,
        duration,
    );
    fields.shown(
        "session.max_turns",
        &old.session.max_turns,
        &new.session.max_turns,
        number,
    );
    fields.shown(
        "session.model",
        &old.session.model,
        &new.session.model,
        text,
    );
    fields.shown("concurrency", &old.concurrency, &new.concurrency, |n| {
        n.map_or_else(|| "the fleet's default".to_string(), |n| n.to_string())
    });
    fields.shown("timezone", &old.timezone, &new.timezone, |tz| {
        tz.map_or_else(|| "the host's".to_string(), |tz| tz.name().to_string())
    });
    fields.shown("budget.daily_usd", &old.budget, &new.budget, |budget| {
        budget.map_or_else(|| "none".to_string(), |b| b.daily_usd.to_string())
    });
    fields.opaque("runtime", &old.runtime, &new.runtime);
    fields.shown("timeout", &old.timeout, &new.timeout, duration);
    fields.shown("stop_grace", &old.stop_grace, &new.stop_grace, |d| {
        format_duration(*d)
    });
    fields.opaque(
        "max_output_mb",
        &old.max_output_bytes,
        &new.max_output_bytes,
    );
    fields.opaque("executor", &old.executor, &new.executor);
    fields.opaque("work_source", &old.work_source, &new.work_source);
    fields.opaque("hooks", &old.hooks, &new.hooks);
    fields.opaque("identity", &old.identity, &new.identity);
    fields.shown("repo", &old.repo, &new.repo, text);
    fields.shown(
        "metadata_file",
        &old.metadata_file,
        &new.metadata_file,
        text,
    );
    fields.opaque("docker", &old.docker, &new.docker);

    for schedule in &old.schedules {
        if new.schedule(&schedule.name).is_none() {
            changes.push(whole(
                ChangeKind::Removed,
                ChangeCategory::Schedule,
                schedule_key(old, schedule),
            ));
        }
    }
    for schedule in &new.schedules {
        match old.schedule(&schedule.name) {
            None => changes.push(whole(
                ChangeKind::Added,
                ChangeCategory::Schedule,
                schedule_key(new, schedule),
            )),
            Some(before) => diff_schedule(before, schedule, schedule_key(new, schedule), changes),
        }
    }
}

fn diff_schedule(
    old: &ScheduleConfig,
    new: &ScheduleConfig,
    name: String,
    changes: &mut Vec<ConfigChange>,
) {
    let mut fields = FieldDiff {
        changes,
        category: ChangeCategory::Schedule,
        name,
    };
    let kind_value = |kind: &ScheduleKind| match kind {
        ScheduleKind::Interval(every) => Some(format_duration(*every)),
        ScheduleKind::Cron(cron) => Some(cron.to_string()),
        ScheduleKind::Webhook | ScheduleKind::Chat => None,
    };
    if old.kind.type_name() != new.kind.type_name() {
        fields.shown("type", &old.kind.type_name(), &new.kind.type_name(), |t| {
            t.to_string()
        });
    } else {
        fields.shown(
            new.kind.type_name(),
            &kind_value(&old.kind),
            &kind_value(&new.kind),
            text,
        );
    }
    fields.opaque("prompt", &old.prompt, &new.prompt);
    fields.shown("enabled", &old.enabled, &new.enabled, bool::to_string);
    fields.opaque("work_source", &old.work_source, &new.work_source);
    fields.shown(
        "resume_session",
        &old.resume_session,
        &new.resume_session,
        bool::to_string,
    );
    fields.shown("timezone", &old.timezone, &new.timezone, |tz| {
        tz.map_or_else(|| "local".to_string(), |tz| tz.name().to_string())
    });
    fields.shown("jitter", &old.jitter, &new.jitter, duration);
    fields.shown("overlap", &old.overlap, &new.overlap, |o| {
        format!("{o:?}").to_lowercase()
    });
    fields.shown("catchup", &old.catchup, &new.catchup, |c| {
        format!("{c:?}").to_lowercase()
    });
    fields.shown("timeout", &old.timeout, &new.timeout, duration);
    fields.shown("stop_grace", &old.stop_grace, &new.stop_grace, |d| {
        format_duration(*d)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_with;
    use std::path::Path;

    fn fleet(agents: &[(&str, &str)]) -> FleetConfig {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in agents {
            std::fs::write(
                dir.path().join(format!("{name}.yaml")),
                format!("name: {name}\n{body}"),
            )
            .unwrap();
        }
        let mut loaded = load_with(Some(dir.path()), Path::new("/"), &|_| None).unwrap();
        // Both fleets must look loaded from the same place, as on a reload.
        for agent in &mut loaded.agents {
            agent.working_directory = "/w".into();
            agent.source_file = "/w/a.yaml".into();
        }
        loaded
    }

    fn lines(old: &FleetConfig, new: &FleetConfig) -> Vec<String> {
        diff(old, new).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn wording_matches_the_seed() {
        let old = fleet(&[
            ("old", ""),
            ("pr-reviewer", "model: a\nschedules:\n  review-prs: {type: interval, interval: 5m}\n  gone: {type: cron, cron: '@daily'}\n"),
        ]);
        let new = fleet(&[
            ("new-agent", "schedules: {s: {type: interval, interval: 1m}}\n"),
            ("pr-reviewer", "model: b\nschedules:\n  review-prs: {type: interval, interval: 10m, prompt: p}\n  fresh: {type: cron, cron: '@hourly'}\n"),
        ]);
        assert_eq!(
            lines(&old, &new),
            [
                "agent:old removed",
                "agent:new-agent added",
                "agent:new-agent:schedule:s added",
                "agent:pr-reviewer:model changed",
                "agent:pr-reviewer:schedule:gone removed",
                "agent:pr-reviewer:schedule:review-prs:interval changed",
                "agent:pr-reviewer:schedule:review-prs:prompt changed",
                "agent:pr-reviewer:schedule:fresh added",
            ]
        );
        let changes = diff(&old, &new);
        let interval = changes
            .iter()
            .find(|c| c.field.as_deref() == Some("interval"))
            .unwrap();
        assert_eq!(interval.name, "pr-reviewer/review-prs");
        assert_eq!(interval.details.as_deref(), Some("5m → 10m"));
        let json = serde_json::to_value(interval).unwrap();
        assert_eq!(json["type"], "modified");
        assert_eq!(json["category"], "schedule");
    }

    #[test]
    fn every_behaviour_field_is_compared_and_identical_is_empty() {
        let base = "concurrency: 1\nschedules: {s: {type: interval, interval: 1m}}\n";
        let old = fleet(&[("a", base)]);
        assert!(diff(&old, &old).is_empty());
        let new = fleet(&[(
            "a",
            "concurrency: 2\ntimeout: 5m\npermission_mode: plan\nsession: {timeout: 1h}\nhooks: {on_error: [{type: shell, command: x}]}\ndocker: {enabled: true}\nschedules: {s: {type: cron, cron: '@daily', enabled: false, jitter: 10s}}\n",
        )]);
        assert_eq!(
            lines(&old, &new),
            [
                "agent:a:permission_mode changed",
                "agent:a:session.timeout changed",
                "agent:a:concurrency changed",
                "agent:a:timeout changed",
                "agent:a:hooks changed",
                "agent:a:docker changed",
                "agent:a:schedule:s:type changed",
                "agent:a:schedule:s:enabled changed",
                "agent:a:schedule:s:jitter changed",
                "agent:a:schedule:s:timeout changed",
            ]
        );
    }

    #[test]
    fn fleet_wide_limits_that_change_are_listed() {
        let mut old = fleet(&[("a", "")]);
        let mut new = old.clone();
        old.history.max_jobs_per_agent = Some(100);
        new.history.max_jobs_per_agent = Some(20);
        new.history.max_job_age = Some(Duration::from_secs(30 * 86_400));
        let shown: Vec<(String, Option<String>)> = diff(&old, &new)
            .into_iter()
            .map(|c| (c.to_string(), c.details))
            .collect();
        assert_eq!(
            shown,
            [
                (
                    "fleet:defaults.max_jobs_per_agent changed".to_string(),
                    Some("100 → 20".to_string())
                ),
                (
                    "fleet:defaults.max_job_age changed".to_string(),
                    Some("none → 30d".to_string())
                ),
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn a_budget_or_time_zone_change_shows_both_values() {
        let old = fleet(&[("a", "budget: {daily_usd: 5}\n")]);
        let new = fleet(&[("a", "budget: {daily_usd: 7.5}\ntimezone: UTC\n")]);
        let details: Vec<(String, Option<String>)> = diff(&old, &new)
            .into_iter()
            .map(|c| (c.to_string(), c.details))
            .collect();
        assert_eq!(
            details,
            [
                (
                    "agent:a:timezone changed".to_string(),
                    Some("the host's → UTC".to_string())
                ),
                (
                    "agent:a:budget.daily_usd changed".to_string(),
                    Some("5 → 7.5".to_string())
                ),
            ]
        );
    }
}
