//! A minimal logger to stderr (`<time> <LEVEL> <message>`), enough for a daemon whose
//! output goes to the journal.

use std::io::Write;
use std::str::FromStr;
use std::time::SystemTime;

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "{} {:<5} {}",
            crate::time::rfc3339(SystemTime::now()),
            record.level(),
            record.args()
        );
    }

    fn flush(&self) {}
}

/// Parses a level name: `off`, `error`, `warn`, `info`, `debug`, `trace`.
///
/// # Errors
/// [`DaemonError::LogLevel`](crate::error::DaemonError::LogLevel) naming the bad value and
/// the valid ones.
pub fn parse_level(s: &str) -> Result<LevelFilter, crate::error::DaemonError> {
    LevelFilter::from_str(s).map_err(|_| crate::error::DaemonError::LogLevel(s.to_string()))
}

/// Installs the stderr logger at `level`. A second call keeps the first logger and only
/// changes the level.
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
