//! Time specifications as users write them in fleet files: durations (`30s`, `5m`, `1h`, `2d`) and cron
//! expressions in crontab(5) syntax.
//!
//! Owns parsing and validation (so `config` can reject bad values at load time with a precise message) and
//! cron evaluation in a time zone (so `scheduler` computes occurrences). Knows nothing about schedules,
//! jobs or state.
//!
//! Cron semantics are those of Vixie cron, as implemented by `croner`:
//! - exactly five fields (minute, hour, day of month, month, day of week) or a macro (`@hourly`, `@daily`,
//!   `@midnight`, `@weekly`, `@monthly`, `@yearly`, `@annually`); no seconds field;
//! - day of week `0`–`7` with `0` and `7` both Sunday and `1` Monday, names `MON`…`SUN`, months `JAN`…`DEC`;
//! - when both day of month and day of week are restricted, either one matching is enough (crontab's OR rule);
//! - daylight saving time: a fixed-time job whose wall-clock time does not exist on a spring-forward day runs
//!   at the first instant after the gap (the 02:30 job runs at 03:00); on a fall-back day a fixed-time job runs
//!   once, at the first of the two wall-clock occurrences. Jobs with a wildcard or step in the hour field
//!   follow real elapsed time (an hourly job runs in both repeated hours).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeZone};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// A duration string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (write an integer followed by a unit: s, m, h or d, e.g. \"30s\", \"5m\", \"1h\", \"2d\")")]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

/// Parses `"<integer><unit>"` with unit `s`, `m`, `h` or `d` (case-insensitive; spaces around and between
/// allowed, as herdctl accepts `"5 m"`). Zero is accepted here; callers that need a positive duration check it.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let error = |reason| DurationError {
        input: input.to_string(),
        reason,
    };
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(error("it is empty"));
    }
    if trimmed.starts_with('-') {
        return Err(error("it is negative"));
    }
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| error("it has no unit"))?;
    let (number, rest) = trimmed.split_at(digits_end);
    if number.is_empty() {
        return Err(error("it does not start with a number"));
    }
    let unit = rest.trim();
    if unit.starts_with('.') {
        return Err(error("decimals are not supported, use a smaller unit"));
    }
    let seconds_per_unit: u64 = match unit.to_ascii_lowercase().as_str() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(error("the unit is not one of s, m, h, d")),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| error("the number is too large"))?;
    value
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| error("the number is too large"))
}

/// Formats a duration the way users write them (`90s` → `"90s"`, `3600s` → `"1h"`), for messages.
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= size && secs % size == 0 {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// A cron expression that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron expression {expression:?}: {reason} (example: \"0 9 * * 1-5\" runs at 09:00 Monday to Friday)")]
pub struct CronParseError {
    pub expression: String,
    pub reason: String,
}

/// A validated crontab expression. Keeps the text the user wrote for display and diffs.
#[derive(Clone)]
pub struct CronExpr {
    source: String,
    cron: Cron,
}

/// crontab(5) macros and the five-field expressions they stand for.
const MACROS: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// Field names and numeric bounds, in crontab order. Day of week allows 7 (Sunday) as crontab does.
const FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];

impl CronExpr {
    pub fn parse(expression: &str) -> Result<CronExpr, CronParseError> {
        let error = |reason: String| CronParseError {
            expression: expression.to_string(),
            reason,
        };
        let trimmed = expression.trim();
        let fields_text = if trimmed.starts_with('@') {
            let lower = trimmed.to_ascii_lowercase();
            match MACROS.iter().find(|(name, _)| *name == lower) {
                Some((_, fields)) => *fields,
                None => {
                    let names: Vec<&str> = MACROS.iter().map(|(name, _)| *name).collect();
                    return Err(error(format!(
                        "unknown macro, use one of {}",
                        names.join(", ")
                    )));
                }
            }
        } else {
            let fields: Vec<&str> = trimmed.split_whitespace().collect();
            if fields.len() != 5 {
                return Err(error(format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week), got {}",
                    fields.len()
                )));
            }
            for (field, (name, min, max)) in fields.iter().zip(FIELDS) {
                check_field_bounds(field, name, min, max).map_err(error)?;
            }
            trimmed
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .build()
            .parse(fields_text)
            .map_err(|e| error(e.to_string()))?;
        Ok(CronExpr {
            source: trimmed.to_string(),
            cron,
        })
    }

    /// The expression as the user wrote it (trimmed).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The first occurrence strictly after `after`, in `after`'s time zone. `None` when the expression can
    /// never match again (e.g. `0 0 30 2 *`).
    pub fn next_after<Tz: TimeZone>(&self, after: &DateTime<Tz>) -> Option<DateTime<Tz>>
    where
        DateTime<Tz>: croner::CronDateTime,
    {
        self.cron.find_next_occurrence(after, false).ok()
    }

    /// The last occurrence at or before `at`, in `at`'s time zone.
    pub fn latest_at_or_before<Tz: TimeZone>(&self, at: &DateTime<Tz>) -> Option<DateTime<Tz>>
    where
        DateTime<Tz>: croner::CronDateTime,
    {
        self.cron.find_previous_occurrence(at, true).ok()
    }
}

/// Checks every number in one field against the field's range, so errors name the field
/// (`hour must be 0-23, got 25`) instead of a parser position.
fn check_field_bounds(field: &str, name: &str, min: u32, max: u32) -> Result<(), String> {
    for number in field
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
    {
        // A step (`*/90`) is not a value of the field; croner rejects nonsensical steps itself.
        let is_step = field.find(&format!("/{number}")).is_some_and(|pos| {
            !field[pos + 1 + number.len()..].starts_with(|c: char| c.is_ascii_digit())
        });
        if is_step {
            continue;
        }
        match number.parse::<u32>() {
            Ok(value) if (min..=max).contains(&value) => {}
            _ => return Err(format!("{name} must be {min}-{max}, got {number}")),
        }
    }
    Ok(())
}

impl fmt::Debug for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CronExpr").field(&self.source).finish()
    }
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for CronExpr {}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Timelike, Utc, Weekday};
    use chrono_tz::Tz;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration(" 1H "), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("5 m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_say_why() {
        for (input, reason) in [
            ("", "empty"),
            ("5", "no unit"),
            ("5ms", "unit"),
            ("-5m", "negative"),
            ("1.5h", "decimals"),
            ("abc", "number"),
            ("99999999999999999999s", "too large"),
        ] {
            let err = parse_duration(input).unwrap_err();
            assert!(
                err.to_string().contains(reason),
                "{input:?}: {err} should mention {reason}"
            );
        }
    }

    #[test]
    fn durations_format_back_to_their_largest_unit() {
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn weekday_numbers_follow_crontab_not_quartz() {
        // 2026-11-22 is a Sunday; `1` must mean Monday as in crontab(5).
        let cron = CronExpr::parse("0 9 * * 1").unwrap();
        let next = cron.next_after(&utc("2026-11-22T12:00:00Z")).unwrap();
        assert_eq!(next.weekday(), Weekday::Mon);
        assert_eq!(next, utc("2026-11-23T09:00:00Z"));
        let sunday_as_seven = CronExpr::parse("0 9 * * 7").unwrap();
        assert_eq!(
            sunday_as_seven
                .next_after(&utc("2026-11-23T00:00:00Z"))
                .unwrap()
                .weekday(),
            Weekday::Sun
        );
    }

    #[test]
    fn weekdays_range_skips_the_weekend() {
        let cron = CronExpr::parse("0 9 * * 1-5").unwrap();
        // Friday 2026-11-27 after 09:00 → next is Monday 2026-11-30.
        let next = cron.next_after(&utc("2026-11-27T10:00:00Z")).unwrap();
        assert_eq!(next, utc("2026-11-30T09:00:00Z"));
    }

    #[test]
    fn macros_and_steps_parse() {
        for expr in [
            "@daily",
            "@HOURLY",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
            "@midnight",
        ] {
            CronExpr::parse(expr).unwrap();
        }
        let every_quarter = CronExpr::parse("*/15 * * * *").unwrap();
        assert_eq!(
            every_quarter
                .next_after(&utc("2026-11-23T10:07:00Z"))
                .unwrap(),
            utc("2026-11-23T10:15:00Z")
        );
        CronExpr::parse("0 0 1,15 JAN-MAR MON").unwrap();
    }

    #[test]
    fn bad_cron_names_the_field() {
        let cases = [
            ("0 25 * * *", "hour must be 0-23"),
            ("60 * * * *", "minute must be 0-59"),
            ("0 0 32 * *", "day of month must be 1-31"),
            ("0 0 * 13 *", "month must be 1-12"),
            ("0 0 * * 8", "day of week must be 0-7"),
            ("* * * *", "expected 5 fields"),
            ("0 */15 * * * *", "expected 5 fields"),
            ("@reboot", "unknown macro"),
            ("", "expected 5 fields"),
        ];
        for (expr, expected) in cases {
            let err = CronExpr::parse(expr).unwrap_err().to_string();
            assert!(err.contains(expected), "{expr:?}: {err}");
        }
        assert!(CronExpr::parse("0 9 * * FOO").is_err());
    }

    #[test]
    fn spring_forward_runs_the_missing_time_right_after_the_gap() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let cron = CronExpr::parse("30 2 * * *").unwrap();
        let before = berlin.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap();
        let next = cron.next_after(&before).unwrap();
        assert_eq!((next.hour(), next.minute(), next.day()), (3, 0, 29));
    }

    #[test]
    fn fall_back_runs_a_fixed_time_once() {
        let new_york: Tz = "America/New_York".parse().unwrap();
        let cron = CronExpr::parse("30 1 * * *").unwrap();
        let before = new_york.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let first = cron.next_after(&before).unwrap();
        assert_eq!((first.day(), first.hour(), first.minute()), (1, 1, 30));
        let second = cron.next_after(&first).unwrap();
        assert_eq!((second.day(), second.hour(), second.minute()), (2, 1, 30));
    }
}
