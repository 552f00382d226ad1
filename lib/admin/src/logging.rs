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

/// Installs the subscriber: `RUST_LOG` (default `info`), to stderr.
pub fn init_logging(access: AccessLog) {
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Writers { access })
        // Colours for a person at a terminal, never in a collected log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
