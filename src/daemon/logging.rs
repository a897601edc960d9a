//! The daemon's log output: tracing-subscriber set up from `--log-level`, `--log-format`, `--log-file`.
//!
//! Owns: the level filter (`RUST_LOG` wins over `--log-level`), the format (text or JSON lines), the
//! destination (stderr — no ANSI colours unless it is a terminal, so journald gets plain text — or the
//! `--log-file`, rotated by size with PATH always the live file, see [`super::log_file`], written from
//! tracing-appender's background thread so a slow disk never blocks the fleet), and one optional extra
//! layer supplied by the caller (the FleetManager's in-memory log ring). The filter applies to every layer,
//! the extra one included.
//!
//! Public API:
//! - [`LogOptions`] `{level, format, file}`, [`LogFormat`] (`FromStr`: `text`|`json`)
//! - [`init`]`(&opts, extra: Option<ExtraLayer>) -> Result<LoggingGuard, LoggingError>` — installs it
//!   globally; keep the guard alive until exit (it flushes the file writer)
//! - [`build`] — the same without installing (for tests and embedding), [`level_filter`]

use std::io::IsTerminal;
use std::str::FromStr;

use tracing::Subscriber;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use super::log_file::{LogFileError, LogFileOptions, RotatingFile};

/// A layer the caller adds beside the output (e.g. a log ring feeding `streamLogs`).
pub type ExtraLayer = Box<dyn Layer<Registry> + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = LoggingError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(LoggingError::InvalidFormat {
                value: other.to_owned(),
            }),
        }
    }
}

/// The logging options of the command line.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A level (`info`) or a full filter directive (`info,herdctld::rpc=debug`); `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
    /// Log to this file (rotated by size, PATH staying the live file) instead of stderr.
    pub file: Option<LogFileOptions>,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            level: "info".to_owned(),
            format: LogFormat::Text,
            file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid --log-format {value:?}: expected text or json")]
    InvalidFormat { value: String },
    #[error("invalid --log-level {value:?}: {reason} (expected trace, debug, info, warn, error or a filter directive)")]
    InvalidLevel { value: String, reason: String },
    #[error("invalid RUST_LOG {value:?}: {reason} (unset it or fix the directive)")]
    InvalidRustLog { value: String, reason: String },
    #[error(transparent)]
    File(#[from] LogFileError),
    #[error("a global logger is already installed: {reason}")]
    AlreadyInitialized { reason: String },
}

/// Keeps the background file writer alive; dropping it flushes pending lines.
#[must_use = "dropping the guard stops the log file writer"]
#[derive(Debug)]
pub struct LoggingGuard {
    _file_writer: Option<WorkerGuard>,
}

/// The filter: `rust_log` (the value of `RUST_LOG`) when set and non-empty, else `level`.
pub fn level_filter(level: &str, rust_log: Option<&str>) -> Result<EnvFilter, LoggingError> {
    match rust_log.filter(|v| !v.trim().is_empty()) {
        Some(value) => {
            EnvFilter::builder()
                .parse(value)
                .map_err(|e| LoggingError::InvalidRustLog {
                    value: value.to_owned(),
                    reason: e.to_string(),
                })
        }
        None => {
            // A bare word would parse as a target name ("loud" = everything from target `loud`), so a
            // single word must be a level; directives with `=` or `,` are taken as given.
            let is_directive = level.contains(['=', ',']);
            if !is_directive
                && level
                    .trim()
                    .parse::<tracing::level_filters::LevelFilter>()
                    .is_err()
            {
                return Err(LoggingError::InvalidLevel {
                    value: level.to_owned(),
                    reason: "unknown level".to_owned(),
                });
            }
            EnvFilter::builder()
                .parse(level)
                .map_err(|e| LoggingError::InvalidLevel {
                    value: level.to_owned(),
                    reason: e.to_string(),
                })
        }
    }
}

/// Builds the subscriber without installing it.
pub fn build(
    opts: &LogOptions,
    extra: Option<ExtraLayer>,
) -> Result<(impl Subscriber + Send + Sync + 'static, LoggingGuard), LoggingError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    build_with(opts, extra, rust_log.as_deref())
}

fn build_with(
    opts: &LogOptions,
    extra: Option<ExtraLayer>,
    rust_log: Option<&str>,
) -> Result<(impl Subscriber + Send + Sync + 'static, LoggingGuard), LoggingError> {
    let filter = level_filter(&opts.level, rust_log)?;
    let (writer, ansi, guard) = match &opts.file {
        Some(file) => {
            let (writer, guard) = tracing_appender::non_blocking(RotatingFile::open(file.clone())?);
            (BoxMakeWriter::new(writer), false, Some(guard))
        }
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
            None,
        ),
    };
    let subscriber = Registry::default()
        .with(extra)
        .with(filter)
        .with(output_layer(opts.format, writer, ansi));
    Ok((
        subscriber,
        LoggingGuard {
            _file_writer: guard,
        },
    ))
}

/// Builds the subscriber and installs it as the global default (also capturing `log` records).
pub fn init(opts: &LogOptions, extra: Option<ExtraLayer>) -> Result<LoggingGuard, LoggingError> {
    let (subscriber, guard) = build(opts, extra)?;
    subscriber
        .try_init()
        .map_err(|e| LoggingError::AlreadyInitialized {
            reason: e.to_string(),
        })?;
    Ok(guard)
}

fn output_layer<S>(
    format: LogFormat,
    writer: BoxMakeWriter,
    ansi: bool,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .with_ansi(false)
            .boxed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn formats_parse() {
        assert_eq!("text".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert!("yaml"
            .parse::<LogFormat>()
            .unwrap_err()
            .to_string()
            .contains("text or json"));
    }

    #[test]
    fn rust_log_wins_over_the_level() {
        let filter = level_filter("info", Some("debug,hyper=warn")).unwrap();
        assert_eq!(
            filter.max_level_hint(),
            Some(tracing::level_filters::LevelFilter::DEBUG)
        );
        let filter = level_filter("warn", Some("  ")).unwrap();
        assert_eq!(
            filter.max_level_hint(),
            Some(tracing::level_filters::LevelFilter::WARN)
        );
        assert!(matches!(
            level_filter("info", Some("=[")),
            Err(LoggingError::InvalidRustLog { .. })
        ));
        assert!(matches!(
            level_filter("loud", None),
            Err(LoggingError::InvalidLevel { .. })
        ));
        assert!(matches!(
            level_filter("info,x=[", None),
            Err(LoggingError::InvalidLevel { .. })
        ));
        let filter = level_filter("warn,herdctld::rpc=debug", None).unwrap();
        assert_eq!(
            filter.max_level_hint(),
            Some(tracing::level_filters::LevelFilter::DEBUG)
        );
        assert!(level_filter("DEBUG", None).is_ok());
    }

    struct CountEvents(Arc<AtomicUsize>);

    impl<S: Subscriber> Layer<S> for CountEvents {
        fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn json_lines_go_to_the_named_file_and_the_extra_layer_sees_filtered_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/herdctld.log");
        let count = Arc::new(AtomicUsize::new(0));
        let opts = LogOptions {
            level: "info".to_owned(),
            format: LogFormat::Json,
            file: Some(LogFileOptions {
                path: path.clone(),
                max_size: crate::daemon::log_file::DEFAULT_MAX_SIZE,
                keep: crate::daemon::log_file::DEFAULT_KEEP,
            }),
        };
        let (subscriber, guard) =
            build_with(&opts, Some(Box::new(CountEvents(count.clone()))), None).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(agent = "a1", "job started");
            tracing::debug!("filtered out");
        });
        drop(guard);
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "the extra layer sees exactly what passes the filter"
        );
        let files: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(
            files,
            std::slice::from_ref(&path),
            "PATH itself, nothing else"
        );
        let content = std::fs::read_to_string(&path).unwrap();
        let line: serde_json::Value =
            serde_json::from_str(content.lines().next().unwrap()).unwrap();
        assert_eq!(line["fields"]["message"], "job started");
        assert_eq!(line["fields"]["agent"], "a1");
        assert_eq!(line["level"], "INFO");
        assert_eq!(content.lines().count(), 1);
    }

    #[test]
    fn a_log_file_that_cannot_be_opened_is_an_error() {
        let opts = LogOptions {
            file: Some(LogFileOptions {
                path: std::path::PathBuf::from("/"),
                max_size: crate::daemon::log_file::DEFAULT_MAX_SIZE,
                keep: crate::daemon::log_file::DEFAULT_KEEP,
            }),
            ..LogOptions::default()
        };
        assert!(matches!(
            build_with(&opts, None, None),
            Err(LoggingError::File(LogFileError::NoFileName { .. }))
        ));
    }
}
