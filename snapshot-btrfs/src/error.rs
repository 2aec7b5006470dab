//! The backend's own errors; each names the path it failed on and keeps the cause.

use std::io;
use std::path::PathBuf;

use snapshot_core::{Error, ErrorKind};

/// A libbtrfsutil failure: the library's error code and the `errno` it left behind.
#[derive(Debug, thiserror::Error)]
#[error("{lib} ({os})")]
pub struct LibbtrfsutilError {
    /// What libbtrfsutil reported.
    pub lib: btrfsutil::error::LibError,
    /// The OS error of the failing call.
    pub os: io::Error,
}

/// Errors of the btrfs backend.
#[derive(Debug, thiserror::Error)]
pub enum BtrfsError {
    /// The root is not on a btrfs filesystem.
    #[error(
        "{path} is on a filesystem of type {fs_type:#x}, not btrfs: put the snapshotter root on a \
         btrfs filesystem (or use the overlay or native backend)"
    )]
    NotBtrfs {
        /// The root.
        path: PathBuf,
        /// `statfs` `f_type` of the root.
        fs_type: u64,
    },
    /// A plain filesystem call failed.
    #[error("{what} {path}")]
    Io {
        /// The call, e.g. "statfs" or "rename".
        what: &'static str,
        /// The path it was made on.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No btrfs mount holding the root was found in `/proc/self/mountinfo`.
    #[error("find the btrfs device of {path} in /proc/self/mountinfo")]
    NoDevice {
        /// The root.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A libbtrfsutil call failed.
    #[error("{what} {path}")]
    Subvolume {
        /// The operation, e.g. "create subvolume".
        what: &'static str,
        /// The subvolume path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: LibbtrfsutilError,
    },
    /// Reading the qgroup figures of a subvolume failed.
    #[error("read qgroup usage {path}")]
    Qgroup {
        /// The sysfs file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl BtrfsError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        BtrfsError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

impl From<BtrfsError> for Error {
    fn from(e: BtrfsError) -> Error {
        let message = e.to_string();
        match e {
            BtrfsError::NotBtrfs { .. } => Error::new(ErrorKind::FailedPrecondition, message),
            BtrfsError::Io { source, .. }
            | BtrfsError::NoDevice { source, .. }
            | BtrfsError::Qgroup { source, .. } => Error::unknown(message).with_source(source),
            BtrfsError::Subvolume { source, .. } => Error::unknown(message).with_source(source),
        }
    }
}
