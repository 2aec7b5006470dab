//! A copy-based snapshotter, the Rust counterpart of containerd's `native` snapshotter.
//!
//! Every snapshot is a plain directory under `<root>/snapshots/<id>`; a snapshot made on a
//! parent starts as a full copy of the parent's directory ([`copy::copy_tree`]), with file
//! data shared by reflinks on filesystems that have them (btrfs, xfs with `reflink=1`) and
//! copied inside the kernel elsewhere. It works on any filesystem, needs no kernel feature
//! beyond bind mounts, and is the backend of last resort when overlayfs is not available.
//!
//! Mounts are bind mounts, exactly as containerd's native snapshotter returns them:
//!
//! | snapshot | mount |
//! |---|---|
//! | active (any parent), or view without parent | `bind` of its own directory, `["rbind", "rw"]` / `["rbind", "ro"]` |
//! | view of a parent | `bind` of the parent's directory, `["rbind", "ro"]` (nothing is copied) |
//!
//! ```no_run
//! use snapshot_core::{CommitOptions, CreateOptions, Snapshotter};
//! use snapshot_native::{NativeConfig, NativeSnapshotter};
//!
//! # fn main() -> snapshot_core::Result<()> {
//! let sn = NativeSnapshotter::open("/var/lib/snapshots-native".as_ref(), NativeConfig::default())?;
//! let mounts = sn.prepare("extract-layer-1", "", &CreateOptions::default())?;
//! assert_eq!(mounts[0].kind, "bind");
//! // ... mount, unpack the layer, unmount ...
//! sn.commit("layer-1", "extract-layer-1", &CommitOptions::default())?;
//! let _child = sn.prepare("container-1", "layer-1", &CreateOptions::default())?; // a copy
//! # Ok(()) }
//! ```
#![cfg(target_os = "linux")]
#![warn(missing_docs)]

pub mod copy;
mod error;
mod native;

pub use error::NativeError;
pub use native::{NativeConfig, NativeSnapshotter};
