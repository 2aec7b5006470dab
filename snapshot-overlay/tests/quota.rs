//! Layer limits with project quotas, on a filesystem that has them: xfs mounted with
//! `prjquota`, ext4 made with `-O quota,project` and mounted with `prjquota`.
//!
//! `SNAPSHOT_QUOTA_MOUNT` names a directory on such a filesystem. `cargo xtask test-quota`
//! boots a virtual machine on a kernel with quota support (the development kernel may
//! have none), makes one filesystem of each kind and runs this file on each. Without the
//! variable every test prints why it skipped.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::Command;

use snapshot_core::quota::{ProjectQuotas, MAX_SIZE_LABEL};
use snapshot_core::{Cleaner, CommitOptions, CreateOptions, ErrorKind, Info, Snapshotter};
use snapshot_overlay::{OverlayConfig, OverlaySnapshotter};
use snapshot_testsuite::{fill_as_container, MountGuard};

const MIB: u64 = 1 << 20;

/// A fresh directory on the quota filesystem, or `None` (printed) without one.
fn scratch(test: &str) -> Option<tempfile::TempDir> {
    let Some(base) = std::env::var_os("SNAPSHOT_QUOTA_MOUNT") else {
        println!(
            "{test}: skipped: SNAPSHOT_QUOTA_MOUNT names no filesystem with project quotas \
             (cargo xtask test-quota runs this file in a virtual machine that has them)"
        );
        return None;
    };
    Some(
        tempfile::Builder::new()
            .prefix("quota-")
            .tempdir_in(base)
            .expect("a directory on the quota filesystem"),
    )
}

fn open(root: &Path, max_size: Option<u64>) -> OverlaySnapshotter {
    open_with(
        root,
        OverlayConfig {
            options: snapshot_core::lifecycle::Options {
                max_size,
                ..Default::default()
            },
            ..OverlayConfig::default()
        },
    )
}

/// Opens overlay at `root`, again while the root's lock is still held: a process another
/// test forks (`dd`, `xfs_io`) holds a copy of a closed store's lock file until it execs.
fn open_with(root: &Path, config: OverlayConfig) -> OverlaySnapshotter {
    let start = std::time::Instant::now();
    loop {
        match OverlaySnapshotter::open(root, config.clone()) {
            Err(e) if e.kind() == ErrorKind::Unavailable && start.elapsed().as_secs() < 10 => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => return r.expect("open overlay on the quota filesystem"),
        }
    }
}

fn limited(bytes: u64) -> CreateOptions {
    let mut o = CreateOptions::default();
    o.labels
        .insert(MAX_SIZE_LABEL.to_string(), bytes.to_string());
    o
}

fn quotas(sn: &OverlaySnapshotter) -> &ProjectQuotas {
    sn.store()
        .quotas()
        .expect("the filesystem has project quotas: the store must use them")
}

/// The project of `key`'s layer and what its quota says.
fn quota_of(sn: &OverlaySnapshotter, key: &str) -> (u32, snapshot_core::quota::ProjectUsage) {
    let fs = sn.upper_dir(key).unwrap();
    let p = quotas(sn)
        .project_of(&fs)
        .unwrap_or_else(|| panic!("{key}: its layer {} has no project", fs.display()));
    (p, quotas(sn).read(p).unwrap())
}

fn base(sn: &OverlaySnapshotter) -> String {
    sn.prepare("base-a", "", &CreateOptions::default()).unwrap();
    std::fs::write(sn.upper_dir("base-a").unwrap().join("etc"), b"base").unwrap();
    sn.commit("base", "base-a", &CommitOptions::default())
        .unwrap();
    "base".into()
}

fn mount(sn: &OverlaySnapshotter, key: &str, at: &Path) -> MountGuard {
    std::fs::create_dir_all(at).unwrap();
    MountGuard::mount(&sn.mounts(key).unwrap(), at).expect("mount the snapshot")
}

#[test]
fn a_layer_written_past_its_limit_gets_enospc_within_a_block() {
    let Some(tmp) = scratch("a_layer_written_past_its_limit_gets_enospc_within_a_block") else {
        return;
    };
    let sn = open(&tmp.path().join("root"), None);
    let parent = base(&sn);
    for (key, parent) in [("on-parent", parent.as_str()), ("alone", "")] {
        let limit = 8 * MIB;
        sn.prepare(key, parent, &limited(limit)).unwrap();
        let (_, q) = quota_of(&sn, key);
        assert_eq!(q.limit, limit, "{key}: the quota's hard limit");
        let target = tmp.path().join("mnt").join(key);
        let m = mount(&sn, key, &target);
        let fill = fill_as_container(&target.join("big"), 4 * limit);
        let (_, at) = quota_of(&sn, key);
        drop(m);
        assert!(
            fill.full(),
            "{key}: wrote {} bytes past a limit of {limit}: {:?}",
            fill.written,
            fill.error
        );
        // Within one 4 KiB block of the limit: what the layer holds when the write fails.
        assert!(
            at.bytes <= limit && at.bytes + 4096 >= limit,
            "{key}: the quota held {} bytes when the write failed, limit {limit}",
            at.bytes
        );
        println!(
            "{key}: {} of {limit} bytes held when the write failed with {} ({} bytes of \
             file data)",
            at.bytes,
            fill.errno(),
            fill.written
        );
    }
}

#[test]
fn usage_of_an_active_snapshot_is_read_from_its_quota() {
    let Some(tmp) = scratch("usage_of_an_active_snapshot_is_read_from_its_quota") else {
        return;
    };
    let sn = open(&tmp.path().join("root"), None);
    let parent = base(&sn);
    sn.prepare("a", &parent, &CreateOptions::default()).unwrap();
    let fs = sn.upper_dir("a").unwrap();
    for i in 0..200 {
        std::fs::write(fs.join(format!("f{i}")), vec![1u8; 1000 + i * 37]).unwrap();
    }
    std::fs::create_dir(fs.join("d")).unwrap();
    std::fs::write(fs.join("d").join("x"), vec![2u8; 70_000]).unwrap();
    std::fs::hard_link(fs.join("f3"), fs.join("d").join("f3-again")).unwrap();
    // Written back, so the walk and the quota see the same allocations.
    Command::new("sync").status().unwrap();
    let walked = snapshot_core::usage::disk_usage(&fs).unwrap();
    let usage = sn.usage("a").unwrap();
    assert_eq!(
        usage, walked,
        "the quota's count equals a walk of the layer"
    );
    // The count comes from the quota: a file moved to another project leaves it, though
    // a walk still sees it.
    let moved = fs.join("d").join("x");
    let size = std::fs::metadata(&moved).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512
    });
    let out = Command::new("xfs_io")
        .args(["-c", "chproj 4000000000"])
        .arg(&moved)
        .output()
        .expect("xfs_io (xfsprogs)");
    assert!(out.status.success(), "{out:?}");
    let after = sn.usage("a").unwrap();
    assert_eq!(
        after.size,
        usage.size - size.unwrap(),
        "{after:?} {usage:?}"
    );
    assert_eq!(after.inodes, usage.inodes - 1);
    assert_eq!(snapshot_core::usage::disk_usage(&fs).unwrap(), walked);
    // Commit records the quota's count as well.
    Command::new("xfs_io")
        .args(["-c", &format!("chproj {}", quota_of(&sn, "a").0)])
        .arg(&moved)
        .status()
        .unwrap();
    sn.commit("a-done", "a", &CommitOptions::default()).unwrap();
    assert_eq!(sn.usage("a-done").unwrap(), walked);
}

#[test]
fn the_default_limit_applies_and_a_label_overrides_it() {
    let Some(tmp) = scratch("the_default_limit_applies_and_a_label_overrides_it") else {
        return;
    };
    let root = tmp.path().join("root");
    let sn = open(&root, Some(2 * MIB));
    let parent = base(&sn);
    sn.prepare("dflt", &parent, &CreateOptions::default())
        .unwrap();
    sn.prepare("own", &parent, &limited(6 * MIB)).unwrap();
    assert_eq!(quota_of(&sn, "dflt").1.limit, 2 * MIB);
    assert_eq!(quota_of(&sn, "own").1.limit, 6 * MIB);
    let target = tmp.path().join("mnt");
    let m = mount(&sn, "dflt", &target);
    let fill = fill_as_container(&target.join("big"), 8 * MIB);
    drop(m);
    assert!(
        fill.full() && fill.written <= 2 * MIB,
        "the default limit: {fill:?}"
    );
    // A changed label applies at once; a label dropped falls back to the default.
    let mut info: Info = sn.stat("own").unwrap();
    info.labels
        .insert(MAX_SIZE_LABEL.into(), (3 * MIB).to_string());
    sn.update(&info, &[format!("labels.{MAX_SIZE_LABEL}")])
        .unwrap();
    assert_eq!(quota_of(&sn, "own").1.limit, 3 * MIB);
    let e = {
        let mut bad = info.clone();
        bad.labels.insert(MAX_SIZE_LABEL.into(), "lots".into());
        sn.update(&bad, &[format!("labels.{MAX_SIZE_LABEL}")])
            .unwrap_err()
    };
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(
        quota_of(&sn, "own").1.limit,
        3 * MIB,
        "a refused update changes nothing"
    );
    // A new default applies at the next open to snapshots without a label; the label
    // keeps its own; after a limit is lost (as a power cut right after a create could),
    // the open sets it again.
    let (own_project, _) = quota_of(&sn, "own");
    drop(sn);
    quotas_on(&root).set_limit(own_project, 0).unwrap();
    let sn = open(&root, Some(5 * MIB));
    assert_eq!(quota_of(&sn, "dflt").1.limit, 5 * MIB);
    assert_eq!(quota_of(&sn, "own").1.limit, 3 * MIB);
    drop(sn);
    let sn = open(&root, None);
    assert_eq!(quota_of(&sn, "dflt").1.limit, 0, "no default: no limit");
}

fn quotas_on(root: &Path) -> ProjectQuotas {
    ProjectQuotas::probe(root).unwrap().expect("project quotas")
}

#[test]
fn remove_clears_the_limit_and_projects_are_offset_from_the_roots() {
    let Some(tmp) = scratch("remove_clears_the_limit_and_projects_are_offset_from_the_roots")
    else {
        return;
    };
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let out = Command::new("xfs_io")
        .args(["-c", "chproj 3000000"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for async_remove in [false, true] {
        let sn = open_with(
            &root,
            OverlayConfig {
                options: snapshot_core::lifecycle::Options {
                    async_remove: Some(async_remove),
                    ..Default::default()
                },
                ..OverlayConfig::default()
            },
        );
        assert_eq!(quotas(&sn).base(), 3_000_000);
        let key = format!("gone-{async_remove}");
        sn.prepare(&key, "", &limited(4 * MIB)).unwrap();
        let id = sn.store().snapshot(&key).unwrap().id;
        let (p, q) = quota_of(&sn, &key);
        assert_eq!(u64::from(p), 3_000_000 + id, "base + id");
        assert_eq!(q.limit, 4 * MIB);
        std::fs::write(sn.upper_dir(&key).unwrap().join("f"), vec![0u8; 100_000]).unwrap();
        sn.remove(&key).unwrap();
        sn.cleanup().unwrap();
        let after = quotas(&sn).read(p).unwrap();
        assert_eq!(
            after.limit, 0,
            "async_remove {async_remove}: the limit is cleared"
        );
        // xfs frees unlinked inodes in the background: their count drops soon after.
        let start = std::time::Instant::now();
        while quotas(&sn).read(p).unwrap().inodes > 0 && start.elapsed().as_secs() < 20 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let later = quotas(&sn).read(p).unwrap();
        assert_eq!(
            later.inodes, 0,
            "async_remove {async_remove}: nothing is counted"
        );
    }
}

#[test]
fn a_project_held_outside_the_store_is_left_alone() {
    let Some(tmp) = scratch("a_project_held_outside_the_store_is_left_alone") else {
        return;
    };
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    Command::new("xfs_io")
        .args(["-c", "chproj 5000000"])
        .arg(&root)
        .status()
        .unwrap();
    // Another user of the filesystem holds the next projects after the root's.
    let foreign: PathBuf = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    for i in 1..=300u32 {
        let f = foreign.join(i.to_string());
        std::fs::write(&f, b"theirs").unwrap();
        let out = Command::new("xfs_io")
            .args(["-c", &format!("chproj {}", 5_000_000 + i)])
            .arg(&f)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let sn = open(&root, None);
    let e = sn.prepare("capped", "", &limited(MIB)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    assert!(
        e.to_string().contains(MAX_SIZE_LABEL) && e.to_string().contains("chattr -p"),
        "{e}"
    );
    // Without a limit the layer works, measured by a walk, and the foreign project's
    // count is untouched.
    sn.prepare("free", "", &CreateOptions::default()).unwrap();
    let fs = sn.upper_dir("free").unwrap();
    assert_eq!(quotas(&sn).project_of(&fs), None);
    std::fs::write(fs.join("f"), vec![0u8; 50_000]).unwrap();
    assert_eq!(
        sn.usage("free").unwrap(),
        snapshot_core::usage::disk_usage(&fs).unwrap()
    );
    let id = sn.store().snapshot("free").unwrap().id;
    let theirs = quotas(&sn).read(5_000_000 + id as u32).unwrap();
    assert_eq!(
        theirs.inodes, 1,
        "the foreign project counts only its own file"
    );
}

#[test]
fn two_stores_on_one_filesystem_take_apart_ranges_of_projects() {
    let Some(tmp) = scratch("two_stores_on_one_filesystem_take_apart_ranges_of_projects") else {
        return;
    };
    let a = open(&tmp.path().join("a"), None);
    let b = open(&tmp.path().join("b"), None);
    let (ba, bb) = (quotas(&a).base(), quotas(&b).base());
    assert!(
        ba != 0 && bb != 0 && ba.abs_diff(bb) >= 1 << 20,
        "{ba} {bb}"
    );
    for sn in [&a, &b] {
        sn.prepare("c", "", &limited(MIB)).unwrap();
        let (p, q) = quota_of(sn, "c");
        assert_eq!(q.limit, MIB);
        assert!(p > quotas(sn).base());
    }
    // The base is the root's own project ID from now on.
    drop(a);
    assert_eq!(quotas(&open(&tmp.path().join("a"), None)).base(), ba);
}
