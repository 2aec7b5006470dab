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

/// A btrfs snapshot flushes its source's data anyway, so only the lower bound applies:
/// with `sync` the layer's data is on the device when Commit returns.
#[test]
fn sync_option_flushes_the_layer_at_commit() {
    if require_privileged_with_tools("btrfs::sync_option_flushes", &["mkfs.btrfs", "losetup"]) {
        let (without, with) = snapshot_testsuite::powercut::sync_flushes_the_layer(
            Fs::Btrfs,
            &|root, sync| {
                let opts = snapshot_btrfs::BtrfsOptions {
                    sync,
                    ..Default::default()
                };
                Ok(Box::new(BtrfsSnapshotter::open_with(root, &opts)?))
            },
            &|root, mounts| {
                // The subvolume the mount names (blank trees made ahead sit beside it).
                let subvolid: u64 = mounts[0]
                    .options
                    .iter()
                    .find_map(|o| o.strip_prefix("subvolid="))
                    .expect("a subvolid option")
                    .parse()
                    .unwrap();
                let found: Vec<_> = std::fs::read_dir(root.join("active"))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| snapshot_btrfs::sys::subvolume_id(p).ok() == Some(subvolid))
                    .collect();
                assert_eq!(found.len(), 1, "subvolume {subvolid}: {found:?}");
                found[0].clone()
            },
            false,
        );
        println!("commit wrote {without} bytes without sync, {with} with");
    }
}
