//! Presentation primitives for human output: ANSI colours (only on a terminal, never with `NO_COLOR`),
//! relative times ("in 4m", "2h ago"), durations, abbreviation and aligned tables.
//!
//! API: [`Style`] (`Style::detect()`, `paint`-style helpers), [`relative`], [`duration_ms`], [`abbreviate`],
//! [`Table`]. Knows nothing about the daemon's result shapes.

use std::io::IsTerminal;

use chrono::{DateTime, Utc};

pub use herdctld::job::abbreviate;

/// Whether to colour, decided once per stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
}

impl Style {
    /// Colours when stdout is a terminal and `NO_COLOR` is not set (<https://no-color.org>).
    pub fn detect() -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some();
        Style {
            color: !no_color && std::io::stdout().is_terminal(),
        }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    pub fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }
    pub fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }
    pub fn red(self, text: &str) -> String {
        self.paint("31", text)
    }
    pub fn green(self, text: &str) -> String {
        self.paint("32", text)
    }
    pub fn yellow(self, text: &str) -> String {
        self.paint("33", text)
    }
    pub fn cyan(self, text: &str) -> String {
        self.paint("36", text)
    }

    /// A job or fleet status word in its colour: green for good, red for failed, yellow for in between.
    pub fn status(self, status: &str) -> String {
        match status {
            "completed" | "running" | "success" | "enabled" => self.green(status),
            "failed" | "error" | "disabled" => self.red(status),
            "queued" | "cancelled" | "stopping" | "initialized" | "warn" => self.yellow(status),
            "stopped" | "idle" | "debug" | "trace" => self.dim(status),
            _ => status.to_owned(),
        }
    }
}

/// `at` relative to `now`: "in 4m", "2h ago", "just now". One unit, rounded down, as people read it.
pub fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (at - now).num_seconds();
    if seconds.abs() < 1 {
        return "just now".to_owned();
    }
    let amount = coarse(seconds.unsigned_abs());
    if seconds > 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

fn coarse(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// A run time: "850ms", "4.2s", "3m 05s", "2h 01m".
pub fn duration_ms(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m {:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h {:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// An uptime in milliseconds (`getStatus.uptime`), two units: "2h 3m", "45s".
pub fn uptime(ms: u64) -> String {
    let seconds = ms / 1000;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m {}s", seconds / 60, seconds % 60),
        3600..86_400 => format!("{}h {}m", seconds / 3600, seconds / 60 % 60),
        _ => format!("{}d {}h", seconds / 86_400, seconds / 3600 % 24),
    }
}

/// Printable width of a string that may hold ANSI colour sequences.
fn visible_width(text: &str) -> usize {
    let mut width = 0;
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => width += 1,
        }
    }
    width
}

/// Rows printed with each column as wide as its widest cell; the last column is not padded.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(style: Style, header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| style.bold(h)).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths = vec![0; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(visible_width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (index, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if index + 1 < row.len() {
                    let pad = widths[index].saturating_sub(visible_width(cell)) + 2;
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn relative_times_read_naturally() {
        let now = Utc::now();
        assert_eq!(relative(now + Duration::seconds(250), now), "in 4m");
        assert_eq!(relative(now - Duration::hours(2), now), "2h ago");
        assert_eq!(relative(now - Duration::seconds(59), now), "59s ago");
        assert_eq!(relative(now + Duration::days(3), now), "in 3d");
        assert_eq!(relative(now, now), "just now");
    }

    #[test]
    fn durations_pick_a_readable_unit() {
        assert_eq!(duration_ms(850), "850ms");
        assert_eq!(duration_ms(4200), "4.2s");
        assert_eq!(duration_ms(185_000), "3m 05s");
        assert_eq!(duration_ms(7_260_000), "2h 01m");
        assert_eq!(uptime(7_380_000), "2h 3m");
        assert_eq!(uptime(45_999), "45s");
    }

    #[test]
    fn colour_only_when_asked_and_tables_align_despite_it() {
        let plain = Style { color: false };
        assert_eq!(plain.red("x"), "x");
        let colored = Style { color: true };
        assert_eq!(colored.red("x"), "\x1b[31mx\x1b[0m");
        let mut table = Table::new(colored, &["NAME", "STATE"]);
        table.row(vec!["greeter".into(), colored.green("idle")]);
        table.row(vec!["a".into(), "running".into()]);
        let rendered = table.render();
        let lines: Vec<&str> = rendered.lines().collect();
        assert!(lines[1].starts_with("greeter  "));
        assert!(lines[2].starts_with("a        running"));
    }
}
