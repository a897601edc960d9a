//! Fleet events (SPEC §10) and the bus that delivers them.
//!
//! Emission never blocks the fleet: the bus is a bounded broadcast ring. A subscriber that falls behind
//! loses the oldest events and is told how many with a `lagged {missed}` item; it never slows jobs or
//! other subscribers, and memory stays bounded by the ring size.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::job::{Job, TerminationType};

/// Everything the FleetManager tells the outside world. Serialized with `type` as the tag, payload fields
/// in camelCase; job events carry the whole job record.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type")]
pub enum FleetEvent {
    #[serde(rename = "initialized")]
    Initialized,
    #[serde(rename = "started")]
    Started,
    #[serde(rename = "stopped")]
    Stopped { reason: String },
    #[serde(rename = "stop:progress", rename_all = "camelCase")]
    StopProgress { pending_jobs: usize },
    #[serde(rename = "config:reloaded", rename_all = "camelCase")]
    ConfigReloaded {
        changes: Vec<String>,
        agent_count: usize,
    },
    #[serde(rename = "agent:started", rename_all = "camelCase")]
    AgentStarted { agent_name: String, job_id: String },
    #[serde(rename = "agent:stopped", rename_all = "camelCase")]
    AgentStopped {
        agent_name: String,
        job_id: String,
        reason: String,
    },
    #[serde(rename = "schedule:triggered", rename_all = "camelCase")]
    ScheduleTriggered {
        agent_name: String,
        schedule_name: String,
        job_id: String,
    },
    #[serde(rename = "schedule:skipped", rename_all = "camelCase")]
    ScheduleSkipped {
        agent_name: String,
        schedule_name: String,
        reason: SkipReason,
    },
    #[serde(rename = "job:created")]
    JobCreated { job: Box<Job> },
    #[serde(rename = "job:queued")]
    JobQueued { job: Box<Job>, position: usize },
    #[serde(rename = "job:started")]
    JobStarted { job: Box<Job> },
    /// `outputType` is the line's type (`assistant`, `stdout`, …); `type` is taken by the event name.
    #[serde(rename = "job:output", rename_all = "camelCase")]
    JobOutput {
        job_id: String,
        seq: u64,
        output_type: String,
        chunk: Value,
    },
    #[serde(rename = "job:completed", rename_all = "camelCase")]
    JobCompleted {
        job_id: String,
        job: Box<Job>,
        result: Option<Value>,
    },
    #[serde(rename = "job:failed", rename_all = "camelCase")]
    JobFailed {
        job_id: String,
        job: Box<Job>,
        error: Value,
    },
    #[serde(rename = "job:cancelled", rename_all = "camelCase")]
    JobCancelled {
        job_id: String,
        job: Box<Job>,
        termination_type: TerminationType,
    },
    #[serde(rename = "job:forked", rename_all = "camelCase")]
    JobForked { job: Box<Job>, forked_from: String },
    #[serde(rename = "error")]
    Error { message: String, source: String },
}

/// Why a schedule fire did not create a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    ConcurrencyLimit,
    Disabled,
    AlreadyRunning,
    Stopping,
    NoWork,
    /// The agent's jobs already cost its `budget.daily_usd` today.
    Budget,
}

impl SkipReason {
    /// The wire name (as serialised), e.g. `no_work`.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::ConcurrencyLimit => "concurrency_limit",
            SkipReason::Disabled => "disabled",
            SkipReason::AlreadyRunning => "already_running",
            SkipReason::Stopping => "stopping",
            SkipReason::NoWork => "no_work",
            SkipReason::Budget => "budget",
        }
    }
}

impl FleetEvent {
    /// The wire name of the event (`job:created`, …), used for subscription filters.
    pub fn type_name(&self) -> &'static str {
        match self {
            FleetEvent::Initialized => "initialized",
            FleetEvent::Started => "started",
            FleetEvent::Stopped { .. } => "stopped",
            FleetEvent::StopProgress { .. } => "stop:progress",
            FleetEvent::ConfigReloaded { .. } => "config:reloaded",
            FleetEvent::AgentStarted { .. } => "agent:started",
            FleetEvent::AgentStopped { .. } => "agent:stopped",
            FleetEvent::ScheduleTriggered { .. } => "schedule:triggered",
            FleetEvent::ScheduleSkipped { .. } => "schedule:skipped",
            FleetEvent::JobCreated { .. } => "job:created",
            FleetEvent::JobQueued { .. } => "job:queued",
            FleetEvent::JobStarted { .. } => "job:started",
            FleetEvent::JobOutput { .. } => "job:output",
            FleetEvent::JobCompleted { .. } => "job:completed",
            FleetEvent::JobFailed { .. } => "job:failed",
            FleetEvent::JobCancelled { .. } => "job:cancelled",
            FleetEvent::JobForked { .. } => "job:forked",
            FleetEvent::Error { .. } => "error",
        }
    }

    /// Every event type name, for validating subscription filters.
    pub const TYPE_NAMES: [&'static str; 18] = [
        "initialized",
        "started",
        "stopped",
        "stop:progress",
        "config:reloaded",
        "agent:started",
        "agent:stopped",
        "schedule:triggered",
        "schedule:skipped",
        "job:created",
        "job:queued",
        "job:started",
        "job:output",
        "job:completed",
        "job:failed",
        "job:cancelled",
        "job:forked",
        "error",
    ];
}

/// An event with the instant it was emitted.
#[derive(Debug, Clone, Serialize)]
pub struct TimedEvent {
    pub timestamp: DateTime<Utc>,
    #[serde(flatten)]
    pub event: FleetEvent,
}

/// What a subscriber receives: an event, or a notice that it fell behind.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum EventItem {
    Event(TimedEvent),
    Lagged { r#type: &'static str, missed: u64 },
}

impl EventItem {
    fn lagged(missed: u64) -> EventItem {
        EventItem::Lagged {
            r#type: "lagged",
            missed,
        }
    }
}

/// The broadcast bus. Cloning shares the bus.
#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<TimedEvent>,
}

impl EventBus {
    pub fn new(capacity: usize) -> EventBus {
        let (sender, _) = broadcast::channel(capacity.max(16));
        EventBus { sender }
    }

    /// Emits an event; returns at once whether or not anyone listens.
    pub fn emit(&self, event: FleetEvent) {
        // An error only means there is no subscriber right now, which is fine.
        let _ = self.sender.send(TimedEvent {
            timestamp: Utc::now(),
            event,
        });
    }

    /// Whether anyone listens (to skip building events nobody would receive).
    pub fn has_subscribers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// A subscription to events whose type is in `types` (all when `None`).
    pub fn subscribe(&self, types: Option<Vec<String>>) -> EventSubscription {
        EventSubscription {
            receiver: self.sender.subscribe(),
            types,
        }
    }
}

pub struct EventSubscription {
    receiver: broadcast::Receiver<TimedEvent>,
    types: Option<Vec<String>>,
}

impl EventSubscription {
    /// The next matching event or lag notice; `None` when the bus is gone.
    pub async fn next(&mut self) -> Option<EventItem> {
        loop {
            match self.receiver.recv().await {
                Ok(timed) => {
                    let wanted = self
                        .types
                        .as_ref()
                        .is_none_or(|t| t.iter().any(|name| name == timed.event.type_name()));
                    if wanted {
                        return Some(EventItem::Event(timed));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Some(EventItem::lagged(missed))
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// A problem with the state directory: logged, and an `error` event for subscribers.
pub(super) fn report_state_error(events: &EventBus, message: &str) {
    tracing::error!("{message}");
    events.emit(FleetEvent::Error {
        message: message.to_string(),
        source: "state".into(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_subscriber_is_told_what_it_missed_and_never_blocks_emit() {
        let bus = EventBus::new(16);
        let mut slow = bus.subscribe(None);
        for _ in 0..100 {
            bus.emit(FleetEvent::Started);
        }
        match slow.next().await {
            Some(EventItem::Lagged { missed, .. }) => assert_eq!(missed, 84),
            other => panic!("expected a lag notice, got {other:?}"),
        }
        assert!(matches!(slow.next().await, Some(EventItem::Event(_))));
    }

    #[tokio::test]
    async fn filters_by_type_name() {
        let bus = EventBus::new(16);
        let mut only_stopped = bus.subscribe(Some(vec!["stopped".into()]));
        bus.emit(FleetEvent::Started);
        bus.emit(FleetEvent::Stopped {
            reason: "test".into(),
        });
        let Some(EventItem::Event(e)) = only_stopped.next().await else {
            panic!("expected an event")
        };
        assert_eq!(e.event.type_name(), "stopped");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["type"], "stopped");
        assert_eq!(json["reason"], "test");
        assert!(json["timestamp"].is_string());
    }

    #[test]
    fn knows_whether_anyone_listens() {
        let bus = EventBus::new(16);
        assert!(!bus.has_subscribers());
        let subscription = bus.subscribe(None);
        assert!(bus.has_subscribers());
        drop(subscription);
        assert!(!bus.has_subscribers());
    }

    #[test]
    fn type_names_list_is_complete() {
        let mut names = FleetEvent::TYPE_NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FleetEvent::TYPE_NAMES.len());
        assert!(FleetEvent::TYPE_NAMES.contains(&FleetEvent::Started.type_name()));
    }
}
