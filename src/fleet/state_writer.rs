//! Writes `state.yaml` and the session pointers outside the fleet lock. Under the lock a change is only
//! recorded as pending: the fleet does no file I/O there. A task writes what is pending soon after, so a
//! burst of changes costs one write: the newest `state.yaml`, the newest change of each agent's pointer.
//! Batches land in order, so a newer state never lands before an older one, and what is pending when the
//! writer is dropped is written before the state directory's lock is released (`background_writer`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::state::{FleetState as PersistedState, SessionStore, StateDir};

use super::background_writer::{lock, BackgroundWriter, Batches, Flusher};
use super::events::report_state_error;
use super::events::EventBus;
use super::sessions::SessionWrite;

#[derive(Default)]
struct Pending {
    fleet_state: Option<Box<PersistedState>>,
    sessions: BTreeMap<String, SessionWrite>,
}

/// What is pending and where it goes.
pub(super) struct StateFiles {
    pending: Mutex<Pending>,
    state_file: PathBuf,
    sessions: SessionStore,
    events: EventBus,
}

/// The fleet's writer of `state.yaml` and `sessions/`; one per open state directory.
pub(super) struct StateWriter {
    writer: BackgroundWriter<StateFiles>,
}

impl StateWriter {
    /// Starts the writing task for `dir`; errors are reported on `events`.
    pub(super) fn start(dir: &StateDir, events: EventBus) -> StateWriter {
        let files = StateFiles {
            pending: Mutex::new(Pending::default()),
            state_file: dir.state_file(),
            sessions: dir.sessions().clone(),
            events: events.clone(),
        };
        StateWriter {
            writer: BackgroundWriter::start(files, events),
        }
    }

    pub(super) fn fleet_state(&self, state: &PersistedState) {
        lock(&self.writer.batches().pending).fleet_state = Some(Box::new(state.clone()));
        self.writer.wake();
    }

    pub(super) fn session(&self, write: SessionWrite) {
        lock(&self.writer.batches().pending)
            .sessions
            .insert(write.agent().to_owned(), write);
        self.writer.wake();
    }

    /// A handle to write what is pending, usable without holding the fleet lock.
    pub(super) fn flusher(&self) -> Flusher<StateFiles> {
        self.writer.flusher()
    }
}

impl Batches for StateFiles {
    const WHAT: &'static str = "fleet state";

    fn write_batch(&self) {
        let (fleet_state, sessions) = {
            let mut pending = lock(&self.pending);
            (
                pending.fleet_state.take(),
                std::mem::take(&mut pending.sessions),
            )
        };
        if let Some(state) = fleet_state {
            if let Err(e) = state.save(&self.state_file) {
                report_state_error(&self.events, &e.to_string());
            }
        }
        for write in sessions.into_values() {
            if let Err(e) = write.apply(&self.sessions) {
                report_state_error(&self.events, &e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::SessionPointer;
    use chrono::Utc;

    fn pointer(agent: &str, session: &str) -> SessionPointer {
        SessionPointer {
            agent_name: agent.into(),
            session_id: session.into(),
            created_at: Utc::now(),
            last_used_at: Utc::now(),
            job_count: 1,
            mode: "autonomous".into(),
            working_directory: None,
            runtime_type: "cli".into(),
            docker_enabled: false,
            other: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn changes_land_and_the_newest_wins() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::open(root.path()).unwrap();
        let writer = StateWriter::start(&dir, EventBus::new(16));
        let mut state = PersistedState::default();
        for runs in 1..=3 {
            state.schedule_mut("a", "s").runs = runs;
            writer.fleet_state(&state);
        }
        writer.session(SessionWrite::Save("a".into(), pointer("a", "s-1")));
        writer.session(SessionWrite::Save("a".into(), pointer("a", "s-2")));
        writer.session(SessionWrite::Save("b".into(), pointer("b", "s-3")));
        writer.session(SessionWrite::Remove("b".into()));
        writer.flusher().flush().await;

        let (saved, _) = PersistedState::load(&dir.state_file()).unwrap();
        assert_eq!(saved.schedule("a", "s").map(|s| s.runs), Some(3));
        let pointers = dir.sessions().load_all().unwrap().pointers;
        assert_eq!(pointers["a"].session_id, "s-2");
        assert!(!pointers.contains_key("b"));
    }

    #[tokio::test]
    async fn what_is_pending_when_the_writer_is_dropped_is_written() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::open(root.path()).unwrap();
        let writer = StateWriter::start(&dir, EventBus::new(16));
        let mut state = PersistedState::default();
        state.schedule_mut("a", "s").runs = 7;
        writer.fleet_state(&state);
        drop(writer);
        let (saved, _) = PersistedState::load(&dir.state_file()).unwrap();
        assert_eq!(saved.schedule("a", "s").map(|s| s.runs), Some(7));
    }
}
