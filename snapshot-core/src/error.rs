//! The error type shared by every snapshotter: one errdefs-style [`ErrorKind`] per error,
//! a lowercase message naming the key or path, and the source error kept for the chain.

use std::fmt;

/// Result alias used throughout the snapshot crates.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The class of an error, as containerd's `errdefs` defines them.
///
/// The daemon maps each kind to a gRPC status code exactly as containerd's
/// `errdefs.ToGRPC` does, so containerd's client turns it back into the same class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The key, name or parent does not exist (`errdefs.ErrNotFound`).
    NotFound,
    /// The key or name is already taken in the keyspace (`errdefs.ErrAlreadyExists`).
    AlreadyExists,
    /// The snapshot is in the wrong state for the call, e.g. Mounts of a committed
    /// snapshot or Remove of a snapshot with children (`errdefs.ErrFailedPrecondition`).
    FailedPrecondition,
    /// The request itself is malformed: an empty key, a bad filter, a parent that is not
    /// committed, an unknown field path (`errdefs.ErrInvalidArgument`).
    InvalidArgument,
    /// The backend does not offer this operation (`errdefs.ErrNotImplemented`).
    NotImplemented,
    /// The resource is temporarily unavailable, e.g. a closed snapshotter
    /// (`errdefs.ErrUnavailable`).
    Unavailable,
    /// Anything else: I/O failures, corrupt records (`errdefs.ErrUnknown`).
    Unknown,
}

impl ErrorKind {
    /// The lowercase phrase containerd appends to messages of this class.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::FailedPrecondition => "failed precondition",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::NotImplemented => "not implemented",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from a snapshotter: a kind, a message naming the key or path, and the
/// underlying cause.
///
/// ```
/// use snapshot_core::{Error, ErrorKind};
///
/// let err = Error::not_found("snapshot \"layer-1\"");
/// assert_eq!(err.kind(), ErrorKind::NotFound);
/// assert_eq!(err.to_string(), "snapshot \"layer-1\": not found");
/// ```
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Source>,
}

impl Error {
    /// An error of `kind` whose message is `message` (lowercase, naming the key or path).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause; it is shown after the message and kept as
    /// [`std::error::Error::source`].
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// A [`ErrorKind::NotFound`] error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// An [`ErrorKind::AlreadyExists`] error.
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, message)
    }

    /// A [`ErrorKind::FailedPrecondition`] error.
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::FailedPrecondition, message)
    }

    /// An [`ErrorKind::InvalidArgument`] error.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// An [`ErrorKind::NotImplemented`] error.
    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotImplemented, message)
    }

    /// An [`ErrorKind::Unavailable`] error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// An [`ErrorKind::Unknown`] error.
    pub fn unknown(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unknown, message)
    }

    /// The NotImplemented error of a backend whose layers are full trees, not diffs, asked
    /// to commit `key` onto a new parent (containerd 2.2's rebase).
    pub fn cannot_rebase(backend: &str, key: &str, parent: &str) -> Self {
        Self::not_implemented(format!(
            "backend {backend} cannot rebase: its layers are full copies, so committing \
             {:?} onto parent {:?} would record a parent whose files it lacks; prepare it on \
             that parent instead, or use the overlay backend",
            crate::keyspace::truncate_for_message(key),
            crate::keyspace::truncate_for_message(parent)
        ))
    }

    /// An [`ErrorKind::Unknown`] error for an I/O failure on `path` while doing `what`.
    pub fn io(what: &str, path: &std::path::Path, err: std::io::Error) -> Self {
        Self::unknown(format!("{what} {}", path.display())).with_source(err)
    }

    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the kind suffix or the source.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True if the error is of `kind`.
    pub fn is(&self, kind: ErrorKind) -> bool {
        self.kind == kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // containerd renders a wrapped class as "<message>: <class>"; an Unknown error
        // carries its cause instead, which says more than "unknown".
        match (&self.source, self.kind) {
            (Some(src), ErrorKind::Unknown) => write!(f, "{}: {}", self.message, src),
            (Some(src), kind) => write!(f, "{}: {}: {}", self.message, kind, src),
            (None, ErrorKind::Unknown) => f.write_str(&self.message),
            (None, kind) => write!(f, "{}: {}", self.message, kind),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<heed::Error> for Error {
    fn from(err: heed::Error) -> Self {
        match err {
            // Load, not damage: every reader slot is taken by calls in flight.
            heed::Error::Mdb(heed::MdbError::ReadersFull) => Error::unavailable(
                "metastore: every reader slot is in use by calls in flight: retry the call",
            )
            .with_source(err),
            err => Error::unknown("metastore").with_source(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_appends_kind_and_source() {
        let io = std::io::Error::from_raw_os_error(libc_enoent());
        let err = Error::not_found("snapshot \"k\"").with_source(io);
        assert!(err.to_string().starts_with("snapshot \"k\": not found: "));
        assert!(std::error::Error::source(&err).is_some());
        let err = Error::io(
            "read",
            std::path::Path::new("/x"),
            std::io::ErrorKind::Other.into(),
        );
        assert_eq!(err.kind(), ErrorKind::Unknown);
        assert!(err.to_string().starts_with("read /x: "));
    }

    fn libc_enoent() -> i32 {
        2
    }
}
