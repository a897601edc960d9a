//! The method table: every FleetManager operation as a JSON-RPC method or subscription (SPEC §11).
//!
//! Params are named (canonical) or positional in the documented order; unknown names are refused with
//! -32602. Domain errors become application codes with `data: {code, ...context}`. This module only
//! translates: every decision is the FleetManager's.

use std::sync::Arc;
use std::time::Duration;

use jsonrpsee::core::SubscriptionError;
use jsonrpsee::types::ErrorObjectOwned;
use jsonrpsee::{PendingSubscriptionSink, RpcModule, SubscriptionMessage, SubscriptionSink};
use serde::Serialize;
use serde_json::Value;

use crate::fleet::{
    EventItem, EventSubscription, FleetError, FleetManager, ForkOptions, JobOutputStream, JobQuery,
    LogFilter, LogItem, LogLevel, LogSubscription, OutputBatchItem, OutputItem, StopOptions,
    TriggerOptions,
};

use super::job_output::{OutputNotifications, STREAM_JOB_OUTPUT};
use super::params::{
    invalid_params, parse, AgentLogsParams, CancelParams, EventsParams, ForkParams,
    JobOutputParams, JobParams, JobsParams, LogsParams, NameParams, NoParams, ScheduleParams,
    StopParams, TriggerParams,
};
use super::results::{JobDetail, StateResult, StatusResult};
use super::transport::raw::{RawSubscription, RawSubscriptions};

/// The OpenRPC document served by `rpc.discover`, byte for byte the file in `proto-docs/`.
pub const OPENRPC_DOCUMENT: &str = include_str!("../../proto-docs/openrpc.json");

/// Builds the module with every method and subscription registered.
pub fn fleet_module(fleet: FleetManager) -> RpcModule<FleetManager> {
    let mut module = RpcModule::new(fleet);
    register(&mut module).unwrap_or_else(|e| {
        // Registration only fails on a duplicate name, a programming error caught by every test run.
        panic!("method table is inconsistent: {e}")
    });
    module
}

/// `streamJobOutput`'s notification and its unsubscribe method (the method's name is `job_output`'s).
const JOB_OUTPUT: &str = "jobOutput";
const UNSUBSCRIBE_JOB_OUTPUT: &str = "unsubscribeJobOutput";

/// The subscriptions the NDJSON framing serves as bytes (`streamJobOutput`: a flooding job's lines are
/// written straight from the text its pump made, see `rpc::job_output`); [`fleet_module`] keeps them for
/// the other framings.
pub fn fleet_raw_subscriptions(fleet: FleetManager) -> RawSubscriptions {
    let mut raw = RawSubscriptions::default();
    raw.register(
        STREAM_JOB_OUTPUT,
        JOB_OUTPUT,
        UNSUBSCRIBE_JOB_OUTPUT,
        Arc::new(move |params| {
            OutputNotifications::open(&fleet, params)
                .map(|notifications| Box::new(notifications) as Box<dyn RawSubscription>)
        }),
    );
    raw
}

/// Names of every method the module registers, subscriptions and unsubscriptions included.
pub fn registered_method_names(module: &RpcModule<FleetManager>) -> Vec<String> {
    let mut names: Vec<String> = module.method_names().map(str::to_string).collect();
    names.sort();
    names
}

fn domain_error(error: FleetError) -> ErrorObjectOwned {
    super::error::fleet_error(&error)
}

fn to_value(result: impl Serialize) -> Result<Value, ErrorObjectOwned> {
    serde_json::to_value(result)
        .map_err(|e| ErrorObjectOwned::owned(-32603, e.to_string(), None::<()>))
}

/// Log entries replayed to a new log subscriber unless it asks for another `tail`.
const DEFAULT_LOG_TAIL: usize = 100;

fn parse_level(level: Option<&str>) -> Result<Option<LogLevel>, ErrorObjectOwned> {
    level
        .map(|text| {
            LogLevel::parse(text).ok_or_else(|| {
                invalid_params(format!(
                    "unknown level {text:?}; use trace, debug, info, warn or error"
                ))
            })
        })
        .transpose()
}

fn register(
    module: &mut RpcModule<FleetManager>,
) -> Result<(), jsonrpsee::core::RegisterMethodError> {
    module.register_async_method("initialize", |params, fleet, _| async move {
        parse::<NoParams>(&params)?;
        fleet.initialize().await.map_err(domain_error)?;
        to_value(StateResult {
            state: fleet.state(),
        })
    })?;
    module.register_async_method("start", |params, fleet, _| async move {
        parse::<NoParams>(&params)?;
        fleet.start().await.map_err(domain_error)?;
        to_value(StateResult {
            state: fleet.state(),
        })
    })?;
    module.register_async_method("stop", |params, fleet, _| async move {
        let p: StopParams = parse(&params)?;
        fleet
            .stop(StopOptions {
                wait_for_jobs: p.wait_for_jobs,
                timeout: Duration::from_millis(p.timeout),
                cancel_on_timeout: p.cancel_on_timeout,
                ..StopOptions::default()
            })
            .await
            .map_err(domain_error)?;
        to_value(StateResult {
            state: fleet.state(),
        })
    })?;
    module.register_async_method("reload", |params, fleet, _| async move {
        parse::<NoParams>(&params)?;
        to_value(fleet.reload().await.map_err(domain_error)?)
    })?;
    module.register_method("getState", |params, fleet, _| {
        parse::<NoParams>(&params)?;
        to_value(fleet.state())
    })?;
    module.register_async_method("getStatus", |params, fleet, _| async move {
        parse::<NoParams>(&params)?;
        to_value(StatusResult {
            status: fleet.status().await,
            protocol_version: super::openrpc::PROTOCOL_VERSION,
        })
    })?;
    module.register_async_method("getAgents", |params, fleet, _| async move {
        parse::<NoParams>(&params)?;
        to_value(fleet.agents().await.map_err(domain_error)?)
    })?;
    module.register_async_method("getAgent", |params, fleet, _| async move {
        let p: NameParams = parse(&params)?;
        to_value(fleet.agent(&p.name).await.map_err(domain_error)?)
    })?;
    module.register_method("getJobs", |params, fleet, _| {
        let p: JobsParams = parse(&params)?;
        let query = JobQuery {
            agent: p.agent_name,
            status: p.status,
            since: p.since,
            until: p.until,
            limit: p.limit,
            offset: p.offset,
        };
        to_value(fleet.jobs(&query).map_err(domain_error)?)
    })?;
    module.register_method("getJob", |params, fleet, _| {
        let p: JobParams = parse(&params)?;
        let (job, page) = fleet.job(&p.id, p.output()).map_err(domain_error)?;
        let (output, output_next_seq) = match page {
            Some(page) => (Some(page.lines), page.next_seq),
            None => (None, None),
        };
        to_value(JobDetail {
            job,
            output,
            output_next_seq,
        })
    })?;
    module.register_async_method("getSchedules", |params, fleet, _| async move {
        parse::<NoParams>(&params)?;
        to_value(fleet.schedules().await.map_err(domain_error)?)
    })?;
    module.register_async_method("getSchedule", |params, fleet, _| async move {
        let p: ScheduleParams = parse(&params)?;
        to_value(
            fleet
                .schedule(&p.agent_name, &p.schedule_name)
                .await
                .map_err(domain_error)?,
        )
    })?;
    module.register_method("getQueue", |params, fleet, _| {
        parse::<NoParams>(&params)?;
        to_value(fleet.queue().map_err(domain_error)?)
    })?;
    module.register_async_method("trigger", |params, fleet, _| async move {
        let p: TriggerParams = parse(&params)?;
        let job = fleet
            .trigger(
                &p.agent_name,
                TriggerOptions {
                    schedule: p.schedule_name,
                    prompt: p.prompt,
                    work_items: p.work_items,
                    priority: p.priority,
                    fresh_session: p.fresh_session,
                    over_budget: p.over_budget,
                },
            )
            .await
            .map_err(domain_error)?;
        to_value(job)
    })?;
    module.register_async_method("cancelJob", |params, fleet, _| async move {
        let p: CancelParams = parse(&params)?;
        let result = fleet
            .cancel_job(&p.id, p.grace_ms.map(Duration::from_millis))
            .await
            .map_err(domain_error)?;
        to_value(result)
    })?;
    module.register_async_method("forkJob", |params, fleet, _| async move {
        let p: ForkParams = parse(&params)?;
        let job = fleet
            .fork_job(
                &p.id,
                ForkOptions {
                    prompt: p.prompt,
                    schedule: p.schedule_name,
                    over_budget: p.over_budget,
                },
            )
            .await
            .map_err(domain_error)?;
        to_value(job)
    })?;
    module.register_async_method("enableSchedule", |params, fleet, _| async move {
        let p: ScheduleParams = parse(&params)?;
        to_value(
            fleet
                .enable_schedule(&p.agent_name, &p.schedule_name)
                .await
                .map_err(domain_error)?,
        )
    })?;
    module.register_async_method("disableSchedule", |params, fleet, _| async move {
        let p: ScheduleParams = parse(&params)?;
        to_value(
            fleet
                .disable_schedule(&p.agent_name, &p.schedule_name)
                .await
                .map_err(domain_error)?,
        )
    })?;
    module.register_method("rpc.discover", |params, _, _| {
        parse::<NoParams>(&params)?;
        serde_json::value::RawValue::from_string(OPENRPC_DOCUMENT.to_string())
            .map_err(|e| ErrorObjectOwned::owned(-32603, e.to_string(), None::<()>))
    })?;

    module.register_subscription(
        "subscribeEvents",
        "event",
        "unsubscribeEvents",
        |params, pending, fleet, _| async move {
            let p: EventsParams = match parse(&params) {
                Ok(p) => p,
                Err(e) => return reject(pending, e).await,
            };
            let mut events = match fleet.subscribe_events(p.types) {
                Ok(events) => events,
                Err(e) => return reject(pending, domain_error(e)).await,
            };
            let sink = pending.accept().await?;
            pump(&sink, &mut events, &fleet, "subscribeEvents").await
        },
    )?;
    module.register_subscription(
        "streamLogs",
        "log",
        "unsubscribeLogs",
        |params, pending, fleet, _| async move {
            let p: LogsParams = match parse(&params) {
                Ok(p) => p,
                Err(e) => return reject(pending, e).await,
            };
            let min_level = match parse_level(p.level.as_deref()) {
                Ok(level) => level,
                Err(e) => return reject(pending, e).await,
            };
            let filter = LogFilter {
                min_level,
                agent_name: p.agent_name,
                job_id: p.job_id,
            };
            let mut logs = match fleet.stream_logs(filter, p.tail.unwrap_or(DEFAULT_LOG_TAIL)) {
                Ok(logs) => logs,
                Err(e) => return reject(pending, domain_error(e)).await,
            };
            let sink = pending.accept().await?;
            pump(&sink, &mut logs, &fleet, "streamLogs").await
        },
    )?;
    module.register_subscription(
        "streamAgentLogs",
        "agentLog",
        "unsubscribeAgentLogs",
        |params, pending, fleet, _| async move {
            let p: AgentLogsParams = match parse(&params) {
                Ok(p) => p,
                Err(e) => return reject(pending, e).await,
            };
            let min_level = match parse_level(p.level.as_deref()) {
                Ok(level) => level,
                Err(e) => return reject(pending, e).await,
            };
            let logs = fleet.stream_agent_logs(
                &p.agent_name,
                min_level,
                p.tail.unwrap_or(DEFAULT_LOG_TAIL),
            );
            let mut logs = match logs {
                Ok(logs) => logs,
                Err(e) => return reject(pending, domain_error(e)).await,
            };
            let sink = pending.accept().await?;
            pump(&sink, &mut logs, &fleet, "streamAgentLogs").await
        },
    )?;
    module.register_subscription(
        STREAM_JOB_OUTPUT,
        JOB_OUTPUT,
        UNSUBSCRIBE_JOB_OUTPUT,
        |params, pending, fleet, _| async move {
            let p: JobOutputParams = match parse(&params) {
                Ok(p) => p,
                Err(e) => return reject(pending, e).await,
            };
            let mut output = match fleet.stream_job_output(&p.id, p.from_seq) {
                Ok(output) => output,
                Err(e) => return reject(pending, domain_error(e)).await,
            };
            let sink = pending.accept().await?;
            if p.batch {
                pump(&sink, &mut BatchedOutput(output), &fleet, STREAM_JOB_OUTPUT).await
            } else {
                pump(&sink, &mut output, &fleet, STREAM_JOB_OUTPUT).await
            }
        },
    )?;
    Ok(())
}

async fn reject(
    pending: PendingSubscriptionSink,
    error: ErrorObjectOwned,
) -> Result<(), SubscriptionError> {
    pending.reject(error).await;
    Ok(())
}

/// Something a subscription forwards: fleet events, log entries, job output.
trait Source: Send {
    type Item: Serialize;
    fn next_item(&mut self) -> impl std::future::Future<Output = Option<Self::Item>> + Send;
    /// Whether the item tells the subscriber it fell behind (counted in the metrics).
    fn is_lagged(_item: &Self::Item) -> bool {
        false
    }
}

impl Source for EventSubscription {
    type Item = EventItem;
    fn next_item(&mut self) -> impl std::future::Future<Output = Option<EventItem>> + Send {
        self.next()
    }
    fn is_lagged(item: &EventItem) -> bool {
        matches!(item, EventItem::Lagged { .. })
    }
}

impl Source for LogSubscription {
    type Item = LogItem;
    fn next_item(&mut self) -> impl std::future::Future<Output = Option<LogItem>> + Send {
        self.next()
    }
    fn is_lagged(item: &LogItem) -> bool {
        matches!(item, LogItem::Lagged { .. })
    }
}

impl Source for JobOutputStream {
    type Item = OutputItem;
    fn next_item(&mut self) -> impl std::future::Future<Output = Option<OutputItem>> + Send {
        self.next()
    }
}

/// A job's output a notification per batch of ready lines (`streamJobOutput` with `batch: true`).
struct BatchedOutput(JobOutputStream);

/// JSON text per batched notification, about: large enough that per-notification costs vanish, small
/// enough that a reader sees lines promptly and a connection's buffer stays modest.
const OUTPUT_BATCH_BYTES: usize = 64 * 1024;

impl Source for BatchedOutput {
    type Item = OutputBatchItem;
    fn next_item(&mut self) -> impl std::future::Future<Output = Option<OutputBatchItem>> + Send {
        self.0.next_batch(OUTPUT_BATCH_BYTES)
    }
}

/// Forwards items to the subscriber until the source ends or the subscriber goes away. Sending waits for
/// the connection's buffer, so a slow client slows only its own subscription. The subscription counts in
/// `herdctld_subscribers{subscription}` while it pumps.
async fn pump<S: Source>(
    sink: &SubscriptionSink,
    source: &mut S,
    fleet: &FleetManager,
    subscription: &'static str,
) -> Result<(), SubscriptionError> {
    let metrics = fleet.metrics();
    let _counted = metrics.subscriber(subscription);
    loop {
        let item = tokio::select! {
            // Closed first: after an unsubscribe reply, no further notification may follow.
            biased;
            _ = sink.closed() => return Ok(()),
            item = source.next_item() => item,
        };
        let Some(item) = item else { return Ok(()) };
        if sink.is_closed() {
            return Ok(());
        }
        if S::is_lagged(&item) {
            metrics.lagged_notice(subscription);
        }
        // Serialised straight into the notification: one copy of the item's text, not two.
        let message = SubscriptionMessage::new(sink.method_name(), sink.subscription_id(), &item)?;
        if sink.send(message).await.is_err() {
            return Ok(());
        }
    }
}
