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
    /// Spawns the scheduler task with default options. Must be called inside a tokio runtime (it uses
    /// `tokio::spawn`).
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

    /// Every schedule that will fire, with its next due instant (one round trip for fleet-wide queries).
    pub async fn plan(&self) -> Result<HashMap<ScheduleKey, DateTime<Utc>>, SchedulerStopped> {
        self.request(|reply| Command::Plan { reply }).await
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
    Plan {
        reply: oneshot::Sender<HashMap<ScheduleKey, DateTime<Utc>>>,
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
            Command::Plan { reply } => {
                let plan = self
                    .timeline
                    .iter()
                    .map(|(at, key)| (key.clone(), *at))
                    .collect();
                let _ = reply.send(plan);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{Datelike, TimeDelta, Timelike, Weekday};
    use chrono_tz::Tz;
    use tokio::sync::mpsc::error::TryRecvError;

    use super::*;
    use crate::scheduler::clock::{ManualClock, SystemClock};
    use crate::scheduler::timing::{Catchup, TimingKind};
    use crate::timespec::CronExpr;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn key(name: &str) -> ScheduleKey {
        ScheduleKey::new("agent", name)
    }

    fn interval(d: Duration) -> Timing {
        Timing {
            kind: TimingKind::Interval(d),
            jitter: None,
            catchup: Catchup::Latest,
        }
    }

    fn cron(expr: &str, tz: &str) -> Timing {
        Timing {
            kind: TimingKind::Cron {
                expr: Box::new(CronExpr::parse(expr).unwrap()),
                tz: tz.parse().unwrap(),
            },
            jitter: None,
            catchup: Catchup::Latest,
        }
    }

    fn start(clock: &ManualClock, fire_buffer: usize) -> (SchedulerHandle, mpsc::Receiver<Fire>) {
        Scheduler::spawn_with(
            Arc::new(clock.clone()),
            SchedulerOptions {
                fire_buffer,
                jitter: Box::new(SeededJitter::new(42)),
            },
        )
    }

    async fn recv(fires: &mut mpsc::Receiver<Fire>) -> Fire {
        tokio::time::timeout(Duration::from_secs(5), fires.recv())
            .await
            .expect("no fire within 5 s")
            .expect("fire channel closed")
    }

    /// Asserts that nothing has fired: the handle round trip makes the task fire what is due first.
    async fn assert_quiet(handle: &SchedulerHandle, fires: &mut mpsc::Receiver<Fire>) {
        handle.active_count().await.unwrap();
        match fires.try_recv() {
            Err(TryRecvError::Empty) => {}
            other => panic!("expected no fire, got {other:?}"),
        }
    }

    /// Moves the clock from planned fire to planned fire up to `end`, collecting every fire.
    async fn run_until(
        handle: &SchedulerHandle,
        clock: &ManualClock,
        fires: &mut mpsc::Receiver<Fire>,
        end: DateTime<Utc>,
    ) -> Vec<Fire> {
        let mut collected = Vec::new();
        while let Some((_, next)) = handle.next_any().await.unwrap() {
            if next > end {
                break;
            }
            clock.set(next);
            // Waiting here (not behind a handle call) checks that the clock alone wakes the task.
            collected.push(recv(fires).await);
            handle.active_count().await.unwrap();
            while let Ok(fire) = fires.try_recv() {
                collected.push(fire);
            }
        }
        clock.set(end);
        assert_quiet(handle, fires).await;
        collected
    }

    fn instants(fires: &[Fire]) -> Vec<DateTime<Utc>> {
        fires.iter().map(|fire| fire.fired_at).collect()
    }

    #[tokio::test]
    async fn intervals_fire_on_time_repeatedly() {
        let t0 = at("2026-05-01T10:00:00Z");
        let clock = ManualClock::new(t0);
        let (handle, mut fires) = start(&clock, 64);
        handle
            .upsert(
                key("every-5m"),
                interval(Duration::from_secs(300)),
                None,
                true,
            )
            .await
            .unwrap();
        // Never run: fires right after start without the clock moving.
        let first = recv(&mut fires).await;
        assert_eq!((first.occurrence, first.due, first.fired_at), (t0, t0, t0));

        let day = run_until(&handle, &clock, &mut fires, t0 + TimeDelta::days(1)).await;
        assert_eq!(day.len(), 288);
        for (n, fire) in day.iter().enumerate() {
            let expected = t0 + TimeDelta::minutes(5 * (n as i64 + 1));
            assert_eq!(
                (fire.occurrence, fire.due, fire.fired_at),
                (expected, expected, expected)
            );
            assert_eq!(fire.merged, 0);
        }
    }

    #[tokio::test]
    async fn an_interval_continues_from_its_last_run_after_restart() {
        let clock = ManualClock::new(at("2026-05-01T10:00:00Z"));
        let (handle, mut fires) = start(&clock, 64);
        let last_run = Some(at("2026-05-01T09:58:00Z"));
        handle
            .upsert(
                key("every-5m"),
                interval(Duration::from_secs(300)),
                last_run,
                true,
            )
            .await
            .unwrap();
        assert_quiet(&handle, &mut fires).await;
        let fired = run_until(&handle, &clock, &mut fires, at("2026-05-01T10:10:00Z")).await;
        assert_eq!(
            instants(&fired),
            [at("2026-05-01T10:03:00Z"), at("2026-05-01T10:08:00Z")]
        );
    }

    #[tokio::test]
    async fn cron_every_quarter_hour() {
        let clock = ManualClock::new(at("2026-05-01T10:07:00Z"));
        let (handle, mut fires) = start(&clock, 64);
        handle
            .upsert(key("quarter"), cron("*/15 * * * *", "UTC"), None, true)
            .await
            .unwrap();
        let fired = run_until(&handle, &clock, &mut fires, at("2026-05-02T10:07:00Z")).await;
        assert_eq!(fired.len(), 96);
        assert_eq!(fired[0].fired_at, at("2026-05-01T10:15:00Z"));
        for pair in fired.windows(2) {
            assert_eq!(pair[1].fired_at - pair[0].fired_at, TimeDelta::minutes(15));
        }
    }

    #[tokio::test]
    async fn weekday_cron_fires_monday_to_friday_only() {
        // Sunday 2026-11-22 00:00 Berlin time; two weeks of 09:00 Berlin = 08:00 UTC in November.
        let clock = ManualClock::new(at("2026-11-21T23:00:00Z"));
        let (handle, mut fires) = start(&clock, 64);
        handle
            .upsert(
                key("weekdays"),
                cron("0 9 * * 1-5", "Europe/Berlin"),
                None,
                true,
            )
            .await
            .unwrap();
        let fired = run_until(&handle, &clock, &mut fires, at("2026-12-05T23:00:00Z")).await;
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let days: Vec<(u32, Weekday)> = fired
            .iter()
            .map(|fire| {
                let local = fire.fired_at.with_timezone(&berlin);
                assert_eq!((local.hour(), local.minute()), (9, 0));
                (local.day(), local.weekday())
            })
            .collect();
        use Weekday::*;
        assert_eq!(
            days,
            [
                (23, Mon),
                (24, Tue),
                (25, Wed),
                (26, Thu),
                (27, Fri),
                (30, Mon),
                (1, Tue),
                (2, Wed),
                (3, Thu),
                (4, Fri)
            ]
        );
    }

    #[tokio::test]
    async fn daily_cron_follows_local_midnight_through_both_dst_changes_of_2026() {
        let clock = ManualClock::new(at("2026-01-01T12:00:00Z"));
        let (handle, mut fires) = start(&clock, 64);
        for zone in ["Europe/Berlin", "America/New_York"] {
            handle
                .upsert(key(zone), cron("@daily", zone), None, true)
                .await
                .unwrap();
        }
        let fired = run_until(&handle, &clock, &mut fires, at("2027-01-01T12:00:00Z")).await;
        for (zone, transitions) in [
            (
                "Europe/Berlin",
                [
                    "2026-03-28T23:00:00Z", // Sunday 29 March 00:00 CET, the night before clocks go forward
                    "2026-03-29T22:00:00Z", // Monday 00:00 CEST
                    "2026-10-24T22:00:00Z", // Sunday 25 October 00:00 CEST, clocks go back at 03:00
                    "2026-10-25T23:00:00Z", // Monday 00:00 CET
                ],
            ),
            (
                "America/New_York",
                [
                    "2026-03-08T05:00:00Z", // Sunday 8 March 00:00 EST
                    "2026-03-09T04:00:00Z", // Monday 00:00 EDT
                    "2026-11-01T04:00:00Z", // Sunday 1 November 00:00 EDT
                    "2026-11-02T05:00:00Z", // Monday 00:00 EST
                ],
            ),
        ] {
            let tz: Tz = zone.parse().unwrap();
            let days: Vec<DateTime<Utc>> = fired
                .iter()
                .filter(|fire| fire.key == key(zone))
                .map(|fire| fire.fired_at)
                .collect();
            // Local midnights of 2 January 2026 to 1 January 2027, one per local day.
            assert_eq!(days.len(), 365, "{zone}");
            let mut expected_date = chrono::NaiveDate::from_ymd_opt(2026, 1, 2).unwrap();
            for day in &days {
                let local = day.with_timezone(&tz);
                assert_eq!((local.hour(), local.minute()), (0, 0), "{zone} {day}");
                assert_eq!(
                    local.date_naive(),
                    expected_date,
                    "{zone}: one per local day"
                );
                expected_date = expected_date.succ_opt().unwrap();
            }
            for transition in transitions {
                assert!(
                    days.contains(&at(transition)),
                    "{zone}: no fire at {transition}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_0230_job_on_dst_change_days_in_berlin() {
        let clock = ManualClock::new(at("2026-03-27T12:00:00Z"));
        let (handle, mut fires) = start(&clock, 64);
        handle
            .upsert(key("0230"), cron("30 2 * * *", "Europe/Berlin"), None, true)
            .await
            .unwrap();
        let spring = run_until(&handle, &clock, &mut fires, at("2026-03-30T12:00:00Z")).await;
        assert_eq!(
            instants(&spring),
            [
                at("2026-03-28T01:30:00Z"), // 02:30 CET
                at("2026-03-29T01:00:00Z"), // 02:30 does not exist: 03:00 CEST, right after the gap
                at("2026-03-30T00:30:00Z"), // 02:30 CEST
            ]
        );
        // A fresh schedule in October (re-enabling the old one would catch up the missed months once).
        handle.remove(key("0230")).await.unwrap();
        clock.set(at("2026-10-23T12:00:00Z"));
        handle
            .upsert(key("0230"), cron("30 2 * * *", "Europe/Berlin"), None, true)
            .await
            .unwrap();
        let autumn = run_until(&handle, &clock, &mut fires, at("2026-10-26T12:00:00Z")).await;
        assert_eq!(
            instants(&autumn),
            [
                at("2026-10-24T00:30:00Z"), // 02:30 CEST
                at("2026-10-25T00:30:00Z"), // the first 02:30 (CEST) only, not the second (CET)
                at("2026-10-26T01:30:00Z"), // 02:30 CET
            ]
        );
    }

    #[tokio::test]
    async fn catchup_after_three_days_of_downtime() {
        let daily_9 = |catchup| Timing {
            catchup,
            ..cron("0 9 * * *", "UTC")
        };
        for (catchup, expected_fires) in [(Catchup::Latest, 1), (Catchup::None, 0)] {
            let clock = ManualClock::new(at("2026-05-01T08:00:00Z"));
            let (handle, mut fires) = start(&clock, 64);
            handle
                .upsert(key("daily"), daily_9(catchup), None, true)
                .await
                .unwrap();
            let before = run_until(&handle, &clock, &mut fires, at("2026-05-01T10:00:00Z")).await;
            assert_eq!(instants(&before), [at("2026-05-01T09:00:00Z")]);
            let last_run_at = before[0].fired_at;
            drop((handle, fires));

            // Down for three days; the restarted daemon upserts with the persisted last run.
            clock.set(at("2026-05-04T12:00:00Z"));
            let (handle, mut fires) = start(&clock, 64);
            handle
                .upsert(key("daily"), daily_9(catchup), Some(last_run_at), true)
                .await
                .unwrap();
            let mut after_restart = Vec::new();
            handle.active_count().await.unwrap();
            while let Ok(fire) = fires.try_recv() {
                after_restart.push(fire);
            }
            assert_eq!(after_restart.len(), expected_fires, "{catchup:?}");
            if let Some(fire) = after_restart.first() {
                assert_eq!(fire.occurrence, at("2026-05-04T09:00:00Z"));
                assert_eq!(fire.fired_at, at("2026-05-04T12:00:00Z"));
            }
            assert_eq!(
                handle.next_due(key("daily")).await.unwrap(),
                Some(at("2026-05-05T09:00:00Z")),
                "{catchup:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_clock_jump_over_many_occurrences_fires_once() {
        let clock = ManualClock::new(at("2026-05-01T10:00:00Z"));
        let (handle, mut fires) = start(&clock, 64);
        handle
            .upsert(key("quarter"), cron("*/15 * * * *", "UTC"), None, true)
            .await
            .unwrap();
        clock.set(at("2026-05-01T13:07:00Z"));
        let late = recv(&mut fires).await;
        assert_eq!(late.occurrence, at("2026-05-01T10:15:00Z"));
        assert_quiet(&handle, &mut fires).await;
        assert_eq!(
            handle.next_due(key("quarter")).await.unwrap(),
            Some(at("2026-05-01T13:15:00Z"))
        );
    }

    #[tokio::test]
    async fn jitter_stays_within_its_bound_and_before_the_next_occurrence() {
        let clock = ManualClock::new(at("2026-05-01T00:00:00Z"));
        let (handle, mut fires) = start(&clock, 64);
        let jittered = |bound| Timing {
            jitter: Some(bound),
            ..cron("*/5 * * * *", "UTC")
        };
        handle
            .upsert(key("2m"), jittered(Duration::from_secs(120)), None, true)
            .await
            .unwrap();
        handle
            .upsert(key("1h"), jittered(Duration::from_secs(3600)), None, true)
            .await
            .unwrap();
        let fired = run_until(&handle, &clock, &mut fires, at("2026-05-02T00:05:00Z")).await;
        for name in ["2m", "1h"] {
            let bound = if name == "2m" {
                TimeDelta::minutes(2)
            } else {
                TimeDelta::minutes(5)
            };
            let mine: Vec<&Fire> = fired
                .iter()
                .filter(|f| f.key == key(name) && f.occurrence <= at("2026-05-02T00:00:00Z"))
                .collect();
            assert_eq!(mine.len(), 288, "{name}");
            let mut delays = Vec::new();
            for fire in mine {
                assert_eq!(fire.occurrence.minute() % 5, 0);
                assert_eq!(fire.occurrence.second(), 0);
                let delay = fire.fired_at - fire.occurrence;
                assert!(
                    delay >= TimeDelta::zero() && delay < bound,
                    "{name}: {fire:?}"
                );
                delays.push(delay);
            }
            // Really random: the delays are spread, not constant.
            delays.sort();
            assert!(
                delays[delays.len() - 1] - delays[0] > bound / 2,
                "{name}: {delays:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_plan_lists_every_schedule_that_will_fire() {
        let clock = ManualClock::new(at("2026-05-01T00:00:00Z"));
        let (handle, _fires) = start(&clock, 64);
        let daily = cron("0 9 * * *", "UTC");
        handle
            .upsert(key("daily"), daily, None, true)
            .await
            .unwrap();
        handle
            .upsert(key("off"), interval(Duration::from_secs(60)), None, false)
            .await
            .unwrap();
        let plan = handle.plan().await.unwrap();
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[&key("daily")], at("2026-05-01T09:00:00Z"));
    }

    #[tokio::test]
    async fn disabled_schedules_never_fire() {
        let clock = ManualClock::new(at("2026-05-01T00:00:00Z"));
        let (handle, mut fires) = start(&clock, 64);
        handle
            .upsert(key("off"), interval(Duration::from_secs(60)), None, false)
            .await
            .unwrap();
        handle
            .upsert(key("on"), interval(Duration::from_secs(60)), None, true)
            .await
            .unwrap();
        assert_eq!(recv(&mut fires).await.key, key("on"));
        assert!(handle.set_enabled(key("on"), false).await.unwrap());
        assert!(!handle.set_enabled(key("unknown"), false).await.unwrap());
        clock.advance(Duration::from_secs(3 * 86_400));
        assert_quiet(&handle, &mut fires).await;
        assert_eq!(handle.next_due(key("off")).await.unwrap(), None);
        assert_eq!(handle.next_due(key("on")).await.unwrap(), None);
        assert_eq!(handle.next_any().await.unwrap(), None);
        assert_eq!(handle.active_count().await.unwrap(), 0);
        assert!(handle.plan().await.unwrap().is_empty());

        // Re-enabling plans as after a restart: one catch-up fire now, then the rhythm.
        assert!(handle.set_enabled(key("on"), true).await.unwrap());
        let caught_up = recv(&mut fires).await;
        assert_eq!(caught_up.fired_at, clock.now());
        assert_quiet(&handle, &mut fires).await;
        assert_eq!(
            handle.next_due(key("on")).await.unwrap(),
            Some(clock.now() + TimeDelta::minutes(1))
        );
    }

    #[tokio::test]
    async fn upsert_and_remove_replan_immediately() {
        let t0 = at("2026-05-01T00:00:00Z");
        let clock = ManualClock::new(t0);
        let (handle, mut fires) = start(&clock, 64);
        let hourly = interval(Duration::from_secs(3600));
        handle
            .upsert(key("s"), hourly.clone(), Some(t0), true)
            .await
            .unwrap();
        assert_eq!(
            handle.next_due(key("s")).await.unwrap(),
            Some(t0 + TimeDelta::hours(1))
        );
        handle
            .upsert(key("s"), interval(Duration::from_secs(300)), Some(t0), true)
            .await
            .unwrap();
        assert_eq!(
            handle.next_due(key("s")).await.unwrap(),
            Some(t0 + TimeDelta::minutes(5))
        );
        handle
            .upsert(key("s"), cron("0 9 * * *", "UTC"), Some(t0), true)
            .await
            .unwrap();
        assert_eq!(
            handle.next_any().await.unwrap(),
            Some((key("s"), at("2026-05-01T09:00:00Z")))
        );
        assert!(handle.remove(key("s")).await.unwrap());
        assert!(!handle.remove(key("s")).await.unwrap());
        assert_eq!(handle.next_due(key("s")).await.unwrap(), None);
        handle
            .upsert(key("a"), hourly.clone(), Some(t0), true)
            .await
            .unwrap();
        handle
            .upsert(key("b"), hourly, Some(t0), true)
            .await
            .unwrap();
        handle.clear().await.unwrap();
        clock.advance(Duration::from_secs(86_400));
        assert_quiet(&handle, &mut fires).await;
        assert_eq!(handle.next_any().await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_unchanged_upsert_keeps_the_plan() {
        let t0 = at("2026-05-01T00:00:00Z");
        let clock = ManualClock::new(t0);
        let (handle, _fires) = start(&clock, 64);
        let jittered = Timing {
            jitter: Some(Duration::from_secs(600)),
            ..interval(Duration::from_secs(3600))
        };
        handle
            .upsert(key("s"), jittered.clone(), Some(t0), true)
            .await
            .unwrap();
        let planned = handle.next_due(key("s")).await.unwrap();
        for _ in 0..5 {
            handle
                .upsert(key("s"), jittered.clone(), Some(t0), true)
                .await
                .unwrap();
            assert_eq!(handle.next_due(key("s")).await.unwrap(), planned);
        }
    }

    #[tokio::test]
    async fn a_cron_that_never_matches_has_no_plan() {
        let clock = ManualClock::new(at("2026-05-01T00:00:00Z"));
        let (handle, mut fires) = start(&clock, 64);
        handle
            .upsert(key("never"), cron("0 0 30 2 *", "UTC"), None, true)
            .await
            .unwrap();
        handle
            .upsert(key("zero"), interval(Duration::ZERO), None, true)
            .await
            .unwrap();
        assert_eq!(handle.next_due(key("never")).await.unwrap(), None);
        assert_eq!(handle.next_due(key("zero")).await.unwrap(), None);
        assert_quiet(&handle, &mut fires).await;
    }

    #[tokio::test]
    async fn no_fire_is_lost_when_many_are_due_at_once() {
        let t0 = at("2026-05-01T00:00:00Z");
        let clock = ManualClock::new(t0);
        let (handle, mut fires) = start(&clock, 16);
        for n in 0..500 {
            handle
                .upsert(
                    key(&format!("s{n}")),
                    interval(Duration::from_secs(3600)),
                    Some(t0),
                    true,
                )
                .await
                .unwrap();
        }
        clock.advance(Duration::from_secs(3600));
        let mut seen = HashSet::new();
        for _ in 0..500 {
            let fire = recv(&mut fires).await;
            assert_eq!(fire.due, t0 + TimeDelta::hours(1));
            assert_eq!(fire.merged, 0);
            assert!(seen.insert(fire.key.clone()), "duplicate {fire:?}");
        }
        assert_quiet(&handle, &mut fires).await;
    }

    #[tokio::test]
    async fn a_slow_receiver_gets_one_merged_fire_per_schedule() {
        let t0 = at("2026-05-01T00:00:00Z");
        let clock = ManualClock::new(t0);
        let (handle, mut fires) = start(&clock, 1);
        for name in ["a", "b", "c"] {
            handle
                .upsert(key(name), interval(Duration::from_secs(60)), None, true)
                .await
                .unwrap();
        }
        // a is in the channel; b and c wait in the task. Two more minutes pass unread.
        for _ in 0..2 {
            clock.advance(Duration::from_secs(60));
            handle.active_count().await.unwrap();
        }
        assert!(handle.set_enabled(key("c"), false).await.unwrap());
        let two_minutes = t0 + TimeDelta::minutes(2);
        let received = [
            recv(&mut fires).await,
            recv(&mut fires).await,
            recv(&mut fires).await,
        ];
        let summary: Vec<_> = received
            .iter()
            .map(|fire| (fire.key.schedule.as_str(), fire.occurrence, fire.merged))
            .collect();
        assert_eq!(
            summary,
            [("a", t0, 0), ("b", two_minutes, 2), ("a", two_minutes, 1)],
            "disabling c withdrew its waiting fire"
        );
        assert_quiet(&handle, &mut fires).await;
    }

    #[tokio::test]
    async fn the_task_ends_when_every_handle_is_dropped() {
        let clock = ManualClock::new(at("2026-05-01T00:00:00Z"));
        let (handle, mut fires) = start(&clock, 4);
        drop(handle);
        let closed = tokio::time::timeout(Duration::from_secs(5), fires.recv()).await;
        assert_eq!(closed.expect("task still running"), None);
    }

    #[tokio::test]
    async fn a_handle_call_wakes_a_task_sleeping_on_the_real_clock() {
        let (handle, mut fires) = Scheduler::spawn(Arc::new(SystemClock));
        let now = Utc::now();
        let hourly = interval(Duration::from_secs(3600));
        handle
            .upsert(key("far"), hourly.clone(), Some(now), true)
            .await
            .unwrap();
        // The task now sleeps for (at most) a minute; this schedule is due in 30 ms.
        let soon = now - TimeDelta::hours(1) + TimeDelta::milliseconds(30);
        handle
            .upsert(key("soon"), hourly, Some(soon), true)
            .await
            .unwrap();
        let fire = recv(&mut fires).await;
        assert_eq!(fire.key, key("soon"));
        assert!(Utc::now() >= fire.due);
    }

    /// Fire latency on the real clock: due instant → fire received. Run with `--nocapture` to see it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real_clock_fire_latency() {
        let (handle, mut fires) = Scheduler::spawn(Arc::new(SystemClock));
        let count = 200;
        let hourly = interval(Duration::from_secs(3600));
        let first = Utc::now() + TimeDelta::milliseconds(100);
        for n in 0..count {
            let due = first + TimeDelta::milliseconds(20 * n);
            let last_run_at = due - TimeDelta::hours(1);
            handle
                .upsert(
                    key(&format!("s{n}")),
                    hourly.clone(),
                    Some(last_run_at),
                    true,
                )
                .await
                .unwrap();
        }
        let mut latencies = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let fire = recv(&mut fires).await;
            let received = Utc::now();
            latencies.push((received - fire.due).num_microseconds().unwrap());
        }
        latencies.sort_unstable();
        let percentile = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
        let (p50, p99, max) = (
            percentile(50),
            percentile(99),
            latencies[latencies.len() - 1],
        );
        println!(
            "scheduler fire latency over {count} fires: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0,
            max as f64 / 1000.0
        );
        assert!(latencies[0] >= 0, "a fire arrived before it was due");
        assert!(p99 < 100_000, "p99 latency {p99} µs");
    }
}
