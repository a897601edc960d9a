//! The scheduler decides **when** schedules are due and tells the FleetManager; it does not decide what a
//! fire does. It knows nothing of jobs, concurrency, configuration files or persisted state: the FleetManager
//! feeds it each schedule's [`Timing`], enabled flag and persisted `last_run_at`, consumes [`Fire`]s from a
//! channel, and decides to trigger, queue or skip (`overlap`, concurrency limits, disabled, stopping) and
//! what to persist.
//!
//! Public API:
//! - [`Clock`] (`now`, `sleep_until`), [`SystemClock`], [`ManualClock`] (`advance`, `set`; wakes sleepers)
//!   and [`host_timezone`] (time zone of cron schedules without `timezone:`).
//! - [`Timing`] / [`TimingKind`] / [`Catchup`] and the pure planning functions [`first_due`] and
//!   [`next_due`], with jitter from a [`JitterSource`] ([`SeededJitter`]).
//! - [`Scheduler::spawn`] → ([`SchedulerHandle`], `Receiver<Fire>`); the handle upserts, enables, disables,
//!   removes and clears schedules and answers `next_due` / `next_any` / `active_count`.
//!
//! Mechanism: one task keeps the next fire instant of every enabled schedule in an ordered set and sleeps on
//! the [`Clock`] until the earliest, or until a handle call re-plans. No polling: an idle fleet costs one
//! wake-up per [`SYSTEM_CLOCK_RECHECK`] (which bounds lateness after a wall-clock step), nothing else. On
//! each fire the task plans that schedule's next due instant itself. A schedule that can never fire again
//! (a zero interval, `0 0 30 2 *`) simply has no plan.
//!
//! Timing semantics (what operators can rely on):
//! - Interval (`30s`, `5m`, `1h`, `2d`): a schedule that never ran fires right after start; then every
//!   interval, measured from the start of the previous run (herdctl's behaviour), not from its end. A run
//!   longer than the interval does not delay the rhythm: the next fire comes on time, and the FleetManager
//!   applies `overlap` (skip, queue or allow) to it. After a restart an interval continues from its
//!   persisted `last_run_at`.
//! - Cron: crontab(5) syntax, evaluated in the schedule's `timezone` (IANA name) or the host's. Across DST:
//!   a fixed-time job whose time does not exist on the spring-forward day (02:30 in Europe/Berlin on
//!   2026-03-29) runs at the first instant after the gap (03:00 CEST); on the fall-back day a fixed-time job
//!   in the repeated hour (02:30 on 2026-10-25) runs once, at the first of the two 02:30s. Jobs with a
//!   wildcard or step in the hour field follow elapsed time (`*/15` keeps firing every 15 real minutes). A
//!   cron schedule that never ran waits for its next occurrence.
//! - Catch-up after downtime (a restart with `last_run_at` before a missed occurrence, or re-enabling):
//!   `catchup: latest` (default) fires once at once, standing for the latest missed occurrence;
//!   `catchup: none` waits for the next occurrence (an interval keeps its rhythm). Never a burst: a late
//!   fire also counts for every occurrence it was late for.
//! - Jitter: each fire is delayed by a random amount below `jitter`, and always before the schedule's
//!   following occurrence; the rhythm itself does not drift.
//! - Disabled schedules never fire and have no next due instant.

mod clock;
mod timer;
mod timing;

pub use clock::{host_timezone, Clock, ManualClock, Sleep, SystemClock, SYSTEM_CLOCK_RECHECK};
pub use timer::{
    Fire, ScheduleKey, Scheduler, SchedulerHandle, SchedulerOptions, SchedulerStopped,
};
pub use timing::{
    first_due, next_due, Catchup, Due, JitterSource, SeededJitter, Timing, TimingKind,
};
