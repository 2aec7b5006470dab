//! The errors of the native backend.

use std::io;
use std::path::PathBuf;

/// An error of the native backend: every variant names the path it happened on and keeps
/// the OS error. It converts into [`snapshot_core::Error`] of kind Unknown, with the
/// message naming the operation and path and the OS error as the source.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    /// A filesystem call on `path` failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done, e.g. "create directory".
        op: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the extended attribute `name` of `path` failed.
    #[error("{op} extended attribute {name:?} of {}", path.display())]
    Xattr {
        /// "list", "read" or "write".
        op: &'static str,
        /// The attribute's name, e.g. `security.capability`.
        name: String,
        /// The file it belongs to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A hard link pointed at another inode than the first copy of its file: something
    /// changed the destination while it was being built.
    #[error("hard link {} does not lead to its first copy {}: the destination changed during the copy", path.display(), first.display())]
    HardLink {
        /// The link that was made.
        path: PathBuf,
        /// The first copy it should share an inode with.
        first: PathBuf,
        /// Why the check failed (the mismatch as an OS-style error).
        #[source]
        source: io::Error,
    },
    /// The source tree is deeper than the copy goes ([`crate::copy::MAX_DEPTH`]): each
    /// level holds two descriptors and the path of the level, so a deeper tree (a
    /// container can make one in seconds) would exhaust the process.
    #[error(
        "directory {} is more than {max} levels below the root of the tree being copied: \
         the native backend does not copy trees that deep; flatten the layer",
        path.display()
    )]
    TooDeep {
        /// The directory past the limit.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
}

impl NativeError {
    /// The variant for a source tree deeper than the copy goes.
    pub(crate) fn too_deep(path: impl Into<PathBuf>) -> Self {
        NativeError::TooDeep {
            path: path.into(),
            max: crate::copy::MAX_DEPTH,
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<io::Error>,
    ) -> Self {
        NativeError::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }
}

impl From<NativeError> for snapshot_core::Error {
    fn from(err: NativeError) -> Self {
        let message = err.to_string();
        let source = match err {
            NativeError::TooDeep { .. } => {
                return snapshot_core::Error::failed_precondition(message)
            }
            NativeError::Io { source, .. }
            | NativeError::Xattr { source, .. }
            | NativeError::HardLink { source, .. } => source,
        };
        snapshot_core::Error::unknown(message).with_source(source)
    }
}
