//! A power cut right after Prepare, Commit, View and Remove returned loses none of them
//! (see `snapshot_testsuite::powercut`): the btrfs backend on a fresh btrfs image.
#![cfg(target_os = "linux")]

use std::path::Path;

use snapshot_btrfs::BtrfsSnapshotter;
use snapshot_core::{Result, Snapshotter};
use snapshot_testsuite::powercut::{power_cut, Fs};
use snapshot_testsuite::privileged::require_privileged_with_tools;

fn open(root: &Path) -> Result<Box<dyn Snapshotter>> {
    Ok(Box::new(BtrfsSnapshotter::open(root)?))
}

#[test]
fn power_cut_on_btrfs() {
    if require_privileged_with_tools("btrfs::power_cut_on_btrfs", &["mkfs.btrfs", "losetup"]) {
        power_cut(Fs::Btrfs, &open);
    }
}
