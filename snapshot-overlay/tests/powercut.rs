//! A power cut right after Prepare, Commit, View and Remove returned loses none of them,
//! on ext4 and on btrfs (see `snapshot_testsuite::powercut`).

use std::path::Path;

use snapshot_core::{Result, Snapshotter};
use snapshot_overlay::{OverlayConfig, OverlaySnapshotter};
use snapshot_testsuite::powercut::{power_cut, Fs};
use snapshot_testsuite::privileged::require_privileged_with_tools;

fn open(root: &Path) -> Result<Box<dyn Snapshotter>> {
    Ok(Box::new(OverlaySnapshotter::open(
        root,
        OverlayConfig::default(),
    )?))
}

#[test]
fn power_cut_on_ext4() {
    if require_privileged_with_tools("overlay::power_cut_on_ext4", &["mkfs.ext4", "losetup"]) {
        power_cut(Fs::Ext4, &open);
    }
}

#[test]
fn power_cut_on_btrfs() {
    if require_privileged_with_tools("overlay::power_cut_on_btrfs", &["mkfs.btrfs", "losetup"]) {
        power_cut(Fs::Btrfs, &open);
    }
}
