//! The overlayfs snapshot backend, containerd's `overlayfs` snapshotter in Rust.
//!
//! Every snapshot is a directory `<root>/snapshots/<id>/` holding `fs` (the layer's files,
//! the overlay *upper* directory while the snapshot is active) and `work` (overlayfs's
//! work directory, active snapshots only). The metadata lives in the LMDB metastore of
//! `snapshot-core` at `<root>/metadata`. Ids are short decimal numbers and every layer sits
//! in the one directory `<root>/snapshots`, so even containerd's legacy mount path (which
//! shortens an over-long `lowerdir=` list only when the layers share a directory) mounts
//! 128 layers and more.
//!
//! The mounts are those of containerd 1.6 (see [`mounts::build_mounts`]):
//! - no parent: a `bind` of the snapshot's own `fs`, `rw` or `ro`, then `rbind`;
//! - an active snapshot with parents: an `overlay` with `upperdir`, `workdir` and
//!   `lowerdir=<parent>:<grandparent>:...` (nearest first);
//! - a view of one parent: a read-only `bind` of the parent's `fs`; of more parents: an
//!   `overlay` with only `lowerdir`.
//!
//! ```no_run
//! use snapshot_core::{CommitOptions, CreateOptions, Snapshotter};
//! use snapshot_overlay::{OverlayConfig, OverlaySnapshotter};
//!
//! let sn = OverlaySnapshotter::open("/var/lib/snapshots-overlay".as_ref(), OverlayConfig::default())?;
//! let mounts = sn.prepare("extract-base", "", &CreateOptions::default())?;
//! assert_eq!(mounts[0].kind, "bind");
//! // ... mount, unpack the layer, unmount ...
//! sn.commit("base", "extract-base", &CommitOptions::default())?;
//! let mounts = sn.prepare("container-1", "base", &CreateOptions::default())?;
//! assert_eq!(mounts[0].kind, "overlay");
//! # Ok::<(), snapshot_core::Error>(())
//! ```
#![cfg(target_os = "linux")]
#![warn(missing_docs)]

mod config;
mod error;
pub mod mounts;
pub mod probe;
mod snapshotter;

pub use config::{OverlayConfig, UPPERDIR_LABEL, VOLATILE_LABEL};
pub use error::OverlayError;
pub use probe::KernelFeatures;
pub use snapshotter::{idmapping, OverlaySnapshotter};
