//! A power cut right after Prepare, Commit, View and Remove returned loses none of them,
//! on ext4, xfs and btrfs (see `snapshot_testsuite::powercut`); the `sync` option puts a
//! layer's data on the device before Commit returns.

use std::path::Path;

use snapshot_core::{Result, Snapshotter};
use snapshot_overlay::{OverlayConfig, OverlaySnapshotter};
use snapshot_testsuite::powercut::{
    power_cut, power_cut_keeps_the_parents_owner, writable_dir, Fs,
};
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

#[test]
fn sync_option_flushes_the_layer_at_commit() {
    if require_privileged_with_tools("overlay::sync_option_flushes", &["mkfs.ext4", "losetup"]) {
        let (without, with) = snapshot_testsuite::powercut::sync_flushes_the_layer(
            Fs::Ext4NoJournal,
            &|root, sync| {
                let config = OverlayConfig {
                    options: snapshot_core::lifecycle::Options {
                        sync,
                        ..Default::default()
                    },
                    ..OverlayConfig::default()
                };
                Ok(Box::new(OverlaySnapshotter::open(root, config)?))
            },
            &snapshot_testsuite::powercut::writable_dir,
            true,
        );
        println!("commit wrote {without} bytes without sync, {with} with");
    }
}

#[test]
fn power_cut_on_xfs() {
    if require_privileged_with_tools("overlay::power_cut_on_xfs", &["mkfs.xfs", "losetup"]) {
        power_cut(Fs::Xfs, &open);
    }
}

#[test]
fn power_cut_keeps_the_parents_owner_on_btrfs() {
    if require_privileged_with_tools("overlay::owner_on_btrfs", &["mkfs.btrfs", "losetup"]) {
        power_cut_keeps_the_parents_owner(Fs::Btrfs, &open, &writable_dir);
    }
}

#[test]
fn power_cut_keeps_the_parents_owner_on_xfs() {
    if require_privileged_with_tools("overlay::owner_on_xfs", &["mkfs.xfs", "losetup"]) {
        power_cut_keeps_the_parents_owner(Fs::Xfs, &open, &writable_dir);
    }
}
