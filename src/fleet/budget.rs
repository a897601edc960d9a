//! Cost totals and daily budgets (issue 19): the periods totals cover (today and the last 7 days, as
//! calendar days of a time zone), what the job store says was spent in them, and what an agent's budget
//! says about a new run.
//!
//! Everything is summed from the store's usage index, which is built from the job records, never kept as
//! a counter of its own: totals and spend are the same after a restart and cover exactly the records that
//! exist (a pruned job's cost leaves them). A job counts on the day it finished, when its cost is known;
//! a running job counts nothing yet and is never stopped for a budget.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

use crate::config::AgentConfig;
use crate::state::JobStore;

use super::error::FleetError;
use super::info::{BudgetInfo, UsagePeriod, UsageReport};

/// Calendar days the `last7Days` totals span, today included.
const WEEK: u64 = 7;

/// The first instant of `date` in `tz`: local midnight, or where a clock change that skips midnight lands
/// (the first quarter hour that exists; zones change on quarter hours).
fn start_of_day(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let midnight = date.and_time(NaiveTime::MIN);
    (0..=4 * 4)
        .filter_map(|quarter| {
            let local = midnight.checked_add_signed(TimeDelta::minutes(15 * quarter))?;
            tz.from_local_datetime(&local).earliest()
        })
        .next()
        .map(|start| start.with_timezone(&Utc))
        .unwrap_or_else(|| midnight.and_utc())
}

/// The local date of `now` in `tz`, and `[since, until)`: the `days` calendar days ending with it.
fn local_days(now: DateTime<Utc>, tz: Tz, days: u64) -> (NaiveDate, DateTime<Utc>, DateTime<Utc>) {
    let today = now.with_timezone(&tz).date_naive();
    let first = today
        .checked_sub_days(Days::new(days.saturating_sub(1)))
        .unwrap_or(today);
    let until = today
        .checked_add_days(Days::new(1))
        .map_or(DateTime::<Utc>::MAX_UTC, |next| start_of_day(next, tz));
    (today, start_of_day(first, tz), until)
}

fn period(
    store: &JobStore,
    agent: Option<&str>,
    tz: Tz,
    now: DateTime<Utc>,
    days: u64,
) -> UsagePeriod {
    let (_, since, until) = local_days(now, tz, days);
    UsagePeriod {
        since,
        totals: store.usage_between(agent, since, until),
    }
}

/// The totals of `agent`'s jobs (every job's with `None`) for today and the last 7 days, days of `tz`.
pub(super) fn report(
    store: &JobStore,
    agent: Option<&str>,
    tz: Tz,
    now: DateTime<Utc>,
) -> UsageReport {
    UsageReport {
        timezone: tz.name().to_string(),
        today: period(store, agent, tz, now, 1),
        last_7_days: period(store, agent, tz, now, WEEK),
    }
}

/// The time zone an agent's day follows: its own `timezone`, else the host's.
pub(super) fn agent_timezone(agent: &AgentConfig, host: Tz) -> Tz {
    agent.timezone.unwrap_or(host)
}

/// An agent's budget against what its jobs cost today.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Spend {
    pub daily_usd: f64,
    pub spent_usd: f64,
    /// Today, in `timezone`.
    pub day: NaiveDate,
    pub timezone: Tz,
}

impl Spend {
    /// `agent`'s spend today; `None` when it has no budget.
    pub(crate) fn of(
        store: &JobStore,
        agent: &AgentConfig,
        host: Tz,
        now: DateTime<Utc>,
    ) -> Option<Spend> {
        let budget = agent.budget?;
        let timezone = agent_timezone(agent, host);
        let (day, since, until) = local_days(now, timezone, 1);
        Some(Spend {
            daily_usd: budget.daily_usd,
            spent_usd: store
                .usage_between(Some(&agent.name), since, until)
                .cost_usd,
            day,
            timezone,
        })
    }

    /// The day's spend reached the budget: new runs wait for the next day unless told otherwise.
    pub(crate) fn reached(&self) -> bool {
        self.spent_usd >= self.daily_usd
    }

    pub(crate) fn info(&self) -> BudgetInfo {
        BudgetInfo {
            daily_usd: self.daily_usd,
            spent_today: self.spent_usd,
            reached: self.reached(),
        }
    }

    /// Why a manual run of `agent` is refused.
    pub(crate) fn refusal(&self, agent: &str) -> FleetError {
        FleetError::BudgetExceeded {
            agent_name: agent.to_string(),
            spent_usd: self.spent_usd,
            daily_usd: self.daily_usd,
            day: self.day.to_string(),
            timezone: self.timezone.name().to_string(),
        }
    }
}

/// `Err` when a new manual run of `agent` must be refused: its budget is spent for today and the caller
/// did not pass `over_budget`.
pub(super) fn admit_manual(
    store: &JobStore,
    agent: &AgentConfig,
    host: Tz,
    now: DateTime<Utc>,
    over_budget: bool,
) -> Result<(), FleetError> {
    match Spend::of(store, agent, host, now) {
        Some(spend) if spend.reached() && !over_budget => Err(spend.refusal(&agent.name)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn the_day_is_the_calendar_day_of_the_zone_not_of_utc() {
        let tokyo: Tz = "Asia/Tokyo".parse().unwrap();
        // 23:30 UTC on 2 March is 08:30 on 3 March in Tokyo.
        let (day, since, until) = local_days(utc("2026-03-02T23:30:00Z"), tokyo, 1);
        assert_eq!(day.to_string(), "2026-03-03");
        assert_eq!(since, utc("2026-03-02T15:00:00Z"));
        assert_eq!(until, utc("2026-03-03T15:00:00Z"));
        // One minute before Tokyo's midnight it is still 3 March; at midnight the next day begins.
        let (before, _, _) = local_days(utc("2026-03-03T14:59:00Z"), tokyo, 1);
        let (after, since, _) = local_days(utc("2026-03-03T15:00:00Z"), tokyo, 1);
        assert_eq!(
            (before.to_string(), after.to_string()),
            ("2026-03-03".into(), "2026-03-04".into())
        );
        assert_eq!(since, utc("2026-03-03T15:00:00Z"));
        // The same instant in UTC is still 2 March.
        let (day, _, _) = local_days(utc("2026-03-02T23:30:00Z"), Tz::UTC, 1);
        assert_eq!(day.to_string(), "2026-03-02");
    }

    #[test]
    fn seven_days_end_with_today_and_days_follow_clock_changes() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // Summer time starts on 29 March 2026: that day has 23 hours.
        let (_, since, until) = local_days(utc("2026-03-30T10:00:00Z"), berlin, WEEK);
        assert_eq!(since, utc("2026-03-23T23:00:00Z"), "24 March, winter time");
        assert_eq!(until, utc("2026-03-30T22:00:00Z"), "31 March, summer time");
        let (_, since, until) = local_days(utc("2026-03-29T12:00:00Z"), berlin, 1);
        assert_eq!(until - since, TimeDelta::hours(23));
        // Where midnight does not exist the day starts when the clock has jumped (Santiago, 2026-09-06).
        let santiago: Tz = "America/Santiago".parse().unwrap();
        let (day, since, _) = local_days(utc("2026-09-06T12:00:00Z"), santiago, 1);
        assert_eq!(day.to_string(), "2026-09-06");
        assert_eq!(since, utc("2026-09-06T04:00:00Z"), "01:00 local, UTC-3");
    }
}
