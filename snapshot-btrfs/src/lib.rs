//! A snapshotter on btrfs subvolumes, after containerd's btrfs snapshotter.
//!
//! - An active snapshot is a writable subvolume: a snapshot of its parent's subvolume, or
//!   a new empty one without a parent.
//! - Commit takes a read-only snapshot of the active subvolume and deletes the active one.
//! - A view is a read-only snapshot of its parent.
//! - Remove renames the subvolume aside (`rm-<id>`) inside the write transaction, so a
//!   failed metadata commit can rename it back, and deletes it after the commit.
//! - Mounts are `btrfs` mounts of the filesystem's device with `subvolid=<n>`, and `ro`
//!   for every kind but active.
//! - Usage of an active snapshot: the subvolume's qgroup exclusive bytes when quotas are
//!   enabled on the filesystem (read from sysfs after a `syncfs`), else a walk.
//!
//! Subvolumes are built under staging names (`new-*`) before the write transaction and
//! renamed to `<id>` inside it; [`BtrfsSnapshotter::open`] deletes every subvolume whose id
//! has no record of its kind, so a process killed at any step leaves a root that opens and
//! loses no committed snapshot.
//!
//! ```no_run
//! use snapshot_btrfs::BtrfsSnapshotter;
//! use snapshot_core::{CreateOptions, Snapshotter};
//!
//! let sn = BtrfsSnapshotter::open(std::path::Path::new("/var/lib/snapshots-btrfs"))?;
//! let mounts = sn.prepare("layer-1", "", &CreateOptions::default())?;
//! assert_eq!(mounts[0].kind, "btrfs");
//! # Ok::<(), snapshot_core::Error>(())
//! ```
#![cfg(target_os = "linux")]
#![warn(missing_docs)]

pub mod error;
mod snapshotter;
pub mod sys;

pub use error::{BtrfsError, LibbtrfsutilError};
pub use snapshotter::{btrfs_mount, remove_root, BtrfsOptions, BtrfsSnapshotter, UsageSource};
