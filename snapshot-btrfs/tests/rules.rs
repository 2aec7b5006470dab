//! The btrfs backend's own rules: mount shapes, what commit and view leave on disk, the
//! orphan sweep, qgroup usage, and refusing a root that is not on btrfs.
#![cfg(target_os = "linux")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use snapshot_btrfs::{sys, BtrfsSnapshotter, UsageSource};
use snapshot_core::{CommitOptions, CreateOptions, ErrorKind, Snapshotter};
use snapshot_testsuite::privileged;

/// A fresh root on the mounted image, or None when the test is skipped.
fn root(test: &str) -> Option<(tempfile::TempDir, PathBuf)> {
    if !privileged::require_privileged(test) {
        return None;
    }
    let base = common::btrfs_mount().unwrap_or_else(|e| panic!("{test}: {e}"));
    let tmp = tempfile::Builder::new()
        .prefix("btrfs-rules-")
        .tempdir_in(base)
        .unwrap();
    let root = tmp.path().join("root");
    Some((tmp, root))
}

/// The entries of `dir` but the blank trees `sn` made ahead (see
/// `snapshot_core::lifecycle`).
fn entries(sn: &BtrfsSnapshotter, dir: &Path) -> Vec<PathBuf> {
    let blanks = sn.store().blank_trees();
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let id = p.file_name().and_then(|n| n.to_str()?.parse::<u64>().ok());
            !id.is_some_and(|id| blanks.contains(&id))
        })
        .collect()
}

/// The only entry of `dir` (each test makes one snapshot of a kind).
fn only_entry(sn: &BtrfsSnapshotter, dir: &Path) -> PathBuf {
    let entries = entries(sn, dir);
    assert_eq!(entries.len(), 1, "{}: {entries:?}", dir.display());
    entries.into_iter().next().unwrap()
}

fn done(sn: BtrfsSnapshotter, root: &Path) {
    sn.close().unwrap();
    snapshot_btrfs::remove_root(root).unwrap();
}

#[test]
fn mounts_are_subvolid_mounts_of_the_device_ro_except_active() {
    let Some((_tmp, root)) = root("btrfs_rules::mounts") else {
        return;
    };
    let sn = BtrfsSnapshotter::open(&root).unwrap();
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let canon = std::fs::canonicalize(&root).unwrap();
    let entries = sys::parse_mountinfo(&mi);
    let dev = &sys::mount_of(&entries, &canon).unwrap().source;
    assert_eq!(sn.device(), dev);

    let m = sn.prepare("a", "", &CreateOptions::default()).unwrap();
    let active = only_entry(&sn, &root.join("active"));
    let id = sys::subvolume_id(&active).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].kind, "btrfs");
    assert_eq!(&m[0].source, dev);
    assert_eq!(m[0].options, vec![format!("subvolid={id}")]);
    assert_eq!(sn.mounts("a").unwrap(), m);

    sn.commit("base", "a", &CommitOptions::default()).unwrap();
    let v = sn.view("v", "base", &CreateOptions::default()).unwrap();
    let view = only_entry(&sn, &root.join("view"));
    let vid = sys::subvolume_id(&view).unwrap();
    assert_ne!(vid, id);
    assert_eq!(
        v[0].options,
        vec![format!("subvolid={vid}"), "ro".to_string()]
    );
    assert_eq!(sn.mounts("v").unwrap(), v);
    assert_eq!(
        sn.mounts("base").unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
    done(sn, &root);
}

#[test]
fn commit_makes_a_read_only_subvolume_and_deletes_the_active_one() {
    let Some((_tmp, root)) = root("btrfs_rules::commit") else {
        return;
    };
    let sn = BtrfsSnapshotter::open(&root).unwrap();
    sn.prepare("a", "", &CreateOptions::default()).unwrap();
    let active = only_entry(&sn, &root.join("active"));
    std::fs::write(active.join("f"), b"layer").unwrap();
    assert!(!sys::subvolume_read_only(&active).unwrap());
    sn.commit("base", "a", &CommitOptions::default()).unwrap();

    assert!(
        !active.exists(),
        "the active subvolume is deleted at commit"
    );
    let committed = only_entry(&sn, &root.join("snapshots"));
    assert_eq!(
        committed.file_name(),
        active.file_name(),
        "commit keeps the id"
    );
    assert!(sys::subvolume_read_only(&committed).unwrap());
    assert_eq!(std::fs::read(committed.join("f")).unwrap(), b"layer");
    let err = std::fs::write(committed.join("g"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "EROFS: {err}");
    assert_eq!(entries(&sn, &root.join("active")).len(), 0);
    done(sn, &root);
}

#[test]
fn a_view_is_a_read_only_snapshot_of_its_parent() {
    let Some((_tmp, root)) = root("btrfs_rules::view") else {
        return;
    };
    let sn = BtrfsSnapshotter::open(&root).unwrap();
    sn.prepare("a", "", &CreateOptions::default()).unwrap();
    std::fs::write(only_entry(&sn, &root.join("active")).join("f"), b"p").unwrap();
    sn.commit("base", "a", &CommitOptions::default()).unwrap();
    sn.view("v", "base", &CreateOptions::default()).unwrap();
    let view = only_entry(&sn, &root.join("view"));
    assert!(sys::subvolume_read_only(&view).unwrap());
    assert_eq!(std::fs::read(view.join("f")).unwrap(), b"p");
    // A view without a parent is read-only too.
    sn.view("empty", "", &CreateOptions::default()).unwrap();
    for e in std::fs::read_dir(root.join("view")).unwrap() {
        assert!(sys::subvolume_read_only(&e.unwrap().path()).unwrap());
    }
    done(sn, &root);
}

#[test]
fn remove_deletes_the_subvolume() {
    let Some((_tmp, root)) = root("btrfs_rules::remove") else {
        return;
    };
    let sn = BtrfsSnapshotter::open(&root).unwrap();
    sn.prepare("a", "", &CreateOptions::default()).unwrap();
    sn.commit("base", "a", &CommitOptions::default()).unwrap();
    sn.view("v", "base", &CreateOptions::default()).unwrap();
    sn.remove("v").unwrap();
    assert_eq!(entries(&sn, &root.join("view")).len(), 0);
    sn.remove("base").unwrap();
    assert_eq!(entries(&sn, &root.join("snapshots")).len(), 0);
    done(sn, &root);
}

#[test]
fn open_sweeps_orphans_and_restores_unfinished_removals() {
    let Some((_tmp, root)) = root("btrfs_rules::sweep") else {
        return;
    };
    let sn = BtrfsSnapshotter::open(&root).unwrap();
    sn.prepare("a", "", &CreateOptions::default()).unwrap();
    sn.commit("base", "a", &CommitOptions::default()).unwrap();
    let committed = only_entry(&sn, &root.join("snapshots"));
    sn.close().unwrap();
    drop(sn);
    let id = committed.file_name().unwrap().to_str().unwrap().to_string();
    // What a process killed mid-operation leaves: a staging subvolume, a subvolume of an
    // id with no record, an active subvolume of a committed record, and a committed
    // subvolume renamed aside by a removal that never committed.
    sys::create_subvolume(&root.join("active/new-1-0")).unwrap();
    sys::create_subvolume(&root.join("view/77")).unwrap();
    sys::create_subvolume(&root.join(format!("active/{id}"))).unwrap();
    std::fs::rename(&committed, root.join(format!("snapshots/rm-{id}"))).unwrap();

    let sn = BtrfsSnapshotter::open(&root).unwrap();
    assert_eq!(entries(&sn, &root.join("active")).len(), 0);
    assert_eq!(entries(&sn, &root.join("view")).len(), 0);
    assert_eq!(only_entry(&sn, &root.join("snapshots")), committed);
    sn.view("v", "base", &CreateOptions::default()).unwrap();
    done(sn, &root);
}

#[test]
fn usage_reads_qgroups_when_quotas_are_on() {
    let Some((_tmp, root)) = root("btrfs_rules::qgroup_usage") else {
        return;
    };
    let quotas = std::env::var("SNAPSHOT_BTRFS_QUOTAS").is_ok_and(|v| v == "1");
    let sn = BtrfsSnapshotter::open(&root).unwrap();
    sn.prepare("base-a", "", &CreateOptions::default()).unwrap();
    std::fs::write(
        only_entry(&sn, &root.join("active")).join("base"),
        vec![7u8; 8 << 20],
    )
    .unwrap();
    sn.commit("base", "base-a", &CommitOptions::default())
        .unwrap();
    sn.prepare("a", "base", &CreateOptions::default()).unwrap();
    let active = only_entry(&sn, &root.join("active"));
    std::fs::write(active.join("f"), vec![1u8; 4 << 20]).unwrap();

    let (u, source) = sn.active_usage("a").unwrap();
    assert_eq!(u, sn.usage("a").unwrap());
    if !quotas {
        assert_eq!(source, UsageSource::Walk);
        // The walk counts the parent's file too.
        assert!(u.size >= 12 << 20, "{u:?}");
        done(sn, &root);
        return;
    }
    assert_eq!(source, UsageSource::Qgroup);
    // Exclusive bytes: the layer's own 4 MiB, not the 8 MiB it shares with its parent.
    assert!(u.size >= 4 << 20 && u.size < 6 << 20, "{u:?}");
    // Inodes counted from the subvolume's tree match a walk: the root, two files.
    assert_eq!(u.inodes, 3, "{u:?}");
    for i in 0..50 {
        std::fs::write(active.join(format!("small-{i}")), b"x").unwrap();
    }
    std::fs::hard_link(active.join("f"), active.join("f-link")).unwrap();
    let walked = snapshot_core::usage::disk_usage(&active).unwrap().inodes;
    assert_eq!(sn.usage("a").unwrap().inodes, walked);
    assert_eq!(walked, 53);
    let u = sn.usage("a").unwrap();
    let id = sys::subvolume_id(&active).unwrap();
    let out = Command::new("btrfs")
        .args(["qgroup", "show", "--raw", "-f"])
        .arg(&active)
        .output()
        .expect("btrfs qgroup show (apt-get install -y btrfs-progs)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("0/{id} ")))
        .unwrap_or_else(|| panic!("no qgroup 0/{id} in:\n{text}"));
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    let exclusive = fields[1];
    let diff = u.size.abs_diff(exclusive);
    assert!(diff <= 64 << 10, "qgroup {exclusive} vs usage {}", u.size);
    // The committed layer keeps the usage measured at commit.
    sn.commit("top", "a", &CommitOptions::default()).unwrap();
    assert_eq!(sn.usage("top").unwrap(), u);
    done(sn, &root);
}

#[test]
fn open_refuses_a_root_that_is_not_on_btrfs() {
    let tmp = tempfile::tempdir_in("/dev/shm").unwrap();
    let err = BtrfsSnapshotter::open(&tmp.path().join("root")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    let msg = err.to_string();
    assert!(msg.contains("not btrfs") && msg.contains("root"), "{msg}");
}

#[test]
fn rebase_is_refused_and_changes_nothing() {
    let Some((_tmp, root)) = root("btrfs_rules::rebase_refused") else {
        return;
    };
    let sn = BtrfsSnapshotter::open(&root).unwrap();
    sn.prepare("b0", "", &CreateOptions::default()).unwrap();
    sn.commit("base", "b0", &CommitOptions::default()).unwrap();
    sn.prepare("a", "", &CreateOptions::default()).unwrap();
    let before = sn.stat("a").unwrap();
    let opts = CommitOptions {
        parent: "base".into(),
        ..CommitOptions::default()
    };
    let err = sn.commit("c", "a", &opts).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotImplemented, "{err}");
    assert!(
        err.to_string().contains("backend btrfs cannot rebase"),
        "{err}"
    );
    assert_eq!(sn.stat("a").unwrap(), before);
    assert_eq!(sn.stat("c").unwrap_err().kind(), ErrorKind::NotFound);
    // Nothing was staged: the committed directory holds only the base.
    only_entry(&sn, &root.join("snapshots"));
    sn.remove("base").unwrap();
    done(sn, &root);
}

#[test]
fn prepare_commit_and_remove_grow_a_tiny_map() {
    let Some((_tmp, root)) = root("btrfs_rules::tiny_map") else {
        return;
    };
    let opts = snapshot_btrfs::BtrfsOptions {
        map_size: snapshot_testsuite::TINY_MAP,
        no_sync: true,
        ..Default::default()
    };
    let sn = BtrfsSnapshotter::open_with(&root, &opts).unwrap();
    snapshot_testsuite::grow_a_tiny_map(&sn);
    assert!(sn.store().store().map_size().unwrap() > snapshot_testsuite::TINY_MAP);
    done(sn, &root);
}
