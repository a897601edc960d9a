//! Which Claude session a job resumes, as herdctl decides it (reference §5.4, §8.4): an agent's session
//! pointer is resumed while it is valid — not older than `session.timeout` (default 24 h) since its last
//! use, made in the same working directory, by the same runtime, in or out of a container alike. An invalid
//! pointer is cleared and the run starts fresh, saying so in its output. A resumed run that Claude answers
//! with "no conversation found" clears the pointer too, so no later run resumes the dead session.
//!
//! [`SessionBook`] holds the pointers in memory and decides; the changes it returns ([`SessionWrite`]) are
//! applied to `sessions/` by the caller.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{AgentConfig, FleetConfig, RuntimeConfig};
use crate::job::{Job, JobError, JobStatus};
use crate::state::{SessionPointer, SessionStore, StateError};

/// herdctl's default `session.timeout`.
pub(super) const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// The output line's text when a stored session is not resumed; herdctl's words.
pub(super) const FRESH_SESSION_NOTICE: &str =
    "No valid session found (expired or missing). Starting fresh session.";

/// What Claude (or herdctl's runtimes) say when a resumed session does not exist any more.
const DEAD_SESSION_PATTERNS: &[&str] = &[
    "no conversation found",
    "conversation not found",
    "session not found",
    "session expired",
    "resume failed",
    "cannot resume",
];

/// A change to `sessions/` for the caller to apply.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum SessionWrite {
    Save(String, SessionPointer),
    Remove(String),
}

impl SessionWrite {
    pub(super) fn agent(&self) -> &str {
        match self {
            SessionWrite::Save(agent, _) | SessionWrite::Remove(agent) => agent,
        }
    }

    pub(super) fn apply(self, store: &SessionStore) -> Result<(), StateError> {
        match self {
            SessionWrite::Save(agent, pointer) => store.save(&agent, &pointer),
            SessionWrite::Remove(agent) => store.remove(&agent),
        }
    }
}

/// The decision for a run that wants to resume its agent's session.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Resumption {
    /// The session to resume; `None` starts fresh.
    pub(super) session_id: Option<String>,
    /// Why a stored session is not resumed, for the job's output.
    pub(super) notice: Option<String>,
    pub(super) write: Option<SessionWrite>,
}

/// The agents' session pointers.
#[derive(Debug, Default)]
pub(super) struct SessionBook {
    pointers: BTreeMap<String, SessionPointer>,
}

/// What a session pointer records of the agent that made it.
struct Origin {
    working_directory: String,
    runtime_type: &'static str,
    docker_enabled: bool,
}

fn origin(agent: &AgentConfig) -> Option<Origin> {
    match &agent.runtime {
        RuntimeConfig::Claude { runtime_type, .. } => Some(Origin {
            working_directory: agent.working_directory.display().to_string(),
            runtime_type: runtime_type.as_str(),
            docker_enabled: agent.container().is_some(),
        }),
        RuntimeConfig::Command { .. } => None,
    }
}

impl SessionBook {
    /// `pointers` as read from `sessions/`.
    pub(super) fn new(pointers: BTreeMap<String, SessionPointer>) -> SessionBook {
        SessionBook { pointers }
    }

    /// Pointers for the session ids an earlier herdctld kept in `state.yaml` (`legacy`: agent, session),
    /// for agents without a pointer, as if made `now` by the agent as configured (herdctl's defaults when
    /// it is not). The caller saves them before `state.yaml` is next written, which drops the old key.
    pub(super) fn adopt_legacy(
        &mut self,
        legacy: impl IntoIterator<Item = (String, String)>,
        config: &FleetConfig,
        now: DateTime<Utc>,
    ) -> Vec<SessionWrite> {
        let mut writes = Vec::new();
        for (agent_name, session_id) in legacy {
            if self.pointers.contains_key(&agent_name) {
                continue;
            }
            let origin = config.agent(&agent_name).and_then(origin);
            let pointer = new_pointer(&agent_name, origin.as_ref(), session_id, now);
            self.pointers.insert(agent_name.clone(), pointer.clone());
            writes.push(SessionWrite::Save(agent_name, pointer));
        }
        writes
    }

    /// The session `agent` would resume, if any.
    pub(super) fn current(&self, agent: &str) -> Option<&str> {
        self.pointers
            .get(agent)
            .map(|pointer| pointer.session_id.as_str())
    }

    /// Decides the session of a run of `agent` that resumes; a resumed pointer's `last_used_at` is
    /// refreshed before the run, as herdctl does.
    pub(super) fn resume(&mut self, agent: &AgentConfig, now: DateTime<Utc>) -> Resumption {
        let fresh = |notice, write| Resumption {
            session_id: None,
            notice,
            write,
        };
        let Some(origin) = origin(agent) else {
            return fresh(None, None);
        };
        let Some(pointer) = self.pointers.get_mut(&agent.name) else {
            return fresh(None, None);
        };
        let timeout = agent.session.timeout.unwrap_or(DEFAULT_SESSION_TIMEOUT);
        let idle = (now - pointer.last_used_at).to_std().unwrap_or_default();
        let stale = if idle > timeout {
            Some(format!(
                "the stored session {} was last used {}s ago, longer than session.timeout ({}s)",
                pointer.session_id,
                idle.as_secs(),
                timeout.as_secs()
            ))
        } else if pointer
            .working_directory
            .as_ref()
            .is_some_and(|stored| *stored != origin.working_directory)
        {
            Some(format!(
                "the stored session {} belongs to another working directory",
                pointer.session_id
            ))
        } else if pointer.runtime_type != origin.runtime_type
            || pointer.docker_enabled != origin.docker_enabled
        {
            Some(format!(
                "the stored session {} was made by another runtime",
                pointer.session_id
            ))
        } else {
            None
        };
        if let Some(reason) = stale {
            self.pointers.remove(&agent.name);
            return fresh(
                Some(format!("{FRESH_SESSION_NOTICE} ({reason})")),
                Some(SessionWrite::Remove(agent.name.clone())),
            );
        }
        pointer.last_used_at = now;
        Resumption {
            session_id: Some(pointer.session_id.clone()),
            notice: None,
            write: Some(SessionWrite::Save(agent.name.clone(), pointer.clone())),
        }
    }

    /// Clears `agent`'s pointer if it still names `session_id`, which Claude no longer has; a pointer
    /// another run of the agent has moved on meanwhile stays.
    pub(super) fn forget(&mut self, agent: &str, session_id: &str) -> Option<SessionWrite> {
        if self.current(agent) != Some(session_id) {
            return None;
        }
        self.pointers.remove(agent);
        Some(SessionWrite::Remove(agent.to_owned()))
    }

    /// Takes note of a finished job of `agent`: its session becomes the agent's pointer, unless the job
    /// resumed `resumed` and Claude no longer knew it, which clears the pointer if it still names that
    /// session (a fork of an older job resumes a session that is not the agent's pointer).
    pub(super) fn finished(
        &mut self,
        agent: &AgentConfig,
        job: &Job,
        resumed: Option<&str>,
        now: DateTime<Utc>,
    ) -> Option<SessionWrite> {
        let origin = origin(agent)?;
        if let Some(resumed) = resumed.filter(|_| is_dead_session_failure(job)) {
            return self.forget(&agent.name, resumed);
        }
        let session_id = job.session_id.clone()?;
        let pointer = self
            .pointers
            .entry(agent.name.clone())
            .or_insert_with(|| new_pointer(&agent.name, Some(&origin), session_id.clone(), now));
        if pointer.session_id != session_id {
            pointer.session_id = session_id;
            pointer.created_at = now;
        }
        pointer.last_used_at = now;
        pointer.job_count += 1;
        pointer.working_directory = Some(origin.working_directory);
        pointer.runtime_type = origin.runtime_type.to_owned();
        pointer.docker_enabled = origin.docker_enabled;
        Some(SessionWrite::Save(agent.name.clone(), pointer.clone()))
    }
}

/// A new pointer of `agent_name`; without an origin (an agent not configured, or not Claude) it has
/// herdctl's defaults: no working directory, the `sdk` runtime, no container.
fn new_pointer(
    agent_name: &str,
    origin: Option<&Origin>,
    session_id: String,
    now: DateTime<Utc>,
) -> SessionPointer {
    SessionPointer {
        agent_name: agent_name.to_owned(),
        session_id,
        created_at: now,
        last_used_at: now,
        job_count: 0,
        mode: "autonomous".to_owned(),
        working_directory: origin.map(|origin| origin.working_directory.clone()),
        runtime_type: origin
            .map_or("sdk", |origin| origin.runtime_type)
            .to_owned(),
        docker_enabled: origin.is_some_and(|origin| origin.docker_enabled),
        other: BTreeMap::new(),
    }
}

/// A failed run whose error says its resumed session does not exist.
fn is_dead_session_failure(job: &Job) -> bool {
    job.status == JobStatus::Failed && names_dead_session(job.error.as_ref())
}

/// Whether a run's error says the session it resumed does not exist. Only the error: the result text is
/// the model's own words, which may quote these phrases about anything.
pub(super) fn names_dead_session(error: Option<&JobError>) -> bool {
    error.is_some_and(|error| {
        let text = error.message.to_ascii_lowercase();
        DEAD_SESSION_PATTERNS
            .iter()
            .any(|pattern| text.contains(pattern))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobId, TriggerType};

    fn agent(extra: &str) -> (tempfile::TempDir, AgentConfig) {
        let (dir, config) = fleet(extra);
        (dir, config.agents[0].clone())
    }

    /// A fleet of one agent `a` running the CLI, with `extra` agent YAML.
    fn fleet(extra: &str) -> (tempfile::TempDir, FleetConfig) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("herdctl.yaml"),
            "version: 1\nagents:\n  - path: a.yaml\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            format!("name: a\nruntime: cli\n{extra}"),
        )
        .unwrap();
        let config = crate::config::load(Some(&dir.path().join("herdctl.yaml"))).unwrap();
        (dir, config)
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn pointer(agent: &AgentConfig, last_used: &str) -> SessionPointer {
        SessionPointer {
            agent_name: agent.name.clone(),
            session_id: "s-1".into(),
            created_at: at(last_used),
            last_used_at: at(last_used),
            job_count: 2,
            mode: "autonomous".into(),
            working_directory: Some(agent.working_directory.display().to_string()),
            runtime_type: "cli".into(),
            docker_enabled: false,
            other: BTreeMap::new(),
        }
    }

    fn book(pointer: SessionPointer) -> SessionBook {
        SessionBook::new([(pointer.agent_name.clone(), pointer)].into())
    }

    fn finished_job(status: JobStatus, session: Option<&str>, error: Option<&str>) -> Job {
        let mut job = Job::new(
            JobId::parse("job-2026-12-02-aaaaaa").unwrap(),
            "a".into(),
            None,
            TriggerType::Manual,
            None,
            5,
            at("2026-12-02T10:00:00Z"),
        );
        job.status = status;
        job.session_id = session.map(str::to_owned);
        job.error = error.map(|message| JobError {
            code: "RESULT_ERROR".into(),
            message: message.into(),
        });
        job
    }

    #[test]
    fn a_valid_pointer_is_resumed_and_its_last_use_refreshed() {
        let (_dir, agent) = agent("session:\n  timeout: 1h\n");
        let mut book = book(pointer(&agent, "2026-12-02T10:00:00Z"));
        let now = at("2026-12-02T10:59:00Z");
        let resumption = book.resume(&agent, now);
        assert_eq!(resumption.session_id.as_deref(), Some("s-1"));
        assert_eq!(resumption.notice, None);
        let Some(SessionWrite::Save(name, saved)) = resumption.write else {
            panic!("the refreshed pointer is saved");
        };
        assert_eq!((name.as_str(), saved.last_used_at), ("a", now));
    }

    #[test]
    fn an_expired_pointer_is_cleared_and_the_run_starts_fresh_saying_so() {
        let (_dir, agent) = agent("session:\n  timeout: 1h\n");
        let mut book = book(pointer(&agent, "2026-12-02T10:00:00Z"));
        let resumption = book.resume(&agent, at("2026-12-02T11:00:01Z"));
        assert_eq!(resumption.session_id, None);
        assert!(resumption
            .notice
            .as_deref()
            .is_some_and(|n| n.starts_with(FRESH_SESSION_NOTICE) && n.contains("session.timeout")));
        assert_eq!(resumption.write, Some(SessionWrite::Remove("a".into())));
        assert_eq!(book.current("a"), None);
    }

    #[test]
    fn the_default_timeout_is_a_day() {
        let (_dir, agent) = agent("");
        let mut book = book(pointer(&agent, "2026-12-01T10:00:00Z"));
        let resumed = book.resume(&agent, at("2026-12-02T09:59:00Z"));
        assert!(resumed.session_id.is_some());
        let mut book2 = self::book(pointer(&agent, "2026-12-01T10:00:00Z"));
        assert_eq!(
            book2.resume(&agent, at("2026-12-02T10:01:00Z")).session_id,
            None
        );
    }

    #[test]
    fn another_working_directory_or_runtime_starts_fresh() {
        let (_dir, agent) = agent("");
        let now = at("2026-12-02T10:00:01Z");
        let mut moved = pointer(&agent, "2026-12-02T10:00:00Z");
        moved.working_directory = Some("/somewhere/else".into());
        let resumption = book(moved).resume(&agent, now);
        assert_eq!(resumption.session_id, None);
        assert!(resumption.notice.unwrap().contains("working directory"));

        let mut sdk = pointer(&agent, "2026-12-02T10:00:00Z");
        sdk.runtime_type = "sdk".into();
        assert_eq!(book(sdk).resume(&agent, now).session_id, None);

        let mut docker = pointer(&agent, "2026-12-02T10:00:00Z");
        docker.docker_enabled = true;
        assert_eq!(book(docker).resume(&agent, now).session_id, None);
    }

    #[test]
    fn a_finished_run_becomes_the_pointer_keeping_herdctls_fields() {
        let (_dir, agent) = agent("");
        let mut stored = pointer(&agent, "2026-12-02T10:00:00Z");
        stored.other.insert("custom_name".into(), "kept".into());
        let mut book = book(stored);
        let now = at("2026-12-02T10:05:00Z");
        let job = finished_job(JobStatus::Completed, Some("s-2"), None);
        let Some(SessionWrite::Save(_, saved)) = book.finished(&agent, &job, Some("s-1"), now)
        else {
            panic!("saved");
        };
        assert_eq!(saved.session_id, "s-2");
        assert_eq!(saved.job_count, 3);
        assert_eq!(saved.created_at, now, "a new session starts its own life");
        assert_eq!(saved.other["custom_name"], "kept");
        assert_eq!(book.current("a"), Some("s-2"));
    }

    #[test]
    fn a_resumed_run_claude_no_longer_knows_clears_the_pointer() {
        let (_dir, agent) = agent("");
        let mut book = book(pointer(&agent, "2026-12-02T10:00:00Z"));
        let job = finished_job(
            JobStatus::Failed,
            Some("s-1"),
            Some("No conversation found with session ID: s-1"),
        );
        let write = book.finished(&agent, &job, Some("s-1"), at("2026-12-02T10:01:00Z"));
        assert_eq!(write, Some(SessionWrite::Remove("a".into())));
        assert_eq!(book.current("a"), None);
        // The same words from a run that did not resume are an ordinary failure.
        let mut fresh_book = self::book(pointer(&agent, "2026-12-02T10:00:00Z"));
        assert!(matches!(
            fresh_book.finished(&agent, &job, None, at("2026-12-02T10:01:00Z")),
            Some(SessionWrite::Save(..))
        ));
    }

    #[test]
    fn a_failed_fork_of_an_older_session_leaves_the_agents_pointer() {
        let (_dir, agent) = agent("");
        let mut book = book(pointer(&agent, "2026-12-02T10:00:00Z"));
        let job = finished_job(
            JobStatus::Failed,
            None,
            Some("No conversation found with session ID: s-0"),
        );
        let write = book.finished(&agent, &job, Some("s-0"), at("2026-12-02T10:01:00Z"));
        assert_eq!(write, None);
        assert_eq!(book.current("a"), Some("s-1"));
    }

    #[test]
    fn only_the_error_names_a_dead_session_not_the_models_words() {
        let (_dir, agent) = agent("");
        let mut book = book(pointer(&agent, "2026-12-02T10:00:00Z"));
        let mut job = finished_job(JobStatus::Failed, Some("s-1"), Some("exit code 1"));
        job.summary = Some("I checked: session not found in the cache".into());
        let write = book.finished(&agent, &job, Some("s-1"), at("2026-12-02T10:01:00Z"));
        assert!(matches!(write, Some(SessionWrite::Save(..))));
        assert_eq!(book.current("a"), Some("s-1"));
        assert!(!names_dead_session(None));
    }

    #[test]
    fn a_session_id_an_earlier_herdctld_kept_becomes_a_pointer_at_once() {
        let (_dir, config) = fleet("");
        let agent = config.agents[0].clone();
        let now = at("2026-12-02T10:00:00Z");
        let mut book = SessionBook::new(BTreeMap::new());
        let writes = book.adopt_legacy(
            [("a".into(), "old".into()), ("gone".into(), "older".into())],
            &config,
            now,
        );
        let saved: Vec<_> = writes
            .iter()
            .map(|write| match write {
                SessionWrite::Save(name, pointer) => (name.as_str(), pointer.runtime_type.as_str()),
                SessionWrite::Remove(name) => panic!("{name} removed"),
            })
            .collect();
        assert_eq!(saved, [("a", "cli"), ("gone", "sdk")]);
        assert_eq!(book.resume(&agent, now).session_id.as_deref(), Some("old"));
        assert!(book
            .adopt_legacy([("a".into(), "other".into())], &config, now)
            .is_empty());
    }
}
