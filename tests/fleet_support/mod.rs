//! Shared fixtures of the embedded FleetManager tests: a temporary fleet of `runtime: command` agents, a
//! manager on it, and event helpers that wait with deadlines instead of sleeping.

#![allow(dead_code)] // Each test binary uses a different subset of these helpers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use herdctld::fleet::{
    EventItem, EventSubscription, FleetEvent, FleetManager, FleetManagerOptions, TimedEvent,
};
use herdctld::scheduler::ManualClock;

/// Generous bound for anything that should take milliseconds, so a loaded 2-core machine does not flake.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A script that prints its prompt and a successful stream-json result.
pub const ECHO_PROMPT: &str = r#"echo "prompt: $HERDCTL_PROMPT"
echo '{"type":"result","subtype":"success","is_error":false,"result":"done","num_turns":1}'"#;

/// A script that ignores SIGTERM and never ends on its own.
pub const HANG_IGNORING_TERM: &str = "trap '' TERM\necho started\nwhile true; do sleep 0.05; done";

/// A script that waits for a file to appear, then succeeds: lets a test hold a job running as long as it
/// wants without sleeping.
pub fn wait_for_file(path: &Path) -> String {
    format!(
        "echo \"start $HERDCTL_PROMPT\"\nwhile [ ! -e '{}' ]; do sleep 0.02; done\necho \"end $HERDCTL_PROMPT\"",
        path.display()
    )
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub state: PathBuf,
}

impl Fixture {
    /// A fleet file listing `agents` (name, script, extra agent YAML), plus `fleet_extra` at top level.
    pub fn new(fleet_extra: &str, agents: &[(&str, &str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("herdctl.yaml");
        let state = dir.path().join("state");
        let fixture = Fixture { dir, config, state };
        fixture.write(fleet_extra, agents);
        fixture
    }

    /// Rewrites the configuration (for reload tests).
    pub fn write(&self, fleet_extra: &str, agents: &[(&str, &str, &str)]) {
        std::fs::create_dir_all(self.dir.path().join("agents")).unwrap();
        let mut fleet = format!("version: 1\nfleet:\n  name: test\n{fleet_extra}\nagents:\n");
        for (name, script, extra) in agents {
            fleet.push_str(&format!("  - path: agents/{name}.yaml\n"));
            let indented: String = script.lines().map(|l| format!("    {l}\n")).collect();
            let agent = format!(
                "name: {name}\nruntime: command\ncommand:\n  - sh\n  - -c\n  - |\n{indented}{extra}\n"
            );
            std::fs::write(self.dir.path().join(format!("agents/{name}.yaml")), agent).unwrap();
        }
        std::fs::write(&self.config, fleet).unwrap();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn options(&self) -> FleetManagerOptions {
        FleetManagerOptions {
            config_path: Some(self.config.clone()),
            state_dir: Some(self.state.clone()),
            default_stop_grace: Duration::from_secs(1),
            ..FleetManagerOptions::default()
        }
    }

    pub fn options_with_clock(&self, clock: &ManualClock) -> FleetManagerOptions {
        FleetManagerOptions {
            clock: Arc::new(clock.clone()),
            ..self.options()
        }
    }

    pub async fn manager(&self) -> FleetManager {
        let manager = FleetManager::new(self.options());
        manager.initialize().await.unwrap();
        manager
    }
}

pub fn clock() -> ManualClock {
    ManualClock::new("2026-03-02T08:00:00Z".parse().unwrap())
}

/// The next event satisfying `wanted`, skipping others; panics at the deadline.
pub async fn next_event(
    events: &mut EventSubscription,
    what: &str,
    mut wanted: impl FnMut(&FleetEvent) -> bool,
) -> TimedEvent {
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            match events.next().await {
                Some(EventItem::Event(timed)) if wanted(&timed.event) => return timed,
                Some(_) => {}
                None => panic!("event bus closed while waiting for {what}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {what} within {DEADLINE:?}"))
}

/// Every event up to and including the first one satisfying `last`.
pub async fn events_until(
    events: &mut EventSubscription,
    what: &str,
    mut last: impl FnMut(&FleetEvent) -> bool,
) -> Vec<FleetEvent> {
    let collected = tokio::time::timeout(DEADLINE, async {
        let mut seen = Vec::new();
        loop {
            match events.next().await {
                Some(EventItem::Event(timed)) => {
                    let done = last(&timed.event);
                    seen.push(timed.event);
                    if done {
                        return seen;
                    }
                }
                Some(EventItem::Lagged { missed, .. }) => panic!("lagged by {missed} events"),
                None => panic!("event bus closed while waiting for {what}"),
            }
        }
    })
    .await;
    collected.unwrap_or_else(|_| panic!("no {what} within {DEADLINE:?}"))
}

/// The final event of job `id` (completed, failed or cancelled).
pub fn is_final_of(id: &str) -> impl FnMut(&FleetEvent) -> bool + '_ {
    move |event| match event {
        FleetEvent::JobCompleted { job_id, .. }
        | FleetEvent::JobFailed { job_id, .. }
        | FleetEvent::JobCancelled { job_id, .. } => job_id == id,
        _ => false,
    }
}

/// Waits for the job to be final, with a deadline.
pub async fn wait_job(manager: &FleetManager, id: &str) -> herdctld::job::Job {
    tokio::time::timeout(DEADLINE, manager.wait_for_job(id))
        .await
        .unwrap_or_else(|_| panic!("job {id} not final within {DEADLINE:?}"))
        .unwrap()
}

/// Polls a condition that has no event (a file appearing, a process dying), with a deadline.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not true within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The text of a job's `stdout` output lines.
pub fn stdout_texts(lines: &[herdctld::job::OutputLine]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.kind == "stdout")
        .map(|l| l.chunk.clone())
        .collect()
}

pub fn process_alive(pid: u32) -> bool {
    // A zombie is dead for our purposes (it is only waiting to be reaped).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// A fleet error as a client sees it: the code, `data.code` and `data` that `rpc` gives it on the wire.
#[allow(dead_code, reason = "each test binary checks some of these")]
pub trait OnTheWire {
    fn code(&self) -> i32;
    fn code_name(&self) -> String;
    fn data(&self) -> serde_json::Value;
}

impl OnTheWire for herdctld::fleet::FleetError {
    fn code(&self) -> i32 {
        herdctld::rpc::error::fleet_error(self).code()
    }

    fn code_name(&self) -> String {
        self.data()["code"].as_str().unwrap_or_default().to_owned()
    }

    fn data(&self) -> serde_json::Value {
        let error = herdctld::rpc::error::fleet_error(self);
        error
            .data()
            .and_then(|data| serde_json::from_str(data.get()).ok())
            .unwrap_or_default()
    }
}
