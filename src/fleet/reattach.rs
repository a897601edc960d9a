//! Cluster runs a previous daemon left (killed, or stopped without its jobs ending): at initialization every
//! run this state directory owns is taken up again (still running, or ended meanwhile: its output and
//! outcome are still in the shim's file), its job supervised as if it had never been left; a run whose
//! record is gone or final is stopped. A cluster job whose engine never had a run of it (the daemon died
//! before the submit) is `interrupted`, like a local one.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::FleetConfig;
use crate::executor::{Executor, ExecutorContext, OwnedRun};
use crate::job::{Job, JobId};

use super::core::Shared;
use super::job_table::RunContext;
use super::manager::FleetManager;
use super::supervise;

/// After a start-up listing an engine did not answer, how long until it is asked again; doubled after each
/// further failure, up to [`RELIST_MAX`].
const RELIST_FIRST: Duration = Duration::from_secs(1);
const RELIST_MAX: Duration = Duration::from_secs(60);

/// What each cluster engine named by the configuration or by a record knows of this state directory's runs;
/// an engine that could not be asked is missing (its jobs without a recorded id cannot be told apart from
/// ones never submitted).
pub(super) struct Listings {
    owned: HashMap<&'static str, Vec<OwnedRun>>,
    /// The engines asked that did not answer.
    unanswered: Vec<&'static str>,
}

impl Listings {
    /// Asks every engine an agent of `config` or one of `records` uses. Blocks the calling thread (run in
    /// the blocking pool during initialization, `runtime` being the fleet's).
    pub(super) fn gather(
        runtime: &tokio::runtime::Handle,
        config: &FleetConfig,
        records: &[Job],
        context: &ExecutorContext,
    ) -> Listings {
        let names: BTreeSet<String> = config
            .agents
            .iter()
            .map(|agent| agent.executor.type_name().to_owned())
            .chain(
                records
                    .iter()
                    .filter_map(|job| Some(job.executor_run.as_ref()?.executor.clone())),
            )
            .collect();
        let mut owned = HashMap::new();
        let mut unanswered = Vec::new();
        for name in names {
            let Some(executor) = Executor::cluster_named(&name, context) else {
                continue;
            };
            match runtime.block_on(executor.list_owned()) {
                Ok(runs) => {
                    owned.insert(executor.name(), runs);
                }
                Err(e) => {
                    unanswered.push(executor.name());
                    tracing::error!(
                        executor = executor.name(),
                        "cannot list this state directory's cluster runs, so jobs the previous daemon had just submitted are marked interrupted (their runs are stopped once it answers): {e}"
                    )
                }
            }
        }
        Listings { owned, unanswered }
    }

    /// Every engine asked answered: what is not taken up again has no run to watch.
    pub(super) fn complete(&self) -> bool {
        self.unanswered.is_empty()
    }

    /// The engine's id of the run of `job`: the recorded one, else the newest run named by the job (the
    /// daemon died between submit and record). `None` when there is none.
    pub(super) fn engine_id(&self, job: &Job) -> Option<String> {
        let run = job.executor_run.as_ref()?;
        run.id.clone().or_else(|| {
            self.owned
                .get(run.executor.as_str())?
                .iter()
                .filter(|owned| owned.job_id == job.id.as_str())
                .max_by_key(|owned| owned.engine_id.parse::<u64>().unwrap_or(0))
                .map(|owned| owned.engine_id.clone())
        })
    }

    /// Runs still active whose job is not among `adopted`: their record is final or gone, so nothing would
    /// ever watch them.
    fn orphans(&self, adopted: &[JobId]) -> Vec<(&'static str, OwnedRun)> {
        self.owned
            .iter()
            .flat_map(|(name, runs)| runs.iter().map(move |run| (*name, run.clone())))
            .filter(|(_, run)| run.active && !adopted.iter().any(|id| id.as_str() == run.job_id))
            .collect()
    }
}

/// A job whose cluster run is taken up: its record as read and the engine's id of the run.
pub(super) struct Adoption {
    pub(super) job: Job,
    pub(super) engine_id: String,
}

impl FleetManager {
    /// Supervises `adoptions` again and stops the orphans in `listings`, and those of each engine that did
    /// not answer once it does. Called once the fleet is initialized; returns at once (stopping orphans goes
    /// on in the background).
    pub(super) fn reattach(&self, adoptions: Vec<Adoption>, listings: &Listings) {
        let adopted: Vec<JobId> = adoptions.iter().map(|a| a.job.id.clone()).collect();
        for adoption in adoptions {
            self.adopt(adoption);
        }
        let Some(context) = self.core().executors.clone() else {
            return;
        };
        for (name, orphan) in listings.orphans(&adopted) {
            let Some(executor) = Executor::cluster_named(name, &context) else {
                continue;
            };
            tracing::warn!(executor = name, engine_id = %orphan.engine_id, job_id = %orphan.job_id,
                "stopping a cluster run of this state directory whose job is no longer active");
            tokio::spawn(async move { executor.kill(&orphan.engine_id).await });
        }
        for name in &listings.unanswered {
            if let Some(executor) = Executor::cluster_named(name, &context) {
                tokio::spawn(stop_orphans_once_listed(
                    Arc::downgrade(&self.shared),
                    executor,
                ));
            }
        }
    }

    fn adopt(&self, Adoption { job, engine_id }: Adoption) {
        let mut core = self.core();
        let Some(context) = core.executors.clone() else {
            return;
        };
        let Some(executor) = job
            .executor_run
            .as_ref()
            .and_then(|run| Executor::cluster_named(&run.executor, &context))
        else {
            return;
        };
        let agent = core
            .config
            .as_ref()
            .and_then(|config| config.agent(&job.agent))
            .cloned()
            .map(Arc::new);
        let context = RunContext {
            schedule: agent
                .as_ref()
                .zip(job.schedule.as_deref())
                .and_then(|(agent, name)| agent.schedule(name).cloned()),
            work: super::followup::claimed_work(&core.work_sources, &job),
            ..RunContext::default()
        };
        let id = job.id.clone();
        let (output_tx, output_rx) = mpsc::channel(supervise::OUTPUT_QUEUE);
        let Some(run) = executor.reattach(
            id.clone(),
            engine_id.clone(),
            output_tx,
            supervise::progress_of(self, &id),
        ) else {
            return;
        };
        let output_cap = agent.as_deref().map(super::spec::stored_output_cap);
        if core.jobs.adopt(job, agent, context, &run).is_none() {
            return;
        }
        let output_file = core
            .store
            .as_ref()
            .map(|store| store.output_path(&id))
            .map(|path| {
                (
                    path,
                    output_cap.unwrap_or(super::spec::DEFAULT_MAX_OUTPUT_BYTES),
                )
            });
        let hub = core.jobs.get(&id).map(|active| active.hub.clone());
        drop(core);
        tracing::info!(job_id = %id, executor = executor.name(), %engine_id, "re-attached to the job's cluster run");
        let span = tracing::info_span!(parent: None, "job", job_id = %id);
        if let Some(hub) = hub {
            tokio::spawn(tracing::Instrument::instrument(
                supervise::supervise(self.clone(), id, run, output_rx, output_file, hub),
                span,
            ));
        }
    }
}

/// Asks `executor` for this state directory's runs until it answers, then stops the active ones whose job is
/// not: the sweep its failed start-up listing could not make. Without it, the run of a job the dead daemon
/// submitted but had not recorded (marked interrupted) would go on unwatched. Ends when the fleet is dropped.
async fn stop_orphans_once_listed(fleet: Weak<Shared>, executor: Executor) {
    let mut wait = RELIST_FIRST;
    let runs = loop {
        tokio::time::sleep(wait).await;
        if fleet.strong_count() == 0 {
            return;
        }
        match executor.list_owned().await {
            Ok(runs) => break runs,
            Err(e) => {
                tracing::debug!(
                    executor = executor.name(),
                    "still cannot list this state directory's cluster runs: {e}"
                );
                wait = (wait * 2).min(RELIST_MAX);
            }
        }
    };
    let Some(shared) = fleet.upgrade() else {
        return;
    };
    let active: BTreeSet<String> = FleetManager { shared }
        .core()
        .jobs
        .iter()
        .map(|job| job.id().as_str().to_owned())
        .collect();
    for run in runs {
        if run.active && !active.contains(&run.job_id) {
            tracing::warn!(executor = executor.name(), engine_id = %run.engine_id, job_id = %run.job_id,
                "stopping a cluster run of this state directory whose job is not active, now that the engine answers");
            executor.kill(&run.engine_id).await;
        }
    }
}
