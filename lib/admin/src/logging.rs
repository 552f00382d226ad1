//! Logs to stderr, as containers log. A proxy that logs a line per request
//! can keep those access lines (target `access`) and write them out at
//! most a second later, many lines a write, as Envoy flushes its access
//! log: a write per request costs the proxy more than the rest of
//! recording the request. Everything else is written at once.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How a proxy writes its access lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    /// Each as it comes.
    Immediate,
    /// Kept, and written out every [`FLUSH_INTERVAL`] or once
    /// [`BUFFER_LIMIT`] bytes wait.
    Buffered,
}

const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
const BUFFER_LIMIT: usize = 256 << 10;

/// The access lines not yet written out.
static KEPT: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Writes out the access lines kept so far (at a graceful stop, say).
pub fn flush_access_log() {
    let kept = std::mem::take(&mut *KEPT.lock().unwrap_or_else(|p| p.into_inner()));
    if !kept.is_empty() {
        let _ = std::io::stderr().write_all(&kept);
    }
}

/// How log lines are written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LogFormat {
    /// For a person: `TIME LEVEL target: message key=value…`.
    #[default]
    Text,
    /// For a collector (Fluent Bit, Fluentd, Vector): one JSON object per
    /// line, the event's fields (an access line's among them) as keys.
    Json,
}

/// The logging flags every binary takes.
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct LogArgs {
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "AMBIT_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// Installs the subscriber: `RUST_LOG` (default `info`), to stderr, in
/// `format`.
pub fn init_logging(access: AccessLog, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if access == AccessLog::Buffered {
        std::thread::Builder::new()
            .name("ambit-access-log".into())
            .spawn(|| loop {
                std::thread::sleep(FLUSH_INTERVAL);
                flush_access_log();
            })
            .map(drop)
            .unwrap_or_else(|error| eprintln!("access log lines are written at once: {error}"));
    }
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Writers { access });
    // The filter stays changeable at runtime, through the admin port.
    match format {
        // Colours for a person at a terminal, never in a collected log.
        LogFormat::Text => {
            let subscriber = subscriber
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter_reloading();
            keep_reload(subscriber.reload_handle());
            subscriber.init();
        }
        LogFormat::Json => {
            let subscriber = subscriber
                .json()
                .flatten_event(true)
                .with_filter_reloading();
            keep_reload(subscriber.reload_handle());
            subscriber.init();
        }
    }
}

/// Sets the log filter (`RUST_LOG`'s syntax: `debug`, `info,ambit_waypoint=trace`).
type SetFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
static SET_FILTER: std::sync::OnceLock<SetFilter> = std::sync::OnceLock::new();

fn keep_reload<S: Send + Sync + 'static>(
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
) {
    let set: SetFilter = Box::new(move |directives: &str| {
        let filter = tracing_subscriber::EnvFilter::try_new(directives)
            .map_err(|error| format!("{directives:?}: {error}"))?;
        handle.reload(filter).map_err(|error| error.to_string())
    });
    let _ = SET_FILTER.set(set);
}

/// Changes the log filter of a running process (the admin port's
/// `POST /logging?level=…`); an error names what is wrong.
pub fn set_log_filter(directives: &str) -> Result<(), String> {
    match SET_FILTER.get() {
        Some(set) => set(directives),
        None => Err("this process installed no changeable log filter".to_string()),
    }
}

struct Writers {
    access: AccessLog,
}

impl<'a> MakeWriter<'a> for Writers {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { keep: false }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        LineWriter {
            keep: self.access == AccessLog::Buffered && meta.target() == "access",
        }
    }
}

/// Where one event's line goes: kept, or to stderr at once.
struct LineWriter {
    keep: bool,
}

impl Write for LineWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if !self.keep {
            return std::io::stderr().write(line);
        }
        let full = {
            let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
            kept.extend_from_slice(line);
            kept.len() >= BUFFER_LIMIT
        };
        if full {
            flush_access_log();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
