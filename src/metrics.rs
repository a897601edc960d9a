//! metrics: the fleet's Prometheus metrics (issue 19) and their text exposition.
//!
//! Owns one `prometheus_client` registry with typed families (label sets are small structs) and the
//! calls that update them where things happen: jobs started and finished (outcome, duration, cost and
//! tokens from the final record), schedule fires and skips, output lines and bytes, RPC calls, subscribers
//! and lagged notices. Queue depth and running jobs are read from the fleet at scrape time through a
//! [`FleetGauges`] source; process metrics are read from `/proc/self` at scrape time. Every update is an
//! atomic increment (a labelled family takes a read lock to find its series); nothing here does I/O except
//! [`Metrics::encode`].
//!
//! No sockets and no JSON-RPC: `rpc` serves [`Metrics::encode`] at `GET /metrics` (content type
//! [`CONTENT_TYPE`], Prometheus text format 0.0.4) and `daemon` on `--metrics-listen`.
//!
//! Label cardinality stays bounded: agents and schedules come from the configuration, models from Claude's
//! results, RPC methods from the method table (`unknown` for the rest), codes from the error table.

use std::fmt::{self, Write as _};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::Registry;
use serde_json::Value;

use crate::job::Job;

/// The content type of [`Metrics::encode`]'s text: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the job duration histogram: agent runs last from a second to hours.
const DURATION_BUCKETS: [f64; 12] = [
    0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

/// Token kinds of a job's `usage.per_model` entries (herdctl's keys) and their `kind` label.
const TOKEN_KINDS: [(&str, &str); 4] = [
    ("input_tokens", "input"),
    ("output_tokens", "output"),
    ("cache_creation_input_tokens", "cache_creation"),
    ("cache_read_input_tokens", "cache_read"),
];

/// The fleet's gauges, read at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetGauges {
    /// Jobs waiting for a slot.
    pub queue_depth: u64,
    /// Jobs running now.
    pub jobs_running: u64,
}

type GaugeSource = Box<dyn Fn() -> FleetGauges + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    agent: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScheduleLabels {
    agent: String,
    schedule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SkipLabels {
    agent: String,
    schedule: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: RpcCode,
}

/// `ok`, or the JSON-RPC error code of the reply.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct RpcCode(Option<i32>);

impl EncodeLabelValue for RpcCode {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        match self.0 {
            None => encoder.write_str("ok"),
            Some(code) => write!(encoder, "{code}"),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabels {
    subscription: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    agent: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    agent: String,
    model: String,
    kind: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The metrics of one fleet. Shared (`Arc`) by the fleet, the RPC layer and whoever serves scrapes.
pub struct Metrics {
    registry: Registry,
    jobs_started: Family<AgentLabels, Counter>,
    jobs_finished: Family<OutcomeLabels, Counter>,
    job_duration: Family<AgentLabels, Histogram, fn() -> Histogram>,
    schedule_fires: Family<ScheduleLabels, Counter>,
    schedule_skips: Family<SkipLabels, Counter>,
    output_lines: Counter,
    output_bytes: Counter,
    rpc_calls: Family<RpcLabels, Counter>,
    subscribers: Family<SubscriptionLabels, Gauge>,
    lagged_notices: Family<SubscriptionLabels, Counter>,
    cost_usd: Family<ModelLabels, Counter<f64, AtomicU64>>,
    tokens: Family<TokenLabels, Counter>,
    gauge_source: Arc<OnceLock<GaugeSource>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let metrics = Metrics {
            jobs_started: Family::default(),
            jobs_finished: Family::default(),
            job_duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            schedule_fires: Family::default(),
            schedule_skips: Family::default(),
            output_lines: Counter::default(),
            output_bytes: Counter::default(),
            rpc_calls: Family::default(),
            subscribers: Family::default(),
            lagged_notices: Family::default(),
            cost_usd: Family::default(),
            tokens: Family::default(),
            gauge_source: Arc::new(OnceLock::new()),
            registry: Registry::default(),
        };
        // Counter names get their `_total` from the encoder.
        registry.register(
            "herdctld_jobs_started",
            "Jobs that started running, by agent",
            metrics.jobs_started.clone(),
        );
        registry.register(
            "herdctld_jobs_finished",
            "Jobs that reached a final status, by agent and outcome (the exit reason)",
            metrics.jobs_finished.clone(),
        );
        registry.register(
            "herdctld_job_duration_seconds",
            "Run time of finished jobs that ran, by agent",
            metrics.job_duration.clone(),
        );
        registry.register(
            "herdctld_schedule_fires",
            "Schedule fires that created a job, by agent and schedule",
            metrics.schedule_fires.clone(),
        );
        registry.register(
            "herdctld_schedule_skips",
            "Schedule fires that created no job, by agent, schedule and reason",
            metrics.schedule_skips.clone(),
        );
        registry.register(
            "herdctld_output_lines",
            "Job output lines read from jobs (each goes to the job's .jsonl file, events and streamJobOutput)",
            metrics.output_lines.clone(),
        );
        registry.register(
            "herdctld_output_bytes",
            "Bytes of job output lines as serialised JSON, without newlines",
            metrics.output_bytes.clone(),
        );
        registry.register(
            "herdctld_rpc_calls",
            "JSON-RPC calls answered, by method and code (ok or the error code)",
            metrics.rpc_calls.clone(),
        );
        registry.register(
            "herdctld_subscribers",
            "Open subscriptions, by subscription method",
            metrics.subscribers.clone(),
        );
        registry.register(
            "herdctld_lagged_notices",
            "Lagged notices sent to subscribers that fell behind, by subscription method",
            metrics.lagged_notices.clone(),
        );
        registry.register(
            "herdctld_cost_usd",
            "Cost reported by finished jobs in US dollars, by agent and model",
            metrics.cost_usd.clone(),
        );
        registry.register(
            "herdctld_tokens",
            "Tokens reported by finished jobs, by agent, model and kind",
            metrics.tokens.clone(),
        );
        registry.register_collector(Box::new(FleetCollector(metrics.gauge_source.clone())));
        registry.register_collector(Box::new(ProcessCollector));
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Where [`FleetGauges`] come from at scrape time; the first source set stays.
    pub fn set_gauge_source(&self, source: impl Fn() -> FleetGauges + Send + Sync + 'static) {
        if self.gauge_source.set(Box::new(source)).is_err() {
            tracing::debug!("metrics already have a gauge source; keeping it");
        }
    }

    pub fn job_started(&self, agent: &str) {
        self.jobs_started
            .get_or_create(&AgentLabels {
                agent: agent.to_string(),
            })
            .inc();
    }

    /// A job's final record: its outcome, its run time if it ran, and its cost and tokens.
    pub fn job_finished(&self, job: &Job) {
        let outcome = job
            .exit_reason
            .map_or_else(|| job.status.as_str(), |reason| reason.as_str());
        self.jobs_finished
            .get_or_create(&OutcomeLabels {
                agent: job.agent.clone(),
                outcome,
            })
            .inc();
        // An interrupted job's duration spans the daemon's downtime: not a run's duration.
        let ran = job.exit_reason != Some(crate::job::ExitReason::Interrupted);
        if let (true, Some(_), Some(ms)) = (ran, job.started_at, job.duration_ms) {
            self.job_duration
                .get_or_create(&AgentLabels {
                    agent: job.agent.clone(),
                })
                .observe(ms as f64 / 1000.0);
        }
        self.record_usage(job);
    }

    fn record_usage(&self, job: &Job) {
        let per_model = job
            .usage
            .as_ref()
            .and_then(|usage| usage.get("per_model"))
            .and_then(Value::as_object);
        if let Some(per_model) = per_model {
            for (model, usage) in per_model {
                for (key, kind) in TOKEN_KINDS {
                    let Some(count) = usage.get(key).and_then(Value::as_u64) else {
                        continue;
                    };
                    if count > 0 {
                        self.tokens
                            .get_or_create(&TokenLabels {
                                agent: job.agent.clone(),
                                model: model.clone(),
                                kind,
                            })
                            .inc_by(count);
                    }
                }
            }
        }
        for (model, cost) in costs_by_model(job) {
            if cost > 0.0 {
                self.cost_usd
                    .get_or_create(&ModelLabels {
                        agent: job.agent.clone(),
                        model,
                    })
                    .inc_by(cost);
            }
        }
    }

    pub fn schedule_fired(&self, agent: &str, schedule: &str) {
        self.schedule_fires
            .get_or_create(&ScheduleLabels {
                agent: agent.to_string(),
                schedule: schedule.to_string(),
            })
            .inc();
    }

    pub fn schedule_skipped(&self, agent: &str, schedule: &str, reason: &'static str) {
        self.schedule_skips
            .get_or_create(&SkipLabels {
                agent: agent.to_string(),
                schedule: schedule.to_string(),
                reason,
            })
            .inc();
    }

    /// A batch of output lines persisted: two atomic additions, whatever the batch's size.
    pub fn output(&self, lines: u64, bytes: u64) {
        self.output_lines.inc_by(lines);
        self.output_bytes.inc_by(bytes);
    }

    /// One JSON-RPC call answered; `code` is its error code, `None` for a result.
    pub fn rpc_call(&self, method: &'static str, code: Option<i32>) {
        self.rpc_calls
            .get_or_create(&RpcLabels {
                method,
                code: RpcCode(code),
            })
            .inc();
    }

    /// Counts an open subscription until the returned guard is dropped.
    pub fn subscriber(&self, subscription: &'static str) -> SubscriberGuard {
        let gauge = self
            .subscribers
            .get_or_create_owned(&SubscriptionLabels { subscription });
        gauge.inc();
        SubscriberGuard(gauge)
    }

    pub fn lagged_notice(&self, subscription: &'static str) {
        self.lagged_notices
            .get_or_create(&SubscriptionLabels { subscription })
            .inc();
    }

    /// The text exposition of every series (Prometheus text format 0.0.4, [`CONTENT_TYPE`]). Reads
    /// `/proc/self` and calls the gauge source.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(fmt::Error) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            // Writing into a String cannot fail; a metric's encoder reporting an error is a bug there.
            tracing::error!("encoding the metrics failed; the scrape is incomplete");
        }
        text
    }
}

/// Keeps a subscription counted in `herdctld_subscribers`; dropping it uncounts it.
#[derive(Debug)]
pub struct SubscriberGuard(Gauge);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A finished job's cost per model: Claude's `modelUsage.<model>.costUSD` where the result gives it,
/// otherwise the whole `total_cost_usd` under the job's only model (or `unknown` when it used several or
/// named none).
fn costs_by_model(job: &Job) -> Vec<(String, f64)> {
    let Some(result) = job.result.as_ref() else {
        return Vec::new();
    };
    let models = result.get("modelUsage").and_then(Value::as_object);
    if let Some(models) = models {
        let costs: Vec<(String, f64)> = models
            .iter()
            .filter_map(|(model, usage)| {
                let cost = usage.get("costUSD").and_then(Value::as_f64)?;
                Some((model.clone(), cost))
            })
            .collect();
        if !costs.is_empty() {
            return costs;
        }
    }
    let Some(total) = result.get("total_cost_usd").and_then(Value::as_f64) else {
        return Vec::new();
    };
    let model = match models {
        Some(models) if models.len() == 1 => models.keys().next().cloned(),
        _ => None,
    };
    vec![(model.unwrap_or_else(|| "unknown".to_string()), total)]
}

/// `herdctld_queue_depth` and `herdctld_jobs_running`, from the fleet at scrape time. The collectors' help
/// texts end in a period because the registry appends one to those it registers.
struct FleetCollector(Arc<OnceLock<GaugeSource>>);

impl fmt::Debug for FleetCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FleetCollector")
    }
}

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let gauges = self.0.get().map(|source| source()).unwrap_or_default();
        encode_gauge(
            &mut encoder,
            "herdctld_queue_depth",
            "Jobs queued, waiting for a slot.",
            gauges.queue_depth as i64,
        )?;
        encode_gauge(
            &mut encoder,
            "herdctld_jobs_running",
            "Jobs running now.",
            gauges.jobs_running as i64,
        )
    }
}

fn encode_gauge<N>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: N,
) -> Result<(), fmt::Error>
where
    ConstGauge<N>: EncodeMetric + TypedMetric,
{
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric)
}

/// The conventional `process_*` series, read from `/proc/self` at scrape time; a value that cannot be read
/// is left out of that scrape.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = process_stats();
        if let Some(cpu) = stats.cpu_seconds {
            let counter = ConstCounter::new(cpu);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent in seconds.",
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        if let Some(rss) = stats.resident_memory_bytes {
            encode_gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                rss as i64,
            )?;
        }
        if let Some(fds) = stats.open_fds {
            encode_gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors.",
                fds as i64,
            )?;
        }
        if let Some(start) = stats.start_time_seconds {
            encode_gauge(
                &mut encoder,
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds.",
                start,
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: Option<f64>,
    resident_memory_bytes: Option<u64>,
    open_fds: Option<u64>,
    start_time_seconds: Option<f64>,
}

fn process_stats() -> ProcessStats {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // SAFETY: as above.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| boot_time_seconds(&text));
    let mut stats = stat
        .as_deref()
        .map(|text| parse_stat(text, ticks as f64, page_size.max(0) as u64, boot_time))
        .unwrap_or_default();
    stats.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        // The directory's own descriptor, open while it is read, is counted too; one off is fine.
        .map(|entries| entries.count() as u64);
    stats
}

/// `btime` of `/proc/stat`: the boot time in seconds since the epoch.
fn boot_time_seconds(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// CPU time, resident memory and start time from `/proc/self/stat` (proc(5): fields 14, 15, 22, 24).
fn parse_stat(stat: &str, ticks: f64, page_size: u64, boot_time: Option<u64>) -> ProcessStats {
    // The command name (field 2) may contain spaces and parentheses: fields are counted after its last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return ProcessStats::default();
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let usable_ticks = ticks > 0.0;
    ProcessStats {
        cpu_seconds: match (field(14), field(15)) {
            (Some(user), Some(system)) if usable_ticks => Some((user + system) as f64 / ticks),
            _ => None,
        },
        resident_memory_bytes: field(24).map(|pages| pages * page_size),
        open_fds: None,
        start_time_seconds: match (field(22), boot_time) {
            (Some(start), Some(boot)) if usable_ticks => Some(boot as f64 + start as f64 / ticks),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{ExitReason, JobId, JobStatus, TriggerType};
    use chrono::Utc;
    use serde_json::json;

    fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(k).is_some_and(|have| have == *v))
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    }

    fn finished_job(agent: &str, reason: ExitReason, result: Value) -> Job {
        let mut job = Job::new(
            JobId::generate(Utc::now()),
            agent.to_string(),
            None,
            TriggerType::Manual,
            None,
            crate::job::DEFAULT_PRIORITY,
            Utc::now(),
        );
        job.status = JobStatus::Completed;
        job.exit_reason = Some(reason);
        job.started_at = Some(Utc::now());
        job.duration_ms = Some(2500);
        job.usage = crate::job::usage_from_result(&result);
        job.result = Some(result);
        job
    }

    #[test]
    fn job_series_carry_outcome_duration_cost_and_tokens() {
        let metrics = Metrics::new();
        metrics.job_started("a");
        let result = json!({"total_cost_usd": 0.25, "modelUsage": {"m1": {"inputTokens": 3, "outputTokens": 2}}});
        metrics.job_finished(&finished_job("a", ExitReason::Success, result));
        let result = json!({"modelUsage": {
            "m1": {"inputTokens": 1, "costUSD": 0.5},
            "m2": {"cacheReadInputTokens": 7, "costUSD": 1.5},
        }});
        metrics.job_finished(&finished_job("a", ExitReason::Error, result));
        let text = metrics.encode();
        let get = |name, labels: &[(&str, &str)]| sample(&text, name, labels);
        assert_eq!(
            get("herdctld_jobs_started_total", &[("agent", "a")]),
            Some(1.0)
        );
        let ok = [("agent", "a"), ("outcome", "success")];
        assert_eq!(get("herdctld_jobs_finished_total", &ok), Some(1.0));
        let error = [("agent", "a"), ("outcome", "error")];
        assert_eq!(get("herdctld_jobs_finished_total", &error), Some(1.0));
        let m1 = [("agent", "a"), ("model", "m1")];
        // The first job's total goes to its only model, the second's per-model cost to each.
        assert_eq!(get("herdctld_cost_usd_total", &m1), Some(0.75));
        let m2 = [("agent", "a"), ("model", "m2")];
        assert_eq!(get("herdctld_cost_usd_total", &m2), Some(1.5));
        let input = [("agent", "a"), ("model", "m1"), ("kind", "input")];
        assert_eq!(get("herdctld_tokens_total", &input), Some(4.0));
        let cache = [("agent", "a"), ("model", "m2"), ("kind", "cache_read")];
        assert_eq!(get("herdctld_tokens_total", &cache), Some(7.0));
        assert!(text.contains("herdctld_job_duration_seconds_count{agent=\"a\"} 2\n"));
        assert!(text.contains("herdctld_job_duration_seconds_sum{agent=\"a\"} 5.0\n"));
        assert!(text.contains("herdctld_job_duration_seconds_bucket{agent=\"a\",le=\"5\"} 2\n"));
    }

    #[test]
    fn rpc_subscribers_output_schedules_and_gauges() {
        let metrics = Metrics::new();
        metrics.rpc_call("getStatus", None);
        metrics.rpc_call("getStatus", None);
        metrics.rpc_call("unknown", Some(-32601));
        metrics.output(3, 120);
        metrics.schedule_fired("a", "s");
        metrics.schedule_skipped("a", "s", "already_running");
        metrics.lagged_notice("subscribeEvents");
        let kept = metrics.subscriber("subscribeEvents");
        drop(metrics.subscriber("subscribeEvents"));
        metrics.set_gauge_source(|| FleetGauges {
            queue_depth: 4,
            jobs_running: 2,
        });
        let text = metrics.encode();
        let get = |name, labels: &[(&str, &str)]| sample(&text, name, labels);
        let ok = [("method", "getStatus"), ("code", "ok")];
        assert_eq!(get("herdctld_rpc_calls_total", &ok), Some(2.0));
        let unknown = [("method", "unknown"), ("code", "-32601")];
        assert_eq!(get("herdctld_rpc_calls_total", &unknown), Some(1.0));
        assert_eq!(get("herdctld_output_lines_total", &[]), Some(3.0));
        assert_eq!(get("herdctld_output_bytes_total", &[]), Some(120.0));
        let s = [("agent", "a"), ("schedule", "s")];
        assert_eq!(get("herdctld_schedule_fires_total", &s), Some(1.0));
        let skip = [("reason", "already_running")];
        assert_eq!(get("herdctld_schedule_skips_total", &skip), Some(1.0));
        let events = [("subscription", "subscribeEvents")];
        assert_eq!(get("herdctld_subscribers", &events), Some(1.0));
        assert_eq!(get("herdctld_lagged_notices_total", &events), Some(1.0));
        assert_eq!(get("herdctld_queue_depth", &[]), Some(4.0));
        assert_eq!(get("herdctld_jobs_running", &[]), Some(2.0));
        assert!(get("process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));
        assert!(get("process_open_fds", &[]).is_some_and(|v| v > 0.0));
        assert!(get("process_cpu_seconds_total", &[]).is_some());
        assert!(get("process_start_time_seconds", &[]).is_some_and(|v| v > 1.0e9));
        drop(kept);
        assert_eq!(
            sample(&metrics.encode(), "herdctld_subscribers", &events),
            Some(0.0)
        );
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis; fields from proc(5).
        let mut stat = String::from("42 (my (odd) name) S");
        for n in 4..=52 {
            let value = match n {
                14 => 250,  // utime
                15 => 50,   // stime
                22 => 1000, // starttime
                24 => 10,   // rss pages
                _ => 0,
            };
            stat.push_str(&format!(" {value}"));
        }
        let stats = parse_stat(&stat, 100.0, 4096, Some(1_700_000_000));
        assert_eq!(stats.cpu_seconds, Some(3.0));
        assert_eq!(stats.resident_memory_bytes, Some(40960));
        assert_eq!(stats.start_time_seconds, Some(1_700_000_010.0));
        assert_eq!(
            parse_stat("garbage", 100.0, 4096, None),
            ProcessStats::default()
        );
        assert_eq!(boot_time_seconds("cpu 1 2\nbtime 123\n"), Some(123));
    }
}
