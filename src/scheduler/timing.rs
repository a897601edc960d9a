//! When a schedule is due: pure functions from a schedule's timing, its last run and the current instant to
//! its next due instant. No clocks, tasks or state here; randomness (jitter) comes from a [`JitterSource`]
//! the caller passes, so every result is reproducible in tests.
//!
//! Rules (documented for operators in the module doc of `scheduler`):
//! - Interval, never run: due now. Afterwards the interval is measured **start to start** from the previous
//!   due instant (as herdctl does), so a run's duration does not shift the rhythm and jitter does not drift.
//! - Cron: the next occurrence in the schedule's time zone; DST semantics are those of
//!   [`crate::timespec`] (the skipped 02:30 runs at 03:00, a repeated 02:30 runs once). A cron schedule that
//!   has never run waits for its next occurrence.
//! - Restart (`first_due` with a `last_run_at`): an interval continues from its last run; a cron continues
//!   with the first occurrence after its last run. If that instant already passed while the daemon was down,
//!   `Catchup::Latest` fires once now (standing for the latest missed occurrence) and `Catchup::None` skips
//!   to the next occurrence after now (for an interval: the next instant of its rhythm). Never a burst.
//! - After a fire (`next_due`): the next occurrence after the fired one; if that is already past (the fire
//!   was late, e.g. after a suspend), the late fire counts for the missed ones and the next is planned after
//!   now. Never a burst.
//! - Jitter: a random delay in `[0, jitter)`, and always strictly before the following occurrence, so jitter
//!   never reorders or skips occurrences.
//! - A zero interval or a cron that can never match again has no due instant (`None`); configuration
//!   rejects a zero interval at load, this only guarantees the scheduler cannot spin.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;

use crate::timespec::CronExpr;

/// When a schedule is due, independent of what firing means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    pub kind: TimingKind,
    /// Upper bound of a random delay added to each due instant (`jitter:` in the schedule).
    pub jitter: Option<Duration>,
    /// What to do about occurrences missed while the daemon was down (`catchup:` in the schedule).
    pub catchup: Catchup,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimingKind {
    /// Every `Duration`, start to start.
    Interval(Duration),
    /// At the occurrences of `expr` in time zone `tz`. (Boxed: a parsed expression is a few hundred bytes.)
    Cron { expr: Box<CronExpr>, tz: Tz },
}

/// Occurrences missed while the daemon was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Catchup {
    /// Run once for the latest missed occurrence, right away.
    #[default]
    Latest,
    /// Skip them; wait for the next occurrence.
    None,
}

/// A planned fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The occurrence of the schedule this fire stands for, without jitter. For a catch-up after downtime
    /// it is the latest missed occurrence (interval: the catch-up instant itself).
    pub occurrence: DateTime<Utc>,
    /// When to fire: the occurrence (or now, for a catch-up) plus jitter.
    pub at: DateTime<Utc>,
}

/// Random delays for jitter.
pub trait JitterSource: Send {
    /// A duration in `[0, bound)`; zero when `bound` is zero.
    fn delay_below(&mut self, bound: Duration) -> Duration;
}

/// Seeded pseudo-random jitter (fastrand's wyrand). Jitter spreads load; it needs no cryptographic quality.
#[derive(Debug, Clone)]
pub struct SeededJitter {
    rng: fastrand::Rng,
}

impl SeededJitter {
    /// A generator whose sequence is fixed by `seed` (for tests).
    pub fn new(seed: u64) -> SeededJitter {
        SeededJitter {
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// A generator seeded from the process's entropy.
    pub fn from_entropy() -> SeededJitter {
        SeededJitter {
            rng: fastrand::Rng::new(),
        }
    }
}

impl JitterSource for SeededJitter {
    fn delay_below(&mut self, bound: Duration) -> Duration {
        let bound_nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
        if bound_nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.rng.u64(..bound_nanos))
    }
}

/// The first due instant after start, restart, a configuration change or re-enabling: `last_run_at` is when
/// the schedule last ran (None if never). See the module doc for the rules.
pub fn first_due(
    timing: &Timing,
    last_run_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    jitter: &mut dyn JitterSource,
) -> Option<Due> {
    // A last run in the future (the wall clock was stepped back) counts as now, so a schedule never waits
    // more than one period.
    let last_run_at = last_run_at.map(|last| last.min(now));
    let occurrence = match (&timing.kind, last_run_at) {
        (TimingKind::Interval(interval), None) => {
            positive(*interval)?;
            now
        }
        (TimingKind::Interval(interval), Some(last)) => {
            let interval = positive(*interval)?;
            let next = last.checked_add_signed(interval)?;
            if next >= now {
                next
            } else {
                match timing.catchup {
                    Catchup::Latest => now,
                    Catchup::None => first_step_after(last, interval, now)?,
                }
            }
        }
        (TimingKind::Cron { expr, tz }, None) => cron_after(expr, *tz, now)?,
        (TimingKind::Cron { expr, tz }, Some(last)) => {
            let next = cron_after(expr, *tz, last)?;
            if next >= now {
                next
            } else {
                match timing.catchup {
                    Catchup::Latest => {
                        let latest = expr.latest_at_or_before(&now.with_timezone(tz))?;
                        return Some(with_jitter(timing, latest.with_timezone(&Utc), now, jitter));
                    }
                    Catchup::None => cron_after(expr, *tz, now)?,
                }
            }
        }
    };
    Some(with_jitter(timing, occurrence, occurrence, jitter))
}

/// The due instant after the fire of `previous` (an occurrence), at `now`. See the module doc for the rules.
pub fn next_due(
    timing: &Timing,
    previous: DateTime<Utc>,
    now: DateTime<Utc>,
    jitter: &mut dyn JitterSource,
) -> Option<Due> {
    let occurrence = match &timing.kind {
        TimingKind::Interval(interval) => {
            let interval = positive(*interval)?;
            let next = previous.checked_add_signed(interval)?;
            if next > now {
                next
            } else {
                // The fire was a period or more late: it is the run; measure the next period from it.
                now.checked_add_signed(interval)?
            }
        }
        TimingKind::Cron { expr, tz } => cron_after(expr, *tz, previous.max(now))?,
    };
    Some(with_jitter(timing, occurrence, occurrence, jitter))
}

/// Plans a fire of `occurrence` at `base` (the occurrence, or now for a catch-up) plus a jitter delay that
/// stays strictly before the schedule's following occurrence.
fn with_jitter(
    timing: &Timing,
    occurrence: DateTime<Utc>,
    base: DateTime<Utc>,
    jitter: &mut dyn JitterSource,
) -> Due {
    let at = match timing.jitter.filter(|bound| !bound.is_zero()) {
        None => base,
        Some(bound) => {
            let room = following_occurrence(timing, base)
                .and_then(|following| (following - base).to_std().ok())
                .unwrap_or(bound);
            let delay = jitter.delay_below(bound.min(room));
            TimeDelta::from_std(delay)
                .ok()
                .and_then(|delay| base.checked_add_signed(delay))
                .unwrap_or(base)
        }
    };
    Due { occurrence, at }
}

/// The occurrence that follows one at `base`.
fn following_occurrence(timing: &Timing, base: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match &timing.kind {
        TimingKind::Interval(interval) => base.checked_add_signed(positive(*interval)?),
        TimingKind::Cron { expr, tz } => cron_after(expr, *tz, base),
    }
}

/// The first instant `last + k * interval` (k ≥ 1) strictly after `now`.
fn first_step_after(
    last: DateTime<Utc>,
    interval: TimeDelta,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let elapsed = (now - last).num_milliseconds();
    let steps = elapsed / interval.num_milliseconds().max(1) + 1;
    let offset = TimeDelta::milliseconds(interval.num_milliseconds().checked_mul(steps)?);
    let candidate = last.checked_add_signed(offset)?;
    // Millisecond rounding of a sub-millisecond interval part can land on `now`; one more step fixes it.
    if candidate > now {
        Some(candidate)
    } else {
        candidate.checked_add_signed(interval)
    }
}

/// The next occurrence of `expr` in `tz` strictly after `after`.
fn cron_after(expr: &CronExpr, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    expr.next_after(&after.with_timezone(&tz))
        .map(|next| next.with_timezone(&Utc))
}

/// The interval as a time delta; None for zero (which would fire continuously) or out-of-range values.
fn positive(interval: Duration) -> Option<TimeDelta> {
    if interval.is_zero() {
        return None;
    }
    TimeDelta::from_std(interval).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// Always the largest delay allowed, to probe the bounds.
    struct MaxJitter;
    impl JitterSource for MaxJitter {
        fn delay_below(&mut self, bound: Duration) -> Duration {
            bound.saturating_sub(Duration::from_nanos(1))
        }
    }

    fn no_jitter() -> SeededJitter {
        SeededJitter::new(0)
    }

    fn interval(secs: u64, catchup: Catchup) -> Timing {
        Timing {
            kind: TimingKind::Interval(Duration::from_secs(secs)),
            jitter: None,
            catchup,
        }
    }

    fn cron(expr: &str, tz: &str, catchup: Catchup) -> Timing {
        Timing {
            kind: TimingKind::Cron {
                expr: Box::new(CronExpr::parse(expr).unwrap()),
                tz: tz.parse().unwrap(),
            },
            jitter: None,
            catchup,
        }
    }

    fn first(timing: &Timing, last: Option<&str>, now: &str) -> Option<Due> {
        first_due(timing, last.map(at), at(now), &mut no_jitter())
    }

    #[test]
    fn a_never_run_interval_is_due_now() {
        let due = first(
            &interval(300, Catchup::Latest),
            None,
            "2026-05-01T10:00:00Z",
        )
        .unwrap();
        assert_eq!(due.at, at("2026-05-01T10:00:00Z"));
        assert_eq!(due.occurrence, due.at);
    }

    #[test]
    fn an_interval_continues_from_its_last_run_after_restart() {
        let timing = interval(300, Catchup::Latest);
        let due = first(
            &timing,
            Some("2026-05-01T09:58:00Z"),
            "2026-05-01T10:00:00Z",
        )
        .unwrap();
        assert_eq!(due.at, at("2026-05-01T10:03:00Z"));
        // A last run "in the future" (clock stepped back) waits at most one interval.
        let due = first(
            &timing,
            Some("2026-06-01T00:00:00Z"),
            "2026-05-01T10:00:00Z",
        )
        .unwrap();
        assert_eq!(due.at, at("2026-05-01T10:05:00Z"));
    }

    #[test]
    fn an_overdue_interval_catches_up_once_or_keeps_its_rhythm() {
        let last = Some("2026-05-01T00:00:00Z");
        let now = "2026-05-04T00:07:00Z";
        let latest = first(&interval(3600, Catchup::Latest), last, now).unwrap();
        assert_eq!(latest.at, at(now));
        let none = first(&interval(3600, Catchup::None), last, now).unwrap();
        assert_eq!(none.at, at("2026-05-04T01:00:00Z"));
    }

    #[test]
    fn intervals_are_measured_start_to_start() {
        let timing = interval(300, Catchup::Latest);
        let next = next_due(
            &timing,
            at("2026-05-01T10:00:00Z"),
            at("2026-05-01T10:00:00.004Z"),
            &mut no_jitter(),
        );
        assert_eq!(next.unwrap().at, at("2026-05-01T10:05:00Z"));
        // A fire a whole period late is the run; the next comes one period after it, not at once.
        let next = next_due(
            &timing,
            at("2026-05-01T10:00:00Z"),
            at("2026-05-01T11:00:00Z"),
            &mut no_jitter(),
        );
        assert_eq!(next.unwrap().at, at("2026-05-01T11:05:00Z"));
    }

    #[test]
    fn a_never_run_cron_waits_for_its_next_occurrence() {
        let timing = cron("0 9 * * *", "UTC", Catchup::Latest);
        let due = first(&timing, None, "2026-05-01T09:03:00Z").unwrap();
        assert_eq!(due.at, at("2026-05-02T09:00:00Z"));
    }

    #[test]
    fn cron_catchup_latest_runs_the_latest_missed_occurrence_once() {
        let timing = cron("0 9 * * *", "UTC", Catchup::Latest);
        let due = first(
            &timing,
            Some("2026-05-01T09:00:00Z"),
            "2026-05-04T12:00:00Z",
        )
        .unwrap();
        assert_eq!(due.occurrence, at("2026-05-04T09:00:00Z"));
        assert_eq!(due.at, at("2026-05-04T12:00:00Z"));
        let after = next_due(&timing, due.occurrence, due.at, &mut no_jitter()).unwrap();
        assert_eq!(after.at, at("2026-05-05T09:00:00Z"));
    }

    #[test]
    fn cron_catchup_none_skips_to_the_next_occurrence() {
        let timing = cron("0 9 * * *", "UTC", Catchup::None);
        let due = first(
            &timing,
            Some("2026-05-01T09:00:00Z"),
            "2026-05-04T12:00:00Z",
        )
        .unwrap();
        assert_eq!(due.at, at("2026-05-05T09:00:00Z"));
    }

    #[test]
    fn cron_without_missed_occurrences_continues_normally() {
        let timing = cron("0 9 * * *", "UTC", Catchup::Latest);
        let due = first(
            &timing,
            Some("2026-05-04T09:00:00Z"),
            "2026-05-04T12:00:00Z",
        )
        .unwrap();
        assert_eq!(due.at, at("2026-05-05T09:00:00Z"));
    }

    #[test]
    fn a_late_cron_fire_covers_the_occurrences_it_missed() {
        let timing = cron("*/15 * * * *", "UTC", Catchup::Latest);
        let next = next_due(
            &timing,
            at("2026-05-01T10:00:00Z"),
            at("2026-05-01T11:07:00Z"),
            &mut no_jitter(),
        );
        assert_eq!(next.unwrap().at, at("2026-05-01T11:15:00Z"));
    }

    #[test]
    fn jitter_stays_below_its_bound_and_before_the_following_occurrence() {
        let mut timing = interval(600, Catchup::Latest);
        timing.jitter = Some(Duration::from_secs(30));
        let now = at("2026-05-01T10:00:00Z");
        let due = first_due(&timing, None, now, &mut MaxJitter).unwrap();
        assert!(due.at < now + TimeDelta::seconds(30) && due.at > now + TimeDelta::seconds(29));
        assert_eq!(due.occurrence, now);

        // A jitter longer than the period is cut to the period.
        let mut every_5m = cron("*/5 * * * *", "UTC", Catchup::Latest);
        every_5m.jitter = Some(Duration::from_secs(3600));
        let due = next_due(&every_5m, now, now, &mut MaxJitter).unwrap();
        assert_eq!(due.occurrence, at("2026-05-01T10:05:00Z"));
        assert!(due.at < at("2026-05-01T10:10:00Z"), "{due:?}");
        assert!(due.at > at("2026-05-01T10:09:59Z"), "{due:?}");

        let mut random = SeededJitter::new(7);
        let mut seen_nonzero = false;
        for _ in 0..1000 {
            let due = next_due(&every_5m, now, now, &mut random).unwrap();
            assert!(due.at >= due.occurrence && due.at < at("2026-05-01T10:10:00Z"));
            seen_nonzero |= due.at > due.occurrence;
        }
        assert!(seen_nonzero);
    }

    #[test]
    fn seeded_jitter_is_reproducible_and_in_range() {
        let bound = Duration::from_secs(10);
        let a: Vec<_> = (0..50)
            .map({
                let mut s = SeededJitter::new(1);
                move |_| s.delay_below(bound)
            })
            .collect();
        let b: Vec<_> = (0..50)
            .map({
                let mut s = SeededJitter::new(1);
                move |_| s.delay_below(bound)
            })
            .collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|d| *d < bound));
        assert_eq!(
            SeededJitter::new(1).delay_below(Duration::ZERO),
            Duration::ZERO
        );
    }

    #[test]
    fn schedules_that_cannot_fire_have_no_due_instant() {
        assert_eq!(
            first(&interval(0, Catchup::Latest), None, "2026-05-01T10:00:00Z"),
            None
        );
        let never = cron("0 0 30 2 *", "UTC", Catchup::Latest);
        assert_eq!(first(&never, None, "2026-05-01T10:00:00Z"), None);
        assert_eq!(
            next_due(
                &never,
                at("2026-05-01T10:00:00Z"),
                at("2026-05-01T10:00:00Z"),
                &mut no_jitter()
            ),
            None
        );
    }
}
