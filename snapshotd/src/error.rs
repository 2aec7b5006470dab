//! [`DaemonError`]: why the daemon cannot start or serve.

use std::io;
use std::path::PathBuf;

use snapshots::Backend;

/// Why the daemon cannot start or serve. The message names the path or value and says
/// what to do; `snapshotd` prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A filesystem call on `path` failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "binding socket".
        what: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The socket path cannot be used: `problem` says why and what to do.
    #[error("{} {problem}", path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// E.g. "is in use by a running daemon: stop it first or pick another --address".
        problem: &'static str,
    },
    /// The configuration file does not parse.
    #[error("config file {} is not valid: {source}", path.display())]
    ConfigSyntax {
        /// The file.
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// An unknown log level.
    #[error("unknown log level {0:?}: use off, error, warn, info, debug or trace")]
    LogLevel(String),
    /// A bad value the snapshots crate refused (an unknown backend name).
    #[error("{0}")]
    Value(#[source] snapshots::Error),
    /// The backend does not open at the root.
    #[error("opening the {backend} snapshotter at {}: {source}", root.display())]
    Open {
        /// The backend.
        backend: Backend,
        /// The root.
        root: PathBuf,
        /// Its error.
        #[source]
        source: snapshots::Error,
    },
    /// The async runtime or a signal handler cannot be set up.
    #[error("{what}: {source}")]
    Runtime {
        /// What failed, e.g. "SIGTERM handler".
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("serving: {0}")]
    Serve(#[source] tonic::transport::Error),
}

impl DaemonError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        DaemonError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
