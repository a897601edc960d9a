//! `FleetManager`: the cheap, cloneable handle every caller holds. Its operations live in the modules of
//! their concern (`lifecycle`, `queries`, `admission`, `schedules`); a run's supervision in `supervise`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::Notify;

use crate::config::{AgentConfig, FleetConfig, ScheduleConfig};
use crate::job::{JobId, JobStatus};
use crate::metrics::{FleetGauges, Metrics};

use super::core::{Core, Shared};
use super::error::{FleetError, FleetState};
use super::events::{EventBus, EventSubscription, FleetEvent};
use super::logs::LogBus;
use super::options::FleetManagerOptions;

/// The prompt used when neither the call, the schedule nor the agent gives one (herdctl's default).
pub(super) const FALLBACK_PROMPT: &str = "Execute your configured task";

#[derive(Debug, Clone, Default)]
pub struct TriggerOptions {
    pub schedule: Option<String>,
    pub prompt: Option<String>,
    pub work_items: Option<Vec<Value>>,
    /// 1 (highest) … 10 (lowest); default 5.
    pub priority: Option<u8>,
    /// Start a new Claude session instead of continuing the agent's stored one (herdctl's `resume:
    /// null`). Without it a manual run resumes the agent's session while it is valid, as herdctl does.
    pub fresh_session: bool,
    /// Run even though the agent's jobs already cost its daily budget today (otherwise refused with
    /// [`FleetError::BudgetExceeded`]).
    pub over_budget: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ForkOptions {
    pub prompt: Option<String>,
    pub schedule: Option<String>,
    /// As [`TriggerOptions::over_budget`]: the fork is a new run of the agent.
    pub over_budget: bool,
}

#[derive(Debug, Clone)]
pub struct StopOptions {
    pub wait_for_jobs: bool,
    pub timeout: Duration,
    pub cancel_on_timeout: bool,
    /// Why the fleet stops, as the `stopped` event says: `requested` (a `stop` call), or what the host
    /// names (`SIGTERM`).
    pub reason: String,
}

impl Default for StopOptions {
    fn default() -> Self {
        StopOptions {
            wait_for_jobs: true,
            timeout: Duration::from_secs(30),
            cancel_on_timeout: true,
            reason: "requested".into(),
        }
    }
}

/// Filter of `getJobs`.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    pub agent: Option<String>,
    pub status: Option<JobStatus>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: Option<usize>,
    pub offset: Option<usize>,
}

/// A cheap handle; clones share one fleet.
#[derive(Clone)]
pub struct FleetManager {
    pub(super) shared: Arc<Shared>,
}

impl FleetManager {
    /// Creates a manager; does no I/O (`initialize` loads the configuration and opens the state).
    pub fn new(options: FleetManagerOptions) -> FleetManager {
        let events = EventBus::new(options.event_buffer);
        let manager = FleetManager {
            shared: Arc::new(Shared {
                options,
                events,
                core: Mutex::new(Core::new()),
                jobs_changed: Arc::new(Notify::new()),
                metrics: Arc::new(Metrics::new()),
            }),
        };
        // Weak: the metrics live inside the fleet they read, and a scrape after the fleet is gone reads zero.
        let shared = Arc::downgrade(&manager.shared);
        manager.shared.metrics.set_gauge_source(move || {
            let Some(shared) = shared.upgrade() else {
                return FleetGauges::default();
            };
            let manager = FleetManager { shared };
            let core = manager.core();
            FleetGauges {
                queue_depth: core.jobs.queue().len() as u64,
                jobs_running: core.running_count(None) as u64,
            }
        });
        manager
    }

    /// The fleet's metrics; [`Metrics::encode`] is a scrape.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    pub(super) fn core(&self) -> MutexGuard<'_, Core> {
        // Every critical section leaves Core consistent before any call that could panic, so a poisoned
        // lock (a bug elsewhere) must not take the whole fleet down with it.
        self.shared
            .core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn options(&self) -> &FleetManagerOptions {
        &self.shared.options
    }

    pub(super) fn events(&self) -> &EventBus {
        &self.shared.events
    }

    /// The fleet's events of `types` (`None`: all), as they happen. A type the fleet never emits is refused
    /// (it would match nothing, silently).
    pub fn subscribe_events(
        &self,
        types: Option<Vec<String>>,
    ) -> Result<EventSubscription, FleetError> {
        let known = |name: &str| {
            FleetEvent::TYPE_NAMES.contains(&name) || name == super::event_names::LAGGED
        };
        if let Some(unknown) = types.iter().flatten().find(|name| !known(name)) {
            return Err(FleetError::InvalidParams {
                message: format!(
                    "unknown event type {unknown:?}; known types: {}",
                    FleetEvent::TYPE_NAMES.join(", ")
                ),
            });
        }
        Ok(self.shared.events.subscribe(types))
    }

    pub fn log_bus(&self) -> &LogBus {
        &self.shared.options.logs
    }

    pub fn state(&self) -> FleetState {
        self.core().lifecycle
    }

    /// The loaded configuration, if initialized.
    pub fn config(&self) -> Option<Arc<FleetConfig>> {
        self.core().config.clone()
    }

    pub(super) fn require(
        &self,
        core: &Core,
        operation: &str,
        allowed: &[FleetState],
    ) -> Result<(), FleetError> {
        if allowed.contains(&core.lifecycle) {
            Ok(())
        } else {
            Err(FleetError::invalid_state(
                operation,
                core.lifecycle,
                allowed,
            ))
        }
    }
}

pub(super) fn parse_job_id(id: &str) -> Result<JobId, FleetError> {
    JobId::parse(id).map_err(|_| FleetError::JobNotFound {
        job_id: id.to_string(),
    })
}

/// The agent `name` means, as every method that takes an agent name resolves it: the agent with that
/// qualified name, else the one agent whose local name it is. A local name several sub-fleets share is
/// [`FleetError::AmbiguousAgent`]; a name no agent answers to, [`FleetError::AgentNotFound`].
pub(super) fn find_agent<'a>(
    config: &'a FleetConfig,
    name: &str,
) -> Result<&'a AgentConfig, FleetError> {
    if let Some(agent) = config.agent(name) {
        return Ok(agent);
    }
    let candidates: Vec<&AgentConfig> = config
        .agents
        .iter()
        .filter(|a| a.local_name == name)
        .collect();
    match candidates[..] {
        [agent] => Ok(agent),
        [] => Err(FleetError::AgentNotFound {
            agent_name: name.to_string(),
            available_agents: config.agents.iter().map(|a| a.name.clone()).collect(),
        }),
        _ => Err(FleetError::AmbiguousAgent {
            agent_name: name.to_string(),
            candidates: candidates.iter().map(|a| a.name.clone()).collect(),
        }),
    }
}

pub(super) fn find_schedule<'a>(
    agent: &'a AgentConfig,
    name: &str,
) -> Result<&'a ScheduleConfig, FleetError> {
    agent
        .schedules
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| FleetError::ScheduleNotFound {
            agent_name: agent.name.clone(),
            schedule_name: name.to_string(),
            available_schedules: agent.schedules.iter().map(|s| s.name.clone()).collect(),
        })
}

/// Runs futures concurrently and waits for all (tokio has no join_all; a JoinSet needs 'static).
pub(super) async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for future in futures {
        set.spawn(future);
    }
    while set.join_next().await.is_some() {}
}

impl std::fmt::Debug for FleetManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetManager")
            .field("state", &self.state())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_type_the_fleet_never_emits_is_refused_naming_the_known_ones() {
        let fleet = FleetManager::new(FleetManagerOptions::default());
        let refused = fleet
            .subscribe_events(Some(vec!["job:completed".into(), "job:finished".into()]))
            .err()
            .expect("job:finished is no event type");
        assert!(matches!(refused, FleetError::InvalidParams { .. }));
        let message = refused.to_string();
        assert!(message.contains("\"job:finished\""), "{message}");
        assert!(message.contains("job:completed"), "{message}");
        assert!(fleet
            .subscribe_events(Some(vec!["job:completed".into(), "lagged".into()]))
            .is_ok());
        assert!(fleet.subscribe_events(None).is_ok());
    }
}
