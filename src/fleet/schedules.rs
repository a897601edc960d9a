//! Schedules in the fleet: what a fire does (checked, then a job admitted or the fire skipped with a reason),
//! enabling and disabling them, and the plans handed to the scheduler.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::{self, FleetConfig, ScheduleConfig};
use crate::job::{Job, TriggerType};
use crate::scheduler::{Fire, ScheduleKey, SchedulerHandle};

use super::admission::{NewJob, OnAdmit};
use super::budget;
use super::core::{Core, WhenFull};
use super::error::{FleetError, FleetState};
use super::events::{FleetEvent, SkipReason};
use super::followup;
use super::info::ScheduleInfo;
use super::job_table::RunContext;
use super::manager::{find_agent, find_schedule, FleetManager, FALLBACK_PROMPT};
use super::spec;

impl FleetManager {
    pub async fn enable_schedule(
        &self,
        agent: &str,
        schedule: &str,
    ) -> Result<ScheduleInfo, FleetError> {
        self.set_schedule_enabled(agent, schedule, true).await
    }

    pub async fn disable_schedule(
        &self,
        agent: &str,
        schedule: &str,
    ) -> Result<ScheduleInfo, FleetError> {
        self.set_schedule_enabled(agent, schedule, false).await
    }

    async fn set_schedule_enabled(
        &self,
        agent: &str,
        schedule: &str,
        enabled: bool,
    ) -> Result<ScheduleInfo, FleetError> {
        let (key, scheduler) = {
            let mut core = self.core();
            let config = core.config()?.clone();
            let agent_config = find_agent(&config, agent)?;
            let schedule_config = find_schedule(agent_config, schedule)?;
            core.persisted
                .schedule_mut(&agent_config.name, &schedule_config.name)
                .enabled = Some(enabled);
            core.save_persisted();
            tracing::info!(agent = %agent_config.name, schedule = %schedule_config.name, enabled,
                "schedule {}", if enabled { "enabled" } else { "disabled" });
            (
                ScheduleKey::new(&agent_config.name, &schedule_config.name),
                core.scheduler.clone(),
            )
        };
        if let Some(handle) = scheduler {
            let _ = handle.set_enabled(key.clone(), enabled).await;
        }
        // An operator's change is on disk when it is acknowledged.
        self.flush().await;
        self.schedule(&key.agent, &key.schedule).await
    }

    pub(super) async fn on_fire(&self, fire: Fire) {
        let triggered = match self.decide_fire(&fire) {
            None => false,
            Some(prepared) => match prepared.work_source.clone() {
                None => self.launch_fire(&fire, prepared, None).await,
                // Fetching and claiming talk to GitHub (with retries): never under the fleet's lock.
                Some(source) => match followup::claim_next(&source).await {
                    Ok(Some(item)) => {
                        self.launch_fire(&fire, prepared, Some((source, item)))
                            .await
                    }
                    Ok(None) => {
                        self.skip_fire(&fire.key, SkipReason::NoWork);
                        false
                    }
                    Err(e) => {
                        let message = format!("work source of {}: {e}", fire.key);
                        tracing::error!("{message}; the run is skipped");
                        self.events().emit(FleetEvent::Error {
                            message: message.clone(),
                            source: "work_source".into(),
                        });
                        let mut core = self.core();
                        let state = core
                            .persisted
                            .schedule_mut(&fire.key.agent, &fire.key.schedule);
                        state.skipped += 1;
                        state.last_error = Some(message);
                        self.metrics().schedule_skipped(
                            &fire.key.agent,
                            &fire.key.schedule,
                            "work_source_error",
                        );
                        core.save_persisted();
                        false
                    }
                },
            },
        };
        // Record when it fires next, now that the scheduler has planned it.
        let scheduler = self.core().scheduler.clone();
        if let (true, Some(handle)) = (triggered, scheduler) {
            let next = handle.next_due(fire.key.clone()).await.ok().flatten();
            let mut core = self.core();
            core.persisted
                .schedule_mut(&fire.key.agent, &fire.key.schedule)
                .next_run_at = next;
            core.save_persisted();
        }
    }

    fn skip_fire(&self, key: &ScheduleKey, reason: SkipReason) {
        let mut core = self.core();
        core.persisted
            .schedule_mut(&key.agent, &key.schedule)
            .skipped += 1;
        core.save_persisted();
        self.metrics()
            .schedule_skipped(&key.agent, &key.schedule, reason.as_str());
        tracing::info!(agent = %key.agent, schedule = %key.schedule, ?reason, "schedule skipped");
        self.events().emit(FleetEvent::ScheduleSkipped {
            agent_name: key.agent.clone(),
            schedule_name: key.schedule.clone(),
            reason,
        });
    }

    /// Whether a fire should run: the fleet is running, the schedule exists and is enabled, its previous
    /// run and the limits allow it. Reports the skip when not.
    fn decide_fire(&self, fire: &Fire) -> Option<PreparedFire> {
        match self.check_fire(&fire.key) {
            Ok(prepared) => prepared,
            Err(reason) => {
                self.skip_fire(&fire.key, reason);
                None
            }
        }
    }

    /// `Ok(None)`: the schedule is gone (removed by a reload); nothing to report.
    fn check_fire(&self, key: &ScheduleKey) -> Result<Option<PreparedFire>, SkipReason> {
        let core = self.core();
        if core.lifecycle != FleetState::Running {
            return Err(SkipReason::Stopping);
        }
        let Ok(config) = core.config() else {
            return Ok(None);
        };
        let Some(agent) = config.agent(&key.agent) else {
            return Ok(None);
        };
        let Some(schedule) = agent.schedules.iter().find(|s| s.name == key.schedule) else {
            return Ok(None);
        };
        if !effective_enabled(schedule, core.persisted.schedule(&key.agent, &key.schedule)) {
            return Err(SkipReason::Disabled);
        }
        let spend = core.store.as_ref().and_then(|store| {
            budget::Spend::of(store, agent, core.host_timezone, self.options().clock.now())
        });
        if let Some(spend) = spend.filter(budget::Spend::reached) {
            tracing::info!(agent = %key.agent, schedule = %key.schedule, spent_usd = spend.spent_usd,
                daily_usd = spend.daily_usd, day = %spend.day, timezone = %spend.timezone,
                "the agent's daily budget is spent: the scheduled run waits for the next day");
            return Err(SkipReason::Budget);
        }
        let previous_still_going = core.jobs.iter().any(|a| {
            a.agent_name() == key.agent && a.schedule_name() == Some(key.schedule.as_str())
        });
        let when_full = match schedule.overlap {
            config::Overlap::Skip if previous_still_going => {
                return Err(SkipReason::AlreadyRunning)
            }
            config::Overlap::Skip => WhenFull::Skip,
            config::Overlap::Queue => WhenFull::Queue,
            config::Overlap::Allow => WhenFull::SkipAtFleetLimit,
        };
        if when_full != WhenFull::Queue && !core.may_start(self.options(), &key.agent, when_full) {
            return Err(SkipReason::ConcurrencyLimit);
        }
        Ok(Some(PreparedFire {
            default_prompt: agent.default_prompt.clone(),
            schedule: schedule.clone(),
            when_full,
            work_source: core.work_sources.get(key).cloned(),
        }))
    }

    /// Creates and admits the job of a fire (by the route every job takes); returns whether the fire
    /// counted as a run.
    async fn launch_fire(
        &self,
        fire: &Fire,
        prepared: PreparedFire,
        work: Option<followup::ClaimedWork>,
    ) -> bool {
        let key = &fire.key;
        // Whether the fire got as far as creating its job: a refusal before that is a stopped fleet.
        let counted = std::sync::atomic::AtomicBool::new(false);
        let created = self
            .create_job("fire", &[FleetState::Running], |_, id| {
                counted.store(true, std::sync::atomic::Ordering::Relaxed);
                let schedule = &prepared.schedule;
                let (prompt, trigger_type, work_item) = match &work {
                    Some((_, item)) => (
                        crate::work_sources::build_prompt(schedule.prompt.as_deref(), item),
                        TriggerType::WorkItem,
                        serde_json::to_value(item).ok(),
                    ),
                    None => (
                        schedule
                            .prompt
                            .clone()
                            .or(prepared.default_prompt.clone())
                            .unwrap_or_else(|| FALLBACK_PROMPT.to_string()),
                        TriggerType::Schedule,
                        None,
                    ),
                };
                let mut job = Job::new(
                    id,
                    key.agent.clone(),
                    Some(key.schedule.clone()),
                    trigger_type,
                    Some(prompt),
                    crate::job::DEFAULT_PRIORITY,
                    Utc::now(),
                );
                job.work_item = work_item;
                let context = RunContext {
                    resume_latest: schedule.resume_session,
                    resume_session: None,
                    fork_session: false,
                    schedule: Some(schedule.clone()),
                    work: work.clone(),
                };
                let (fired, fired_at, job_id) = (key.clone(), fire.fired_at, job.id.to_string());
                let count_the_run: OnAdmit = Box::new(move |manager, core| {
                    let state = core.persisted.schedule_mut(&fired.agent, &fired.schedule);
                    state.last_run_at = Some(fired_at);
                    state.runs += 1;
                    core.save_persisted();
                    manager.metrics().schedule_fired(&fired.agent, &fired.schedule);
                    tracing::info!(agent = %fired.agent, schedule = %fired.schedule, job_id, "schedule fired");
                    manager.events().emit(FleetEvent::ScheduleTriggered {
                        agent_name: fired.agent,
                        schedule_name: fired.schedule,
                        job_id,
                    });
                });
                Ok(NewJob {
                    job,
                    context,
                    when_full: prepared.when_full,
                    on_admit: Some(count_the_run),
                })
            })
            .await;
        match created {
            Ok(_) => true,
            // Stopped before the job was created: nothing ran.
            Err(FleetError::InvalidState { .. })
                if !counted.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                if let Some(work) = work {
                    followup::release_unused(work, "the fleet stopped before the run started");
                }
                self.skip_fire(key, SkipReason::Stopping);
                false
            }
            // Refused at a limit reached since the fire was decided (the queue full, a slot taken): a skip.
            Err(FleetError::ConcurrencyLimit { .. }) => {
                if let Some(work) = work {
                    followup::release_unused(work, "the run was skipped at a concurrency limit");
                }
                self.skip_fire(key, SkipReason::ConcurrencyLimit);
                false
            }
            Err(e) => {
                tracing::error!(agent = %key.agent, schedule = %key.schedule, "scheduled job not started: {e}");
                {
                    let mut core = self.core();
                    core.persisted
                        .schedule_mut(&key.agent, &key.schedule)
                        .last_error = Some(e.to_string());
                    core.save_persisted();
                }
                if let Some(work) = work {
                    followup::release_unused(work, &format!("the run could not start: {e}"));
                }
                true
            }
        }
    }
}

pub(super) type Plan = HashMap<ScheduleKey, DateTime<Utc>>;

/// What the scheduler needs for one schedule: key, timing, last run and whether it is enabled.
type SchedulePlan = (
    ScheduleKey,
    crate::scheduler::Timing,
    Option<DateTime<Utc>>,
    bool,
);

/// The scheduler entries for every firing schedule of `config` (webhook and chat types never fire).
pub(super) fn schedule_plans(core: &Core, config: &FleetConfig) -> Vec<SchedulePlan> {
    config
        .agents
        .iter()
        .flat_map(|a| a.schedules.iter().map(move |s| (a, s)))
        .filter_map(|(agent, schedule)| {
            let timing = spec::timing_of(agent, schedule)?;
            let persisted = core.persisted.schedule(&agent.name, &schedule.name);
            Some((
                ScheduleKey::new(&agent.name, &schedule.name),
                timing,
                persisted.and_then(|p| p.last_run_at),
                effective_enabled(schedule, persisted),
            ))
        })
        .collect()
}

pub(super) async fn apply_plans(handle: &SchedulerHandle, plans: Vec<SchedulePlan>) {
    for (key, timing, last_run_at, enabled) in plans {
        if let Err(e) = handle
            .upsert(key.clone(), timing, last_run_at, enabled)
            .await
        {
            tracing::error!(schedule = %key, "schedule not planned: {e}");
        }
    }
}

/// A fire that passed every check, waiting for its work item (if its schedule has a work source).
struct PreparedFire {
    schedule: ScheduleConfig,
    default_prompt: Option<String>,
    when_full: WhenFull,
    work_source: Option<Arc<dyn crate::work_sources::WorkSource>>,
}

/// Configured `enabled`, overridden by a persisted runtime enable/disable.
pub(super) fn effective_enabled(
    schedule: &ScheduleConfig,
    persisted: Option<&crate::state::ScheduleState>,
) -> bool {
    persisted
        .and_then(|p| p.enabled)
        .unwrap_or(schedule.enabled)
}
