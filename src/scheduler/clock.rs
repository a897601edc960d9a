//! Wall-clock time for the scheduler, injectable so that days of schedules can be tested in milliseconds.
//!
//! [`SystemClock`] is the real clock; [`ManualClock`] is moved by hand (`advance`, `set`) and wakes every
//! sleeper whose deadline it reaches. [`host_timezone`] resolves the host's IANA time zone for cron schedules
//! that do not name one.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use tokio::sync::watch;

/// A future that completes once a clock has reached a deadline.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of wall-clock time that can sleep until a wall-clock instant.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;

    /// Completes at `deadline` or later. It may also complete earlier (a spurious wake-up): callers re-read
    /// [`Clock::now`] and sleep again if the deadline has not been reached.
    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep;
}

/// The longest single sleep of [`SystemClock`]. Sleeps run on the monotonic clock, which does not follow
/// steps of the wall clock (NTP corrections, suspend); re-reading the wall clock at least this often bounds
/// how late a fire can be after such a step, at the cost of one wake-up per minute when idle.
pub const SYSTEM_CLOCK_RECHECK: Duration = Duration::from_secs(60);

/// The host's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep {
        // A deadline in the past gives a negative delta, which `to_std` rejects: sleep zero.
        let remaining = (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(remaining.min(SYSTEM_CLOCK_RECHECK)))
    }
}

/// A clock that only moves when told to. Cloning shares the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    time: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock {
            time: Arc::new(watch::Sender::new(start)),
        }
    }

    /// Moves the clock forward and wakes the sleepers whose deadline is reached.
    pub fn advance(&self, by: Duration) {
        let by = TimeDelta::from_std(by).unwrap_or(TimeDelta::MAX);
        self.time.send_modify(|now| {
            *now = now
                .checked_add_signed(by)
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        });
    }

    /// Sets the clock to `to` (forwards or backwards) and wakes the sleepers whose deadline is reached.
    pub fn set(&self, to: DateTime<Utc>) {
        self.time.send_replace(to);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.time.borrow()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep {
        let mut time = self.time.subscribe();
        Box::pin(async move {
            // `wait_for` fails only when the sender is gone, and the sender lives as long as any clone of the
            // clock; completing then is the harmless choice.
            let _ = time.wait_for(|now| *now >= deadline).await;
        })
    }
}

/// The host's time zone, for cron schedules without a `timezone`.
///
/// Resolution order, as libc does it: the `TZ` environment variable (an IANA name such as `Europe/Berlin`,
/// optionally with a leading `:`, or a path into a zoneinfo directory; empty means UTC), else the target of
/// the `/etc/localtime` symlink, else the name in `/etc/timezone`. When `TZ` holds something that is not an
/// IANA name (a POSIX rule such as `CET-1CEST,M3.5.0,M10.5.0/3`), or nothing can be resolved, the result is
/// UTC and a warning is logged naming the problem and the fix (`timezone:` on the schedule).
pub fn host_timezone() -> Tz {
    let tz_env = std::env::var("TZ").ok();
    let localtime_target = std::fs::read_link("/etc/localtime").ok();
    let etc_timezone = std::fs::read_to_string("/etc/timezone").ok();
    match timezone_from(
        tz_env.as_deref(),
        localtime_target.as_deref(),
        etc_timezone.as_deref(),
    ) {
        Ok(tz) => tz,
        Err(problem) => {
            tracing::warn!(
                "cannot determine the host time zone ({problem}); cron schedules without `timezone:` run in UTC. \
                 Set `timezone:` on the schedule or TZ to an IANA name such as Europe/Berlin"
            );
            Tz::UTC
        }
    }
}

/// [`host_timezone`] on given inputs: `TZ`, the `/etc/localtime` link target, the `/etc/timezone` text.
fn timezone_from(
    tz_env: Option<&str>,
    localtime_target: Option<&Path>,
    etc_timezone: Option<&str>,
) -> Result<Tz, String> {
    if let Some(value) = tz_env {
        let value = value.trim().trim_start_matches(':');
        if value.is_empty() {
            return Ok(Tz::UTC);
        }
        return zone_name_in(value).ok_or_else(|| format!("TZ={value:?} is not an IANA zone name"));
    }
    if let Some(zone) = localtime_target.and_then(|target| zone_name_in(&target.to_string_lossy()))
    {
        return Ok(zone);
    }
    if let Some(zone) = etc_timezone.and_then(|text| zone_name_in(text.trim())) {
        return Ok(zone);
    }
    Err("TZ is unset, /etc/localtime is not a link into a zoneinfo directory, /etc/timezone names no zone".into())
}

/// Parses a zone name, or a path ending in one (`/usr/share/zoneinfo/Europe/Berlin`,
/// `../usr/share/zoneinfo/posix/Etc/UTC`).
fn zone_name_in(text: &str) -> Option<Tz> {
    let name = match text.rfind("zoneinfo/") {
        Some(pos) => &text[pos + "zoneinfo/".len()..],
        None => text,
    };
    let name = name
        .strip_prefix("posix/")
        .or_else(|| name.strip_prefix("right/"))
        .unwrap_or(name);
    name.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_their_deadline_is_reached() {
        let clock = ManualClock::new(at("2026-01-01T00:00:00Z"));
        let sleeper = tokio::spawn(clock.sleep_until(at("2026-01-01T01:00:00Z")));
        clock.advance(Duration::from_secs(1800));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "woke before its deadline");
        clock.advance(Duration::from_secs(1800));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("sleeper not woken at its deadline")
            .unwrap();
        assert_eq!(clock.now(), at("2026-01-01T01:00:00Z"));
    }

    #[tokio::test]
    async fn manual_clock_set_moves_both_ways() {
        let clock = ManualClock::new(at("2026-01-01T00:00:00Z"));
        clock.set(at("2025-12-31T00:00:00Z"));
        assert_eq!(clock.now(), at("2025-12-31T00:00:00Z"));
        // A deadline already reached completes at once.
        clock.sleep_until(at("2025-01-01T00:00:00Z")).await;
    }

    #[tokio::test]
    async fn system_clock_sleeps_until_the_deadline() {
        let deadline = Utc::now() + TimeDelta::milliseconds(30);
        SystemClock.sleep_until(deadline).await;
        assert!(Utc::now() >= deadline);
    }

    #[test]
    fn host_timezone_follows_tz_then_localtime_then_etc_timezone() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let link = Path::new("/usr/share/zoneinfo/America/New_York");
        assert_eq!(
            timezone_from(Some("Europe/Berlin"), Some(link), None),
            Ok(berlin)
        );
        assert_eq!(
            timezone_from(Some(":Europe/Berlin"), None, None),
            Ok(berlin)
        );
        assert_eq!(
            timezone_from(Some("/usr/share/zoneinfo/Europe/Berlin"), None, None),
            Ok(berlin)
        );
        assert_eq!(timezone_from(Some(""), Some(link), None), Ok(Tz::UTC));
        assert_eq!(
            timezone_from(None, Some(link), None),
            Ok(Tz::America__New_York)
        );
        assert_eq!(
            timezone_from(
                None,
                Some(Path::new("../usr/share/zoneinfo/posix/Etc/UTC")),
                None
            ),
            Ok(Tz::Etc__UTC)
        );
        assert_eq!(
            timezone_from(None, None, Some("Europe/Berlin\n")),
            Ok(berlin)
        );
    }

    #[test]
    fn unresolvable_host_timezone_says_why() {
        let err = timezone_from(Some("CET-1CEST,M3.5.0,M10.5.0/3"), None, None).unwrap_err();
        assert!(err.contains("not an IANA zone name"), "{err}");
        let err = timezone_from(None, Some(Path::new("/etc/somewhere")), None).unwrap_err();
        assert!(err.contains("/etc/localtime"), "{err}");
    }
}
