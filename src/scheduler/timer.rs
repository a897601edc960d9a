//! The scheduler task: holds every schedule's next due instant, sleeps until the earliest, emits a [`Fire`]
//! and plans that schedule's next due instant itself. Controlled through a cloneable [`SchedulerHandle`].
//!
//! Delivery: fires go through a bounded channel. While the receiver is behind, fires wait in the task (in
//! due order) and are handed over as it catches up, so none is lost or duplicated. A schedule has at most
//! one fire waiting: a due instant that comes while that schedule's previous fire is still waiting is merged
//! into it (`Fire::merged` counts them), because the receiver has acted on neither, and delivering both
//! would be a burst. Disabling or removing a schedule withdraws its waiting fire; a fire already in the
//! channel (at most the channel's capacity) can still arrive, so the receiver checks that the schedule is
//! enabled when it consumes a fire.
//!
//! The task ends when every handle is dropped. If the receiver is dropped, fires are discarded and the
//! handle keeps working.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use super::clock::Clock;
use super::timing::{first_due, next_due, Due, JitterSource, SeededJitter, Timing};

/// Identifies one schedule: the agent's qualified name and the schedule's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScheduleKey {
    pub agent: String,
    pub schedule: String,
}

impl ScheduleKey {
    pub fn new(agent: impl Into<String>, schedule: impl Into<String>) -> ScheduleKey {
        ScheduleKey {
            agent: agent.into(),
            schedule: schedule.into(),
        }
    }
}

impl fmt::Display for ScheduleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.agent, self.schedule)
    }
}

/// A schedule became due. What it does (trigger, skip for overlap or concurrency) is the receiver's call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    pub key: ScheduleKey,
    /// The schedule occurrence this fire stands for (without jitter; for a catch-up, the latest missed one).
    pub occurrence: DateTime<Utc>,
    /// The instant the fire was planned for (occurrence or catch-up instant, plus jitter).
    pub due: DateTime<Utc>,
    /// The clock's time when the scheduler emitted it.
    pub fired_at: DateTime<Utc>,
    /// Later due instants of this schedule merged into this fire while the receiver was behind.
    pub merged: u32,
}

/// The scheduler task is gone (the runtime is shutting down).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the scheduler task is no longer running (the runtime is shutting down); restart the fleet"
)]
pub struct SchedulerStopped;

/// How to build a scheduler.
pub struct SchedulerOptions {
    /// Capacity of the fire channel.
    pub fire_buffer: usize,
    /// Where jitter delays come from.
    pub jitter: Box<dyn JitterSource>,
}

impl Default for SchedulerOptions {
    fn default() -> SchedulerOptions {
        SchedulerOptions {
            fire_buffer: 64,
            jitter: Box::new(SeededJitter::from_entropy()),
        }
    }
}

/// Starts scheduler tasks.
pub struct Scheduler;

impl Scheduler {
    /// Spawns the scheduler task on the current tokio runtime with default options.
    pub fn spawn(clock: Arc<dyn Clock>) -> (SchedulerHandle, mpsc::Receiver<Fire>) {
        Scheduler::spawn_with(clock, SchedulerOptions::default())
    }

    pub fn spawn_with(
        clock: Arc<dyn Clock>,
        options: SchedulerOptions,
    ) -> (SchedulerHandle, mpsc::Receiver<Fire>) {
        let (command_tx, command_rx) = mpsc::channel(64);
        let (fire_tx, fire_rx) = mpsc::channel(options.fire_buffer.max(1));
        let task = SchedulerTask {
            clock,
            jitter: options.jitter,
            entries: HashMap::new(),
            timeline: BTreeSet::new(),
            outbox: VecDeque::new(),
            in_outbox: HashSet::new(),
            fires: fire_tx,
        };
        tokio::spawn(task.run(command_rx));
        (
            SchedulerHandle {
                commands: command_tx,
            },
            fire_rx,
        )
    }
}

/// Controls the scheduler task. Cheap to clone. Every call takes effect (and re-plans) before it returns.
#[derive(Debug, Clone)]
pub struct SchedulerHandle {
    commands: mpsc::Sender<Command>,
}

impl SchedulerHandle {
    /// Adds or replaces a schedule. `last_run_at` is when it last ran (persisted state; None if never);
    /// the first due instant follows [`first_due`]. Upserting what is already there (same timing,
    /// `last_run_at` and `enabled`) keeps the current plan, so a reload does not re-roll jitter.
    pub async fn upsert(
        &self,
        key: ScheduleKey,
        timing: Timing,
        last_run_at: Option<DateTime<Utc>>,
        enabled: bool,
    ) -> Result<(), SchedulerStopped> {
        self.request(|reply| Command::Upsert {
            key,
            timing,
            last_run_at,
            enabled,
            reply,
        })
        .await
    }

    /// Enables or disables a schedule. A disabled schedule never fires; re-enabling plans it as after a
    /// restart from its last run. Returns false if the schedule is unknown.
    pub async fn set_enabled(
        &self,
        key: ScheduleKey,
        enabled: bool,
    ) -> Result<bool, SchedulerStopped> {
        self.request(|reply| Command::SetEnabled {
            key,
            enabled,
            reply,
        })
        .await
    }

    /// Forgets a schedule. Returns false if it was unknown.
    pub async fn remove(&self, key: ScheduleKey) -> Result<bool, SchedulerStopped> {
        self.request(|reply| Command::Remove { key, reply }).await
    }

    /// Forgets every schedule (fleet stop); nothing fires until schedules are upserted again.
    pub async fn clear(&self) -> Result<(), SchedulerStopped> {
        self.request(|reply| Command::Clear { reply }).await
    }

    /// When the schedule fires next; None if unknown, disabled or never due again.
    pub async fn next_due(
        &self,
        key: ScheduleKey,
    ) -> Result<Option<DateTime<Utc>>, SchedulerStopped> {
        self.request(|reply| Command::NextDue { key, reply }).await
    }

    /// The schedule that fires next and when.
    pub async fn next_any(&self) -> Result<Option<(ScheduleKey, DateTime<Utc>)>, SchedulerStopped> {
        self.request(|reply| Command::NextAny { reply }).await
    }

    /// How many schedules are enabled and have a next due instant.
    pub async fn active_count(&self) -> Result<usize, SchedulerStopped> {
        self.request(|reply| Command::ActiveCount { reply }).await
    }

    async fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SchedulerStopped> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| SchedulerStopped)?;
        answer.await.map_err(|_| SchedulerStopped)
    }
}

enum Command {
    Upsert {
        key: ScheduleKey,
        timing: Timing,
        last_run_at: Option<DateTime<Utc>>,
        enabled: bool,
        reply: oneshot::Sender<()>,
    },
    SetEnabled {
        key: ScheduleKey,
        enabled: bool,
        reply: oneshot::Sender<bool>,
    },
    Remove {
        key: ScheduleKey,
        reply: oneshot::Sender<bool>,
    },
    Clear {
        reply: oneshot::Sender<()>,
    },
    NextDue {
        key: ScheduleKey,
        reply: oneshot::Sender<Option<DateTime<Utc>>>,
    },
    NextAny {
        reply: oneshot::Sender<Option<(ScheduleKey, DateTime<Utc>)>>,
    },
    ActiveCount {
        reply: oneshot::Sender<usize>,
    },
}

/// One schedule as the task knows it.
struct Entry {
    timing: Timing,
    /// As given by the last upsert, to recognise an unchanged upsert.
    upserted_last_run_at: Option<DateTime<Utc>>,
    /// The latest run known: the upserted one or the latest fire of this task.
    last_run_at: Option<DateTime<Utc>>,
    enabled: bool,
    /// The next fire; None when disabled or never due again. Mirrored in `SchedulerTask::timeline`.
    plan: Option<Due>,
}

struct SchedulerTask {
    clock: Arc<dyn Clock>,
    jitter: Box<dyn JitterSource>,
    entries: HashMap<ScheduleKey, Entry>,
    /// `(plan.at, key)` of every entry with a plan: the earliest is the next fire.
    timeline: BTreeSet<(DateTime<Utc>, ScheduleKey)>,
    /// Fires emitted but not yet accepted by the channel, in due order.
    outbox: VecDeque<Fire>,
    /// Keys of the fires in `outbox`.
    in_outbox: HashSet<ScheduleKey>,
    fires: mpsc::Sender<Fire>,
}

/// What woke the task.
enum Wake {
    Command(Option<Command>),
    Timer,
    Delivered,
}

impl SchedulerTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            self.fire_due();
            let sleep = self
                .timeline
                .first()
                .map(|(at, _)| self.clock.sleep_until(*at));
            let wake = {
                let fires = &self.fires;
                let outbox = &mut self.outbox;
                let in_outbox = &mut self.in_outbox;
                let waiting = !outbox.is_empty();
                tokio::select! {
                    command = commands.recv() => Wake::Command(command),
                    () = async {
                        match sleep {
                            Some(sleep) => sleep.await,
                            // Nothing planned: only a command can change that.
                            None => std::future::pending().await,
                        }
                    } => Wake::Timer,
                    permit = fires.reserve(), if waiting => {
                        match permit {
                            Ok(permit) => {
                                if let Some(fire) = outbox.pop_front() {
                                    in_outbox.remove(&fire.key);
                                    permit.send(fire);
                                }
                            }
                            Err(_) => {
                                // The receiver is gone: nobody will take these.
                                outbox.clear();
                                in_outbox.clear();
                            }
                        }
                        Wake::Delivered
                    }
                }
            };
            match wake {
                Wake::Command(None) => return,
                Wake::Command(Some(command)) => {
                    // Fire what is due first, so that answers reflect the current time.
                    self.fire_due();
                    self.apply(command);
                }
                Wake::Timer | Wake::Delivered => {}
            }
        }
    }

    /// Emits every fire whose instant has come and plans each schedule's next.
    fn fire_due(&mut self) {
        let now = self.clock.now();
        while let Some((at, key)) = self.timeline.first().cloned() {
            if at > now {
                break;
            }
            self.timeline.pop_first();
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            let Some(due) = entry.plan.take() else {
                continue;
            };
            entry.last_run_at = Some(now);
            // `next_due` is strictly after `now`, so this loop ends.
            entry.plan = next_due(&entry.timing, due.occurrence, now, self.jitter.as_mut());
            if let Some(plan) = entry.plan {
                self.timeline.insert((plan.at, key.clone()));
            }
            self.emit(Fire {
                key,
                occurrence: due.occurrence,
                due: due.at,
                fired_at: now,
                merged: 0,
            });
        }
        self.hand_over();
    }

    fn emit(&mut self, fire: Fire) {
        if self.fires.is_closed() {
            return;
        }
        if self.in_outbox.contains(&fire.key) {
            if let Some(waiting) = self.outbox.iter_mut().find(|f| f.key == fire.key) {
                *waiting = Fire {
                    merged: waiting.merged + 1,
                    ..fire
                };
            }
            return;
        }
        self.in_outbox.insert(fire.key.clone());
        self.outbox.push_back(fire);
    }

    /// Moves waiting fires into the channel as far as it has room, without waiting.
    fn hand_over(&mut self) {
        while let Some(fire) = self.outbox.pop_front() {
            let key = fire.key.clone();
            match self.fires.try_send(fire) {
                Ok(()) => {
                    self.in_outbox.remove(&key);
                }
                Err(mpsc::error::TrySendError::Full(fire)) => {
                    self.outbox.push_front(fire);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.outbox.clear();
                    self.in_outbox.clear();
                    return;
                }
            }
        }
    }

    fn apply(&mut self, command: Command) {
        // A dropped reply receiver means the caller stopped waiting; the change stands regardless.
        match command {
            Command::Upsert {
                key,
                timing,
                last_run_at,
                enabled,
                reply,
            } => {
                self.upsert(key, timing, last_run_at, enabled);
                let _ = reply.send(());
            }
            Command::SetEnabled {
                key,
                enabled,
                reply,
            } => {
                let known = self.set_enabled(&key, enabled);
                let _ = reply.send(known);
            }
            Command::Remove { key, reply } => {
                self.unplan(&key);
                let known = self.entries.remove(&key).is_some();
                let _ = reply.send(known);
            }
            Command::Clear { reply } => {
                self.entries.clear();
                self.timeline.clear();
                self.outbox.clear();
                self.in_outbox.clear();
                let _ = reply.send(());
            }
            Command::NextDue { key, reply } => {
                let next = self
                    .entries
                    .get(&key)
                    .and_then(|entry| entry.plan)
                    .map(|plan| plan.at);
                let _ = reply.send(next);
            }
            Command::NextAny { reply } => {
                let next = self.timeline.first().map(|(at, key)| (key.clone(), *at));
                let _ = reply.send(next);
            }
            Command::ActiveCount { reply } => {
                let _ = reply.send(self.timeline.len());
            }
        }
        self.fire_due();
    }

    fn upsert(
        &mut self,
        key: ScheduleKey,
        timing: Timing,
        last_run_at: Option<DateTime<Utc>>,
        enabled: bool,
    ) {
        let known_run = match self.entries.get(&key) {
            Some(entry)
                if entry.timing == timing
                    && entry.upserted_last_run_at == last_run_at
                    && entry.enabled == enabled =>
            {
                return;
            }
            Some(entry) => entry.last_run_at.max(last_run_at),
            None => last_run_at,
        };
        self.unplan(&key);
        self.entries.insert(
            key.clone(),
            Entry {
                timing,
                upserted_last_run_at: last_run_at,
                last_run_at: known_run,
                enabled,
                plan: None,
            },
        );
        if enabled {
            self.plan_first(&key);
        }
    }

    fn set_enabled(&mut self, key: &ScheduleKey, enabled: bool) -> bool {
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        if entry.enabled == enabled {
            return true;
        }
        entry.enabled = enabled;
        if enabled {
            self.plan_first(key);
        } else {
            self.unplan(key);
        }
        true
    }

    /// Plans an entry as after a restart, from its latest known run.
    fn plan_first(&mut self, key: &ScheduleKey) {
        let now = self.clock.now();
        if let Some(entry) = self.entries.get_mut(key) {
            entry.plan = first_due(&entry.timing, entry.last_run_at, now, self.jitter.as_mut());
            if let Some(plan) = entry.plan {
                self.timeline.insert((plan.at, key.clone()));
            }
        }
    }

    /// Drops an entry's plan and its waiting fire.
    fn unplan(&mut self, key: &ScheduleKey) {
        if let Some(plan) = self
            .entries
            .get_mut(key)
            .and_then(|entry| entry.plan.take())
        {
            self.timeline.remove(&(plan.at, key.clone()));
        }
        if self.in_outbox.remove(key) {
            self.outbox.retain(|fire| &fire.key != key);
        }
    }
}
