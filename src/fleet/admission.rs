//! Admission: jobs created by a trigger, a fork or a schedule fire are recorded and started now, queued, or
//! refused at a limit; cancellation.

use std::time::Duration;

use chrono::Utc;
use serde_json::Value;

use crate::job::{Job, JobId, JobStatus, TerminationType, TriggerType};
use crate::state::StagedRecord;

use super::budget;
use super::core::{Core, WhenFull};
use super::error::{FleetError, FleetState};
use super::events::FleetEvent;
use super::info::CancelResult;
use super::job_table::RunContext;
use super::manager::{
    find_agent, find_schedule, futures_join_all, parse_job_id, FleetManager, ForkOptions,
    TriggerOptions, FALLBACK_PROMPT,
};
use super::record_writer::{Landing, RecordWrite};
use super::records;
use super::spec;
use super::supervise;

impl FleetManager {
    /// Creates a job and starts it now, or queues it when a limit is reached; returns at once.
    pub async fn trigger(&self, agent: &str, options: TriggerOptions) -> Result<Job, FleetError> {
        let priority = options.priority.unwrap_or(crate::job::DEFAULT_PRIORITY);
        if !(1..=10).contains(&priority) {
            return Err(FleetError::InvalidParams {
                message: format!("priority must be 1 (highest) to 10 (lowest), got {priority}"),
            });
        }
        const TRIGGERABLE: [FleetState; 3] = [
            FleetState::Initialized,
            FleetState::Running,
            FleetState::Stopped,
        ];
        self.create_job("trigger", &TRIGGERABLE, |core, id| {
            let config = core.config()?.clone();
            let agent_config = find_agent(&config, agent)?;
            let schedule = match options.schedule.as_deref() {
                Some(name) => Some(find_schedule(agent_config, name)?),
                None => None,
            };
            budget::admit_manual(
                core.store()?,
                agent_config,
                core.host_timezone,
                self.options().clock.now(),
                options.over_budget,
            )?;
            let mut prompt = options
                .prompt
                .clone()
                .or_else(|| schedule.and_then(|s| s.prompt.clone()))
                .or_else(|| agent_config.default_prompt.clone())
                .unwrap_or_else(|| FALLBACK_PROMPT.to_string());
            let work_item = options.work_items.as_ref().map(|items| {
                prompt.push_str(&spec::work_items_section(items));
                Value::Array(items.clone())
            });
            let mut job = Job::new(
                id,
                agent_config.name.clone(),
                schedule.map(|s| s.name.clone()),
                TriggerType::Manual,
                Some(prompt),
                priority,
                Utc::now(),
            );
            job.work_item = work_item;
            let context = RunContext {
                resume_latest: !options.fresh_session,
                resume_session: None,
                fork_session: false,
                schedule: schedule.cloned(),
                work: None,
            };
            Ok(NewJob {
                job,
                context,
                when_full: WhenFull::Queue,
                on_admit: None,
            })
        })
        .await
    }

    /// Creates a job, by the one route every creator takes (trigger, fork, a schedule fire): under the
    /// lock the fleet's state is checked against `allowed`, an id is reserved and `prepare` builds the job
    /// with it; outside the lock its record is written and fsynced; under the lock again it is admitted
    /// (started now, queued, or refused at a limit, its staged record discarded) and the record's rename
    /// queued; outside it the rename lands and the jobs directory is synced, so the job returned is
    /// durable. A rename that fails then (the staged file is written, so hardly ever) is reported, and the
    /// job, admitted already, goes on: its next record write puts the file in place.
    pub(super) async fn create_job(
        &self,
        operation: &str,
        allowed: &[FleetState],
        prepare: impl FnOnce(&mut Core, JobId) -> Result<NewJob, FleetError>,
    ) -> Result<Job, FleetError> {
        let (new, jobs_dir) = {
            let mut core = self.core();
            self.require(&core, operation, allowed)?;
            let jobs_dir = core.jobs_dir()?;
            let id = core.reserve_job_id(Utc::now());
            match prepare(&mut core, id.clone()) {
                Ok(new) => (new, jobs_dir),
                Err(e) => {
                    core.release_job_id(&id);
                    return Err(e);
                }
            }
        };
        let NewJob {
            job,
            context,
            when_full,
            on_admit,
        } = new;
        let id = job.id.clone();
        let staged = records::stage_record(self, &jobs_dir, job).await;
        let (job, landing) = {
            let mut core = self.core();
            core.release_job_id(&id);
            let staged = staged?;
            self.require(&core, operation, allowed)?;
            admit_staged(self, &mut core, staged, context, when_full, on_admit)?
        };
        if let Some(landed) = landing.wait().await {
            records::vouch(&mut self.core(), landed);
        }
        Ok(job)
    }

    /// Cancels a queued job (dequeued) or a running one (SIGTERM, grace, SIGKILL of its whole process tree).
    /// Replies once the job's record is final.
    pub async fn cancel_job(
        &self,
        id: &str,
        grace: Option<Duration>,
    ) -> Result<CancelResult, FleetError> {
        let job_id = parse_job_id(id)?;
        // What stops the job, if anything still has to; how it stopped otherwise; what tells its end.
        let (canceller, termination, mut finished) = {
            let mut core = self.core();
            if core.lifecycle == FleetState::Uninitialized {
                return Err(FleetError::invalid_state(
                    "cancelJob",
                    core.lifecycle,
                    &[
                        FleetState::Initialized,
                        FleetState::Running,
                        FleetState::Stopping,
                        FleetState::Stopped,
                    ],
                ));
            }
            let not_found = || FleetError::JobNotFound {
                job_id: id.to_string(),
            };
            match core.jobs.get(&job_id).map(|active| active.holds_slot()) {
                // Ended, its final record perhaps still being written: reply once it is.
                None => match core.jobs.waiter(&job_id) {
                    Some(ending) => (None, TerminationType::AlreadyStopped, ending),
                    None if core.store()?.contains(&job_id) => {
                        return Ok(CancelResult {
                            job_id: id.to_string(),
                            termination_type: TerminationType::AlreadyStopped,
                        })
                    }
                    None => return Err(not_found()),
                },
                // In the fleet's queue: it never ran.
                Some(false) => {
                    supervise::finish_without_running(
                        self,
                        &mut core,
                        &job_id,
                        "cancelled while queued",
                    );
                    let ending = core.jobs.waiter(&job_id).ok_or_else(not_found)?;
                    (None, TerminationType::Graceful, ending)
                }
                // Placed: its executor stops it (a cluster engine also drops it from its own queue).
                Some(true) => {
                    let ticket = core.jobs.request_cancel(&job_id).ok_or_else(not_found)?;
                    let grace = grace
                        .or_else(|| ticket.agent.as_ref().map(|a| a.stop_grace))
                        .unwrap_or(self.options().default_stop_grace);
                    let canceller = ticket.canceller.map(|canceller| (canceller, grace));
                    (canceller, TerminationType::AlreadyStopped, ticket.finished)
                }
            }
        };
        let termination = match canceller {
            Some((canceller, grace)) => canceller.cancel(grace).await,
            None => termination,
        };
        // The supervisor finalizes the record when the process is gone; reply once it is written.
        let _ = finished.wait_for(Option::is_some).await;
        tracing::info!(job_id = %job_id, ?termination, "job cancelled");
        Ok(CancelResult {
            job_id: id.to_string(),
            termination_type: termination,
        })
    }

    /// Cancels every running job, each with `grace` or its agent's own, and waits until all are final.
    /// Works in any state (jobs can run while the fleet is `initialized` or `stopped`).
    pub async fn cancel_running(&self, grace: Option<Duration>) {
        let running: Vec<JobId> = self
            .core()
            .jobs
            .iter()
            .filter(|a| a.holds_slot())
            .map(|a| a.id().clone())
            .collect();
        let cancels = running.into_iter().map(|id| {
            let manager = self.clone();
            async move {
                let _ = manager.cancel_job(id.as_str(), grace).await;
            }
        });
        futures_join_all(cancels).await;
    }

    /// Runs a new job from an earlier one: same agent, schedule and work item, the modifications applied,
    /// resuming the original's Claude session as a fork when it has one.
    pub async fn fork_job(&self, id: &str, options: ForkOptions) -> Result<Job, FleetError> {
        let original_id = parse_job_id(id)?;
        const FORKABLE: [FleetState; 3] = [
            FleetState::Initialized,
            FleetState::Running,
            FleetState::Stopped,
        ];
        {
            let core = self.core();
            self.require(&core, "forkJob", &FORKABLE)?;
        }
        let original = self.record(&original_id)?;
        if original.status == JobStatus::Queued {
            return Err(FleetError::JobNotRunning {
                job_id: id.to_string(),
                status: original.status.to_string(),
                reason: "it has not run yet, so there is nothing to fork; wait for it to start"
                    .into(),
            });
        }
        let job = self
            .create_job("forkJob", &FORKABLE, |core, new_id| {
                let config = core.config()?.clone();
                // The stored name is qualified: exactly it, never another sub-fleet's agent of that
                // local name once it is gone.
                let agent =
                    config
                        .agent(&original.agent)
                        .ok_or_else(|| FleetError::AgentNotFound {
                            agent_name: original.agent.clone(),
                            available_agents: config
                                .agents
                                .iter()
                                .map(|a| a.name.clone())
                                .collect(),
                        })?;
                let schedule_name = options.schedule.clone().or(original.schedule.clone());
                let schedule = match schedule_name.as_deref() {
                    Some(name) => Some(find_schedule(agent, name)?),
                    None => None,
                };
                budget::admit_manual(
                    core.store()?,
                    agent,
                    core.host_timezone,
                    self.options().clock.now(),
                    options.over_budget,
                )?;
                let prompt = options
                    .prompt
                    .clone()
                    .or(original.prompt.clone())
                    .unwrap_or_else(|| FALLBACK_PROMPT.to_string());
                let mut job = Job::new(
                    new_id,
                    agent.name.clone(),
                    schedule.map(|s| s.name.clone()),
                    TriggerType::Fork,
                    Some(prompt),
                    original.priority,
                    Utc::now(),
                );
                job.forked_from = Some(original.id.clone());
                job.work_item = original.work_item.clone();
                let context = RunContext {
                    resume_latest: false,
                    fork_session: original.session_id.is_some(),
                    resume_session: original.session_id.clone(),
                    schedule: schedule.cloned(),
                    work: None,
                };
                Ok(NewJob {
                    job,
                    context,
                    when_full: WhenFull::Queue,
                    on_admit: None,
                })
            })
            .await?;
        self.events().emit(FleetEvent::JobForked {
            job: Box::new(job.clone()),
            forked_from: original.id.to_string(),
        });
        Ok(job)
    }
}

/// A job as trigger, fork or a schedule fire decided it, with how it runs and what to do at a limit.
pub(super) struct NewJob {
    pub(super) job: Job,
    pub(super) context: RunContext,
    pub(super) when_full: WhenFull,
    /// Done under the lock once the job is admitted, right before `job:created` (a fire counts its run
    /// and announces it); never for a job refused at a limit.
    pub(super) on_admit: Option<OnAdmit>,
}

/// See [`NewJob::on_admit`].
pub(super) type OnAdmit = Box<dyn FnOnce(&FleetManager, &mut Core) + Send>;

/// Admits a job whose creation record was staged outside the lock ([`JobStore::stage`]): queues its
/// rename and starts it, or queues it; refused (a limit), the staged file is discarded. Returns the job as
/// it is now, and the landing of its record.
///
/// [`JobStore::stage`]: crate::state::JobStore::stage
pub(super) fn admit_staged(
    manager: &FleetManager,
    core: &mut Core,
    staged: StagedRecord,
    context: RunContext,
    when_full: WhenFull,
    on_admit: Option<OnAdmit>,
) -> Result<(Job, Landing), FleetError> {
    let job = staged.job().clone();
    let options = manager.options();
    let has_slot =
        core.lifecycle != FleetState::Stopping && core.may_start(options, &job.agent, when_full);
    if !has_slot {
        let limit_error = |current_jobs, limit, scope, hint| FleetError::ConcurrencyLimit {
            agent_name: job.agent.clone(),
            current_jobs,
            limit,
            scope,
            hint,
        };
        match when_full {
            WhenFull::SkipAtFleetLimit => {
                let limit = core.fleet_limit(options).unwrap_or(0) as usize;
                return Err(limit_error(
                    core.running_count(None),
                    limit,
                    "running jobs in the fleet",
                    "the run was skipped; raise the fleet-wide limit to allow more",
                ));
            }
            WhenFull::Skip => {
                return Err(limit_error(
                    core.running_count(Some(&job.agent)),
                    core.agent_limit(options, &job.agent) as usize,
                    "running jobs",
                    "the run was skipped; raise the agent's concurrency to allow more",
                ))
            }
            WhenFull::Queue if core.jobs.queue().len() >= options.max_queued => {
                return Err(limit_error(
                    core.jobs.queue().len(),
                    options.max_queued,
                    "queued jobs in the fleet",
                    "the queue is full; wait for jobs to finish or cancel queued ones",
                ))
            }
            WhenFull::Queue => {}
        }
    }
    if let Some(on_admit) = on_admit {
        on_admit(manager, core);
    }
    let landing = records::queue(core, RecordWrite::Publish(staged))?;
    let id = job.id.clone();
    core.jobs.insert(job.clone(), context);
    manager.events().emit(FleetEvent::JobCreated {
        job: Box::new(job.clone()),
    });
    if has_slot {
        supervise::start_job(manager, core, &id);
    } else {
        let position = core.jobs.enqueue(&id).unwrap_or(0);
        tracing::info!(agent = %job.agent, job_id = %id, position, "job queued");
        manager.events().emit(FleetEvent::JobQueued {
            job: Box::new(job),
            position,
        });
    }
    // Active, or ended already as it started (no container engine, its agent gone).
    let job = core
        .jobs
        .current(&id)
        .ok_or_else(|| FleetError::JobNotFound {
            job_id: id.to_string(),
        })?;
    Ok((job, landing))
}
