//! The backend's own errors; each converts into [`snapshot_core::Error`] with its kind.

use std::io;
use std::path::PathBuf;

use snapshot_core::{Error, ErrorKind};

/// What can go wrong in the overlay backend itself (the metastore reports its own errors
/// as [`snapshot_core::Error`]).
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// Creating a snapshot directory (`fs` or `work`) failed.
    #[error("create snapshot directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Setting the owner or mode of a new layer failed.
    #[error("set owner or mode of {path}")]
    SetOwner {
        /// The layer directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading the owner of the parent's layer failed.
    #[error("stat parent layer {path}: the snapshot directory is missing or unreadable")]
    StatParent {
        /// The parent's `fs` directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading a kernel or process file during the probes at open failed.
    #[error("read {path}")]
    ReadSystemFile {
        /// The file (`/proc/filesystems`, `/proc/self/uid_map`).
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel has no overlay filesystem, even after `modprobe overlay`.
    #[error(
        "overlay filesystem is not available (not in {path}, and modprobe overlay did not \
         load it): load the overlay kernel module or use the native snapshotter"
    )]
    OverlayUnavailable {
        /// `/proc/filesystems`.
        path: PathBuf,
        /// Why `modprobe overlay` did not help.
        #[source]
        source: io::Error,
    },
    /// Probing `d_type` support under the root failed.
    #[error("probe d_type support under {path}")]
    DTypeProbe {
        /// The probe directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The filesystem under the root does not fill in `d_type`, which overlayfs needs.
    #[error(
        "{path} is on {filesystem}, which does not support d_type (readdir reports \
         DT_UNKNOWN), and overlayfs needs it: if it is xfs, reformat it with ftype=1 \
         (mkfs.xfs -n ftype=1); if it is ext4, enable the filetype feature (tune2fs -O \
         filetype, then e2fsck -f); or put the root on another filesystem"
    )]
    NoDType {
        /// The probed directory (`<root>/snapshots`).
        path: PathBuf,
        /// The filesystem's name, from its `statfs` magic number.
        filesystem: String,
        /// What the probe saw.
        #[source]
        source: io::Error,
    },
    /// `redirect_dir` was asked for while overlay mounts need `userxattr`.
    #[error(
        "snapshotter root {path}: redirect_dir cannot be combined with userxattr (the \
         kernel refuses the pair, and userxattr is needed in a user namespace): turn \
         redirect_dir off"
    )]
    RedirectDirWithUserxattr {
        /// The snapshotter root.
        path: PathBuf,
        /// The kernel's error for the pair.
        #[source]
        source: io::Error,
    },
}

impl OverlayError {
    /// The errdefs kind this error maps to.
    pub fn kind(&self) -> ErrorKind {
        match self {
            OverlayError::CreateDir { .. }
            | OverlayError::SetOwner { .. }
            | OverlayError::StatParent { .. }
            | OverlayError::ReadSystemFile { .. }
            | OverlayError::DTypeProbe { .. } => ErrorKind::Unknown,
            OverlayError::OverlayUnavailable { .. } => ErrorKind::Unavailable,
            OverlayError::NoDType { .. } => ErrorKind::FailedPrecondition,
            OverlayError::RedirectDirWithUserxattr { .. } => ErrorKind::InvalidArgument,
        }
    }
}

impl From<OverlayError> for Error {
    fn from(e: OverlayError) -> Error {
        let kind = e.kind();
        let message = e.to_string();
        let source = match e {
            OverlayError::CreateDir { source, .. }
            | OverlayError::SetOwner { source, .. }
            | OverlayError::StatParent { source, .. }
            | OverlayError::ReadSystemFile { source, .. }
            | OverlayError::OverlayUnavailable { source, .. }
            | OverlayError::DTypeProbe { source, .. }
            | OverlayError::NoDType { source, .. }
            | OverlayError::RedirectDirWithUserxattr { source, .. } => source,
        };
        Error::new(kind, message).with_source(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_messages_survive_conversion() {
        let cases = [
            (
                OverlayError::NoDType {
                    path: "/r".into(),
                    filesystem: "xfs".into(),
                    source: io::Error::other("d_type is DT_UNKNOWN"),
                },
                ErrorKind::FailedPrecondition,
                "/r is on xfs",
            ),
            (
                OverlayError::RedirectDirWithUserxattr {
                    path: "/r".into(),
                    source: io::Error::from_raw_os_error(22),
                },
                ErrorKind::InvalidArgument,
                "redirect_dir cannot be combined with userxattr",
            ),
            (
                OverlayError::OverlayUnavailable {
                    path: "/proc/filesystems".into(),
                    source: io::Error::other("modprobe: not found"),
                },
                ErrorKind::Unavailable,
                "overlay filesystem is not available",
            ),
            (
                OverlayError::CreateDir {
                    path: "/r/snapshots/new-1/fs".into(),
                    source: io::Error::from_raw_os_error(28),
                },
                ErrorKind::Unknown,
                "create snapshot directory /r/snapshots/new-1/fs",
            ),
        ];
        for (e, kind, text) in cases {
            let e: Error = e.into();
            assert_eq!(e.kind(), kind);
            assert!(
                e.message().contains(text),
                "{:?} lacks {text:?}",
                e.message()
            );
            assert!(
                std::error::Error::source(&e).is_some(),
                "the source is kept: {e:?}"
            );
        }
    }
}
