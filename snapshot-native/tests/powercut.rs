//! A power cut right after Prepare, Commit, View and Remove returned loses none of them,
//! on ext4, xfs and btrfs (see `snapshot_testsuite::powercut`); the `sync` option puts a
//! layer's data on the device before Commit returns.

use std::path::Path;

use snapshot_core::{Result, Snapshotter};
use snapshot_native::{NativeConfig, NativeSnapshotter};
use snapshot_testsuite::powercut::{power_cut, Fs};
use snapshot_testsuite::privileged::require_privileged_with_tools;

fn open(root: &Path) -> Result<Box<dyn Snapshotter>> {
    Ok(Box::new(NativeSnapshotter::open(
        root,
        NativeConfig::default(),
    )?))
}

#[test]
fn power_cut_on_ext4() {
    if require_privileged_with_tools("native::power_cut_on_ext4", &["mkfs.ext4", "losetup"]) {
        power_cut(Fs::Ext4, &open);
    }
}

#[test]
fn power_cut_on_btrfs() {
    if require_privileged_with_tools("native::power_cut_on_btrfs", &["mkfs.btrfs", "losetup"]) {
        power_cut(Fs::Btrfs, &open);
    }
}

#[test]
fn sync_option_flushes_the_layer_at_commit() {
    if require_privileged_with_tools("native::sync_option_flushes", &["mkfs.ext4", "losetup"]) {
        let (without, with) = snapshot_testsuite::powercut::sync_flushes_the_layer(
            Fs::Ext4NoJournal,
            &|root, sync| {
                let config = NativeConfig {
                    sync,
                    ..NativeConfig::default()
                };
                Ok(Box::new(NativeSnapshotter::open(root, config)?))
            },
            &snapshot_testsuite::powercut::writable_dir,
            true,
        );
        println!("commit wrote {without} bytes without sync, {with} with");
    }
}

#[test]
fn power_cut_on_xfs() {
    if require_privileged_with_tools("native::power_cut_on_xfs", &["mkfs.xfs", "losetup"]) {
        power_cut(Fs::Xfs, &open);
    }
}

#[test]
fn power_cut_keeps_the_data_a_prepare_copied() {
    for fs in [Fs::Ext4, Fs::Xfs, Fs::Btrfs] {
        let test = format!("native::power_cut_keeps_copied_data ({fs:?})");
        if require_privileged_with_tools(&test, &[fs.mkfs(), "losetup"]) {
            snapshot_testsuite::powercut::power_cut_keeps_copied_data(
                fs,
                &open,
                &snapshot_testsuite::powercut::writable_dir,
            );
        }
    }
}
