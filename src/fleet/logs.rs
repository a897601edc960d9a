//! The log bus: tracing events as structured entries, kept in a bounded ring for replay and streamed live.
//!
//! `LogBus::layer()` is a `tracing_subscriber::Layer`; whoever installs the process's subscriber (the daemon,
//! or an embedding program) adds it. Entries carry the agent and job they concern, taken from the event's own
//! fields or from the enclosing spans (`agent`, `job_id`), so `streamAgentLogs` can filter without parsing
//! messages. Emission never blocks: the ring drops its oldest entry, and a live reader has a bounded queue
//! of its own, filled only with the entries its filter (agent, job, level) takes, so that it lags only
//! behind what it asked for (`fleet::fanout`).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};

use super::events::{event_names, lagged_type, replayed_type};
use super::fanout::{Fanout, Received, Receiver};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Severity, ordered from `trace` (lowest) to `error`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn parse(text: &str) -> Option<LogLevel> {
        match text.to_ascii_lowercase().as_str() {
            "trace" => Some(LogLevel::Trace),
            "debug" => Some(LogLevel::Debug),
            "info" => Some(LogLevel::Info),
            "warn" | "warning" => Some(LogLevel::Warn),
            "error" => Some(LogLevel::Error),
            _ => None,
        }
    }

    fn from_tracing(level: &tracing::Level) -> LogLevel {
        match *level {
            tracing::Level::TRACE => LogLevel::Trace,
            tracing::Level::DEBUG => LogLevel::Debug,
            tracing::Level::INFO => LogLevel::Info,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::ERROR => LogLevel::Error,
        }
    }
}

/// One structured log entry (SPEC §10). Every field is always present; `agentName` and `jobId` are null
/// when the entry is about neither, `fields` empty when it has none.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    pub timestamp: DateTime<Utc>,
    pub level: LogLevel,
    /// The module that logged, without the crate prefix (`fleet`, `runner`, `rpc::transport`, …).
    pub source: String,
    pub agent_name: Option<String>,
    pub job_id: Option<String>,
    pub message: String,
    /// The entry's structured fields (`exitCode`, `pid`, …): the logged fields, names in camelCase.
    pub fields: Map<String, Value>,
}

/// Which entries a reader wants.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub min_level: Option<LogLevel>,
    pub agent_name: Option<String>,
    pub job_id: Option<String>,
}

impl LogFilter {
    pub fn matches(&self, entry: &LogEntry) -> bool {
        self.min_level.is_none_or(|min| entry.level >= min)
            && self
                .agent_name
                .as_ref()
                .is_none_or(|a| entry.agent_name.as_ref() == Some(a))
            && self
                .job_id
                .as_ref()
                .is_none_or(|j| entry.job_id.as_ref() == Some(j))
    }
}

struct Ring {
    entries: VecDeque<LogEntry>,
    capacity: usize,
}

/// Live entries a reader's queue holds before it loses the oldest.
const LIVE_QUEUE: usize = 4096;

/// The ring plus the live readers. Cloning shares the bus.
#[derive(Clone)]
pub struct LogBus {
    ring: Arc<Mutex<Ring>>,
    live: Fanout<LogEntry>,
}

impl LogBus {
    pub fn new(capacity: usize) -> LogBus {
        LogBus {
            ring: Arc::new(Mutex::new(Ring {
                entries: VecDeque::with_capacity(capacity.min(4096)),
                capacity: capacity.max(1),
            })),
            live: Fanout::new(),
        }
    }

    /// The tracing layer feeding this bus.
    pub fn layer(&self) -> LogLayer {
        LogLayer { bus: self.clone() }
    }

    pub fn push(&self, entry: LogEntry) {
        let mut ring = lock(&self.ring);
        if ring.entries.len() == ring.capacity {
            ring.entries.pop_front();
        }
        ring.entries.push_back(entry.clone());
        // Sent under the ring lock so a subscriber's replay and live stream meet without gap or duplicate.
        self.live.send(entry);
    }

    /// The newest `tail` matching entries (oldest first), then everything that follows, live.
    pub fn subscribe(&self, filter: LogFilter, tail: usize) -> LogSubscription {
        let ring = lock(&self.ring);
        let mut replay: Vec<LogEntry> = ring
            .entries
            .iter()
            .rev()
            .filter(|e| filter.matches(e))
            .take(tail)
            .cloned()
            .collect();
        replay.reverse();
        let receiver = self
            .live
            .subscribe(LIVE_QUEUE, Box::new(move |entry| filter.matches(entry)));
        drop(ring);
        LogSubscription {
            replay_end: Some(replay.len()),
            replay: replay.into(),
            receiver,
        }
    }

    /// Ends every subscription, present and future, once it has delivered what was pushed before.
    pub fn end_subscriptions(&self) {
        self.live.end();
    }

    /// Resolves when no subscription is left.
    pub async fn subscriptions_ended(&self) {
        self.live.ended().await;
    }
}

fn lock(ring: &Mutex<Ring>) -> std::sync::MutexGuard<'_, Ring> {
    // A panic while holding this lock cannot leave the ring inconsistent (push/pop only), so recover it.
    ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a log reader receives.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum LogItem {
    Entry(LogEntry),
    /// `missed` entries were dropped for this reader (it read too slowly).
    Lagged {
        #[schemars(schema_with = "lagged_type")]
        r#type: &'static str,
        timestamp: DateTime<Utc>,
        missed: u64,
    },
    /// Follows the replayed entries (`count` of them, maybe none): from here on entries are live. A reader
    /// that wants only the history stops here instead of guessing from a pause.
    Replayed {
        #[schemars(schema_with = "replayed_type")]
        r#type: &'static str,
        timestamp: DateTime<Utc>,
        count: usize,
    },
}

pub struct LogSubscription {
    replay: VecDeque<LogEntry>,
    /// How many entries the replay has, until its end was announced.
    replay_end: Option<usize>,
    receiver: Receiver<LogEntry>,
}

impl LogSubscription {
    pub async fn next(&mut self) -> Option<LogItem> {
        if let Some(entry) = self.replay.pop_front() {
            return Some(LogItem::Entry(entry));
        }
        if let Some(count) = self.replay_end.take() {
            return Some(LogItem::Replayed {
                r#type: event_names::REPLAYED,
                timestamp: Utc::now(),
                count,
            });
        }
        Some(match self.receiver.recv().await? {
            Received::Item(entry) => LogItem::Entry(entry),
            Received::Lagged(missed) => LogItem::Lagged {
                r#type: event_names::LAGGED,
                timestamp: Utc::now(),
                missed,
            },
        })
    }
}

/// Feeds tracing events into a [`LogBus`].
pub struct LogLayer {
    bus: LogBus,
}

/// The agent/job context recorded on a span, looked up by events inside it.
#[derive(Default, Clone)]
struct SpanContext {
    agent_name: Option<String>,
    job_id: Option<String>,
}

#[derive(Default)]
struct FieldCollector {
    message: Option<String>,
    context: SpanContext,
    fields: Map<String, Value>,
}

impl FieldCollector {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => {
                self.message = Some(match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            "agent" | "agent_name" => self.context.agent_name = value.as_str().map(str::to_string),
            "job_id" | "job" => self.context.job_id = value.as_str().map(str::to_string),
            name => {
                self.fields.insert(camel_case(name), value);
            }
        }
    }
}

/// A field's name on the wire: `exit_code` → `exitCode`, as every other key of the protocol.
fn camel_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        match c {
            '_' if !out.is_empty() => upper = true,
            c if upper => {
                out.extend(c.to_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

impl Visit for FieldCollector {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
}

impl<S> Layer<S> for LogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut collector = FieldCollector::default();
        attrs.record(&mut collector);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(collector.context);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut collector = FieldCollector::default();
        values.record(&mut collector);
        let mut extensions = span.extensions_mut();
        if let Some(existing) = extensions.get_mut::<SpanContext>() {
            if collector.context.agent_name.is_some() {
                existing.agent_name = collector.context.agent_name;
            }
            if collector.context.job_id.is_some() {
                existing.job_id = collector.context.job_id;
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut collector = FieldCollector::default();
        event.record(&mut collector);
        let mut context = collector.context;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(span_context) = span.extensions().get::<SpanContext>() {
                    if context.agent_name.is_none() {
                        context.agent_name = span_context.agent_name.clone();
                    }
                    if context.job_id.is_none() {
                        context.job_id = span_context.job_id.clone();
                    }
                }
            }
        }
        let metadata = event.metadata();
        let target = metadata.target();
        let source = target
            .strip_prefix("herdctld::")
            .unwrap_or(target)
            .to_string();
        self.bus.push(LogEntry {
            timestamp: Utc::now(),
            level: LogLevel::from_tracing(metadata.level()),
            source,
            agent_name: context.agent_name,
            job_id: context.job_id,
            message: collector.message.unwrap_or_default(),
            fields: collector.fields,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn with_bus(bus: &LogBus, f: impl FnOnce()) {
        let subscriber = tracing_subscriber::registry().with(bus.layer());
        tracing::subscriber::with_default(subscriber, f);
    }

    #[tokio::test]
    async fn entries_carry_agent_and_job_from_spans_and_fields() {
        let bus = LogBus::new(100);
        with_bus(&bus, || {
            let span = tracing::info_span!("job", agent = "alpha", job_id = "job-1");
            let _guard = span.enter();
            tracing::warn!(exit_code = 3, "job failed");
            tracing::info!(agent = "beta", "explicit agent wins");
        });
        let mut sub = bus.subscribe(LogFilter::default(), 10);
        let Some(LogItem::Entry(first)) = sub.next().await else {
            panic!("expected an entry")
        };
        assert_eq!(first.message, "job failed");
        assert_eq!(first.level, LogLevel::Warn);
        assert_eq!(first.agent_name.as_deref(), Some("alpha"));
        assert_eq!(first.job_id.as_deref(), Some("job-1"));
        // Field names are camelCase on the wire, as every key is.
        assert_eq!(first.fields["exitCode"], 3);
        assert!(first.source.contains("fleet::logs"));
        let Some(LogItem::Entry(second)) = sub.next().await else {
            panic!("expected an entry")
        };
        assert_eq!(second.agent_name.as_deref(), Some("beta"));
    }

    #[tokio::test]
    async fn replay_then_live_without_gap_and_with_filters() {
        let bus = LogBus::new(3);
        with_bus(&bus, || {
            for i in 0..5 {
                tracing::info!(agent = "a", "old {i}");
            }
            tracing::debug!(agent = "a", "too quiet");
        });
        let filter = LogFilter {
            min_level: Some(LogLevel::Info),
            agent_name: Some("a".into()),
            job_id: None,
        };
        let mut sub = bus.subscribe(filter, 10);
        with_bus(&bus, || {
            tracing::info!(agent = "b", "other agent");
            tracing::error!(agent = "a", "live");
        });
        let mut messages = Vec::new();
        for _ in 0..4 {
            match sub.next().await {
                Some(LogItem::Entry(e)) => messages.push(e.message),
                Some(LogItem::Replayed { count, .. }) => messages.push(format!("replayed {count}")),
                other => panic!("{other:?}"),
            }
        }
        // The ring holds 3 entries: "old 3", "old 4" and the debug one, which the level filter drops.
        assert_eq!(messages, ["old 3", "old 4", "replayed 2", "live"]);
    }

    fn entry(agent: &str, level: LogLevel, message: &str) -> LogEntry {
        LogEntry {
            timestamp: Utc::now(),
            level,
            source: "test".into(),
            agent_name: Some(agent.into()),
            job_id: None,
            message: message.into(),
            fields: Map::new(),
        }
    }

    /// A reader with `filter` gets `wanted` as its first live item, without a lag notice, although
    /// three queues' worth of info entries of agent `loud`, which the filter does not take, came first.
    async fn never_lags_behind_loud_info(filter: LogFilter, wanted: LogEntry) {
        let bus = LogBus::new(100);
        let mut reader = bus.subscribe(filter, 0);
        for i in 0..3 * LIVE_QUEUE {
            bus.push(entry("loud", LogLevel::Info, &format!("noise {i}")));
        }
        bus.push(wanted.clone());
        assert!(matches!(
            reader.next().await,
            Some(LogItem::Replayed { count: 0, .. })
        ));
        match reader.next().await {
            Some(LogItem::Entry(e)) => assert_eq!(e.message, wanted.message),
            other => panic!("expected {wanted:?}, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_reader_of_a_quiet_agent_never_lags_behind_a_loud_one() {
        let filter = LogFilter {
            agent_name: Some("quiet".into()),
            ..LogFilter::default()
        };
        never_lags_behind_loud_info(filter, entry("quiet", LogLevel::Info, "the one")).await;
    }

    #[tokio::test]
    async fn an_error_reader_never_lags_behind_info_entries() {
        let filter = LogFilter {
            min_level: Some(LogLevel::Error),
            ..LogFilter::default()
        };
        never_lags_behind_loud_info(filter, entry("loud", LogLevel::Error, "broken")).await;
    }
}
