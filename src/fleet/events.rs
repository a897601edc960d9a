//! Fleet events (SPEC §10) and the bus that delivers them.
//!
//! Emission never blocks the fleet: every subscriber has a bounded queue of its own, filled only with the
//! events its type filter takes (`fleet::fanout`). A subscriber that falls behind loses its oldest events
//! and is told how many with a `lagged {missed}` item; it never slows jobs or other subscribers, never lags
//! because of events it did not ask for, and its memory stays bounded by its queue's size.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::fanout::{Fanout, Received, Receiver};
use crate::job::{Job, JobError, OutputLine, TerminationType};

/// Declares the events once: each variant with its wire name and the constant naming it (in
/// [`event_names`]), from which the enum's serde tags, [`FleetEvent::type_name`] and
/// [`FleetEvent::TYPE_NAMES`] are made. A name is spelled here and nowhere else.
macro_rules! fleet_events {
    ($(
        $(#[$meta:meta])*
        $name:literal as $constant:ident => $variant:ident $({ $($field:ident: $type:ty),* $(,)? })?;
    )*) => {
        /// Everything the FleetManager tells the outside world. Serialized with `type` as the tag, payload
        /// fields in camelCase; job events carry the whole job record.
        #[derive(Debug, Clone, Serialize, JsonSchema)]
        #[serde(tag = "type")]
        pub enum FleetEvent {
            $(
                $(#[$meta])*
                #[serde(rename = $name, rename_all = "camelCase")]
                $variant $({ $($field: $type),* })?,
            )*
        }

        /// The wire name of every event, for clients and subscription filters.
        pub mod event_names {
            $(pub const $constant: &str = $name;)*
            /// The `type` of the notice a reader gets when it fell behind (events or log entries).
            pub const LAGGED: &str = "lagged";
            /// The `type` of the notice that ends a log stream's replay (what follows is live).
            pub const REPLAYED: &str = "replayed";
        }

        impl FleetEvent {
            /// The wire name of the event (`job:created`, …), used for subscription filters.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(FleetEvent::$variant { .. } => event_names::$constant,)*
                }
            }

            /// Every event type name, for validating subscription filters.
            pub const TYPE_NAMES: &'static [&'static str] = &[$(event_names::$constant),*];
        }
    };
}

fleet_events! {
    "initialized" as INITIALIZED => Initialized;
    "started" as STARTED => Started;
    "stopped" as STOPPED => Stopped { reason: String };
    "stop:progress" as STOP_PROGRESS => StopProgress { pending_jobs: usize };
    "config:reloaded" as CONFIG_RELOADED => ConfigReloaded { changes: Vec<String>, agent_count: usize };
    "agent:started" as AGENT_STARTED => AgentStarted { agent_name: String, job_id: String };
    "agent:stopped" as AGENT_STOPPED => AgentStopped { agent_name: String, job_id: String, reason: String };
    "schedule:triggered" as SCHEDULE_TRIGGERED => ScheduleTriggered {
        agent_name: String,
        schedule_name: String,
        job_id: String,
    };
    "schedule:skipped" as SCHEDULE_SKIPPED => ScheduleSkipped {
        agent_name: String,
        schedule_name: String,
        reason: SkipReason,
    };
    "job:created" as JOB_CREATED => JobCreated { job: Box<Job> };
    "job:queued" as JOB_QUEUED => JobQueued { job: Box<Job>, position: usize };
    "job:started" as JOB_STARTED => JobStarted { job: Box<Job> };
    /// The line in the shape of every output line (`jobOutput`, `getJob`): its `type` would clash with the
    /// event's.
    "job:output" as JOB_OUTPUT => JobOutput { job_id: String, line: Box<OutputLine> };
    "job:completed" as JOB_COMPLETED => JobCompleted { job_id: String, job: Box<Job>, result: Option<Value> };
    "job:failed" as JOB_FAILED => JobFailed { job_id: String, job: Box<Job>, error: Option<JobError> };
    "job:cancelled" as JOB_CANCELLED => JobCancelled {
        job_id: String,
        job: Box<Job>,
        termination_type: TerminationType,
    };
    "job:forked" as JOB_FORKED => JobForked { job: Box<Job>, forked_from: String };
    "error" as ERROR => Error { message: String, source: String };
}

/// Why a schedule fire did not create a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
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

/// An event with the instant it was emitted.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TimedEvent {
    pub timestamp: DateTime<Utc>,
    #[serde(flatten)]
    pub event: FleetEvent,
}

/// The schema of a lagged notice's `type`: the constant `lagged`.
pub(super) fn lagged_type(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "const": event_names::LAGGED})
}

/// The schema of a replay's end's `type`: the constant `replayed`.
pub(super) fn replayed_type(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "const": event_names::REPLAYED})
}

/// What a subscriber receives: an event, or a notice that it fell behind.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum EventItem {
    Event(TimedEvent),
    /// `missed` events were dropped for this reader (it read too slowly).
    Lagged {
        #[schemars(schema_with = "lagged_type")]
        r#type: &'static str,
        timestamp: DateTime<Utc>,
        missed: u64,
    },
}

impl EventItem {
    fn lagged(missed: u64) -> EventItem {
        EventItem::Lagged {
            r#type: event_names::LAGGED,
            timestamp: Utc::now(),
            missed,
        }
    }
}

/// The bus. Cloning shares it.
#[derive(Clone)]
pub struct EventBus {
    fanout: Fanout<TimedEvent>,
    /// Events a subscriber's queue holds before it loses the oldest.
    capacity: usize,
    /// Subscriptions whose filter takes `job:output`: per-line events are built only while there is one.
    output_readers: Arc<AtomicUsize>,
}

impl EventBus {
    pub fn new(capacity: usize) -> EventBus {
        EventBus {
            fanout: Fanout::new(),
            capacity: capacity.max(16),
            output_readers: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Emits an event; returns at once whether or not anyone listens.
    pub fn emit(&self, event: FleetEvent) {
        self.fanout.send(TimedEvent {
            timestamp: Utc::now(),
            event,
        });
    }

    /// Whether anyone listens to `job:output` (to skip building per-line events nobody would receive).
    pub fn wants_output(&self) -> bool {
        self.output_readers.load(Ordering::Relaxed) > 0
    }

    /// A subscription to events whose type is in `types` (all when `None`).
    pub fn subscribe(&self, types: Option<Vec<String>>) -> EventSubscription {
        let output_reader = types
            .as_ref()
            .is_none_or(|t| t.iter().any(|name| name == event_names::JOB_OUTPUT))
            .then(|| OutputReader::new(&self.output_readers));
        let filter = move |timed: &TimedEvent| {
            types
                .as_ref()
                .is_none_or(|t| t.iter().any(|name| name == timed.event.type_name()))
        };
        EventSubscription {
            receiver: self.fanout.subscribe(self.capacity, Box::new(filter)),
            _output_reader: output_reader,
        }
    }

    /// Ends every subscription, present and future, once it has delivered what was emitted before.
    pub fn end_subscriptions(&self) {
        self.fanout.end();
    }

    /// Resolves when no subscription is left.
    pub async fn subscriptions_ended(&self) {
        self.fanout.ended().await;
    }
}

/// Counts a subscription that takes `job:output` for as long as it lives.
struct OutputReader(Arc<AtomicUsize>);

impl OutputReader {
    fn new(count: &Arc<AtomicUsize>) -> OutputReader {
        count.fetch_add(1, Ordering::Relaxed);
        OutputReader(count.clone())
    }
}

impl Drop for OutputReader {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct EventSubscription {
    receiver: Receiver<TimedEvent>,
    _output_reader: Option<OutputReader>,
}

impl EventSubscription {
    /// The next matching event or lag notice; `None` when the bus is gone or its subscriptions ended.
    pub async fn next(&mut self) -> Option<EventItem> {
        Some(match self.receiver.recv().await? {
            Received::Item(timed) => EventItem::Event(timed),
            Received::Lagged(missed) => EventItem::lagged(missed),
        })
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
    fn knows_whether_anyone_listens_to_output() {
        let bus = EventBus::new(16);
        assert!(!bus.wants_output());
        let control_only = bus.subscribe(Some(vec!["job:completed".into()]));
        assert!(!bus.wants_output());
        let everything = bus.subscribe(None);
        assert!(bus.wants_output());
        drop(everything);
        let output = bus.subscribe(Some(vec!["job:output".into()]));
        assert!(bus.wants_output());
        drop((output, control_only));
        assert!(!bus.wants_output());
    }

    fn output_event(seq: u64) -> FleetEvent {
        FleetEvent::JobOutput {
            job_id: "j".into(),
            line: Box::new(OutputLine {
                seq,
                timestamp: Utc::now(),
                kind: "stdout".into(),
                chunk: String::new(),
                message: None,
                truncated: false,
            }),
        }
    }

    #[tokio::test]
    async fn a_subscriber_without_output_in_its_filter_never_lags_behind_output() {
        let bus = EventBus::new(16);
        let mut completed = bus.subscribe(Some(vec!["job:failed".into()]));
        let mut everything = bus.subscribe(None);
        for seq in 0..1000 {
            bus.emit(output_event(seq));
        }
        bus.emit(FleetEvent::Error {
            message: "m".into(),
            source: "s".into(),
        });
        bus.emit(FleetEvent::Stopped {
            reason: "test".into(),
        });
        // Filtered out before its queue: no lag notice, nothing else.
        drop(bus);
        assert!(
            completed.next().await.is_none(),
            "neither a lag nor an event"
        );
        let Some(EventItem::Lagged { missed, .. }) = everything.next().await else {
            panic!("the unfiltered subscriber lagged behind the output")
        };
        assert!(missed > 900, "{missed}");
    }

    #[tokio::test]
    async fn a_subscriber_never_lags_behind_events_it_did_not_ask_for() {
        let bus = EventBus::new(16);
        let mut completed = bus.subscribe(Some(vec!["job:completed".into()]));
        // Thousands of events of other types (not output), far more than a queue holds.
        for _ in 0..5000 {
            bus.emit(FleetEvent::ScheduleSkipped {
                agent_name: "busy".into(),
                schedule_name: "often".into(),
                reason: SkipReason::AlreadyRunning,
            });
            bus.emit(FleetEvent::Error {
                message: "m".into(),
                source: "s".into(),
            });
        }
        let job = Job::new(
            crate::job::JobId::parse("job-2026-12-03-aaaaaa").unwrap(),
            "quiet".into(),
            None,
            crate::job::TriggerType::Manual,
            None,
            5,
            Utc::now(),
        );
        bus.emit(FleetEvent::JobCompleted {
            job_id: job.id.to_string(),
            job: Box::new(job),
            result: None,
        });
        match completed.next().await {
            Some(EventItem::Event(e)) => assert_eq!(e.event.type_name(), "job:completed"),
            other => panic!("expected job:completed, got {other:?}"),
        }
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
