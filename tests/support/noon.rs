//! A time zone where it is about noon now, for tests of daily budgets: a run of such a test never crosses
//! the local midnight a budget's day ends at, however long it takes. Included by path
//! (`#[path = ".../support/noon.rs"]`).

use chrono::{Timelike, Utc};

/// A fixed-offset IANA zone (`Etc/GMT-3` is three hours ahead of UTC: the POSIX sign) whose local time is
/// within an hour of noon.
pub fn noon_zone() -> String {
    let offset = 12 - Utc::now().hour() as i32;
    match offset {
        0 => "Etc/GMT".to_owned(),
        east if east > 0 => format!("Etc/GMT-{east}"),
        west => format!("Etc/GMT+{}", -west),
    }
}
