//! The conformance suite on btrfs, in the image `cargo xtask test-btrfs` mounts.
#![cfg(target_os = "linux")]

mod common;

use std::path::{Path, PathBuf};

use snapshot_btrfs::BtrfsSnapshotter;
use snapshot_core::Snapshotter;
use snapshot_testsuite::{snapshotter_suite, Harness};

struct Btrfs;

impl Harness for Btrfs {
    fn name(&self) -> &str {
        "btrfs"
    }
    fn temp_base(&self) -> Option<PathBuf> {
        common::btrfs_mount().ok()
    }
    fn check_available(&self) -> snapshot_core::Result<()> {
        common::btrfs_mount()
            .map(|_| ())
            .map_err(snapshot_core::Error::unavailable)
    }
    fn open(&self, root: &Path) -> snapshot_core::Result<Box<dyn Snapshotter>> {
        Ok(Box::new(BtrfsSnapshotter::open(root)?))
    }
    fn teardown(&self, root: &Path) {
        // Read-only subvolumes cannot be emptied file by file; delete them as subvolumes.
        if let Err(e) = snapshot_btrfs::remove_root(root) {
            panic!("btrfs teardown of {}: {e}", root.display());
        }
    }
}

snapshotter_suite!(btrfs, Btrfs);
